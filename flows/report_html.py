"""The HTML page and the Markdown funnel of `factory report` and of the flow's Prefect artifact:
pure functions, data in, text out (flows/report.py reads the lake into a `ReportData`).

    from flows.report_html import render_html, funnel_markdown
    page = render_html(collect_report(lake, "run-1"))   # one self-contained HTML page
    md = funnel_markdown(summary)                      # the runs.counts shape, as Markdown

The page has no external scripts, fonts or images: charts are inline SVG (`svg_bars`,
`svg_histogram`, `svg_lines`), the style inline CSS, and every dynamic text is escaped here, so
callers pass raw values. Funnel rows and their stages come from factory/funnel.py, the stage
names from factory/stages.py.
"""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING, Any

from factory.funnel import ROW_STAGE, ROWS
from factory.stages import STAGES

if TYPE_CHECKING:
    from flows.report import ReportData

# What a funnel row counts: "of previous" is only shown within one unit (problems fan out into
# requests, so a ratio across units is no yield).
FUNNEL_UNIT = {"problems": "problems", "decontaminated": "problems"}
MIN_BUCKET = 5  # accuracy-vs-length points from fewer responses are left out of the chart
MAX_REJECT_ROWS = 40  # rejects table: the most frequent (check, status, reason) rows
MAX_LINE_POINTS = 1500  # a training curve is thinned to this many points (SVG size)


# -- rendering: text helpers --------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(x: Any) -> str:
    """Numbers for people: thousands separators, three significant digits, 1e-05 for lr."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        if x == int(x) and abs(x) < 1e15:
            return f"{int(x):,}"
        if abs(x) != 0 and (abs(x) < 1e-3 or abs(x) >= 1e6):
            return f"{x:.2e}"
        return f"{x:,.3g}" if abs(x) < 1000 else f"{x:,.0f}"
    return str(x)


def _pct(num: float, den: float) -> str:
    return "—" if not den else f"{100 * num / den:.1f}%"


def _seconds(s: Any) -> str:
    if s is None:
        return "—"
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60)} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"


def _table(head: list[str], rows: list[list[Any]], numeric_from: int = 1) -> str:
    """An HTML table; cells are escaped here, so callers pass raw values."""
    th = "".join(f'<th class="{"num" if i >= numeric_from else ""}">{_e(h)}</th>' for i, h in enumerate(head))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"num" if i >= numeric_from else ""}">{_e(c)}</td>' for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


# -- rendering: SVG charts ----------------------------------------------------------------

_PALETTE = ("#2f6fb0", "#d9822b", "#3a9b5c", "#b8433f", "#7d5ba6", "#8c6d3f", "#c05f9e", "#6b7b8c")


def _nice_step(raw: float) -> float:
    """The smallest 1, 2, 2.5 or 5 x 10^k at least `raw` (integers stay integers from 1 up)."""
    raw = max(raw, 1e-12)
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round numbers covering [lo, hi] (1, 2, 5 x 10^k steps)."""
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    step = _nice_step((hi - lo) / max(n - 1, 1))
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t < hi + step * 0.999:
        ticks.append(round(t, 12))
        t += step
    return ticks


