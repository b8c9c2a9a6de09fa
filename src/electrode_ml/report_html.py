"""The HTML building blocks of the report page: escaping, number formatting, the colours that set
this run against a reference, cells and tables, embedded figures, and the page's stylesheet.

Nothing here reads a file or knows a section: report_inputs.py reads, report.py writes the sections.
"""

from __future__ import annotations

import base64
import html
from typing import Any

import numpy as np

GOOD = (27, 158, 119)   # this run better than the paper
BAD = (217, 95, 2)      # this run behind the paper
SATURATION = 0.5        # shade's default: the relative difference at which the colour is strongest


def hex_colour(colour: tuple[int, int, int]) -> str:
    return "#" + "".join(f"{channel:02x}" for channel in colour)


def esc(value: Any) -> str:
    return html.escape(str(value))


def fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, (float, np.floating)):
        return f"{value:,.{digits}f}"
    return esc(value)


def percent(fraction: float | None, digits: int = 1) -> str:
    if fraction is None or not np.isfinite(fraction):
        return "–"
    return f"{fmt(float(fraction) * 100, digits)} %"


def background(colour: tuple[int, int, int], strength: float) -> str:
    """Inline style attribute: ``colour`` at opacity ``strength``."""
    red, green, blue = colour
    return f' style="background: rgba({red},{green},{blue},{strength:.2f})"'


def shade(ours: float | None, paper: float | None, lower_is_better: bool = True, scale: float = SATURATION) -> str:
    """Inline style for a cell comparing ``ours`` with ``paper`` (empty when either is missing)."""
    if ours is None or paper is None or not np.isfinite(ours) or not np.isfinite(paper) or paper == 0:
        return ""
    relative = (ours - paper) / abs(paper)
    better = relative <= 0 if lower_is_better else relative >= 0
    strength = 0.18 + 0.6 * min(abs(relative) / scale, 1.0)
    return background(GOOD if better else BAD, strength)


def delta(ours: float | None, paper: float | None) -> str:
    if ours is None or paper is None or not np.isfinite(ours) or not paper:
        return ""
    return f'<span class="delta">{(ours - paper) / abs(paper):+.0%}</span>'


def legend() -> str:
    """What shade's colours mean."""
    def swatch(colour: tuple[int, int, int]) -> str:
        return f'<span class="swatch" style="background: rgba({",".join(map(str, colour))},0.6)"></span>'

    return (f'<p class="legend">{swatch(GOOD)} this run better than the paper {swatch(BAD)} this run behind the '
            f'paper; stronger colour = larger relative difference (saturates at {SATURATION * 100:.0f} %). '
            'Percentages: (ours − paper) / paper.</p>')


def image(png: bytes | None, alt: str, width: str = "100%") -> str:
    """A PNG embedded in the page (base64), or a note that the figure is missing."""
    if png is None:
        return f'<p class="missing">Figure missing: {esc(alt)}</p>'
    data = base64.b64encode(png).decode("ascii")
    return f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt)}" style="max-width:{width}"><figcaption>{esc(alt)}</figcaption></figure>'


def td(content: str, style: str = "", cls: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return f"<td{klass}{style}>{content}</td>"


def table(header: list[str], rows: list[list[str]], classes: str = "", raw: bool = True) -> str:
    """``rows`` are lists of ready HTML cells (``<td ...>`` included) when raw, else plain values."""
    head = "".join(f"<th>{cell}</th>" for cell in header)
    body = "".join("<tr>" + ("".join(row) if raw else "".join(f"<td>{fmt(c)}</td>" for c in row)) + "</tr>"
                   for row in rows)
    return f'<table class="{classes}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


STYLE = """
body { font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #222;
       margin: 0; background: #f6f7f9; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 32px 64px; background: #fff; }
header h1 { margin: 0 0 4px; font-size: 26px; }
header p { margin: 2px 0; color: #555; }
nav { position: sticky; top: 0; background: #fff; border-bottom: 1px solid #ddd; padding: 8px 0; z-index: 2;
      margin-bottom: 8px; }
nav a { margin-right: 14px; color: #2c5f8a; text-decoration: none; font-size: 14px; white-space: nowrap; }
h2 { border-bottom: 2px solid #2c5f8a; padding-bottom: 4px; margin-top: 40px; color: #1d3f5c; }
h3 { margin-top: 26px; color: #333; }
table { border-collapse: collapse; margin: 10px 0 6px; font-size: 14px; }
th { background: #eef2f6; text-align: left; padding: 6px 10px; border-bottom: 2px solid #c9d3dd; vertical-align: bottom; }
td { padding: 5px 10px; border-bottom: 1px solid #e3e6ea; vertical-align: top; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
td.paper { color: #555; background: #fafafa; }
td.note, .muted { color: #666; font-size: 13px; }
table.glance td { font-size: 15px; padding: 8px 14px; }
table.compact td { padding: 3px 10px; }
.delta { color: #444; font-size: 12px; margin-left: 4px; }
.headline { font-size: 17px; background: #eef6f2; border-left: 4px solid GOOD; padding: 8px 12px; }
.legend { font-size: 13px; color: #555; }
.swatch { display: inline-block; width: 14px; height: 14px; vertical-align: middle; margin: 0 4px 0 10px; border-radius: 2px; }
.figs { display: flex; flex-direction: column; gap: 6px; }
figure { margin: 10px 0; }
figure img { border: 1px solid #e3e6ea; }
figcaption { font-size: 13px; color: #555; }
.fail { color: #b34700; text-decoration: underline; font-weight: 600; }
.ci { color: #666; font-size: 12px; }
.tag { font-size: 11px; font-weight: 700; padding: 1px 5px; border-radius: 3px; color: #fff; }
.tag.fp { background: BAD; } .tag.fn { background: #7570b3; }
td.verdict { white-space: nowrap; }
ul.picks li { margin-bottom: 6px; }
pre { background: #f4f5f7; padding: 12px; border-radius: 4px; font-size: 13px; overflow-x: auto; }
details { margin: 12px 0; } summary { cursor: pointer; color: #2c5f8a; }
.missing { color: #b34700; font-style: italic; }
""".replace("GOOD", hex_colour(GOOD)).replace("BAD", hex_colour(BAD))
