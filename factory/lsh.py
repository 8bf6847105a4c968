"""LSH banding over MinHash signatures, and the index of accepted cluster leaders.

    from factory.dedup import minhash_signatures
    from factory.lsh import MinHashIndex, band_keys, choose_bands
    bands, rows = choose_bands(0.8)                      # (25, 5) for 128 permutations
    sigs = minhash_signatures(texts)
    keys = band_keys(sigs, bands, rows)                  # (n, bands) uint32
    index = MinHashIndex(threshold=0.8)                  # the same bands x rows
    index.add(ids, [None] * len(ids), sigs, keys)
    index.candidates(band_keys(more_sigs, bands, rows))  # per row: leader positions sharing a band

Banding only proposes candidates; `factory.dedup` confirms each by exact Jaccard, decides,
fills the index batch after batch (`dedup_records`, `dedup_lake`) and re-exports these names.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from factory.minhash import _SHINGLE_MUL, _U64, _mix

# -- LSH banding -----------------------------------------------------------------------------


def choose_bands(threshold: float, num_perm: int = 128, *, max_miss: float = 1e-3) -> tuple[int, int]:
    """Bands x rows for `threshold`: the most rows per band (fewest chance candidates) whose
    probability of missing a pair AT the threshold, (1 - t**r)**b with b = num_perm // r, is at
    most `max_miss`. For 0.8 and 128 permutations: 25 x 5 (misses 5e-5 at 0.8, 1e-3 at 0.75;
    a pair at Jaccard 0.5 becomes a candidate with p 0.55, at 0.3 with p 0.06, and exact
    confirmation removes those). datasketch 2.0's own optimum for 0.8 and 128 (9 bands x 13
    rows, weighing false positives and negatives equally over the whole range) misses 60% of
    pairs at exactly 0.8, 31% at 0.85 and 7% at 0.9 by the same formula."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    best = (num_perm, 1)
    for r in range(1, num_perm + 1):
        b = num_perm // r
        if (1.0 - threshold**r) ** b <= max_miss:
            best = (b, r)
    return best


def band_keys(sigs: np.ndarray, bands: int, rows: int, groups: np.ndarray | None = None) -> np.ndarray:
    """(n, bands) uint32 keys: each band's rows hashed together (and with the group, when
    given, so only items of one group collide). 32 bits keep the index small (memory goal:
    signatures + index <= 1.5 x 512 B per document); a chance collision (about n / 2**32 per
    band and query) only adds a candidate that exact confirmation removes."""
    sigs = np.asarray(sigs, dtype=np.uint32)
    n = sigs.shape[0]
    part = sigs[:, : bands * rows].reshape(n, bands, rows).astype(_U64)
    with np.errstate(over="ignore"):
        keys = np.zeros((n, bands), dtype=_U64)
        for j in range(rows):
            keys *= _U64(_SHINGLE_MUL)
            keys += part[:, :, j]
        keys += np.arange(bands, dtype=_U64)[None, :] * _U64(0xD6E8FEB86659FD93)
        if groups is not None:
            keys ^= np.asarray(groups, dtype=_U64)[:, None]
        _mix(keys)
    return (keys >> _U64(32)).astype(np.uint32)


def _group_hash(values: Sequence[Any]) -> np.ndarray:
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(str(v).encode(), digest_size=8).digest(), "little") for v in values),
        dtype=_U64,
        count=len(values),
    )


# -- the index of accepted cluster leaders -----------------------------------------------------


