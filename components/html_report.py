"""Small, self-contained HTML pages for reports (inline CSS, figures as embedded PNGs, no scripts, no external
loads): the one toolkit that pipeline and monitoring pages share."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.3rem}
table{border-collapse:collapse;margin:.6rem 0}td,th{border:1px solid #ddd;padding:.3rem .6rem;text-align:left}
th{background:#f5f5f5}.fired{color:#b00020;font-weight:600}.ok{color:#1b7f3b}.muted{color:#777}
img{max-width:100%;margin:.5rem 0}p.note{color:#555;font-size:.92rem}
"""


def png_bytes(fig: Any, dpi: int = 100) -> bytes:
    """A matplotlib figure as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def png_img(png: bytes, alt: str = "figure") -> str:
    """An <img> tag embedding PNG bytes."""
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def figure_png(fig: Any) -> str:
    """Render a matplotlib figure to an <img> tag with an embedded PNG, then close it."""
    return png_img(png_bytes(fig))


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return '<span class="muted">n/a</span>'
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return escape(str(value))


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], raw_columns: Sequence[int] = ()) -> str:
    """An HTML table; cells are escaped except in `raw_columns` (already HTML)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{cell if i in raw_columns else fmt(cell)}</td>" for i, cell in enumerate(row)) + "</tr>"
        for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, intro: str, sections: Sequence[tuple[str, str]], style: str = "") -> str:
    """A whole document: title, an intro paragraph (escaped), (heading, html body) sections and extra CSS."""
    parts = "".join(f"<section><h2>{escape(h)}</h2>{body}</section>" for h, body in sections)
    return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
            f"<title>{escape(title)}</title>"
            f"<style>{_STYLE}{style}</style></head><body><h1>{escape(title)}</h1><p>{escape(intro)}</p>{parts}"
            "</body></html>")
