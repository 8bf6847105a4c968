"""`factory view` without a browser (Starlette's TestClient over the app): every page answers on
a fixture lake, unknown ids are 404, bad parameters 400 with a message naming them, the SQL box is
confined, reviews land in the `reviews` table, the draw is seeded, the server binds 127.0.0.1 by
default, and `factory export --drop-reviewed-bad` leaves reviewed-bad rows out."""

import contextlib
import html
import json
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from flows import view as view_mod
from flows.cli import app
from flows.view import View, build_app, check_host, draw_sample
from storage import BadInput, Lake, LakeBusy
from tests.storage.test_postgres import catalog as pg_catalog  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(2)>"
RUN = "run-v"
HIT = json.dumps({"benchmark": "math500", "benchmark_id": "test/precalculus/807.json", "method": "ngram", "score": 0.9,
                  "matched": "Convert the point (0,3) in rectangular coordinates", "part": "text"}, sort_keys=True)
HIT2 = json.dumps({"benchmark": "aime2024", "benchmark_id": "60", "method": "minhash", "score": 0.5, "matched": "3+3", "part": "text"}, sort_keys=True)


def build_view_lake(store, catalog: str | None = None) -> None:
    """Two sources, 5 problems, 4 samples each (20, ids s00..s19 in order); hostile text in one
    sample's reasoning and answer and in a verdict reason; a contamination hit; a dedup cluster;
    an eval; a dataset of the index-0 samples."""
    problems, samples, verdicts = [], [], []
    for i in range(5):
        source = "gsm8k" if i < 3 else "synth"
        problems.append({"problem_id": f"p{i}", "source": source, "domain": "math", "problem": f"What is {i}+{i}?",
                         "reference_answer": str(2 * i), "difficulty": 1.0 + i, "contamination": [HIT] if i == 4 else [HIT2] if i == 3 else []})
        for k in range(4):
            n = i * 4 + k
            sid = f"s{n:02d}"
            hostile = sid == "s06"
            samples.append({"sample_id": sid, "problem_id": f"p{i}", "teacher": "t", "model": "m", "sample_index": k,
                            "prompt": f"What is {i}+{i}?",
                            "reasoning": f"Think {SCRIPT} {IMG}" if hostile else f"Adding {i} and {i}: $\\frac{{{i}}}{{1}}+{i}$ is **{2 * i}**.",
                            "answer": IMG if hostile else str(2 * i), "finish_reason": "length" if k == 3 else "stop",
                            "prompt_tokens": 10, "completion_tokens": 100 * (k + 1), "cost_usd": 0.001})
            ok = k != 2
            verdicts.append({"sample_id": sid, "check": "math", "status": "pass" if ok else "fail",
                             "reason": None if ok else (SCRIPT if hostile else "answer 7 != 2")})
    with Lake.open(str(store), catalog) as lake:
        lake.commit("problems", problems, batch_key="p", run_id=RUN)
        lake.commit("samples", samples, batch_key="s", run_id=RUN)
        lake.commit("verdicts", verdicts, batch_key="v", run_id=RUN)
        lake.commit("dedup", [{"item_id": "s01", "item_kind": "sample", "cluster_id": "s00", "kept": False, "method": "minhash", "similarity": 0.9},
                              {"item_id": "s00", "item_kind": "sample", "cluster_id": "s00", "kept": True, "method": "minhash", "similarity": 1.0}],
                    batch_key="d", run_id=RUN)
        lake.commit("runs", [{"run_id": RUN, "status": "finished", "cost_usd": 0.02}], batch_key="run", run_id=RUN)
        lake.commit("evals", [{"eval_id": "e1", "model": "student", "benchmark": "math500", "item_id": f"i{j}", "sample_index": 0,
                               "completion": f"<think>hmm {SCRIPT}</think> {j}", "status": "pass" if j % 2 else "fail",
                               "correct": bool(j % 2), "completion_tokens": 50} for j in range(3)], batch_key="e", run_id=RUN)
        lake.save_dataset("ds-v", "SELECT sample_id, answer FROM samples WHERE sample_index = 0", run_id=RUN)


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    store = tmp_path_factory.mktemp("view") / "store"
    build_view_lake(store)
    with Lake.open(str(store)) as lake:
        yield lake


