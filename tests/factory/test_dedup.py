"""Dedup: planted near-duplicates at known Jaccard are found, exact copies, the response
policy, and incremental runs through the lake equal one run over everything."""

from __future__ import annotations

import random

import numpy as np
import pytest

from factory.dedup import (
    MinHashIndex,
    choose_bands,
    dedup_lake,
    dedup_records,
    estimate_jaccard,
    exact_jaccard,
    minhash_signatures,
    shingle_sets,
    to_datasketch,
)

VOCAB = [f"w{i}" for i in range(20000)]


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def _shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    w = text.lower().split()
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def _true_jaccard(a: str, b: str) -> float:
    sa, sb = _shingles(a), _shingles(b)
    return len(sa & sb) / len(sa | sb)


def _edit(rng: random.Random, text: str, edits: int) -> str:
    w = text.split()
    for _ in range(edits):
        w[rng.randrange(len(w))] = rng.choice(VOCAB)
    return " ".join(w)


def test_signature_contract():
    sigs = minhash_signatures(["a b c d e f", "", "a b"], num_perm=64, ngram=3, seed=7)
    assert sigs.shape == (3, 64) and sigs.dtype == np.uint32
    again = minhash_signatures(["a b c d e f"], num_perm=64, ngram=3, seed=7)
    assert (again[0] == sigs[0]).all()
    assert (sigs[1] == 0xFFFFFFFF).all()  # empty text
    assert estimate_jaccard(sigs[0], sigs[0]) == 1.0
    # Case and whitespace do not matter.
    s = minhash_signatures(["A  b\nc d e f", "a b c d e f"], num_perm=64, ngram=3, seed=7)
    assert (s[0] == s[1]).all()


def test_exact_jaccard_matches_python_shingles():
    rng = random.Random(1)
    a = _text(rng, 400)
    b = _edit(rng, a, 6)
    sa, sb = shingle_sets([a, b])
    assert exact_jaccard(sa, sb) == pytest.approx(_true_jaccard(a, b))


def test_estimate_tracks_jaccard():
    rng = random.Random(2)
    errs = []
    for _ in range(30):
        a = _text(rng, 300)
        b = _edit(rng, a, rng.randrange(1, 20))
        sig = minhash_signatures([a, b])
        errs.append(estimate_jaccard(sig[0], sig[1]) - _true_jaccard(a, b))
    assert abs(np.mean(errs)) < 0.03 and np.std(errs) < 0.06  # ~ sqrt(J(1-J)/128)


def test_bands_for_08():
    assert choose_bands(0.8, 128) == (25, 5)
    b, r = choose_bands(0.8, 128)
    assert (1 - 0.8**r) ** b < 1e-3


