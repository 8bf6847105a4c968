"""flows/markup.py: model text as HTML for `factory view`. Math becomes MathML, Markdown becomes
HTML, and nothing a model writes becomes markup of its own: every output is parsed back and may
hold only the tags Markdown and the MathML allowlist make, with no attribute that loads, links
or runs anything."""

import json
import re
import time
from html.parser import HTMLParser
from importlib import resources

import pytest

from flows import markup
from flows.markup import render

MARKDOWN_TAGS = {"p", "br", "em", "strong", "code", "pre", "ul", "ol", "li", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "hr",
                 "table", "thead", "tbody", "tr", "th", "td"}


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag


def tags(page: str) -> list[tuple[str, dict]]:
    parser = _Tags()
    parser.feed(page)
    parser.close()
    return parser.tags


def assert_only_safe_markup(page: str):
    for tag, attrs in tags(page):
        assert tag in MARKDOWN_TAGS | markup._ELEMENTS, tag
        for name, value in attrs.items():
            allowed = markup._ATTRIBUTES | ({"class"} if tag in ("code", "pre") else set()) | ({"style"} if tag in ("th", "td") else set())
            assert name in allowed, (tag, name)
            if name == "style":
                assert re.fullmatch(r"text-align:(left|right|center)", value), value
            if name == "class":
                assert re.fullmatch(r"tex|as-written|language-[\w+-]+", value), value


def test_math_in_every_delimiter_becomes_mathml():
    page = render(r"So $x^2 = 4$, then $$\frac{1}{2}$$ and \(\sqrt{y}\) and \[a_1\] and"
                  "\n\\begin{align*}a&=1\\\\b&=2\\end{align*}")
    assert page.count("<math") == 5
    assert "<msup><mi>x</mi><mn>2</mn></msup>" in page
    assert '<math display="block"><mrow><mfrac>' in page and "<msqrt>" in page and "<msub>" in page and "<mtable" in page
    assert "$" not in page and "\\" not in page
    assert_only_safe_markup(page)


def test_money_stays_text():
    for text in ("It costs $5 and $6 today.", "from $5 to $10", "I had $5 today; $", "pay $ 5 now and $ later"):
        page = render(text)
        assert "<math" not in page, text
        assert page.count("$") == text.count("$"), text
    assert "<mi>$</mi><mn>15</mn>" in render(r"a cost of $\$15$ in all")  # an escaped dollar inside math is math


def test_no_math_inside_code():
    page = render("Use `$x$` here:\n\n```python\nprint('$y$ <b>')\n```\n")
    assert "<math" not in page
    assert "<code>$x$</code>" in page and "print('$y$ &lt;b&gt;')" in page
    assert '<code class="language-python">' in page


def test_markdown_keeps_its_useful_parts():
    page = render("**Step 1.** add\n- one\n- two\n\n| a | b |\n|---|---|\n| 1 | $2$ |\n\nline one\nline two")
    assert "<strong>Step 1.</strong>" in page and page.count("<li>") == 2 and "<table>" in page and "<br />" in page
    assert_only_safe_markup(page)


HOSTILE = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(2)>",
    "[click](javascript:alert(3)) and [site](http://evil.example/)",
    "![pixel](http://evil.example/p.png)",
    "<http://evil.example/> and <mailto:a@b.c>",
    "[ref]: http://evil.example/\n\nhidden [ref]",
    "<!-- hidden --> visible",
    "```\n</code></pre><script>alert(4)</script>\n```",
    "`</code><script>alert(5)</script>`",
    r"$\text{<script>alert(6)</script>}$",
    r"$\href{javascript:alert(7)}{x}$",
    r"$\mathrm{<img src=x onerror=alert(8)>}$",
    r"$\phantom{hidden}$ and $\color{white}{x}$ and $\textcolor{white}{y}$",
    r"$x$ mathph000000000000n0e and \(</math><script>alert(9)</script>\)",
    "<math><mtext><script>alert(10)</script></mtext></math>",
    '$a" onmouseover="alert(11)$',
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_never_becomes_markup(text):
    page = render(text)
    assert_only_safe_markup(page)
    assert "<script" not in page and "<img" not in page and "<a " not in page and "href" not in page.replace("\\href", "")
    assert "javascript:" not in page or "<code" in page or "<p>" in page  # only ever as text


def test_what_hides_or_links_is_shown_as_its_source():
    assert render(r"$\phantom{hidden}$") == '<p><code class="tex">$\\phantom{hidden}$</code></p>\n'
    for space in (r"\hspace{1000em}", r"\kern{-100em}"):  # text pushed out of sight, or pulled over other text
        assert render(f"${space}x$") == f'<p><code class="tex">${space}x$</code></p>\n'
    assert '<mspace width="negativethinmathspace"></mspace>' in render(r"$a\!b\quad c$")  # LaTeX's own spaces stay
    assert 'class="tex"' in render(r"$\href{javascript:alert(1)}{x}$")
    assert "hidden" in render("[ref]: http://evil.example/\n\nhidden [ref]") and "http://evil.example/" in render("[ref]: http://evil.example/")
    assert "&lt;mtext&gt;" in render(r"$\text{<mtext>}$")  # copied text is escaped inside the MathML


def test_bad_latex_is_shown_as_its_source():
    for latex in (r"\frac{", r"x^{", r"\left( x"):
        assert render(f"${latex}$") == f'<p><code class="tex">${latex}$</code></p>\n'


def test_long_or_formula_heavy_text_is_shown_as_written():
    long = "<b>x</b> " * (markup.MAX_CHARS // 8)
    assert render(long).startswith('<pre class="as-written">&lt;b&gt;x&lt;/b&gt;')
    many = "$x$ " * (markup.MAX_FORMULAS + 1)
    assert render(many).startswith('<pre class="as-written">$x$ $x$')
    assert render(None) == "" and render("") == ""


def test_math500_reference_solutions_render():
    rows = [json.loads(line) for line in resources.files("factory").joinpath("benchmarks/math500.jsonl").read_text().splitlines()]
    pages = [render(row["solution"]) for row in rows]
    for page in pages:
        assert_only_safe_markup(page)
    formulas = sum(page.count("<math") for page in pages)
    refused = [tex for page in pages for tex in re.findall(r'<code class="tex">(.*?)</code>', page)]
    dollars_left = sum(re.sub(r'<code class="tex">.*?</code>', "", page).count("$") - page.count("<mi>$</mi>") - page.count("<mo>$</mo>")
                       for page in pages)
    assert formulas > 4000 and dollars_left < 20, (formulas, dollars_left)
    assert all("\\hphantom" in tex for tex in refused) and len(refused) < 10, refused  # the only refusals: space that hides


@pytest.mark.parametrize("unit", ["\\[ x ", "\\( x ", "\\begin{align} ", "$a b ", "`` a ` ", "x\\"])
def test_lone_delimiters_cost_a_scan_to_the_next_one_not_to_the_end(unit):
    """A policy can fill a trace with openers that never close; a formula that could hold anything
    made each one scan to the end (10,000 lone `\\[` in 50k characters: 6.7 s; 200k: minutes)."""
    text = unit * (markup.MAX_CHARS // len(unit))
    t0 = time.perf_counter()
    page = render(text)
    assert time.perf_counter() - t0 < 10
    assert "<math" not in page and "<p>" in page
