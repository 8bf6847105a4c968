"""Model text as readable HTML for `factory view`: Markdown for prose and code, MathML for math.

    from flows.markup import render
    render(r"So $x^2 = 4$, and ```python\nprint(2)\n```")   # markupsafe.Markup, safe to put in a page

Reasoning traces are Markdown with LaTeX math (`$..$`, `$$..$$`, `\\(..\\)`, `\\[..\\]`, bare
`\\begin{align*}..`) and fenced code. `render` masks the math, renders the rest with markdown-it-py
(CommonMark plus tables, line breaks kept, **raw HTML off**, and links, images and link
definitions off: model text must not fetch anything, take a reader elsewhere or hide a line),
then puts each formula back as MathML from latex2mathml, which Chromium, Firefox and Safari draw
natively: typeset math in the server's answer, with no JavaScript, no fonts and nothing fetched.
On MATH-500's 500 reference solutions: 4,319 formulas typeset, 6 shown as source (`\\hphantom`,
refused below), 14 dollars left as text (mostly a space before a closing dollar, which money
needs), 2.6 ms per solution.

latex2mathml does not escape what it copies from its input (`\\text{<script>}` comes out as a
script tag, `\\href{javascript:..}` as an attribute), so its output is never trusted: its element
tree is rebuilt from an allowlist of MathML elements and attributes with every text escaped, and
nothing that hides or shrinks text (`\\phantom`, padding, sizes, colours, spaces past 4em or
negative ones) is on the list; a formula
whose tree holds anything else, or that fails to convert, is shown as its LaTeX source, escaped,
in `<code class="tex">`. Text over `MAX_CHARS` or with more than `MAX_FORMULAS` formulas
is shown as written (a `<pre>` block): rendering it would cost more than a page may.

Rendering can make text look other than it is (a reward hack may hide in what Markdown swallows,
such as a backslash escape), so the sample page keeps the text as written one click away.
"""

import functools
import html
import re
import secrets

from latex2mathml.converter import convert_to_element
from markdown_it import MarkdownIt
from markupsafe import Markup, escape

MAX_CHARS = 200_000
MAX_LINES = 5_000  # markdown-it-py takes ~1 s per 40,000 lines; an R1 trace has a few hundred
MAX_FORMULAS = 2_000

_MARKDOWN = (MarkdownIt("commonmark", {"html": False, "breaks": True})
             .enable("table")
             .disable(["image", "link", "autolink", "reference"]))

# Fenced blocks and inline code spans: no math is looked for inside them.
_CODE = re.compile(r"^ {0,3}(`{3,}|~{3,})[^\n]*\n.*?(?:^ {0,3}\1[`~]*[ \t]*$|\Z)|(`+)(?!`).+?(?<!`)\2(?!`)", re.S | re.M)
# Display math first (bare `\begin{align*}..` environments too), then inline: `$..$` within one
# paragraph, `\$` allowed inside, no space before the closing dollar and no digit right after
# it, so "$5 and $6" and "$5 today; $" stay money. A formula holds no opening delimiter of its
# own kind and is at most 4,000 characters (inline 1,000), so a delimiter without its closing
# one costs a scan to the next opener, not to the end of the text (10,000 lone `\[` in 50k
# characters took 6.7 s when a formula could hold anything).
_ENV = r"(?:align|equation|gather|multline|eqnarray)"
_MATH = re.compile(r"\$\$(?P<d1>(?:\\.|[^$\\]){1,4000}?)\$\$|\\\[(?P<d2>(?:[^\\]|\\(?![\[\]])){1,4000}?)\\\]"
                   rf"|(?P<d3>\\begin\{{(?P<env>{_ENV})\*?\}}(?:[^\\]|\\(?!(?:begin|end)\{{{_ENV})){{0,4000}}?\\end\{{(?P=env)\*?\}})"
                   r"|\\\((?P<i1>(?:[^\\]|\\(?![()])){1,1000}?)\\\)"
                   r"|(?<![\\$\w])\$(?P<i2>(?:\\.|[^$\n\\]|\n(?!\s*\n)){0,1000}?(?:\\.|[^\s$\\]))\$(?!\d)", re.S)

_ELEMENTS = frozenset("math mrow mi mn mo ms mtext mspace msup msub msubsup mfrac msqrt mroot mstyle merror "
                      "menclose munder mover munderover mtable mtr mtd mlabeledtr mmultiscripts mprescripts none semantics".split())
