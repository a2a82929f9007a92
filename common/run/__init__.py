"""The run machinery: how a flow is configured, trained, tracked and reported.

Modules: ``config`` (typed configs, unknown keys rejected), ``loop`` (the one training loop)
and ``objectives`` (what it optimises: maximum likelihood, reverse KL), ``tracking`` (the
MLflow facade), ``cli`` (the shared entry point), ``baselines``, ``plotting`` and ``reports``.
"""