@dataclass
class MinHashIndex:
    """Cluster leaders accepted so far: ids, groups, signatures (uint32) and, per band, the
    leaders' band keys sorted (uint32) with their positions (int32): num_perm*4 + bands*8
    bytes per leader (712 for 128 permutations and 25 bands), plus the id strings.

    Adding a batch merges its keys into each band's sorted run (a stable sort of an
    already-sorted run plus the new keys is a merge), so the index grows without a rebuild.
    `fetch_texts(ids) -> {id: text}` supplies leader texts for exact confirmation; without it
    the index keeps leader texts itself (`keep_texts`), else the signature estimate decides.
    `factory.dedup.load_index` fills one from the lake's `minhash` table."""

    threshold: float = 0.8
    num_perm: int = 128
    ngram: int = 5
    seed: int = 1
    bands: int = 0
    rows: int = 0
    fetch_texts: Callable[[list[str]], dict[str, str]] | None = None
    keep_texts: bool = True  # without fetch_texts, hold leader texts so later batches confirm exactly
    texts: dict[str, str] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)
    groups: list[str | None] = field(default_factory=list)
    kept_count: dict[str, int] = field(default_factory=dict)  # cluster id -> items kept

    def __post_init__(self) -> None:
        if not self.bands:
            self.bands, self.rows = choose_bands(self.threshold, self.num_perm)
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands}x{self.rows} exceeds num_perm={self.num_perm}")
        # Signatures in per-batch blocks: appending copies nothing and leaves no growth slack.
        self._blocks: list[np.ndarray] = []
        self._block_starts: list[int] = []
        self._sorted_keys = np.empty((self.bands, 0), np.uint32)
        self._order = np.empty((self.bands, 0), np.int32)

    def __len__(self) -> int:
        return len(self.ids)

    def signature(self, position: int) -> np.ndarray:
        block = bisect.bisect_right(self._block_starts, position) - 1
        return self._blocks[block][position - self._block_starts[block]]

    def signatures(self, start: int = 0) -> np.ndarray:
        """The signatures of leaders start.. (a copy), e.g. those added by the last batch."""
        parts = [b for s, b in zip(self._block_starts, self._blocks) if s + len(b) > start]
        if not parts:
            return np.empty((0, self.num_perm), np.uint32)
        first = self._block_starts[len(self._blocks) - len(parts)]
        return np.concatenate(parts)[start - first :]

    def nbytes(self) -> int:
        """Bytes held by the signatures and the band index; the id strings are not counted."""
        return sum(b.nbytes for b in self._blocks) + self._sorted_keys.nbytes + self._order.nbytes

    def add(self, ids: list[str], groups: list[str | None], sigs: np.ndarray, keys: np.ndarray) -> None:
        base, m = len(self.ids), len(ids)
        if not m:
            return
        self._blocks.append(np.ascontiguousarray(sigs, dtype=np.uint32))
        self._block_starts.append(base)
        self.ids.extend(ids)
        self.groups.extend(groups)
        pos = np.arange(base, base + m, dtype=np.int32)
        cat_keys = np.concatenate([self._sorted_keys, np.asarray(keys, np.uint32).T], axis=1)
        cat_pos = np.concatenate([self._order, np.broadcast_to(pos, (self.bands, m))], axis=1)
        order = np.argsort(cat_keys, axis=1, kind="stable")  # timsort: a merge of two runs
        self._sorted_keys = np.take_along_axis(cat_keys, order, axis=1)
        self._order = np.take_along_axis(cat_pos, order, axis=1)

    def candidates(self, keys: np.ndarray) -> list[np.ndarray]:
        """For each row of `keys`, the leader positions sharing at least one band key."""
        out: list[list[np.ndarray]] = [[] for _ in range(len(keys))]
        if not len(self.ids) or not len(keys):
            return [np.empty(0, np.int64) for _ in range(len(keys))]
        for j in range(self.bands):
            sorted_keys = self._sorted_keys[j]
            lo = np.searchsorted(sorted_keys, keys[:, j], side="left")
            hi = np.searchsorted(sorted_keys, keys[:, j], side="right")
            for q in np.flatnonzero(hi > lo):
                out[q].append(self._order[j, lo[q] : hi[q]])
        return [np.unique(np.concatenate(c)) if c else np.empty(0, np.int64) for c in out]


def _within_batch_pairs(keys: np.ndarray, max_run: int = 64) -> list[set[int]]:
    """For each item, the earlier items of the batch sharing a band key (runs of equal keys
    longer than `max_run` are linked to their first `max_run` members only: a huge run means
    near-identical texts, and the leader is among the first)."""
    n = len(keys)
    earlier: list[set[int]] = [set() for _ in range(n)]
    for j in range(keys.shape[1]):
        col = keys[:, j]
        order = np.argsort(col, kind="stable")
        sk = col[order]
        same = np.flatnonzero(sk[1:] == sk[:-1])
        if not len(same):
            continue
        # Runs of equal keys: walk the (few) positions that have an equal predecessor.
        run_start = None
        prev = -2
        for p in same:
            if p != prev + 1:
                run_start = p
            members = order[run_start : p + 2]
            newest = order[p + 1]
            for m in members[: min(len(members) - 1, max_run)]:
                if m < newest:
                    earlier[newest].add(int(m))
                elif m > newest:
                    earlier[int(m)].add(int(newest))
            prev = p
    return earlier

