"""GRPO rollouts: sample completions with the policy being trained, through the teacher interface.

    engine = make_rollout_engine(RolloutConfig(), model, tokenizer)     # transformers, in process
    groups = [RequestGroup(problem_id=p, messages=m, sampling=engine.sampling(seed=step), sample_indices=range(G))]
    results = engine.generate(groups)            # [[Completion, ...] per group]; token ids in .extra
    engine.sync_weights(model)                   # after an optimizer step (a no-op when shared)
    engine.probe(model)                          # engine and trainer log-probs must agree

The engines speak factory/teachers/base.py (`RequestGroup` in, `Completion` out, async
`check`/`generate`/`aclose`), so rollouts, evaluation and data generation sample the same way;
a Completion's `extra` carries `prompt_ids` and `completion_ids` (the EOS included when the
completion stopped on it: the policy must learn to stop) for the trainer.

Engines:
- `transformers` (`PolicyTeacher`): `model.generate` on the policy module itself, in this
  process, CPU or GPU; each row samples from its own generator seeded by (seed, problem,
  sample index), so a rollout does not depend on what shares its batch. Nothing to sync.
- `vllm` (`VLLMColocated`): vLLM's `LLM` on the same GPU, created with `enable_sleep_mode=True`;
  it sleeps (weights offloaded, KV cache freed) while the trainer steps and wakes for rollouts;
  weights pushed through `collective_rpc` into each worker's `model.load_weights`.
- `vllm_server` (`VLLMServer`): a separate `vllm serve`; generation over its OpenAI-compatible
  `/v1/completions` (token ids in and out), weights over vLLM's NCCL weight-transfer engine
  (the protocol TRL's VLLMClient speaks). Both vLLM engines are written against the real APIs and only run
  on a GPU machine with vLLM installed (their tests skip here).

Every weight sync and collective runs under a deadline (`sync_timeout_s`) and fails with
`SyncError` naming what hung, instead of hanging the job. After a sync, `probe` scores a fixed
completion with the engine and with the trainer: a mean absolute log-prob difference above
`probe_tolerance` means the engine is not running the trained weights (a wrong name mapping, a
missed shard, a stale copy) and is a `SyncError`.

Not covered: prefix sharing between a group's samples on the transformers engine; multi-turn
and tool-use rollouts; importance-sampling correction for the engine/trainer mismatch.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from factory.records import content_hash
from factory.teachers.base import (
    Completion,
    RequestGroup,
    Sampling,
    TeacherConfig,
    TeacherError,
)
from factory.teachers.batching import BatchedTeacher, BatchRow, MicroBatcher

from .losses import completion_logps

log = logging.getLogger(__name__)

PROBE_MESSAGES = ({"role": "user", "content": "Count from one to five."},)
PROBE_COMPLETION = "One, two, three, four, five."


class SyncError(RuntimeError):
    """A weight sync or collective timed out or left the engine with the wrong weights."""


class RolloutConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    engine: Literal["transformers", "vllm", "vllm_server"] = "transformers"
    max_completion_length: int = Field(256, ge=1)
    temperature: float = Field(1.0, gt=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    batch_size: int = Field(64, ge=1, description="rows per generate call (transformers)")
    sync_timeout_s: float = Field(300.0, gt=0, description="deadline for a weight sync or a collective")
    probe_every: int = Field(0, ge=0, description="check engine vs trainer log-probs every N syncs (0: never; vLLM engines: 1)")
    probe_tolerance: float = Field(0.05, gt=0, description="largest mean |logp_engine - logp_trainer| allowed")
    # vLLM
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1)
    server_url: str | None = None  # vllm_server: http://host:8000
    server_group_port: int = 51216

    def sampling(self, seed: int | None = None) -> Sampling:
        return Sampling(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_completion_length, seed=seed)


def run_with_timeout(fn: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Run `fn` in a helper thread; SyncError naming `what` if it takes longer than `timeout_s`.
    The thread cannot be killed: a timed-out call leaves the process to be torn down, which is
    what the caller does with the error (a hung NCCL call never returns either way)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target, name=f"sync:{what}", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise SyncError(f"{what} did not finish within {timeout_s:.0f}s (rollout.sync_timeout_s): a peer is down or hung")
    if "error" in box:
        err = box["error"]
        if isinstance(err, SyncError):
            raise err
        raise SyncError(f"{what} failed: {type(err).__name__}: {err}") from err
    return box.get("value")


def encode_prompt(tokenizer, messages) -> list[int]:
    """Token ids of the chat-templated prompt, generation prompt included."""
    text = tokenizer.apply_chat_template([dict(m) for m in messages], add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


class _RowSampler:
    """A logits processor: each row draws from softmax(logits / T) (top-p if < 1) by inverse CDF
    with one uniform from its own generator, and leaves only that token allowed, so generate runs
    greedy on it (one batched cumsum per token; the rows' randomness stays their own)."""

    def __init__(self, temperature: float, top_p: float, generators: list[torch.Generator]):
        self.temperature, self.top_p, self.generators = temperature, top_p, generators

    def __call__(self, input_ids, scores):
        probs = torch.softmax(scores.float() * (1.0 / self.temperature), dim=-1)
        order = None
        if self.top_p < 1.0:
            probs, order = probs.sort(dim=-1, descending=True)
            probs = probs * ((probs.cumsum(-1) - probs) < self.top_p)  # the first token always stays
        u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in self.generators]).to(probs.device)
        cdf = probs.cumsum(dim=-1)
        pos = torch.searchsorted(cdf, (u.float() * cdf[:, -1])[:, None], right=True).clamp_(max=cdf.size(-1) - 1)
        chosen = pos if order is None else order.gather(-1, pos)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, chosen, 0.0)
        return out


