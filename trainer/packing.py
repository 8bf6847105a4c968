"""Packing examples into fixed-capacity rows, the step plan, and collation into tensors.

    bins = best_fit_decreasing([len(e) for e in examples], capacity=2048)
    plan = plan_steps(examples, capacity=2048, packing=True, batch_size=8, seed=0, epochs=1)
    batch = collate([examples[i] for i in row] for row in plan[0][:2])

Best-fit-decreasing puts each example (longest first) into the open row with the least room
that still fits it, which leaves little padding (typically < 2% on long-tailed trace lengths).
Inside a row `position_ids` restart at 0 for every document; transformers (>= 4.56) turns
restarting positions with no attention mask into a block-diagonal causal mask (sdpa, eager and
flex on CPU/GPU; varlen kernels with flash_attention_2), so no token attends across documents
and a packed batch gives the same loss as the same examples unpadded. Padding at the end of a
row is its own "document" (positions restart) with IGNORE labels.

The plan is a pure function of (example lengths, config, seed): every rank computes the same
plan, takes its share of each step, and knows the global token count of the step without
communicating; resuming at step N means skipping N steps of the plan.

Not covered: splitting one example over two rows (an example longer than the capacity is
dropped or truncated in data.py first).
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass

import torch

from .data import IGNORE, Example


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of total length <= capacity (best fit, longest first)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[tuple[int, int]] = []  # sorted (free space, bin id)
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"example {i} has {n} tokens, more than the row capacity {capacity}")
        k = bisect.bisect_left(room, (n, -1))
        if k < len(room):
            free, b = room.pop(k)
            bins[b].append(i)
            bisect.insort(room, (free - n, b))
        else:
            bins.append([i])
            bisect.insort(room, (capacity - n, len(bins) - 1))
    return bins


def plan_steps(
    examples: list[Example], *, capacity: int, packing: bool, batch_size: int, seed: int, epochs: int
) -> list[list[list[int]]]:
    """steps -> rows -> example indices. Rows are shuffled per epoch (seeded); a last step with
    fewer than `batch_size` rows is dropped so every rank gets the same number of rows."""
    lengths = [len(e) for e in examples]
    steps: list[list[list[int]]] = []
    for epoch in range(epochs):
        rows = best_fit_decreasing(lengths, capacity) if packing else [[i] for i in range(len(examples))]
        random.Random(seed * 1_000_003 + epoch).shuffle(rows)
        for s in range(0, len(rows) - batch_size + 1, batch_size):
            steps.append(rows[s : s + batch_size])
    return steps


@dataclass
class Batch:
    """A micro-batch: [rows, length] tensors plus the documents' bookkeeping."""

    input_ids: torch.Tensor
    labels: torch.Tensor  # already shifted: labels[:, t] is the target of position t (IGNORE if none)
    position_ids: torch.Tensor
    doc_ids: torch.Tensor  # global document number per target (-1 where no target), for sequence weighting
    n_docs: int
    n_tokens: int  # real (non-pad) input tokens
    n_slots: int  # rows * length, pads included

    @property
    def padding_waste(self) -> float:
        return 1.0 - self.n_tokens / max(self.n_slots, 1)

    def to(self, device) -> Batch:
        for name in ("input_ids", "labels", "position_ids", "doc_ids"):
            setattr(self, name, getattr(self, name).to(device, non_blocking=True))
        return self


def collate(rows: list[list[Example]], pad_id: int, pad_to_multiple: int = 8, doc_offset: int = 0) -> Batch:
    """Rows of examples -> one padded micro-batch with per-document positions and shifted labels."""
    length = max(sum(len(e) for e in row) for row in rows)
    length = -(-length // pad_to_multiple) * pad_to_multiple
    n = len(rows)
    input_ids = torch.full((n, length), pad_id, dtype=torch.long)
    labels = torch.full((n, length), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((n, length), dtype=torch.long)
    doc_ids = torch.full((n, length), -1, dtype=torch.long)
    doc = doc_offset
    tokens = 0
    for r, row in enumerate(rows):
        at = 0
        for ex in row:
            k = len(ex)
            input_ids[r, at : at + k] = torch.tensor(ex.input_ids)
            # Shift inside the document: position t predicts token t+1 of the same document only.
            labels[r, at : at + k - 1] = torch.tensor(ex.labels[1:])
            position_ids[r, at : at + k] = torch.arange(k)
            doc_ids[r, at : at + k - 1] = torch.where(labels[r, at : at + k - 1] != IGNORE, doc, -1)
            at += k
            doc += 1
            tokens += k
        if at < length:
            position_ids[r, at:] = torch.arange(length - at)  # pads: a document of their own
    return Batch(input_ids, labels, position_ids, doc_ids, doc - doc_offset, tokens, n * length)


def step_weights(rows: list[list[Example]], weighting: str) -> tuple[float, list[float]]:
    """(denominator, per-document weight) for a whole step: token weighting divides the summed
    token loss by the step's supervised tokens; sequence weighting gives every document weight
    1/its tokens and divides by the number of documents."""
    docs = [ex for row in rows for ex in row]
    if weighting == "sequence":
        return float(len(docs)), [1.0 / max(ex.n_supervised, 1) for ex in docs]
    return float(sum(ex.n_supervised for ex in docs)), [1.0] * len(docs)
