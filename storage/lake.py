"""The lake: DuckLake (a catalog plus Parquet files, on local disk or S3) behind a small API.

    from storage import Lake
    with Lake.open("./factory-store") as lake:
        lake.commit("problems", rows, batch_key="seed:gsm8k:0", run_id="r1")   # exactly once
        lake.query("SELECT count(*) FROM problems")                         # Arrow table
        lake.save_dataset("gsm8k-sft", "SELECT * FROM samples")             # pinned to a snapshot
        lake.read_dataset("gsm8k-sft", version=1)                           # as it was then
        lake.sql("SELECT ...")                                              # untrusted SQL, confined

Exactly-once commits: each batch is written in one DuckLake transaction together with its row
in the `batches` ledger, under a per-key lock (a PostgreSQL advisory lock for a PostgreSQL
catalog, a byte-range file lock otherwise), so a batch key is committed at most once and a
batch is visible whole or not at all. A writer killed mid-commit leaves Parquet files that no
snapshot references; `maintain()` deletes them. Many small commits make many small files, which
slow every query: `compact()` merges them and expires old snapshots, keeping every snapshot a
saved dataset version pins.

A DuckDB-file catalog admits one process at a time: another writer waits up to
`lock_timeout_s` for it, then gets `LakeBusy`. Use a SQLite or PostgreSQL catalog for several
concurrent writers.

Watching a run (readers of a DuckDB-file catalog, the default): DuckDB holds an exclusive fcntl
lock on the catalog file for as long as a writer has it attached, and a run keeps it attached for
hours. A reader (`Lake.open(..., read_only=True)`, and every `sql()`) therefore never attaches
the file: it copies the file (and its WAL) under a shared fcntl lock, which it can only get while
no process has the file attached, so the copy holds exactly the committed snapshots, and it
attaches the copy read-only. To get that moment it announces itself while it waits: it holds a
shared lock on one byte of `<catalog>.locks` (`_READER_BYTE`). The writer looks for that lock (a
non-blocking lock test) from a watcher thread every `_WATCH_TICK_S`; when a reader waits, the
writer DETACHes the catalog at its next rest (the outermost release of the lake's lock, when no
query or transaction of this process is open: never mid-commit), right away when idle, else
after the call under way. It keeps its DuckDB engine (starting one took 100-250 ms, an ATTACH
50-90 ms, on a busy 2-core machine) and attaches again at its next use, once the announced
readers have their copies (waiting at most `_YIELD_WAIT_S`). Neither side starves: a reader
announces only while it waits and copies in milliseconds, so the writer waits for nothing else;
a writer keeps the file at least `_HOLD_S` after each attach, so readers querying back to back
cost it at most one DETACH and ATTACH per `_HOLD_S`; and a writer committing back to back still
lets a reader in, at the rest after its commit. A reader so answers within about `_HOLD_S` plus
one commit plus its own query; a writer of older code, or one busy in one long call (a
compaction), still makes readers wait, up to `lock_timeout_s`. Within one process (fcntl locks
are the process's, and closing any descriptor of the file drops them all) readers and writers
take turns through `_InProcess` instead of locks: a reader opens the file only while no writer of
the process has it attached, by the same DETACH at rest. This keeps the DuckDB file as the
default catalog (no migration of existing lakes, one file to move); SQLite and PostgreSQL
catalogs need none of it: their readers attach them read-only, next to the writers.

A store may be moved (`mv`) or copied (`cp -r`; an S3 prefix together with a copy of its
catalog): the first open from the new place records the new data path in the catalog, so a copy
neither reads nor writes its original's files (see `Lake._adopt_data_path`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import os
import random
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import schemas
from .config import LakeConfig
from .errors import BadInput, LakeBusy, require
from .extensions import connect as _connect_engine
from .sql import check_confined, confine, parse_select, pin_to_snapshot, run_with_limit, stream

_ALIAS = "lake"
_ROW_GROUP_ROWS = 122_880  # DuckDB's own row group size, so both write paths read alike
_DIRECT_WRITE_BYTES = 1 << 20  # a batch this big is written by pyarrow whatever its row count (see Lake._direct)
# Readers of a DuckDB catalog file and the writer holding it (see "Watching a run" above).
_READER_BYTE = 1 << 22  # byte of <catalog>.locks a waiting reader holds shared; past the key and write locks
_WATCH_TICK_S = 0.05  # how often a writer looks for waiting readers
_HOLD_S = 0.5  # a writer keeps the file at least this long after attaching it
_YIELD_WAIT_S = 1.0  # the longest a writer that let go waits for announced readers before attaching again
_READER_POLL_S = 0.01  # how often a waiting reader tries the file: a writer lets go within a commit


@dataclass(frozen=True)
class CommitResult:
    table: str
    batch_key: str
    rows: int
    committed: bool  # False: the key was already committed, nothing was written


@dataclass(frozen=True)
class Compaction:
    """What `Lake.compact()` did."""

    files_before: int  # data files the current snapshot reads
    files_after: int
    snapshots_expired: int
    snapshots_pinned: int  # kept because a saved dataset version reads them
    files_deleted: int  # merged-away files and files only expired snapshots read, gone from the store


@dataclass(frozen=True)
class DatasetVersion:
    name: str
    version: int
    sql: str
    snapshot_id: int
    row_count: int


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc)
    return "Could not set lock" in text or "Conflicting lock" in text or "database is locked" in text


def _is_init_race(exc: BaseException) -> bool:
    """Another process created the same fresh catalog at the same moment (PostgreSQL)."""
    text = str(exc)
    return "Failed to initialize DuckLake" in text and ("duplicate key value" in text or "already exists" in text)


def _is_conflict(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "conflict" in text or "database is locked" in text or "could not serialize" in text


def _check_user_sql(sql: str) -> None:
    """Gates 1 and 2 of storage/sql.py (one allowed SELECT), before any engine opens the lake."""
    parser = duckdb.connect()
    try:
        check_confined(parse_select(parser, sql))
    finally:
        parser.close()


def _as_arrow(data: Any) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if hasattr(data, "to_arrow"):  # polars DataFrame
        return data.to_arrow()
    if isinstance(data, list):
        if not data:
            return pa.table({})
        if not all(isinstance(r, dict) for r in data):
            raise BadInput("a batch given as a list must be a list of dicts (one per row)")
        # Columns from every row's keys: from_pylist alone takes them from the first row and
        # silently drops a field that only later rows carry.
        columns = dict.fromkeys(k for r in data for k in r)
        return pa.Table.from_pydict({k: [r.get(k) for r in data] for k in columns})
    raise BadInput(f"cannot commit a {type(data).__name__}: expected an Arrow table, polars DataFrame or list of dicts")


class _ConnectionLock:
    """A re-entrant lock whose outermost release first calls `at_rest`: the one moment no
    caller in this process holds the connection or an open transaction on it."""

    def __init__(self, at_rest):
        self._lock = threading.RLock()
        self._depth = 0  # changed only by the owner
        self._at_rest = at_rest

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not self._lock.acquire(blocking, timeout):
            return False
        self._depth += 1
        return True

    def release(self) -> None:
        try:
            if self._depth == 1:
                self._at_rest()
        finally:
            self._depth -= 1
            self._lock.release()

    def __enter__(self) -> _ConnectionLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _watch_readers(ref: weakref.ref, stop: threading.Event) -> None:
    """A writer's watcher thread: let waiting readers of the catalog file in (see the top)."""
    while not stop.wait(_WATCH_TICK_S):
        lake = ref()
        if lake is None:
            return
        lake._let_readers_in()
        del lake  # no strong reference while asleep: a dropped lake ends the thread


