"""Train one run (or a sweep with -m): python scripts/train.py optimizer=soap model=nanogpt_char_cpu"""

import hydra
from omegaconf import DictConfig

from soapbench.cli import run_app, run_job


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run_job(cfg)


if __name__ == "__main__":
    run_app(main)
