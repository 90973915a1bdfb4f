"""The golden driver, for the golden tests (it lives in soapbench.golden, which check-optimizer uses too)."""

from soapbench.golden import (
    PARAM_NAMES,
    golden_dir,
    load_golden,
    load_problem,
    max_abs_diff,
    run_trajectory,
    single_thread_default_dtype,
)

__all__ = [
    "PARAM_NAMES",
    "golden_dir",
    "load_golden",
    "load_problem",
    "max_abs_diff",
    "run_trajectory",
    "single_thread_default_dtype",
]