def svg_bars(items: list[tuple[str, float, str]], *, max_value: float | None = None, width: int = 640) -> str:
    """Horizontal bars: (label, value, text shown after the bar)."""
    if not items:
        return ""
    row, label_w, text_w = 24, 170, 150
    top = max_value if max_value is not None else max((v for _, v, _ in items), default=0) or 1
    bar_w = width - label_w - text_w
    parts = [f'<svg class="chart" width="{width}" height="{row * len(items) + 8}" viewBox="0 0 {width} {row * len(items) + 8}" role="img">']
    for i, (label, value, text) in enumerate(items):
        y = 4 + i * row
        w = 0 if top <= 0 else max(bar_w * min(value / top, 1.0), 0)
        parts.append(f'<text x="{label_w - 8}" y="{y + 16}" text-anchor="end" class="lbl">{_e(_clip(label, 26))}<title>{_e(label)}</title></text>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{bar_w}" height="{row - 8}" class="track"/>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 8}" fill="{_PALETTE[0]}"/>')
        parts.append(f'<text x="{label_w + bar_w + 8}" y="{y + 16}" class="val">{_e(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_histogram(bins: list[dict[str, Any]], unit: str, *, width: int = 640, height: int = 240) -> str:
    """Stacked vertical bars per bin: passed (green) under the rest (grey)."""
    if not bins:
        return ""
    left, right, top, bottom = 56, 12, 12, 44
    pw, ph = width - left - right, height - top - bottom
    peak = max(b["passed"] + b["other"] for b in bins) or 1
    ticks = _nice_ticks(0, peak, 4)
    ymax = ticks[-1]
    bw = pw / len(bins)
    parts = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">']
    for t in ticks:
        y = top + ph - ph * t / ymax
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{_e(_fmt(t))}</text>')
    for i, b in enumerate(bins):
        x = left + i * bw
        hp = ph * b["passed"] / ymax
        ho = ph * b["other"] / ymax
        tip = f'{_fmt(b["lo"])}–{_fmt(b["hi"])} {unit}: {b["passed"]} passed, {b["other"]} not'
        parts.append(f'<g><title>{_e(tip)}</title>')
        parts.append(f'<rect x="{x + 1:.1f}" y="{top + ph - hp:.1f}" width="{max(bw - 2, 1):.1f}" height="{hp:.1f}" fill="{_PALETTE[2]}"/>')
        parts.append(f'<rect x="{x + 1:.1f}" y="{top + ph - hp - ho:.1f}" width="{max(bw - 2, 1):.1f}" height="{ho:.1f}" fill="#b9c2cc"/></g>')
    step = max(1, math.ceil(len(bins) / 6))
    for i in range(0, len(bins) + 1, step):
        x = left + i * bw
        value = bins[0]["lo"] + i * (bins[0]["hi"] - bins[0]["lo"])
        parts.append(f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle" class="tick">{_e(_fmt(value))}</text>')
    parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" class="axis"/>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle" class="lbl">{_e(unit)}</text>')
    parts.append(f'<rect x="{left + pw - 150}" y="{top}" width="10" height="10" fill="{_PALETTE[2]}"/>'
                 f'<text x="{left + pw - 136}" y="{top + 9}" class="tick">passed</text>')
    parts.append(f'<rect x="{left + pw - 90}" y="{top}" width="10" height="10" fill="#b9c2cc"/>'
                 f'<text x="{left + pw - 76}" y="{top + 9}" class="tick">not passed</text>')
    parts.append("</svg>")
    return "".join(parts)


def _thin(points: list[tuple[float, float]], limit: int = MAX_LINE_POINTS) -> list[tuple[float, float]]:
    if len(points) <= limit:
        return points
    stride = math.ceil(len(points) / limit)
    return points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


def svg_lines(
    series: dict[str, list[tuple[float, float]]],
    *,
    x_label: str = "",
    y_range: tuple[float, float] | None = None,
    x_ticks: dict[float, str] | None = None,
    width: int = 340,
    height: int = 200,
    percent: bool = False,
) -> str:
    """One or more (x, y) series as lines (with dots when short) on shared axes."""
    series = {k: sorted(_thin(v)) for k, v in series.items() if v}
    if not series:
        return ""
    left, right, top, bottom = 58, 12, 10, 36 if not x_label else 44
    legend = len(series) > 1
    lh = 16 * len(series) if legend else 0
    height += lh
    pw, ph = width - left - right, height - top - bottom - lh
    xs = [x for v in series.values() for x, _ in v]
    ys = [y for v in series.values() for _, y in v]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    y0, y1 = y_range if y_range else (min(ys), max(ys))
    yt = _nice_ticks(y0, y1, 4)
    if not y_range:
        y0, y1 = yt[0], yt[-1]
    else:
        yt = [t for t in yt if y0 <= t <= y1]

    def px(x: float) -> float:
        return left + pw * (x - x0) / (x1 - x0)

    def py(y: float) -> float:
        return top + ph - ph * (y - y0) / ((y1 - y0) or 1)

    parts = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">']
    for t in yt:
        label = f"{100 * t:.0f}%" if percent else _fmt(t)
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{py(t):.1f}" y2="{py(t):.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{py(t) + 4:.1f}" text-anchor="end" class="tick">{_e(label)}</text>')
    xt = {t: label for t, label in (x_ticks or {t: _fmt(t) for t in _nice_ticks(x0, x1, 5)}).items() if x0 <= t <= x1}
    for t, label in xt.items():
        parts.append(f'<text x="{px(t):.1f}" y="{top + ph + 16}" text-anchor="middle" class="tick">{_e(label)}</text>')
    parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" class="axis"/>')
    parts.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}" class="axis"/>')
    if x_label:
        parts.append(f'<text x="{left + pw / 2}" y="{top + ph + 34}" text-anchor="middle" class="lbl">{_e(x_label)}</text>')
    for i, (name, pts) in enumerate(series.items()):
        color = _PALETTE[i % len(_PALETTE)]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.6"><title>{_e(name)}</title></polyline>')
        if len(pts) <= 40:
            parts.extend(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.6" fill="{color}"><title>{_e(name)}: {_e(_fmt(x))}, {_e(_fmt(y))}</title></circle>'
                for x, y in pts
            )
        if legend:
            ly = height - lh + 16 * i + 4
            parts.append(f'<rect x="{left}" y="{ly}" width="10" height="10" fill="{color}"/>')
            parts.append(f'<text x="{left + 16}" y="{ly + 9}" class="tick">{_e(_clip(name, 48))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _clip(text: str, n: int) -> str:
    text = str(text)
    return text if len(text) <= n else text[: n - 1] + "…"


# -- rendering: the page ------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1d2733;margin:0;background:#f4f6f8}
main{max-width:1120px;margin:0 auto;padding:20px 28px 60px}
h1{font-size:24px;margin:8px 0 2px}h2{font-size:18px;margin:30px 0 8px;border-bottom:1px solid #d5dbe1;padding-bottom:4px}
h3{font-size:14px;margin:16px 0 6px;color:#3a4653}
.sub{color:#5b6773;margin:0 0 12px}.note{color:#5b6773;font-size:12.5px;margin:4px 0 10px}
section{background:#fff;border:1px solid #dde2e7;border-radius:6px;padding:4px 18px 14px;margin:18px 0}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
th,td{padding:3px 10px;border-bottom:1px solid #e6e9ed;text-align:left;vertical-align:top}
th{background:#f0f3f6;font-weight:600}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td{max-width:520px;overflow-wrap:anywhere}
.kpis{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}
.kpi{background:#f0f3f6;border-radius:5px;padding:6px 12px;flex:1 1 0;min-width:90px}
.kpi b{display:block;font-size:18px}.kpi span{color:#5b6773;font-size:12px}
.grid2{display:flex;flex-wrap:wrap;gap:8px 24px}.cell{flex:0 0 auto}
.stages{display:flex;flex-wrap:wrap;gap:4px;margin:8px 0 2px;padding:0;list-style:none}
.stages li{background:#e6eef7;border-radius:12px;padding:2px 10px;font-size:12.5px}
.stages li.none{background:#eef0f2;color:#7a848e}
svg.chart{display:block;overflow:visible}
svg .lbl{font-size:12px;fill:#2d3845}svg .val,svg .tick{font-size:11px;fill:#4d5966}
svg .grid{stroke:#e8ebee}svg .axis{stroke:#9aa5b0}svg .track{fill:#eef1f4}
pre{background:#f6f8fa;padding:8px;overflow:auto;font-size:12px;max-height:220px}
"""


def render_html(data: ReportData) -> str:
    """The whole page as one string: inline CSS and SVG, every dynamic text escaped."""
    scope = data.scope
    counts = data.counts or {}
    body = [
        f"<h1>Reasoning Factory report: {_e(scope.label)}</h1>",
        f'<p class="sub">Generated {_e(data.generated_at)}. Funnel {_e(data.counts_from or "not available")}.</p>',
    ]
    body += [f'<p class="note">{_e(n)}</p>' for n in data.notes]
    body.append(_kpis(counts, data))
    body.append(_funnel_section(counts, data))
    body.append(_runs_section(data))
    body.append(_pass_section(data))
    body.append(_rejects_section(data, counts))
    if data.reviews:
        body.append(_reviews_section(data.reviews))
    if data.evals:
        body.append(_evals_section(data))
    if data.metrics:
        body.append(_metrics_section(data))
    title = f"Reasoning Factory report: {scope.label}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )


def _funnel(counts: dict[str, Any]) -> list[tuple[str, int]]:
    out = []
    for row in counts.get("funnel") or []:
        if isinstance(row, dict) and "stage" in row:
            out.append((str(row["stage"]), _int(row.get("count"))))
    return out


def _int(x: Any) -> int:
    try:
        return int(x)
    except (TypeError, ValueError):
        return 0


def _kpis(counts: dict[str, Any], data: ReportData) -> str:
    funnel = dict(_funnel(counts))
    tokens = counts.get("tokens") or {}
    seconds = counts.get("seconds") or {}
    total_s = sum(float(v) for v in seconds.values() if isinstance(v, (int, float))) if isinstance(seconds, dict) else 0
    if not total_s:
        spans = [(r["finished_at"] - r["started_at"]).total_seconds() for r in data.runs if r.get("started_at") and r.get("finished_at")]
        total_s = sum(spans)
    first = next(iter(funnel.values()), 0)
    items = [
        ("problems", _fmt(funnel.get("problems", first))),
        ("samples", _fmt(funnel.get("samples", 0))),
        ("in dataset", _fmt(funnel.get("dataset", 0))),
        ("yield: dataset / samples", _pct(funnel.get("dataset", 0), funnel.get("samples", 0))),
        ("prompt tokens", _fmt(_int(tokens.get("prompt")))),
        ("completion tokens", _fmt(_int(tokens.get("completion")))),
        ("cost", f"${float(counts.get('cost_usd') or 0):,.2f}"),
        ("time", _seconds(total_s) if total_s else "—"),
    ]
    return '<div class="kpis">' + "".join(f'<div class="kpi"><b>{_e(v)}</b><span>{_e(k)}</span></div>' for k, v in items) + "</div>"


def _funnel_section(counts: dict[str, Any], data: ReportData) -> str:
    funnel = _funnel(counts)
    seconds = counts.get("seconds") if isinstance(counts.get("seconds"), dict) else {}
    parts = ['<section id="funnel"><h2>Yield funnel</h2>']
    parts.append(
        '<p class="note">The flow\'s stages, in order; a stage without a figure below ran no work in this scope '
        "or did not report it.</p><ul class=\"stages\">"
        + "".join(
            f'<li class="{"" if _stage_has_data(s, funnel, seconds) else "none"}">{i + 1}. {_e(s)}</li>' for i, s in enumerate(STAGES)
        )
        + "</ul>"
    )
    if not funnel:
        parts.append('<p class="note">No funnel: no samples or run counts in this scope.</p></section>')
        return "".join(parts)
    top = max((c for _, c in funnel), default=0) or 1
    ratios = _ratios(funnel)
    items = [(name, count, _fmt(count) + (f"  ({ratio} of previous)" if ratio else "")) for (name, count), ratio in zip(funnel, ratios)]
    parts.append(svg_bars(items, max_value=top, width=720))
    rows, timed = [], set()
    for (name, count), ratio in zip(funnel, ratios):
        stage = ROW_STAGE.get(name, "")
        # A stage's time once, on its first row (sample makes both requests and samples).
        time = _seconds(seconds[stage]) if stage in seconds and stage not in timed else "" if stage in timed else "—"
        timed.add(stage)
        rows.append([name, stage or "—", _fmt(count), ratio, time])
    parts.append(_table(["output", "stage", "count", "of previous", "stage time"], rows, numeric_from=2))
    rejects = counts.get("rejects") if isinstance(counts.get("rejects"), dict) else {}
    if rejects:
        listed = ", ".join(f"{k} {_fmt(_int(v))}" for k, v in sorted(rejects.items(), key=lambda kv: -_int(kv[1])))
        parts.append(f'<p class="note">Rejected samples by check (verify and filter): {_e(listed)}. Reasons: see <a href="#rejects">Rejects</a>.</p>')
    extra = {k: v for k, v in seconds.items() if k not in ROW_STAGE.values()}
    if extra:
        parts.append(_table(["other stage", "time"], [[k, _seconds(v)] for k, v in extra.items()]))
    by_source = counts.get("by_source") if isinstance(counts.get("by_source"), dict) else {}
    if by_source:
        keys = [k for k in ROWS if any(isinstance(v, dict) and k in v for v in by_source.values())]
        keys += sorted({k for v in by_source.values() if isinstance(v, dict) for k in v} - set(keys))
        rows = [[src] + [_fmt(v.get(k)) if isinstance(v, dict) else "—" for k in keys] for src, v in sorted(by_source.items())]
        parts.append("<h3>By source</h3>" + _table(["source"] + keys, rows))
    parts.append("</section>")
    return "".join(parts)


def _ratios(funnel: list[tuple[str, int]]) -> list[str]:
    """Each row's share of the row before it, when both count the same thing."""
    out, prev = [], None
    for name, count in funnel:
        unit = FUNNEL_UNIT.get(name, "samples")
        out.append(_pct(count, prev[1]) if prev is not None and prev[0] == unit else "")
        prev = (unit, count)
    return out


def _stage_has_data(stage: str, funnel: list[tuple[str, int]], seconds: dict[str, Any]) -> bool:
    return stage in seconds or any(ROW_STAGE.get(name) == stage for name, _ in funnel)


def _runs_section(data: ReportData) -> str:
    scope = data.scope
    parts = []
    if scope.dataset is not None:
        ds = scope.dataset
        rows = [[k, ds.get(k)] for k in ("name", "version", "row_count", "snapshot_id", "recipe_hash", "run_id", "description", "created_at")]
        parts.append(
            '<section id="dataset"><h2>Dataset</h2>'
            + _table(["field", "value"], rows, numeric_from=9)
            + f"<h3>Defining SELECT</h3><pre>{_e(ds.get('sql'))}</pre>"
            + f'<p class="note">Rows come from run(s): {_e(", ".join(scope.run_ids or []) or "unknown")}</p></section>'
        )
    if data.runs:
        rows = []
        for r in data.runs:
            span = (r["finished_at"] - r["started_at"]).total_seconds() if r.get("started_at") and r.get("finished_at") else None
            parsed = r.get("counts_parsed") or {}
            in_ds = dict(_funnel(parsed)).get("dataset")
            rows.append([
                r["run_id"], r["status"], str(r["started_at"])[:19] if r.get("started_at") else "—",
                _seconds(span), _fmt(in_ds), "—" if r.get("cost_usd") is None else f"${float(r['cost_usd']):,.2f}", r.get("recipe_hash") or "—",
            ])
        head = ["run", "status", "started", "time", "in dataset", "cost", "recipe hash"]
        parts.append('<section id="runs"><h2>Runs</h2>' + _table(head, rows, numeric_from=3) + "</section>")
    return "".join(parts)


def _pass_section(data: ReportData) -> str:
    parts = ['<section id="pass"><h2>Pass rates and reasoning length</h2>',
             '<p class="note">A sample passes when all its verdicts (verify and filter) are pass; rates are over the samples that have verdicts.</p>']

    def block(title: str, rows: list[dict[str, Any]]) -> str:
        if not rows:
            return f"<div class=\"cell\"><h3>{_e(title)}</h3><p class=\"note\">No samples.</p></div>"
        items = [(str(r["label"]), (r["passed"] / r["checked"]) if r["checked"] else 0.0,
                  f'{_pct(r["passed"], r["checked"])}  ({r["passed"]}/{r["checked"]})') for r in rows]
        table = _table([title.split(" by ")[-1], "samples", "checked", "passed", "pass rate"],
                       [[r["label"], _fmt(r["samples"]), _fmt(r["checked"]), _fmt(r["passed"]), _pct(r["passed"], r["checked"])] for r in rows])
        return f'<div class="cell"><h3>{_e(title)}</h3>{svg_bars(items, max_value=1.0, width=520)}{table}</div>'

    parts.append('<div class="grid2">' + block("Pass rate by source", data.pass_by_source)
                 + block("Pass rate by difficulty", data.pass_by_difficulty) + "</div>")
    parts.append(f"<h3>Reasoning length ({_e(data.length_unit)})</h3>")
    if data.lengths:
        n = sum(b["passed"] + b["other"] for b in data.lengths)
        parts.append(svg_histogram(data.lengths, data.length_unit, width=720))
        what = "samples.completion_tokens" if data.length_unit == "tokens" else "characters of samples.reasoning (no token counts stored)"
        parts.append(f'<p class="note">{_fmt(n)} samples; {what}.</p>')
    else:
        parts.append('<p class="note">No samples with a length.</p>')
    if data.finish_reasons:
        totals: dict[str, int] = {}
        for r in data.finish_reasons:
            totals[r["source"]] = totals.get(r["source"], 0) + r["samples"]
        parts.append('<h3 id="finish-reasons">Finish reasons</h3>')
        parts.append(_table(["source", "finish reason", "samples", "share of source", "checked", "passed", "pass rate"],
                            [[r["source"], r["finish_reason"], _fmt(r["samples"]), _pct(r["samples"], totals[r["source"]]), _fmt(r["checked"]),
                              _fmt(r["passed"]), _pct(r["passed"], r["checked"])] for r in data.finish_reasons], numeric_from=2))
        parts.append('<p class="note">"length": the teacher stopped at max_tokens, so the trace has no final answer; '
                     "many of them means the budget is too short for these problems.</p>")
    parts.append("</section>")
    return "".join(parts)


def _rejects_section(data: ReportData, counts: dict[str, Any]) -> str:
    parts = ['<section id="rejects"><h2>Rejects by check and reason</h2>']
    by_check = counts.get("rejects") if isinstance(counts.get("rejects"), dict) else {}
    if by_check:
        items = [(str(k), float(_int(v)), _fmt(_int(v))) for k, v in sorted(by_check.items(), key=lambda kv: -_int(kv[1]))]
        parts.append("<h3>Rejected samples by check</h3>" + svg_bars(items, width=720))
    if data.rejects:
        parts.append(f"<h3>Most frequent reasons (verdicts that did not pass: fail, unverifiable, error; top {MAX_REJECT_ROWS})</h3>")
        parts.append(_table(["check", "status", "reason", "count"],
                            [[r["check"], r["status"], r["reason"] or "(no reason)", _fmt(r["count"])] for r in data.rejects], numeric_from=3))
    if not by_check and not data.rejects:
        parts.append('<p class="note">No rejected verdicts in this scope.</p>')
    parts.append("</section>")
    return "".join(parts)


def _reviews_section(reviews: dict[str, Any]) -> str:
    """Reviewers against the machines: the verifier's agreement with reviewers, and the precision
    of decontamination from reviewed hits (`factory view` writes the reviews)."""
    parts = ['<section id="reviews"><h2>Reviews</h2>']
    agree = reviews["agreement"]
    if agree["all"][1]:
        lines = []
        for key, what in (("all", "all reviewed samples"), ("drawn", "samples drawn for review (a seeded random sample: unbiased)")):
            a, n = agree[key]
            lines.append(f"<li>{_e(what)}: {_pct(a, n) if n else '—'} ({_fmt(a)} of {_fmt(n)})</li>")
        parts.append("<h3>Verifier agreement with reviewers</h3><p class=\"note\">Samples with verifier verdicts that a reviewer marked right, "
                     "wrong or hacked; they agree when the sample was verified exactly when it was marked right.</p><ul>" + "".join(lines) + "</ul>")
    if reviews["samples"]:
        rows = [["verified" if r["verified"] else "not verified" if r["checked"] else "no verdicts", r["label"],
                 "drawn" if r["drawn"] else "browsed", _fmt(r["n"])] for r in reviews["samples"]]
        parts.append("<h3>Reviewed samples</h3>" + _table(["verifier", "reviewer", "how found", "samples"], rows, numeric_from=3))
    if reviews["contamination"]:
        rows = []
        for bench, c in sorted(reviews["contamination"].items()):
            n = c.get("true", 0) + c.get("false", 0)
            rows.append([bench, _fmt(c.get("true", 0)), _fmt(c.get("false", 0)), _pct(c.get("true", 0), n) if n else "—"])
        parts.append("<h3>Decontamination precision from reviewed hits</h3>"
                     + _table(["benchmark", "true hits", "false positives", "precision"], rows))
    parts.append("</section>")
    return "".join(parts)


def _evals_section(data: ReportData) -> str:
    models = sorted({r["model"] for r in data.evals})
    benches = sorted({r["benchmark"] for r in data.evals})
    cell = {(r["model"], r["benchmark"]): r for r in data.evals}
    rows = []
    for m in models:
        row: list[Any] = [m]
        for b in benches:
            r = cell.get((m, b))
            row.append("—" if r is None else f'{100 * float(r["accuracy"]):.1f}%  (n={r["n"]}, {r["items"]} items)')
        rows.append(row)
    parts = [
        '<section id="evals"><h2>Evaluations</h2>',
        '<p class="note">pass@1 = mean of `correct` over every sampled response (n responses over the items); all evals in the lake.</p>',
        _table(["model"] + benches, rows),
    ]
    settings = {r["benchmark"]: r for r in data.evals if " (setting " in r["benchmark"]}
    if settings:
        parts.append('<p class="note">Sets evaluated under more than one prompt or sampling get a column each:</p><ul class="note">')
        for name in sorted(settings):
            r = settings[name]
            parts.append(f'<li>{_e(name)}: prompt {_e(_clip(r["prompt_format"], 120))!s}; sampling {_e(r["sampling"] or "—")}</li>')
        parts.append("</ul>")
    if data.eval_lengths:
        ks = sorted({r["k"] for r in data.eval_lengths})
        series: dict[str, list[tuple[float, float]]] = {}
        for r in data.eval_lengths:
            if r["n"] >= MIN_BUCKET:
                series.setdefault(r["model"], []).append((float(r["k"]), float(r["accuracy"])))
        ticks = {float(k): _fmt(2**k) for k in ks}
        parts.append("<h3>Accuracy vs response length</h3>")
        parts.append(f'<p class="note">Points from fewer than {MIN_BUCKET} responses are left out of the chart (they are in the table).</p>')
        parts.append(svg_lines(series, x_label="completion tokens (power-of-two buckets, lower edge)", y_range=(0.0, 1.0), x_ticks=ticks,
                               width=720, height=260, percent=True))
        cells = {(r["k"], r["model"]): r for r in data.eval_lengths}
        models_l = sorted({r["model"] for r in data.eval_lengths})
        rows = []
        for k in ks:
            row: list[Any] = [f"{_fmt(0 if k == 0 else 2**k)}–{_fmt(2 ** (k + 1) - 1)}"]
            for m in models_l:
                r = cells.get((k, m))
                row.append("—" if r is None else f'{_pct(float(r["accuracy"]), 1)}  (n={r["n"]})')
            rows.append(row)
        parts.append(_table(["completion tokens"] + models_l, rows))
    parts.append("</section>")
    return "".join(parts)


def _metrics_section(data: ReportData) -> str:
    parts = ['<section id="training"><h2>Training curves</h2>']
    for mf in data.metrics:
        parts.append(f"<h3>{_e(mf.path)}</h3>")
        if mf.skipped:
            parts.append(f'<p class="note">Not plotted (not numeric): {_e(", ".join(mf.skipped))}</p>')
        if not mf.series:
            parts.append('<p class="note">No numeric values.</p>')
            continue
        cells = []
        for name, pts in mf.series.items():
            last = pts[-1][1]
            cells.append(f'<div class="cell"><h3>{_e(name)} <span class="note">last {_e(_fmt(last))}</span></h3>{svg_lines({name: pts}, x_label="step")}</div>')
        parts.append('<div class="grid2">' + "".join(cells) + "</div>")
    parts.append("</section>")
    return "".join(parts)


def funnel_markdown(counts: dict[str, Any]) -> str:
    """The yield funnel as Markdown (the flow's Prefect artifact): stages, per source, rejects,
    tokens, cost and time. `counts` has the runs.counts shape:
    {"funnel": [{"stage", "count"}...], "by_source": {src: {stage: n}}, "rejects": {check: n},
     "tokens": {"prompt", "completion"}, "cost_usd": x, "seconds": {stage: s}}."""

    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    funnel = _funnel(counts)
    seconds = counts.get("seconds") if isinstance(counts.get("seconds"), dict) else {}
    lines = ["## Yield funnel", "", "| output | stage | count | of previous | stage time |", "|---|---|---:|---:|---:|"]
    timed: set[str] = set()
    for (name, count), ratio in zip(funnel, _ratios(funnel)):
        stage = ROW_STAGE.get(name, "")
        t = _seconds(seconds[stage]) if stage in seconds and stage not in timed else "" if stage in timed else "—"
        timed.add(stage)
        lines.append(f"| {cell(name)} | {cell(stage or '—')} | {count:,} | {ratio} | {t} |")
    by_source = counts.get("by_source") if isinstance(counts.get("by_source"), dict) else {}
    if by_source:
        keys = [k for k in ROWS if any(isinstance(v, dict) and k in v for v in by_source.values())]
        keys += sorted({k for v in by_source.values() if isinstance(v, dict) for k in v} - set(keys))
        lines += ["", "### By source", "", "| source | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
        for src, v in sorted(by_source.items()):
            lines.append(f"| {cell(src)} | " + " | ".join(_fmt(v.get(k)) if isinstance(v, dict) else "—" for k in keys) + " |")
    rejects = counts.get("rejects") if isinstance(counts.get("rejects"), dict) else {}
    if rejects:
        lines += ["", "### Rejects", "", "| check | samples |", "|---|---:|"]
        lines += [f"| {cell(k)} | {_int(v):,} |" for k, v in sorted(rejects.items(), key=lambda kv: -_int(kv[1]))]
    tokens = counts.get("tokens") if isinstance(counts.get("tokens"), dict) else {}
    total = sum(float(v) for v in seconds.values() if isinstance(v, (int, float)))
    lines += [
        "",
        (
            f"Tokens: {_int(tokens.get('prompt')):,} prompt, {_int(tokens.get('completion')):,} completion. "
            f"Cost: ${float(counts.get('cost_usd') or 0):,.2f}. Time: {_seconds(total) if total else '—'}."
        ),
    ]
    return "\n".join(lines) + "\n"
