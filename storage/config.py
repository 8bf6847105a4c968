"""Where a lake lives: the store (data files) and the catalog (metadata), and S3 settings.

    store:   ./factory-store (default) | /abs/dir | s3://bucket/prefix
    catalog: a DuckDB file (default: <store>/catalog.ducklake for a local store)
             | sqlite:PATH                  (several writer processes on one machine)
             | postgresql://user@host/db    (several writers on several machines; also postgres:...)

The store comes from `--store`, else `FACTORY_STORE`, else `./factory-store`; the catalog from
`--catalog`, else `FACTORY_CATALOG`. S3 endpoint and credentials come from the usual AWS
variables (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_REGION / AWS_DEFAULT_REGION) or, when boto3 is installed, from the AWS
config files and profiles it reads.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import BaseModel, Field, field_validator

from .errors import BadInput

DEFAULT_STORE = "./factory-store"


class S3Settings(BaseModel):
    """How DuckDB and boto3 reach an S3-compatible server."""

    endpoint_url: str | None = Field(None, description="e.g. http://127.0.0.1:8333; None = AWS")
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    url_style: Literal["path", "vhost"] = "path"

    @classmethod
    def from_env(cls) -> S3Settings:
        env = os.environ
        values: dict[str, object] = {
            "endpoint_url": env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"),
            "region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            "access_key_id": env.get("AWS_ACCESS_KEY_ID"),
            "secret_access_key": env.get("AWS_SECRET_ACCESS_KEY"),
            "session_token": env.get("AWS_SESSION_TOKEN"),
        }
        if not values["access_key_id"]:
            values.update(_botocore_credentials())
        if not values["endpoint_url"]:
            values["url_style"] = "vhost"
        return cls(**values)


def _botocore_credentials() -> dict[str, object]:
    """Credentials from ~/.aws files and profiles, when botocore is there to read them."""
    try:
        import botocore.session
    except ImportError:
        return {}
    creds = botocore.session.get_session().get_credentials()
    if creds is None:
        return {}
    frozen = creds.get_frozen_credentials()
    return {
        "access_key_id": frozen.access_key,
        "secret_access_key": frozen.secret_key,
        "session_token": frozen.token,
    }


class LakeConfig(BaseModel):
    """Everything needed to open a lake."""

    store: str = DEFAULT_STORE
    catalog: str | None = None
    s3: S3Settings | None = None
    # Rows per insert kept inside the catalog instead of a Parquet file (DuckLake's data
    # inlining); None keeps DuckLake's default, 0 always writes Parquet.
    data_inlining_row_limit: int | None = Field(None, ge=0)
    # How long to wait for another process that holds a DuckDB catalog file.
    lock_timeout_s: float = Field(60.0, ge=0)
    # Batches of at least this many rows are written to Parquet by pyarrow and added to the
    # catalog (ducklake_add_data_files) instead of INSERTed through DuckDB: 2-3x faster for
    # big text batches. Smaller batches INSERT, where DuckLake can inline them.
    direct_write_min_rows: int = Field(4096, ge=1)
    # Parquet compression for both write paths (zstd; level 3 is DuckDB's and zstd's default).
    zstd_level: int = Field(3, ge=1, le=22)

    @field_validator("store")
    @classmethod
    def _store_form(cls, v: str) -> str:
        if not v:
            raise ValueError("store must be a directory or s3://bucket/prefix")
        if "://" in v and not v.startswith("s3://"):
            raise ValueError(f"store {v!r}: expected a local directory or s3://bucket/prefix")
        if v.startswith("s3://") and not urlparse(v).netloc:
            raise ValueError(f"store {v!r}: expected s3://bucket/prefix (the bucket is missing)")
        return v

    @classmethod
    def resolve(cls, store: str | None = None, catalog: str | None = None, **kw) -> LakeConfig:
        """Apply the --store / FACTORY_STORE / default order; errors name the bad setting."""
        store = store or os.environ.get("FACTORY_STORE") or DEFAULT_STORE
        catalog = catalog or os.environ.get("FACTORY_CATALOG") or None
        try:
            return cls(store=store, catalog=catalog, **kw)
        except ValueError as exc:
            raise BadInput(f"bad lake setting: {exc}") from exc

    # -- derived locations -------------------------------------------------------------

    @property
    def is_s3(self) -> bool:
        return self.store.startswith("s3://")

    @property
    def store_root(self) -> str:
        """The store with no trailing slash: an absolute path or an s3:// URL."""
        if self.is_s3:
            return self.store.rstrip("/")
        return str(Path(self.store).expanduser().resolve())

    @property
    def data_path(self) -> str:
        return self.store_root + "/data/"

    @property
    def artifacts_path(self) -> str:
        return self.store_root + "/artifacts/"

    @property
    def catalog_kind(self) -> Literal["duckdb", "sqlite", "postgres"]:
        c = self.catalog or ""
        if c.startswith("sqlite:"):
            return "sqlite"
        if c.startswith(("postgres:", "postgresql:", "postgresql://", "postgres://")):
            return "postgres"
        return "duckdb"

    @property
    def catalog_target(self) -> str:
        """The catalog as DuckLake's ATTACH wants it (after `ducklake:`)."""
        kind = self.catalog_kind
        if kind == "postgres":
            c = self.catalog or ""
            if c.startswith("postgres:") and not c.startswith("postgres://"):
                return c
            return "postgres:" + c
        path = self.catalog_file
        return f"sqlite:{path}" if kind == "sqlite" else path

    @property
    def catalog_file(self) -> str | None:
        """The local file holding the catalog (None for PostgreSQL)."""
        kind = self.catalog_kind
        if kind == "postgres":
            return None
        if kind == "sqlite":
            return str(Path((self.catalog or "")[len("sqlite:") :]).expanduser().resolve())
        if self.catalog:
            return str(Path(self.catalog).expanduser().resolve())
        if self.is_s3:
            raise BadInput(
                f"the S3 store {self.store} needs a catalog: pass --catalog (a local .ducklake file, "
                "sqlite:PATH or postgresql://...) or set FACTORY_CATALOG"
            )
        return str(Path(self.store_root) / "catalog.ducklake")

    @property
    def postgres_dsn(self) -> str | None:
        """A libpq connection string for psycopg (None unless the catalog is PostgreSQL)."""
        if self.catalog_kind != "postgres":
            return None
        c = self.catalog or ""
        return c[len("postgres:") :] if c.startswith("postgres:") and not c.startswith("postgres://") else c

    def s3_settings(self) -> S3Settings:
        return self.s3 or S3Settings.from_env()

    def describe(self) -> str:
        """Where the lake is, for messages: never shows a password."""
        where = _mask_password(self.catalog or "") if self.catalog_kind == "postgres" else self.catalog_file
        return f"store {self.store_root} (catalog {where})"


def _mask_password(dsn: str) -> str:
    dsn = re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", dsn)
