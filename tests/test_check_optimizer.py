"""check-optimizer: the contract, golden parity and real runs on any optimizer, as a pass/fail table."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from soapbench.optimizer_check import check_optimizer
from soapbench.optimizer_check.training import check_resume
from soapbench.optimizers.soap import SOAP
from tests.conftest import REPO


class ForgetfulMomentum(torch.optim.Optimizer):
    """Deliberately broken: heavy-ball momentum kept outside ``state`` (a checkpoint loses it) and the lr read once
    at construction (schedulers and per-group lrs are ignored)."""

    def __init__(self, params, lr=0.05, momentum=0.9):
        super().__init__(params, dict(lr=lr, momentum=momentum))
        self.fixed_lr = lr
        self.velocity = {}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                v = self.velocity.setdefault(p, torch.zeros_like(p))
                v.mul_(group["momentum"]).add_(p.grad)
                p.add_(v, alpha=-self.fixed_lr)
        return loss


def _rows(rows) -> dict[str, str]:
    return {row.check: row.status for row in rows}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "check_optimizer.py"), *args], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, timeout=300)  # fmt: skip


def test_a_broken_optimizer_is_reported_by_the_checks_it_breaks() -> None:
    broken = _cli("tests.test_check_optimizer.ForgetfulMomentum", "--no-training")
    assert broken.returncode == 1, broken.stderr
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in broken.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| check")}  # fmt: skip
    assert rows["contract: state_dict"] == "FAIL", "its momentum is not in the state_dict"
    assert rows["contract: param_groups"] == "FAIL", "a group's own lr is ignored"
    assert rows["contract: convergence"] == "pass" and rows["parameters without gradients"] == "pass"
    assert rows["golden parity"] == "skip"
    assert "checks failed: contract: param_groups" in broken.stdout
    resume = check_resume(["optimizer=custom", f"optimizer.target={__name__}.ForgetfulMomentum"])
    assert resume[0] == "fail" and "differs from the uninterrupted run" in resume[1], resume


def test_torch_sgd_passes_and_the_resume_check_sees_bit_identity() -> None:
    _, rows = check_optimizer("torch.optim.SGD", {"lr": 0.01, "momentum": 0.9}, training=False)
    assert rows and all(row.status in ("pass", "skip") for row in rows), [
        (r.check, r.detail) for r in rows if r.status == "fail"
    ]
    status, detail = check_resume(["optimizer=custom", "optimizer.target=torch.optim.SGD", "++optimizer.lr=0.01",
                                   "++optimizer.momentum=0.9"])  # fmt: skip
    assert status == "pass", detail


class PeerLikeSOAP(SOAP):
    """Our SOAP behind a peer's narrower constructor: like heavyball's SOAP, it takes no correct_bias,
    normalize_grads or data_format (it runs with their reference values)."""

    def __init__(self, params, lr=3e-3, betas=(0.95, 0.95), shampoo_beta=-1, eps=1e-8, weight_decay=0.01,
                 precondition_frequency=10, max_precond_dim=10000, merge_dims=False, precondition_1d=False):  # fmt: skip
        super().__init__(params, lr=lr, betas=betas, shampoo_beta=shampoo_beta, eps=eps, weight_decay=weight_decay,
                         precondition_frequency=precondition_frequency, max_precond_dim=max_precond_dim,
                         merge_dims=merge_dims, precondition_1d=precondition_1d)  # fmt: skip


def _parity_row(name: str, kwargs: dict | None = None, golden: str | None = None):
    (parity,) = [row for row in check_optimizer(name, kwargs, training=False, contract=False, golden=golden)[1]
                 if row.check.startswith("golden parity")]  # fmt: skip
    return parity


def test_golden_parity_passes_for_our_soap_and_names_what_a_peer_does_not_take() -> None:
    parity = _parity_row("soap")
    assert parity.status == "pass" and parity.detail.startswith("soap_f64"), parity
    assert "not taken" not in parity.detail, "our SOAP takes every hyperparameter of the golden run"
    assert _parity_row("soap", {"eps": 1e-3}).status == "pass", (
        "the golden's own eps is used, whatever the target's kwargs"
    )
    peer = _parity_row(f"{__name__}.PeerLikeSOAP", golden="soap_f64")
    assert peer.status == "pass", peer
    assert peer.detail.endswith("; not taken by this class: normalize_grads, data_format, correct_bias"), peer.detail


def test_bad_input_is_one_error_line_and_exit_2() -> None:
    bad = _cli("torch.optim.SGD", "--kwargs", "lr=0.1", "momentun=0.9", "--no-training")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert "--kwargs momentun: not a hyperparameter of torch.optim.SGD; valid: lr, momentum" in bad.stderr
    assert _cli("not_an_optimizer").returncode == 2
