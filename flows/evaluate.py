"""`factory eval`: evaluate a student with the factory's verifiers on a shipped benchmark, a JSONL
of problems with answers, or the held-out split of a procedural family.

    factory eval smollm2 --benchmark gsm8k --limit 10 --max-tokens 256
    factory eval ./checkpoints/student --benchmark math500,aime2024 --samples 8
    factory eval my-model --backend openai --base-url http://127.0.0.1:8000/v1 --benchmark gsm8k --format json
    factory eval smollm2 --problems heldout.jsonl --template "{problem}" --system "Answer in one sentence."
    factory eval smollm2 --family addition --difficulty 3 --split test --limit 200

Base model against the student trained on a recipe's data (`split: train` on its generator
source): the same command for both, so the same problems, prompt and sampling. `--recipe`
takes the recipe's prompt and draws the test side of its generator sources:

    factory eval smollm2        --recipe recipes/r.yaml --limit 200 --temperature 0 --max-tokens 32
    factory eval runs/rft/hf    --recipe recipes/r.yaml --limit 200 --temperature 0 --max-tokens 32

flows/cli.py registers `eval_` as `factory eval`. The work is
factory.evaluation.evaluate; this module parses options, shows progress on stderr and prints the
scores (a table, or JSON with --format json) on stdout. An interrupted eval resumes: rerun the
same command. Exit codes: 0 ok, 1 samples are still missing (the backend failed; rerun to
resume), 2 bad input.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from flows.options import Catalog, Store, err
from flows.options import run_job as _run
from storage import BadInput, Lake

FORMATS = ("table", "json")


def eval_(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="'smollm2', a checkpoint or exported student folder, a .gguf file "
                                                              "(factory export-model), or the model name served at --base-url.")],
    benchmark: Annotated[str | None, typer.Option("--benchmark", metavar="NAME", help="math500, aime2024, aime2025, amc23, gsm8k, "
                                                  "minerva, olympiadbench, humaneval or mbpp; several separated by commas.")] = None,
    problems: Annotated[str | None, typer.Option("--problems", metavar="FILE", help="A JSONL file of problems with answers: rows with problem and "
                                                 "answer (or reference_answer); optional problem_id, domain, tests (code), verifier, metadata.")] = None,
    family: Annotated[str | None, typer.Option("--family", metavar="NAME", help="A procedural family: addition, arithmetic, linear, countdown "
                                               "or sorting; --limit problems of its --split side.")] = None,
    difficulty: Annotated[int | None, typer.Option("--difficulty", metavar="D", help="The family's difficulty, 1 to 5 (--family) [default: 2].")] = None,
    recipe: Annotated[str | None, typer.Option("--recipe", metavar="RECIPE", help="The recipe that made the training data: its prompt (system "
                                               "and template); alone, also the --split side of its generator sources (those with split: train).")] = None,
    split: Annotated[str | None, typer.Option("--split", metavar="SPLIT", help="test, train or all: the side of the hash split (as a recipe's "
                                              "split: train) [default: test for --family and --recipe, all for --problems].")] = None,
    test_share: Annotated[float | None, typer.Option("--test-share", metavar="F", help="The test side's share, as the training recipe's test_share "
                                                     "[default: 0.2; with --recipe alone, the recipe's].")] = None,
    system: Annotated[str | None, typer.Option("--system", metavar="TEXT", help="A system turn before each problem "
                                               "[default: the recipe's, else none].")] = None,
    template: Annotated[str | None, typer.Option("--template", metavar="TEXT", help="The user turn, with {problem} [default: the recipe's, else "
                                                 "a benchmark's own format, else the recipe default for the problem's domain].")] = None,
    samples: Annotated[int, typer.Option("--samples", metavar="K", help="Samples per problem (pass@1 is their mean; pass@k and maj@K from them).")] = 1,
    limit: Annotated[int | None, typer.Option("--limit", metavar="N", help="Only the first N problems of each benchmark or file; "
                                              "for a family or a recipe's sources, how many to draw (required).")] = None,
    backend: Annotated[str, typer.Option("--backend", metavar="BACKEND", help="transformers, vllm or openai.")] = "transformers",
    base_url: Annotated[str | None, typer.Option("--base-url", metavar="URL", help="The OpenAI-compatible server (--backend openai), "
                                                                                   "e.g. http://127.0.0.1:8000/v1.")] = None,
    api_key_env: Annotated[str | None, typer.Option("--api-key-env", metavar="VAR", help="Environment variable holding the server's API key.")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", metavar="N", help="Completion tokens per sample.")] = 4096,
    temperature: Annotated[float, typer.Option("--temperature", metavar="T", help="Sampling temperature (0: greedy).")] = 0.6,
    top_p: Annotated[float, typer.Option("--top-p", metavar="P", help="Nucleus sampling.")] = 0.95,
    seed: Annotated[int, typer.Option("--seed", metavar="S", help="Sampling seed (part of the eval's identity).")] = 0,
    concurrency: Annotated[int, typer.Option("--concurrency", metavar="N", help="Requests in flight (--backend openai).")] = 32,
    batch_size: Annotated[int, typer.Option("--batch-size", metavar="N", help="Rows per generate call (--backend transformers).")] = 8,
    device: Annotated[str | None, typer.Option("--device", metavar="DEVICE", help="cpu or cuda (--backend transformers) "
                                                                                "[default: the best available].")] = None,
    revision: Annotated[str | None, typer.Option("--revision", metavar="REV", help="The model's revision "
                                                                                  "[default: a fingerprint of a folder's files].")] = None,
    run_id: Annotated[str | None, typer.Option("--run-id", metavar="ID", help="Run id stored on the rows [default: eval-<time>].")] = None,
    format: Annotated[str, typer.Option("--format", metavar="FORMAT", help="table or json.")] = "table",
    store: Store = None,
    catalog: Catalog = None,
) -> None:
    """Score a model on benchmarks with the factory's verifiers; records go to the evals table.

    The problems: --benchmark, --problems FILE, --family NAME, or --recipe alone (its held-out
    side). For a base model against its student, run the same command for both: the same
    problems, prompt (--recipe: the one the training data was made with) and sampling.
    """
    missing_total = 0

    def job() -> None:
        nonlocal missing_total
        from factory.benchmarks.problem_sets import problem_sets
        from factory.evaluation import evaluate

        if format not in FORMATS:
            raise BadInput(f"--format {format!r}: expected one of {', '.join(FORMATS)}")
        sets = problem_sets(benchmark=benchmark, problems=problems, family=family, recipe=recipe, split=split,
                            test_share=test_share, difficulty=difficulty, limit=limit, system=system, template=template)
        results = []
        with Lake.open(store, catalog) as lake:
            for problem_set in sets:
                name = problem_set.name
                with _Progress(name) as progress:
                    result = evaluate(
                        lake, model, problem_set, samples=samples, limit=limit, backend=backend, run_id=run_id,
                        on_progress=progress.update, base_url=base_url, api_key_env=api_key_env,
                        max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                        concurrency=concurrency, batch_size=batch_size, device=device, revision=revision,
                    )
                p = result.progress
                err.print(f"{name}: {p.committed} sample(s) generated, {p.already_done} already stored (eval {result.eval_id})", markup=False)
                missing_total += p.missing
                results.append(result)
        if format == "json":
            json.dump([r.as_dict() for r in results], sys.stdout, default=str)
            sys.stdout.write("\n")
        else:
            print_scores(results)

    _run(job)
    if missing_total:
        err.print(f"{missing_total} sample(s) missing: the backend failed for them; rerun the same command to resume", markup=False)
        raise typer.Exit(1)


def _pct(x: float | None) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def print_scores(results) -> None:
    """The scores on stdout: one row per benchmark and metric (score and 95% interval, in %),
    then one row per benchmark with the sample counts, lengths and verdicts."""
    out = Console(highlight=False)
    title = f"{results[0].model} ({results[0].backend})" if results else None
    scores = Table(title=title)
    for col in ("benchmark", "metric", "score %", "95% CI"):
        scores.add_column(col, justify="left" if col in ("benchmark", "metric") else "right")
    for r in results:
        for metric, value in r.scores.metrics.items():
            lo, hi = r.scores.intervals.get(metric, (None, None))
            scores.add_row(r.benchmark, metric, _pct(value), f"{_pct(lo)} - {_pct(hi)}")
    out.print(scores)
    detail = Table()
    for col in ("benchmark", "items", "K", "tokens", "right", "wrong", "cut %", "pass", "fail", "unverif.", "error"):
        detail.add_column(col, justify="left" if col == "benchmark" else "right")
    for r in results:
        s, st = r.scores, r.scores.statuses
        detail.add_row(r.benchmark, str(s.items), str(s.samples), _num(s.mean_completion_tokens),
                       _num(s.mean_tokens_correct), _num(s.mean_tokens_wrong), _pct(s.length_cut),
                       *(str(st.get(x, 0)) for x in ("pass", "fail", "unverifiable", "error")))
    out.print(detail)
    err.print("tokens: mean completion tokens (all, right, wrong samples); cut: finish_reason length; "
              "intervals: bootstrap over problems", markup=False)


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.0f}"


class _Progress:
    """A progress bar on stderr while samples arrive (silent when nothing is sampled)."""

    def __init__(self, name: str):
        self.name = name
        self.bar = None
        self.task = None

    def __enter__(self) -> _Progress:
        return self

    def update(self, p) -> None:
        if self.bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

            self.bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=err, transient=True)
            self.bar.start()
            self.task = self.bar.add_task(f"eval {self.name}", total=p.planned - p.already_done)
        self.bar.update(self.task, completed=p.received)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