@pytest.fixture(scope="module")
def client(lake, tmp_path_factory):
    metrics = tmp_path_factory.mktemp("metrics") / "metrics.csv"
    metrics.write_text("step,loss,lr\n1,2.0,0.1\n2,1.5,0.1\n3,1.2,0.1\n")
    with TestClient(build_app(View(lake, [metrics], reviewer="ann"))) as c:
        yield c


PAGES = ["/", f"/runs/{RUN}", "/datasets/ds-v/1", "/problems", "/problems?source=synth&contaminated=1", "/problems/p4", "/samples",
         "/samples/s00", "/evals", "/evals/e1", "/training", "/sql", "/sql?q=SELECT+1", "/review", "/report"]


@pytest.mark.parametrize("path", PAGES)
def test_every_page_answers_on_the_fixture_lake(client, path):
    r = client.get(path)
    assert r.status_code == 200, r.text[:500]
    assert r.headers["content-type"].startswith("text/html")


def test_pages_show_what_the_lake_holds(client):
    runs = client.get("/").text
    assert f'href="/runs/{RUN}"' in runs and 'href="/datasets/ds-v/1"' in runs
    run = client.get(f"/runs/{RUN}").text
    assert 'href="/samples?run=run-v&amp;source=gsm8k"' in run and 'href="/samples?run=run-v&amp;source=synth"' in run
    sample = client.get("/samples/s01").text
    assert "dropped" in sample and 'href="/samples/s00"' in sample  # its cluster's kept member
    # Math typeset, Markdown rendered, and the text as written one click away.
    assert '<div class="text" id="reasoning"><p>Adding 0 and 0: <math display="inline"><mrow><mfrac>' in sample
    assert "<strong>0</strong>" in sample and '<pre id="reasoning-written">Adding 0 and 0: $\\frac{0}{1}+0$ is **0**.</pre>' in sample
    problem = client.get("/problems/p4").text
    assert "Convert the point (0,3) in rectangular coordinates" in problem  # the matched span
    assert "Convert the point $(0,3)$ in rectangular coordinates to polar coordinates" in problem  # the math500 item beside it
    dataset = client.get("/datasets/ds-v/1").text
    assert "factory export ds-v@1 --format jsonl" in dataset and 'href="/samples/s04"' in dataset
    training = client.get("/training").text
    assert "<svg" in training and "loss" in training and "last 1.2" in training
    evals = client.get("/evals/e1").text
    assert "Item i0" in evals and "&lt;think&gt;hmm" in evals


def test_hostile_text_is_escaped_on_every_page_that_shows_it(client):
    for path in ("/samples/s06", "/samples?q=onerror", "/evals/e1", "/sql?q=SELECT+reasoning,+answer+FROM+samples"):
        page = client.get(path).text
        assert SCRIPT not in page and IMG not in page, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page or "&lt;img src=x onerror=alert(2)&gt;" in page, path
    # No page has any script of its own either.
    assert "<script" not in client.get("/samples/s06").text


def test_filters_and_keyset_paging(client):
    def ids(page):
        return re.findall(r'class="sample" href="/samples/(s\d\d)"', page)

    first = client.get("/samples?n=7")
    assert ids(first.text) == [f"s{n:02d}" for n in range(7)]
    nxt = re.search(r'id="next" href="([^"]+)"', first.text).group(1).replace("&amp;", "&")
    assert "after=s06" in nxt
    second = client.get(nxt).text
    assert ids(second) == [f"s{n:02d}" for n in range(7, 14)]
    prev = re.search(r'id="prev" href="([^"]+)"', second).group(1).replace("&amp;", "&")
    assert ids(client.get(prev).text) == [f"s{n:02d}" for n in range(7)]
    last = client.get("/samples?n=7&after=s13").text
    assert ids(last) == [f"s{n:02d}" for n in range(14, 20)] and 'id="next"' not in last
    assert ids(client.get("/samples?source=synth&status=fail").text) == ["s14", "s18"]
    assert ids(client.get("/samples?min_tokens=400").text) == [f"s{n:02d}" for n in range(3, 20, 4)]
    assert ids(client.get("/samples?q=onerror").text) == ["s06"]
    assert ids(client.get("/samples?reason=7+!%3D").text) == ["s02", "s10", "s14", "s18"]
    assert ids(client.get("/samples?run=nope").text) == []


