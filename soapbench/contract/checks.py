"""The contract's checks, one function per behaviour, grouped by category.

Every check takes a :class:`Case` (an ``OptimizerInfo``, one of its ``OptimizerInput`` s and a dtype), raises
``AssertionError`` naming what differs when the optimizer breaks the contract, :class:`Skip` when the behaviour
does not apply to it, and returns when it holds. Any other exception is a failure too (a crash is a finding).
"""

from __future__ import annotations

import copy
import inspect
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from soapbench.contract.problem import (
    Problem,
    assert_identical,
    assert_same_params,
    copy_state_dict,
    dtype_structure,
    floating_tensor_path,
    get_path,
    make_problem,
    round_trip,
    set_path,
    step_scheduler,
    train,
)
from soapbench.contract.torch_testing import (
    ErrorOptimizerInput,
    OptimizerErrorEnum,
    OptimizerInfo,
    OptimizerInput,
)

CONVERGENCE_STEPS = 15
STEPS_BEFORE_SAVE = 3
STEPS_AFTER_LOAD = 4


class Skip(Exception):
    """The behaviour does not apply to this optimizer or input; the message says why."""


@dataclass(frozen=True)
class Case:
    info: OptimizerInfo
    optim_input: OptimizerInput
    dtype: torch.dtype
    device: str = "cpu"

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.optim_input.kwargs)

    @property
    def label(self) -> str:
        return f"{self.optim_input.desc or 'default'} · {str(self.dtype).removeprefix('torch.')}"

    def problem(self, dtype: torch.dtype | None = None, seed: int = 0) -> Problem:
        return make_problem(
            dtype or self.dtype,
            matrices_only=getattr(self.info, "matrices_only", False),
            channels_last=getattr(self.optim_input, "channels_last", False),
            device=self.device,
            seed=seed,
        )

    def build(self, params: Any, **overrides: Any) -> torch.optim.Optimizer:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # option warnings (SOAP's merge_dims) are not what is checked
            return self.info.optim_cls(params, **{**self.kwargs, **overrides})

    def accepts(self, name: str) -> bool:
        return name in self.kwargs or name in _signature_defaults(self.info.optim_cls)

    def value(self, name: str) -> Any:
        return self.kwargs.get(name, _signature_defaults(self.info.optim_cls).get(name))

    def float_lr(self) -> float:
        if not self.accepts("lr"):
            raise Skip("the optimizer has no lr hyperparameter")
        lr = self.value("lr")
        if isinstance(lr, Tensor):
            raise Skip("this input's lr is already a tensor")
        if lr is None:
            raise Skip("the optimizer's lr has no default")
        return float(lr)


def _signature_defaults(factory: Callable) -> dict[str, Any]:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    return {name: p.default for name, p in parameters.items() if p.default is not inspect.Parameter.empty}


Check = Callable[[Case], None]
CHECKS: dict[str, list[tuple[str, Check]]] = {}


def check(category: str, label: str) -> Callable[[Check], Check]:
    def register(function: Check) -> Check:
        CHECKS.setdefault(category, []).append((label, function))
        return function

    return register


# ----------------------------------------------------------------------------------------------------------------
# convergence: the loss falls, with step(closure), with and without LR schedulers
# ----------------------------------------------------------------------------------------------------------------


def _converges(case: Case, make_scheduler: Callable | None) -> None:
    problem = case.problem()
    optimizer = case.build(problem.params)
    scheduler = make_scheduler(optimizer) if make_scheduler is not None else None
    initial = problem.loss().item()

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = problem.loss()
        loss.backward()
        return loss

    for _ in range(CONVERGENCE_STEPS):
        returned = optimizer.step(closure)
        if not isinstance(returned, Tensor):
            raise AssertionError(f"step(closure) returned {returned!r}, not the closure's loss")
        step_scheduler(scheduler, returned.detach())
    final = problem.loss().item()
    if not final < initial:
        raise AssertionError(f"the loss did not fall in {CONVERGENCE_STEPS} steps: {initial:.6g} -> {final:.6g}")


@check("convergence", "loss falls")
def loss_falls(case: Case) -> None:
    _converges(case, None)


