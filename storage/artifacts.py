"""The artifact store: files that are not table rows (checkpoints, reports, exported datasets),
kept beside the lake under `<store>/artifacts/`.

    from storage import Lake
    from storage.artifacts import ArtifactStore
    with Lake.open("s3://bucket/factory", catalog="postgresql://...") as lake:
        artifacts = ArtifactStore(lake.config)
        artifacts.ensure_bucket()                                   # S3: create it if missing
        uri = artifacts.put_file("out/report.html", "reports/r1/report.html")
        artifacts.get_file("reports/r1/report.html", "/tmp/report.html")
        artifacts.list("reports/")                                  # ['reports/r1/report.html']
        artifacts.presign("reports/r1/report.html", expires_s=600)  # a link anyone can GET

A key is a relative path with `/` separators. On a local store artifacts are plain files under
`<store>/artifacts/`; on an S3 store they are objects under `s3://bucket/prefix/artifacts/`,
moved by boto3 (DuckDB's httpfs reads and writes Parquet, but does not upload arbitrary files,
list keys, create buckets or sign links). Endpoint and credentials are the lake's
(`LakeConfig.s3_settings()`), so a store that the lake can read the artifacts can too.

Not covered: deleting artifacts and versioning them; a key that is written twice is replaced.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

from .config import LakeConfig
from .errors import BadInput, require
from .files import PARTIAL, atomic_output

_PIP_S3 = "pip install 'reasoning-factory[s3]'"
# SigV4 links may live at most 7 days (an AWS limit that S3-compatible servers copy).
_MAX_PRESIGN_S = 7 * 24 * 3600


class ArtifactStore:
    """Files under the lake's `artifacts/` folder, local or on S3."""

    def __init__(self, config: LakeConfig):
        self.config = config
        self.root = config.artifacts_path  # ends with "/"
        if config.is_s3:
            url = urlparse(self.root)
            self.bucket = url.netloc
            self._prefix = url.path.lstrip("/")  # "prefix/artifacts/" (or "artifacts/")
        else:
            self.bucket = None
            self._prefix = ""
        self._client_obj = None

    def __repr__(self) -> str:
        return f"ArtifactStore({self.root!r})"

    # -- the public API ----------------------------------------------------------------

    def put_file(self, local_path: str | os.PathLike, key: str) -> str:
        """Copy a local file into the store under `key`; return its URI (or path)."""
        src = Path(local_path)
        if not src.is_file():
            raise BadInput(f"cannot store {str(src)!r} as artifact {key!r}: no such file")
        key = self._check_key(key)
        if self.bucket is None:
            dest = Path(self.root, key)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with atomic_output(dest) as tmp:  # dest: the old file or the whole new one
                shutil.copyfile(src, tmp)
            return str(dest)
        # upload_file switches to multipart for large files (checkpoints run to gigabytes).
        self._call(lambda c: c.upload_file(str(src), self.bucket, self._prefix + key), key)
        return self.uri(key)

    def get_file(self, key: str, local_path: str | os.PathLike) -> Path:
        """Copy the artifact `key` to `local_path` (parents created); return that path."""
        key = self._check_key(key)
        dest = Path(local_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if self.bucket is None:
            src = Path(self.root, key)
            if not src.is_file():
                raise self._missing(key)
            with atomic_output(dest) as tmp:
                shutil.copyfile(src, tmp)
            return dest
        # download_file writes to a temporary name and renames it, so a failed download
        # never leaves a truncated file at `dest`.
        self._call(lambda c: c.download_file(self.bucket, self._prefix + key, str(dest)), key)
        return dest

    def list(self, prefix: str = "") -> list[str]:
        """The keys that start with `prefix`, sorted."""
        if prefix.startswith("/") or "\\" in prefix:
            raise BadInput(f"artifact prefix {prefix!r}: expected a relative path with '/' separators")
        if self.bucket is None:
            root = Path(self.root)
            if not root.is_dir():
                return []
            keys = (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
            # Half-written copies (storage.files.atomic_output) are not artifacts yet.
            return sorted(k for k in keys if k.startswith(prefix) and not _is_partial(k))

        def pages(client):
            paginator = client.get_paginator("list_objects_v2")
            return [
                obj["Key"][len(self._prefix) :]
                for page in paginator.paginate(Bucket=self.bucket, Prefix=self._prefix + prefix)
                for obj in page.get("Contents", [])
            ]

        return sorted(self._call(pages, prefix))

    def presign(self, key: str, expires_s: int = 3600) -> str:
        """A URL that lets anyone GET the artifact for `expires_s` seconds (S3 stores only)."""
        key = self._check_key(key)
        if self.bucket is None:
            raise BadInput(
                f"presigned links need an S3 store; the artifacts of {self.config.store_root} are "
                "in a local directory (open the lake with --store s3://bucket/prefix)"
            )
        if not 1 <= int(expires_s) <= _MAX_PRESIGN_S:
            raise BadInput(f"expires_s={expires_s}: expected 1 to {_MAX_PRESIGN_S} seconds (7 days)")
        # Signing is offline and succeeds for any key: check the object exists so a typo
        # fails here rather than as a 404 in someone's browser.
        self._call(lambda c: c.head_object(Bucket=self.bucket, Key=self._prefix + key), key)
        return self._call(
            lambda c: c.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self._prefix + key},
                ExpiresIn=int(expires_s),
            ),
            key,
        )

    def ensure_bucket(self) -> None:
        """Create the store's bucket if it does not exist (the artifacts folder if local)."""
        if self.bucket is None:
            Path(self.root).mkdir(parents=True, exist_ok=True)
            return
        client = self._client()
        botocore_exc = require("botocore.exceptions", _PIP_S3)
        try:
            client.head_bucket(Bucket=self.bucket)
            return
        except botocore_exc.ClientError as exc:
            if _error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise self._s3_error(exc, self.bucket) from exc
        kwargs: dict = {"Bucket": self.bucket}
        region = self.config.s3_settings().region
        # AWS rejects an explicit us-east-1 constraint and needs one for every other region.
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            client.create_bucket(**kwargs)
        except botocore_exc.ClientError as exc:
            # Another process created it between our check and our create: that is success.
            if _error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._s3_error(exc, self.bucket) from exc

    def uri(self, key: str) -> str:
        """Where `key` lives: s3://bucket/prefix/artifacts/key, or a local path."""
        key = self._check_key(key)
        return self.root + key if self.bucket is not None else str(Path(self.root, key))

    # -- helpers -----------------------------------------------------------------------

    def _check_key(self, key: str) -> str:
        if (
            not isinstance(key, str)
            or key.startswith("/")
            or "\\" in key
            or any(part in ("", ".", "..") for part in key.split("/"))
        ):
            # ".." would leave the artifacts folder on a local store; S3 would keep it
            # literally and make a key no local copy can mirror.
            raise BadInput(
                f"artifact key {key!r}: expected a relative path such as 'reports/r1/report.html' "
                "(no leading '/', no '.', '..' or empty parts)"
            )
        return key

    def _missing(self, key: str) -> BadInput:
        return BadInput(f"artifact {key!r} does not exist in the artifact store {self.root}")

    def _client(self):
        if self._client_obj is None:
            boto3 = require("boto3", _PIP_S3)
            botocore_config = require("botocore.config", _PIP_S3)
            s3 = self.config.s3_settings()
            # S3-compatible servers (SeaweedFS, MinIO) serve buckets as paths, not as
            # bucket.host names that need wildcard DNS.
            style = "path" if s3.endpoint_url or s3.url_style == "path" else "virtual"
            kwargs: dict = {
                "region_name": s3.region,
                "config": botocore_config.Config(
                    s3={"addressing_style": style},
                    signature_version="s3v4",  # SigV2 links are refused by AWS in most regions
                    retries={"mode": "standard", "max_attempts": 5},
                ),
            }
            if s3.endpoint_url:
                kwargs["endpoint_url"] = s3.endpoint_url
            # Without explicit keys boto3 uses its own chain (env, profiles, instance roles).
            if s3.access_key_id:
                kwargs["aws_access_key_id"] = s3.access_key_id
                kwargs["aws_secret_access_key"] = s3.secret_access_key
                kwargs["aws_session_token"] = s3.session_token
            self._client_obj = boto3.client("s3", **kwargs)
        return self._client_obj

    def _call(self, fn, key: str):
        """Run one boto3 call; turn "not there" and "not allowed" into BadInput naming the key."""
        client = self._client()
        botocore_exc = require("botocore.exceptions", _PIP_S3)
        boto3_exc = require("boto3.exceptions", _PIP_S3)
        try:
            return fn(client)
        except botocore_exc.ClientError as exc:
            raise self._client_error(exc, key) from exc
        except boto3_exc.S3UploadFailedError as exc:
            # upload_file wraps the server's answer; judge it by the error underneath.
            inner = exc.__cause__ or exc.__context__
            if isinstance(inner, botocore_exc.ClientError):
                raise self._client_error(inner, key) from exc
            raise
        except botocore_exc.NoCredentialsError as exc:
            raise BadInput(
                f"no S3 credentials for {self.root}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or an AWS profile)"
            ) from exc

    def _client_error(self, exc, key: str) -> Exception:
        if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return self._missing(key)
        return self._s3_error(exc, key)

    def _s3_error(self, exc, what: str) -> Exception:
        code = _error_code(exc)
        if code == "NoSuchBucket":
            return BadInput(
                f"the bucket {self.bucket!r} of {self.root} does not exist: create it with "
                "ArtifactStore.ensure_bucket() or your S3 console"
            )
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return BadInput(f"S3 refused access to {what!r} in {self.root} ({code}): check the S3 credentials")
        return exc  # anything else is a failed job, not the caller's input


def _error_code(exc) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _is_partial(key: str) -> bool:
    return PARTIAL in key.rsplit("/", 1)[-1]