@pytest.mark.parametrize("path", ["/samples/nope", "/problems/nope", f"/runs/{RUN}x", "/datasets/ds-v/9", "/datasets/nope/1", "/evals/nope"])
def test_unknown_ids_are_404(client, path):
    r = client.get(path)
    assert r.status_code == 404 and "is not in the lake" in r.text


@pytest.mark.parametrize("path, names", [("/samples?n=0", "'n'"), ("/samples?n=abc", "'n'"), ("/samples?status=maybe", "'status'"),
                                         ("/samples?min_tokens=-1", "'min_tokens'"), ("/samples?after=s01&before=s05", "'after' and 'before'"),
                                         ("/problems?contaminated=yes", "'contaminated'"), ("/draw", "'source'"), ("/evals/e1?correct=x", "'correct'"),
                                         ("/samples?after=%00", "'after'"), ("/samples/s%00", "'sample_id'"), ("/problems?q=a%00", "'q'")])
def test_bad_parameters_are_400_with_a_message_naming_them(client, path, names):
    r = client.get(path)
    text = html.unescape(r.text)
    assert r.status_code == 400
    assert f"parameter {names}" in text or f"parameters {names}" in text


def test_the_sql_box_is_confined_and_links_results(client, lake):
    before = lake.query("SELECT count(*) FROM samples").column(0)[0].as_py()
    for sql in ("DELETE FROM samples", "SELECT * FROM read_csv('/etc/passwd')", "COPY samples TO '/tmp/x.csv'"):
        r = client.get("/sql", params={"q": sql})
        assert r.status_code == 400 and 'id="error"' in r.text, sql
    assert lake.query("SELECT count(*) FROM samples").column(0)[0].as_py() == before
    ok = client.get("/sql", params={"q": "SELECT sample_id, problem_id FROM samples ORDER BY 1 LIMIT 2"}).text
    assert 'href="/samples/s00"' in ok and 'href="/problems/p0"' in ok


