"""Rule checks for answers that are not math expressions: exact, multiple choice, regex, and an
LLM-as-judge for answers no rule can check.

    verify_exact(completion, "Paris")                # normalised string equality
    verify_choice(completion, "C")                   # the last option letter the answer names
    verify_regex(completion, r"^\\d{4}-\\d{2}$")      # the extracted answer must match fully
    verify_regex_batch([(completion, pattern), ...], timeout_s=2)
    await verify_with_judge(completion, gold, teacher, question=...)

Each looks at the answer part of a completion: the text after the last `</think>` (the
reasoning is not the answer), and within it the last `\\boxed{}` or "answer is/Answer:" line
when there is one. Reading the answer is linear in the completion. A regex is the caller's own
pattern, which `re` may take forever on (`(a+)+$`): it runs in a worker process that is killed
after `timeout_s` (workers.py), and the verdict is then `unverifiable` with detail "timeout".
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from .base import Verdict
from .programs import source
from .workers import ScriptWorker, SharedPool, default_size

_BOXED = re.compile(r"\\boxed\s*\{")
_ANSWER_LINE = re.compile(r"(?:final answer|answer)\s*(?:is|:)\s*(.+)", re.I)


def answer_part(completion: str) -> str:
    """The text after the last `</think>`, or all of it."""
    return completion.rsplit("</think>", 1)[-1] if "</think>" in completion else completion


def _last_boxed(text: str) -> str | None:
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    i, depth = starts[-1], 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def extract_final(completion: str) -> str | None:
    """The final answer of a completion: last \\boxed{}, else the last 'answer is' line, else the
    last non-empty line of the answer part."""
    text = answer_part(completion).strip()
    if not text:
        return None
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    lines = _ANSWER_LINE.findall(text)
    if lines:
        return lines[-1].strip().rstrip(".")
    return text.splitlines()[-1].strip() or None


# `[^{}]`, not `[^}]`: with the latter each of 30,000 unclosed `\text{` scanned to the end (minutes).
_TEXT_RE = re.compile(r"\\text\{([^{}]*)\}")


def _norm(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).strip().lower()
    text = _TEXT_RE.sub(r"\1", text)
    text = re.sub(r"[\s$*`]+", " ", text).strip()
    return text.rstrip(".").strip()


def verify_exact(completion: str, gold: str) -> Verdict:
    if gold is None or not str(gold).strip():
        return Verdict.unverifiable("exact", "the reference answer is empty")
    got = extract_final(completion)
    if got is None:
        return Verdict.unverifiable("exact", "no answer found in the completion")
    if _norm(got) == _norm(str(gold)):
        return Verdict.passed("exact", got)
    return Verdict.failed("exact", got, f"expected {gold!r}")


_CHOICE = re.compile(r"(?<![A-Za-z])\(?([A-J])\)?(?![A-Za-z])")


def verify_choice(completion: str, gold: str, options: str = "ABCDEFGHIJ") -> Verdict:
    """Multiple choice: the gold is an option letter; the answer's last option letter counts."""
    g = str(gold or "").strip().strip("()").upper()
    if len(g) != 1 or g not in options:
        return Verdict.unverifiable("choice", f"the reference {gold!r} is not one of the options {options}")
    final = extract_final(completion) or ""
    letters = [m for m in _CHOICE.findall(final.upper()) if m in options]
    if not letters:
        return Verdict.unverifiable("choice", "no option letter in the answer", final or None)
    got = letters[-1]
    return Verdict.passed("choice", got) if got == g else Verdict.failed("choice", got, f"expected {g}")


REGEX_TIMEOUT_S = 5.0
REGEX_MEMORY_BYTES = 1 << 30
# The worker (programs/regex_worker.py): a fresh stdlib-only interpreter (workers.ScriptWorker),
# given its memory cap as an argument. A pattern such as `(a+)+$` backtracks exponentially in `re`
# and never returns to the interpreter loop, so no thread can stop it: only killing the process
# holds the timeout.


