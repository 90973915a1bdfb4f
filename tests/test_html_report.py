"""report.html: one self-contained page with the report's tables and verdicts and interactive curves, checked in a
real browser (Debian's headless Chromium) when one is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import synthetic_runs as syn

from soapbench.report.html import VERDICT_CLASSES

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
COMMITTED = sorted((REPO / "results" / "reproductions").glob("*/report.html"))


def _synthetic_report(tmp_path: Path) -> Path:
    from scripts.report import main

    for optimizer, final in (("adamw", 2.0), ("soap", 1.8)):
        for seed in (0, 1, 2):
            loss = final + 0.01 * seed
            config = syn.base_config("exp", optimizer, seed, 1e-3, 400)
            syn.write_run(
                tmp_path,
                "exp",
                f"{optimizer}-s{seed}",
                config,
                [(100, 10.0, loss + 0.6), (200, 20.0, loss + 0.3), (400, 40.0, loss)],
            )
    out = tmp_path / "report"
    assert main(["--experiment", "exp", "--results-dir", str(tmp_path), "--out", str(out)]) == 0
    return out / "report.html"


def _open_in_chromium(page: Path, tmp_path: Path) -> tuple[str, str]:
    """The DOM after the page's scripts ran, and Chromium's log (console messages and uncaught errors)."""
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=10000",
    ]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    shot = subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={tmp_path / 'report.png'}", "--window-size=1280,2000", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0 and shot.returncode == 0, dom.stderr[-2000:] + shot.stderr[-2000:]
    return dom.stdout, dom.stderr + shot.stderr


def _console_errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if "CONSOLE" in line and ("Uncaught" in line or ":ERROR:" in line)]


def test_the_page_is_self_contained_with_tables_verdicts_and_curves(tmp_path: Path) -> None:
    page = _synthetic_report(tmp_path).read_text()
    markup = re.sub(r"<script\b.*?</script>", "", page, flags=re.S)  # plotly.js's own strings hold link texts
    assert not re.search(r'(src|href)="https?://', markup), "the page loads nothing from the network"
    assert "<script src=" not in page and 'src="loss_curves.png"' not in page  # plotly and figures inlined
    assert page.count('<figure><img alt="') == 4 and 'src="data:image/png;base64,' in page  # 4 figures, embedded
    assert page.count('class="plotly-graph-div"') == 1 and "hovertemplate" in page
    # plotly.js (4.8 MB) travels gzipped: a committed report stays far under the repository's 3 MB per file
    assert len(page.encode()) < 3_000_000, len(page.encode())
    verdicts = re.findall(r'<span class="verdict (\w+)">([^<]+)</span>', page)
    assert verdicts and all(VERDICT_CLASSES[word] == css for css, word in verdicts)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_the_page_opens_in_headless_chromium_without_console_errors(tmp_path: Path) -> None:
    dom, log = _open_in_chromium(_synthetic_report(tmp_path), tmp_path)
    assert not _console_errors(log), _console_errors(log)
    assert "main-svg" in dom, "plotly drew the curves"  # only present once plotly.js ran
    assert re.search(r"<table>.*<th>arm</th>", dom, re.S), "the verdict table is there"
    assert (tmp_path / "report.png").stat().st_size > 10_000


@pytest.mark.parametrize("page", COMMITTED, ids=[p.parent.name for p in COMMITTED])
def test_every_committed_report_page_stays_under_3_mb(page: Path) -> None:
    """Checked without a browser too. (b)'s page once came to 3.4 MB: its grid of photos embedded as PNG."""
    assert page.stat().st_size < 3_000_000, page.stat().st_size


def test_a_grid_of_photos_is_embedded_as_jpeg_and_a_line_plot_as_png(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from soapbench.report.html import _data_uri

    noise = np.random.default_rng(0).random((128, 256, 3))  # photo-like: every pixel its own colour
    figure, axes = plt.subplots(figsize=(4, 2))
    axes.imshow(noise)
    figure.savefig(tmp_path / "images.png", dpi=150)
    figure, axes = plt.subplots(figsize=(4, 2))
    axes.plot([1, 2, 3], [3, 1, 2])
    figure.savefig(tmp_path / "curves.png", dpi=150)
    photos, curves = _data_uri(tmp_path / "images.png"), _data_uri(tmp_path / "curves.png")
    assert photos.startswith("data:image/jpeg;base64,") and curves.startswith("data:image/png;base64,")
    assert len(photos) * 2 < 4 * (tmp_path / "images.png").stat().st_size / 3  # under half the PNG's base64


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
@pytest.mark.parametrize("page", COMMITTED, ids=[p.parent.name for p in COMMITTED])
def test_every_committed_report_opens_in_headless_chromium(page: Path, tmp_path: Path) -> None:
    dom, log = _open_in_chromium(page, tmp_path)
    assert not _console_errors(log), _console_errors(log)
    assert "main-svg" in dom and "<table>" in dom
    assert page.stat().st_size < 3_000_000, page.stat().st_size