def test_a_review_lands_in_the_table_with_who_when_what_and_snapshot(client, lake):
    snap = lake.snapshot_id()
    r = client.post("/reviews", data={"kind": "sample", "item_id": "s03", "label": "hacked", "note": "guessed " + SCRIPT,
                                      "reviewer": "bob", "snapshot": str(snap)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/samples/s03?reviewed=")
    row = lake.query("SELECT * FROM reviews WHERE item_id = 's03'").to_pylist()[-1]
    assert (row["item_kind"], row["label"], row["reviewer"], row["snapshot_id"], row["drawn"]) == ("sample", "hacked", "bob", snap, False)
    assert row["note"] == "guessed " + SCRIPT and row["created_at"] is not None
    page = client.get("/samples/s03").text
    assert "hacked" in page and "guessed &lt;script&gt;" in page
    hit = client.post("/reviews", data={"kind": "contamination", "item_id": "p4", "hit": HIT, "label": "false", "reviewer": "bob"},
                      follow_redirects=False)
    assert hit.status_code == 303
    assert lake.query("SELECT label, hit FROM reviews WHERE item_kind = 'contamination'").to_pylist()[-1] == {"label": "false", "hit": HIT}


@pytest.mark.parametrize("form, field", [({"kind": "sample", "item_id": "s03", "label": "meh"}, "label"),
                                         ({"kind": "sample", "item_id": "nope", "label": "right"}, "item_id"),
                                         ({"kind": "contamination", "item_id": "p4", "hit": "other", "label": "true"}, "hit"),
                                         ({"kind": "thing", "item_id": "s03", "label": "right"}, "kind"),
                                         ({"kind": "sample", "item_id": "s03", "label": "right", "reviewer": " "}, "reviewer")])
def test_a_bad_review_is_400_naming_the_field_and_writes_nothing(client, lake, form, field):
    before = lake.query("SELECT count(*) FROM reviews").column(0)[0].as_py()
    r = client.post("/reviews", data={"reviewer": "bob", **form})
    assert r.status_code == 400 and f"field {field!r}" in html.unescape(r.text)
    assert lake.query("SELECT count(*) FROM reviews").column(0)[0].as_py() == before


def test_a_review_from_another_origin_is_refused(client, lake):
    before = lake.query("SELECT count(*) FROM reviews").column(0)[0].as_py()
    r = client.post("/reviews", data={"kind": "sample", "item_id": "s03", "label": "right", "reviewer": "eve"},
                    headers={"origin": "http://evil.example"})
    assert r.status_code == 403
    assert client.get("/", headers={"host": "evil.example"}).status_code == 400  # DNS rebinding: not our host name
    assert lake.query("SELECT count(*) FROM reviews").column(0)[0].as_py() == before


def test_draws_are_seeded_without_replacement_and_recorded_as_drawn(client, lake):
    a, b = draw_sample(lake, "synth", 7), draw_sample(lake, "synth", 7)
    assert a == b and a in {f"s{n:02d}" for n in range(12, 20)}
    order = {draw_sample(lake, "synth", s) for s in range(8)}
    assert len(order) > 1  # the seed changes the order
    r = client.get("/draw", params={"source": "synth", "seed": 7}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith(f"/samples/{a}?drawn=1&seed=7")
    page = client.get(r.headers["location"]).text
    assert 'name="drawn" value="1"' in page
    done = client.post("/reviews", data={"kind": "sample", "item_id": a, "label": "right", "reviewer": "ann", "drawn": "1",
                                         "seed": "7", "source": "synth"}, follow_redirects=False)
    assert done.headers["location"].startswith("/draw?source=synth&seed=7")  # on to the next draw
    assert draw_sample(lake, "synth", 7) not in (a, None)
    row = lake.query("SELECT drawn, draw_seed FROM reviews WHERE item_id = ? ORDER BY created_at DESC LIMIT 1", [a]).to_pylist()[0]
    assert row == {"drawn": True, "draw_seed": 7}
    assert "synth" in client.get("/review").text


def test_the_server_binds_127_0_0_1_unless_told(monkeypatch, tmp_path):
    assert check_host(None) == "127.0.0.1"
    with pytest.raises(BadInput, match="--host"):
        check_host("0.0.0.0/0")
    store = tmp_path / "store"
    build_view_lake(store)
    seen = {}
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw))
    runner = CliRunner()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = runner.invoke(app, ["view", "--store", str(store), "--port", str(port)])
    assert r.exit_code == 0, r.output
    assert seen["host"] == "127.0.0.1" and seen["port"] == port
    assert f"http://127.0.0.1:{port}/" in r.output
    r = runner.invoke(app, ["view", "--store", str(store), "--host", "0.0.0.0", "--port", str(port)])
    assert seen["host"] == "0.0.0.0" and "warning: listening on 0.0.0.0" in r.output
    missing = runner.invoke(app, ["view", "--store", str(tmp_path / "none"), "--port", str(port)])
    assert missing.exit_code == 2 and "no lake at" in missing.output
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = runner.invoke(app, ["view", "--store", str(store), "--port", str(held.getsockname()[1])])
    assert busy.exit_code == 2 and "cannot listen there" in busy.output and "expected a free port" in busy.output


# A run as the lake sees it: batches of ROWS samples, each under a run id of its own (w000, w001,
# ...), committed back to back with a short pause, each announced, until stdin closes.
ROWS = 8
ANSWER_S = 5.0  # "within a few seconds": a reader waits for the writer's rest, then copies and attaches
WRITER = textwrap.dedent(
    f"""
    import sys, threading, time
    from storage import Lake
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    with Lake.open(sys.argv[1]) as lake:
        b = 0
        while not stop.is_set() or b < 3:
            run = f"w{{b:03d}}"
            rows = [{{"sample_id": f"{{run}}-{{i}}", "problem_id": "p0", "teacher": "t", "reasoning": "r" * 2000, "answer": str(i)}}
                    for i in range({ROWS})]
            assert lake.commit("samples", rows, batch_key=run, run_id=run).committed
            print(b + 1, flush=True)
            b += 1
            time.sleep(0.02)
    print("done", b, flush=True)
    """
)


@contextlib.contextmanager
def a_run_writing(store):
    """A writer process committing batches to `store` (holding its DuckDB catalog file) while
    inside; yields a function giving the number of batches committed so far. On the way out the
    writer is stopped, and every batch it announced must be in the lake exactly once."""
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(store)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(writer.stdout), daemon=True).start()

    def committed() -> int:
        return max((int(x) for x in list(lines) if x.strip().isdigit()), default=0)

    try:
        deadline = time.monotonic() + 120
        while committed() < 1:
            assert writer.poll() is None and time.monotonic() < deadline, writer.stderr.read() if writer.poll() is not None else "slow"
            time.sleep(0.05)
        yield committed
        assert writer.poll() is None, "the writer stopped while the view read: " + writer.stderr.read()
    finally:
        writer.stdin.close()
        writer.wait(timeout=120)
    assert writer.returncode == 0, writer.stderr.read()
    assert lines[-1].startswith("done")
    done = int(lines[-1].split()[1])
    with Lake.open(str(store), read_only=True) as lake:
        ledger = lake.query("SELECT batch_key FROM batches WHERE table_name = 'samples' AND batch_key LIKE 'w%'").column(0).to_pylist()
        assert sorted(ledger) == [f"w{b:03d}" for b in range(done)]  # every batch once, none lost
        assert lake.query("SELECT count(*) FROM samples WHERE run_id LIKE 'w%'").column(0)[0].as_py() == done * ROWS