class PolicyTeacher(BatchedTeacher):
    """The policy module being trained as a teacher (backend `transformers`, in process)."""

    def __init__(self, model, tokenizer, config: RolloutConfig, name: str = "policy"):
        self.model, self.tokenizer, self.rollout = model, tokenizer, config
        self.config = TeacherConfig(name=name, backend="transformers", model=f"{name} (in memory)", batch_size=config.batch_size)
        self.context_window = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None) or tokenizer.eos_token_id
        self._eos = set(eos if isinstance(eos, list) else [eos])
        self._eos.add(tokenizer.eos_token_id)
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.stats = {"rows": 0, "completion_tokens": 0, "generate_s": 0.0}
        self.synced_gpus = False  # FSDP: every rank runs the same number of forward passes
        self._batcher = MicroBatcher(self._run_batch, max_rows=config.batch_size, name=name,
                                     key=lambda row: row.group.sampling.max_tokens)

    @property
    def max_concurrency(self) -> int:
        return max(2, 2 * self.rollout.batch_size)

    async def _ensure_loaded(self) -> None:
        return None

    def _release(self) -> None:
        return None

    def _encode(self, messages) -> list[int]:
        return encode_prompt(self.tokenizer, messages)

    def _generator(self, row: BatchRow) -> torch.Generator:
        g = torch.Generator()
        seed = row.group.sampling.seed
        if seed is None:
            g.seed()
        else:
            g.manual_seed(int(content_hash("rollout", seed, row.group.problem_id, row.sample_index)[:15], 16))
        return g

    def generate_many(self, groups: list[RequestGroup]) -> list[list[Completion]]:
        """All groups' rows in fixed chunks of `batch_size`, in order, in this thread: the same
        number of generate calls on every rank (FSDP needs that; the async batcher's timing-based
        batches could differ between ranks)."""
        rows = []
        for g in groups:
            ids = SimpleNamespace(token_ids=self._encode(g.messages))
            self._check_length(len(ids.token_ids), g.sampling.max_tokens)
            rows += [BatchRow(g, i, ids, time.monotonic(), waiter=None) for i in g.sample_indices]
        done: list[Completion] = []
        for s in range(0, len(rows), self.rollout.batch_size):
            done += self._run_batch(rows[s: s + self.rollout.batch_size])
        out, k = [], 0
        for g in groups:
            out.append(done[k: k + len(g.sample_indices)])
            k += len(g.sample_indices)
        return out

    def _run_batch(self, rows: list[BatchRow]) -> list[Completion]:
        prompts = [row.payload.token_ids for row in rows]
        max_new = rows[0].group.sampling.max_tokens
        width = max(len(p) for p in prompts)
        device = next(self.model.parameters()).device
        ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        att = torch.zeros((len(rows), width), dtype=torch.long)
        for r, p in enumerate(prompts):  # left padding
            ids[r, width - len(p):] = torch.tensor(p)
            att[r, width - len(p):] = 1
        sampler = _RowSampler(rows[0].group.sampling.temperature, rows[0].group.sampling.top_p, [self._generator(r) for r in rows])
        was_training = self.model.training
        self.model.eval()
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                out = self.model.generate(input_ids=ids.to(device), attention_mask=att.to(device), max_new_tokens=max_new,
                                          do_sample=False, num_beams=1, logits_processor=[sampler], use_cache=True,
                                          pad_token_id=self._pad_id, eos_token_id=sorted(self._eos),
                                          synced_gpus=self.synced_gpus)
        except Exception as exc:
            raise TeacherError(f"rollout: generation failed: {type(exc).__name__}: {exc}", retryable=False) from exc
        finally:
            self.model.train(was_training)
        elapsed = time.perf_counter() - t0
        completions = []
        for r, (row, tokens) in enumerate(zip(rows, out[:, width:].tolist())):
            end = next((k for k, t in enumerate(tokens) if t in self._eos), None)
            body = tokens if end is None else tokens[: end + 1]  # keep the EOS: it is trained on
            text = self.tokenizer.decode(body if end is None else body[:-1], skip_special_tokens=True)
            completions.append(Completion(
                sample_index=row.sample_index, text=text, finish_reason="length" if end is None else "stop",
                prompt_tokens=len(prompts[r]), completion_tokens=len(body),
                extra={"prompt_ids": prompts[r], "completion_ids": body},
            ))
        self.stats["rows"] += len(rows)
        self.stats["completion_tokens"] += sum(c.completion_tokens for c in completions)
        self.stats["generate_s"] += elapsed
        return completions


