"""The run machinery: how a flow is configured, trained, tracked and reported.

Modules: ``config`` (typed configs, unknown keys rejected), ``loop`` (the one training loop)
and ``objectives`` (what it optimises: maximum likelihood, reverse KL), ``distributed``
(data-parallel training under torchrun), ``steps`` (eager and compiled gradients),
``tracking`` (the MLflow facade), ``entry`` (what ``python -m papers.<paper>.train`` runs: it
parses before anything heavy is imported) and ``cli`` (config, tracker, training), ``load``
(a finished run back to a flow), ``baselines``, ``plotting`` and ``reports``.
"""
