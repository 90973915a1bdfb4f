"""``report.html``: the report as one self-contained page — the same text, tables and verdicts as ``report.md``, the
figures embedded, and interactive loss curves.

* The body is ``report.md`` rendered by Python-Markdown (tables included), so the page never says anything the
  Markdown does not; after it, every PNG figure with its caption, embedded as a data URI (as JPEG where that is under half the
  size: image grids).
* Verdict words in table cells are coloured (``better`` / ``holds`` green, ``worse`` / ``does not hold`` red,
  ``equivalent`` blue, ``inconclusive`` / ``not tested`` grey); the notes beside a verdict stay beside it.
* Above the figures, each workload's loss curves are drawn with plotly: validation loss of each arm's best
  configuration (mean over seeds) against steps and against training seconds, hover for step, loss and seconds,
  click a legend entry to hide or show an arm. plotly.js is inlined once, so the page opens without a network:
  gzipped and base64-encoded (1.9 MB instead of 4.8 MB, so a committed report stays small), unpacked by the
  browser's own ``DecompressionStream`` before the figures, stored as JSON, are drawn.
"""

from __future__ import annotations

import base64
import gzip
import html
import io
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import markdown as markdown_lib
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from soapbench.report.analysis import Analysis, WorkloadResult
from soapbench.report.figures import SavedFigure, arm_colors

