"""Analysis of the local results store: tables, efficiency, performance profiles, figures, paper references.

Modules, in data-flow order:

* :mod:`~soapbench.report.store`: read ``results/runs/<experiment>/<run>/`` robustly, classify run status,
  flatten configs, find swept hyperparameters, group runs into configurations (same config up to the seed);
* :mod:`~soapbench.report.wandb_source`: the same runs from the W&B API (optional);
* :mod:`~soapbench.report.analysis`: best configuration per optimizer, target, steps/time-to-target, efficiency;
* :mod:`~soapbench.report.efficiency`: the SOAP paper's shortened-schedule power-law method;
* :mod:`~soapbench.report.profiles`: AlgoPerf performance profiles across workloads;
* :mod:`~soapbench.report.reference`: paper numbers from ``results/reference/*.yaml`` beside ours;
* :mod:`~soapbench.report.figures`, :mod:`~soapbench.report.render`: PNGs with sidecars, Markdown/CSV/JSON;
* :mod:`~soapbench.report.build`: one report into a directory, published atomically (``scripts/report.py``).
"""

from soapbench.report.store import ReportError

__all__ = ["ReportError"]