@check("convergence", "loss falls under each LR scheduler")
def loss_falls_with_schedulers(case: Case) -> None:
    schedulers = [make for group in case.info.scheduler_inputs for make in group]
    if not schedulers:
        raise Skip("the OptimizerInfo lists no schedulers")
    for make_scheduler in schedulers:
        try:
            _converges(case, make_scheduler)
        except AssertionError as error:
            name = type(make_scheduler(case.build(case.problem().params))).__name__
            raise AssertionError(f"{name}: {error}") from None


# ----------------------------------------------------------------------------------------------------------------
# param_groups: per-group lr and weight_decay
# ----------------------------------------------------------------------------------------------------------------


@check("param_groups", "a group with lr 0 stays put while the other trains")
def lr_zero_group(case: Case) -> None:
    case.float_lr()
    problem = case.problem()
    initial = problem.snapshot()
    frozen = problem.params[1:2]
    trained = [p for i, p in enumerate(problem.params) if i != 1]
    optimizer = case.build([{"params": trained}, {"params": frozen, "lr": 0.0}])
    loss_before = problem.loss().item()
    train(problem, optimizer, 6)
    assert_same_params(frozen, initial[1:2], problem.names[1:2], "lr-0 group")
    if all(torch.equal(p, initial[i]) for i, p in enumerate(problem.params) if i != 1):
        raise AssertionError("the group with the default lr did not move")
    if not problem.loss().item() < loss_before:
        raise AssertionError("the loss did not fall with one group frozen")


@check("param_groups", "per-group lr and weight_decay act as in a separate optimizer")
def group_hyperparameters(case: Case) -> None:
    lr = case.float_lr()
    settings: dict[str, Any] = {"lr": lr / 2}
    if case.accepts("weight_decay"):
        settings["weight_decay"] = 0.05 if case.value("weight_decay") != 0.05 else 0.1
    problem = case.problem()
    alone_first, alone_rest = problem.clone(), problem.clone()
    first, rest = problem.params[:2], problem.params[2:]
    grouped = case.build([{"params": first, **settings}, {"params": rest}])
    separate_first = case.build(alone_first.params[:2], **settings)
    separate_rest = case.build(alone_rest.params[2:])
    for _ in range(6):
        problem.backward()
        alone_first.backward()
        alone_rest.backward()
        grouped.step()
        separate_first.step()
        separate_rest.step()
    assert_same_params(first, alone_first.params[:2], problem.names[:2], f"group with {settings}")
    assert_same_params(rest, alone_rest.params[2:], problem.names[2:], "group with the defaults")


# ----------------------------------------------------------------------------------------------------------------
# zero_grad: steps on all-zero gradients change nothing (weight decay 0)
# ----------------------------------------------------------------------------------------------------------------


@check("zero_grad", "zero-gradient steps are no-ops with weight_decay=0")
def zero_grad_is_noop(case: Case) -> None:
    overrides = {"weight_decay": 0.0} if case.accepts("weight_decay") else {}
    problem = case.problem()
    initial = problem.snapshot()
    optimizer = case.build(problem.params, **overrides)
    for _ in range(5):
        for param in problem.params:
            param.grad = torch.zeros_like(param)
        optimizer.step()
    assert_same_params(problem.params, initial, problem.names, "after zero-gradient steps")


# ----------------------------------------------------------------------------------------------------------------
# grads_untouched: step() never writes into p.grad
# ----------------------------------------------------------------------------------------------------------------


@check("grads_untouched", "step leaves p.grad as it was")
def grads_untouched(case: Case) -> None:
    problem = case.problem()
    optimizer = case.build(problem.params)
    for step in range(5):
        problem.backward()
        grads = [param.grad.clone() for param in problem.params]
        optimizer.step()
        for name, param, grad in zip(problem.names, problem.params, grads):
            if not torch.equal(param.grad, grad):
                raise AssertionError(f"step {step + 1} modified the gradient of {name!r} in place")


# ----------------------------------------------------------------------------------------------------------------
# state_dict: save, load, continue
# ----------------------------------------------------------------------------------------------------------------


