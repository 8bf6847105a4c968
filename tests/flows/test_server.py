"""The Prefect API behind the CLI (flows/server.py): `factory run` gets a generous startup time
and fails in one line when Prefect cannot start, Prefect's tracebacks stay in its log file, and
`factory schedule` + `factory serve` run a recipe on its cron with no Prefect server configured.

The commands run as subprocesses, as a user runs them, in a fresh PREFECT_HOME without any
PREFECT_* variable of this machine, so the embedded default is what is tested; the teacher is
the scripted server of tests/teacher_server.py.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from storage import Lake, LakeBusy
from tests.flows.test_pipeline import write_recipe
from tests.teacher_server import Normal, Status, TeacherServer

ROOT = Path(__file__).resolve().parents[2]
FACTORY = [sys.executable, "-c", "from flows.cli import main; main()"]


def user_env(home: Path, **extra: str) -> dict:
    """A new user's environment: no PREFECT_* setting but PREFECT_HOME (a fresh folder)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), HF_HUB_OFFLINE="1", **extra)
    return env


def factory(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*FACTORY, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def processes_of(home: Path) -> list[int]:
    """Every live process started with this PREFECT_HOME (servers, flow runs): none must outlive a command."""
    mark = f"PREFECT_HOME={home}\0".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if mark in (proc / "environ").read_bytes() and (proc / "stat").read_text().split()[2] != "Z":
                    found.append(int(proc.name))
            except OSError:
                pass
    return found


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_startup_timeout_defaults_to_180_s_and_a_users_setting_wins():
    from prefect.settings import get_current_settings, temporary_settings

    from flows.server import prefect_session

    with prefect_session(verbose=True):
        assert get_current_settings().server.ephemeral.startup_timeout_seconds == 180
    with temporary_settings(updates={"server.ephemeral.startup_timeout_seconds": 7}), prefect_session(verbose=True):
        assert get_current_settings().server.ephemeral.startup_timeout_seconds == 7


# A `factory run` whose Prefect server never answers: the subprocess Prefect starts is a sleep.
NO_SERVER = """
import subprocess, sys
from prefect.server.api.server import SubprocessASGIServer
SubprocessASGIServer._run_uvicorn_command = lambda self: subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
from flows.cli import main
sys.argv[1:] = sys.argv[2:]
main()
"""


def test_run_whose_prefect_server_does_not_start_ends_in_one_line(tmp_path):
    recipe = write_recipe(tmp_path, "http://127.0.0.1:9/v1", contaminated=False, n=1)
    home = tmp_path / "home"
    env = user_env(home, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="2")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", NO_SERVER, "--", "run", str(recipe), "--store", str(tmp_path / "store")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    took = time.monotonic() - t0
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("failed: Prefect's local server did not answer within 2 s")  # the user's setting
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in lines[0] and "PREFECT_API_URL" in lines[0]
    assert took < 120  # it gave up after the user's 2 s, not Prefect's 20 nor our 180
    assert processes_of(home) == []  # the server that never answered was stopped


def test_failed_runs_print_one_line_and_keep_prefects_traceback_in_its_log(prefect_api, tmp_path):
    """An incomplete run (the teacher answers 500) and a run whose teacher is down: exit 1, one
    line naming the log file, no traceback on stderr; the log file (and --verbose) has it."""
    home = tmp_path / "home"
    env = user_env(home, PREFECT_API_URL=prefect_api)  # the test harness's server: no startup to wait for
    log = home / "logs" / "factory.log"
    with TeacherServer(models=["test-model"]) as server:
        server.default = Status(500)
        recipe = write_recipe(tmp_path, server.url, contaminated=False, n=2)
        recipe.write_text(recipe.read_text().replace("max_concurrency: 1", "max_concurrency: 1\n  request_timeout_s: 3"))
        r = factory("run", str(recipe), "--store", str(tmp_path / "store"), env=env)
        assert r.returncode == 1, r.stderr
        assert "Traceback" not in r.stderr and "ERROR" not in r.stderr, r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("failed: run ") and "requests got no sample" in last and last.endswith(f"details in {log}")
        assert "Traceback" in log.read_text() and "RunIncomplete" in log.read_text()

        verbose = factory("run", str(recipe), "--store", str(tmp_path / "store"), "--verbose", env=env)
        assert verbose.returncode == 1 and "Traceback" in verbose.stderr and "RunIncomplete" in verbose.stderr
        assert "details in" not in verbose.stderr.strip().splitlines()[-1]
        server.default = Normal()

    down = write_recipe(tmp_path, "http://127.0.0.1:9/v1", contaminated=False, n=2, name="down")
    r = factory("run", str(down), "--store", str(tmp_path / "store2"), env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("failed: teacher 'test-model': no endpoint is reachable") and last.endswith(f"details in {log}")


def finished_runs(store: Path) -> int:
    if not (store / "catalog.ducklake").exists():  # the first run creates the lake
        return 0
    try:
        with Lake.open(str(store), create=False) as lake:
            return lake.query("SELECT count(DISTINCT run_id) AS n FROM runs WHERE status = 'finished'").column("n")[0].as_py()
    except LakeBusy:
        return 0


@pytest.mark.integration
def test_schedule_then_serve_runs_the_recipe_every_minute_on_the_embedded_default(tmp_path):
    """`factory schedule --cron "* * * * *"` then `factory serve`, with no Prefect server
    configured: at least two runs finish, the Prefect UI that serve names lists them, and
    SIGTERM stops it in one line, exit 0, with no process left behind."""
    home = tmp_path / "home"
    env = user_env(home)
    store = tmp_path / "store"
    with TeacherServer(models=["test-model"]) as teacher:
        recipe = write_recipe(tmp_path, teacher.url, contaminated=False, n=2, name="minutely")
        r = factory("schedule", str(recipe), "--cron", "* * * * *", "--name", "minutely", "--store", str(store), env=env)
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr and "factory-run/minutely" in r.stderr
        assert processes_of(home) == []  # schedule's ephemeral server is gone

        err_path = tmp_path / "serve.err"
        with open(err_path, "w") as err:
            serve = subprocess.Popen([*FACTORY, "serve"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 240
            while "serving" not in err_path.read_text() and serve.poll() is None and time.monotonic() < deadline:
                time.sleep(1)
            first = err_path.read_text()
            assert first.startswith("serving 1 scheduled recipe(s): minutely; runs in the Prefect UI at http://127.0.0.1:"), first
            ui = first.split("Prefect UI at ")[1].split()[0]
            deadline = time.monotonic() + 200  # runs start on the minute: two of them within ~3 minutes
            while finished_runs(store) < 2 and serve.poll() is None and time.monotonic() < deadline:
                time.sleep(3)
            assert finished_runs(store) >= 2, err_path.read_text()
            assert teacher.completion_requests(), "the runs did not reach the teacher"
            # The UI named on the first line is served, and its API holds the runs.
            assert httpx.get(ui, timeout=30).status_code == 200
            runs = httpx.post(f"{ui}/api/flow_runs/filter", timeout=30,
                              json={"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}).json()
            assert len(runs) >= 2 and {run["deployment_id"] for run in runs} != {None}

            serve.send_signal(signal.SIGTERM)
            rc = serve.wait(timeout=90)
        finally:
            if serve.poll() is None:
                serve.kill()
            leftover = processes_of(home)
            kill_all(leftover)
    out = err_path.read_text()
    assert rc == 0, out
    assert "Traceback" not in out and out.strip().splitlines()[-1] == "stopped", out
    assert leftover == [], "processes outlived factory serve"
    with pytest.raises(httpx.HTTPError):
        httpx.get(ui, timeout=5)  # the server it owned is gone
