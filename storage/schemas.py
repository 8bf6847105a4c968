"""The tables of the lake: the data contract between stages.

Each table has an explicit Arrow schema; the DuckLake DDL is derived from it, and every batch
is conformed to it before commit (missing nullable columns become nulls, the rest is cast, and
a missing required column or an impossible cast is a `BadInput` naming the column). Free-form
JSON lives in VARCHAR columns (`metadata`, `sampling`, `counts`): query it with `col::JSON`.

`SCHEMA_VERSION` is stored in the lake's `meta` table; bump it with any change here. Opening
an older lake creates the tables it lacks and records the new version (`Lake._set_up`); a
change that alters an existing table needs a migration step there too.

    python -c "from storage.schemas import TABLES; print(list(TABLES))"
"""

from __future__ import annotations

import pyarrow as pa

from .errors import BadInput

SCHEMA_VERSION = 5  # 2: the `minhash` table (dedup's persisted index); 3: `labels` and `evals`; 4: `teacher_topk`; 5: `reviews`

_ts = pa.timestamp("us", tz="UTC")
_message = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])


def _f(name: str, type_: pa.DataType, required: bool = False) -> pa.Field:
    return pa.field(name, type_, nullable=not required)


PROBLEMS = pa.schema(
    [
        _f("problem_id", pa.string(), True),  # hash of the normalised problem text
        _f("run_id", pa.string(), True),
        _f("source", pa.string()),
        _f("domain", pa.string()),  # math / code / puzzle / ...
        _f("problem", pa.string(), True),
        _f("reference_answer", pa.string()),
        _f("tests", pa.string()),  # JSON: code tests
        _f("difficulty", pa.float64()),
        _f("metadata", pa.string()),  # JSON
        _f("contamination", pa.list_(pa.string())),  # benchmark hits
        _f("created_at", _ts, True),
    ]
)

SAMPLES = pa.schema(
    [
        _f("sample_id", pa.string(), True),
        _f("run_id", pa.string(), True),
        _f("request_key", pa.string()),  # content hash of model, messages, sampling, index
        _f("problem_id", pa.string(), True),
        _f("teacher", pa.string()),
        _f("model", pa.string()),
        _f("model_revision", pa.string()),
        _f("backend", pa.string()),
        _f("sampling", pa.string()),  # JSON
        _f("sample_index", pa.int32()),
        _f("messages", pa.list_(_message)),
        _f("prompt", pa.string()),
        _f("reasoning", pa.string()),
        _f("answer", pa.string()),
        _f("completion", pa.string()),  # the raw completion text
        _f("finish_reason", pa.string()),
        _f("prompt_tokens", pa.int64()),
        _f("completion_tokens", pa.int64()),
        _f("latency_s", pa.float64()),
        _f("cost_usd", pa.float64()),
        _f("metadata", pa.string()),  # JSON
        _f("created_at", _ts, True),
    ]
)

# The teacher's top-k log-probs of a sample's generated tokens (recipes with
# `teacher.sampling.top_logprobs`), kept out of `samples` so that table stays light: one row per
# sample, committed in the same transaction as it. Lists run over the generated positions, in
# order; ids where the backend gives them, token strings where it gives those.
TEACHER_TOPK = pa.schema(
    [
        _f("sample_id", pa.string(), True),
        _f("run_id", pa.string(), True),
        _f("k", pa.int32(), True),  # asked for; a position may hold fewer
        _f("positions", pa.int32(), True),  # generated tokens covered
        _f("token_ids", pa.list_(pa.int32())),  # the token generated at each position
        _f("tokens", pa.list_(pa.string())),
        _f("token_logprobs", pa.list_(pa.float32())),
        _f("top_ids", pa.list_(pa.list_(pa.int32()))),  # [position][rank]
        _f("top_tokens", pa.list_(pa.list_(pa.string()))),
        _f("top_logprobs", pa.list_(pa.list_(pa.float32())), True),
        _f("created_at", _ts, True),
    ]
)

VERDICTS = pa.schema(
    [
        _f("sample_id", pa.string(), True),
        _f("run_id", pa.string(), True),
        _f("check", pa.string(), True),  # verifier or filter name
        _f("check_version", pa.string()),
        _f("status", pa.string(), True),  # pass | fail | unverifiable | error
        _f("score", pa.float64()),
        _f("extracted_answer", pa.string()),
        _f("reason", pa.string()),
        _f("elapsed_s", pa.float64()),
        _f("created_at", _ts, True),
    ]
)

DEDUP = pa.schema(
    [
        _f("item_id", pa.string(), True),  # a sample_id or a problem_id
        _f("item_kind", pa.string(), True),  # sample | problem
        _f("run_id", pa.string(), True),
        _f("cluster_id", pa.string(), True),
        _f("kept", pa.bool_(), True),
        _f("method", pa.string(), True),  # exact | minhash | ...
        _f("similarity", pa.float64()),
        _f("created_at", _ts, True),
    ]
)

