"""Matched models: the same flow written in this project and in each peer library.

Every builder returns a :class:`Subject`: ``log_prob(x)`` and ``sample(n)`` as the library
spells them, its module (for the parameter count and the gradients), and, for ours, the
conditioner networks with the inputs they see (to time the flow against its bare networks).

Rows (issue 9, section 4):

- ``realnvp_vectors``: D = 16, 5 affine couplings, each transforming one half of the features
  given the other (the halves alternate), each conditioner an
  MLP 8 → 64 → 64 → 16 (ReLU), batch 1024;
- ``maf_vectors`` (issue 12): D = 16, 5 MAF layers (affine conditionals, the order reversed
  between layers), each a MADE 16 → 64 → 64 → 32 (ReLU, sequential degrees), batch 1024;
  sampling is MAF's slow direction (D passes per layer);
- ``glow_steps``: K = 4 Glow steps (ActNorm → 1×1 convolution → affine coupling whose network
  is conv3×3 → ReLU → conv1×1 → ReLU → conv3×3, width 64) on ``(32, 12, 16, 16)``;
- ``iresnet_vectors`` (issue 13): D = 16, 4 residual blocks x + g(x), g = 16 → 64 → 64 → 16
  with every linear map spectrally normalised to c = 0.9 (one power iteration per training
  step), the log-det by the 5-term power series with one Hutchinson probe, batch 1024;
  sampling is the inverse, a fixed-point iteration per block;
- ``iresnet_conv`` (issue 13): the same blocks on ``(32, 12, 16, 16)``, g = conv3×3 → conv1×1 →
  conv3×3 of width 64 (i-ResNet's bottleneck), the convolutions' operators normalised;
- ``cnf_2d`` and ``cnf_vectors`` (issue 14): one continuous flow over t ∈ [0, 1], dynamics an
  MLP D → 64 → 64 → D with tanh (autonomous: zuko's time features switched off, our
  ``ignore`` layers), adaptive Dormand–Prince at atol = rtol = 1e-5, batch 256; the exact
  trace on 2-D, Hutchinson on D = 16. The number of function evaluations of one log-density
  solve is measured for each library and stated (the solvers control their steps alike, not
  identically).

Where a peer lacks a layer, the closest it has is used and the report says so: FrEIA has no
learned 1×1 convolution (its Glow-style ``AllInOneBlock`` mixes channels with a fixed random
orthogonal matrix and normalises after the coupling), zuko has no image layers, FrEIA no
autoregressive layers.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor, nn

__all__ = ["ROWS", "Row", "Subject", "library_version"]

D, COUPLINGS, HIDDEN, VECTOR_BATCH = 16, 5, 64, 1024
IMAGE_SHAPE, STEPS, WIDTH, IMAGE_BATCH = (12, 16, 16), 4, 64, 32


@dataclass
class Subject:
    """One library's model of one row."""

    module: nn.Module
    log_prob: Callable[[Tensor], Tensor]
    sample: Callable[[int], Tensor]
    note: str = ""
    # each conditioner network with an input of the shape it sees, requiring a gradient where
    # the flow's input to it does (so the bare networks do the same backward work)
    conditioners: list[tuple[nn.Module, Tensor]] = field(default_factory=list)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters() if p.requires_grad)

    @property
    def num_weights(self) -> int:
        """Parameters other than scalars (the peers' learned activation slopes and estimator
        settings): what a matched row must share."""
        return sum(p.numel() for p in self.module.parameters() if p.requires_grad and p.numel() > 1)


@dataclass
class Row:
    name: str
    title: str
    batch: int
    make_input: Callable[[], Tensor]
    builders: dict[str, Callable[[], Subject]]
    # how `train.compile` is best set for this model (common.run.config.TrainBase.compile_mode);
    # "none": not compiled (a log-det by autograd inside the forward pass does not compile)
    compile_mode: str = "graph"
    # passes of each conditioner network a sample takes (D for an autoregressive flow), so that
    # "ours: conditioners only" times the networks' share of sampling
    sample_passes: int = 1


