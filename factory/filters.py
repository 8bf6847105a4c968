"""R1-style readability filters over samples: keep, or not keep with a reason.

DeepSeek-R1 dropped cold-start traces with mixed languages, long paragraphs and code blocks;
these filters catch those and the other usual defects of long chain-of-thought (a missing or
broken `<think>` block, repetition loops, truncation, length outside bounds). Each answers a
`Verdict` with check name `filter:<name>`: `pass` = keep, `fail` = drop (the reason says why,
and rejects are kept and counted by reason, as datatrove does), `unverifiable` = cannot tell
(e.g. no reasoning to measure). Thresholds live in `FilterConfig`.

    verdicts = apply_filters(sample_row, FilterConfig(), domain="math")
    keep = all(v.status != "fail" for v in verdicts)
"""

from __future__ import annotations

import re
from collections import Counter

from pydantic import BaseModel, ConfigDict, Field

from .verifiers.base import Verdict


class FilterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: tuple[str, ...] = ("think_format", "language", "repetition", "truncation", "length", "code_in_reasoning", "paragraphs")
    language: str = Field("en", description="target language: en (Latin script) or zh (CJK)")
    min_language_share: float = Field(0.95, ge=0, le=1, description="share of letters in the target script")
    ngram: int = Field(8, ge=2, description="words per n-gram for the repetition check")
    max_repeated_ngram_share: float = Field(0.3, ge=0, le=1)
    min_words: int = Field(1, ge=0)
    max_words: int = Field(32_000, ge=1)
    max_paragraph_words: int = Field(350, ge=1)
    code_domains: tuple[str, ...] = ("code",)


_FENCE = re.compile(r"```")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
_LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]")
_LATEX = re.compile(r"\\[a-zA-Z]+|\$[^$]*\$")


def _reasoning(sample: dict) -> str:
    return sample.get("reasoning") or ""


def check_think_format(sample: dict, cfg: FilterConfig) -> Verdict:
    """One `<think>...</think>` before the answer, with something inside (or reasoning given
    separately by the server)."""
    text = sample.get("completion") or ""
    opens, closes = text.count("<think>"), text.count("</think>")
    if opens == 0 and closes == 0:
        if _reasoning(sample).strip():
            return Verdict.passed("filter:think_format", reason="reasoning delivered separately")
        return Verdict.failed("filter:think_format", reason="no <think> block")
    if opens > 1 or closes > 1:
        return Verdict.failed("filter:think_format", reason=f"{opens} <think> and {closes} </think> tags")
    if closes == 0:
        return Verdict.failed("filter:think_format", reason="<think> is never closed")
    if opens == 1 and text.index("<think>") > text.index("</think>"):
        return Verdict.failed("filter:think_format", reason="</think> comes before <think>")
    if not _reasoning(sample).strip():
        return Verdict.failed("filter:think_format", reason="empty <think> block")
    return Verdict.passed("filter:think_format")


def check_language(sample: dict, cfg: FilterConfig) -> Verdict:
    text = _LATEX.sub(" ", _reasoning(sample) + " " + (sample.get("answer") or ""))
    cjk, latin = len(_CJK.findall(text)), len(_LATIN.findall(text))
    letters = cjk + latin
    if letters < 20:
        return Verdict.unverifiable("filter:language", "too few letters to tell the language")
    share = (latin if cfg.language == "en" else cjk) / letters
    if share < cfg.min_language_share:
        return Verdict.failed("filter:language",
                              reason=f"{share:.0%} of letters in the {cfg.language} script (< {cfg.min_language_share:.0%}): mixed languages")
    return Verdict.passed("filter:language", reason=f"{share:.0%} {cfg.language}")


def repeated_ngram_share(text: str, n: int) -> float:
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    counts = Counter(grams)
    return sum(c - 1 for c in counts.values() if c > 1) / len(grams)


def check_repetition(sample: dict, cfg: FilterConfig) -> Verdict:
    text = _reasoning(sample) or (sample.get("completion") or "")
    if len(text.split()) < cfg.ngram * 4:
        return Verdict.passed("filter:repetition", reason="too short to loop")
    share = repeated_ngram_share(text, cfg.ngram)
    if share > cfg.max_repeated_ngram_share:
        return Verdict.failed("filter:repetition", reason=f"{share:.0%} of {cfg.ngram}-word n-grams repeat: a loop")
    return Verdict.passed("filter:repetition", reason=f"{share:.0%} repeated")


def check_truncation(sample: dict, cfg: FilterConfig) -> Verdict:
    if sample.get("finish_reason") == "length":
        return Verdict.failed("filter:truncation", reason="cut at max_tokens (finish_reason=length)")
    text = sample.get("completion") or ""
    if "<think>" in text and "</think>" not in text:
        return Verdict.failed("filter:truncation", reason="reasoning never finished")
    if not (sample.get("answer") or "").strip():
        return Verdict.failed("filter:truncation", reason="no answer after the reasoning")
    return Verdict.passed("filter:truncation")


def check_length(sample: dict, cfg: FilterConfig) -> Verdict:
    words = len((sample.get("completion") or "").split())
    if words < cfg.min_words or words > cfg.max_words:
        return Verdict.failed("filter:length", reason=f"{words} words, outside [{cfg.min_words}, {cfg.max_words}]")
    return Verdict.passed("filter:length", reason=f"{words} words")


def check_code_in_reasoning(sample: dict, cfg: FilterConfig, domain: str | None = None) -> Verdict:
    if domain in cfg.code_domains:
        return Verdict.passed("filter:code_in_reasoning", reason=f"{domain} task: code allowed")
    fences = len(_FENCE.findall(_reasoning(sample)))
    if fences:
        return Verdict.failed("filter:code_in_reasoning", reason=f"{fences // 2 or 1} code block(s) in the reasoning of a {domain or 'non-code'} task")
    return Verdict.passed("filter:code_in_reasoning")


def check_paragraphs(sample: dict, cfg: FilterConfig) -> Verdict:
    paragraphs = [p for p in re.split(r"\n\s*\n", _reasoning(sample)) if p.strip()]
    longest = max((len(p.split()) for p in paragraphs), default=0)
    if longest > cfg.max_paragraph_words:
        return Verdict.failed("filter:paragraphs", reason=f"a paragraph of {longest} words (> {cfg.max_paragraph_words})")
    return Verdict.passed("filter:paragraphs", reason=f"longest paragraph {longest} words")


FILTERS = {
    "think_format": check_think_format,
    "language": check_language,
    "repetition": check_repetition,
    "truncation": check_truncation,
    "length": check_length,
    "code_in_reasoning": check_code_in_reasoning,
    "paragraphs": check_paragraphs,
}


def apply_filters(sample: dict, cfg: FilterConfig | None = None, domain: str | None = None) -> list[Verdict]:
    """Every enabled filter's verdict for one sample (a `samples` row or the same keys)."""
    cfg = cfg or FilterConfig()
    unknown = [n for n in cfg.enabled if n not in FILTERS]
    if unknown:
        raise ValueError(f"unknown filter(s) {unknown}; known: {sorted(FILTERS)}")
    out = []
    for name in cfg.enabled:
        fn = FILTERS[name]
        out.append(fn(sample, cfg, domain) if name == "code_in_reasoning" else fn(sample, cfg))
    return out