class RolloutEngine:
    """Generation for GRPO over a teacher backend, plus weight sync and the log-prob probe."""

    def __init__(self, teacher, config: RolloutConfig, tokenizer):
        self.teacher, self.config, self.tokenizer = teacher, config, tokenizer
        self.syncs = 0

    def sampling(self, seed: int | None = None) -> Sampling:
        return self.config.sampling(seed)

    def generate(self, groups: list[RequestGroup]) -> list[list[Completion]]:
        """Completions of every group, each group's sorted by sample index; a group that came
        back short is an error (GRPO needs whole groups)."""

        if hasattr(self.teacher, "generate_many"):
            results = self.teacher.generate_many(groups)
        else:
            async def all_groups():
                return await asyncio.gather(*(self.teacher.generate(g) for g in groups))

            results = asyncio.run(all_groups())
        out = []
        for g, got in zip(groups, results):
            if len(got) != len(g.sample_indices):
                raise TeacherError(f"rollout: {len(got)} of {len(g.sample_indices)} completions for {g.problem_id}", retryable=True)
            out.append(sorted(got, key=lambda c: c.sample_index))
        return out

    def sync_weights(self, model) -> None:
        """Make the engine run `model`'s current weights (no-op: the policy module is shared)."""
        self.syncs += 1

    def engine_logps(self, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
        """The engine's log-probs of `completion_ids` after `prompt_ids` (for the probe)."""
        return trainer_logps(self.teacher.model, prompt_ids, completion_ids, self.config.temperature)

    def probe(self, model) -> float:
        """Mean |engine - trainer| log-prob over a fixed completion; SyncError above tolerance."""
        prompt_ids = encode_prompt(self.tokenizer, PROBE_MESSAGES)
        completion_ids = self.tokenizer(PROBE_COMPLETION, add_special_tokens=False)["input_ids"]
        theirs = run_with_timeout(lambda: self.engine_logps(prompt_ids, completion_ids), self.config.sync_timeout_s, "log-prob probe")
        ours = trainer_logps(model, prompt_ids, completion_ids, self.config.temperature)
        diff = sum(abs(a - b) for a, b in zip(theirs, ours)) / max(len(ours), 1)
        if diff > self.config.probe_tolerance:
            raise SyncError(
                f"post-sync probe: the rollout engine's log-probs differ from the trainer's by {diff:.4f} per token on average "
                f"(> rollout.probe_tolerance {self.config.probe_tolerance}): the engine is not running the trained weights"
            )
        return diff

    def after_step(self, model) -> float | None:
        """Sync, then probe when due; the probe's difference, or None."""
        run_with_timeout(lambda: self.sync_weights(model), self.config.sync_timeout_s, "weight sync")
        if self.config.probe_every and self.syncs % self.config.probe_every == 0:
            return self.probe(model)
        return None

    def close(self) -> None:
        asyncio.run(self.teacher.aclose())


def trainer_logps(model, prompt_ids: list[int], completion_ids: list[int], temperature: float = 1.0) -> list[float]:
    """Log-probs of a completion under `model` at `temperature`, as the GRPO loss computes them."""
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt_ids) + list(completion_ids)], device=device)
    with torch.no_grad():
        logps, _ = completion_logps(model, ids, torch.ones_like(ids), len(completion_ids), temperature)
    return logps[0].tolist()


