"""Training rows from the lake, tokenised with the student's chat template, loss on the assistant
turn only.

    from trainer.config import DataConfig
    from trainer.data import read_rows, tokenize_rows
    rows = read_rows(DataConfig(dataset="gsm8k-r1", max_length=4096))
    examples, stats = tokenize_rows(rows, tokenizer, cfg)

Rows come from a saved dataset version or any SELECT, streamed through DuckDB as Arrow batches
(`Lake.dataset_reader` / `Lake.sql`), or from a JSONL file of the same rows. A row has
`messages` (role/content; the prompt, and optionally the assistant answer last), and
`reasoning` + `answer` (storage/schemas.py SAMPLES): the assistant turn trained on is
`<think>\\n{reasoning}\\n</think>\\n\\n{answer}`. When `reasoning` is absent the last assistant
message is the target as written.

The mask covers the assistant turn from its first token through its end-of-turn token (so the
model learns to stop) and nothing after it. A template lint runs before training and on every
row: it fails loudly on an empty assistant mask, an end-of-turn token missing from the mask,
an empty `<think>` block being supervised, or a template that is not prefix-stable (the prompt
rendered with the generation prompt is not a token prefix of the full conversation).

Not covered: supervising earlier assistant turns of a multi-turn conversation (only the last is
trained on); tool calls; images.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage.errors import BadInput

from .config import DataConfig

log = logging.getLogger(__name__)

IGNORE = -100  # label of an unsupervised token
ASSISTANT_FORMAT = "<think>\n{reasoning}\n</think>\n\n{answer}"
_EMPTY_THINK = re.compile(r"<think>\s*</think>")


@dataclass
class Example:
    """One tokenised conversation: labels are IGNORE outside the supervised assistant turn."""

    input_ids: list[int]
    labels: list[int]
    prompt_len: int  # tokens before the assistant turn (the prompt, generation header included)
    row: int  # position of the source row in the stream
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. sparse teacher top-k (see distill)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_supervised(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


@dataclass
class DataStats:
    rows: int = 0
    examples: int = 0
    dropped_too_long: int = 0
    truncated: int = 0
    skipped_empty_reasoning: int = 0
    answer_only: int = 0  # rows with no reasoning trained on their answer alone (empty_reasoning: answer_only)
    tokens: int = 0
    supervised_tokens: int = 0


# -- reading rows ------------------------------------------------------------------------


def read_rows(cfg: DataConfig) -> Iterator[dict]:
    """The configured rows as dicts, streamed batch by batch."""
    n = 0
    for batch in _batches(cfg):
        for row in batch.to_pylist():
            if cfg.limit is not None and n >= cfg.limit:
                return
            n += 1
            yield row


def _batches(cfg: DataConfig):
    if cfg.jsonl:
        import pyarrow as pa

        path = Path(cfg.jsonl)
        if not path.is_file():
            raise BadInput(f"data.jsonl {path}: no such file")
        rows = []
        with path.open(encoding="utf-8") as fh:
            for i, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise BadInput(f"{path} line {i}: not JSON ({exc.msg})") from None
        yield pa.Table.from_pylist(rows) if rows else pa.table({})
        return
    from storage import Lake

    with Lake.open(cfg.store, cfg.catalog, create=False) as lake:
        if cfg.dataset:
            reader = lake.dataset_reader(cfg.dataset, cfg.version, batch_size=1024)
            yield from reader
        else:
            yield from lake.sql(cfg.sql).to_batches(max_chunksize=1024)


# -- conversations -----------------------------------------------------------------------


def conversation(row: dict, where: str = "row") -> tuple[list[dict], str]:
    """(prompt messages, assistant text) of a row."""
    messages = [dict(role=m["role"], content=m["content"] or "") for m in (row.get("messages") or [])]
    if not messages and row.get("prompt"):
        messages = [{"role": "user", "content": row["prompt"]}]
    reasoning = row.get("reasoning")
    if reasoning is not None:
        if messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]  # the structured fields win over a rendered assistant message
        target = ASSISTANT_FORMAT.format(reasoning=reasoning.strip("\n"), answer=(row.get("answer") or "").strip())
    elif messages and messages[-1]["role"] == "assistant":
        target = messages.pop()["content"]
    else:
        raise BadInput(f"{where}: expected `reasoning` (+ `answer`) or a last assistant message to train on")
    if not messages:
        raise BadInput(f"{where}: expected prompt messages (`messages` or `prompt`) before the assistant turn")
    return messages, target


def render(tokenizer, prompt: list[dict], target: str) -> tuple[str, str]:
    """(prompt text with the generation header, full conversation text)."""
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": target}], tokenize=False)
    return prompt_text, full_text


def encode(tokenizer, prompt_text: str, full_text: str, where: str) -> tuple[list[int], list[int], int]:
    """(input_ids, labels, prompt_len) of one rendered conversation, linted."""
    if not full_text.startswith(prompt_text):
        raise BadInput(f"{where}: chat template is not prefix-stable: the prompt with the generation header is not the start of the full conversation")
    enc = tokenizer(full_text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    boundary = len(prompt_text)
    starts = [s for s, _ in offsets]
    try:
        prompt_len = starts.index(boundary) if boundary < len(full_text) else len(ids)
    except ValueError:
        raise BadInput(f"{where}: chat template lint: no token starts where the assistant turn starts (char {boundary}); "
                       "the prompt and the answer merge into one token") from None
    eos = tokenizer.eos_token_id
    ends = [i for i in range(prompt_len, len(ids)) if ids[i] == eos]
    labels = [IGNORE] * len(ids)
    if not ends:
        raise BadInput(f"{where}: chat template lint: the end-of-turn token {tokenizer.eos_token!r} is not in the assistant turn, "
                       "so the model would never learn to stop")
    end = ends[0]
    labels[prompt_len : end + 1] = ids[prompt_len : end + 1]
    return ids, labels, prompt_len


def lint_template(tokenizer) -> None:
    """Check the chat template on a probe conversation before any training: a non-empty assistant
    mask that ends with the end-of-turn token and starts right after the generation header."""
    prompt = [{"role": "user", "content": "What is 2+3?"}]
    target = ASSISTANT_FORMAT.format(reasoning="2+3 is 5.", answer="5")
    ids, labels, prompt_len = encode(tokenizer, *render(tokenizer, prompt, target), where="chat template lint")
    supervised = [t for t in labels if t != IGNORE]
    if not supervised:
        raise BadInput("chat template lint: the assistant mask is empty")
    if supervised[-1] != tokenizer.eos_token_id:
        raise BadInput("chat template lint: the mask does not end with the end-of-turn token")
    text = tokenizer.decode(supervised)
    if "<think>" not in text or "2+3 is 5." not in text:
        raise BadInput(f"chat template lint: the reasoning is not inside the supervised tokens (mask decodes to {text!r})")


def tokenize_row(row: dict, tokenizer, cfg: DataConfig, index: int, stats: DataStats | None = None) -> Example | None:
    """One row as an Example, or None when the config says to skip it (too long, empty reasoning)."""
    stats = stats if stats is not None else DataStats()
    where = f"row {index}" + (f" (sample_id {row['sample_id']})" if row.get("sample_id") else "")
    prompt, target = conversation(row, where)
    if _EMPTY_THINK.search(target) or (row.get("reasoning") is not None and not row["reasoning"].strip()):
        if cfg.empty_reasoning == "skip":
            stats.skipped_empty_reasoning += 1
            return None
        if cfg.empty_reasoning == "answer_only":
            # A teacher that writes no reasoning (SmolLM2 in the CPU loop): train on the reply as
            # it was sampled, without a think block it never wrote.
            target = _EMPTY_THINK.sub("", target).strip()
            stats.answer_only += 1
        else:
            raise BadInput(f"{where}: empty <think> block would be supervised (teach the model to skip reasoning); "
                           "filter the dataset or set data.empty_reasoning: skip (or answer_only for a teacher that writes none)")
    ids, labels, prompt_len = encode(tokenizer, *render(tokenizer, prompt, target), where=where)
    # Tokens after the end-of-turn token (the template's trailing newline) are not trained on.
    last = max(i for i, t in enumerate(labels) if t != IGNORE)
    ids, labels = ids[: last + 1], labels[: last + 1]
    if len(ids) > cfg.max_length:
        if cfg.truncation == "drop" or prompt_len >= cfg.max_length - 1:
            stats.dropped_too_long += 1
            return None
        ids, labels = ids[: cfg.max_length], labels[: cfg.max_length]
        stats.truncated += 1
    ex = Example(input_ids=ids, labels=labels, prompt_len=prompt_len, row=index)
    if ex.n_supervised == 0:
        raise BadInput(f"{where}: the assistant mask is empty")
    return ex


def tokenize_rows(rows: Iterable[dict], tokenizer, cfg: DataConfig) -> tuple[list[Example], DataStats]:
    """All rows as Examples (lint first), with counts of what was dropped and why."""
    lint_template(tokenizer)
    stats = DataStats()
    out: list[Example] = []
    for i, row in enumerate(rows):
        stats.rows += 1
        ex = tokenize_row(row, tokenizer, cfg, i, stats)
        if ex is None:
            continue
        ex.extra = _extra_fields(row)
        out.append(ex)
        stats.tokens += len(ex)
        stats.supervised_tokens += ex.n_supervised
    stats.examples = len(out)
    if not out:
        raise BadInput(f"data: no trainable examples out of {stats.rows} row(s) ({stats})")
    if stats.dropped_too_long:
        log.warning("dropped %d example(s) longer than data.max_length=%d", stats.dropped_too_long, cfg.max_length)
    return out, stats


def _extra_fields(row: dict) -> dict:
    """What sparse KD needs of a row besides its tokens: the teacher's top-k log-probs, either
    already per supervised token (metadata JSON key `teacher_topk`: {"ids": [[...]], "logprobs":
    [[...]]}), or as the `teacher_topk` table stores them (columns `token_ids`, `top_ids`,
    `top_logprobs` joined to the row: aligned by trainer/distill.py), and the row's sample_id (to
    look them up in that table)."""
    out: dict[str, Any] = {"sample_id": row["sample_id"]} if row.get("sample_id") else {}
    if row.get("top_logprobs") is not None:
        out["topk_record"] = {k: row.get(k) for k in ("token_ids", "top_ids", "top_logprobs")}
    meta = row.get("metadata")
    if isinstance(meta, str) and "teacher_topk" in meta:
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError:
            return out
    if isinstance(meta, dict) and "teacher_topk" in meta:
        out["teacher_topk"] = meta["teacher_topk"]
    return out