def library_version(library: str) -> str:
    dist = {"ours": "flows-reproduced", "FrEIA": "FrEIA"}.get(library, library)
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _mlp(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, n_out),
    )


def _glow_net(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(n_in, WIDTH, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(WIDTH, WIDTH, 1),
        nn.ReLU(),
        nn.Conv2d(WIDTH, n_out, 3, padding=1),
    )


class _IgnoresContext(nn.Module):
    """nflows calls its transform networks as ``net(inputs, context)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.net(x)


def _gaussian_log_prob(z: Tensor) -> Tensor:
    return -0.5 * (z**2).flatten(1).sum(1) - 0.5 * z[0].numel() * torch.log(
        2 * torch.tensor(torch.pi)
    )


def _freia_subject(inn: nn.Module, shape: tuple[int, ...], note: str) -> Subject:
    """A FrEIA ``SequenceINN`` under a standard normal base (FrEIA has no distribution API)."""

    def log_prob(x: Tensor) -> Tensor:
        z, ljd = inn(x)
        return _gaussian_log_prob(z) + ljd

    return Subject(inn, log_prob, lambda n: inn(torch.randn(n, *shape), rev=True)[0], note=note)


# --- realnvp_vectors ----------------------------------------------------------------------------


def ours_realnvp() -> Subject:
    from common.flows.bijector import Compose
    from common.flows.coupling import Coupling, half_mask
    from common.flows.distributions import StandardNormal
    from common.flows.elementwise import Affine
    from common.flows.flow import Flow
    from common.flows.nets import MLP

    def mlp(n_in, n_out):
        return MLP(n_in, n_out, HIDDEN, 2)

    # contiguous halves, alternating: split by views and merged by one concatenation
    couplings = [Coupling(half_mask(D, k % 2), Affine, mlp) for k in range(COUPLINGS)]
    flow = Flow(Compose(*couplings), StandardNormal(D))
    # inputs that need a gradient wherever the flow's do (all but the first coupling's)
    nets = [
        (c.conditioner, torch.randn(VECTOR_BATCH, D // 2).requires_grad_(k > 0))
        for k, c in enumerate(couplings)
    ]
    return Subject(flow, flow.log_prob, lambda n: flow.sample(n), conditioners=nets)


def zuko_realnvp() -> Subject:
    import zuko

    flow = zuko.flows.RealNVP(D, transforms=COUPLINGS, hidden_features=(HIDDEN, HIDDEN))
    return Subject(flow, lambda x: flow().log_prob(x), lambda n: flow().sample((n,)))


def nflows_realnvp() -> Subject:
    from nflows.distributions import StandardNormal
    from nflows.flows import Flow
    from nflows.transforms import AffineCouplingTransform, CompositeTransform

    masks = [(torch.arange(D) % 2 == k % 2).int() for k in range(COUPLINGS)]
    transform = CompositeTransform(
        [AffineCouplingTransform(m, lambda i, o: _IgnoresContext(_mlp(i, o))) for m in masks]
    )
    flow = Flow(transform, StandardNormal([D]))
    return Subject(flow, flow.log_prob, flow.sample)


def normflows_realnvp() -> Subject:
    import normflows as nf

    flows = []
    for _ in range(COUPLINGS):
        net = nf.nets.MLP([D // 2, HIDDEN, HIDDEN, D], init_zeros=True)
        flows += [nf.flows.AffineCouplingBlock(net), nf.flows.Permute(D, mode="swap")]
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(D, trainable=False), flows)
    return Subject(
        model,
        model.log_prob,
        lambda n: model.sample(n)[0],
        note="a swap permutation between couplings",
    )


def freia_realnvp() -> Subject:
    import FrEIA.framework as Ff
    import FrEIA.modules as Fm

    inn = Ff.SequenceINN(D)
    for k in range(COUPLINGS):
        inn.append(Fm.AffineCouplingOneSided, subnet_constructor=_mlp, clamp=2.0)
        inn.append(Fm.PermuteRandom, seed=k)

    return _freia_subject(inn, (D,), "a fixed random permutation between couplings")


# --- maf_vectors --------------------------------------------------------------------------------


def ours_maf() -> Subject:
    from common.flows.autoregressive import MaskedAutoregressive
    from common.flows.bijector import Compose
    from common.flows.distributions import StandardNormal
    from common.flows.elementwise import Affine
    from common.flows.flow import Flow

    order = torch.arange(D)
    affine = partial(Affine, scale_bound=None)  # MAF's unbounded log-scale (papers/maf_iaf)
    layers = [
        MaskedAutoregressive(D, affine, HIDDEN, 2, order if k % 2 == 0 else order.flip(0), seed=k)
        for k in range(COUPLINGS)
    ]
    flow = Flow(Compose(*layers), StandardNormal(D))
    nets = [(m.made, torch.randn(VECTOR_BATCH, D).requires_grad_(k > 0))
            for k, m in enumerate(layers)]  # fmt: skip
    note = "the MAF paper's affine map, unbounded log-scale (each peer uses its own map)"
    return Subject(flow, flow.log_prob, lambda n: flow.sample(n), note=note, conditioners=nets)


def zuko_maf() -> Subject:
    import zuko

    flow = zuko.flows.MAF(D, transforms=COUPLINGS, hidden_features=(HIDDEN, HIDDEN))
    return Subject(flow, lambda x: flow().log_prob(x), lambda n: flow().sample((n,)))


def _nflows_style_maf(made_transform, reverse) -> list:
    # num_blocks=1 without residual blocks: 16 → 64 → 64 → 32, two hidden layers
    layers = []
    for k in range(COUPLINGS):
        if k:
            layers.append(reverse(D))
        layers.append(made_transform(D, HIDDEN, num_blocks=1, use_residual_blocks=False))
    return layers


def nflows_maf() -> Subject:
    from nflows.distributions import StandardNormal
    from nflows.flows import Flow
    from nflows.transforms import (
        CompositeTransform,
        MaskedAffineAutoregressiveTransform,
        ReversePermutation,
    )

    layers = _nflows_style_maf(MaskedAffineAutoregressiveTransform, ReversePermutation)
    flow = Flow(CompositeTransform(layers), StandardNormal([D]))
    return Subject(flow, flow.log_prob, flow.sample)


def normflows_maf() -> Subject:
    import normflows as nf

    def shuffle(d):  # normflows has no order reversal
        return nf.flows.Permute(d, mode="shuffle")

    def maf_layer(*args, **kwargs):
        # normflows' layer maps z → x in one pass (the IAF direction); reversed, it is MAF's:
        # one pass for log_prob, D for sampling
        return nf.flows.Reverse(nf.flows.MaskedAffineAutoregressive(*args, **kwargs))

    layers = _nflows_style_maf(maf_layer, shuffle)
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(D, trainable=False), layers)
    return Subject(
        model,
        model.log_prob,
        lambda n: model.sample(n)[0],
        note="a fixed random permutation between layers (normflows has no reversal); its "
        "autoregressive layer wrapped in `Reverse` (alone it is IAF-directed)",
    )


# --- glow_steps ---------------------------------------------------------------------------------


def ours_glow() -> Subject:
    from common.flows.bijector import Compose
    from common.flows.coupling import ImageCoupling
    from common.flows.distributions import StandardNormal
    from common.flows.elementwise import SigmoidAffine
    from common.flows.flow import Flow
    from common.flows.image import ActNorm, InvertibleConv1x1
    from common.flows.nets import GlowConditioner

    C, H, W = IMAGE_SHAPE
    layers, nets = [], []
    for _ in range(STEPS):
        coupling = ImageCoupling(C, SigmoidAffine, lambda i, o: GlowConditioner(i, o, WIDTH))
        layers += [ActNorm(C), InvertibleConv1x1(C, lu=True), coupling]
        # its input depends on the ActNorm and 1×1 convolution before it: it needs a gradient
        inputs = torch.randn(IMAGE_BATCH, C // 2, H, W, requires_grad=True)
        nets.append((coupling.conditioner, inputs))
    flow = Flow(Compose(*layers), StandardNormal(IMAGE_SHAPE))
    return Subject(flow, flow.log_prob, lambda n: flow.sample(n), conditioners=nets)


def nflows_glow() -> Subject:
    from nflows.distributions import StandardNormal
    from nflows.flows import Flow
    from nflows.transforms import ActNorm, AffineCouplingTransform, CompositeTransform
    from nflows.transforms.conv import OneByOneConvolution

    C = IMAGE_SHAPE[0]
    mask = (torch.arange(C) >= C // 2).int()
    layers = []
    for _ in range(STEPS):
        layers += [
            ActNorm(C),
            OneByOneConvolution(C, using_cache=False),
            AffineCouplingTransform(mask, lambda i, o: _IgnoresContext(_glow_net(i, o))),
        ]
    flow = Flow(CompositeTransform(layers), StandardNormal(list(IMAGE_SHAPE)))
    return Subject(flow, flow.log_prob, flow.sample)


def normflows_glow() -> Subject:
    import normflows as nf

    C = IMAGE_SHAPE[0]
    flows = [nf.flows.GlowBlock(C, WIDTH, split_mode="channel", scale=True) for _ in range(STEPS)]
    q0 = nf.distributions.DiagGaussian(IMAGE_SHAPE, trainable=False)
    model = nf.NormalizingFlow(q0, flows)
    return Subject(model, model.log_prob, lambda n: model.sample(n)[0])


def freia_glow() -> Subject:
    import FrEIA.framework as Ff
    import FrEIA.modules as Fm

    inn = Ff.SequenceINN(*IMAGE_SHAPE)
    for _ in range(STEPS):
        inn.append(Fm.AllInOneBlock, subnet_constructor=_glow_net, permute_soft=True)

    note = "AllInOneBlock: fixed orthogonal 1×1 mixing (no learned LU conv), global affine "
    return _freia_subject(inn, IMAGE_SHAPE, note + "after the coupling")


# --- iresnet_vectors, iresnet_conv -------------------------------------------------------------

IRES_BLOCKS, IRES_COEFF, IRES_TERMS, IRES_TOL = 4, 0.9, 5, 1e-5


def _ours_iresnet(shape: tuple[int, ...], g: Callable[[int], nn.Module], batch: int) -> Subject:
    from common.flows.bijector import Compose
    from common.flows.distributions import StandardNormal
    from common.flows.flow import Flow
    from common.flows.residual import ResidualBlock

    blocks = [ResidualBlock(g(k), logdet="series", n_terms=IRES_TERMS, n_probes=1, tol=IRES_TOL)
              for k in range(IRES_BLOCKS)]  # fmt: skip
    flow = Flow(Compose(*blocks), StandardNormal(shape))
    nets = [(b.g, torch.randn(batch, *shape, requires_grad=True)) for b in blocks]
    return Subject(flow, flow.log_prob, lambda n: flow.sample(n), conditioners=nets)


def ours_iresnet_vectors() -> Subject:
    from common.flows.residual import lipschitz_mlp

    def g(k: int) -> nn.Module:
        return lipschitz_mlp(D, HIDDEN, 2, IRES_COEFF, 1, "elu", seed=k)

    return _ours_iresnet((D,), g, VECTOR_BATCH)


def ours_iresnet_conv() -> Subject:
    from common.flows.residual import lipschitz_conv_net

    def g(k: int) -> nn.Module:
        return lipschitz_conv_net(IMAGE_SHAPE, WIDTH, IRES_COEFF, 1, "elu", False, seed=k)

    return _ours_iresnet(IMAGE_SHAPE, g, IMAGE_BATCH)


def _normflows_iresnet(shape: tuple[int, ...], net: Callable[[], nn.Module]) -> Subject:
    import normflows as nf

    flows = [nf.flows.Residual(net(), reverse=True, n_power_series=IRES_TERMS)
             for _ in range(IRES_BLOCKS)]  # fmt: skip
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(shape, trainable=False), flows)
    note = ("LipSwish activations (its Lipschitz networks' only choice); the 5-term series "
            "(`n_power_series=5`) with its memory-saving Neumann-series gradient")  # fmt: skip
    return Subject(model, model.log_prob, lambda n: model.sample(n)[0], note=note)


def normflows_iresnet_vectors() -> Subject:
    import normflows as nf

    def net() -> nn.Module:
        return nf.nets.LipschitzMLP([D, HIDDEN, HIDDEN, D], lipschitz_const=IRES_COEFF,
                                    max_lipschitz_iter=1, init_zeros=False)  # fmt: skip

    return _normflows_iresnet((D,), net)


def normflows_iresnet_conv() -> Subject:
    import normflows as nf

    C = IMAGE_SHAPE[0]

    def net() -> nn.Module:
        return nf.nets.LipschitzCNN([C, WIDTH, WIDTH, C], [3, 1, 3], lipschitz_const=IRES_COEFF,
                                    max_lipschitz_iter=1, init_zeros=False)  # fmt: skip

    return _normflows_iresnet(IMAGE_SHAPE, net)


def _freia_iresnet(shape: tuple[int, ...], note: str) -> Subject:
    import FrEIA.framework as Ff
    import FrEIA.modules as Fm

    inn = Ff.SequenceINN(*shape)
    for _ in range(IRES_BLOCKS):
        inn.append(Fm.IResNetLayer, internal_size=WIDTH if len(shape) > 1 else HIDDEN,
                   n_internal_layers=1, jacobian_iterations=IRES_TERMS, hutchinson_samples=1,
                   spectral_norm_max=IRES_COEFF)  # fmt: skip
    for block in inn.module_list:
        block.lipschitz_correction()  # FrEIA normalises out of band, when called
    note = ("its log-det's vector-Jacobian products are taken without a graph, so the "
            "training step does not differentiate the log-det (cheaper, and not the "
            "gradient of the log-likelihood); spectral normalisation only when "
            "`lipschitz_correction()` is called (once here, not per step); inverse: a fixed "
            "50 iterations, without the log-det (`jac=False`); " + note)  # fmt: skip
    subject = _freia_subject(inn, shape, note)

    def sample(n: int) -> Tensor:  # its SequenceINN cannot skip the log-det: the blocks can
        x = torch.randn(n, *shape)
        for block in reversed(inn.module_list):
            x = block([x], rev=True, jac=False)[0][0]
        return x

    subject.sample = sample
    return subject


def freia_iresnet_vectors() -> Subject:
    return _freia_iresnet((D,), "ELU")


def freia_iresnet_conv() -> Subject:
    return _freia_iresnet(IMAGE_SHAPE, "ELU; every internal convolution 3×3 (more weights)")


# --- cnf_2d, cnf_vectors --------------------------------------------------------------------------

CNF_BATCH, CNF_TOL, CNF_D = 256, 1e-5, (2, 16)


class _Counted(nn.Module):
    """A network that counts its calls (the solver's function evaluations)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, *args: Tensor) -> Tensor:
        self.calls += 1
        return self.net(*args)


class _AtTimeZero(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z.new_zeros(()), z)


def _nfe_note(log_prob: Callable[[Tensor], Tensor], calls: Callable[[], int], d: int) -> str:
    x = torch.randn(CNF_BATCH, d, generator=torch.Generator().manual_seed(0))
    before = calls()
    with torch.no_grad():
        log_prob(x)
    return f"{calls() - before} function evaluations per log-density solve"


def _ours_cnf(d: int) -> Subject:
    from common.flows.continuous import CNF, ODENet
    from common.flows.distributions import StandardNormal
    from common.flows.flow import Flow

    net = ODENet(d, [HIDDEN, HIDDEN], "ignore", "tanh")
    # first_step: zuko's solver tries the whole interval first; so does ours here (torchdiffeq
    # would start with a small step), so both take the same steps on this problem
    cnf = CNF(net, T=1.0, train_T=False, divergence="exact" if d == 2 else "hutchinson",
              atol=CNF_TOL, rtol=CNF_TOL, first_step=1.0)  # fmt: skip
    flow = Flow(cnf, StandardNormal(d))
    # "bare": one evaluation of the dynamics network (a solve takes the NFE stated, each
    # with the trace's Jacobian-vector products); the CNF counts its own evaluations (a
    # counting wrapper around the network would hide its forward tangents)
    inputs = torch.randn(CNF_BATCH, d, requires_grad=True)
    return Subject(flow, flow.log_prob, lambda n: flow.sample(n),
                   note=_nfe_note(flow.log_prob, lambda: cnf.evaluations, d),
                   conditioners=[(_AtTimeZero(net), inputs)])  # fmt: skip


def _zuko_cnf(d: int) -> Subject:
    import zuko

    flow = zuko.flows.CNF(d, freqs=0, atol=CNF_TOL, rtol=CNF_TOL, exact=d == 2,
                          hidden_features=(HIDDEN, HIDDEN), activation=nn.Tanh)  # fmt: skip
    counted = _Counted(flow.transform.ode)
    flow.transform.ode = counted

    def log_prob(x: Tensor) -> Tensor:
        return flow().log_prob(x)

    note = ("its own adaptive solver with a checkpointed adjoint, the log-det's error "
            "tolerance relaxed 100×; " + _nfe_note(log_prob, lambda: counted.calls, d))  # fmt: skip
    return Subject(flow, log_prob, lambda n: flow().sample((n,)), note=note)


def _cnf_row(d: int) -> Row:
    """The exact trace on 2-D (``cnf_2d``), Hutchinson's on D = 16 (``cnf_vectors``)."""
    trace = "exact trace" if d == 2 else "Hutchinson trace"
    return Row(
        "cnf_2d" if d == 2 else "cnf_vectors",
        f"A continuous flow on D = {d} (MLP 2 × 64 tanh, {trace}, dopri5 1e-5)",
        CNF_BATCH,
        lambda: torch.randn(CNF_BATCH, d),
        {"ours": partial(_ours_cnf, d), "zuko": partial(_zuko_cnf, d)},
        compile_mode="none",
    )


ROWS = [
    Row(
        "maf_vectors",
        "MAF on vectors (D = 16, 5 layers, MADE 2 × 64)",
        VECTOR_BATCH,
        lambda: torch.randn(VECTOR_BATCH, D),
        {"ours": ours_maf, "zuko": zuko_maf, "nflows": nflows_maf, "normflows": normflows_maf},
        sample_passes=D,
    ),
    Row(
        "realnvp_vectors",
        "RealNVP on vectors (D = 16, 5 affine couplings, MLP 2 × 64)",
        VECTOR_BATCH,
        lambda: torch.randn(VECTOR_BATCH, D),
        {
            "ours": ours_realnvp,
            "zuko": zuko_realnvp,
            "nflows": nflows_realnvp,
            "normflows": normflows_realnvp,
            "FrEIA": freia_realnvp,
        },
    ),
    Row(
        "glow_steps",
        "Glow steps (K = 4, width 64) on (32, 12, 16, 16)",
        IMAGE_BATCH,
        lambda: torch.randn(IMAGE_BATCH, *IMAGE_SHAPE),
        {
            "ours": ours_glow,
            "nflows": nflows_glow,
            "normflows": normflows_glow,
            "FrEIA": freia_glow,
        },
        compile_mode="loss",
    ),
    Row(
        "iresnet_vectors",
        "i-ResNet blocks on vectors (D = 16, 4 blocks, g 2 × 64, 5-term series)",
        VECTOR_BATCH,
        lambda: torch.randn(VECTOR_BATCH, D),
        {
            "ours": ours_iresnet_vectors,
            "normflows": normflows_iresnet_vectors,
            "FrEIA": freia_iresnet_vectors,
        },
        compile_mode="none",
    ),
    Row(
        "iresnet_conv",
        "i-ResNet blocks on (32, 12, 16, 16) (4 blocks, g conv 3-1-3 of width 64, 5 terms)",
        IMAGE_BATCH,
        lambda: torch.randn(IMAGE_BATCH, *IMAGE_SHAPE),
        {
            "ours": ours_iresnet_conv,
            "normflows": normflows_iresnet_conv,
            "FrEIA": freia_iresnet_conv,
        },
        compile_mode="none",
    ),
    *(_cnf_row(d) for d in CNF_D),
]