# --- vLLM (GPU only; written against vLLM's API, skipped on machines without it) -----------------


def _require_vllm():
    from storage.errors import require

    return require("vllm", "pip install 'reasoning-factory[vllm]'")


class _VLLMTeacher:
    """The teacher interface over an in-process vLLM `LLM` (RequestGroup -> Completions with ids)."""

    def __init__(self, llm, tokenizer, config: RolloutConfig):
        self.llm, self.tokenizer, self.rollout = llm, tokenizer, config
        self.config = TeacherConfig(name="policy-vllm", backend="vllm", model="policy (vLLM)")
        self.max_concurrency = 1_000_000

    async def check(self, longest_prompt=None, max_tokens=None) -> None:
        return None

    async def generate(self, group: RequestGroup) -> list[Completion]:
        return self.generate_many([group])[0]

    def generate_many(self, groups: list[RequestGroup]) -> list[list[Completion]]:
        vllm = _require_vllm()
        prompts, params = [], []
        for g in groups:
            ids = encode_prompt(self.tokenizer, g.messages)
            for i in g.sample_indices:
                seed = None if g.sampling.seed is None else int(content_hash("rollout", g.sampling.seed, g.problem_id, i)[:8], 16)
                prompts.append({"prompt_token_ids": ids})
                params.append(vllm.SamplingParams(temperature=g.sampling.temperature, top_p=g.sampling.top_p,
                                                  max_tokens=g.sampling.max_tokens, seed=seed, logprobs=0))
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        result, k = [], 0
        for g in groups:
            got = []
            for i in g.sample_indices:
                o = outs[k].outputs[0]
                ids = list(o.token_ids)
                got.append(Completion(sample_index=i, text=o.text, finish_reason=o.finish_reason,
                                      prompt_tokens=len(outs[k].prompt_token_ids), completion_tokens=len(ids),
                                      extra={"prompt_ids": list(outs[k].prompt_token_ids), "completion_ids": ids}))
                k += 1
            result.append(got)
        return result

    async def aclose(self) -> None:
        return None


