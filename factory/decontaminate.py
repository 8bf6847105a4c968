"""Decontamination: flag problems and responses that overlap the benchmarks we evaluate on.

    from factory.decontaminate import decontaminate_records, summary
    rows = decontaminate_records(records, "problem", benchmarks=["math500", "gsm8k"])
    rows[0]["contaminated"], rows[0]["benchmark"], rows[0]["benchmark_id"], rows[0]["score"]
    summary(rows, ["math500", "gsm8k"])   # per benchmark: hits, rows checked, share

    # responses: the text after </think> and the reasoning are checked separately
    decontaminate_records(samples, "completion", kind="response")

The benchmarks are the registry of `factory.benchmarks` (shipped in the package, no network).
Three checks, in this order of trust:

- exact: the candidate's normalised words equal a benchmark item's (score 1.0). Catches the
  very short items ("Evaluate $(1+2i)6-3i$.", 4 words) that no n-gram can.
- ngram: the candidate shares at least `min_matches` word n-grams (n = 13 by default, the
  GPT-3 / Llama-2 choice) with a benchmark item. Words are normalised first: NFKC,
  lower-case, LaTeX spacing commands (`\\left`, `\\mathrm`, ...) and thousands separators
  dropped, every other non-alphanumeric character a word break, numbers kept (a problem with
  other numbers is another problem). Items shorter than n words but at least `short_min`
  words are indexed as one whole-item gram: a candidate that contains the whole item hits.
  score = the share of the benchmark item's distinct n-grams found in the candidate ("how much
  of the benchmark item is in this text"): it reads the same for a problem and for a long
  response that quotes the problem, where a candidate-side share would be tiny.
- minhash (problems only): estimated Jaccard of 5-word shingles (signatures from
  `factory.dedup.minhash_signatures`) >= `minhash_threshold` (0.7), found through LSH bands
  (32 x 4: a pair at J = 0.7 becomes a candidate with probability 0.9998) and decided on the
  exact shingle Jaccard (dedup.shingle_sets), which is the score. It catches reworded
  problems whose edits break every 13-gram, and short problems with a word added. Not run on
  responses: a long trace's Jaccard with any problem is near zero.

Each hit is {benchmark, benchmark_id, method, score, matched, part}; `matched` is the longest
matched run in the candidate, in normalised words (lower-case, punctuation dropped), since the
normalisation does not keep character offsets. A row's `benchmark`/`score`/... are those of its
best hit (exact, then ngram, then minhash; higher score first), its method in `match_method`;
all hits are in `contamination`.

The lake: `problems` is append-only, so `decontaminate_lake` does not rewrite rows; it returns
the hits of one run's rows and the flow stores them (best: fill the `contamination` column
with `contamination_labels(row)` before a batch of problems is committed).

Not covered: paraphrases that change most words (needs embeddings or an LLM judge), problems
translated to another language, numbers changed consistently (a "new" problem by design), and
benchmark solutions (only the problem text of each benchmark item is indexed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from storage.errors import BadInput

from . import benchmarks as registry
from .teachers.base import split_reasoning

log = logging.getLogger(__name__)

NGRAM = 13
SHORT_MIN = 8  # items of 8..n-1 words are matched as whole grams; shorter ones only exactly / by MinHash
MINHASH_THRESHOLD = 0.7
NUM_PERM = 128
SHINGLE = 5
MINHASH_MARGIN = 0.2  # pairs estimated this far under the threshold get the exact Jaccard
BANDS, ROWS = 32, 4  # BANDS * ROWS == NUM_PERM
MAX_HITS = 5  # hits kept per row (best first)
CHUNK_WORDS = 1 << 21  # words per vectorised lookup batch (~100 MB of temporaries)

# -- normalisation ------------------------------------------------------------------------

# LaTeX commands that only change spacing or font: "$6.5 \mathrm{~m}$" and "6.5 m" must match.
_LATEX_NOISE = re.compile(
    r"\\(?:left|right|big|Big|bigg|Bigg|displaystyle|textstyle|mathrm|mathbf|mathit|text|textbf|textit|operatorname|quad|qquad)(?![a-zA-Z])"
)
_LATEX_FRAC = re.compile(r"\\[dt]frac(?![a-zA-Z])")  # \dfrac, \tfrac and \frac are one fraction
_THOUSANDS = re.compile(r"(?<=\d)(?:,|\{,\}|\\,)(?=\d{3}(?!\d))")  # 1,000 / 1{,}000 / 1\,000 -> 1000
_WORD = re.compile(r"[^\W_]+")


def normalise_words(text: str) -> list[str]:
    """The words that n-grams and shingles are made of."""
    text = unicodedata.normalize("NFKC", text)
    text = _THOUSANDS.sub("", text)
    text = _LATEX_FRAC.sub(r"\\frac", text)
    text = _LATEX_NOISE.sub(" ", text)
    return _WORD.findall(text.casefold())


_word_hashes: dict[str, int] = {}


def _word_ids(words: Sequence[str]) -> np.ndarray:
    # A stable 64-bit hash per word (blake2b, not Python's salted hash), cached: the vocabulary
    # of a corpus is small next to its word count.
    cache = _word_hashes
    get = cache.get
    vals = [get(w) for w in words]
    if None in vals:
        for i, w in enumerate(words):
            if vals[i] is None:
                vals[i] = h = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
                if len(cache) < 5_000_000:  # a bound: a corpus of random tokens must not eat memory
                    cache[w] = h
    return np.fromiter(vals, dtype=np.uint64, count=len(vals))


_P = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the polynomial gram hash


def gram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """64-bit hashes of every run of n consecutive words (len(ids) - n + 1 of them); the gram
    length is mixed in, so a 9-word gram never equals a 13-word one."""
    m = len(ids) - n + 1
    if m <= 0:
        return np.empty(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = np.full(m, np.uint64(n) * np.uint64(0xD6E8FEB86659FD93), dtype=np.uint64)
        for k in range(n):
            h = h * _P + ids[k : k + m]
        # a final avalanche (splitmix64's), so nearby grams do not share low bits
        h ^= h >> np.uint64(31)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
    return h


# -- the index ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    benchmark: str
    benchmark_id: str
    method: str  # exact | ngram | minhash
    score: float
    matched: str
    part: str = "text"  # problems: "text"; responses: "answer" or "reasoning"

    def as_dict(self) -> dict:
        return asdict(self)


_METHOD_RANK = {"exact": 0, "ngram": 1, "minhash": 2}


def _best_first(h: Hit) -> tuple:
    return (_METHOD_RANK[h.method], -h.score)


class BenchmarkIndex:
    """Hashed grams (and MinHash signatures) of every problem of a set of benchmarks; built
    once per set and settings (`index_for` caches it), then read by any number of batches."""

    def __init__(self, names: Sequence[str], *, ngram: int = NGRAM, short_min: int = SHORT_MIN, minhash: bool = True):
        if ngram < 2:
            raise BadInput(f"ngram={ngram}: expected an integer >= 2")
        t0 = time.perf_counter()
        self.names = registry.parse_names(list(names))
        self.ngram = ngram
        self.short_min = min(short_min, ngram)
        self.item_bench: list[str] = []
        self.item_id: list[str] = []
        self.item_words: list[list[str]] = []
        keys, owners, counts = [], [], []
        exact: dict[bytes, list[int]] = {}
        short_lengths: set[int] = set()
        for name in self.names:
            for item in registry.load(name):
                idx = len(self.item_id)
                words = normalise_words(item["problem"])
                self.item_bench.append(name)
                self.item_id.append(item["id"])
                self.item_words.append(words)
                ids = _word_ids(words)
                if words:
                    exact.setdefault(_exact_key(words), []).append(idx)
                if len(words) >= ngram:
                    g = np.unique(gram_hashes(ids, ngram))
                elif len(words) >= self.short_min:
                    g = gram_hashes(ids, len(words))  # the whole item is its one gram
                    short_lengths.add(len(words))
                else:
                    g = np.empty(0, dtype=np.uint64)
                keys.append(g)
                owners.append(np.full(len(g), idx, dtype=np.int32))
                counts.append(len(g))
        keys_a = np.concatenate(keys) if keys else np.empty(0, np.uint64)
        owners_a = np.concatenate(owners) if owners else np.empty(0, np.int32)
        order = np.argsort(keys_a, kind="stable")
        self.keys = keys_a[order]  # sorted; a key shared by several items repeats
        bits = max(16, min(26, int(np.ceil(np.log2(max(len(self.keys), 1) * 32)))))  # ~3% filled
        self.filter_mask = np.uint64((1 << bits) - 1)
        self.filter = np.zeros(1 << bits, dtype=bool)
        self.filter[self.keys & self.filter_mask] = True
        self.owners = owners_a[order]
        self.item_grams = np.asarray(counts, dtype=np.int64)
        self.exact = exact
        self.lengths = [ngram] + sorted(short_lengths)
        self.signatures: np.ndarray | None = None
        if minhash:
            self._build_minhash()
        log.info(
            "decontamination index: %d items of %s, %d grams (n=%d, short lengths %s), minhash=%s, %.2fs",
            len(self.item_id), ",".join(self.names), len(self.keys), ngram, self.lengths[1:], minhash,
            time.perf_counter() - t0,
        )

    def __len__(self) -> int:
        return len(self.item_id)

    # -- MinHash: LSH bands over the benchmark items' signatures ---------------------------

    def _build_minhash(self) -> None:
        usable = [i for i, w in enumerate(self.item_words) if len(w) >= SHINGLE]
        self.sig_items = np.asarray(usable, dtype=np.int64)
        texts = [" ".join(self.item_words[i]) for i in usable]
        self.signatures = _signatures(texts)
        from .dedup import shingle_sets

        self.item_shingles = shingle_sets(texts, ngram=SHINGLE)
        bands = _band_keys(self.signatures)  # (items, BANDS)
        flat = bands.ravel()
        order = np.argsort(flat, kind="stable")
        self.band_keys = flat[order]
        self.band_rows = (order // BANDS).astype(np.int64)  # row in self.signatures

    def minhash_hits(self, texts_words: Sequence[list[str]], threshold: float) -> list[list[Hit]]:
        out: list[list[Hit]] = [[] for _ in texts_words]
        if self.signatures is None or not len(self.sig_items):
            return out
        docs = [i for i, w in enumerate(texts_words) if len(w) >= SHINGLE]
        if not docs:
            return out
        sig = _signatures([" ".join(texts_words[i]) for i in docs])
        bands = _band_keys(sig).ravel()
        left = np.searchsorted(self.band_keys, bands, "left")
        right = np.searchsorted(self.band_keys, bands, "right")
        hit = np.nonzero(right > left)[0]
        if not len(hit):
            return out
        # every (doc, item) pair sharing a band, then confirmed on the whole signature
        reps = right[hit] - left[hit]
        cand_doc = np.repeat(hit // BANDS, reps)
        starts = np.repeat(left[hit] - np.cumsum(reps) + reps, reps) + np.arange(reps.sum())
        cand_item = self.band_rows[starts]
        pairs = np.unique(np.stack([cand_doc, cand_item], axis=1), axis=0)
        est = (sig[pairs[:, 0]] == self.signatures[pairs[:, 1]]).mean(axis=1)
        # The estimate is noisy on short texts (a 7-word problem has 3 shingles: J = 0.75 can
        # estimate 0.66), so pairs near the threshold are decided on their exact shingle Jaccard.
        pairs = pairs[est >= threshold - MINHASH_MARGIN]
        if not len(pairs):
            return out
        from .dedup import exact_jaccard, shingle_sets

        need = np.unique(pairs[:, 0])
        sets = dict(zip(need.tolist(), shingle_sets([" ".join(texts_words[docs[i]]) for i in need], ngram=SHINGLE)))
        for d, r in pairs.tolist():
            j = exact_jaccard(sets[d], self.item_shingles[r])
            if j >= threshold:
                item = int(self.sig_items[r])
                out[docs[d]].append(
                    Hit(self.item_bench[item], self.item_id[item], "minhash", round(float(j), 4), " ".join(self.item_words[item]))
                )
        return out

    # -- exact and n-gram ------------------------------------------------------------------

    def gram_hits(self, texts_words: Sequence[list[str]], min_matches: int = 1, part: str = "text") -> list[list[Hit]]:
        # Batches of about CHUNK_WORDS words: the vectorised lookup holds a few 8-byte arrays
        # per word, so a batch of long traces must not become one giant array.
        out: list[list[Hit]] = []
        start, words = 0, 0
        for i, w in enumerate(texts_words):
            words += len(w)
            if words >= CHUNK_WORDS or i == len(texts_words) - 1:
                out.extend(self._gram_hits(texts_words[start : i + 1], min_matches, part))
                start, words = i + 1, 0
        return out

    def _gram_hits(self, texts_words: Sequence[list[str]], min_matches: int, part: str) -> list[list[Hit]]:
        out: list[list[Hit]] = [[] for _ in texts_words]
        for d, words in enumerate(texts_words):
            if words:
                for item in self.exact.get(_exact_key(words), ()):
                    out[d].append(Hit(self.item_bench[item], self.item_id[item], "exact", 1.0, " ".join(words), part))
        if not len(self.keys) or not texts_words:
            return out
        # The whole batch as one word array: one vectorised hash + lookup per gram length, the
        # grams that straddle two texts masked out; Python only touches the hits.
        lens = np.fromiter((len(w) for w in texts_words), dtype=np.int64, count=len(texts_words))
        ids = _word_ids([w for words in texts_words for w in words])
        doc_start = np.cumsum(lens) - lens
        doc_of = np.repeat(np.arange(len(lens)), lens)
        per_doc: dict[int, dict[int, dict[int, int]]] = {}  # doc -> item -> start -> gram length
        matched_keys: dict[tuple[int, int], set[int]] = {}
        for n in self.lengths:
            flat = gram_hashes(ids, n)
            if not len(flat):
                continue
            # A one-lookup bitmap filter first: a binary search per gram into the sorted keys
            # costs ~17 cache misses, and almost no gram of clean text is a benchmark gram.
            maybe = np.nonzero(self.filter[flat & self.filter_mask])[0]
            docs = doc_of[maybe]
            maybe = maybe[maybe + n <= doc_start[docs] + lens[docs]]  # not across two texts
            probe = flat[maybe]
            left = np.searchsorted(self.keys, probe, "left")
            hit = self.keys[np.minimum(left, len(self.keys) - 1)] == probe
            maybe, probe, left = maybe[hit], probe[hit], left[hit]
            right = np.searchsorted(self.keys, probe, "right")
            for f, key, lo, hi in zip(maybe.tolist(), probe.tolist(), left.tolist(), right.tolist()):
                d = int(doc_of[f])
                start = f - int(doc_start[d])
                for item in self.owners[lo:hi].tolist():
                    per_doc.setdefault(d, {}).setdefault(item, {})[start] = n
                    matched_keys.setdefault((d, item), set()).add(key)
        for d, items in per_doc.items():
            words = texts_words[d]
            for item, starts in items.items():
                n_matched = len(matched_keys[(d, item)])
                whole = len(self.item_words[item]) < self.ngram  # a short item's one gram: all of it
                if n_matched < min_matches and not whole:
                    continue
                score = n_matched / max(int(self.item_grams[item]), 1)
                out[d].append(Hit(self.item_bench[item], self.item_id[item], "ngram", round(min(score, 1.0), 4),
                                  _longest_run(words, starts), part))
        return out


def _exact_key(words: list[str]) -> bytes:
    return hashlib.blake2b(" ".join(words).encode(), digest_size=16).digest()


def _longest_run(words: list[str], starts: dict[int, int]) -> str:
    """The words covered by the longest chain of overlapping matched grams."""
    best = (0, 0)
    run_start = run_end = -1
    for s in sorted(starts):
        end = s + starts[s]
        if s <= run_end:  # overlaps or touches the current run
            run_end = max(run_end, end)
        else:
            run_start, run_end = s, end
        if run_end - run_start > best[1] - best[0]:
            best = (run_start, run_end)
    return " ".join(words[best[0] : best[1]])


def _signatures(texts: list[str]) -> np.ndarray:
    # dedup's signatures, so a problem's MinHash here is the one the dedup stage computes.
    from .dedup import minhash_signatures

    if not texts:
        return np.empty((0, NUM_PERM), dtype=np.uint64)
    return np.asarray(minhash_signatures(texts, num_perm=NUM_PERM, ngram=SHINGLE, seed=1)).astype(np.uint64)


def _band_keys(sig: np.ndarray) -> np.ndarray:
    """(docs, BANDS) 64-bit keys: each band's ROWS values hashed together, the band index mixed
    in, so one sorted array serves every band."""
    b = sig.reshape(len(sig), BANDS, ROWS)
    with np.errstate(over="ignore"):
        h = np.arange(BANDS, dtype=np.uint64)[None, :] * np.uint64(0xD6E8FEB86659FD93) + np.uint64(1)
        for r in range(ROWS):
            h = h * _P + b[:, :, r]
        h ^= h >> np.uint64(29)
    return h


def index_for(names: str | Sequence[str] | None = None, *, ngram: int = NGRAM, short_min: int = SHORT_MIN, minhash: bool = True) -> BenchmarkIndex:
    """The index of a benchmark set (None: all), built once per process and settings."""
    return _index_for(tuple(registry.parse_names(names)), int(ngram), int(short_min), bool(minhash))


@lru_cache(maxsize=8)
def _index_for(names: tuple[str, ...], ngram: int, short_min: int, minhash: bool) -> BenchmarkIndex:
    return BenchmarkIndex(names, ngram=ngram, short_min=short_min, minhash=minhash)


# -- records ------------------------------------------------------------------------------


def find_hits(
    texts: Sequence[str | None],
    index: BenchmarkIndex,
    *,
    kind: str = "problem",
    min_matches: int = 1,
    minhash_threshold: float | None = MINHASH_THRESHOLD,
    min_score: float = 0.0,
) -> list[list[Hit]]:
    """All hits of each text, best first (at most MAX_HITS). `min_score` drops n-gram hits that
    cover less of their benchmark item (e.g. 0.5 keeps GSM8K-style templates with new numbers
    and a new story, which share one 13-gram, out of the hits)."""
    if kind not in ("problem", "response"):
        raise BadInput(f"kind={kind!r}: expected 'problem' or 'response'")
    if min_matches < 1:
        raise BadInput(f"min_matches={min_matches}: expected an integer >= 1")
    out: list[list[Hit]] = [[] for _ in texts]
    if kind == "problem":
        words = [normalise_words(t) if isinstance(t, str) else [] for t in texts]
        for i, hits in enumerate(index.gram_hits(words, min_matches)):
            out[i].extend(hits)
        if minhash_threshold is not None and index.signatures is not None:
            for i, hits in enumerate(index.minhash_hits(words, minhash_threshold)):
                out[i].extend(hits)
    else:
        # A response quotes a benchmark in its answer or in its reasoning; checked apart so no
        # gram spans the </think> boundary and the hit says where the quote is.
        parts: dict[str, list[list[str]]] = {"answer": [], "reasoning": []}
        for t in texts:
            reasoning, answer = split_reasoning(t) if isinstance(t, str) else (None, None)
            parts["answer"].append(normalise_words(answer or ""))
            parts["reasoning"].append(normalise_words(reasoning or ""))
        for part, words in parts.items():
            for i, hits in enumerate(index.gram_hits(words, min_matches, part=part)):
                out[i].extend(hits)
    for i, hits in enumerate(out):
        # one hit per benchmark item: its most trusted method
        seen: dict[tuple[str, str], Hit] = {}
        for h in sorted(hits, key=_best_first):
            if h.method == "ngram" and h.score < min_score:
                continue
            seen.setdefault((h.benchmark, h.benchmark_id), h)
        out[i] = list(seen.values())[:MAX_HITS]
    return out


def decontaminate_records(
    records: Iterable[dict],
    column: str,
    benchmarks: str | Sequence[str] | None = None,
    *,
    ngram: int = NGRAM,
    min_matches: int = 1,
    minhash_threshold: float | None = MINHASH_THRESHOLD,
    kind: str = "problem",
    short_min: int = SHORT_MIN,
    min_score: float = 0.0,
    index: BenchmarkIndex | None = None,
) -> list[dict]:
    """Every input row, with `contaminated`, `benchmark`, `benchmark_id`, `score`, `matched`,
    `match_method` (of the best hit; None when clean) and `contamination` (all hits, best
    first, as dicts; named like the problems column, and not `method`/`hits`, which dedup's
    output already uses). A row whose
    `column` is null is checked as empty text (clean); a column missing from every row is
    BadInput. `minhash_threshold=None` turns MinHash off."""
    rows = list(records)
    if rows and not any(column in r for r in rows):
        raise BadInput(f"column {column!r} is in no input row; columns: {sorted(rows[0])}")
    if index is None:
        index = index_for(benchmarks, ngram=ngram, short_min=short_min,
                          minhash=minhash_threshold is not None and kind == "problem")
    t0 = time.perf_counter()
    all_hits = find_hits([r.get(column) for r in rows], index, kind=kind, min_matches=min_matches,
                         minhash_threshold=minhash_threshold, min_score=min_score)
    out = []
    for r, hits in zip(rows, all_hits):
        best = hits[0] if hits else None
        out.append({
            **r,
            "contaminated": best is not None,
            "benchmark": best.benchmark if best else None,
            "benchmark_id": best.benchmark_id if best else None,
            "score": best.score if best else 0.0,
            "matched": best.matched if best else None,
            "match_method": best.method if best else None,
            "contamination": [h.as_dict() for h in hits],
        })
    n_bad = sum(r["contaminated"] for r in out)
    log.info("decontamination: %d of %d rows contaminated (%s, column %r), %.2fs",
             n_bad, len(out), ",".join(index.names), column, time.perf_counter() - t0)
    return out


def contamination_labels(row: dict) -> list[str]:
    """A row's hits as the `problems.contamination` column holds them (one JSON text each)."""
    return [json.dumps(h, sort_keys=True, ensure_ascii=False) for h in row.get("contamination") or []]