def test_planted_near_duplicates_recall_and_precision():
    rng = random.Random(3)
    bases = [_text(rng, rng.randrange(200, 600)) for _ in range(150)]
    rows, truth = [], {}  # truth: copy id -> (base id, true jaccard)
    for i, t in enumerate(bases):
        rows.append({"problem_id": f"b{i}", "problem": t})
    for i, t in enumerate(bases):
        # Edits spanning Jaccard ~0.5 .. 0.98 around the 0.8 threshold.
        edits = rng.randrange(1, max(2, len(t.split()) // 25))
        copy = _edit(rng, t, edits)
        truth[f"c{i}"] = (f"b{i}", _true_jaccard(t, copy))
        rows.append({"problem_id": f"c{i}", "problem": copy})
    out = {r["problem_id"]: r for r in dedup_records(rows, "problem", threshold=0.8)}
    positives = {c for c, (_, j) in truth.items() if j >= 0.8}
    found = {c for c in truth if out[c]["cluster_id"] == truth[c][0] and not out[c]["kept"]}
    flagged = {r for r, o in out.items() if not o["kept"]}
    assert len(positives) > 40 and len(truth) - len(positives) > 20  # both sides planted
    recall = len(positives & found) / len(positives)
    precision = len(flagged & positives) / max(1, len(flagged))
    assert recall >= 0.95 and precision >= 0.95, (recall, precision)
    for c in found:  # the recorded similarity is the exact one
        assert out[c]["similarity"] == pytest.approx(truth[c][1])
        assert out[c]["method"] == "minhash"
    assert all(out[f"b{i}"]["kept"] and out[f"b{i}"]["method"] == "unique" for i in range(len(bases)))


def test_exact_duplicates_on_normalised_text():
    rows = [
        {"problem_id": "p1", "problem": "What is 1+1?"},
        {"problem_id": "p2", "problem": "What  is 1+1?\n"},
        {"problem_id": "p3", "problem": "What is 2+2?"},
    ]
    out = dedup_records(rows, "problem")
    assert [r["kept"] for r in out] == [True, False, True]
    assert out[1]["method"] == "exact" and out[1]["cluster_id"] == "p1" and out[1]["similarity"] == 1.0
    assert out[2]["method"] == "unique"


def test_response_policy_at_most_k_per_cluster_per_problem():
    rng = random.Random(4)
    a, b = _text(rng, 300), _text(rng, 300)
    rows = [
        {"sample_id": "s1", "problem_id": "P", "completion": a},
        {"sample_id": "s2", "problem_id": "P", "completion": _edit(rng, a, 1)},
        {"sample_id": "s3", "problem_id": "P", "completion": _edit(rng, a, 2)},
        {"sample_id": "s4", "problem_id": "P", "completion": b},  # a different response: own cluster
        {"sample_id": "s5", "problem_id": "Q", "completion": a},  # another problem: not compared
    ]
    out = dedup_records(rows, "completion", kind="response", k=2)
    assert [r["kept"] for r in out] == [True, True, False, True, True]
    assert [r["cluster_id"] for r in out] == ["s1", "s1", "s1", "s4", "s5"]
    out1 = dedup_records(rows, "completion", kind="response", k=1)
    assert [r["kept"] for r in out1] == [True, False, False, True, True]


def _corpus(seed: int = 5) -> list[dict]:
    rng = random.Random(seed)
    bases = [_text(rng, rng.randrange(100, 300)) for _ in range(60)]
    rows = []
    for i in range(180):
        if i < 60:
            text = bases[i]
        elif i % 3 == 0:
            text = bases[rng.randrange(60)]  # exact copy
        else:
            text = _edit(rng, bases[rng.randrange(60)], rng.randrange(1, 15))
        rows.append({"problem_id": f"p{i:03d}", "problem": text, "source": "t"})
    rng.shuffle(rows)
    return rows


def test_incremental_lake_runs_equal_one_run(tmp_path):
    from storage import Lake

    rows = _corpus()
    one = {r["problem_id"]: (r["cluster_id"], r["kept"], r["method"]) for r in dedup_records(rows, "problem")}
    with Lake.open(str(tmp_path / "store")) as lake:
        for run, part in enumerate([rows[:50], rows[50:120], rows[120:]]):
            lake.commit("problems", part, batch_key=f"p{run}", run_id=f"r{run}")
            dedup_lake(lake, "problems", run_id=f"r{run}")
            # Rows are ordered by created_at within the lake: keep the input order by committing
            # batches in order (each batch is decided in id order, as below).
        got = lake.query("SELECT item_id, cluster_id, kept, method FROM dedup WHERE item_kind = 'problem'").to_pylist()
        assert dedup_lake(lake, "problems", run_id="r9") == {"rows": 0, "kept": 0}
        n_leaders = lake.query("SELECT count(*) AS n FROM minhash").column("n")[0].as_py()
    # The lake decides each batch in id order; one run in the same order must agree.
    ordered = [r for part in (rows[:50], rows[50:120], rows[120:]) for r in sorted(part, key=lambda r: r["problem_id"])]
    one = {r["problem_id"]: (r["cluster_id"], r["kept"], r["method"]) for r in dedup_records(ordered, "problem")}
    assert {g["item_id"]: (g["cluster_id"], g["kept"], g["method"]) for g in got} == one
    assert n_leaders == sum(1 for v in one.values() if v[1])


def test_index_reused_in_memory_across_batches():
    rows = _corpus(6)
    index = MinHashIndex()
    parts = [dedup_records(rows[i : i + 40], "problem", index=index) for i in range(0, len(rows), 40)]
    inc = [(r["cluster_id"], r["kept"]) for p in parts for r in p]
    assert inc == [(r["cluster_id"], r["kept"]) for r in dedup_records(rows, "problem")]


def test_to_datasketch_round_trip():
    pytest.importorskip("datasketch")
    sig = minhash_signatures(["one two three four five six seven"])[0]
    m = to_datasketch(sig)
    assert m.hashvalues.tolist() == sig.tolist()
    assert m.jaccard(to_datasketch(sig)) == 1.0


def test_signatures_do_not_depend_on_the_batch():
    rng = random.Random(7)
    texts = ["", "one", "a b c", _text(rng, 50), "x y z w v u", _text(rng, 4), "  lead  and trail  ", _text(rng, 200)]
    together = minhash_signatures(texts)
    alone = np.vstack([minhash_signatures([t]) for t in texts])
    assert (together == alone).all()
    sets = shingle_sets(texts)
    assert len(sets[0]) == 0 and len(sets[1]) == 1 and len(sets[2]) == 1 and len(sets[4]) == 2
    assert len(sets[7]) == len(_shingles(texts[7]))


def test_exact_needs_equal_normalised_text_case_kept():
    rows = [{"problem_id": "a", "problem": "Let X be a set"}, {"problem_id": "b", "problem": "let x be a set"}]
    out = dedup_records(rows, "problem")
    # Same words up to case: a near-duplicate at Jaccard 1.0, but not an exact copy.
    assert out[1]["method"] == "minhash" and out[1]["similarity"] == 1.0 and not out[1]["kept"]


def test_response_policy_across_lake_runs(tmp_path):
    from storage import Lake

    rng = random.Random(8)
    a = _text(rng, 300)

    def sample(sid: str, pid: str, text: str) -> dict:
        return {"sample_id": sid, "problem_id": pid, "completion": text}

    with Lake.open(str(tmp_path / "store")) as lake:
        lake.commit("samples", [sample("s1", "P", a), sample("s2", "P", _edit(rng, a, 1))], batch_key="b1", run_id="r1")
        assert dedup_lake(lake, "samples", run_id="r1", k=2)["kept"] == 2
        lake.commit("samples", [sample("s3", "P", _edit(rng, a, 2)), sample("s4", "Q", a)], batch_key="b2", run_id="r2")
        dedup_lake(lake, "samples", run_id="r2", k=2)
        got = {r["item_id"]: (r["cluster_id"], r["kept"]) for r in lake.query("SELECT * FROM dedup").to_pylist()}
    # s3 joins s1's cluster, which already kept k=2 in the first run; s4 answers another problem.
    assert got == {"s1": ("s1", True), "s2": ("s1", True), "s3": ("s1", False), "s4": ("s4", True)}


def test_a_lake_without_the_minhash_table_gains_it(tmp_path):
    """A lake made before the `minhash` table existed (schema 1) gets it on open."""
    from storage import Lake

    store = str(tmp_path / "store")
    with Lake.open(store) as lake:
        lake.commit("problems", [{"problem_id": "x", "problem": "one two three four five six"}], batch_key="b", run_id="r")
        lake.connection().execute("DROP TABLE lake.minhash")
    with Lake.open(store) as lake:
        assert dedup_lake(lake, "problems", run_id="r2") == {"rows": 1, "kept": 1, "leaders": 1}
        assert lake.query("SELECT count(*) AS n FROM minhash").column("n")[0].as_py() == 1