class VLLMColocated(RolloutEngine):
    """vLLM inside each trainer process (torchrun's `external_launcher`), on the same GPU, with sleep
    mode: weights and KV cache wake for rollouts, and sleep (level 1: weights kept in CPU memory)
    while the trainer steps. The same calls TRL's colocate mode makes."""

    def __init__(self, model_path: str, tokenizer, config: RolloutConfig, seed: int = 0):
        vllm = _require_vllm()
        llm = vllm.LLM(model=model_path, gpu_memory_utilization=config.gpu_memory_utilization, enable_sleep_mode=True,
                       distributed_executor_backend="external_launcher", seed=seed, max_num_batched_tokens=4096,
                       logprobs_mode="processed_logprobs")  # log-probs after temperature, as the trainer computes them
        llm.sleep(level=1)
        super().__init__(_VLLMTeacher(llm, tokenizer, config), config, tokenizer)
        self.llm = llm
        self.config = config.model_copy(update={"probe_every": config.probe_every or 1})

    def generate(self, groups: list[RequestGroup]) -> list[list[Completion]]:
        self.llm.wake_up()
        try:
            return self.teacher.generate_many(groups)
        finally:
            self.llm.sleep(level=1)  # the trainer gets the memory back

    def sync_weights(self, model) -> None:
        self.llm.wake_up(tags=["weights"])  # load_weights must write to mapped memory
        runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
        for name, tensor in _full_state_dict(model).items():  # the model's own name mapping (fused qkv etc.)
            runner.model.load_weights([(name, tensor)])
        self.llm.reset_prefix_cache()  # cached KV blocks came from the old weights
        self.llm.sleep(level=1)
        self.syncs += 1

    def engine_logps(self, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
        vllm = _require_vllm()
        self.llm.wake_up()
        try:
            out = self.llm.generate([{"prompt_token_ids": list(prompt_ids) + list(completion_ids)}],
                                    vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=self.config.temperature),
                                    use_tqdm=False)[0]
        finally:
            self.llm.sleep(level=1)
        lp = out.prompt_logprobs[len(prompt_ids):]
        return [d[t].logprob for d, t in zip(lp, completion_ids)]


def _full_state_dict(model) -> dict[str, torch.Tensor]:
    """Unsharded parameters by their Hugging Face names (FSDP2 DTensors gathered)."""
    out = {}
    for name, p in model.state_dict().items():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name.removeprefix("_orig_mod.")] = full.detach()
    return out


