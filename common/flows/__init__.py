"""The flow library: everything a flow *is*, nothing about how a run is configured or logged.

The contract (:mod:`common.flows.bijector`): ``forward(x, context=None) -> (z, ldj)`` maps data
to latent, ``inverse(z, context=None) -> (x, ldj)``, ``ldj`` of shape ``(B,)`` in nats, and
log p(x) = log p_base(z) + ldj. Every layer passes :func:`common.flows.testing.check_bijector`.

Modules: ``bijector`` (contract, ``Compose``, ``Inverse``, permutations), ``elementwise``
(monotone maps of the line) and ``coupling`` (the scheme that conditions them), ``layers``,
``image`` (multi-scale building blocks), ``nets`` (conditioner networks), ``dequantize``,
``distributions``, ``flow`` (``Flow``), ``logdet``, ``splines``, the manifold flows
(``manifolds``, ``circle``, ``torus``, ``sphere``), ``distributed`` (batch statistics over the
processes of a data-parallel run), ``precision`` (bfloat16 networks in a float32 flow) and
``testing``.
"""
