"""The peer arms (configs/optimizer/heavyball_*, pytorch_optimizer_*): trained like ours; a missing extra is one line."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli, train_in_process

PEERS = {"heavyball_soap": "heavyball", "heavyball_muon": "heavyball", "pytorch_optimizer_soap": "pytorch_optimizer"}


@pytest.mark.parametrize("arm", sorted(PEERS))
def test_a_peer_arm_trains_through_the_trainer_and_records_its_version(arm: str, results_dir) -> None:
    pytest.importorskip(PEERS[arm], reason='the peers extra: pip install -e ".[peers]"')
    summary = train_in_process([f"optimizer={arm}", "trainer.max_steps=6", "trainer.eval_interval=6"], results_dir)
    assert summary["status"] == "completed" and summary["optimizer"] == arm
    source = summary["optimizer_source"]
    assert source["package"].split("==")[1] == source["installed_version"], "the version the yaml was written for"
    assert summary["final_val_loss"] < summary["initial_loss"]


def test_a_missing_peer_library_names_the_extra_to_install(results_dir) -> None:
    # The yaml's own extra and package, with the import made to fail as it does without the extra installed.
    result = run_cli(["optimizer=heavyball_soap", "optimizer.target=heavyball_not_installed.SOAP"], results_dir)
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    # without the extra, heavyball itself is missing and its settings fail first; with it, the target does
    assert "cannot import" in line and ("heavyball_not_installed" in line or "'heavyball" in line), line
    assert 'pip install -e ".[peers]"' in line, line
    assert not (results_dir / "runs").exists()
