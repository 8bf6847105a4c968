"""Deduplication: exact (normalised text) and near-duplicate (MinHash-LSH), incremental across runs.

    from factory.dedup import dedup_records, dedup_lake, minhash_signatures
    rows = dedup_records(rows, "problem", threshold=0.8)            # every row + cluster_id, kept, similarity, method
    rows = dedup_records(samples, "completion", kind="response", k=2)  # at most 2 per near-dup cluster per problem
    sigs = minhash_signatures(texts)                                 # (len(texts), 128) uint32
    load_kernels()                                                   # a long-running worker: numba kernels now
    with Lake.open("./factory-store") as lake:
        dedup_lake(lake, "problems", run_id="r7")                    # new rows vs everything kept before

How a text becomes a signature, without one Python string per shingle (that is where
datasketch and rensa pipelines spend their time):
1. the batch is encoded once to bytes; bytes <= 0x20 (ASCII whitespace and control
   characters) separate words; ASCII is lower-cased;
2. every word gets a 64-bit hash from its bytes read 8 at a time as unaligned uint64 loads
   out of the batch buffer (a byte-strided numpy view), masked to the word's length, folded
   by multiply + splitmix64 finaliser: vectorised over all words at once;
3. `ngram` consecutive word hashes are combined arithmetically into a shingle hash
   (a polynomial in the word hashes, mixed again); shingles never cross documents;
4. `num_perm` hash functions h_k(x) = (a_k * x + b_k) mod 2**32 (a_k odd: a bijection of the
   32-bit space, datasketch's "affine32" scheme) on the top 32 bits of the mixed shingle hash,
   and the minimum per document.
Two implementations give the same values: numba kernels (`_scan_words`, `_sketch_words`: one
pass over the bytes, then per document and permutation a vectorised minimum over its shingles
held in L1; ~2.5x faster end to end) and numpy (steps 2-4 as whole-array operations, the
permutations applied one at a time over a chunk with `np.minimum.reduceat`), which runs when
numba is not installed and for the first 32 MB of text a process hashes (loading numba costs
~0.5 s; `load_kernels()` loads it at once).
A document with fewer than `ngram` words has one shingle: all its words. An empty document
has the all-0xFFFFFFFF signature.

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

Not covered: non-ASCII case folding (bytes above 0x7f are hashed as they are, and texts equal
only after NFKC, such as full-width digits, get different signatures, so they are "exact"
only if LSH still pairs them), and tokenisation other than whitespace.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from factory.records import normalise_text

log = logging.getLogger(__name__)

_U64 = np.uint64
_MASK64 = (1 << 64) - 1
_SHINGLE_MUL = 0x9E3779B97F4A7C15  # golden-ratio constant, odd
_EMPTY = np.uint32(0xFFFFFFFF)
_CHUNK_SHINGLES = 1 << 18  # per-permutation uint32 temporaries (1 MB) stay in L2 cache


_LONG_WORD = 64  # longer tokens (URLs, base64) are hashed one by one with blake2b: rare


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place: every output bit depends on every input bit."""
    x ^= x >> _U64(30)
    x *= _U64(0xBF58476D1CE4E5B9)
    x ^= x >> _U64(27)
    x *= _U64(0x94D049BB133111EB)
    x ^= x >> _U64(31)
    return x


# _BYTE_MASKS[n]: the low n bytes of a uint64 (n = 0..8).
_BYTE_MASKS = np.array([(1 << (8 * n)) - 1 for n in range(8)] + [_MASK64], dtype=np.uint64)


def _encode(texts: Sequence[str]) -> tuple[bytes, np.ndarray]:
    """The batch as one lower-cased byte buffer, and each text's first byte (len+1).

    One separator byte between texts, so no word spans two texts; 8 zero bytes of padding
    so every 8-byte load stays inside the buffer. Joined as str and encoded once: an ASCII
    str (known in O(1)) has as many bytes as characters, so no per-text encode is needed."""
    joined = " ".join(texts)
    if joined.isascii():
        lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        raw = joined.encode("ascii").lower() + b" " + bytes(8)  # bytes.lower: ASCII only
    else:
        parts = [t.encode("utf-8", "surrogatepass") for t in texts]
        lengths = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
        raw = b" ".join(parts).lower() + b" " + bytes(8)
    text_start = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lengths + 1, out=text_start[1:])
    return raw, text_start


def _long_word_hash(word: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(word, digest_size=8).digest(), "little")