def _timed_get(client, path, **kw):
    t = time.perf_counter()
    r = client.get(path, **kw)
    took = time.perf_counter() - t
    assert took < ANSWER_S, (path, took)
    return r


@pytest.mark.integration
def test_pages_answer_and_show_new_rows_while_a_run_writes_the_store(tmp_path):
    store = tmp_path / "store"
    build_view_lake(store)
    refresh_s = 0.5
    with a_run_writing(store) as committed:
        at_start = committed()
        with TestClient(build_app(View(Lake.open(str(store), create=False), refresh_s=refresh_s))) as c:
            first = _timed_get(c, "/samples")
            assert first.status_code == 200 and "s00" in first.text
            for path in ("/", "/samples"):  # each page, a while after the reader before it: rows committed since show
                while committed() < at_start + 2:
                    time.sleep(0.05)
                time.sleep(refresh_s)
                newest = f"w{committed() - 1:03d}"  # committed before this request: a page at most refresh_s stale shows it
                assert int(newest[1:]) >= at_start  # a batch committed after the app started
                page = _timed_get(c, path, params={"run": newest} if path == "/samples" else None)
                assert page.status_code == 200
                shown = set(re.findall(r"w\d{3}-\d+" if path == "/samples" else r">(w\d{3})</a>", page.text))
                assert (shown == {f"{newest}-{i}" for i in range(ROWS)}) if path == "/samples" else newest in shown, (path, newest, shown)
                at_start = committed()
            def snapshot(r) -> int:
                return int(re.search(r"Lake snapshot (\d+)", r.text).group(1))

            assert snapshot(page) > snapshot(first)  # each page says which snapshot it read


@pytest.mark.integration
def test_a_review_posted_while_a_run_writes_lands_and_shows_at_once(tmp_path):
    store = tmp_path / "store"
    build_view_lake(store)
    with a_run_writing(store):
        lake = Lake.open(str(store), create=False)
        with TestClient(build_app(View(lake, refresh_s=60))) as c:  # no refresh by age: only the review's
            assert "guessed" not in _timed_get(c, "/samples/s03").text
            t = time.perf_counter()
            r = c.post("/reviews", data={"kind": "sample", "item_id": "s03", "label": "hacked", "note": "guessed", "reviewer": "bob"},
                       follow_redirects=False)
            assert r.status_code == 303, r.text
            assert time.perf_counter() - t < ANSWER_S  # it waited for the run's rest, not for its end
            page = _timed_get(c, r.headers["location"]).text
            assert "guessed" in page and "hacked" in page
    with Lake.open(str(store), read_only=True) as lake:
        assert lake.query("SELECT label, note FROM reviews WHERE item_id = 's03'").to_pylist() == [{"label": "hacked", "note": "guessed"}]


