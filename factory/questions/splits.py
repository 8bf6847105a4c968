"""Held-out splits: which side of a train/test split a problem is on, by a hash of its text.

    from factory.questions.splits import split_of, generate_split
    split_of("What is 3 + 4?")                    # "train" or "test", the same everywhere, always
    rows = generate_split("addition", count=200, difficulty=2, split="test")   # 200 distinct test-side rows

The rule: a problem's position is the first 8 bytes of blake2b over its normalised text (the
text `records.problem_id` hashes: NFKC, whitespace runs as one space, stripped), read as a
number in [0, 1); a problem is on the test side when its position is below `test_share`, else
on the train side. Nothing else goes in: not the generator, its seed or difficulty, nor the
file the problem came from. So the same problem is on the same side in every recipe, seed
file, generator seed and eval, and a recipe's `split: train` source and an eval's
`--split test` never share a problem, by construction. The sides nest: the test side at share
0.2 is inside the test side at 0.3; the train and test sides are disjoint when the eval's
share is at most the training recipe's (use the same share on both).

`generate_split` draws a generator's items 0, 1, 2, ... (as `generate` makes them) and keeps
the distinct problems on the wanted side until it has `count`; a family too small for that
(one-digit addition has 81 problems, about 16 of them on the test side) raises BadInput
naming the count and how many distinct ones it found. It stops looking after `stall` draws in
a row bring nothing new, so an exhausted family costs about a second, not forever.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Literal

from storage.errors import BadInput

from ..records import normalise_text

Split = Literal["all", "train", "test"]
SPLITS: tuple[str, ...] = ("all", "train", "test")
DEFAULT_TEST_SHARE = 0.2
_PERSON = b"factory-split"  # blake2b's personalisation: this hash is not any other hash of the text
MIN_STALL = 5000  # draws in a row with no new problem before a family counts as exhausted


def split_position(problem: str) -> float:
    """The problem's place in [0, 1): a stable hash of its normalised text."""
    digest = hashlib.blake2b(normalise_text(problem).encode("utf-8"), digest_size=8, person=_PERSON).digest()
    return int.from_bytes(digest, "big") / 2**64


def check_share(test_share: float, what: str = "test_share") -> float:
    if not isinstance(test_share, (int, float)) or isinstance(test_share, bool) or not 0.0 < test_share < 1.0:
        raise BadInput(f"{what} {test_share!r}: expected a share strictly between 0 and 1, e.g. 0.2")
    return float(test_share)


def split_of(problem: str, test_share: float = DEFAULT_TEST_SHARE) -> Literal["train", "test"]:
    """"test" when the problem's position is below `test_share`, else "train"."""
    return "test" if split_position(problem) < check_share(test_share) else "train"


def on_side(problem: str, split: str, test_share: float = DEFAULT_TEST_SHARE) -> bool:
    """Whether `problem` belongs to `split` ("all" holds every problem)."""
    if split == "all":
        return True
    if split not in SPLITS:
        raise BadInput(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    return split_of(problem, test_share) == split


def take_side(rows: Iterable[dict], count: int, split: str, test_share: float, *, stall: int | None = None) -> tuple[list[dict], int]:
    """The first `count` rows of `rows` (problems rows, in order) whose problem is on `split`,
    each problem once; and how many rows were drawn. Stops early, with fewer, when `stall` rows
    in a row bring no new problem (default max(MIN_STALL, 20 * count))."""
    stall = stall or max(MIN_STALL, 20 * count)
    seen: set[str] = set()
    kept: list[dict] = []
    drawn = since_new = 0
    for row in rows:
        drawn += 1
        since_new += 1
        pid = row["problem_id"]
        if pid not in seen:
            seen.add(pid)
            if on_side(row["problem"], split, test_share):
                kept.append(row)
                since_new = 0
                if len(kept) >= count:
                    break
        if since_new >= stall:
            break
    return kept, drawn


def generate_split(
    generator: str, *, count: int, difficulty: int = 2, seed: int = 0, split: str = "all",
    test_share: float = DEFAULT_TEST_SHARE, what: str = "count", where: str | None = None,
) -> list[dict]:
    """`count` distinct problems rows of `generator` on `split` (see the module docstring);
    BadInput naming `what` (the key or option that asked for `count`), after `where` (the
    source), when the family has fewer."""
    from .generators import generate

    if split != "all":
        check_share(test_share)
    cap = max(MIN_STALL, 20 * count) * max(count, 1)  # the draws `take_side` could ever need
    rows, drawn = take_side(generate(generator, count=cap, difficulty=difficulty, seed=seed), count, split, test_share)
    if len(rows) < count:
        side = "distinct problems" if split == "all" else f"distinct {split}-side problems (test_share {test_share:g})"
        raise BadInput(
            (f"{where}: " if where else "")
            + f"{what} {count}: generator {generator} at difficulty {difficulty} gave only {len(rows)} {side} in {drawn} draws; "
            f"expected {what} at most {len(rows)}, or a higher difficulty"
            + ("" if split == "all" else ", or another test_share (the same in the training recipe and the eval)")
        )
    return rows
