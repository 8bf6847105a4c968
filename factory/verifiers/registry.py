"""The verifiers by name: one batch function each, with one signature, for every caller.

    from factory.verifiers import Check, Options, verify
    verdicts = verify("math", [Check("... \\boxed{4}", reference="4")], Options(timeout_s=5))
    verify("code", [Check(completion, tests={"style": "stdio", "cases": [...]})], Options(workers=4))
    require_verifier("maths", "--verifier")    # BadInput: --verifier 'maths': expected one of math, ...

`VERIFIERS` is the one list of names: recipes (`verify:`), `factory verify --verifier`, the flow's
verify stage, GRPO's accuracy reward and `factory eval` all look a verifier up here. A `Check`
carries what any verifier reads (the completion, the reference answer or regex pattern, the code
tests); `Options` what a caller tunes (time limit, sandboxes side by side, a started sandbox).
A check that lacks what its verifier needs is `unverifiable` (never `fail`), with the caller's
reason (`Options.missing`) or a default one; the others run as one batch, in input order.

Not here: the generators' own checkers (countdown, sorting, ...: factory/questions, looked up
by the problem's metadata) and the readability filters (factory/filters.py, `FILTERS`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from storage.errors import BadInput

from .base import Verdict

if TYPE_CHECKING:
    from .sandbox import Sandbox


@dataclass(frozen=True)
class Check:
    """One completion to check and what its verifier compares it with."""

    completion: str
    reference: Any = None  # math, choice, exact: the gold answer; regex: the pattern
    tests: dict | None = None  # code: {"style": "asserts" | "stdio", ...} (factory/verifiers/code.py)


@dataclass(frozen=True)
class Options:
    """What a caller tunes; None means the verifier's own default."""

    timeout_s: float | None = None  # math and regex: per answer; code: per program run
    workers: int | None = None  # code: sandboxes side by side (default 2)
    sandbox: Sandbox | None = None  # code: a started sandbox that runs every check (eval keeps a few alive)
    missing: str | None = None  # the reason of the `unverifiable` verdict of a check without its reference/tests


def check_math(checks: Sequence[Check], options: Options) -> list[Verdict]:
    from .math import verify_math_batch

    kw = {"timeout_s": options.timeout_s} if options.timeout_s else {}
    return verify_math_batch([(c.completion, c.reference) for c in checks], **kw)


def check_code(checks: Sequence[Check], options: Options) -> list[Verdict]:
    from .code import verify_code, verify_code_batch
    from .sandbox import SandboxConfig

    if options.sandbox is not None:
        return [verify_code(c.completion, c.tests or {}, sandbox=options.sandbox) for c in checks]
    config = SandboxConfig(timeout_s=options.timeout_s) if options.timeout_s else None
    kw = {"workers": options.workers} if options.workers else {}
    return verify_code_batch([(c.completion, c.tests) for c in checks], config, **kw)


def check_regex(checks: Sequence[Check], options: Options) -> list[Verdict]:
    from .answers import verify_regex_batch

    kw = {"timeout_s": options.timeout_s} if options.timeout_s else {}
    return verify_regex_batch([(c.completion, str(c.reference)) for c in checks], **kw)


def check_choice(checks: Sequence[Check], options: Options) -> list[Verdict]:
    from .answers import verify_choice

    return [verify_choice(c.completion, str(c.reference)) for c in checks]


def check_exact(checks: Sequence[Check], options: Options) -> list[Verdict]:
    from .answers import verify_exact

    return [verify_exact(c.completion, str(c.reference)) for c in checks]


@dataclass(frozen=True)
class Verifier:
    """A batch function and the field a `factory verify` row gives it (`needs`)."""

    run: Callable[[Sequence[Check], Options], list[Verdict]]
    needs: Literal["reference_answer", "pattern", "tests"] = "reference_answer"


VERIFIERS: dict[str, Verifier] = {
    "math": Verifier(check_math),
    "code": Verifier(check_code, "tests"),
    "choice": Verifier(check_choice),
    "exact": Verifier(check_exact),
    "regex": Verifier(check_regex, "pattern"),
}


def require_verifier(name: str, field: str = "verifier") -> Verifier:
    """The verifier called `name`, or BadInput naming `field` and the known names."""
    if name not in VERIFIERS:
        raise BadInput(f"{field} {name!r}: expected one of {', '.join(VERIFIERS)}")
    return VERIFIERS[name]


def _lacks(check: Check, verifier: Verifier) -> bool:
    return not check.tests if verifier.needs == "tests" else check.reference is None


def verify(name: str, checks: Sequence[Check], options: Options | None = None) -> list[Verdict]:
    """The verdict of each check by the verifier `name`, in input order. A check without its
    reference (or, for code, its tests) is `unverifiable`; the rest run as one batch."""
    verifier = require_verifier(name)
    options = options or Options()
    out: list[Verdict | None] = [None] * len(checks)
    todo = []
    for i, c in enumerate(checks):
        if _lacks(c, verifier):
            default = "no tests" if verifier.needs == "tests" else "no reference answer"
            out[i] = Verdict.unverifiable(name, options.missing or default)
        else:
            todo.append(i)
    if todo:
        for i, v in zip(todo, verifier.run([checks[i] for i in todo], options), strict=True):
            out[i] = v
    return out  # type: ignore[return-value]