def test_a_busy_lake_is_a_503_page_saying_so(tmp_path, monkeypatch):
    store = tmp_path / "store"
    build_view_lake(store)
    lake = Lake.open(str(store), create=False)

    def busy(*a, **kw):
        raise LakeBusy("the catalog x is held by another process (waited 60 s)")

    with TestClient(build_app(View(lake))) as c:
        assert c.get("/samples").status_code == 200
        monkeypatch.setattr(view_mod, "add_review", busy)
        r = c.post("/reviews", data={"kind": "sample", "item_id": "s03", "label": "right", "reviewer": "bob"})
        assert r.status_code == 503 and "The lake is busy" in r.text and "try again" in r.text


@pytest.mark.integration
def test_another_process_writes_while_the_view_sits_open(tmp_path):
    store = tmp_path / "store"
    build_view_lake(store)
    lake = Lake.open(str(store), create=False)
    with TestClient(build_app(View(lake, refresh_s=0))) as c:
        assert c.get("/samples").status_code == 200
        r = c.post("/reviews", data={"kind": "sample", "item_id": "s03", "label": "right", "reviewer": "bob"}, follow_redirects=False)
        assert r.status_code == 303  # its writer is closed after its commit
        # Right after the requests, no sleep: the view holds no writer, and its reader is a copy.
        script = ("import sys; from storage import Lake\n"
                  "with Lake.open(sys.argv[1], lock_timeout_s=2) as o: o.commit('runs', [{'run_id': 'r2', 'status': 'started'}], batch_key='r2', run_id='r2')")
        done = subprocess.run([sys.executable, "-c", script, str(store)], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "r2" in c.get("/").text
    lake.close()


def test_export_drops_reviewed_bad_rows_when_asked(tmp_path, monkeypatch):
    store = tmp_path / "store"
    build_view_lake(store)
    with Lake.open(str(store)) as lake:
        view_mod.add_review(lake, kind="sample", item_id="s04", label="wrong", reviewer="ann")
        view_mod.add_review(lake, kind="sample", item_id="s08", label="hacked", reviewer="ann")
        view_mod.add_review(lake, kind="sample", item_id="s08", label="right", reviewer="bob")  # the newest review counts
        view_mod.add_review(lake, kind="sample", item_id="s12", label="unreadable", reviewer="ann")
        view_mod.add_review(lake, kind="contamination", item_id="p4", hit=HIT, label="true", reviewer="ann")  # drops s16's problem
    runner = CliRunner()
    out = tmp_path / "all.jsonl"
    assert runner.invoke(app, ["export", "ds-v", "--store", str(store), "--output", str(out)]).exit_code == 0
    assert [json.loads(x)["sample_id"] for x in out.read_text().splitlines()] == ["s00", "s04", "s08", "s12", "s16"]
    kept = tmp_path / "kept.jsonl"
    r = runner.invoke(app, ["export", "ds-v", "--store", str(store), "--output", str(kept), "--drop-reviewed-bad"])
    assert r.exit_code == 0, r.output
    assert [json.loads(x)["sample_id"] for x in kept.read_text().splitlines()] == ["s00", "s08"]
    assert "dropped 3 row(s)" in r.output
    # A dataset without sample_id or problem_id cannot be matched to reviews: exit 2 naming the columns.
    with Lake.open(str(store)) as lake:
        lake.save_dataset("answers", "SELECT answer FROM samples")
    r = runner.invoke(app, ["export", "answers", "--store", str(store), "--output", str(tmp_path / "a.jsonl"), "--drop-reviewed-bad"])
    assert r.exit_code == 2 and "sample_id" in r.output


def test_a_lake_of_schema_version_4_gains_the_reviews_table_on_open(tmp_path):
    store = str(tmp_path / "store")
    with Lake.open(store) as lake:
        lake.query("DROP TABLE reviews")
        lake.query("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    with Lake.open(store) as lake:
        assert lake.query("SELECT value FROM meta WHERE key = 'schema_version'").column(0).to_pylist() == ["5"]
        assert lake.query("SELECT count(*) FROM reviews").column(0).to_pylist() == [0]


def test_the_report_shows_verifier_agreement_and_decontamination_precision(tmp_path, monkeypatch):
    store = tmp_path / "store"
    build_view_lake(store)
    with Lake.open(str(store)) as lake:
        for sid, label, drawn in (("s00", "right", False), ("s02", "right", False), ("s01", "hacked", False), ("s10", "wrong", True),
                                  ("s04", "unreadable", False)):
            view_mod.add_review(lake, kind="sample", item_id=sid, label=label, reviewer="ann", drawn=drawn, seed=1)
        view_mod.add_review(lake, kind="contamination", item_id="p4", hit=HIT, label="false", reviewer="ann")
        view_mod.add_review(lake, kind="contamination", item_id="p4", hit=HIT, label="true", reviewer="bob")  # newest counts
        view_mod.add_review(lake, kind="contamination", item_id="p3", hit=HIT2, label="false", reviewer="ann")
        from flows.report import collect_report
        from flows.report_html import render_html

        data = collect_report(lake)
        page = render_html(data)
    # s00 verified+right and s10 failed+wrong agree; s02 failed+right and s01 verified+hacked do not; unreadable is not judged.
    assert data.reviews["agreement"] == {"all": [2, 4], "drawn": [1, 1]}
    assert data.reviews["contamination"] == {"math500": {"true": 1, "false": 0}, "aime2024": {"true": 0, "false": 1}}
    section = page[page.index('<section id="reviews">'):]
    section = section[:section.index("</section>")]
    assert "50.0% (2 of 4)" in section and "100.0% (1 of 1)" in section
    assert re.search(r"<td[^>]*>math500</td><td[^>]*>1</td><td[^>]*>0</td><td[^>]*>100.0%</td>", section)
    assert re.search(r"<td[^>]*>aime2024</td><td[^>]*>0</td><td[^>]*>1</td><td[^>]*>0.0%</td>", section)
    # No reviews, no section.
    empty = tmp_path / "empty"
    build_view_lake(empty)
    with Lake.open(str(empty)) as lake:
        assert collect_report(lake).reviews is None and 'id="reviews"' not in render_html(collect_report(lake))


def test_the_training_page_escapes_hostile_metric_names(lake, tmp_path):
    metrics = tmp_path / "metrics.csv"
    metrics.write_text(f'step,"{SCRIPT}"\n1,2.0\n2,1.0\n')
    with TestClient(build_app(View(lake, [metrics]))) as c:
        page = c.get("/training").text
    assert SCRIPT not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<svg" in page


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_the_view_on_a_sqlite_or_postgres_catalog(kind, tmp_path, request):
    """Every page answers, a review lands and shows, and a batch another writer commits shows on
    the next page (these catalogs are read directly, never copied)."""
    store = tmp_path / "store"
    catalog = "sqlite:" + str(tmp_path / "c.sqlite") if kind == "sqlite" else request.getfixturevalue("pg_catalog")
    build_view_lake(store, catalog)
    with Lake.open(str(store), catalog, create=False) as lake, TestClient(build_app(View(lake, reviewer="ann"))) as client:  # as `factory view` does
        for path in PAGES:
            assert client.get(path).status_code == 200, path
        r = client.post("/reviews", data={"kind": "sample", "item_id": "s05", "label": "wrong", "reviewer": "ann"}, follow_redirects=False)
        assert r.status_code == 303
        assert "wrong" in client.get("/samples/s05").text.split('id="reviews"')[1]
        with Lake.open(str(store), catalog) as writer:
            writer.commit("samples", [{"sample_id": "s99", "problem_id": "p0", "teacher": "t", "reasoning": "late"}], batch_key="late", run_id=RUN)
        assert client.get("/samples/s99").status_code == 200
