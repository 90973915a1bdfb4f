"""Every experiment preset composes and trains a couple of steps (shrunk to CPU-test size).

The presets' own budgets, batch sizes and models are for real runs; here the model is made tiny, the
budget two steps, and hub-only corpora (C4, FineWeb) swapped for the offline Gutenberg text, so what
is exercised is the preset's composition: its data pipeline, precision, schedule, accumulation and arms.
"""

from __future__ import annotations

import pytest

from tests.conftest import CONFIG_DIR, resolved

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))

SHRINK = {
    "gpt": ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.seq_len=16"],
    "olmo": ["model.n_layers=1", "model.n_heads=2", "model.d_model=16", "model.mlp_hidden=32", "model.seq_len=16"],
    "colorization": [],
}
SHRINK_DATA = {
    "char": [],
    "tokenized": ["data.max_train_tokens=20000", "data.max_val_tokens=4000"],
    "images": ["data.max_train_images=8", "data.max_val_images=4", "data.preview_images=2"],
}
OFFLINE_STAND_IN = {"c4_t5": "gutenberg_t5", "fineweb_gpt2": "gutenberg_t5", "colorization": "colorization_cpu"}


def _overrides(experiment: str, results_dir) -> list[str]:
    config = resolved([f"experiment={experiment}"])
    data_overrides = []
    data_kind = config["data"]["kind"]
    if config["data"]["name"] in OFFLINE_STAND_IN:
        data_overrides = [f"data={OFFLINE_STAND_IN[config['data']['name']]}"]
        data_kind = resolved([f"experiment={experiment}", *data_overrides])["data"]["kind"]
    return [
        f"experiment={experiment}",
        *data_overrides,
        *SHRINK[config["model"]["arch"]],
        *SHRINK_DATA[data_kind],
        "trainer.max_steps=2",
        "trainer.max_epochs=null",
        "trainer.batch_size=2",
        "trainer.grad_accum_steps=2",
        "trainer.eval_interval=2",
        "trainer.eval_batches=1",
        "trainer.final_eval_batches=1",
        "trainer.threads=1",
        "trainer.log_interval=1",
        "trainer.checkpoint_interval=2",
        "trainer.schedule.warmup_steps=1",
        "logger.wandb.mode=disabled",
        f"paths.results_dir={results_dir}",
    ]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_preset_trains_two_steps(experiment: str, results_dir, tmp_path, monkeypatch) -> None:
    from soapbench.trainer import train

    monkeypatch.setenv("SOAPBENCH_CACHE", str(tmp_path / "cache"))
    config = resolved(_overrides(experiment, results_dir))
    if config["trainer"]["schedule"]["name"] == "wsd":
        config["trainer"]["schedule"]["decay_steps"] = 1
    summary = train(config)
    assert summary["status"] == "completed", summary.get("error")
    assert summary["steps"] == 2
    assert summary["experiment"] == config["experiment_name"]