def _start_regex_worker() -> ScriptWorker:
    return ScriptWorker(source("regex_worker.py"), "regex", args=(str(REGEX_MEMORY_BYTES),))


_REGEX_POOL = SharedPool(_start_regex_worker, default_size, "regex")


def verify_regex(completion: str, pattern: str, *, timeout_s: float = REGEX_TIMEOUT_S) -> Verdict:
    """The extracted answer must match `pattern` in full. The match runs in a worker process that
    is killed after `timeout_s`: a pattern that backtracks without end gives `unverifiable` with
    detail "timeout", not a hung caller."""
    t0 = time.perf_counter()
    got = extract_final(completion)
    if got is None:
        return Verdict.unverifiable("regex", "no answer found in the completion")
    try:
        kind, info = _REGEX_POOL.get().call((pattern, got), timeout_s)
    except RuntimeError as exc:  # no worker could be started
        return Verdict.errored("regex", str(exc), got)
    el = time.perf_counter() - t0
    if kind == "match":
        return Verdict.passed("regex", got, elapsed_s=el)
    if kind == "no_match":
        return Verdict.failed("regex", got, f"does not match {pattern!r}", elapsed_s=el)
    if kind == "bad_pattern":
        return Verdict.unverifiable("regex", f"bad pattern {pattern!r}: {info}", elapsed_s=el)
    if kind in ("timeout", "crash"):
        return Verdict.unverifiable("regex", f"pattern {pattern!r}: {info}", got, detail=kind, elapsed_s=el)
    return Verdict.errored("regex", info or kind, got, elapsed_s=el)


def verify_regex_batch(pairs: Iterable[tuple[str, str]], *, timeout_s: float = REGEX_TIMEOUT_S) -> list[Verdict]:
    """`verify_regex` over (completion, pattern) pairs, in order, on the worker pool's processes
    side by side (so a few hostile patterns do not add up their timeouts)."""
    pairs = list(pairs)
    if len(pairs) <= 1:
        return [verify_regex(c, p, timeout_s=timeout_s) for c, p in pairs]
    workers = min(_REGEX_POOL.get().size, len(pairs))
    with ThreadPoolExecutor(workers, thread_name_prefix="regex") as ex:
        return list(ex.map(lambda cp: verify_regex(cp[0], cp[1], timeout_s=timeout_s), pairs))


def regex_worker_pids() -> list[int]:
    """Pids of the live regex worker processes (for tests)."""
    return _REGEX_POOL.pids()


JUDGE_PROMPT = """You are grading an answer against a reference. Reply with one line: VERDICT: CORRECT or VERDICT: INCORRECT.

Question: {question}
Reference answer: {gold}
Answer to grade: {answer}"""
_VERDICT = re.compile(r"VERDICT:\s*(CORRECT|INCORRECT)", re.I)


async def verify_with_judge(completion: str, gold: str, teacher, *, question: str = "", max_tokens: int = 512) -> Verdict:
    """Ask a teacher (any backend) whether the answer matches the reference. A judge that does
    not answer in the expected form gives `unverifiable`; a failed request gives `error`."""
    from ..teachers.base import RequestGroup, Sampling, TeacherError

    answer = answer_part(completion).strip()
    if not answer:
        return Verdict.unverifiable("judge", "no answer found in the completion")
    messages = ({"role": "user", "content": JUDGE_PROMPT.format(question=question, gold=gold, answer=answer)},)
    group = RequestGroup("judge", messages, Sampling(temperature=0.0, top_p=1.0, max_tokens=max_tokens), (0,))
    try:
        out = await teacher.generate(group)
    except TeacherError as exc:
        return Verdict.errored("judge", f"the judge failed: {exc}")
    if not out:
        return Verdict.errored("judge", "the judge returned no completion")
    found = _VERDICT.findall(answer_part(out[0].text))
    if not found:
        return Verdict.unverifiable("judge", "the judge gave no VERDICT line")
    ok = found[-1].upper() == "CORRECT"
    return Verdict.passed("judge", answer[:200]) if ok else Verdict.failed("judge", answer[:200], "the judge said INCORRECT")
