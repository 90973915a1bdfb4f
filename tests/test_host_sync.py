"""Host-sync audit: no optimizer of ours reads a tensor value on the host in a plain (non-refresh) step.

On a GPU every ``.item()``, ``bool(tensor)``, ``float(tensor)``, ``.tolist()`` or ``.cpu()`` waits for the queued
kernels, so one in the hot path serialises the step. CUDA's own sync counter is unavailable on CPU, so this counts
the Python entry points of every device-to-host read instead, step by step. Refresh steps may read (each
eigh/QR/root checks its output is finite before it replaces the previous basis: ``soapbench.optimizers.linalg.is_finite``);
the counts there prove the counter sees reads at all. torch's own optimizers (adamw, adafactor_torch, muon_torch)
are not audited: their CPU step counters are host tensors by design.
"""

from __future__ import annotations

import pytest
import torch

from soapbench.optimizers import get_spec

HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")
F = 4
# The calls (0-based) that refresh with precondition_frequency F. SOAP-like: the first call builds the bases and
# step t = call refreshes when t mod F = 0. Shampoo: step t = call + 1 computes its roots when t mod F = 0.
SOAP_LIKE = {0, *range(F, 10, F)}
AUDITED = {
    "soap": ({"precondition_frequency": F}, SOAP_LIKE),
    "shampoo": ({"precondition_frequency": F}, set(range(F - 1, 10, F))),
    "soap_muon": ({"precondition_frequency": F}, SOAP_LIKE),
    "kl_soap": ({"precondition_frequency": F}, SOAP_LIKE),
    "kl_shampoo": ({"precondition_frequency": F}, SOAP_LIKE),
    "adafactor": ({}, set()),
    "muon": ({}, set()),
}
SHAPES = [(16, 8), (16, 8), (8, 24), (8, 4, 3, 3)]  # two of one shape, a wide one, a conv kernel


@pytest.fixture
def host_reads(monkeypatch):
    """A list that collects the name of every host read of a tensor's value while ``counting[0]`` is True."""
    reads: list[str] = []
    counting = [False]
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            if counting[0]:
                reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads, counting


@pytest.mark.parametrize("name", sorted(AUDITED))
def test_plain_steps_read_nothing_on_the_host(name: str, host_reads) -> None:
    torch.manual_seed(0)
    kwargs, refresh_calls = AUDITED[name]
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in SHAPES]
    optimizer = get_spec(name).factory(params, lr=1e-3, **kwargs)
    reads, counting = host_reads
    per_call = []
    for _ in range(10):
        for param in params:
            param.grad = torch.randn_like(param)
        reads.clear()
        counting[0] = True
        optimizer.step()
        counting[0] = False
        per_call.append(list(reads))
    for call, found in enumerate(per_call):
        if call not in refresh_calls:
            assert found == [], f"{name}: call {call} read tensor values on the host: {found}"
    if refresh_calls:
        assert per_call[min(refresh_calls)], "the counter saw no read in a refresh step: it is not counting"