def _continue_from_checkpoint(
    case: Case, transform: Callable[[dict], dict], named: bool = False, step_as_number: bool = False
) -> None:
    """Train, checkpoint, train on; a fresh optimizer loaded from the (transformed) checkpoint must continue with
    the same parameters and end with the same state, bit for bit (``step_as_number``: the step compared by value,
    whichever representation the optimizer keeps after loading another one)."""
    problem = case.problem()

    def params_of(p: Problem) -> list:
        return list(zip(p.names, p.params)) if named else p.params

    optimizer = case.build(params_of(problem))
    train(problem, optimizer, STEPS_BEFORE_SAVE)
    saved = transform(round_trip(optimizer.state_dict(), weights_only=True))
    resumed_problem = problem.clone()
    train(problem, optimizer, STEPS_AFTER_LOAD)

    resumed = case.build(params_of(resumed_problem))
    resumed.load_state_dict(saved)
    train(resumed_problem, resumed, STEPS_AFTER_LOAD)
    assert_same_params(resumed_problem.params, problem.params, problem.names, "continued after load_state_dict")
    normalize = _steps_as_floats if step_as_number else (lambda state_dict: state_dict)
    assert_identical(normalize(resumed.state_dict()), normalize(optimizer.state_dict()), "state_dict after continuing")


def _steps_as_floats(state_dict: dict) -> dict:
    state_dict = copy_state_dict(state_dict)
    for state in state_dict["state"].values():
        if "step" in state:
            state["step"] = float(state["step"])
    return state_dict


@check("state_dict", "save (torch.save, weights_only load), load, continue: bit-identical")
def state_dict_continues(case: Case) -> None:
    _continue_from_checkpoint(case, lambda saved: saved)


@check("state_dict", "named parameters: names saved, reload continues bit-identically")
def state_dict_named(case: Case) -> None:
    problem = case.problem()
    optimizer = case.build(list(zip(problem.names, problem.params)))
    names = [name for group in optimizer.state_dict()["param_groups"] for name in group.get("param_names", [])]
    if names != problem.names:
        raise AssertionError(f"state_dict param_names {names} != {problem.names}")
    _continue_from_checkpoint(case, lambda saved: saved, named=True)


def _older_format(saved: dict) -> dict:
    """What older checkpoints look like: no param_names, and "step" in the other common representation (a float
    tensor, as torch's optimizers save it, where this optimizer keeps a number, and a number where it keeps a
    tensor)."""
    for group in saved["param_groups"]:
        group.pop("param_names", None)
    for state in saved["state"].values():
        if "step" in state:
            step = state["step"]
            state["step"] = step.item() if isinstance(step, Tensor) else torch.tensor(float(step))
    return saved


@check("state_dict", "older format (no param_names, step as tensor/number) loads and continues")
def state_dict_older_format(case: Case) -> None:
    _continue_from_checkpoint(case, _older_format, named=True, step_as_number=True)


@check("state_dict", "a checkpoint of the other float dtype loads: state cast as a fresh run allocates it")
def state_dict_dtype_change(case: Case) -> None:
    source_dtype = {torch.float32: torch.float64, torch.float64: torch.float32}.get(case.dtype)
    if source_dtype is None:
        raise Skip(f"only float32 <-> float64 checkpoints are checked, not {case.dtype}")
    source = case.problem(dtype=source_dtype)
    source_optimizer = case.build(source.params)
    train(source, source_optimizer, STEPS_BEFORE_SAVE)
    saved = round_trip(source_optimizer.state_dict())

    target = case.problem()
    with torch.no_grad():
        for param, value in zip(target.params, source.params):
            param.copy_(value)
    loaded = case.build(target.params)
    loaded.load_state_dict(saved)
    train(target, loaded, STEPS_AFTER_LOAD)
    if not all(torch.isfinite(param).all() for param in target.params):
        raise AssertionError(f"non-finite parameters after loading a {source_dtype} checkpoint")
    native = case.problem()
    native_optimizer = case.build(native.params)
    train(native, native_optimizer, STEPS_BEFORE_SAVE + STEPS_AFTER_LOAD)
    expected = dtype_structure(native_optimizer.state_dict()["state"])
    actual = dtype_structure(loaded.state_dict()["state"])
    if actual != expected:
        raise AssertionError(
            f"state dtypes after loading a {source_dtype} checkpoint: {actual} != fresh run's {expected}"
        )


# ----------------------------------------------------------------------------------------------------------------
# hooks: step, state_dict and load_state_dict, pre and post
# ----------------------------------------------------------------------------------------------------------------


