"""The numba MinHash kernels and the numpy path give the same values, and those values are the
ones persisted before the kernels existed (so `minhash` tables of existing lakes stay valid)."""

from __future__ import annotations

import hashlib
import random
import sys

import numpy as np
import pytest

from factory import dedup
from factory.dedup import dedup_records, minhash_signatures, shingle_sets

# blake2b-128 of minhash_signatures(_corpus(), ...).tobytes(), computed with the numpy-only
# implementation of commit 0085d80 (before the numba kernels): a change here
# means persisted signatures no longer match new ones.
GOLDEN = {
    (128, 5, 1): "0e1178902753ca6c67910cb30e994344",
    (64, 3, 7): "836c39b0c0076e2b4f908eb29d6d5c61",
    (32, 1, 2): "fb7762a4d44855c4dec61cd5c2b6f2b8",
}


def _corpus() -> list[str]:
    """Random texts over words of every length class the hash treats differently (< 8 bytes,
    exactly 8, 9..16, 17, 64, over 64: blake2b), non-ASCII and control bytes, plus edge cases:
    empty, whitespace only, shorter than the shingle, leading/trailing/multiple separators."""
    rng = random.Random(11)
    vocab = [f"w{i}" for i in range(3000)] + ["ab", "abcdefgh", "abcdefghi", "x" * 16, "y" * 17, "z" * 64, "q" * 65, "é" * 40, "Ünïcode", "MiXeD", "a\u00a0b"]
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randrange(0, 400))) for _ in range(60)]
    texts += ["", " ", "\t\n", "one", "a b", "a b c d", "a b c d e", "  lead  and  trail  ", "ctrl\x00\x01\x1fchars here and there",
              "u" * 300 + " after " + "v" * 70, "Héllo wörld — ünïcode ∑ text with more words"]
    return texts


@pytest.fixture
def numpy_path(monkeypatch):
    monkeypatch.setattr(dedup, "_kernels", lambda: None)


def _digest(sig: np.ndarray) -> str:
    return hashlib.blake2b(sig.tobytes(), digest_size=16).hexdigest()


@pytest.mark.parametrize("params", sorted(GOLDEN))
def test_numpy_path_keeps_the_persisted_values(numpy_path, params):
    num_perm, ngram, seed = params
    assert _digest(minhash_signatures(_corpus(), num_perm=num_perm, ngram=ngram, seed=seed)) == GOLDEN[params]


@pytest.mark.parametrize("params", sorted(GOLDEN))
def test_numba_kernels_keep_the_persisted_values(params):
    pytest.importorskip("numba")
    assert dedup.load_kernels()
    num_perm, ngram, seed = params
    assert _digest(minhash_signatures(_corpus(), num_perm=num_perm, ngram=ngram, seed=seed)) == GOLDEN[params]


@pytest.mark.parametrize("ngram", [1, 2, 5, 9])
def test_kernels_equal_numpy_path(ngram, monkeypatch):
    """Signatures, shingle hashes and offsets, value for value, on random texts with random
    whitespace (tabs, newlines, runs) and many long words (more than the kernel's first
    buffer of 64, so its second pass runs)."""
    pytest.importorskip("numba")
    assert dedup.load_kernels()
    rng = random.Random(ngram)
    words = [f"t{i}" for i in range(500)] + ["L" * n for n in (7, 8, 9, 15, 16, 17, 63, 64, 65, 66, 200)]
    seps = [" ", " ", " ", "  ", "\t", "\n", " \r\n "]
    texts = ["".join(rng.choice(words) + rng.choice(seps) for _ in range(rng.randrange(0, 300))) for _ in range(80)]
    texts.append(" ".join("k" * 70 + str(i) for i in range(150)))  # 150 words > 64 bytes in one text
    fast = dedup._hash_chunk(texts, ngram, 96, 3)
    with monkeypatch.context() as m:
        m.setattr(dedup, "_kernels", lambda: None)
        slow = dedup._hash_chunk(texts, ngram, 96, 3)
    for got, want in zip(fast, slow):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert fast[0].shape == (len(texts), 96)