def _word_hashes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """All words of all texts as 64-bit hashes, and each text's first word index (len+1).

    A word's bytes are read 8 at a time as unaligned little-endian uint64 loads straight out
    of the batch buffer (a byte-strided uint64 view), masked to the word's length and folded
    with a multiply and splitmix: numpy work per word, no Python object per word. The numba
    kernel `_scan_words` computes the same values in one pass over the bytes."""
    raw, text_start = _encode(texts)
    buf = np.frombuffer(raw, dtype=np.uint8)
    n_bytes = len(buf) - 8
    # Separators: every byte <= 0x20 (ASCII whitespace and control characters): one compare,
    # where a lookup table costs a gather per byte.
    word = np.empty(n_bytes + 1, dtype=bool)
    word[0] = False
    np.greater(buf[:n_bytes], 0x20, out=word[1:])
    # Transitions alternate start, end, start, end... (the text ends with a separator).
    edges = np.flatnonzero(word[1:] != word[:-1]).reshape(-1, 2)
    starts = np.ascontiguousarray(edges[:, 0])
    ends = np.ascontiguousarray(edges[:, 1])
    wlen = ends - starts
    view = np.ndarray(shape=(n_bytes + 1,), dtype="<u8", buffer=raw, offset=0, strides=(1,))
    words = np.empty(len(starts), dtype=_U64)
    mul = _U64(_SHINGLE_MUL)
    with np.errstate(over="ignore"):
        for block in range(_LONG_WORD // 8):
            if block == 0:
                chunk = view[starts]
                rem = wlen
            else:
                idx = np.flatnonzero(wlen > 8 * block)
                if not len(idx):
                    break
                chunk = view[starts[idx] + 8 * block]
                rem = wlen[idx] - 8 * block
            chunk &= _BYTE_MASKS[np.minimum(rem, 8)]  # only the word's own bytes
            if block == 0:
                np.add(chunk, wlen.view(_U64), out=words)  # length in, so "ab" and "ab\0" differ
                _mix(words)
            else:
                w = words[idx] * mul + chunk
                words[idx] = _mix(w)
    long_words = np.flatnonzero(wlen > _LONG_WORD)
    for i in long_words:
        words[i] = np.uint64(_long_word_hash(raw[starts[i] : ends[i]]))
    first_word = np.searchsorted(starts, text_start)
    return words, first_word


def _shingle_hashes(texts: Sequence[str], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """Shingle hashes of all texts concatenated, and each text's first shingle index (len+1):
    the numpy path (`_hash_chunk` uses the numba kernels instead when numba is installed)."""
    if ngram < 1:
        raise ValueError(f"ngram must be >= 1, got {ngram}")
    words, first = _word_hashes(texts)
    counts = np.diff(first)
    n = len(words)
    m = max(n - ngram + 1, 0)
    mul = _U64(_SHINGLE_MUL)
    with np.errstate(over="ignore"):
        sh = words[:m].copy()
        for k in range(1, ngram):
            sh *= mul
            sh += words[k : k + m]
    # Shingles starting in a text's last ngram-1 words run into the next text: drop them.
    # Texts with 1..ngram-1 words get one shingle of all their words instead (rare).
    per_text = np.maximum(counts - (ngram - 1), 0)
    short = np.flatnonzero((counts > 0) & (counts < ngram))
    if ngram > 1 and m:
        keep = np.ones(m, dtype=bool)
        tail_ends = first[1:][counts > 0]
        drop = (tail_ends[:, None] - np.arange(1, ngram)[None, :]).ravel()
        keep[drop[(drop >= 0) & (drop < m)]] = False
        sh = sh[keep]
    if len(short):
        per_text[short] = 1
        extra = np.empty(len(short), dtype=_U64)
        for i, t in enumerate(short):
            h = 0
            for w in words[first[t] : first[t + 1]]:
                h = (h * _SHINGLE_MUL + int(w)) & _MASK64
            extra[i] = h
        # Where each short text's shingle goes among the kept ones (texts are in order).
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(per_text, out=offsets[1:])
        regular = np.ones(offsets[-1], dtype=bool)
        regular[offsets[short]] = False
        full = np.empty(offsets[-1], dtype=_U64)
        full[regular] = sh
        full[~regular] = extra
        sh = full
    else:
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(per_text, out=offsets[1:])
    with np.errstate(over="ignore"):
        _mix(sh)
    return sh, offsets


@dataclass(frozen=True)
class _Perms:
    a: np.ndarray
    b: np.ndarray


_perm_cache: dict[tuple[int, int], _Perms] = {}


def _perms(num_perm: int, seed: int) -> _Perms:
    key = (num_perm, seed)
    if key not in _perm_cache:
        rng = np.random.default_rng(seed)
        a = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64) * _U64(2) + _U64(1)  # odd
        b = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64) * _U64(2) + rng.integers(0, 2, size=num_perm, dtype=np.uint64)
        _perm_cache[key] = _Perms(a, b)
    return _perm_cache[key]


