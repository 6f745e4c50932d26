"""A tiny document model rendered twice: Markdown (report.md) and self-contained HTML.

Blocks are ("h", level, text), ("p", text), ("table", DataFrame), ("img", path, caption).
HTML embeds every image as a base64 data URI, so report.html is one file.  The page fits a
1,280 px wide window: text wraps, tables wrap their cells, and a table that still cannot fit
scrolls inside its own box (the page itself never scrolls sideways).  Missing cells (None,
NaN, pandas NA) render empty in both formats.
"""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import pandas as pd

CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
overflow-wrap:break-word}
.table{max-width:100%;overflow-x:auto}
table{border-collapse:collapse;margin:1em 0;font-size:85%}th,td{border:1px solid #ccc;
padding:3px 6px;vertical-align:top}th{background:#f3f3f3}.num{text-align:right}
.txt{text-align:left}
img{max-width:100%;height:auto}figure{display:inline-block;margin:0.5em;vertical-align:top;
max-width:100%}figcaption{font-size:85%;color:#444}"""


def cell(v) -> str:
    """A cell's text: empty for a missing value (never '<NA>' or 'nan')."""
    if v is None:
        return ""
    try:
        if pd.isna(v):
            return ""
    except (TypeError, ValueError):    # a list or array: not a missing scalar
        pass
    return str(v)


def cells(df: pd.DataFrame) -> pd.DataFrame:
    """Every cell of ``df`` as its display text (see :func:`cell`)."""
    return pd.DataFrame({str(c): [cell(v) for v in df[c]] for c in df.columns},
                        columns=[str(c) for c in df.columns])


NUMERIC = re.compile(r"^(-?\d|-?\.\d|\[|—$|$)")   # a number, "[low, high]", a dash, empty


def _html_table(df: pd.DataFrame) -> str:
    """A table whose numeric columns (numbers, intervals, dashes) align right, text left."""
    text = cells(df)
    right = [all(NUMERIC.match(v) for v in text[c]) and any(text[c]) for c in text.columns]
    th = "".join(f"<th class='{'num' if r else 'txt'}'>{html.escape(c)}</th>"
                 for c, r in zip(text.columns, right))
    rows = ["<tr>" + "".join(f"<td class='{'num' if r else 'txt'}'>{html.escape(v)}</td>"
                             for v, r in zip(row, right)) + "</tr>"
            for row in text.itertuples(index=False)]
    return (f"<div class='table'><table><thead><tr>{th}</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table></div>")


def _md_table(df: pd.DataFrame) -> str:
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    text = cells(df)
    lines = ["| " + " | ".join(esc(c) for c in text.columns) + " |",
             "|" + "|".join("---" for _ in text.columns) + "|"]
    for row in text.itertuples(index=False):
        lines.append("| " + " | ".join(esc(v) for v in row) + " |")
    return "\n".join(lines)


def to_markdown(blocks: list[tuple], base: Path) -> str:
    out = []
    for b in blocks:
        if b[0] == "h":
            out.append("#" * b[1] + " " + b[2])
        elif b[0] == "p":
            out.append(b[1])
        elif b[0] == "table":
            out.append(_md_table(b[1]))
        elif b[0] == "img":
            out.append(f"![{b[2]}]({Path(b[1]).relative_to(base).as_posix()})")
    return "\n\n".join(out) + "\n"


def to_html(blocks: list[tuple], title: str) -> str:
    out = [f"<!doctype html><html><head><meta charset='utf-8'>"
           "<meta name='viewport' content='width=device-width, initial-scale=1'>"
           f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"]
    for b in blocks:
        if b[0] == "h":
            ident = "".join(c if c.isalnum() else "-" for c in b[2].lower()).strip("-")
            out.append(f"<h{b[1]} id='{ident}'>{html.escape(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            out.append(f"<p>{html.escape(b[1])}</p>")
        elif b[0] == "table":
            out.append(_html_table(b[1]))
        elif b[0] == "img":
            data = base64.b64encode(Path(b[1]).read_bytes()).decode()
            out.append(f"<figure><img alt='{html.escape(b[2])}' src='data:image/png;base64,"
                       f"{data}'><figcaption>{html.escape(b[2])}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)