# The dedup index's cluster leaders, so a new batch is checked against every earlier run
# without rebuilding: one row per leader. Band keys are recomputed from the signature (cheap),
# so they are not stored. The signature is uint32 values held as int64 (the lake has no
# unsigned or binary column types).
MINHASH = pa.schema(
    [
        _f("item_id", pa.string(), True),  # the leader's problem_id or sample_id (= its cluster_id)
        _f("item_kind", pa.string(), True),  # problem | sample, as in `dedup`
        _f("run_id", pa.string(), True),
        _f("group_id", pa.string()),  # responses: the problem_id they are compared within
        _f("num_perm", pa.int32(), True),
        _f("ngram", pa.int32(), True),
        _f("seed", pa.int64(), True),
        _f("signature", pa.list_(pa.int64()), True),
        _f("created_at", _ts, True),
    ]
)

DATASETS = pa.schema(
    [
        _f("name", pa.string(), True),
        _f("version", pa.int32(), True),
        _f("sql", pa.string(), True),  # the SELECT that defines it
        _f("snapshot_id", pa.int64(), True),  # the lake snapshot it was read at
        _f("row_count", pa.int64(), True),
        _f("recipe_hash", pa.string()),
        _f("description", pa.string()),
        _f("run_id", pa.string(), True),
        _f("created_at", _ts, True),
    ]
)

RUNS = pa.schema(
    [
        _f("run_id", pa.string(), True),
        _f("recipe", pa.string()),  # YAML
        _f("recipe_hash", pa.string()),
        _f("code_version", pa.string()),
        _f("status", pa.string(), True),  # started | finished | failed
        _f("started_at", _ts),
        _f("finished_at", _ts),
        _f("counts", pa.string()),  # JSON: rows per stage
        _f("cost_usd", pa.float64()),
        _f("created_at", _ts, True),
    ]
)

# What is known of a problem's answer and difficulty from its samples: majority-vote labels
# (when there is no gold), the gold audit, and pass rates. One row per problem per labelling
# pass; readers take the newest row of a problem.
LABELS = pa.schema(
    [
        _f("problem_id", pa.string(), True),
        _f("run_id", pa.string(), True),
        _f("method", pa.string(), True),  # gold | majority | none (too few votes / no agreement)
        _f("label", pa.string()),  # the answer taken as right (gold or the majority's)
        _f("confidence", pa.float64()),  # the majority's vote share
        _f("votes", pa.int32()),  # samples with an extractable answer
        _f("n_samples", pa.int32()),
        _f("n_passed", pa.int32()),  # samples whose verdicts all passed
        _f("pass_rate", pa.float64()),  # n_passed / n_samples: difficulty (GRPO wants 0 < p < 1)
        _f("gold_disagrees", pa.bool_()),  # gold audit: a strong majority contradicts the gold
        _f("majority_answer", pa.string()),
        _f("metadata", pa.string()),  # JSON
        _f("created_at", _ts, True),
    ]
)

# Student evaluation: one row per (eval, benchmark item, sample), so `factory sql` can compare
# checkpoints; scores (pass@k, maj@k, intervals) are computed from these rows.
EVALS = pa.schema(
    [
        _f("eval_id", pa.string(), True),  # hash of model, benchmark, prompt format, sampling
        _f("run_id", pa.string(), True),
        _f("model", pa.string(), True),  # checkpoint folder, exported student or endpoint model
        _f("backend", pa.string()),
        _f("benchmark", pa.string(), True),
        _f("item_id", pa.string(), True),
        _f("prompt_format", pa.string()),
        _f("sampling", pa.string()),  # JSON
        _f("sample_index", pa.int32(), True),
        _f("request_key", pa.string()),
        _f("completion", pa.string()),
        _f("extracted_answer", pa.string()),
        _f("reference_answer", pa.string()),
        _f("status", pa.string(), True),  # the verdict: pass | fail | unverifiable | error
        _f("correct", pa.bool_(), True),
        _f("completion_tokens", pa.int64()),
        _f("finish_reason", pa.string()),
        _f("created_at", _ts, True),
    ]
)

