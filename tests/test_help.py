"""python scripts/train.py --help: the project's summary, groups, common overrides and other commands first."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import CONFIG_DIR, REPO


def test_help_lists_groups_with_options_common_overrides_and_the_other_commands() -> None:
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), "--help"], capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith("soapbench: benchmark NN optimizers")
    options = sorted(p.stem for p in (CONFIG_DIR / "optimizer").glob("*.yaml"))
    assert f"optimizer: {', '.join(options)}" in text, "every optimizer yaml, the peers and custom included"
    for group in ("model:", "data:", "experiment:", "variant:", "trainer:"):
        assert f"\n{group} " in text
    assert "optimizer=custom optimizer.target=" in text and "-m optimizer=adamw,soap" in text
    for command in ("reproduce.py", "report.py", "search.py", "check_optimizer.py", "bench_optimizers.py"):
        assert f"python scripts/{command}" in text
    assert text.index("Other commands:") < text.index("== Hydra flags ==") < text.index("--multirun")