def summary(rows: Sequence[dict], benchmarks: str | Sequence[str] | None = None) -> dict[str, Any]:
    """Per benchmark: rows with a hit on it (any hit, not only the best), rows checked, share.
    `benchmarks` lists the benchmarks checked, so those without hits show zeros; without it
    only benchmarks with hits appear."""
    names = registry.parse_names(benchmarks) if benchmarks is not None else []
    n = len(rows)
    per: dict[str, int] = {name: 0 for name in names}
    for r in rows:
        for b in {h["benchmark"] for h in r.get("contamination") or []}:
            per[b] = per.get(b, 0) + 1
    contaminated = sum(bool(r.get("contaminated")) for r in rows)
    return {
        "rows": n,
        "contaminated": contaminated,
        "share": contaminated / n if n else 0.0,
        "benchmarks": {b: {"hits": c, "rows_checked": n, "share": c / n if n else 0.0} for b, c in per.items()},
    }


# -- the lake stage -----------------------------------------------------------------------

_LAKE_TABLES = {"problems": ("problem_id", "problem", "problem"), "samples": ("sample_id", "completion", "response")}


def decontaminate_lake(lake, run_id: str, table: str = "problems", benchmarks: str | Sequence[str] | None = None, **kwargs) -> list[dict]:
    """The rows of one run in `table` ("problems": the problem text; "samples": the completion,
    as a response), each as {id column, contaminated, benchmark, benchmark_id, score, matched,
    match_method, contamination}. Nothing is written: lake tables are append-only, so the flow stores the
    result (a `contamination` value for problems not yet committed, or a table of hits)."""
    if table not in _LAKE_TABLES:
        raise BadInput(f"table={table!r}: expected one of {sorted(_LAKE_TABLES)}")
    key, column, kind = _LAKE_TABLES[table]
    data = lake.query(f"SELECT {key}, {column} FROM {table} WHERE run_id = ?", [run_id]).to_pylist()
    kwargs.setdefault("kind", kind)
    rows = decontaminate_records(data, column, benchmarks, **kwargs)
    for r in rows:
        r.pop(column, None)
    return rows
