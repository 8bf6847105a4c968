"""Where GRPO's prompts come from: the config, the reader (a JSONL file, or problems from the
lake whose stored pass rate lies strictly inside a band), the chat messages, and the seeded
per-rank stream whose position a checkpoint saves.

    from trainer.prompts import PromptsConfig, PromptStream, read_prompts
    rows = read_prompts(PromptsConfig(jsonl="problems.jsonl", pass_rate=None))
    stream = PromptStream(rows, seed=0, rank=0, world=1); stream.next()

Not covered: prompts from a Hugging Face dataset by name (export it to JSONL first).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from factory.questions.splits import DEFAULT_TEST_SHARE, on_side
from factory.records import problem_id as hash_problem
from storage.errors import BadInput

from .config import Section


class PromptsConfig(Section):
    """Where the prompts come from: problems from the lake whose stored pass rate (the `labels`
    table) lies strictly inside `pass_rate` (GRPO learns nothing from a group that all pass or
    all fail), or a JSONL file of problems. A row needs `problem` and `reference_answer`
    (or `answer`); `problem_id`, `domain`, `tests`, `pass_rate` are used when present.
    `split: train` keeps only the train side of the factory's hash split
    (factory/questions/splits.py, at `test_share`), so a policy never trains on a problem
    `factory eval --recipe` or `--family` holds out, whatever else the lake or file holds.
    The messages are rendered as a recipe's `prompt:` is (factory/recipe.py PromptSpec):
    `system_prompt` as the system turn, `template` with `{problem}` replaced and other braces
    doubled, so `factory eval --system ... --template ...` shows a student the same text."""

    jsonl: str | None = None
    sql: str | None = None  # a SELECT over the lake; default: problems joined to labels
    store: str | None = None
    catalog: str | None = None
    pass_rate: tuple[float, float] | None = (0.0, 1.0)  # open interval; None: no filter
    limit: int | None = None
    system_prompt: str | None = None
    template: str = "{problem}"  # the user message; {problem} is replaced, other braces doubled (a recipe's rule)
    split: Literal["all", "train", "test"] = "all"  # train: only problems on the train side of the hash split
    test_share: float = Field(DEFAULT_TEST_SHARE, gt=0.0, lt=1.0)  # the split's test share: the data recipe's

    @model_validator(mode="after")
    def _source(self) -> PromptsConfig:
        if self.jsonl and self.sql:
            raise ValueError("expected one of jsonl or sql, not both")
        if self.pass_rate is not None and not (0.0 <= self.pass_rate[0] < self.pass_rate[1] <= 1.0):
            raise ValueError(f"pass_rate {list(self.pass_rate)}: expected [low, high] with 0 <= low < high <= 1")
        if "{problem}" not in self.template:
            raise ValueError("template: expected a string containing {problem}")
        try:
            self.template.format(problem="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"template: only {{problem}} may be a placeholder (double other braces): {exc}") from None
        return self


# The newest problem row and the newest label of each problem (runs append), benchmark-contaminated
# problems left out; the label (gold, or the majority's answer) is the reference.
DEFAULT_PROMPTS_SQL = """
SELECT p.problem_id, p.problem, coalesce(l.label, p.reference_answer) AS reference_answer, p.domain, p.tests, l.pass_rate
FROM (SELECT * FROM problems QUALIFY row_number() OVER (PARTITION BY problem_id ORDER BY created_at DESC) = 1) p
JOIN (SELECT * FROM labels QUALIFY row_number() OVER (PARTITION BY problem_id ORDER BY created_at DESC) = 1) l
  USING (problem_id)
WHERE coalesce(len(p.contamination), 0) = 0
ORDER BY p.problem_id
"""


def read_prompts(cfg: PromptsConfig) -> list[dict]:
    """The problems to train on, pass-rate filtered, each with a problem_id."""
    rows: list[dict]
    if cfg.jsonl:
        path = Path(cfg.jsonl)
        if not path.is_file():
            raise BadInput(f"prompts.jsonl {path}: no such file")
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadInput(f"{path} line {i}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not row.get("problem"):
                raise BadInput(f"{path} line {i}: expected an object with a non-empty 'problem'")
            rows.append(row)
    else:
        from storage import Lake

        with Lake.open(cfg.store, cfg.catalog, create=False) as lake:
            rows = lake.query(cfg.sql or DEFAULT_PROMPTS_SQL).to_pylist()
    out = []
    lo_hi = cfg.pass_rate
    for row in rows:
        if not on_side(str(row["problem"]), cfg.split, cfg.test_share):
            continue
        p = row.get("pass_rate")
        if lo_hi is not None and p is not None and not (lo_hi[0] < p < lo_hi[1]):
            continue  # all pass or all fail: a zero-variance group, no signal
        row = dict(row)
        row.setdefault("reference_answer", row.get("answer"))
        row["problem_id"] = row.get("problem_id") or hash_problem(row["problem"])
        out.append(row)
        if cfg.limit and len(out) >= cfg.limit:
            break
    if not out:
        where = cfg.jsonl or "the lake"
        side = f" on the {cfg.split} side (test_share {cfg.test_share})" if cfg.split != "all" else ""
        raise BadInput(f"prompts: no problems from {where}{side} with pass_rate strictly inside {list(lo_hi) if lo_hi else 'any'}")
    return out


def messages_for(row: dict, cfg: PromptsConfig) -> tuple[dict, ...]:
    msgs = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    msgs.append({"role": "user", "content": cfg.template.format(problem=str(row["problem"]))})
    return tuple(msgs)


class PromptStream:
    """An endless, seeded, reshuffled-every-epoch stream of prompts for one rank."""

    def __init__(self, rows: list[dict], seed: int, rank: int = 0, world: int = 1):
        self.rows = rows[rank::world] or rows  # disjoint shards when there are enough prompts
        self.rng = random.Random(seed * 1000 + rank)
        self.order: list[int] = []

    def next(self) -> dict:
        if not self.order:
            self.order = list(range(len(self.rows)))
            self.rng.shuffle(self.order)
        return self.rows[self.order.pop()]

    def state(self) -> dict:
        """Where the stream is (JSON-able): the shuffle RNG and what is left of this epoch's order."""
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss], "order": list(self.order), "rows": len(self.rows)}

    def restore(self, state: dict) -> None:
        """Continue from `state()`; BadInput when the prompts are not the ones it was taken over."""
        if state.get("rows") != len(self.rows) or any(not 0 <= i < len(self.rows) for i in state["order"]):
            raise BadInput(f"checkpoint: the prompt stream was saved over {state.get('rows')} prompts, this run has "
                           f"{len(self.rows)}: expected the same prompts config to resume (or checkpoint.resume: false)")
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.order = list(state["order"])