def test_dedup_decisions_equal_on_both_paths(monkeypatch):
    pytest.importorskip("numba")
    assert dedup.load_kernels()
    rng = random.Random(5)
    vocab = [f"x{i}" for i in range(4000)]
    base = [" ".join(rng.choice(vocab) for _ in range(300)) for _ in range(40)]
    rows = [{"problem_id": f"b{i}", "problem": t} for i, t in enumerate(base)]
    for i, t in enumerate(base):
        w = t.split()
        for _ in range(rng.randrange(1, 12)):  # Jaccard ~0.98 .. ~0.7: both sides of 0.8
            w[rng.randrange(len(w))] = "edit"
        rows.append({"problem_id": f"c{i}", "problem": " ".join(w)})
    fast = dedup_records(rows, "problem")
    sets_fast = shingle_sets([r["problem"] for r in rows[:5]])
    with monkeypatch.context() as m:
        m.setattr(dedup, "_kernels", lambda: None)
        slow = dedup_records(rows, "problem")
        sets_slow = shingle_sets([r["problem"] for r in rows[:5]])
    assert fast == slow
    assert 15 < sum(not r["kept"] for r in fast) < 40  # copies found and copies kept: not a trivial equality
    assert all(np.array_equal(a, b) for a, b in zip(sets_fast, sets_slow))


def test_without_numba_the_numpy_path_runs(monkeypatch):
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba -> ImportError
    monkeypatch.setattr(dedup, "_jitted", {})
    assert dedup._kernels() is None
    assert _digest(minhash_signatures(_corpus())) == GOLDEN[(128, 5, 1)]


def test_kernels_load_after_enough_text_or_when_asked(monkeypatch):
    """A short run stays on the numpy path (loading numba costs more than it saves there);
    past _JIT_AFTER_CHARS of text, or after load_kernels, the kernels run."""
    pytest.importorskip("numba")
    monkeypatch.setattr(dedup, "_jitted", {})
    monkeypatch.setattr(dedup, "_hashed_chars", [0])
    monkeypatch.setattr(dedup, "_JIT_AFTER_CHARS", 8_000)
    text = " ".join(f"w{i}" for i in range(1000))  # 4889 characters
    assert len(text) < 8_000 <= 2 * len(text)
    first = minhash_signatures([text])
    assert "kernels" not in dedup._jitted
    second = minhash_signatures([text])  # past 8k characters: loaded
    assert dedup._jitted.get("kernels") is not None
    assert np.array_equal(first, second)
    monkeypatch.setattr(dedup, "_jitted", {})
    monkeypatch.setattr(dedup, "_hashed_chars", [0])
    assert dedup.load_kernels() and dedup._active_kernels(1) is not None


def test_kernels_that_disagree_with_numpy_are_not_used(monkeypatch, caplog):
    """The load-time self-check: kernels giving other values (a numba release typing the
    arithmetic differently) or failing to compile leave the numpy path in charge."""
    pytest.importorskip("numba")
    real = dedup._perms32
    monkeypatch.setattr(dedup, "_perms32", lambda n, s: (real(n, s)[0], real(n, s)[1] + np.uint32(1)))
    monkeypatch.setattr(dedup, "_jitted", {})
    with caplog.at_level("WARNING", logger="factory.dedup"):
        assert dedup._kernels() is None
    assert "disagree with the numpy path" in caplog.text
    monkeypatch.setattr(dedup, "_perms32", real)
    monkeypatch.setattr(dedup, "_jitted", {})

    def untypable(words, first, ngram, a32, b32):
        return {"not": object()}  # numba cannot compile this

    monkeypatch.setattr(dedup, "_sketch_words", untypable)
    caplog.clear()
    with caplog.at_level("WARNING", logger="factory.dedup"):
        assert dedup._kernels() is None
    assert "failed to compile" in caplog.text
    assert _digest(minhash_signatures(_corpus())) == GOLDEN[(128, 5, 1)]


def test_numba_disable_jit_means_the_numpy_path(monkeypatch):
    numba = pytest.importorskip("numba")
    monkeypatch.setattr(numba.config, "DISABLE_JIT", True)
    monkeypatch.setattr(dedup, "_jitted", {})
    assert dedup._kernels() is None
