"""The shared core, in two wings and the data:

- :mod:`common.flows`: the flow library: the bijector contract, layers, elementwise maps and
  conditioning schemes, base distributions, ``Flow``, manifold flows and ``check_bijector``.
  It knows nothing of configs, files or experiments.
- :mod:`common.run`: the run machinery: typed configs, the one training loop and its
  objectives, tracking, the command line, figures and reports.
- :mod:`common.data`: datasets (offline builds and real downloads), loaded and validated.
"""