@check("hooks", "step pre/post hooks run once per step, around the update")
def step_hooks(case: Case) -> None:
    problem = case.problem()
    optimizer = case.build(problem.params)
    events: list[tuple[str, list[Tensor]]] = []
    pre = optimizer.register_step_pre_hook(lambda opt, args, kwargs: events.append(("pre", problem.snapshot())))
    post = optimizer.register_step_post_hook(lambda opt, args, kwargs: events.append(("post", problem.snapshot())))
    for _ in range(3):
        problem.backward()
        before = problem.snapshot()
        optimizer.step()
        after = problem.snapshot()
        if [kind for kind, _ in events[-2:]] != ["pre", "post"]:
            raise AssertionError(f"hook calls {[kind for kind, _ in events]}: expected one pre and one post per step")
        assert_same_params(events[-2][1], before, problem.names, "the pre-hook's view (before the update)")
        assert_same_params(events[-1][1], after, problem.names, "the post-hook's view (after the update)")
    pre.remove()
    post.remove()
    problem.backward()
    optimizer.step()
    if len(events) != 6:
        raise AssertionError("a removed step hook still ran")


@check("hooks", "state_dict pre/post hooks: the post-hook's result is returned")
def state_dict_hooks(case: Case) -> None:
    problem = case.problem()
    optimizer = case.build(problem.params)
    train(problem, optimizer, 2)
    calls: list[str] = []
    optimizer.register_state_dict_pre_hook(lambda opt: calls.append("pre"))

    def post(opt, state_dict):
        calls.append("post")
        return {**state_dict, "from_post_hook": True}

    optimizer.register_state_dict_post_hook(post)
    state_dict = optimizer.state_dict()
    if calls != ["pre", "post"] or state_dict.get("from_post_hook") is not True:
        raise AssertionError(f"hooks ran {calls}; returned keys {sorted(state_dict)}")


@check("hooks", "load_state_dict pre-hook's returned state is loaded; post-hook changes stay")
def load_state_dict_hooks(case: Case) -> None:
    problem = case.problem()
    optimizer = case.build(problem.params)
    train(problem, optimizer, STEPS_BEFORE_SAVE)
    saved = optimizer.state_dict()
    first_state = next(iter(saved["state"].values()), None)
    path = floating_tensor_path(first_state) if first_state is not None else None
    if path is None:
        raise Skip("the optimizer keeps no floating state to change in a hook")
    first_id = next(iter(saved["state"]))
    loaded_problem = problem.clone()

    def pre_hook(opt, state_dict):
        changed = copy_state_dict(state_dict)
        for group in changed["param_groups"]:
            group["lr"] = 0.25 * group["lr"]
        set_path(changed["state"][first_id], path, get_path(changed["state"][first_id], path) + 1.0)
        return changed

    loaded = case.build(loaded_problem.params)
    handle = loaded.register_load_state_dict_pre_hook(pre_hook)
    loaded.load_state_dict(saved)
    handle.remove()
    expected = pre_hook(None, saved)
    actual = loaded.state_dict()
    assert_identical(actual["state"], expected["state"], "state loaded through a pre-hook")
    lrs = [group["lr"] for group in actual["param_groups"]]
    if lrs != [group["lr"] for group in expected["param_groups"]]:
        raise AssertionError(f"the pre-hook's lr was not loaded: {lrs}")

    reloaded_problem = problem.clone()
    reloaded_param = reloaded_problem.params[first_id]

    def post_hook(opt):
        opt.param_groups[0]["lr"] = 0.125
        get_path(opt.state[reloaded_param], path).fill_(0.5)

    reloaded = case.build(reloaded_problem.params)
    reloaded.register_load_state_dict_post_hook(post_hook)
    reloaded.load_state_dict(saved)
    if reloaded.param_groups[0]["lr"] != 0.125 or not bool(
        (get_path(reloaded.state[reloaded_param], path) == 0.5).all()
    ):
        raise AssertionError("changes a load_state_dict post-hook made were overwritten")


# ----------------------------------------------------------------------------------------------------------------
# deepcopy
# ----------------------------------------------------------------------------------------------------------------