class VLLMServer(RolloutEngine):
    """A separate `vllm serve` (started with `VLLM_SERVER_DEV_MODE=1` and
    `--weight-transfer-config '{"backend": "nccl"}'`): generation and the probe over the
    OpenAI-compatible `/v1/completions` (token ids in and out), weights over vLLM's NCCL
    weight-transfer engine (`/init_weight_transfer_engine`, `/start_weight_update`,
    `/update_weights`, `/finish_weight_update`), the trainer joining as rank 0. The same protocol
    TRL's VLLMClient speaks; written against vLLM >= 0.28 (`trainer_init`, packed broadcast)."""

    def __init__(self, tokenizer, config: RolloutConfig, device: torch.device, model_name: str = "policy"):
        if not config.server_url:
            from storage.errors import BadInput

            raise BadInput("rollout.server_url: expected the vLLM server's base URL, e.g. http://10.0.0.2:8000")
        _require_vllm()
        import requests

        self.requests, self.url, self.device, self.model_name = requests, config.server_url.rstrip("/"), device, model_name
        super().__init__(None, config, tokenizer)
        self.config = config.model_copy(update={"probe_every": config.probe_every or 1})
        self._group = None

    def _post(self, path: str, payload: dict | None = None) -> dict:
        r = self.requests.post(f"{self.url}{path}", json=payload or {}, timeout=self.config.sync_timeout_s)
        if r.status_code != 200:
            raise SyncError(f"vLLM server {self.url}{path}: HTTP {r.status_code}: {r.text[:300]}")
        return r.json() if r.content else {}

    def _connect(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from vllm.distributed.weight_transfer.nccl_common import trainer_init
        from vllm.utils.network_utils import get_ip

        world = self.requests.get(f"{self.url}/get_world_size", timeout=self.config.sync_timeout_s).json()["world_size"]
        info = {"master_address": get_ip(), "master_port": self.config.server_group_port, "rank_offset": 1,
                "world_size": world + 1, "packed": True}
        # The server blocks in the NCCL rendezvous while it handles the request: join it concurrently.
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self._post, "/init_weight_transfer_engine", {"init_info": info})
            self._group = trainer_init(info)
            pending.result(timeout=self.config.sync_timeout_s)

    def generate(self, groups: list[RequestGroup]) -> list[list[Completion]]:
        out = []
        for g in groups:
            ids = encode_prompt(self.tokenizer, g.messages)
            body = self._post("/v1/completions", {
                "model": self.model_name, "prompt": [ids], "n": len(g.sample_indices), "temperature": g.sampling.temperature,
                "top_p": g.sampling.top_p, "max_tokens": g.sampling.max_tokens, "seed": g.sampling.seed,
                "return_token_ids": True, "return_tokens_as_token_ids": True, "skip_special_tokens": False,
            })
            got = []
            for i, choice in zip(g.sample_indices, body["choices"]):
                c_ids = list(choice["token_ids"])
                got.append(Completion(sample_index=i, text=self.tokenizer.decode(c_ids, skip_special_tokens=True),
                                      finish_reason=choice.get("finish_reason"), prompt_tokens=len(ids),
                                      completion_tokens=len(c_ids), extra={"prompt_ids": ids, "completion_ids": c_ids}))
            out.append(got)
        return out

    def sync_weights(self, model) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from vllm.distributed.weight_transfer.packed_tensor import (
            packed_nccl_broadcast_producer,
        )

        if self._group is None:
            self._connect()
        state = _full_state_dict(model)
        info = {"names": list(state), "dtype_names": [str(t.dtype).removeprefix("torch.") for t in state.values()],
                "shapes": [list(t.shape) for t in state.values()]}
        self._post("/start_weight_update")
        # The workers block in the NCCL receive while handling the request: broadcast concurrently.
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self._post, "/update_weights", {"update_info": info})
            packed_nccl_broadcast_producer(iterator=((n, t.to(self.device)) for n, t in state.items()), group=self._group, src=0,
                                           post_iter_func=lambda item: item[1])
            pending.result(timeout=self.config.sync_timeout_s)
        self._post("/finish_weight_update")
        self._post("/reset_prefix_cache")
        self.syncs += 1

    def engine_logps(self, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
        # echo + logprobs scores the prompt tokens themselves (the completion is appended to the prompt).
        body = self._post("/v1/completions", {"model": self.model_name, "prompt": [list(prompt_ids) + list(completion_ids)],
                                               "max_tokens": 1, "echo": True, "logprobs": 0, "temperature": self.config.temperature})
        return body["choices"][0]["logprobs"]["token_logprobs"][len(prompt_ids):len(prompt_ids) + len(completion_ids)]

    def close(self) -> None:
        return None


def make_rollout_engine(config: RolloutConfig, model, tokenizer, *, model_path: str | None = None,
                        device: torch.device | None = None) -> RolloutEngine:
    """The rollout engine the config names, over the policy `model`."""
    if config.engine == "transformers":
        return RolloutEngine(PolicyTeacher(model, tokenizer, config), config, tokenizer)
    if config.engine == "vllm":
        if not model_path:
            from storage.errors import BadInput

            raise BadInput("rollout.engine vllm: expected model.path (vLLM loads the initial weights from a folder)")
        return VLLMColocated(model_path, tokenizer, config)
    return VLLMServer(tokenizer, config, device or torch.device("cuda"))
