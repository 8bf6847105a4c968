"""MinHash sketching: the hash functions that turn texts into signatures and shingle sets,
in two implementations with equal values, and the Jaccard similarity of two of them.

`factory.dedup` is the way in: it chooses the implementation (loading the numba kernels from
here) and re-exports everything public:

    from factory.dedup import minhash_signatures, shingle_sets, load_kernels
    from factory.minhash import estimate_jaccard, exact_jaccard
    sigs = minhash_signatures(texts)              # (len(texts), 128) uint32
    estimate_jaccard(sigs[0], sigs[1])            # the fraction of equal positions
    a, b = shingle_sets(texts[:2])                # sorted unique uint64 shingle hashes
    exact_jaccard(a, b)                           # the exact shingle Jaccard

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
held in L1; ~2.5x faster end to end; plain Python here, compiled by `factory.dedup`) and numpy
(`_shingle_hashes` + `_signatures_from_shingles`: steps 2-4 as whole-array operations, the
permutations applied one at a time over a chunk with `np.minimum.reduceat`).
A document with fewer than `ngram` words has one shingle: all its words. An empty document
has the all-0xFFFFFFFF signature.

Not covered: non-ASCII case folding (bytes above 0x7f are hashed as they are, and texts equal
only after NFKC, such as full-width digits, get different signatures), and tokenisation other
than whitespace.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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
    the numpy path (`factory.dedup._hash_chunk` uses the numba kernels instead when they are loaded)."""
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


# -- the fused kernels (compiled with numba by factory.dedup, when numba is installed) -----------
#
# The same values as the numpy path above (`tests/factory/test_dedup_kernel.py` compares them),
# in two passes instead of ~140: `_scan_words` walks the bytes once, finding each word's end
# with a SWAR compare of 8 bytes at a time and hashing it as `_word_hashes` does;
# `_sketch_words` builds each document's shingle hashes in L1, then takes, permutation by
# permutation, the minimum over the document's shingles: a loop LLVM vectorises (16 uint32
# lanes with AVX-512, 8 with AVX2), where numpy streamed the whole chunk through memory once per
# permutation. `factory.dedup._kernels` compiles them (numba's disk cache keys them by this file).


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


# The permutations as the kernels take them (uint32); `factory.dedup._hash_with` looks this up.
_perm32_cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _perms32(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    key = (num_perm, seed)
    if key not in _perm32_cache:
        perms = _perms(num_perm, seed)
        _perm32_cache[key] = (perms.a.astype(np.uint32), perms.b.astype(np.uint32))
    return _perm32_cache[key]


# -- Jaccard similarity ------------------------------------------------------------------------


def estimate_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """The MinHash estimate of Jaccard similarity: the fraction of equal signature positions."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"signatures differ in shape: {a.shape} vs {b.shape}")
    return float(np.mean(a == b)) if a.size else 0.0


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
