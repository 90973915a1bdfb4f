"""The OLMo-style LM: shapes, the paper's parameter counts, RoPE, QK-LayerNorm, causality, z-loss, roles."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from soapbench.models.olmo import OLMo, apply_rope, rope_tables
from soapbench.models.registry import ModelConfigError, build_model
from soapbench.optimizers.param_groups import parameter_roles

MODEL_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared, oversubscribed CPU, OpenMP spin-waiting makes 2 threads ~20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**overrides) -> OLMo:
    torch.manual_seed(0)
    args = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, mlp_hidden=64, seq_len=16, z_loss=1e-4)
    args.update(overrides)
    return OLMo(**args)


def preset(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(MODEL_CONFIGS / f"{name}.yaml"))


def test_forward_backward_shapes_and_every_parameter_gets_a_gradient() -> None:
    model = tiny(embedding_size=128)
    tokens = torch.randint(0, 97, (3, 16))
    logits = model(tokens)
    assert logits.shape == (3, 16, 128)
    loss = model.loss(logits, tokens)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(
    "name,total,non_embedding",
    [("lm_360m", 368e6, 302e6), ("lm_660m", 661e6, 571e6)],  # OLMo configs 300m.yaml / 600m.yaml
)
def test_paper_presets_match_the_paper_parameter_counts(name: str, total: float, non_embedding: float) -> None:
    with torch.device("meta"):
        model = build_model(preset(name))
    assert abs(model.num_parameters() / total - 1) < 0.02
    assert abs(model.num_parameters(non_embedding=True) / non_embedding - 1) < 0.02
    # The padded T5 vocabulary is OLMo's embedding_size; both rounds stay within 2 %.
    assert model.embed.weight.shape == (32128, model.d_model)


def test_tiny_preset_is_small_and_has_the_same_architecture() -> None:
    config = preset("lm_tiny")
    assert set(config) == set(preset("lm_360m"))
    with torch.device("meta"):
        model = build_model(config)
    assert model.num_parameters() < 10_000_000


def test_rope_scores_depend_only_on_relative_position() -> None:
    torch.manual_seed(0)
    cos, sin = rope_tables(32, 8)
    q, k = torch.randn(8), torch.randn(8)

    def score(m: int, n: int) -> torch.Tensor:
        qm = apply_rope(q.view(1, 1, 1, 8), cos[m : m + 1], sin[m : m + 1])
        kn = apply_rope(k.view(1, 1, 1, 8), cos[n : n + 1], sin[n : n + 1])
        return (qm * kn).sum()

    assert torch.allclose(score(5, 2), score(20, 17), atol=1e-5)
    assert not torch.allclose(score(5, 2), score(5, 4), atol=1e-3)
    rotated = apply_rope(q.view(1, 1, 1, 8), cos[7:8], sin[7:8])
    assert torch.allclose(rotated.norm(), q.norm(), atol=1e-5)  # a rotation keeps the norm


def test_qk_layernorm_makes_attention_invariant_to_the_scale_of_q_and_k() -> None:
    model = tiny().eval()
    tokens = torch.randint(0, 97, (2, 16))
    before = model(tokens)
    d = model.d_model
    with torch.no_grad():
        for block in model.blocks:
            block.att_proj.weight[: 2 * d] *= 7.0  # the q and k rows of the fused projection
    assert torch.allclose(model(tokens), before, atol=1e-4)
    with torch.no_grad():
        model.blocks[0].att_proj.weight[2 * d :] *= 7.0  # v is not normalised
    assert not torch.allclose(model(tokens), before, atol=1e-3)


def test_logits_are_causal() -> None:
    model = tiny().eval()
    tokens = torch.randint(0, 97, (1, 16))
    changed = tokens.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 97
    assert torch.allclose(model(tokens)[0, :10], model(changed)[0, :10], atol=1e-5)
    assert not torch.allclose(model(tokens)[0, 10:], model(changed)[0, 10:], atol=1e-3)


def test_loss_is_cross_entropy_plus_z_loss() -> None:
    model = tiny(z_loss=1e-2)
    tokens = torch.randint(0, 97, (2, 16))
    logits = model(tokens)
    plain = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten())
    z = logits.logsumexp(-1).pow(2).mean()
    assert torch.allclose(model.loss(logits, tokens, with_z_loss=False), plain, atol=1e-5)
    assert torch.allclose(model.loss(logits, tokens), plain + 1e-2 * z, atol=1e-5)


def test_parameter_roles_and_mitchell_init() -> None:
    model = tiny(n_layers=4)
    roles = parameter_roles(model)
    assert roles["embed.weight"] == "embedding"
    assert roles["lm_head.weight"] == "head"
    assert roles["blocks.0.att_proj.weight"] == "matrix"
    assert roles["blocks.0.q_norm.weight"] == "vector"
    assert not any(name.endswith(".bias") for name in roles)  # no biases anywhere
    # Residual output projections shrink with depth: std / sqrt(2 (layer + 1)).
    first, last = model.blocks[0].attn_out.weight.std(), model.blocks[3].attn_out.weight.std()
    assert 1.6 < first / last < 3.4  # expected ratio 2


def test_flops_per_token_is_6n_plus_attention() -> None:
    model = tiny(embedding_size=128)
    matmul = model.num_parameters(non_embedding=True) + 128 * 32
    assert model.flops_per_token() == 6 * matmul + 12 * 2 * 32 * 16


def test_bad_arguments_raise_config_errors() -> None:
    with pytest.raises(ModelConfigError, match="n_heads"):
        build_model(
            {
                "arch": "olmo",
                "vocab_size": 10,
                "d_model": 30,
                "n_layers": 1,
                "n_heads": 4,
                "mlp_hidden": 8,
                "seq_len": 8,
            }
        )
    with pytest.raises(ModelConfigError, match="model.n_layer"):
        build_model({"arch": "olmo", "n_layer": 2})