class _InProcess:
    """This process's writers and copying readers of one DuckDB catalog file.

    fcntl locks belong to the process, and closing any descriptor of a file drops all of the
    process's locks on it (POSIX). So a reader `Lake` that copied the catalog while a writer `Lake`
    of the same process held it took DuckDB's lock over (a process never conflicts with itself)
    and dropped it when done: another process could then attach a second writer (seen in
    `test_a_reader_in_the_writers_process_leaves_the_writers_lock_alone`). In one process the
    file is therefore shared like this instead: a reader opens it only while no writer of the
    process has it attached (it waits, counted in `waiting`, which the writers' watchers treat
    like another process's announcement), and a writer attaches only while no reader of the
    process holds a descriptor of it (a copy takes milliseconds)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.writers = 0  # Lakes of this process with the file attached for writing
        self.copying = 0  # readers of this process with a descriptor of the file open
        self.waiting = 0  # readers of this process waiting for the writers to let go


_IN_PROCESS: dict[str, _InProcess] = {}
_IN_PROCESS_GUARD = threading.Lock()


def _in_process(catalog_file: str) -> _InProcess:
    with _IN_PROCESS_GUARD:
        return _IN_PROCESS.setdefault(os.path.realpath(catalog_file), _InProcess())


class Lake:
    """One open lake. Thread-safe: calls are serialised on one DuckDB connection."""

    def __init__(self, config: LakeConfig, *, read_only: bool = False):
        self.config = config
        self.read_only = read_only
        self._con: duckdb.DuckDBPyConnection | None = None
        self._lock = _ConnectionLock(self._at_rest)
        self._pg = None  # psycopg connection for advisory locks (PostgreSQL catalogs only)
        self._fs: pafs.FileSystem | None = None  # for batches written by pyarrow
        # A DuckDB catalog file, written: the engine is kept while the catalog is DETACHed for
        # readers; see the top of this module.
        self._detached = False
        self._attached_at = 0.0
        self._yield_asked = False
        self._watcher: threading.Event | None = None  # set to stop the watcher thread
        self._locks_fd: int | None = None  # <catalog>.locks, open as long as the lake (closing drops our locks)
        self._fd_guard = threading.Lock()  # the watcher thread uses the descriptor too
        self._copy: tempfile.TemporaryDirectory | None = None  # a reader's catalog copy
        self._copy_file: str | None = None
        self._counted = False  # counted among this process's writers of the catalog file (_InProcess)

    # -- opening and closing -----------------------------------------------------------

    @classmethod
    def open(
        cls, store: str | None = None, catalog: str | None = None, *, create: bool = True, read_only: bool = False,
        **settings: Any,
    ) -> Lake:
        """Open the lake at `store` (see `LakeConfig` for the forms), creating it unless
        `create=False`, in which case a missing lake is a `BadInput`. The catalog is attached
        lazily, at the first call that needs it.

        `read_only=True` (implies `create=False`): for commands that only read. It reads the
        latest committed snapshot as of its first query, and every later query reads that
        same snapshot; it never waits for a run writing to a DuckDB catalog file for longer
        than the run takes to let go (see the top of this module). It cannot write."""
        lake = cls(LakeConfig.resolve(store, catalog, **settings), read_only=read_only)
        cfg = lake.config
        if (not create or read_only) and cfg.catalog_file and not Path(cfg.catalog_file).exists():
            raise BadInput(f"no lake at {cfg.describe()}: the catalog file does not exist (ingest something first, or check --store/--catalog)")
        return lake

    def __enter__(self) -> Lake:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._watcher is not None:
                self._watcher.set()
                self._watcher = None
            if self._con is not None:
                self._con.close()
                self._con = None
                self._detached = False
            self._uncount()
            if self._pg is not None:
                self._pg.close()
                self._pg = None
            if self._copy is not None:
                self._copy.cleanup()
                self._copy = self._copy_file = None
            with self._fd_guard:
                if self._locks_fd is not None:
                    os.close(self._locks_fd)
                    self._locks_fd = None

    def connection(self) -> duckdb.DuckDBPyConnection:
        """The lake's DuckDB connection (attached as `lake` and in use), opened on first need."""
        with self._lock:
            if self._con is not None and self._detached:
                self._attach_again()
            if self._con is None:
                if self.read_only:
                    self._con = self._attach_reader()
                else:
                    self._con = self._attach(read_only=False)
                    self._ensure_schema(self._con)
                    self._watch()
                self._attached_at = time.monotonic()
            return self._con

    # -- readers of a DuckDB catalog file, and the writer that lets them in ---------------

    def _attach_reader(self) -> duckdb.DuckDBPyConnection:
        """A read-only connection for a `read_only` lake: on a copy of a DuckDB catalog file,
        on the catalog itself otherwise. A lake whose schema is older than this code is
        attached for writing instead, so that it is migrated first (it waits for a writer)."""
        cfg = self.config
        for migrated in (False, True):
            if cfg.catalog_kind == "duckdb":
                self._copy = tempfile.TemporaryDirectory(prefix="factory-read-")
                self._copy_file = self._copy_catalog(self._copy.name)
            con = self._attach(read_only=True, catalog_copy=self._copy_file)
            version = None
            if set(schemas.ALL_TABLES) <= self._table_names(con):
                row = con.execute(f"SELECT value FROM {_ALIAS}.meta WHERE key = 'schema_version'").fetchone()
                version = int(row[0]) if row else None
            if version is not None and version > schemas.SCHEMA_VERSION:
                con.close()
                raise BadInput(
                    f"the lake at {cfg.describe()} has schema version {version}, newer than this "
                    f"code's {schemas.SCHEMA_VERSION}: upgrade reasoning-factory"
                )
            if migrated or (version is not None and version == schemas.SCHEMA_VERSION):
                return con
            con.close()
            if self._copy is not None:
                self._copy.cleanup()
                self._copy = self._copy_file = None
            writer = self._attach(read_only=False)
            try:
                self._ensure_schema(writer)
            finally:
                writer.close()
                self._uncount()
        raise AssertionError("unreachable")

    def _lock_file(self) -> int | None:
        """This lake's descriptor of `<catalog>.locks` (None when it cannot be opened: a
        reader without write access to the store), kept open until `close()`."""
        if self._locks_fd is None:
            path = f"{self.config.catalog_file}.locks"
            for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):
                with contextlib.suppress(OSError):
                    self._locks_fd = os.open(path, flags, 0o644)
                    break
        return self._locks_fd

    def _readers_waiting(self) -> bool:
        """Whether a reader announced that it waits for the catalog file: in this process (see
        `_InProcess`), or in another (a non-blocking test of an exclusive lock on
        `_READER_BYTE`, released at once)."""
        if self.config.catalog_file and _in_process(self.config.catalog_file).waiting:
            return True
        with self._fd_guard:
            fd = self._locks_fd
            if fd is None:
                return False
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _READER_BYTE)
            except OSError as exc:
                return exc.errno in (errno.EACCES, errno.EAGAIN)  # else (say a read-only descriptor): cannot tell
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, _READER_BYTE)
            return False

    @contextlib.contextmanager
    def _announced(self) -> Iterator[None]:
        """Hold a shared lock on `_READER_BYTE` (the sign a writer yields to) while inside."""
        fd = self._lock_file()
        if fd is None:
            yield
            return
        fcntl.lockf(fd, fcntl.LOCK_SH, 1, _READER_BYTE)  # waits only on a writer's lock test (microseconds)
        try:
            yield
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, _READER_BYTE)

    def _watch(self) -> None:
        """Start the watcher thread of a writer holding a DuckDB catalog file (once per lake)."""
        if self.config.catalog_kind != "duckdb" or self._watcher is not None or self._lock_file() is None:
            return
        self._watcher = threading.Event()
        threading.Thread(
            target=_watch_readers, args=(weakref.ref(self), self._watcher), name="lake-readers", daemon=True
        ).start()

    def _let_readers_in(self) -> None:
        """The watcher's tick: when a reader waits, ask for a DETACH at the next rest, and
        make that rest now when the connection is idle."""
        if self._con is None or self._detached or time.monotonic() - self._attached_at < _HOLD_S:
            return
        if not self._readers_waiting():
            return
        self._yield_asked = True
        if self._lock.acquire(blocking=False):
            self._lock.release()  # the outermost release: _at_rest lets go

    def _at_rest(self) -> None:
        """Called at the outermost release of the lake's lock: DETACH the catalog file when a
        reader asked for it, keeping the engine for `_attach_again`."""
        if not self._yield_asked:
            return
        self._yield_asked = False
        self._detach()

    def _detach(self) -> None:
        """Let go of a DuckDB catalog file this lake holds for writing (the engine stays)."""
        if self._con is None or self._detached or self.read_only or self.config.catalog_kind != "duckdb":
            return
        try:
            self._con.execute("USE memory")
            self._con.execute(f"DETACH {_ALIAS}")
            self._detached = True
        except duckdb.Error:
            self._con.close()  # an engine that cannot detach lets go of the file by closing
            self._con = None
        self._uncount()

    def _count(self) -> None:
        """Count this lake among the process's writers of its catalog file, once no reader of
        the process has a descriptor of it open (see `_InProcess`)."""
        if self._counted or self.config.catalog_kind != "duckdb" or not self.config.catalog_file:
            return
        local = _in_process(self.config.catalog_file)
        with local.cond:
            if not local.cond.wait_for(lambda: local.copying == 0, timeout=self.config.lock_timeout_s):
                raise LakeBusy(f"the catalog {self.config.catalog_file} is being copied by a reader in this process "
                               f"(waited {self.config.lock_timeout_s:g} s); retry later")
            local.writers += 1
            self._counted = True

    def _uncount(self) -> None:
        if not self._counted:
            return
        local = _in_process(self.config.catalog_file)
        with local.cond:
            local.writers -= 1
            self._counted = False
            local.cond.notify_all()

    def _attach_again(self) -> None:
        """ATTACH the catalog file again on the kept engine, once the readers that announced
        themselves have their copies (or after `_YIELD_WAIT_S`: a stream of readers cannot
        keep the writer out)."""
        deadline = time.monotonic() + _YIELD_WAIT_S
        while self._readers_waiting() and time.monotonic() < deadline:
            time.sleep(_READER_POLL_S / 2)
        self._attach(read_only=False, engine=self._con)
        self._detached = False
        self._attached_at = time.monotonic()

    def _engine(self) -> duckdb.DuckDBPyConnection:
        cfg = self.config
        names = ["ducklake"]
        if cfg.is_s3:
            names.append("httpfs")
        if cfg.catalog_kind != "duckdb":
            names.append(cfg.catalog_kind)
        con = _connect_engine(*names)
        if cfg.is_s3:
            self._create_s3_secret(con)
        return con

    def _create_s3_secret(self, con: duckdb.DuckDBPyConnection) -> None:
        s3 = self.config.s3_settings()
        opts: dict[str, str] = {"REGION": s3.region, "URL_STYLE": s3.url_style}
        if s3.endpoint_url:
            scheme, _, host = s3.endpoint_url.partition("://")
            opts["ENDPOINT"] = host.rstrip("/") if host else scheme
            opts["USE_SSL"] = "true" if scheme == "https" else "false"
        if s3.access_key_id:
            opts["KEY_ID"] = s3.access_key_id
            opts["SECRET"] = s3.secret_access_key or ""
        if s3.session_token:
            opts["SESSION_TOKEN"] = s3.session_token
        body = ", ".join(
            f"{k} {v}" if k == "USE_SSL" else f"{k} '{v.replace(chr(39), chr(39) * 2)}'" for k, v in opts.items()
        )
        con.execute(f"CREATE OR REPLACE SECRET factory_s3 (TYPE s3, {body})")

    def _attach(
        self, read_only: bool, catalog_copy: str | None = None, engine: duckdb.DuckDBPyConnection | None = None
    ) -> duckdb.DuckDBPyConnection:
        """The lake attached on a fresh engine; `catalog_copy`: a copy of a DuckDB catalog file
        to attach instead of the file itself (read-only); `engine`: an engine to attach on
        again (the catalog was detached for readers; its data path was adopted before)."""
        cfg = self.config
        try:
            if cfg.catalog_file and not read_only:
                Path(cfg.catalog_file).parent.mkdir(parents=True, exist_ok=True)
            if not cfg.is_s3 and not read_only:
                Path(cfg.data_path).mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # e.g. --store names a file: the user's input, not a failed job
            raise BadInput(f"cannot create the lake at {cfg.describe()}: {exc.filename}: {exc.strerror}; "
                           "expected a folder (or a path that does not exist yet)") from None
        # OVERRIDE_DATA_PATH: DuckLake refuses a DATA_PATH other than the one its catalog
        # recorded; with it, _adopt_data_path decides whether the store was moved or copied.
        options = [f"DATA_PATH '{cfg.data_path}'", "OVERRIDE_DATA_PATH true"]
        if read_only:
            options.append("READ_ONLY")
        if cfg.catalog_kind == "sqlite":
            # WAL lets readers and the writer proceed together; the busy timeout makes a
            # writer wait for the lock instead of failing at once (duckdb/ducklake#128).
            options += ["META_JOURNAL_MODE 'WAL'", "META_BUSY_TIMEOUT 10000"]
        if cfg.data_inlining_row_limit is not None:
            options.append(f"DATA_INLINING_ROW_LIMIT {int(cfg.data_inlining_row_limit)}")
        if read_only and cfg.catalog_file and not Path(cfg.catalog_file).exists():
            raise BadInput(f"no lake at {cfg.describe()}: the catalog does not exist yet")
        target = (catalog_copy or cfg.catalog_target).replace("'", "''")
        statement = f"ATTACH 'ducklake:{target}' AS {_ALIAS} ({', '.join(options)})"
        if not read_only:
            self._count()
        deadline = time.monotonic() + cfg.lock_timeout_s
        delay = 0.05
        while True:
            con = engine or self._engine()
            try:
                con.execute(statement)
                con.execute(f"USE {_ALIAS}")
                if engine is None and self._adopt_data_path(con, read_only):
                    con.close()  # attach again, so DuckLake reads the rewritten paths
                    continue
                return con
            except BaseException as exc:
                if engine is None:
                    con.close()
                retry = isinstance(exc, duckdb.Error) and (_is_lock_error(exc) or _is_init_race(exc)) and time.monotonic() < deadline
                if not retry:
                    self._uncount()  # this lake will not hold the file
                if not isinstance(exc, duckdb.Error):
                    raise
                if retry:
                    time.sleep(delay * (0.5 + random.random()))
                    # At most 0.25 s: the holder may be a reader taking its copy (milliseconds).
                    delay = min(delay * 2, 0.25)
                    continue
                if _is_lock_error(exc):
                    raise LakeBusy(
                        f"the catalog {cfg.catalog_file} is held by another process (waited "
                        f"{cfg.lock_timeout_s:g} s); retry later, or use a sqlite: or postgresql:// "
                        "catalog for several writers"
                    ) from exc
                raise BadInput(f"cannot open the lake at {cfg.describe()}: {str(exc).splitlines()[0]}") from exc

    def _adopt_data_path(self, con: duckdb.DuckDBPyConnection, read_only: bool) -> bool:
        """Follow a store that was moved (`mv`) or copied (`cp -r`, an S3 prefix copy together
        with its catalog): return True when the catalog was rewritten and must be attached again.

        DuckLake records the data path in its catalog and every path below it (schema, table,
        data file, ducklake_add_data_files' files under the table folder included) relative to
        it, so the catalog must only learn the new data path. A writer records it for good; a
        reader (a read-only attach, often of a catalog copy) uses it for its session only. The
        recorded path is replaced rather than overridden on every open so that a copy never
        reads or writes the original's files. A catalog made by another DuckLake may hold
        absolute paths under the old data path: a writer rewrites them too, a reader refuses.
        A catalog whose files are not under the new data path is refused: that is a catalog
        opened with the wrong store, and adopting it would hide every row."""
        meta = f"__ducklake_metadata_{_ALIAS}"
        row = con.execute(f"SELECT value FROM {meta}.ducklake_metadata WHERE key = 'data_path'").fetchone()
        old, new = (row[0] if row else "") or "", self.config.data_path
        if not old or old.rstrip("/") == new.rstrip("/"):
            return False
        old = old.rstrip("/") + "/"
        where = f"the lake at {self.config.describe()}, whose catalog records the data path {old}"
        fs, _ = self._data_fs()
        for table in sorted(self._table_names(con)):
            listed = con.execute(f"SELECT data_file FROM ducklake_list_files('{_ALIAS}', ?) LIMIT 1", [table]).fetchone()
            if not listed:
                continue
            path = new + listed[0][len(old):] if listed[0].startswith(old) else listed[0]
            if fs.get_file_info(self._fs_path(path)).type == pafs.FileType.NotFound:
                raise BadInput(f"cannot open {where}: its file {path} is not in the store; expected the store "
                               "the catalog was made with, or a whole copy of it (catalog and data folder together)")
            break
        absolute = [(t, f"starts_with(path, '{old.replace(chr(39), chr(39) * 2)}') AND NOT path_is_relative")
                    for t in ("ducklake_schema", "ducklake_table", "ducklake_data_file", "ducklake_delete_file")]
        stale = sum(con.execute(f"SELECT count(*) FROM {meta}.{t} WHERE {cond}").fetchone()[0] for t, cond in absolute)
        if read_only:
            if stale:
                raise BadInput(f"cannot read {where}: {stale} of its paths are absolute under that old path; "
                               "open it once for writing (for example `factory maintain`) to rewrite them")
            return False
        con.execute("BEGIN")
        try:
            con.execute(f"UPDATE {meta}.ducklake_metadata SET value = ? WHERE key = 'data_path'", [new])
            for t, cond in absolute:
                con.execute(f"UPDATE {meta}.{t} SET path = ? || substr(path, ?) WHERE {cond}", [new, len(old) + 1])
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise
        return True

    def _ensure_schema(self, con: duckdb.DuckDBPyConnection) -> None:
        # One writer at a time sets a lake up, so racing first writers neither conflict
        # forever nor record the schema version twice.
        with self._key_lock("lake:schema"):
            self._retry(lambda: self._set_up(con), "setting up the lake")
        version = con.execute(f"SELECT value FROM {_ALIAS}.meta WHERE key = 'schema_version'").fetchone()[0]
        if int(version) > schemas.SCHEMA_VERSION:
            raise BadInput(
                f"the lake at {self.config.describe()} has schema version {version}, newer than this "
                f"code's {schemas.SCHEMA_VERSION}: upgrade reasoning-factory"
            )

    def _set_up(self, con: duckdb.DuckDBPyConnection) -> None:
        """Create missing tables, set the Parquet options and record the schema version, in
        one transaction (looked up on every try: another writer may have done it meanwhile)."""
        existing = self._table_names(con)
        missing = [n for n in schemas.ALL_TABLES if n not in existing]
        options = dict(con.execute(f"SELECT option_name, value FROM ducklake_options('{_ALIAS}')").fetchall())
        # The codec first: DuckLake refuses a level for any codec but zstd.
        wanted = [("parquet_compression", "zstd"), ("parquet_compression_level", str(self.config.zstd_level))]
        stale = [(k, v) for k, v in wanted if options.get(k) != v]
        row = "meta" in existing and con.execute(
            f"SELECT value FROM {_ALIAS}.meta WHERE key = 'schema_version'"
        ).fetchone()
        has_version = bool(row)
        # An older lake is migrated by creating the tables it lacks (every change so far adds
        # tables) and recording the new version.
        older = has_version and int(row[0]) < schemas.SCHEMA_VERSION
        if not missing and not stale and has_version and not older:
            return
        con.execute("BEGIN")
        try:
            for name in missing:
                con.execute(schemas.create_table_sql(name, schemas.ALL_TABLES[name], _ALIAS))
            for key, value in stale:
                con.execute(f"CALL {_ALIAS}.set_option(?, ?)", [key, value])
            if not has_version:
                con.execute(f"INSERT INTO {_ALIAS}.meta VALUES ('schema_version', ?)", [str(schemas.SCHEMA_VERSION)])
            elif older:
                con.execute(
                    f"UPDATE {_ALIAS}.meta SET value = ? WHERE key = 'schema_version'", [str(schemas.SCHEMA_VERSION)]
                )
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise

    @staticmethod
    def _table_names(con: duckdb.DuckDBPyConnection) -> set[str]:
        rows = con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = ? AND schema_name = 'main'", [_ALIAS]
        ).fetchall()
        return {r[0] for r in rows}

    def _retry(self, fn, what: str):
        """Retry a catalog write that conflicted with another writer, with jittered backoff,
        for up to `lock_timeout_s`; then `LakeBusy`."""
        deadline = time.monotonic() + self.config.lock_timeout_s
        delay = 0.02
        attempts = 0
        while True:
            attempts += 1
            try:
                return fn()
            except duckdb.Error as exc:
                if not _is_conflict(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise LakeBusy(
                        f"{what} conflicted with other writers {attempts} times in "
                        f"{self.config.lock_timeout_s:g} s; retry later"
                    ) from exc
                time.sleep(delay * random.random())  # full jitter
                delay = min(delay * 2, 1.0)

    # -- commits -----------------------------------------------------------------------

    def commit(
        self,
        table: str,
        data: Any,
        *,
        batch_key: str,
        run_id: str | None = None,
        also: dict[str, Any] | None = None,
    ) -> CommitResult:
        """Append a batch to `table` exactly once under `batch_key`.

        `data` is an Arrow table, a polars DataFrame or a list of dicts; it is conformed to the
        table's schema (`created_at` and `run_id` are filled when absent). Returns with
        `committed=False` and writes nothing when the key was committed before. `also`: rows of
        other tables ({table: data}) that belong to this batch, written in the same transaction
        (a sample and its teacher top-k): all of them land, or none. `rows` counts `table`'s.
        """
        self._require_writer("commit")
        if not batch_key:
            raise BadInput("batch_key must be a non-empty string")
        defaults: dict[str, object] = {"created_at": _now()}
        if run_id is not None:
            defaults["run_id"] = run_id
        parts = []
        for name, rows in {table: data, **(also or {})}.items():
            if name not in schemas.TABLES:
                raise BadInput(f"unknown table {name!r}; expected one of {sorted(schemas.TABLES)}")
            parts.append((name, schemas.conform(name, _as_arrow(rows), defaults)))
        batch = parts[0][1]
        run = run_id or (batch.column("run_id")[0].as_py() if batch.num_rows else "")
        with self._lock:
            con = self.connection()  # first, so the store and its lock file exist
            with self._key_lock(batch_key):
                if self._committed(con, batch_key):
                    return CommitResult(table, batch_key, 0, committed=False)
                # Big batches: pyarrow writes the file once, outside the retried transaction.
                written = [(n, b, self._write_parquet(n, b) if self._direct(b) else None) for n, b in parts]
                with self._catalog_write_lock():
                    return self._retry(
                        lambda: self._commit_once(con, written, batch_key, run),
                        f"committing {batch_key!r}",
                    )

    def _commit_once(self, con, parts: list[tuple[str, pa.Table, str | None]], batch_key: str, run_id: str) -> CommitResult:
        table, batch = parts[0][0], parts[0][1]
        con.execute("BEGIN")
        try:
            seen = con.execute(f"SELECT 1 FROM {_ALIAS}.batches WHERE batch_key = ? LIMIT 1", [batch_key]).fetchone()
            if seen:
                con.execute("ROLLBACK")
                return CommitResult(table, batch_key, 0, committed=False)
            for name, rows, written in parts:
                if written is not None:
                    con.execute(f"CALL ducklake_add_data_files('{_ALIAS}', ?, ?)", [name, written])
                elif rows.num_rows:
                    con.register("_factory_batch", rows)
                    try:
                        con.execute(f'INSERT INTO {_ALIAS}."{name}" BY NAME SELECT * FROM _factory_batch')
                    finally:
                        con.unregister("_factory_batch")
            con.execute(
                f"INSERT INTO {_ALIAS}.batches VALUES (?, ?, ?, ?, ?)",
                [batch_key, table, run_id, batch.num_rows, _now()],
            )
            con.execute("COMMIT")
        except BaseException:
            # A file written for this batch stays: a failed COMMIT to a remote catalog may still
            # have landed, so only maintain(), which sees what is referenced, may delete it.
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise
        return CommitResult(table, batch_key, batch.num_rows, committed=True)

    def _direct(self, batch: pa.Table) -> bool:
        """Whether pyarrow writes the batch's file (else DuckDB inserts it, inlining small ones in
        the catalog). Many rows, or many bytes: inserting 4 rows of 16 x 49,152 top-k log-probs
        took 178 s through DuckDB, 1.6 s as a file."""
        return batch.num_rows >= self.config.direct_write_min_rows or batch.nbytes >= _DIRECT_WRITE_BYTES

    def _write_parquet(self, table: str, batch: pa.Table) -> str:
        """Write a batch as one Parquet file in the table's folder; return its full path.

        Until the transaction that adds it commits, no snapshot references the file: a writer
        killed in between leaves an orphan for `maintain()`, never a partial batch."""
        url = f"{self.config.data_path}main/{table}/ducklake-{uuid.uuid4()}.parquet"
        fs, _ = self._data_fs()
        path = self._fs_path(url)
        if not self.config.is_s3:
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        pq.write_table(
            batch,
            path,
            filesystem=fs,
            compression="zstd",
            compression_level=self.config.zstd_level,
            row_group_size=_ROW_GROUP_ROWS,
        )
        return url

    def _data_fs(self) -> tuple[pafs.FileSystem, str]:
        """The pyarrow filesystem of the data path (local or S3, with the lake's credentials)."""
        if self._fs is None:
            if self.config.is_s3:
                s3 = self.config.s3_settings()
                scheme, _, host = (s3.endpoint_url or "").partition("://")
                self._fs = pafs.S3FileSystem(
                    access_key=s3.access_key_id,
                    secret_key=s3.secret_access_key,
                    session_token=s3.session_token,
                    region=s3.region,
                    endpoint_override=host or None,
                    scheme=scheme or "https",
                    force_virtual_addressing=s3.url_style == "vhost" and bool(s3.endpoint_url),
                )
            else:
                self._fs = pafs.LocalFileSystem()
        return self._fs, self.config.data_path

    def _fs_path(self, url: str) -> str:
        return url[len("s3://") :] if url.startswith("s3://") else url

    def is_committed(self, batch_key: str) -> bool:
        with self._lock:
            return self._committed(self.connection(), batch_key)

    @staticmethod
    def _committed(con, batch_key: str) -> bool:
        return con.execute(f"SELECT 1 FROM {_ALIAS}.batches WHERE batch_key = ? LIMIT 1", [batch_key]).fetchone() is not None

    @contextlib.contextmanager
    def _key_lock(self, batch_key: str) -> Iterator[None]:
        """Serialise commits of one batch key across processes (not only threads)."""
        digest = int.from_bytes(hashlib.blake2b(batch_key.encode(), digest_size=8).digest(), "big", signed=True)
        if self.config.catalog_kind == "postgres":
            pg = self._postgres()
            pg.execute("SELECT pg_advisory_lock(%s)", [digest])
            try:
                yield
            finally:
                pg.execute("SELECT pg_advisory_unlock(%s)", [digest])
            return
        with self._byte_lock(digest % (1 << 20)):
            yield

    @contextlib.contextmanager
    def _catalog_write_lock(self) -> Iterator[None]:
        """SQLite catalogs: one committing process at a time. SQLite cannot upgrade a reader to
        a writer while another writer waits, and answers 'database is locked' at once then
        (duckdb/ducklake#1309); queueing here turns that into a short wait."""
        if self.config.catalog_kind != "sqlite":
            yield
            return
        with self._byte_lock(1 << 21):  # past the per-key byte range
            yield

    @contextlib.contextmanager
    def _byte_lock(self, offset: int) -> Iterator[None]:
        """An exclusive lock on one byte of `<catalog>.locks`, held across processes."""
        fd = os.open(f"{self.config.catalog_file}.locks", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX, 1, offset)
            try:
                yield
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset)
        finally:
            os.close(fd)

    def _postgres(self):
        if self._pg is None:
            psycopg = require("psycopg", "pip install 'reasoning-factory[postgres]'")
            self._pg = psycopg.connect(self.config.postgres_dsn, autocommit=True)
        return self._pg

    # -- reading -----------------------------------------------------------------------

    def query(self, sql: str, params: Iterable[Any] | None = None, *, tables: dict[str, pa.Table] | None = None) -> pa.Table:
        """Trusted SQL (our own code) on the lake; returns an Arrow table. Users' SQL goes to `sql()`.

        `tables` are Arrow tables the SQL may name, registered for this query only (e.g. the
        ids a stage works on: a join instead of a long IN list)."""
        with self._lock:
            con = self.connection()
            for name, data in (tables or {}).items():
                con.register(name, data)
            try:
                return con.execute(sql, list(params) if params is not None else None).to_arrow_table()
            finally:
                for name in tables or {}:
                    con.unregister(name)

    def query_df(self, sql: str, params: Iterable[Any] | None = None):
        import polars as pl

        return pl.from_arrow(self.query(sql, params))

    def existing(self, table: str, column: str, values: Iterable[str]) -> set[str]:
        """Which of `values` already occur in `table.column` (e.g. request keys already paid for)."""
        if table not in schemas.ALL_TABLES or schemas.ALL_TABLES[table].get_field_index(column) < 0:
            raise BadInput(f"no column {column!r} in table {table!r}")
        wanted = pa.table({"v": pa.array(list(values), pa.string())})
        if not wanted.num_rows:
            return set()
        with self._lock:
            con = self.connection()
            con.register("_factory_wanted", wanted)
            try:
                rows = con.execute(
                    f'SELECT DISTINCT t."{column}" FROM {_ALIAS}."{table}" t JOIN _factory_wanted w ON t."{column}" = w.v'
                ).fetchall()
            finally:
                con.unregister("_factory_wanted")
        return {r[0] for r in rows}

    def snapshot_id(self) -> int:
        with self._lock:
            return int(self.connection().execute(f"SELECT id FROM {_ALIAS}.current_snapshot()").fetchone()[0])

    def tables(self) -> list[dict[str, Any]]:
        """Each user-facing table with its row count and the last snapshot that changed it."""
        with self._lock:
            con = self.connection()
            out = []
            for name in schemas.TABLES:
                rows = con.execute(f'SELECT count(*) FROM {_ALIAS}."{name}"').fetchone()[0]
                batches = con.execute(
                    f"SELECT count(*) FROM {_ALIAS}.batches WHERE table_name = ?", [name]
                ).fetchone()[0]
                out.append({"table": name, "rows": int(rows), "batches": int(batches)})
            return out

    # -- datasets ----------------------------------------------------------------------

    def save_dataset(
        self,
        name: str,
        sql: str,
        *,
        recipe_hash: str | None = None,
        description: str | None = None,
        run_id: str = "",
        timeout_s: float | None = 60.0,
        memory_limit: str = "2GB",
    ) -> DatasetVersion:
        """Save `sql` (one confined SELECT over the lake) as the next version of dataset `name`,
        pinned to the current lake snapshot.

        The SELECT is checked and counted on the confined read-only engine (storage/sql.py),
        within `timeout_s` and `memory_limit`, holding no lock; only then is its row written,
        by our own code, through the writer. User SQL never runs on the writer connection."""
        self._require_writer("save_dataset")
        if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise BadInput(f"dataset name {name!r}: expected letters, digits, '-', '_' or '.'")
        _check_user_sql(sql)
        with self._lock:
            self.connection()  # a lake opened to be created exists before the read engine looks
        with self._confined(memory_limit) as con:
            snapshot = int(con.execute(f"SELECT id FROM {_ALIAS}.current_snapshot()").fetchone()[0])
            pinned = pin_to_snapshot(con, sql, snapshot, self._table_names(con))
            try:
                counted = run_with_limit(con, f"SELECT count(*) AS n FROM ({pinned})", timeout_s, memory_limit)
            except BadInput as exc:
                raise BadInput(f"dataset {name!r}: {str(exc).replace('query failed', 'the SELECT fails', 1)}") from exc
            rows = int(counted.column(0)[0].as_py())
        with self._lock:
            con = self.connection()
            # Under the name's lock, so two writers cannot both take the next version number.
            with self._key_lock(f"dataset:{name}"):
                last = con.execute(f"SELECT max(version) FROM {_ALIAS}.datasets WHERE name = ?", [name]).fetchone()[0]
                version = int(last or 0) + 1
                row = {
                    "name": name,
                    "version": version,
                    "sql": sql,
                    "snapshot_id": snapshot,
                    "row_count": rows,
                    "recipe_hash": recipe_hash,
                    "description": description,
                    "run_id": run_id,
                }
                self.commit("datasets", [row], batch_key=f"dataset:{name}:v{version}", run_id=run_id)
        return DatasetVersion(name, version, sql, snapshot, rows)

    def dataset(self, name: str, version: int | None = None) -> DatasetVersion:
        """The saved definition of a dataset version (the newest when `version` is None)."""
        sql = "SELECT name, version, sql, snapshot_id, row_count FROM datasets WHERE name = ?"
        params: list[Any] = [name]
        if version is not None:
            sql += " AND version = ?"
            params.append(int(version))
        rows = self.query(sql + " ORDER BY version DESC LIMIT 1", params).to_pylist()
        if not rows:
            known = self.query("SELECT DISTINCT name FROM datasets ORDER BY 1").column("name").to_pylist()
            what = f"dataset {name!r}" + (f" version {version}" if version is not None else "")
            raise BadInput(f"{what} does not exist; datasets: {known or 'none yet'}")
        return DatasetVersion(**rows[0])

    def dataset_reader(
        self, name: str, version: int | None = None, batch_size: int = 10_000, *, memory_limit: str = "2GB"
    ) -> pa.RecordBatchReader:
        """Stream a dataset version as Arrow batches, exactly as it was when saved.

        The saved SELECT is user SQL: it is checked again and runs on the confined read-only
        engine, with no time limit (a long export or training read is normal)."""
        ds = self.dataset(name, version)
        _check_user_sql(ds.sql)
        scope = contextlib.ExitStack()
        try:
            con = scope.enter_context(self._confined(memory_limit))
            pinned = pin_to_snapshot(con, ds.sql, ds.snapshot_id, self._table_names(con))
            reader = stream(con, pinned, None, memory_limit, batch_size)
        except BaseException:
            scope.close()
            raise

        def batches() -> Iterator[pa.RecordBatch]:
            with scope:  # the engine and its catalog copy go when the reader is done or dropped
                yield from reader

        return pa.RecordBatchReader.from_batches(reader.schema, batches())

    def read_dataset(self, name: str, version: int | None = None) -> pa.Table:
        return self.dataset_reader(name, version).read_all()

    def list_datasets(self) -> pa.Table:
        return self.query(
            "SELECT name, version, row_count, snapshot_id, created_at, description FROM datasets ORDER BY name, version"
        )

    # -- untrusted SQL -----------------------------------------------------------------

    def sql(self, sql: str, *, timeout_s: float = 60.0, memory_limit: str = "2GB") -> pa.Table:
        """Run a user's SELECT read-only and confined to the lake (see storage/sql.py)."""
        _check_user_sql(sql)
        with self._confined(memory_limit) as con:
            return run_with_limit(con, sql, timeout_s, memory_limit)

    @contextlib.contextmanager
    def _confined(self, memory_limit: str) -> Iterator[duckdb.DuckDBPyConnection]:
        """A fresh engine with the lake attached READ_ONLY and locked down (storage/sql.py).

        A DuckDB catalog file is copied first and the copy attached: a read-only attach of the
        file itself would hold a lock that every writer (this process's included) waits on for
        as long as the query runs. The copy is taken under a shared lock, so no writer is
        half-way through a commit, and deleted afterwards."""
        cfg = self.config
        with contextlib.ExitStack() as scope:
            catalog = None
            with self._lock:
                if cfg.catalog_kind == "duckdb" and self._copy_file is not None:
                    catalog = self._copy_file  # a reader's own copy: the snapshot its other queries read
                elif cfg.catalog_kind == "duckdb":
                    folder = scope.enter_context(tempfile.TemporaryDirectory(prefix="factory-sql-"))
                    # Our own writer first: it holds the file, and closing any descriptor of a
                    # file drops this process's locks on it (POSIX).
                    self._detach()
                    catalog = self._copy_catalog(folder)
                con = self._attach(read_only=True, catalog_copy=catalog)
            scope.callback(con.close)
            files = [catalog, catalog + ".wal"] if catalog else []
            if cfg.catalog_kind == "sqlite" and cfg.catalog_file:
                files = [cfg.catalog_file, cfg.catalog_file + "-wal", cfg.catalog_file + "-shm"]
            confine(con, [cfg.data_path], files, memory_limit)
            yield con

    def _copy_catalog(self, folder: str) -> str:
        """Copy the DuckDB catalog file (and its WAL) into `folder` under a shared lock,
        announced to the writer holding the file (see the top of this module); wait up to
        `lock_timeout_s` for it, then `LakeBusy`."""
        source = self.config.catalog_file
        if not Path(source).exists():
            raise BadInput(f"no lake at {self.config.describe()}: the catalog does not exist yet")
        target = str(Path(folder) / Path(source).name)
        deadline = time.monotonic() + self.config.lock_timeout_s
        local = _in_process(source)
        with local.cond:
            local.waiting += 1
            try:
                free = local.cond.wait_for(lambda: local.writers == 0, timeout=max(0.0, deadline - time.monotonic()))
            finally:
                local.waiting -= 1
            if not free:
                raise LakeBusy(f"the catalog {source} is held by a writer in this process (waited "
                               f"{self.config.lock_timeout_s:g} s); read through that writer, or retry later")
            local.copying += 1
        try:
            return self._copy_locked(source, target, deadline)
        finally:
            with local.cond:
                local.copying -= 1
                local.cond.notify_all()

    def _copy_locked(self, source: str, target: str, deadline: float) -> str:
        """The copy itself, under a shared fcntl lock on the file (other processes' writers)."""
        with self._announced():
            fd = os.open(source, os.O_RDONLY)
            try:
                while True:
                    try:
                        # DuckDB locks the whole file with fcntl: a shared lock keeps writers out.
                        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                        break
                    except OSError:
                        if time.monotonic() >= deadline:
                            raise LakeBusy(
                                f"the catalog {source} is held by another process (waited "
                                f"{self.config.lock_timeout_s:g} s); retry later, or use a sqlite: or "
                                "postgresql:// catalog for several writers"
                            ) from None
                        time.sleep(_READER_POLL_S * (0.5 + random.random()))
                # Read through the locked descriptor: closing any other descriptor of the file
                # would drop the lock (POSIX).
                with open(target, "wb") as out:
                    while chunk := os.read(fd, 1 << 20):
                        out.write(chunk)
                if Path(source + ".wal").exists():
                    shutil.copyfile(source + ".wal", target + ".wal")
            finally:
                os.close(fd)  # drops the lock; then the announcement ends, and the writer goes on
        return target

    # -- maintenance -------------------------------------------------------------------

    def maintain(self, *, older_than: dt.timedelta = dt.timedelta(hours=1), dry_run: bool = False) -> list[str]:
        """Delete data files no snapshot references (left by killed writers) older than
        `older_than`; return their paths. Snapshots are kept, so datasets stay readable."""
        self._require_writer("maintain")
        cutoff = _now() - older_than
        with self._lock:
            con = self.connection()
            rows = con.execute(
                f"SELECT * FROM ducklake_delete_orphaned_files('{_ALIAS}', dry_run => ?, older_than => ?)",
                [dry_run, cutoff],
            ).fetchall()
            return [str(r[0]) for r in rows]

    def _require_writer(self, what: str) -> None:
        if self.read_only:
            raise BadInput(f"{what}: this lake was opened read-only (Lake.open(..., read_only=True)); open it without read_only to write")

    _compacted_to = 0  # data files the last compact_if left: its next threshold starts there

    def data_files(self) -> int:
        """How many data files the current snapshot reads (every table): what compaction bounds.
        One catalog query (1.8 ms at 600 files, on a busy 2-core machine): cheap enough to ask
        after every commit (itself ~40-60 ms)."""
        with self._lock:
            con = self.connection()
            return int(con.execute(f"SELECT count(*) FROM __ducklake_metadata_{_ALIAS}.ducklake_data_file WHERE end_snapshot IS NULL").fetchone()[0])

    def compact_if(self, max_files: int, *, older_than: dt.timedelta = dt.timedelta(hours=1)) -> Compaction | None:
        """`compact(older_than=...)` when the current snapshot reads more than `max_files` data
        files (0: never), else None: the automatic policy (the flow calls it at stage ends, the
        sampler after its commits). Files that cannot be merged (one per table at least) would
        trip the threshold on every call, so after a compaction the next waits until the count
        has also grown by `max_files` past what that one left."""
        if max_files <= 0:
            return None
        self._require_writer("compact_if")
        with self._lock:
            files = self.data_files()
            if files <= self._compacted_to + max_files:
                return None
            done = self.compact(older_than=older_than)
            self._compacted_to = done.files_after
            return done

    def compact(self, *, older_than: dt.timedelta = dt.timedelta(hours=1)) -> Compaction:
        """Merge small data files (and rows inlined in the catalog) into few big ones, expire
        snapshots older than `older_than` that no saved dataset version pins, and delete the
        files that were scheduled for deletion before then.

        Merged files keep each row's snapshot, so time travel to any snapshot still kept, and so
        every dataset version, reads exactly the rows it read before. The files merged away stay
        until a compaction `older_than` later: a reader that copied the catalog just before may
        still scan them. `older_than` must exceed the time `save_dataset` takes from choosing its
        snapshot to recording it (its count query), or a dataset saved meanwhile could lose it."""
        self._require_writer("compact")
        cutoff = _now() - older_than
        with self._lock:
            con = self.connection()

            def merge() -> None:
                con.execute(f"CALL ducklake_flush_inlined_data('{_ALIAS}')").fetchall()
                con.execute(f"CALL ducklake_merge_adjacent_files('{_ALIAS}')").fetchall()

            def expire() -> tuple[int, int]:
                pinned = {int(r[0]) for r in con.execute(f"SELECT DISTINCT snapshot_id FROM {_ALIAS}.datasets").fetchall()}
                current = int(con.execute(f"SELECT id FROM {_ALIAS}.current_snapshot()").fetchone()[0])
                old = [
                    int(r[0])
                    for r in con.execute(
                        f"SELECT snapshot_id FROM ducklake_snapshots('{_ALIAS}') WHERE snapshot_time < ? ORDER BY 1", [cutoff]
                    ).fetchall()
                ]
                doomed = [s for s in old if s not in pinned and s != current]
                if doomed:
                    con.execute(f"CALL ducklake_expire_snapshots('{_ALIAS}', versions => ?)", [doomed]).fetchall()
                return len(doomed), len(pinned & set(old))

            before = self.data_files()
            with self._catalog_write_lock():
                self._retry(merge, "merging small files")
                expired, pinned = self._retry(expire, "expiring old snapshots")
                # The cutoff again: with older_than=0, what was merged just now goes too.
                deleted = con.execute(
                    f"CALL ducklake_cleanup_old_files('{_ALIAS}', older_than => ?)", [_now() - older_than]
                ).fetchall()
            return Compaction(before, self.data_files(), expired, pinned, len(deleted))