def _signatures_from_shingles(sh: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    n_texts = len(offsets) - 1
    out = np.full((n_texts, num_perm), _EMPTY, dtype=np.uint32)
    perms = _perms(num_perm, seed)
    counts = np.diff(offsets)
    nonempty = np.flatnonzero(counts > 0)
    if not len(nonempty):
        return out
    # The permutations run in uint32, where the wraparound is the modulo (like datasketch's
    # "affine32" scheme): with a_k odd each is a bijection of the 32-bit hash space, and 32-bit
    # multiplies vectorise (twice the speed of 64-bit ones in numpy).
    x_all = (sh >> _U64(32)).astype(np.uint32)
    a32 = perms.a.astype(np.uint32)
    b32 = perms.b.astype(np.uint32)
    # Chunks of whole texts of about _CHUNK_SHINGLES shingles, so temporaries stay in cache.
    i = 0
    tmp = np.empty(0, dtype=np.uint32)
    ends = offsets[nonempty + 1]
    while i < len(nonempty):
        lo = offsets[nonempty[i]]
        j = max(int(np.searchsorted(ends, lo + _CHUNK_SHINGLES, side="right")), i + 1)
        docs = nonempty[i:j]
        hi = offsets[docs[-1] + 1]
        x = x_all[lo:hi]
        starts = offsets[docs] - lo
        if len(tmp) < len(x):
            tmp = np.empty(len(x), dtype=np.uint32)
        t = tmp[: len(x)]
        mins = np.empty((num_perm, len(docs)), dtype=np.uint32)
        for k in range(num_perm):
            np.multiply(x, a32[k], out=t)
            t += b32[k]
            np.minimum.reduceat(t, starts, out=mins[k])
        out[docs] = mins.T
        i = j
    return out


# -- the fused kernels (numba, when installed) -------------------------------------------------
#
# The same values as the numpy path above (`tests/factory/test_dedup_kernel.py` compares them),
# in two passes instead of ~140: `_scan_words` walks the bytes once, finding each word's end
# with a SWAR compare of 8 bytes at a time and hashing it as `_word_hashes` does;
# `_sketch_words` builds each document's shingle hashes in L1, then takes, permutation by
# permutation, the minimum over the document's shingles: a loop LLVM vectorises (16 uint32
# lanes with AVX-512, 8 with AVX2), where numpy streamed the whole chunk through memory once per
# permutation. Compiled on first use and cached on disk (numba's cache=True, in
# factory/__pycache__ or, where that is read-only, the user's cache directory): the first load
# in a fresh environment pays ~2 CPU s to compile, later processes ~0.5 s (numba's import and
# the cache), so a process loads them only after 32 MB of text or when asked (`load_kernels`).
# Without numba, everything runs the numpy path; only speed differs.

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MULU = np.uint64(_SHINGLE_MUL)
_ONE = np.uint64(1)
_SH7, _SH27, _SH30, _SH31, _SH32, _SH56 = (np.uint64(v) for v in (7, 27, 30, 31, 32, 56))
_SEP8 = np.uint64(0x2121212121212121)  # 8 bytes of 0x21: a byte < 0x21 is a separator
_HIGH8 = np.uint64(0x8080808080808080)
_BYTE_INDEX = np.uint64(0x0001020304050607)  # (1 << 8j) * this has j in its top byte


def _mix_one(x: np.uint64) -> np.uint64:
    """`_mix` on one uint64 (for the kernels)."""
    x ^= x >> _SH30
    x *= _M1
    x ^= x >> _SH27
    x *= _M2
    x ^= x >> _SH31
    return x


def _load8(buf: np.ndarray, i: int) -> np.uint64:
    """Bytes i..i+7 of `buf` as a little-endian uint64, at any alignment (measured as fast as
    an explicit unrolled form: LLVM unrolls the loop)."""
    v = np.uint64(0)
    for j in range(8):
        v |= np.uint64(buf[i + j]) << np.uint64(8 * j)
    return v


def _scan_words(buf: np.ndarray, text_start: np.ndarray, words: np.ndarray, first: np.ndarray, longs: np.ndarray) -> tuple[int, int]:
    """Word hashes of `_encode`'s buffer into `words`, each text's first word into `first`;
    words longer than _LONG_WORD bytes get hash 0 and (word, start, end) in `longs` (for
    blake2b in Python). Returns (words, long words); more long words than rows of `longs`
    means: call again with room for them."""
    n_long = 0
    w = 0
    for t in range(len(text_start) - 1):
        first[t] = w
        i = text_start[t]
        end = text_start[t + 1]  # byte end - 1 is the separator after text t
        while i < end:
            if buf[i] <= 32:
                i += 1
                continue
            chunk = _load8(buf, i)
            # SWAR: the high bit of each byte < 0x21; the lowest flagged byte is exact.
            z = (chunk - _SEP8) & ~chunk & _HIGH8
            if z:  # the word ends within these 8 bytes: its length is the flagged byte's index
                length = np.int64((((z & (~z + _ONE)) >> _SH7) * _BYTE_INDEX) >> _SH56)
                h = _mix_one((chunk & _BYTE_MASKS[length]) + np.uint64(length))
                i += length
            else:
                s = i
                i += 8
                while buf[i] > 32:
                    i += 1
                length = i - s
                if length > _LONG_WORD:
                    if n_long < len(longs):
                        longs[n_long, 0] = w
                        longs[n_long, 1] = s
                        longs[n_long, 2] = i
                    n_long += 1
                    h = np.uint64(0)
                else:
                    h = _mix_one(chunk + np.uint64(length))
                    b = 8
                    while b < length:
                        h = _mix_one(h * _MULU + (_load8(buf, s + b) & _BYTE_MASKS[min(length - b, 8)]))
                        b += 8
            words[w] = h
            w += 1
    first[len(text_start) - 1] = w
    return w, n_long


def _sketch_words(words: np.ndarray, first: np.ndarray, ngram: int, a32: np.ndarray, b32: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(signatures, shingle hashes, first shingle per text) from word hashes: the values of
    `_shingle_hashes` + `_signatures_from_shingles`."""
    n_texts = len(first) - 1
    num_perm = len(a32)
    total = 0
    longest = 0
    for t in range(n_texts):
        c = first[t + 1] - first[t]
        n = c - ngram + 1 if c >= ngram else (1 if c > 0 else 0)
        total += n
        longest = max(longest, n)
    sh = np.empty(total, np.uint64)
    xs = np.empty(longest, np.uint32)
    offsets = np.empty(n_texts + 1, np.int64)
    sigs = np.empty((n_texts, num_perm), np.uint32)
    p = 0
    for t in range(n_texts):
        offsets[t] = p
        f = first[t]
        c = first[t + 1] - f
        n_sh = c - ngram + 1 if c >= ngram else (1 if c > 0 else 0)
        width = min(ngram, c)  # a short text: one shingle of all its words
        out = sh[p : p + n_sh]
        for i in range(n_sh):
            out[i] = words[f + i]
        for j in range(1, width):  # loops over i innermost: they vectorise
            for i in range(n_sh):
                out[i] = out[i] * _MULU + words[f + i + j]
        for i in range(n_sh):
            h = _mix_one(out[i])
            out[i] = h
            xs[i] = np.uint32(h >> _SH32)
        p += n_sh
        for k in range(num_perm):
            a = a32[k]
            b = b32[k]
            m = np.uint32(0xFFFFFFFF)
            for i in range(n_sh):
                m = min(m, np.uint32(a * xs[i] + b))  # mod 2**32, like the numpy path
            sigs[t, k] = m
    offsets[n_texts] = p
    return sigs, sh, offsets


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


_perm32_cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _perms32(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    key = (num_perm, seed)
    if key not in _perm32_cache:
        perms = _perms(num_perm, seed)
        _perm32_cache[key] = (perms.a.astype(np.uint32), perms.b.astype(np.uint32))
    return _perm32_cache[key]


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


def estimate_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """The MinHash estimate of Jaccard similarity: the fraction of equal signature positions."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"signatures differ in shape: {a.shape} vs {b.shape}")
    return float(np.mean(a == b)) if a.size else 0.0


def shingle_sets(texts: Sequence[str], *, ngram: int = 5) -> list[np.ndarray]:
    """Each text's set of shingle hashes (sorted unique uint64): the exact Jaccard's input."""
    texts = list(texts)
    out: list[np.ndarray] = []
    for lo, hi in _chunks(texts):
        _, sh, offsets = _hash_chunk(texts[lo:hi], ngram, 0, 1)
        out.extend(_sorted_set(sh[offsets[i] : offsets[i + 1]]) for i in range(len(offsets) - 1))
    return out


def _sorted_set(x: np.ndarray) -> np.ndarray:
    # np.unique hashes first in numpy >= 2.3; a sort and a neighbour compare is faster here.
    s = np.sort(x)
    if len(s) < 2:
        return s
    keep = np.empty(len(s), dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def exact_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two sorted unique hash sets (from `shingle_sets`)."""
    if not len(a) or not len(b):
        return 1.0 if len(a) == len(b) else 0.0
    if len(a) > len(b):
        a, b = b, a
    pos = np.searchsorted(b, a)
    pos[pos == len(b)] = 0
    inter = int(np.count_nonzero(b[pos] == a))
    return inter / (len(a) + len(b) - inter)


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
    `load_index` fills one from the lake's `minhash` table."""

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
