"""OLMo-style decoder-only transformer, the language model of the SOAP paper's 210m/360m/660m runs.

SOAP (Vyas et al. 2024) trained its language models with the OLMo codebase of Zhao et al. 2024
("Deconstructing what makes a good optimizer", ``rosieyzh/optimizers-llm`` ``configs/base-c4-t5.yaml``).
This module rebuilds that architecture in plain PyTorch:

* pre-norm "sequential" blocks: ``x + attn(LN(x))`` then ``x + MLP(LN(x))``;
* LayerNorm with a gain and **no bias** (OLMo ``layer_norm_type: default``, ``bias_for_layer_norm: false``),
  eps 1e-5, also for the final norm;
* a fused ``att_proj`` (d -> 3d) as in OLMo. This matters for matrix preconditioners: SOAP and
  Shampoo see Q, K and V as one 3d x d matrix there, so we keep it fused;
* QK-LayerNorm over the full d_model-wide q and k *before* splitting heads (OLMo ``attention_layer_norm``);
* RoPE (theta 10000, rotate-half convention, computed in fp32) on every head;
* GeLU (exact) MLP d -> ``mlp_hidden`` -> d, no biases anywhere;
* untied input embedding (``embed``) and output layer (``lm_head``) with ``embedding_size`` rows
  (OLMo pads T5's 32,100 ids to 32,128; the extra rows are never targets);
* "mitchell" init: truncated normal (+-3 std) with std 1/sqrt(fan_in); the two residual output
  projections of layer i use std / sqrt(2 (i + 1)); embedding and head use std 1/sqrt(d_model);
* z-loss (OLMo ``softmax_auxiliary_loss``): ``z_loss * mean(logsumexp(logits)^2)`` added to the
  cross-entropy, coefficient 1e-4 in OLMo.

The forward returns logits; :meth:`OLMo.loss` turns logits and targets into the training objective.
Parameter names follow the harness's role conventions: ``embed`` is an ``nn.Embedding`` (role
"embedding") and ``lm_head.weight`` is the "head" (see ``optimizers/param_groups.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from soapbench.models.registry import register_model

ROPE_THETA = 10_000.0
NORM_EPS = 1e-5


def _mitchell_(weight: torch.Tensor, fan_in: int, layer_id: int | None = None) -> None:
    std = 1.0 / math.sqrt(fan_in)
    if layer_id is not None:
        std /= math.sqrt(2 * (layer_id + 1))
    nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-3 * std, b=3 * std)


def rope_tables(seq_len: int, head_dim: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each [seq_len, head_dim] in fp32, in the rotate-half layout (frequencies repeated twice)."""
    inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    positions = torch.arange(seq_len, device=device, dtype=torch.float32)
    angles = torch.outer(positions, inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate [B, heads, T, head_dim] by position; done in fp32 (OLMo ``rope_full_precision``) and cast back."""
    x32 = x.float()
    first, second = x32.chunk(2, dim=-1)
    rotated = torch.cat((-second, first), dim=-1)
    return (x32 * cos + rotated * sin).to(x.dtype)


class Block(nn.Module):
    def __init__(self, layer_id: int, d_model: int, n_heads: int, mlp_hidden: int, dropout: float) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.n_heads = n_heads
        self.dropout = dropout
        self.attn_norm = nn.LayerNorm(d_model, eps=NORM_EPS, bias=False)
        self.att_proj = nn.Linear(d_model, 3 * d_model, bias=False)
        self.q_norm = nn.LayerNorm(d_model, eps=NORM_EPS, bias=False)
        self.k_norm = nn.LayerNorm(d_model, eps=NORM_EPS, bias=False)
        self.attn_out = nn.Linear(d_model, d_model, bias=False)
        self.ff_norm = nn.LayerNorm(d_model, eps=NORM_EPS, bias=False)
        self.ff_proj = nn.Linear(d_model, mlp_hidden, bias=False)
        self.ff_out = nn.Linear(mlp_hidden, d_model, bias=False)

    def reset_parameters(self) -> None:
        d_model = self.att_proj.in_features
        for norm in (self.attn_norm, self.q_norm, self.k_norm, self.ff_norm):
            nn.init.ones_(norm.weight)
        # Input projections do not depend on depth; the residual outputs shrink with it (OLMo "mitchell").
        _mitchell_(self.att_proj.weight, d_model)
        _mitchell_(self.ff_proj.weight, d_model)
        _mitchell_(self.attn_out.weight, d_model, self.layer_id)
        _mitchell_(self.ff_out.weight, self.ff_out.in_features, self.layer_id)

    def attention(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, time, width = x.shape
        q, k, v = self.att_proj(x).split(width, dim=-1)
        q, k = self.q_norm(q).to(v.dtype), self.k_norm(k).to(v.dtype)
        head_dim = width // self.n_heads
        q, k, v = (t.view(batch, time, self.n_heads, head_dim).transpose(1, 2) for t in (q, k, v))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.attn_out(out.transpose(1, 2).reshape(batch, time, width))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + F.dropout(self.attention(self.attn_norm(x), cos, sin), self.dropout, self.training)
        mlp = self.ff_out(F.gelu(self.ff_proj(self.ff_norm(x))))
        return x + F.dropout(mlp, self.dropout, self.training)


@register_model("olmo")
class OLMo(nn.Module):
    """Decoder-only LM; ``forward(tokens [B, T]) -> logits [B, T, embedding_size]``."""

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        n_layers: int,
        n_heads: int,
        mlp_hidden: int,
        seq_len: int,
        z_loss: float = 0.0,
        dropout: float = 0.0,
        embedding_size: int | None = None,
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        if (d_model // n_heads) % 2:
            raise ValueError(f"head dim d_model/n_heads={d_model // n_heads} must be even for RoPE")
        embedding_size = embedding_size or vocab_size
        if embedding_size < vocab_size:
            raise ValueError(f"embedding_size={embedding_size} is smaller than vocab_size={vocab_size}")
        if z_loss < 0:
            raise ValueError(f"z_loss={z_loss} must be >= 0")
        self.vocab_size = vocab_size
        self.embedding_size = embedding_size
        self.d_model = d_model
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.mlp_hidden = mlp_hidden
        self.seq_len = seq_len
        self.z_loss = z_loss
        self.embed = nn.Embedding(embedding_size, d_model)
        self.blocks = nn.ModuleList(Block(i, d_model, n_heads, mlp_hidden, dropout) for i in range(n_layers))
        self.final_norm = nn.LayerNorm(d_model, eps=NORM_EPS, bias=False)
        self.lm_head = nn.Linear(d_model, embedding_size, bias=False)
        cos, sin = rope_tables(seq_len, d_model // n_heads, device=self.embed.weight.device)
        # Not persistent: derived from (seq_len, head_dim), so checkpoints stay independent of it.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.embed.weight.is_meta:
            return  # shape-only instance (parameter counting); nothing to initialise
        _mitchell_(self.embed.weight, self.d_model)
        _mitchell_(self.lm_head.weight, self.d_model)
        nn.init.ones_(self.final_norm.weight)
        for block in self.blocks:
            block.reset_parameters()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        time = tokens.shape[1]
        if time > self.seq_len:
            raise ValueError(f"sequence of {time} tokens is longer than seq_len={self.seq_len}")
        cos, sin = self.rope_cos[:time], self.rope_sin[:time]
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.lm_head(self.final_norm(x))

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, with_z_loss: bool = True) -> torch.Tensor:
        """Mean next-token cross-entropy (+ z-loss when ``with_z_loss`` and ``z_loss > 0``), in fp32.

        Use ``with_z_loss=False`` for validation: reported losses are plain cross-entropy.
        """
        logits = logits.reshape(-1, logits.shape[-1]).float()
        targets = targets.reshape(-1)
        # One logsumexp serves both terms; CE = lse - logit[target].
        lse = torch.logsumexp(logits, dim=-1)
        loss = (lse - logits.gather(1, targets[:, None]).squeeze(1)).mean()
        if with_z_loss and self.z_loss > 0:
            loss = loss + self.z_loss * lse.pow(2).mean()
        return loss

    def num_parameters(self, non_embedding: bool = False) -> int:
        """All parameters, or (``non_embedding``) those outside ``embed`` and ``lm_head``, as OLMo counts them."""
        skip = {id(self.embed.weight), id(self.lm_head.weight)} if non_embedding else set()
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward + backward): 6 N + 12 L d T (PaLM appendix B convention).

        N counts every matmul weight: the blocks and the LM head, not the embedding lookup. The
        attention term is the QK^T and AV products at full ``seq_len`` context, causal mask ignored.
        """
        matmul_params = self.num_parameters(non_embedding=True) + self.lm_head.weight.numel()
        return 6.0 * matmul_params + 12.0 * self.n_layers * self.d_model * self.seq_len