VERDICT_CLASSES = {
    "better": "good",
    "holds": "good",
    "worse": "bad",
    "does not hold": "bad",
    "equivalent": "same",
    "inconclusive": "open",
    "not tested": "open",
    "tie": "open",
    "within noise": "open",
}
# Longest first, so "does not hold" is not caught as "holds".
_VERDICT_PATTERN = re.compile(
    r"\b(" + "|".join(re.escape(word) for word in sorted(VERDICT_CLASSES, key=len, reverse=True)) + r")\b"
)
_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
img { max-width: 100%; }
figure { margin: 1.5em 0; }
figcaption { font-size: 0.85em; color: #444; }
code { background: #f5f5f5; padding: 0 0.2em; }
.verdict { font-weight: 600; padding: 0 0.2em; border-radius: 3px; }
.verdict.good { color: #116611; background: #e6f4e6; }
.verdict.bad { color: #9b1111; background: #f8e4e4; }
.verdict.same { color: #114a8b; background: #e4edf8; }
.verdict.open { color: #555; background: #eee; }
"""


def _colour_verdicts(cell: re.Match) -> str:
    opening, body, closing = cell.group(1), cell.group(2), cell.group(3)
    coloured = _VERDICT_PATTERN.sub(
        lambda word: f'<span class="verdict {VERDICT_CLASSES[word.group(1)]}">{word.group(1)}</span>', body
    )
    return f"{opening}{coloured}{closing}"


def _data_uri(path: Path) -> str:
    """The figure as a data URI: PNG, or JPEG where that is under half the size (a grid of photos, which PNG
    stores nearly raw; line plots stay PNG), so a page with image grids stays small. The PNG file stays beside it."""
    png = path.read_bytes()
    jpeg = _as_jpeg(png)
    if jpeg is not None and len(jpeg) * 2 < len(png):
        return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _as_jpeg(png: bytes) -> bytes | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(png)) as image:
            out = io.BytesIO()
            image.convert("RGB").save(out, format="JPEG", quality=90, optimize=True)
    except (UnidentifiedImageError, OSError):
        return None  # not an image Pillow reads: embedded as it is
    return out.getvalue()


def _gallery(figures: Sequence[SavedFigure]) -> str:
    items = "".join(
        f'<figure><img alt="{html.escape(f.path.name)}" src="{_data_uri(f.path)}">'
        f"<figcaption><code>{html.escape(f.path.name)}</code>: {html.escape(f.caption)}</figcaption></figure>"
        for f in figures
        if f.path.is_file()
    )
    return f'<section id="figures"><h2>Figures</h2>{items}</section>' if items else ""


def curves_figure(workload: WorkloadResult, metric: str, colours: dict[str, str]) -> go.Figure | None:
    bests = {arm: o.best for arm, o in workload.optimizers.items() if o.best is not None and o.best.curve is not None}
    if not bests:
        return None
    figure = make_subplots(rows=1, cols=2, subplot_titles=("vs optimizer steps", "vs training wall-clock [s]"))
    for arm, config in bests.items():
        curve = config.curve
        for column, x in enumerate(("step", "seconds"), start=1):
            figure.add_trace(
                go.Scatter(
                    x=curve[x],
                    y=curve["mean"],
                    mode="lines",
                    name=f"{arm} (n={config.n})",
                    legendgroup=arm,
                    showlegend=column == 1,
                    line={"color": colours.get(arm)},
                    customdata=list(zip(curve["step"], curve["seconds"])),
                    hovertemplate=f"{html.escape(arm)}<br>step %{{customdata[0]:.0f}}<br>{metric} %{{y:.4f}}"
                    "<br>%{customdata[1]:.1f} s<extra></extra>",
                ),
                row=1,
                col=column,
            )
    if workload.target is not None:
        for column in (1, 2):
            figure.add_hline(y=workload.target, line_dash="dash", line_color="black", row=1, col=column)
    figure.update_yaxes(title_text=metric)
    figure.update_layout(
        title=f"{workload.workload}: {metric} of each arm's best configuration (mean over seeds)",
        height=450,
        legend={"title": "click to hide / show"},
    )
    return figure


def _hex(colour: tuple) -> str:
    return "#" + "".join(f"{round(channel * 255):02x}" for channel in colour[:3])


def render_html(report_markdown: str, analysis: Analysis, figures: Sequence[SavedFigure]) -> str:
    body = markdown_lib.markdown(report_markdown, extensions=["tables", "fenced_code"])
    body = re.sub(r"(<td[^>]*>)(.*?)(</td>)", _colour_verdicts, body, flags=re.S)
    plots = []
    for workload in analysis.workloads:
        colours = {arm: _hex(c) for arm, c in arm_colors(workload).items()}  # the PNG figures' colours
        figure = curves_figure(workload, analysis.metric, colours)
        if figure is not None:
            plots.append(_figure_markup(f"curves-{len(plots)}", figure))
    title = html.escape(" + ".join(sorted({w.experiment for w in analysis.workloads})))
    curves = "".join(f'<div class="curves">{plot}</div>' for plot in plots)
    if plots:
        curves += _plotly_loader()
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}: soapbench report</title>'
        f"<style>{_STYLE}</style></head><body>\n"
        f'<section id="interactive-curves"><h2>Interactive loss curves</h2>{curves}</section>\n'
        f'<section id="report">{body}</section>\n{_gallery(figures)}\n</body></html>\n'
    )


def _figure_markup(div_id: str, figure: go.Figure) -> str:
    """An empty plot div and its figure as inert JSON, drawn by :func:`_plotly_loader` once plotly.js is unpacked."""
    spec = figure.to_json().replace("</", "<\\/")  # JSON text may not close the script element it sits in
    return (
        f'<div id="{div_id}" class="plotly-graph-div"></div>'
        f'<script type="application/json" class="plotly-figure" data-target="{div_id}">{spec}</script>'
    )


@lru_cache(maxsize=1)
def _plotly_gzip_base64() -> str:
    from plotly.offline import get_plotlyjs

    return base64.b64encode(gzip.compress(get_plotlyjs().encode("utf-8"), mtime=0)).decode("ascii")


def _plotly_loader() -> str:
    """plotly.js, gzipped in the page, unpacked by the browser and run in the global scope; then every figure."""
    script = """
(async () => {
  const packed = document.getElementById("plotly-js-gzip").textContent.trim();
  const bytes = Uint8Array.from(atob(packed), (c) => c.charCodeAt(0));
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  (0, eval)(await new Response(stream).text());
  for (const figure of document.querySelectorAll("script.plotly-figure")) {
    const spec = JSON.parse(figure.textContent);
    Plotly.newPlot(figure.dataset.target, spec.data, spec.layout, {responsive: true});
  }
})();"""
    return (
        f'<script id="plotly-js-gzip" type="application/octet-stream">{_plotly_gzip_base64()}</script>'
        f"<script>{script}</script>"
    )


def write_html(report_markdown: str, analysis: Analysis, figures: Sequence[SavedFigure], out_dir: Path) -> Path:
    path = out_dir / "report.html"
    path.write_text(render_html(report_markdown, analysis, figures), encoding="utf-8")
    return path
