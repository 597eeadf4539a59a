"""Escaping for each format radops writes: Markdown, HTML and CSV, one way each.

Values from DICOM headers (a manufacturer), from the labels file or from file names are
written into reports and tables that people open in a browser, in MLflow's artifact viewer or
in a spreadsheet. Every report writer goes through these functions, so a header value such as
``Acme <script>…</script> | 9`` is shown as text, never run as HTML nor split into extra table
columns, and a file named ``=HYPERLINK(…).dcm`` is not a formula in the predictions CSV.

* Markdown: :func:`md_text` (inline text), :func:`md_code` (a code span when it is safe),
  :func:`md_table` (the one table writer).
* HTML: :func:`html_text` (``html.escape`` with quotes).
* CSV: :func:`csv_cell` / :func:`csv_frame` (OWASP's formula neutralisation: a leading ``'``
  before ``= + - @``, tab or CR; numbers stay numbers), undone by :func:`csv_unescape` where
  radops reads its own CSV back.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

# Characters that carry Markdown/HTML structure inside a line, as HTML entities: these render
# as the character itself in every CommonMark/GFM renderer and never as markup.
_MD_ENTITIES = {
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
    "|": "&#124;",
    "`": "&#96;",
    "\\": "&#92;",
    "[": "&#91;",
    "]": "&#93;",
}
_MD_RE = re.compile("[" + re.escape("".join(_MD_ENTITIES)) + "]")
# A line that starts with one of these is a heading, list, quote or rule in Markdown.
_LEADING = re.compile(r"^(\s*)([#*+\-=>_~]|(?P<n>\d+)[.)])")
_NEWLINES = re.compile(r"[\r\n\x0b\x0c\x85\u2028\u2029]+")
# Cells a spreadsheet reads as a formula (OWASP CSV injection), and our own escape mark.
CSV_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "'")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _inline(value: Any) -> str:
    text = _NEWLINES.sub(" ", str(value))
    return _MD_RE.sub(lambda m: _MD_ENTITIES[m.group(0)], text)


def _unblock(match: re.Match[str]) -> str:
    lead, mark, digits = match.group(1), match.group(2), match.group("n")
    if digits is not None:  # "1." / "1)": escape the punctuation (a digit cannot be)
        return f"{lead}{digits}\\{mark[len(digits) :]}"
    return f"{lead}\\{mark}"


def md_text(value: Any, *, mid_line: bool = False) -> str:
    """``value`` as inline Markdown text: no HTML, no table break, no line break, and no
    block markup where it starts a line or a list item (a leading ``#``, ``-``, ``*``, ``>``
    or ``1.`` is escaped). ``mid_line`` text follows other text on its line, where a
    leading ``1.`` or ``-`` is inert, so it is left as written (``0.8731`` stays readable)."""
    inline = _inline(value)
    return inline if mid_line else _LEADING.sub(_unblock, inline, count=1)


def md_cell(value: Any) -> str:
    """``value`` as one Markdown table cell: no HTML, no ``|`` or line break that would
    split or end the row (a cell holds inline content only, so block markup is inert)."""
    return _inline(value).strip()


def md_code(value: Any) -> str:
    """``value`` as a code span when it holds nothing that could leave one, else as escaped
    plain text (a code span cannot hold a backtick or a table's ``|``, nor hide raw HTML from
    a reader of the raw file)."""
    text = str(value)
    if _MD_RE.search(text) or _NEWLINES.search(text) or not text.strip():
        return md_text(text)
    return f"`{text}`"


def md_table(header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A GitHub-flavoured Markdown table (header, rule, rows), every cell escaped; each row
    has exactly as many cells as the header. Cells are given as the text to show (format
    numbers first)."""
    width = len(header)
    lines = [
        "| " + " | ".join(md_cell(h) for h in header) + " |",
        "|" + "|".join(" --- " for _ in header) + "|",
    ]
    for row in rows:
        cells = [md_cell(c) for c in row]
        if len(cells) != width:
            raise ValueError(f"table row has {len(cells)} cells for {width} columns")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def html_text(value: Any) -> str:
    """``value`` as HTML text or an attribute value (``html.escape``, quotes included)."""
    return html.escape(str(value), quote=True)


def csv_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet will not run: text starting with ``= + - @``, tab or CR (or
    our ``'`` mark) gets a leading ``'``; numbers, and text that is a plain number, are kept."""
    if not isinstance(value, str) or not value.startswith(CSV_TRIGGERS):
        return value
    if _NUMBER.fullmatch(value):
        return value
    return "'" + value


def csv_unescape(value: Any) -> Any:
    """The value :func:`csv_cell` was given (for radops' own CSVs read back)."""
    if isinstance(value, str) and value.startswith("'") and not _NUMBER.fullmatch(value):
        return value[1:]
    return value


def csv_row(row: Iterable[Any]) -> list[Any]:
    """One row for ``csv.writer``, every cell neutralised."""
    return [csv_cell(v) for v in row]


def csv_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its text cells (and column names) neutralised; numeric columns are
    untouched, so they stay numeric."""
    from pandas.api.types import is_object_dtype, is_string_dtype

    out = frame.copy()
    for column in out.columns:
        if is_object_dtype(out[column]) or is_string_dtype(out[column]):
            out[column] = out[column].map(
                lambda v: (
                    v if v is None or (isinstance(v, float) and math.isnan(v)) else csv_cell(v)
                )
            )
    out.columns = [csv_cell(c) if isinstance(c, str) else c for c in out.columns]
    return out
