"""One LSH index shared by two worker processes through datasketch's Redis storage, against a
redis-server this test starts on 127.0.0.1 (Debian's `redis-server` package)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

# Worker A: signatures of the base texts, inserted into the shared index under their ids.
WORKER_A = """
import json, sys
from factory.dedup import minhash_signatures, shared_lsh, to_datasketch
port, texts = int(sys.argv[1]), json.loads(sys.stdin.read())
lsh = shared_lsh(redis_port=port, basename=b"test-dedup")
with lsh.insertion_session() as session:
    for key, sig in zip(texts, minhash_signatures(list(texts.values()))):
        session.insert(key, to_datasketch(sig))
print("inserted", len(texts))
"""

# Worker B: queries the same index with edited copies; prints what it found per query.
WORKER_B = """
import json, sys
from factory.dedup import minhash_signatures, shared_lsh, to_datasketch
port, texts = int(sys.argv[1]), json.loads(sys.stdin.read())
lsh = shared_lsh(redis_port=port, basename=b"test-dedup")
found = {key: sorted(lsh.query(to_datasketch(sig))) for key, sig in zip(texts, minhash_signatures(list(texts.values())))}
print(json.dumps(found))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_port(tmp_path):
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    pytest.importorskip("redis")
    pytest.importorskip("datasketch")
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _worker(code: str, port: int, payload: dict) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, str(port)],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_two_workers_share_one_index(redis_port):
    import random

    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(5000)]
    bases = {f"a{i}": " ".join(rng.choice(vocab) for _ in range(300)) for i in range(20)}

    def edit(text: str) -> str:
        w = text.split()
        w[rng.randrange(len(w))] = "edited"
        return " ".join(w)

    queries = {f"q{i}": edit(bases[f"a{i}"]) for i in range(10)}
    queries.update({f"fresh{i}": " ".join(rng.choice(vocab) for _ in range(300)) for i in range(5)})
    assert "inserted 20" in _worker(WORKER_A, redis_port, bases)
    found = json.loads(_worker(WORKER_B, redis_port, queries))
    for i in range(10):
        assert f"a{i}" in found[f"q{i}"]  # B sees what A inserted
    assert all(found[f"fresh{i}"] == [] for i in range(5))
