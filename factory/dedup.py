"""Deduplication: exact (normalised text) and near-duplicate (MinHash-LSH), incremental across runs.

    from factory.dedup import dedup_records, dedup_lake, minhash_signatures
    rows = dedup_records(rows, "problem", threshold=0.8)            # every row + cluster_id, kept, similarity, method
    rows = dedup_records(samples, "completion", kind="response", k=2)  # at most 2 per near-dup cluster per problem
    sigs = minhash_signatures(texts)                                 # (len(texts), 128) uint32
    load_kernels()                                                   # a long-running worker: numba kernels now
    with Lake.open("./factory-store") as lake:
        dedup_lake(lake, "problems", run_id="r7")                    # new rows vs everything kept before

Signatures: word `ngram`-shingles hashed to 64 bits, then `num_perm` affine permutations of
32 bits and the minimum per document; `factory.minhash` holds the hash functions (how a text
becomes a signature, step by step) in two implementations with equal values. Which one runs
is decided here: the numba kernels (~2.5x faster end to end) once a process has hashed 32 MB
of text (loading numba costs ~0.5 s; `load_kernels()` loads it at once), the numpy path before
that and where numba is not installed. LSH banding and the index of leaders: `factory.lsh`.
Everything public of both is importable from here.

Near-duplicate decisions: LSH banding proposes candidates, each candidate is confirmed by the
EXACT Jaccard of the two shingle-hash sets (recomputed only for the documents involved), so the
decision at the threshold is not blurred by the signature estimate. Clustering is greedy
"leader" clustering in input order: an item joins the cluster of the most similar earlier
cluster leader with Jaccard >= threshold, or leads a new cluster. Because only leaders are
compared and order decides, feeding batches one after another through a persisted index gives
exactly the clusters of one run over everything in the same order.

Exact duplicates: the same normalised text (`records.normalise_text`: NFKC, whitespace
collapsed, case kept) as a cluster LEADER: method "exact", similarity 1.0. They are found
through the same LSH (identical texts have identical signatures, so they collide in every
band: no miss), and the normalised texts are compared only for pairs of shingle Jaccard 1.0,
so no per-document text hash is paid for. A copy of a non-leader is compared with the leader;
that keeps one run and many incremental runs identical, since only leaders persist.

Policies:
- problems (kind="problem"): one item kept per cluster (the leader, the first seen).
- responses (kind="response"): responses are compared only with responses to the same problem
  (`group_column`, default "problem_id"); within each near-duplicate cluster of one problem
  the first `k` are kept, the rest dropped. So k=1 keeps one of each distinct response.

Across runs: `dedup_lake` loads the leaders of earlier runs from the lake's `minhash` table
(signatures; band keys are recomputed), decides the rows not yet in `dedup`, and commits the
decisions to `dedup` and the new leaders to `minhash`. Confirmation fetches the candidate
leaders' texts from the source table, so nothing is rebuilt and only candidates are read.
Between worker processes: `shared_lsh` is datasketch's MinHashLSH on Redis with our bands x
rows, and `to_datasketch` turns our signatures into datasketch MinHash objects for it.

Not covered: texts equal only after NFKC (such as full-width digits) get different signatures,
so they are "exact" only if LSH still pairs them; see `factory.minhash` for the tokenisation.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from factory.lsh import MinHashIndex, _group_hash, _within_batch_pairs, band_keys, choose_bands
from factory.minhash import (
    _U64,
    _encode,
    _load8,
    _long_word_hash,
    _mix_one,
    _perms32,
    _scan_words,
    _shingle_hashes,
    _signatures_from_shingles,
    _sketch_words,
    _sorted_set,
    estimate_jaccard,
    exact_jaccard,
)
from factory.records import normalise_text

log = logging.getLogger(__name__)


# -- which implementation hashes: the numba kernels or numpy -----------------------------------
#
# The kernels (`factory.minhash._scan_words`, `_sketch_words`) are compiled on first use and
# cached on disk (numba's cache=True, in factory/__pycache__ or, where that is read-only, the
# user's cache directory): the first load in a fresh environment pays ~2 CPU s to compile, later
# processes ~0.5 s (numba's import and the cache), so a process loads them only after 32 MB of
# text or when asked (`load_kernels`). Without numba, everything runs the numpy path; only
# speed differs. This state and the code that reads it stay in this module, with the kernels,
# `_perms32` and `_SELF_CHECK` looked up here: tests and benches/dedup.py patch them on
# `factory.dedup` (`_kernels`, `_jitted`, `_hashed_chars`, `_JIT_AFTER_CHARS`, `_perms32`,
# `_sketch_words`).


_jitted: dict[str, Any] = {}
# Text a process hashes on the numpy path before it loads the kernels: loading costs ~0.5 s
# (numba's import and the disk cache; ~2 s the first time, to compile) and saves ~10-15 ms
# per MB, so a short CLI run is faster without it. Long-running workers call `load_kernels`.
_JIT_AFTER_CHARS = 32 << 20
_hashed_chars = [0]


def load_kernels() -> bool:
    """Load the numba kernels now (compiling them on the first use in an environment, then
    from numba's disk cache) instead of after the first 32 MB of text. False without numba."""
    return _kernels() is not None


def _active_kernels(n_chars: int) -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    if "kernels" not in _jitted:
        _hashed_chars[0] += n_chars
        if _hashed_chars[0] < _JIT_AFTER_CHARS:
            return None
    return _kernels()


# Checked at load against the numpy path: a numba release that typed the integer arithmetic
# differently would change persisted signatures silently; then the numpy path runs instead.
_SELF_CHECK = [
    "", "a", "a b c", "Mixed CASE words\tand\nlines  ", "x" * 8 + " " + "y" * 9 + " " + "z" * 64 + " " + "q" * 65,
    "naïve café ∑ " + " ".join(f"w{i}" for i in range(40)),
]


def _kernels() -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    """(scan, sketch) compiled with numba, or None without numba, or when the compiled
    kernels fail or disagree with the numpy path on `_SELF_CHECK` (the numpy path runs)."""
    if "kernels" not in _jitted:
        try:
            import numba
            from numba.extending import register_jitable
        except ImportError:
            log.info("numba is not installed: MinHash signatures take the numpy path (same values, ~2.5x slower)")
            _jitted["kernels"] = None
            return None
        if numba.config.DISABLE_JIT:  # NUMBA_DISABLE_JIT=1: the kernels would run as slow Python
            log.info("NUMBA_DISABLE_JIT is set: MinHash signatures take the numpy path")
            _jitted["kernels"] = None
            return None
        register_jitable(_mix_one)
        register_jitable(_load8)

        def jit(fn: Callable[..., Any]) -> Callable[..., Any]:
            try:
                return numba.njit(cache=True, nogil=True)(fn)
            except RuntimeError:  # no writable cache directory: compile in every process
                return numba.njit(nogil=True)(fn)

        try:  # compiles (or loads from the cache) now, and compares
            kernels = (jit(_scan_words), jit(_sketch_words))
            got = _hash_with(kernels, _SELF_CHECK, 3, 16, 1)
            sh, offsets = _shingle_hashes(_SELF_CHECK, 3)
            want = (_signatures_from_shingles(sh, offsets, 16, 1), sh, offsets)
            ok = all(np.array_equal(g, w) for g, w in zip(got, want))
        except Exception:  # a compiler failure must not stop dedup: numpy gives the same values
            log.warning("numba %s failed to compile the MinHash kernels; using the numpy path", numba.__version__, exc_info=True)
            ok = None
        if ok is False:
            log.warning("numba %s kernels disagree with the numpy path; using the numpy path", numba.__version__)
        _jitted["kernels"] = kernels if ok else None
    return _jitted["kernels"]


def _hash_chunk(texts: Sequence[str], ngram: int, num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(signatures (len(texts), num_perm), shingle hashes, first shingle per text (len+1)) of
    one chunk of texts, by the numba kernels when available, else by numpy: equal values."""
    if ngram < 1:
        raise ValueError(f"ngram must be >= 1, got {ngram}")
    kernels = _active_kernels(sum(map(len, texts)))
    if kernels is None:
        sh, offsets = _shingle_hashes(texts, ngram)
        if not num_perm:
            return np.empty((len(texts), 0), dtype=np.uint32), sh, offsets
        return _signatures_from_shingles(sh, offsets, num_perm, seed), sh, offsets
    return _hash_with(kernels, texts, ngram, num_perm, seed)


def _hash_with(
    kernels: tuple[Callable[..., Any], Callable[..., Any]], texts: Sequence[str], ngram: int, num_perm: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scan, sketch = kernels
    raw, text_start = _encode(texts)
    buf = np.frombuffer(raw, dtype=np.uint8)
    words = np.empty(len(raw) // 2 + 1, dtype=_U64)  # a word takes >= 2 bytes with its separator
    first = np.empty(len(texts) + 1, dtype=np.int64)
    longs = np.empty((64, 3), dtype=np.int64)
    n_words, n_long = scan(buf, text_start, words, first, longs)
    if n_long > len(longs):
        longs = np.empty((n_long, 3), dtype=np.int64)
        n_words, n_long = scan(buf, text_start, words, first, longs)
    for w, lo, hi in longs[:n_long].tolist():
        words[w] = np.uint64(_long_word_hash(raw[lo:hi]))
    a32, b32 = _perms32(num_perm, seed)
    return sketch(words[:n_words], first, ngram, a32, b32)


def minhash_signatures(texts: Sequence[str], *, num_perm: int = 128, ngram: int = 5, seed: int = 1) -> np.ndarray:
    """MinHash signatures of `texts` over word `ngram`-shingles: shape (len(texts), num_perm),
    dtype **uint32** (stable: persisted signatures depend on it). Equal (num_perm, ngram, seed)
    give equal signatures across processes and runs. Words are whitespace-separated, ASCII
    lower-cased. The fraction of equal positions of two signatures estimates the Jaccard
    similarity of the two shingle sets (`estimate_jaccard`)."""
    if num_perm < 1:
        raise ValueError(f"num_perm must be >= 1, got {num_perm}")
    return _sketch(list(texts), num_perm, ngram, seed)[0]


def _sketch(texts: list[str], num_perm: int, ngram: int, seed: int) -> tuple[np.ndarray, Callable[[int], np.ndarray]]:
    """Signatures, and a function giving text i's shingle set from the same hashes (so
    confirming a candidate does not hash its text again)."""
    out = np.empty((len(texts), num_perm), dtype=np.uint32)
    chunks: list[tuple[int, np.ndarray, np.ndarray]] = []
    for lo, hi in _chunks(texts):
        out[lo:hi], sh, offsets = _hash_chunk(texts[lo:hi], ngram, num_perm, seed)
        chunks.append((lo, sh, offsets))
    starts = [c[0] for c in chunks]

    def shingles_of(i: int) -> np.ndarray:
        lo, sh, offsets = chunks[bisect.bisect_right(starts, i) - 1]
        return _sorted_set(sh[offsets[i - lo] : offsets[i - lo + 1]])

    return out, shingles_of


_CHUNK_BYTES = 1 << 20  # text hashed together (1 MB): bounds memory; measured faster than 4 MB (fewer fresh pages)


def _chunks(texts: Sequence[str]) -> Iterable[tuple[int, int]]:
    lo, size = 0, 0
    for i, t in enumerate(texts):
        size += len(t) + 1
        if size >= _CHUNK_BYTES:
            yield lo, i + 1
            lo, size = i + 1, 0
    if lo < len(texts):
        yield lo, len(texts)


def shingle_sets(texts: Sequence[str], *, ngram: int = 5) -> list[np.ndarray]:
    """Each text's set of shingle hashes (sorted unique uint64): the exact Jaccard's input."""
    texts = list(texts)
    out: list[np.ndarray] = []
    for lo, hi in _chunks(texts):
        _, sh, offsets = _hash_chunk(texts[lo:hi], ngram, 0, 1)
        out.extend(_sorted_set(sh[offsets[i] : offsets[i + 1]]) for i in range(len(offsets) - 1))
    return out


# -- decisions ---------------------------------------------------------------------------------

_DEFAULT_ID = {"problem": "problem_id", "response": "sample_id"}


def _decide(
    texts: list[str],
    ids: list[str],
    groups: list[str | None],
    index: MinHashIndex,
    kind: str,
    k: int,
) -> tuple[list[dict[str, Any]], list[int]]:
    """Decide a batch against `index` and itself, in order; add the new leaders to `index`.
    Returns one decision per text and the positions of the new leaders."""
    n = len(texts)
    sigs, shingles_of = _sketch(texts, index.num_perm, index.ngram, index.seed)
    ghash = None if kind == "problem" else _group_hash(groups)
    keys = band_keys(sigs, index.bands, index.rows, ghash)
    old_cands = index.candidates(keys)
    new_cands = _within_batch_pairs(keys)

    # Shingle sets and leader texts, only for items with a candidate: the confirmation's input.
    need = [i for i in range(n) if len(old_cands[i]) or new_cands[i]]
    need_batch = sorted(set(need).union(*(new_cands[i] for i in need)) if need else set())
    sets: dict[int, np.ndarray] = {i: shingles_of(i) for i in need_batch}
    wanted_old = sorted({int(c) for i in need for c in old_cands[i]})
    old_texts: dict[int, str] = {}
    old_sets: dict[int, np.ndarray] = {}
    if wanted_old:
        fetch = index.fetch_texts or (lambda wanted: {w: index.texts[w] for w in wanted if w in index.texts})
        got = fetch([index.ids[c] for c in wanted_old])
        old_texts = {c: got[index.ids[c]] for c in wanted_old if index.ids[c] in got}
        present = sorted(old_texts)
        old_sets = dict(zip(present, shingle_sets([old_texts[c] for c in present], ngram=index.ngram)))

    decisions: list[dict[str, Any]] = [{} for _ in range(n)]
    leader: list[int] = list(range(n))  # batch position of each item's batch leader (itself if it leads)
    cluster = list(ids)
    new_leaders: list[int] = []

    def same_text(a: str, b: str) -> bool:  # only reached for Jaccard 1.0: rare
        return normalise_text(a) == normalise_text(b)

    for i in range(n):
        best_sim, best_cluster, best_pos, exact = -1.0, None, None, False
        for c in old_cands[i]:
            c = int(c)
            if index.groups[c] != groups[i]:
                continue
            if c in old_sets:
                sim = exact_jaccard(sets[i], old_sets[c])
            else:  # no text to confirm with: the signature decides
                sim = estimate_jaccard(sigs[i], index.signature(c))
            is_exact = sim == 1.0 and c in old_texts and same_text(texts[i], old_texts[c])
            if sim >= index.threshold and (sim, is_exact) > (best_sim, exact):
                best_sim, best_cluster, best_pos, exact = sim, index.ids[c], None, is_exact
        for j in sorted({leader[j] for j in new_cands[i]}):
            if cluster[j] != ids[j] or groups[j] != groups[i]:
                continue  # only batch leaders lead
            sim = exact_jaccard(sets[i], sets[j])
            is_exact = sim == 1.0 and same_text(texts[i], texts[j])
            if sim >= index.threshold and (sim, is_exact) > (best_sim, exact):
                best_sim, best_cluster, best_pos, exact = sim, ids[j], j, is_exact
        if best_cluster is None:
            new_leaders.append(i)
            index.kept_count[ids[i]] = 1
            decisions[i] = {"cluster_id": ids[i], "kept": True, "similarity": None, "method": "unique"}
            continue
        cluster[i] = best_cluster
        if best_pos is not None:
            leader[i] = best_pos
        taken = index.kept_count.get(best_cluster, 1)
        kept = kind == "response" and taken < k
        if kept:
            index.kept_count[best_cluster] = taken + 1
        decisions[i] = {
            "cluster_id": best_cluster,
            "kept": kept,
            "similarity": float(best_sim),
            "method": "exact" if exact else "minhash",
        }

    if index.fetch_texts is None and index.keep_texts:
        index.texts.update((ids[i], texts[i]) for i in new_leaders)
    index.add([ids[i] for i in new_leaders], [groups[i] for i in new_leaders], sigs[new_leaders], keys[new_leaders])
    return decisions, new_leaders


def dedup_records(
    records: Iterable[dict[str, Any]],
    column: str,
    *,
    threshold: float = 0.8,
    ngram: int = 5,
    num_perm: int = 128,
    kind: str = "problem",
    k: int = 1,
    id_column: str | None = None,
    group_column: str = "problem_id",
    index: MinHashIndex | None = None,
) -> list[dict[str, Any]]:
    """Every input row, in order, with `cluster_id` (the id of the cluster's leader), `kept`,
    `similarity` (exact shingle Jaccard to the leader; 1.0 for exact copies; None for leaders)
    and `method` (exact | minhash | unique). `kind` is "problem" (one kept per cluster) or
    "response" (compared only within `group_column`; the first `k` of each cluster kept).
    Ids come from `id_column` (default problem_id / sample_id), else the row's position.
    Pass an `index` (kept between calls, or from `load_index`) to decide against earlier batches too."""
    if kind not in ("problem", "response"):
        raise ValueError(f"kind must be 'problem' or 'response', got {kind!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rows = [dict(r) for r in records]
    if index is None:
        index = MinHashIndex(threshold=threshold, num_perm=num_perm, ngram=ngram)
    idc = id_column or _DEFAULT_ID[kind]
    texts, ids, groups = [], [], []
    for pos, r in enumerate(rows):
        if column not in r:
            raise ValueError(f"row {pos} has no column {column!r}; columns: {sorted(r)}")
        texts.append("" if r[column] is None else str(r[column]))
        ids.append(str(r[idc]) if r.get(idc) is not None else str(pos))
        groups.append(None if kind == "problem" else str(r.get(group_column)))
    if len(set(ids)) != len(ids):
        raise ValueError(f"ids in {idc!r} are not unique; pass id_column= naming a unique column")
    decisions, _ = _decide(texts, ids, groups, index, kind, k)
    for r, d in zip(rows, decisions):
        r.update(d)
    counts = {m: sum(1 for d in decisions if d["method"] == m) for m in ("exact", "minhash", "unique")}
    log.info("dedup %s: %d rows, %d kept, %s", kind, len(rows), sum(d["kept"] for d in decisions), counts)
    return rows


# -- persisted in the lake ---------------------------------------------------------------------

_SOURCES = {  # table -> (kind, item_kind in the lake, id column, default text column)
    "problems": ("problem", "problem", "problem_id", "problem"),
    "samples": ("response", "sample", "sample_id", "completion"),
}


def load_index(
    lake: Any,
    table: str = "problems",
    *,
    column: str | None = None,
    threshold: float = 0.8,
    num_perm: int = 128,
    ngram: int = 5,
    seed: int = 1,
) -> MinHashIndex:
    """The index of every leader persisted for `table` with these parameters (signatures from
    the `minhash` table, kept counts from `dedup`), fetching leader texts from `table` for
    exact confirmation. Leaders stored with other (num_perm, ngram, seed) are not comparable
    and are left out (logged)."""
    kind, item_kind, id_col, default_col = _SOURCES[table]
    text_col = column or default_col
    rows = lake.query(
        "SELECT item_id, group_id, signature FROM minhash WHERE item_kind = ? AND num_perm = ? "
        "AND ngram = ? AND seed = ? ORDER BY created_at, item_id",
        [item_kind, num_perm, ngram, seed],
    )
    other = lake.query("SELECT count(*) AS n FROM minhash WHERE item_kind = ?", [item_kind]).column("n")[0].as_py()
    if other > rows.num_rows:
        log.warning("%d %s leaders were stored with other MinHash parameters and are ignored", other - rows.num_rows, item_kind)

    def fetch(ids: list[str]) -> dict[str, str]:
        got = lake.query(
            f'SELECT "{id_col}" AS i, any_value("{text_col}") AS t FROM "{table}" WHERE "{id_col}" IN (SELECT unnest(?)) GROUP BY 1',
            [ids],
        )
        return {i: t or "" for i, t in zip(got.column("i").to_pylist(), got.column("t").to_pylist())}

    index = MinHashIndex(threshold=threshold, num_perm=num_perm, ngram=ngram, seed=seed, fetch_texts=fetch)
    if rows.num_rows:
        flat = rows.column("signature").combine_chunks().flatten().to_numpy()
        sigs = flat.astype(np.uint32).reshape(rows.num_rows, num_perm)
        groups = rows.column("group_id").to_pylist()
        ghash = None if kind == "problem" else _group_hash(groups)
        index.add(
            rows.column("item_id").to_pylist(),
            groups,
            sigs,
            band_keys(sigs, index.bands, index.rows, ghash),
        )
    counts = lake.query(
        "SELECT cluster_id, count(*) AS n FROM dedup WHERE item_kind = ? AND kept GROUP BY 1", [item_kind]
    )
    index.kept_count.update(zip(counts.column("cluster_id").to_pylist(), counts.column("n").to_pylist()))
    log.info("loaded %d %s leaders from the lake (%d x %d bands)", len(index), item_kind, index.bands, index.rows)
    return index


def dedup_lake(
    lake: Any,
    table: str = "problems",
    *,
    run_id: str,
    column: str | None = None,
    threshold: float = 0.8,
    ngram: int = 5,
    num_perm: int = 128,
    seed: int = 1,
    k: int = 1,
    index: MinHashIndex | None = None,
    only: Sequence[str] | None = None,
) -> dict[str, int]:
    """The flow stage: decide every row of `table` not yet in `dedup` against everything kept
    before (across runs), in (created_at, id) order, and commit the decisions to `dedup` and
    the new leaders to `minhash`. Returns counts. Safe to re-run: the commits are keyed by
    the batch's ids, and an item already persisted as a leader is not re-decided against itself.
    `only`: decide just these ids (the flow passes the accepted samples, so a rejected sample
    never becomes the leader that hides an accepted one)."""
    if table not in _SOURCES:
        raise ValueError(f"table must be one of {sorted(_SOURCES)}, got {table!r}")
    kind, item_kind, id_col, default_col = _SOURCES[table]
    text_col = column or default_col
    if index is None:
        index = load_index(lake, table, column=text_col, threshold=threshold, num_perm=num_perm, ngram=ngram, seed=seed)
    group_sel = ', any_value("problem_id") AS g' if kind == "response" else ", NULL AS g"
    restrict = ""
    extra: dict[str, Any] = {}
    if only is not None:
        import pyarrow as pa

        restrict = f' AND "{id_col}" IN (SELECT v FROM _dedup_only)'
        extra["tables"] = {"_dedup_only": pa.table({"v": pa.array(list(only), pa.string())})}
    new = lake.query(
        f'SELECT "{id_col}" AS i, any_value("{text_col}") AS t{group_sel}, min(created_at) AS c FROM "{table}" '
        f'WHERE "{id_col}" NOT IN (SELECT item_id FROM dedup WHERE item_kind = ?){restrict} GROUP BY 1 ORDER BY c, i',
        [item_kind], **extra,
    )
    ids = new.column("i").to_pylist()
    if not ids:
        return {"rows": 0, "kept": 0}
    leaders = set(index.ids)
    texts = new.column("t").to_pylist()
    groups = new.column("g").to_pylist() if kind == "response" else [None] * len(ids)
    fresh = [p for p, i in enumerate(ids) if i not in leaders]
    decisions: dict[int, dict[str, Any]] = {
        p: {"cluster_id": i, "kept": True, "similarity": None, "method": "unique"} for p, i in enumerate(ids) if i in leaders
    }
    before = len(index)
    got, new_leaders = _decide(
        [texts[p] or "" for p in fresh], [ids[p] for p in fresh], [groups[p] for p in fresh], index, kind, k
    )
    decisions.update(zip(fresh, got))
    digest = hashlib.blake2b("\n".join(ids).encode(), digest_size=12).hexdigest()
    if len(index) > before:
        sig_list = index.signatures(before).astype(np.int64)
        leader_rows = [
            {
                "item_id": index.ids[before + j],
                "item_kind": item_kind,
                "group_id": index.groups[before + j],
                "num_perm": num_perm,
                "ngram": ngram,
                "seed": seed,
                "signature": sig_list[j].tolist(),
            }
            for j in range(len(new_leaders))
        ]
        # Leaders first: a crash before the decisions commit leaves leaders that the re-run recognises.
        lake.commit("minhash", leader_rows, batch_key=f"dedup:minhash:{item_kind}:{run_id}:{digest}", run_id=run_id)
    dedup_rows = [
        {"item_id": ids[p], "item_kind": item_kind, **decisions[p]} for p in range(len(ids))
    ]
    lake.commit("dedup", dedup_rows, batch_key=f"dedup:{item_kind}:{run_id}:{digest}", run_id=run_id)
    kept = sum(d["kept"] for d in decisions.values())
    log.info("dedup_lake %s: %d rows, %d kept, %d new leaders", table, len(ids), kept, len(index) - before)
    return {"rows": len(ids), "kept": kept, "leaders": len(index) - before}


# -- sharing an index between workers: datasketch's LSH over Redis -----------------------------


def to_datasketch(sig: np.ndarray, seed: int = 1) -> Any:
    """A datasketch MinHash holding our signature (its num_perm = len(sig)), for datasketch's
    LSH and its storage layer. datasketch only compares hash values, so ours work there as
    long as every worker uses the same (num_perm, ngram, seed)."""
    try:
        from datasketch import MinHash
    except ImportError as exc:  # optional dependency
        raise ImportError("sharing an index needs datasketch: pip install 'datasketch>=1.6'") from exc
    try:  # datasketch >= 2.0 asks which scheme made the values: ours are 32-bit, like affine32
        return MinHash(num_perm=len(sig), seed=seed, hashvalues=np.asarray(sig, dtype=np.uint32), scheme="affine32")
    except TypeError:  # datasketch < 2.0: no scheme argument, values held as uint64
        return MinHash(num_perm=len(sig), seed=seed, hashvalues=np.asarray(sig, dtype=np.uint64))


def shared_lsh(
    *,
    redis_host: str = "127.0.0.1",
    redis_port: int = 6379,
    basename: bytes = b"factory-dedup",
    threshold: float = 0.8,
    num_perm: int = 128,
) -> Any:
    """A datasketch MinHashLSH stored in Redis (shared by every worker that opens the same
    `basename`), with our bands x rows for `threshold`. Insert `to_datasketch(sig)` under an
    item id; `query` returns the ids of candidates, to confirm by exact Jaccard."""
    try:
        from datasketch import MinHashLSH
    except ImportError as exc:
        raise ImportError("sharing an index needs datasketch and redis: pip install 'datasketch>=1.6' redis") from exc
    bands, rows = choose_bands(threshold, num_perm)
    return MinHashLSH(
        threshold=threshold,
        num_perm=num_perm,
        params=(bands, rows),
        storage_config={"type": "redis", "basename": basename, "redis": {"host": redis_host, "port": redis_port}},
    )
