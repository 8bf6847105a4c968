"""The artifact store on a local directory and on a real S3 server (SeaweedFS on 127.0.0.1).

    python -m pytest tests/storage/test_artifacts.py -q
"""

from __future__ import annotations

import urllib.error
import urllib.request
import uuid

import pytest

from storage import BadInput
from storage.artifacts import ArtifactStore
from storage.config import LakeConfig

BUCKET = "factory-artifact-tests"


@pytest.fixture
def files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.bin").write_bytes(b"\x00weights\xff" * 100)
    (src / "report.html").write_text("<h1>run r1</h1>")
    return src


# -- local store -------------------------------------------------------------------------


@pytest.fixture
def local(tmp_path):
    return ArtifactStore(LakeConfig(store=str(tmp_path / "store")))


def test_local_put_get_list(local, files, tmp_path):
    assert local.list() == []
    uri = local.put_file(files / "model.bin", "ckpt/r1/model.bin")
    local.put_file(files / "report.html", "reports/r1.html")

    assert uri == str(tmp_path / "store" / "artifacts" / "ckpt" / "r1" / "model.bin")
    assert local.list() == ["ckpt/r1/model.bin", "reports/r1.html"]
    assert local.list("ckpt/") == ["ckpt/r1/model.bin"]
    out = local.get_file("ckpt/r1/model.bin", tmp_path / "out" / "m.bin")
    assert out.read_bytes() == (files / "model.bin").read_bytes()


def test_local_overwrite_replaces(local, files, tmp_path):
    local.put_file(files / "model.bin", "a.bin")
    local.put_file(files / "report.html", "a.bin")
    assert local.get_file("a.bin", tmp_path / "a").read_text() == "<h1>run r1</h1>"
    assert local.list() == ["a.bin"]  # no half-written copies left behind


def test_local_refuses_presign_missing_and_bad_keys(local, files, tmp_path):
    local.put_file(files / "model.bin", "m.bin")
    with pytest.raises(BadInput, match="presigned links need an S3 store"):
        local.presign("m.bin")
    with pytest.raises(BadInput, match="'nope.bin' does not exist"):
        local.get_file("nope.bin", tmp_path / "x")
    with pytest.raises(BadInput, match="no such file"):
        local.put_file(tmp_path / "absent", "x")
    for bad in ("../escape.bin", "/abs.bin", "a//b", "dir/", ""):
        with pytest.raises(BadInput, match="artifact key"):
            local.put_file(files / "model.bin", bad)
    assert not (tmp_path / "store" / "escape.bin").exists()


# -- S3 store ----------------------------------------------------------------------------


@pytest.fixture
def remote(s3_server):
    store = ArtifactStore(LakeConfig(store=f"s3://{BUCKET}/p{uuid.uuid4().hex[:8]}", s3=s3_server.settings()))
    store.ensure_bucket()
    store.ensure_bucket()  # idempotent: a second call finds the bucket
    return store


@pytest.mark.integration
def test_s3_put_get_list(remote, files, tmp_path, s3_server):
    uri = remote.put_file(files / "model.bin", "ckpt/r1/model.bin")
    remote.put_file(files / "report.html", "reports/r1.html")

    assert uri == f"{remote.config.store}/artifacts/ckpt/r1/model.bin"
    assert remote.list() == ["ckpt/r1/model.bin", "reports/r1.html"]
    assert remote.list("reports/") == ["reports/r1.html"]
    out = remote.get_file("ckpt/r1/model.bin", tmp_path / "out" / "m.bin")
    assert out.read_bytes() == (files / "model.bin").read_bytes()
    # The objects are where the URI says, under the store's artifacts/ prefix.
    prefix = remote.config.store.split("/", 3)[3]
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]]
    assert sorted(keys) == [f"{prefix}/artifacts/ckpt/r1/model.bin", f"{prefix}/artifacts/reports/r1.html"]


@pytest.mark.integration
def test_s3_presign_gives_a_working_link(remote, files):
    remote.put_file(files / "report.html", "reports/r1.html")
    url = remote.presign("reports/r1.html", expires_s=60)

    assert url.startswith(remote.config.s3.endpoint_url + "/")
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"<h1>run r1</h1>"
    # The signature is what grants access: the bare URL is refused.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url.split("?")[0], timeout=10)
    assert refused.value.code == 403


@pytest.mark.integration
def test_s3_missing_key_is_bad_input(remote, tmp_path):
    for call in (
        lambda: remote.get_file("nope.bin", tmp_path / "x"),
        lambda: remote.presign("nope.bin"),
    ):
        with pytest.raises(BadInput, match=rf"'nope.bin' does not exist in the artifact store {remote.root}"):
            call()
    assert not (tmp_path / "x").exists()
    assert remote.list("nothing/") == []


@pytest.mark.integration
def test_s3_missing_bucket_and_bad_keys_are_bad_input(s3_server, files):
    store = f"s3://factory-no-such-bucket/p{uuid.uuid4().hex[:8]}"
    missing = ArtifactStore(LakeConfig(store=store, s3=s3_server.settings()))
    with pytest.raises(BadInput, match="factory-no-such-bucket' .* does not exist: create it with"):
        missing.put_file(files / "model.bin", "m.bin")
    wrong = s3_server.settings().model_copy(update={"secret_access_key": "not-the-secret"})
    refused = ArtifactStore(LakeConfig(store=f"s3://{BUCKET}/p", s3=wrong))
    with pytest.raises(BadInput, match="S3 refused access .* check the S3 credentials"):
        refused.list()
