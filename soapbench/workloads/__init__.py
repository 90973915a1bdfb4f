"""Workloads: a model and its data, built from the composed config (see ``base.Workload``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from soapbench.config import TrainerConfig
from soapbench.data.paths import default_cache_dir, resolve_data_root
from soapbench.errors import ConfigError
from soapbench.workloads.base import Workload

DATA_KINDS = ("char", "tokenized", "images")


def _token_splits(data_cfg: Mapping[str, Any], data_root, cache_dir):
    if data_cfg.get("kind") == "char":
        from soapbench.data.shakespeare import URL as SHAKESPEARE_URL
        from soapbench.data.shakespeare import load_shakespeare_char

        url = data_cfg.get("url") or SHAKESPEARE_URL
        return load_shakespeare_char(data_root, allow_download=bool(data_cfg.get("download", True)), url=url)
    from soapbench.data.tokenized import load_token_splits

    return load_token_splits(data_cfg, data_root, cache_dir)


def data_fingerprint(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The fingerprint a workload built from ``cfg`` would have, reading only the data (no model)."""
    data_cfg = dict(cfg["data"])
    paths = cfg.get("paths", {})
    data_root, cache_dir = resolve_data_root(paths.get("data_root")), default_cache_dir(paths.get("cache_dir"))
    if data_cfg.get("kind") in ("char", "tokenized"):
        from soapbench.data.fingerprint import token_fingerprint

        splits = _token_splits(data_cfg, data_root, cache_dir)
        return token_fingerprint(splits.train, splits.val, splits.vocab_size, splits.meta)
    if data_cfg.get("kind") == "images":
        from soapbench.data.colorization import load_colorization_data
        from soapbench.workloads.colorization import images_fingerprint

        return images_fingerprint(load_colorization_data(data_cfg, data_root, cache_dir))
    raise ConfigError(f"data.kind: unknown kind {data_cfg.get('kind')!r}; valid: {', '.join(DATA_KINDS)}")


def build_workload(
    cfg: Mapping[str, Any], trainer: TrainerConfig, device: torch.device, shard: slice = slice(None)
) -> Workload:
    """Build data first (it may fix the vocabulary size), then the model, seeded so that the
    initial weights depend only on the seed — never on the optimizer being compared.
    ``shard`` selects this process's rows of every global training batch (data parallelism)."""
    from soapbench.models import build_model

    data_cfg = dict(cfg["data"])
    model_cfg = dict(cfg["model"])
    paths = cfg.get("paths", {})
    data_root = resolve_data_root(paths.get("data_root"))
    cache_dir = default_cache_dir(paths.get("cache_dir"))
    kind = data_cfg.get("kind")
    seed = int(cfg["seed"])

    if kind in ("char", "tokenized"):
        from soapbench.workloads.language_model import LanguageModelWorkload

        splits = _token_splits(data_cfg, data_root, cache_dir)
        if model_cfg.get("vocab_size", 0) < splits.vocab_size:
            raise ConfigError(
                f"model.vocab_size: {model_cfg.get('vocab_size')} is smaller than the data's vocabulary "
                f"({splits.vocab_size}); set model.vocab_size >= {splits.vocab_size}"
            )
        torch.manual_seed(seed)
        model = build_model(model_cfg).to(device)
        return LanguageModelWorkload(
            model,
            splits,
            seq_len=int(model_cfg["seq_len"]),
            batch_size=trainer.batch_size,
            eval_batches=trainer.eval_batches,
            seed=seed,
            device=device,
            shard=shard,
        )
    if kind == "images":
        from soapbench.workloads.colorization import ColorizationWorkload

        torch.manual_seed(seed)
        model = build_model(model_cfg).to(device)
        return ColorizationWorkload(
            model,
            data_cfg,
            data_root=data_root,
            cache_dir=cache_dir,
            batch_size=trainer.batch_size,
            grad_accum_steps=trainer.grad_accum_steps,
            eval_batches=trainer.eval_batches,
            seed=seed,
            device=device,
            shard=shard,
        )
    raise ConfigError(f"data.kind: unknown kind {kind!r}; valid: {', '.join(DATA_KINDS)}")
