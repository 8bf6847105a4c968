"""What an eval scores a model on, with the prompt it shows: a shipped benchmark, any JSONL of
problems with answers, or a procedural family's held-out split (a recipe's, or named).

    from factory.benchmarks.problem_sets import benchmark_set, family_set, file_set, problem_sets
    gsm8k = benchmark_set("gsm8k")                               # the registry's items and format
    held = family_set("addition", count=200, difficulty=2, split="test")   # 200 test-side problems
    mine = file_set("heldout.jsonl", system="Answer in one sentence.", template="{problem}")
    sets = problem_sets(recipe="recipes/quickstart.yaml", split="test", limit=200)   # the CLI's rules

A ProblemSet's `name` is what `evals.benchmark` stores and `factory report` shows: the
benchmark's name, `FILE@DIGEST` for a file (`FILE:SPLIT@DIGEST` when split), and
`GENERATOR-dDIFFICULTY-SPLIT` for a family (`-shareS` when the share is not 0.2). Its
`content` (None for a shipped benchmark, whose name is its identity) goes into the eval's id,
so two files never share results: for a file a digest of its parsed problems, for a family
its spec (generator, difficulty, seed, split, share: the items follow from it, and the first N
of a larger count are the N of a smaller one, so a larger --limit extends the eval).

The prompt: `template` (with `{problem}`) as the user turn, after `system` when given; without
a template, a benchmark's registered format, else the recipe's default for the problem's
domain (factory.recipe.DEFAULT_TEMPLATES, what `factory run` sends without `prompt:`). So
`--recipe R.yaml` (its `prompt:`) shows the eval exactly the messages the teacher saw when it
made the training data. `prompt_format` (stored on every eval row, part of the id) is the
template, with the system text before it when there is one.

A problems file (JSONL; Parquet and CSV with the same columns work too), one problem a row:
- `problem` (required): the text the model is shown;
- `answer` or `reference_answer`: the reference (a string or number; both may be given when
  they agree); required except for code (`tests`) and countdown (`metadata.numbers`, `target`);
- `problem_id` or `id` (optional): the item's id, unique in the file; default the hash of the
  normalised text (`records.problem_id`, the lake's problem id);
- `domain` (optional): math, code, puzzle, ...: picks the default template and whether maj@k
  votes (math); default code with tests, puzzle for countdown / sorting, else math;
- `tests` (code): a list of assert lines or the code verifier's object (`{"style": "asserts" |
  "stdio", ...}`), with `setup` and `entry_point` as a seed file has them;
- `verifier` or `metadata.verifier` (optional): math, code, countdown, sorting, exact, choice
  (default code with tests, else math); `metadata` (an object or its JSON text) carries what a
  generator's checker needs. Rows of the lake's `problems` table (`factory sql ... --format
  json`) are such rows.
A bad row is named as FILE:LINE with the field and what was expected, all of them in one
BadInput, and nothing is evaluated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from storage.errors import BadInput, bad_rows

from ..ingest import RowError, position_unit
from ..questions.generators import GENERATORS
from ..questions.seeds import _file_records, normalise_tests
from ..questions.splits import DEFAULT_TEST_SHARE, SPLITS, check_share, generate_split, on_side
from ..records import content_hash, problem_id
from . import _answer_text, parse_names
from . import get as get_benchmark
from . import load as load_benchmark

CHECKERS = ("math", "code", "countdown", "sorting", "exact", "choice")  # factory.questions.VERIFIERS
ANSWER_FIELDS = ("answer", "reference_answer")
FAMILY_SEED = 0  # every eval draws a family at one seed: any seed's test side is held out alike


@dataclass(frozen=True)
class ProblemSet:
    """Items (`id`, `problem`, `answer`, `tests`, and for files and families `verifier`,
    `domain`, `metadata`) with the prompt to show them in."""

    name: str
    domain: str  # the items' domain, "mixed" when they differ
    items: tuple[dict, ...]
    template: str | None = None  # None: each item's domain default (a file of several domains)
    system: str | None = None
    content: str | None = None  # in the eval id; None: a shipped benchmark, known by its name

    @property
    def prompt_format(self) -> str:
        body = self.template
        if body is None:
            from ..recipe import DEFAULT_TEMPLATES

            shown = {d: DEFAULT_TEMPLATES.get(d, DEFAULT_TEMPLATES["math"]) for d in {it.get("domain") or self.domain for it in self.items}}
            # One domain: its template as it is; several: each domain's, as JSON.
            body = next(iter(shown.values())) if len(shown) == 1 else json.dumps(shown, sort_keys=True)
        return body if self.system is None else f"[system]\n{self.system}\n[user]\n{body}"

    def prompt(self, item: dict) -> str:
        """The user turn for one item."""
        template = self.template
        if template is None:
            from ..recipe import DEFAULT_TEMPLATES

            template = DEFAULT_TEMPLATES.get(item.get("domain") or self.domain, DEFAULT_TEMPLATES["math"])
        tests = item.get("tests")
        tests = "\n".join(tests) if isinstance(tests, list) else tests if isinstance(tests, str) else ""
        return template.format(problem=item["problem"], tests=tests)

    def messages(self, item: dict) -> tuple[dict, ...]:
        user = {"role": "user", "content": self.prompt(item)}
        return ({"role": "system", "content": self.system}, user) if self.system else (user,)


def check_prompt(system: str | None, template: str | None, where: tuple[str, str] = ("--system", "--template")) -> tuple[str | None, str | None]:
    """(system, template) as given, or BadInput naming the option: a template must hold
    `{problem}` and no other placeholder (the recipe's rule)."""
    from ..recipe import PromptSpec

    try:
        PromptSpec(system=system, template=template)
    except ValidationError as exc:
        e = exc.errors()[0]
        name = where[0] if e["loc"] and e["loc"][0] == "system" else where[1]
        raise BadInput(f"{name} {e.get('input')!r}: {e['msg'].removeprefix('Value error, ')}") from None
    return system or None, template


def benchmark_set(name: str, *, system: str | None = None, template: str | None = None) -> ProblemSet:
    """A shipped benchmark; its registered format unless `template` is given."""
    b = get_benchmark(name)
    return ProblemSet(b.name, b.domain, tuple(load_benchmark(b.name)), template or b.prompt_format, system or None, None)


# -- a file of problems ---------------------------------------------------------------------


def file_set(path: str | Path, *, split: str = "all", test_share: float = DEFAULT_TEST_SHARE,
             system: str | None = None, template: str | None = None) -> ProblemSet:
    """The problems of a JSONL file (see the module docstring), the `split` side only."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise BadInput(f"{path}: no such file; expected a JSONL file of problems with answers")
    if split != "all":
        check_share(test_share, "--test-share")
    unit = position_unit(p)
    items: list[dict] = []
    problems: list[str] = []
    first_seen: dict[str, int] = {}
    for pos, record in _file_records(p):
        where = f"{path}:{pos}" if unit == "line" else f"{path} row {pos}"
        try:
            item = problem_item(record)
        except RowError as exc:
            problems.append(f"{where}: field {exc.field!r}: {exc}")
            continue
        if item["id"] in first_seen:
            field = "problem" if item.pop("_default_id") else "problem_id"
            what = "the same problem" if field == "problem" else f"the id {item['id']!r}"
            problems.append(f"{where}: field {field!r}: {what} as {unit} {first_seen[item['id']]}; expected each problem once")
            continue
        first_seen[item["id"]] = pos
        item.pop("_default_id")
        if on_side(item["problem"], split, test_share):
            items.append(item)
    if problems:
        raise bad_rows(problems, "nothing evaluated")
    if not items:
        raise BadInput(f"{path}: no problem is on the {split} side (test_share {test_share:g}); expected at least one")
    content = content_hash("problems", items)
    name = p.name + (f":{split}" if split != "all" else "") + f"@{content[:8]}"
    return ProblemSet(name, _domain(items), tuple(items), template, system or None, content)


def problem_item(record: dict) -> dict:
    """An eval item from one row of a problems file; RowError(field, what was expected)."""
    problem = record.get("problem")
    if not isinstance(problem, str) or not problem.strip():
        raise RowError("problem", "expected a non-empty string (the text the model is shown)")
    meta = record.get("metadata")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta) if meta.strip() else {}
        except json.JSONDecodeError:
            raise RowError("metadata", "expected a JSON object or its text") from None
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise RowError("metadata", f"expected a JSON object or its text, got {type(meta).__name__}")
    tests = normalise_tests(record.get("tests"), record.get("setup") or None, record.get("entry_point") or None)
    verifier = record.get("verifier") or meta.get("verifier") or ("code" if tests else "math")
    if verifier not in CHECKERS:
        raise RowError("verifier", f"{verifier!r}: expected one of {', '.join(CHECKERS)}")
    given = {f: record[f] for f in ANSWER_FIELDS if record.get(f) is not None}
    for f, v in given.items():
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise RowError(f, f"expected a string or number, got {type(v).__name__}")
    answers = {_answer_text(v).strip() for v in given.values()}
    if len(answers) > 1:
        raise RowError("reference_answer", f"differs from 'answer' ({given['answer']!r}); expected one reference answer")
    answer = answers.pop() if answers else None
    if verifier == "code":
        if not tests:
            raise RowError("tests", "missing; expected the code verifier's tests (a list of asserts, or an object with style asserts or stdio)")
    elif verifier == "countdown":
        if not isinstance(meta.get("numbers"), list) or not isinstance(meta.get("target"), int):
            raise RowError("metadata", "a countdown problem needs 'numbers' (a list) and 'target' (an integer)")
    elif not answer:
        raise RowError("answer", "missing; expected the reference answer (a string or number; 'reference_answer' also works)")
    pid = record.get("problem_id", record.get("id"))
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, (str, int)) or not str(pid).strip()):
        raise RowError("problem_id", "expected a non-empty string or an integer")
    domain = record.get("domain") or ("code" if verifier == "code" else "puzzle" if verifier in ("countdown", "sorting") else "math")
    if not isinstance(domain, str):
        raise RowError("domain", "expected a string such as math, code or puzzle")
    return {"id": problem_id(problem) if pid is None else str(pid), "_default_id": pid is None, "problem": problem,
            "answer": answer, "tests": tests, "verifier": verifier, "domain": domain, "metadata": {**meta, "verifier": verifier}}


def _domain(items: list[dict]) -> str:
    domains = {it["domain"] for it in items}
    return domains.pop() if len(domains) == 1 else "mixed"


# -- a procedural family ----------------------------------------------------------------------


def family_name(generator: str, difficulty: int, split: str, test_share: float = DEFAULT_TEST_SHARE) -> str:
    """The name a family's eval is stored and shown under, e.g. `addition-d2-test`."""
    share = f"-share{test_share:g}" if split != "all" and test_share != DEFAULT_TEST_SHARE else ""
    return f"{generator}-d{difficulty}-{split}{share}"


def family_set(generator: str, *, count: int, difficulty: int = 2, split: str = "test", test_share: float = DEFAULT_TEST_SHARE,
               system: str | None = None, template: str | None = None, what: str = "--limit") -> ProblemSet:
    """The first `count` distinct problems of a generator's `split` side (at FAMILY_SEED);
    BadInput naming `what` when the side has fewer."""
    if generator not in GENERATORS:
        raise BadInput(f"--family {generator!r}: expected one of {', '.join(GENERATORS)}")
    if isinstance(difficulty, bool) or not isinstance(difficulty, int) or not 1 <= difficulty <= 5:
        raise BadInput(f"--difficulty {difficulty!r}: expected an integer from 1 to 5")
    if split not in SPLITS:
        raise BadInput(f"--split {split!r}: expected one of {', '.join(SPLITS)}")
    if split != "all":
        check_share(test_share, "--test-share")
    rows = generate_split(generator, count=count, difficulty=difficulty, seed=FAMILY_SEED, split=split,
                          test_share=test_share, what=what, where=f"family {generator}")
    items = []
    for r in rows:
        meta = json.loads(r["metadata"])
        items.append({"id": r["problem_id"], "problem": r["problem"], "answer": r["reference_answer"], "tests": None,
                      "verifier": meta["verifier"], "domain": r["domain"], "metadata": meta})
    content = content_hash("family", generator, difficulty, FAMILY_SEED, split, test_share if split != "all" else None)
    return ProblemSet(family_name(generator, difficulty, split, test_share), _domain(items), tuple(items),
                      template, system or None, content)


# -- the CLI's rules --------------------------------------------------------------------------


def problem_sets(
    *, benchmark: str | None = None, problems: str | None = None, family: str | None = None, recipe: str | None = None,
    split: str | None = None, test_share: float | None = None, difficulty: int | None = None, limit: int | None = None,
    system: str | None = None, template: str | None = None,
) -> list[ProblemSet]:
    """The problem sets `factory eval` scores, from its options (BadInput naming the option):
    `--benchmark` (names, comma-separated), `--problems FILE`, or `--family NAME` (with
    `--difficulty`, and `--limit` as the count), one of them; `--recipe R.yaml` gives the prompt
    (its `prompt.system` and `prompt.template`; `--system` / `--template` override them) and,
    without the other three, the problems too: the `--split` side of each of its generator
    sources that has `split: train` (at the recipe's `test_share`), `--limit` of each.
    `--split` defaults to test for a family or a recipe and to all for a file."""
    named = [flag for flag, v in (("--benchmark", benchmark), ("--problems", problems), ("--family", family)) if v]
    if len(named) > 1:
        raise BadInput(f"{' and '.join(named)}: expected one of them (each names the problems to evaluate)")
    if not named and not recipe:
        raise BadInput("no problems to evaluate: expected --benchmark NAME, --problems FILE.jsonl, --family NAME or --recipe RECIPE.yaml")
    if split is not None and split not in SPLITS:
        raise BadInput(f"--split {split!r}: expected one of {', '.join(SPLITS)}")
    if benchmark and (split is not None or test_share is not None):
        raise BadInput(f"{'--split' if split is not None else '--test-share'}: only with --problems, --family or --recipe "
                       "(a shipped benchmark is held out already)")
    if difficulty is not None and not family:
        raise BadInput("--difficulty: only with --family (a recipe's sources have their own)")
    rec = None
    if recipe:
        from ..recipe import load_recipe

        rec = load_recipe(recipe)
        system = system if system is not None else rec.prompt.system
        template = template if template is not None else rec.prompt.template
    system, template = check_prompt(system, template)
    if benchmark:
        return [benchmark_set(n, system=system, template=template) for n in parse_names(benchmark)]
    if problems:
        return [file_set(problems, split=split or "all", test_share=_share(test_share), system=system, template=template)]
    if family:
        if limit is None:
            raise BadInput(f"--family {family}: expected --limit N, how many problems to draw from the family (e.g. --limit 200)")
        return [family_set(family, count=limit, difficulty=2 if difficulty is None else difficulty, split=split or "test",
                           test_share=_share(test_share), system=system, template=template)]
    return _recipe_sets(recipe, rec, split or "test", test_share, limit, system, template)


def _share(test_share: float | None) -> float:
    return DEFAULT_TEST_SHARE if test_share is None else test_share


def _recipe_sets(path, rec, split: str, test_share: float | None, limit: int | None, system, template) -> list[ProblemSet]:
    from ..questions import GeneratorSource

    if test_share is not None:
        raise BadInput(f"--test-share: with --recipe {path} alone, the share is each source's test_share in the recipe")
    sources = [(i, s) for i, s in enumerate(rec.questions) if isinstance(s, GeneratorSource)]
    if not sources:
        raise BadInput(f"--recipe {path}: no generator source to hold out problems from; "
                       "name the held-out problems with --problems FILE.jsonl or --family NAME (the recipe then gives the prompt)")
    if limit is None:
        raise BadInput(f"--recipe {path}: expected --limit N, how many problems to draw from each generator source (e.g. --limit 200)")
    out = []
    for i, s in sources:
        if split != "all" and s.split == "all":
            raise BadInput(f"--recipe {path}: questions[{i}] ({s.generator}) has no `split: train`, so any of its problems may be "
                           f"in the training data; expected `split: train` on it (then --split {split} draws from the other side)")
        out.append(family_set(s.generator, count=limit, difficulty=s.difficulty, split=split, test_share=s.test_share,
                              system=system, template=template))
    return out
