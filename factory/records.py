"""Identity of records: text normalisation and the content hashes used as ids.

The same problem from two sources must be one problem, so a problem id is a hash of its
normalised text (Unicode NFKC, whitespace collapsed, case kept: case can change a math
problem's meaning).

    >>> problem_id("What is  1+1?\\n") == problem_id("What is 1+1?")
    True
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata

_WS = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    return _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def content_hash(*parts: object, length: int = 32) -> str:
    """A hex sha256 over the JSON form of `parts` (stable across processes and runs)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def problem_id(problem: str) -> str:
    return content_hash("problem", normalise_text(problem))
