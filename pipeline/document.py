"""A tiny document model rendered twice: Markdown (report.md) and self-contained HTML.

Blocks are ("h", level, text), ("p", text), ("table", DataFrame), ("img", path, caption).
HTML embeds every image as a base64 data URI, so report.html is one file.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}
table{border-collapse:collapse;margin:1em 0;font-size:90%}th,td{border:1px solid #ccc;
padding:3px 8px;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%}figure{display:inline-block;margin:0.5em;vertical-align:top}
figcaption{font-size:85%;color:#444}"""


def _md_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |")
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
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{CSS}</style></head><body>"]
    for b in blocks:
        if b[0] == "h":
            ident = "".join(c if c.isalnum() else "-" for c in b[2].lower()).strip("-")
            out.append(f"<h{b[1]} id='{ident}'>{html.escape(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            out.append(f"<p>{html.escape(b[1])}</p>")
        elif b[0] == "table":
            out.append(b[1].to_html(index=False, na_rep="", escape=True))
        elif b[0] == "img":
            data = base64.b64encode(Path(b[1]).read_bytes()).decode()
            out.append(f"<figure><img alt='{html.escape(b[2])}' src='data:image/png;base64,"
                       f"{data}'><figcaption>{html.escape(b[2])}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)