_ATTRIBUTES = frozenset("display mathvariant notation stretchy fence form separator displaystyle scriptlevel linebreak columnalign "
                        "rowalign columnspacing rowspacing columnlines rowlines frame framespacing equalrows equalcolumns accent "
                        "accentunder lspace rspace width height depth voffset minsize maxsize movablelimits largeop symmetric "
                        "linethickness".split())
_VALUE = re.compile(r"[A-Za-z0-9 .%+-]*")
# Sizes and spaces: what LaTeX's spacing commands make (`\quad` 1em, `\qquad` 2em, `\!` a named
# negative thin space, big delimiters ~3em), never a length that would push text out of sight or
# pull it over other text (`\hspace{1000em}`, `\kern{-100em}`).
_LENGTHS = frozenset("width height depth lspace rspace voffset minsize maxsize".split())
_LENGTH = re.compile(r"(?:[0-3]?(?:\.\d+)?|4(?:\.0+)?)(?:em|ex)?|\d{1,2}(?:\.\d+)?(?:pt|px|mu)|(?:negative)?(?:very){0,2}(?:thin|thick|medium)mathspace")


class _Unsafe(Exception):
    pass


def _rebuild(element, out: list[str]) -> None:
    """MathML rebuilt from the allowlist with every text escaped; anything else raises _Unsafe.
    latex2mathml leaves its own character references (`&#x0003C;`) in texts and what it copied
    from the input raw, so a text is unescaped once, then escaped."""
    if element.tag not in _ELEMENTS:
        raise _Unsafe(element.tag)
    kept = []
    for name, value in element.attrib.items():
        if name == "xmlns" and value == "http://www.w3.org/1998/Math/MathML":
            continue  # an HTML parser puts <math> in the MathML namespace by itself
        if name not in _ATTRIBUTES or not _VALUE.fullmatch(value) or (name in _LENGTHS and not _LENGTH.fullmatch(value)):
            raise _Unsafe(f"{element.tag} {name}")
        kept.append(f' {name}="{value}"')
    out.append(f"<{element.tag}{''.join(kept)}>")
    if element.text:
        out.append(html.escape(html.unescape(element.text), quote=False))
    for child in element:
        _rebuild(child, out)
        if child.tail:
            out.append(html.escape(html.unescape(child.tail), quote=False))
    out.append(f"</{element.tag}>")


@functools.lru_cache(maxsize=4096)
def formula(latex: str, display: bool) -> str:
    """One formula as allowlisted MathML, or its source escaped when it cannot be."""
    try:
        out: list[str] = []
        _rebuild(convert_to_element(latex, display="block" if display else "inline"), out)
        return "".join(out)
    except Exception:  # latex2mathml raises many kinds on bad LaTeX; the source is then shown instead
        dollars = "$$" if display else "$"
        return f'<code class="tex">{escape(dollars + latex + dollars)}</code>'


def render(text: str | None) -> Markup:
    """Text as HTML: Markdown and math rendered, hostile text escaped; long text as written."""
    if not text:
        return Markup("")
    if len(text) > MAX_CHARS or text.count("\n") > MAX_LINES:
        return Markup(f'<pre class="as-written">{escape(text)}</pre>')
    nonce = secrets.token_hex(6)
    formulas: list[str] = []

    def mask(match: re.Match) -> str:
        groups = match.groupdict()
        display = groups["i1"] is None and groups["i2"] is None
        latex = next(groups[k] for k in ("d1", "d2", "d3", "i1", "i2") if groups[k] is not None)
        formulas.append(formula(latex, display))
        return f"mathph{nonce}n{len(formulas) - 1}e"

    masked, last = [], 0
    for code in _CODE.finditer(text):
        masked.append(_MATH.sub(mask, text[last:code.start()]))
        masked.append(code.group(0))
        last = code.end()
        if len(formulas) > MAX_FORMULAS:
            break
    masked.append(_MATH.sub(mask, text[last:]))
    if len(formulas) > MAX_FORMULAS:
        return Markup(f'<pre class="as-written">{escape(text)}</pre>')
    rendered = _MARKDOWN.render("".join(masked))
    # A placeholder inside a code span or block stays as the reader typed it: its formula was
    # masked outside code, so every placeholder found here is one of ours.
    rendered = re.sub(f"mathph{nonce}n(\\d+)e", lambda m: formulas[int(m.group(1))], rendered)
    return Markup(rendered)