@check("deepcopy", "a deepcopy continues bit-identically and shares no state")
def deepcopy_continues(case: Case) -> None:
    problem = case.problem()
    optimizer = case.build(problem.params)
    train(problem, optimizer, STEPS_BEFORE_SAVE)
    copied_params, copied = copy.deepcopy((problem.params, optimizer))
    # torch's __getstate__ keeps defaults, state and param_groups; private caches may be rebuilt, public ones not.
    missing = sorted(name for name in set(vars(optimizer)) - set(vars(copied)) if not name.startswith("_"))
    if missing:
        raise AssertionError(f"public attributes not copied: {missing}")
    copied_problem = type(problem)(problem.names, copied_params, problem.inputs, problem.targets)
    train(copied_problem, copied, STEPS_AFTER_LOAD)  # the copy first: the original must not feel it
    train(problem, optimizer, STEPS_AFTER_LOAD)
    assert_same_params(copied_problem.params, problem.params, problem.names, "the deepcopy after continuing")
    assert_identical(copied.state_dict(), optimizer.state_dict(), "the deepcopy's state")


# ----------------------------------------------------------------------------------------------------------------
# tensor_lr: torch.optim's rules for a tensor learning rate
# ----------------------------------------------------------------------------------------------------------------


@check("tensor_lr", "0-dim and 1-element tensor lr train as the float they hold (StepLR updating it)")
def tensor_lr_matches_float(case: Case) -> None:
    lr = case.float_lr()
    if case.kwargs.get("foreach") and not case.kwargs.get("capturable"):
        raise Skip("torch.optim rejects a tensor lr with foreach=True unless capturable=True")
    for tensor_lr in (torch.tensor(lr, dtype=torch.float64), torch.tensor([lr], dtype=torch.float64)):
        results = []
        for value in (tensor_lr, lr):
            problem = case.problem()
            optimizer = case.build(problem.params, lr=value)
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
            train(problem, optimizer, 5, scheduler)
            results.append(problem.params)
        for name, a, b in zip(case.problem().names, *results):
            torch.testing.assert_close(a, b, msg=lambda m: f"lr of shape {tuple(tensor_lr.shape)}, {name}: {m}")


@check("tensor_lr", "a multi-element tensor lr is rejected at construction")
def tensor_lr_multi_element(case: Case) -> None:
    case.float_lr()
    try:
        case.build(case.problem().params, lr=torch.tensor([1e-3, 1e-3]))
    except ValueError as error:
        if "Tensor lr must be 1-element" not in str(error):
            raise AssertionError(f"ValueError without torch's message: {error}") from None
        return
    except Exception as error:  # noqa: BLE001 -- the wrong exception is the finding
        raise AssertionError(
            f"{type(error).__name__} instead of ValueError('Tensor lr must be 1-element'): {error}"
        ) from error
    raise AssertionError("accepted a 2-element tensor lr")


# ----------------------------------------------------------------------------------------------------------------
# errors: each ErrorOptimizerInput on its own
# ----------------------------------------------------------------------------------------------------------------


def run_error_input(info: OptimizerInfo, error_input: ErrorOptimizerInput, dtype: torch.dtype, device: str) -> None:
    """Construct (and for step errors, step) with the bad input; the right error and message must come out."""
    optim_input = error_input.optimizer_error_input
    params = optim_input.params
    if params is None:
        params = make_problem(dtype, matrices_only=getattr(info, "matrices_only", False), device=device).params
    expected, pattern = error_input.error_type, error_input.error_regex

    def attempt() -> None:
        optimizer = info.optim_cls(params, **optim_input.kwargs)
        if error_input.error_on == OptimizerErrorEnum.STEP_ERROR:
            optimizer.step()

    if issubclass(expected, Warning):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            attempt()
        if not any(issubclass(w.category, expected) and re.search(pattern, str(w.message)) for w in caught):
            raise AssertionError(f"no {expected.__name__} matching {pattern!r}; got {[str(w.message) for w in caught]}")
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            attempt()
    except expected as error:
        if not re.search(pattern, str(error)):
            raise AssertionError(f"{type(error).__name__}({str(error)!r}) does not match {pattern!r}") from None
        return
    except Exception as error:  # noqa: BLE001 -- the wrong exception is the finding
        raise AssertionError(f"{type(error).__name__}({error}) instead of {expected.__name__}") from None
    when = "step" if error_input.error_on == OptimizerErrorEnum.STEP_ERROR else "construction"
    raise AssertionError(f"no {expected.__name__} at {when}")