# People's judgements of what the machines decided (`factory view`): a sample marked right,
# wrong, hacked (a reward hack: passed the verifier without solving the problem) or unreadable,
# or a contamination hit marked true or false. Append-only: a later review of the same item
# supersedes the earlier one for readers (the report, `factory export --drop-reviewed-bad`).
REVIEWS = pa.schema(
    [
        _f("review_id", pa.string(), True),
        _f("run_id", pa.string(), True),  # "review": reviews belong to no generation run
        _f("item_kind", pa.string(), True),  # sample | contamination
        _f("item_id", pa.string(), True),  # the sample_id, or the problem_id of a contamination hit
        _f("hit", pa.string()),  # contamination: the hit as problems.contamination holds it
        _f("label", pa.string(), True),  # sample: right | wrong | hacked | unreadable; contamination: true | false
        _f("note", pa.string()),
        _f("reviewer", pa.string(), True),  # who
        _f("drawn", pa.bool_()),  # reached by the seeded "sample for review" draw (an unbiased sample), not by browsing
        _f("draw_seed", pa.int64()),
        _f("snapshot_id", pa.int64()),  # the lake snapshot the reviewer was shown
        _f("created_at", _ts, True),  # when
    ]
)

# The exactly-once ledger: one row per committed batch, written in the same transaction.
BATCHES = pa.schema(
    [
        _f("batch_key", pa.string(), True),
        _f("table_name", pa.string(), True),
        _f("run_id", pa.string(), True),
        _f("row_count", pa.int64(), True),
        _f("created_at", _ts, True),
    ]
)

META = pa.schema([_f("key", pa.string(), True), _f("value", pa.string(), True)])

# Tables users and stages commit to, in the order of the way a sample travels.
TABLES: dict[str, pa.Schema] = {
    "problems": PROBLEMS,
    "samples": SAMPLES,
    "teacher_topk": TEACHER_TOPK,
    "verdicts": VERDICTS,
    "dedup": DEDUP,
    "minhash": MINHASH,
    "labels": LABELS,
    "datasets": DATASETS,
    "runs": RUNS,
    "evals": EVALS,
    "reviews": REVIEWS,
}
# Bookkeeping tables the lake manages itself.
INTERNAL: dict[str, pa.Schema] = {"batches": BATCHES, "meta": META}
ALL_TABLES: dict[str, pa.Schema] = {**TABLES, **INTERNAL}


def duckdb_type(t: pa.DataType) -> str:
    """The DuckDB type that round-trips the Arrow type."""
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "VARCHAR"
    if pa.types.is_int32(t):
        return "INTEGER"
    if pa.types.is_int64(t):
        return "BIGINT"
    if pa.types.is_float64(t):
        return "DOUBLE"
    if pa.types.is_float32(t):
        return "FLOAT"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
    if pa.types.is_list(t):
        return duckdb_type(t.value_type) + "[]"
    if pa.types.is_struct(t):
        inner = ", ".join(f'"{f.name}" {duckdb_type(f.type)}' for f in t)
        return f"STRUCT({inner})"
    raise TypeError(f"no DuckDB type for {t}")


def create_table_sql(name: str, schema: pa.Schema, catalog: str = "lake") -> str:
    cols = ", ".join(
        f'"{f.name}" {duckdb_type(f.type)}{"" if f.nullable else " NOT NULL"}' for f in schema
    )
    return f'CREATE TABLE IF NOT EXISTS {catalog}."{name}" ({cols})'


def conform(table_name: str, data: pa.Table, defaults: dict[str, object] | None = None) -> pa.Table:
    """Shape `data` to the table's schema: fill defaults and nulls, cast, check required columns.

    Unknown columns are an error (a typo in a column name must not silently drop data).
    """
    schema = ALL_TABLES.get(table_name)
    if schema is None:
        raise BadInput(f"unknown table {table_name!r}; expected one of {sorted(TABLES)}")
    unknown = [c for c in data.column_names if schema.get_field_index(c) < 0]
    if unknown:
        raise BadInput(
            f"table {table_name!r} has no column(s) {unknown}; expected columns: {schema.names}"
        )
    defaults = defaults or {}
    n = data.num_rows
    columns = []
    for field in schema:
        if field.name in data.column_names:
            col = data.column(field.name)
            if field.name in defaults and col.null_count:
                filler = pa.scalar(defaults[field.name], type=field.type)
                col = pa.chunked_array(
                    [c.fill_null(filler) for c in col.chunks] or [pa.array([], field.type)],
                    type=field.type if col.type == field.type else None,
                )
        elif field.name in defaults:
            col = pa.repeat(pa.scalar(defaults[field.name], type=field.type), n)
        elif field.nullable:
            col = pa.nulls(n, type=field.type)
        else:
            raise BadInput(f"table {table_name!r}: required column {field.name!r} is missing")
        try:
            col = col.cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise BadInput(
                f"table {table_name!r}, column {field.name!r}: expected {field.type}, got {col.type} ({exc})"
            ) from exc
        if not field.nullable and col.null_count:
            raise BadInput(
                f"table {table_name!r}, column {field.name!r}: {col.null_count} null value(s) in a required column"
            )
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)
