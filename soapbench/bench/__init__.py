"""Optimizer benchmarks: what one optimizer step costs, how much state it keeps, and what training does with it.

The pieces, each a module:

* :mod:`~soapbench.bench.catalog`: which optimizers (every registered one) and model presets, with which settings
  (``configs/optimizer/<name>.yaml`` as the trainer reads it).
* :mod:`~soapbench.bench.shapes`: a preset's parameters, on the meta device or materialised, and the fixed random
  gradients the step timings feed.
* :mod:`~soapbench.bench.theory` and :mod:`~soapbench.bench.memory`: optimizer-state bytes, counted from each
  algorithm's state layout and measured on the built optimizer.
* :mod:`~soapbench.bench.step_timing` and :mod:`~soapbench.bench.peers`: ``optimizer.step()`` alone, ours and other
  libraries' implementations interleaved in one process on the same shapes and gradients.
* :mod:`~soapbench.bench.throughput`: tokens/s, step time, optimizer share and MFU from short runs of the real trainer.
* :mod:`~soapbench.bench.report`: the self-describing Markdown + JSON report.

``scripts/bench_optimizers.py`` runs them all; ``scripts/optimizer_memory.py`` prints the memory table alone.
"""
