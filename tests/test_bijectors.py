"""Every core bijector passes the shared invariance check; the check itself can fail."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from common.flows.bijector import (
    Bijector,
    Compose,
    InputOutsideDomainError,
    Inverse,
    InverseNotAvailableError,
    Permutation,
    Reverse,
    exact_ldj,
)
from common.flows.coupling import Coupling, alternating_mask, half_mask
from common.flows.dequantize import Logit
from common.flows.elementwise import (
    Additive,
    Affine,
    LearnedBoundAffine,
    RationalQuadraticSpline,
    SigmoidAffine,
)
from common.flows.layers import ElementwiseAffine, Reshape
from common.flows.logdet import LULinear
from common.flows.nets import MLP
from common.flows.testing import check_bijector, check_estimator_unbiased

D = 6


def coupling(elementwise=Affine, context: int = 0, zero_init: bool = True, mask=None):
    mask = alternating_mask(D, 0) if mask is None else mask
    return Coupling(mask, elementwise, lambda n_in, n_out: MLP(n_in, n_out, 16, 2, "tanh",
                                                             zero_init), context)  # fmt: skip


SPLINE = partial(RationalQuadraticSpline, num_bins=5, bound=1.5)
IRREGULAR = torch.tensor([True, False, False, True, True, False])  # not a slice: indexed

LAYERS = {
    "elementwise_affine": lambda: ElementwiseAffine(D),
    "elementwise_scale": lambda: ElementwiseAffine(D, shift=False),
    "permutation": lambda: Permutation.random(D, seed=3),
    "reverse": lambda: Reverse(D),
    "additive_coupling": lambda: coupling(Additive),
    "affine_coupling": lambda: coupling(Affine),
    "unbounded_affine_coupling": lambda: coupling(partial(Affine, scale_bound=None)),
    "learned_bound_affine_coupling": lambda: coupling(LearnedBoundAffine),
    "sigmoid_affine_coupling": lambda: coupling(SigmoidAffine),
    "spline_coupling": lambda: coupling(SPLINE),
    "irregular_mask_coupling": lambda: coupling(Affine, mask=IRREGULAR),
    "half_mask_coupling": lambda: coupling(Affine, mask=half_mask(D, 0)),
    "half_mask_coupling_transformed_first": lambda: coupling(SPLINE, mask=half_mask(D, 1)),
    "lu_linear": lambda: LULinear(D, seed=1),
    "inverse_of_coupling": lambda: Inverse(coupling(Affine)),
    "compose": lambda: Compose(
        ElementwiseAffine(D), coupling(Additive), Reverse(D), coupling(Affine), LULinear(D)
    ),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_core_bijectors_pass_invariance_check(name):
    result = check_bijector(LAYERS[name](), torch.randn(5, D))
    assert result.round_trip_error < 1e-8


def test_coupling_with_context():
    check_bijector(coupling(Affine, context=3), torch.randn(4, D), context=torch.randn(4, 3))


def test_logit_passes_on_its_domain():
    check_bijector(Logit(0.05), torch.rand(4, D))


def test_reshape_passes():
    check_bijector(Reshape((2, 3), (6,)), torch.randn(3, 2, 3))


# --- the check must be able to fail ------------------------------------------------------


class WrongLdj(ElementwiseAffine):
    def forward(self, x, context=None):
        z, ldj = super().forward(x, context)
        return z, 0.5 * ldj  # a reduction bug: half the log-det...

    def inverse(self, z, context=None):
        x, ldj = super().inverse(z, context)
        return x, 0.5 * ldj  # ...consistently in both directions


class PlainAttributeInit(ElementwiseAffine):
    """Data-dependent init whose flag and offset are plain attributes: a reloaded copy would
    initialise again on whatever batch it sees first."""

    def __init__(self, d):
        super().__init__(d)
        self.initialised = False
        self.offset = None

    def forward(self, x, context=None):
        if not self.initialised:
            self.offset, self.initialised = x.mean(0).detach(), True
        return super().forward(x - self.offset, context)

    def inverse(self, z, context=None):
        x, ldj = super().inverse(z, context)
        return x + self.offset, ldj


class DeadParameter(ElementwiseAffine):
    def __init__(self, d):
        super().__init__(d)
        self.unused = nn.Parameter(torch.zeros(d))


class NoInverseLdjSign(ElementwiseAffine):
    def inverse(self, z, context=None):
        x, ldj = super().inverse(z, context)
        return x, -ldj  # wrong sign


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (WrongLdj(D), "autograd"),
        (NoInverseLdjSign(D), "not 0"),
        (DeadParameter(D), "unused"),
    ],
)
def test_check_bijector_catches_bugs(layer, message):
    with pytest.raises(AssertionError, match=message):
        check_bijector(layer, torch.randn(4, D))


def test_check_bijector_catches_state_outside_buffers():
    with pytest.raises(AssertionError, match="state_dict"):
        check_bijector(PlainAttributeInit(D), torch.randn(4, D), check_gradients=False)


class DroppedLdjAffine(Affine):
    """An affine map that forgets its log-determinant: right only at the identity."""

    def forward(self, x, params):
        z, ldj = super().forward(x, params)
        return z, torch.zeros_like(ldj)

    def inverse(self, z, params):
        x, ldj = super().inverse(z, params)
        return x, torch.zeros_like(ldj)


def test_zero_initialised_layer_is_perturbed_first():
    """A zero-initialised coupling is the identity, where an ldj of 0 is right: a coupling that
    drops its ldj passes a check at the initial parameters and fails the perturbed one."""
    layer = coupling(DroppedLdjAffine, zero_init=True)
    x = torch.randn(4, D)
    z, ldj = layer(x)
    assert torch.allclose(z, x) and torch.equal(ldj, torch.zeros(4))  # unperturbed: "right"
    with pytest.raises(AssertionError, match="ldj"):
        check_bijector(layer, x)
    check_bijector(coupling(Affine, zero_init=True), x)  # the honest layer passes


# --- domains and contracts --------------------------------------------------------------


def test_permutation_rejects_non_permutation_and_wrong_width():
    with pytest.raises(ValueError, match="not a permutation"):
        Permutation(torch.tensor([0, 0, 1]))
    with pytest.raises(InputOutsideDomainError):
        Reverse(4)(torch.randn(2, 5))


def test_logit_rejects_inputs_outside_unit_interval():
    with pytest.raises(InputOutsideDomainError, match=r"\[0, 1\]"):
        Logit(0.05)(torch.tensor([[0.5, 1.5]]))


def test_base_class_inverse_not_available():
    with pytest.raises(InverseNotAvailableError):
        Bijector().inverse(torch.zeros(1, 1))


def test_compose_accumulates_on_input_device_and_dtype():
    layer = Compose(ElementwiseAffine(D), Reverse(D)).double()
    z, ldj = layer(torch.randn(3, D, dtype=torch.float64))
    assert ldj.shape == (3,) and ldj.dtype == torch.float64 and ldj.device == z.device


def test_coupling_mask_must_split():
    with pytest.raises(ValueError, match="some but not all"):
        Coupling(torch.ones(4, dtype=torch.bool), Affine, lambda n_in, n_out: nn.Identity())


# --- layers whose ldj is an estimate --------------------------------------------------------


class NoisyLdj(ElementwiseAffine):
    """A stand-in for i-ResNet / FFJORD layers: exact ldj in exact mode, else exact ldj plus
    zero-mean noise (plus ``bias``, to show the bias check failing)."""

    ldj_is_estimate = True

    def __init__(self, d, bias=0.0, honours_exact_mode=True):
        super().__init__(d)
        self.bias, self.honours = bias, honours_exact_mode

    def _noisy(self, ldj):
        if self.exact_ldj and self.honours:
            return ldj
        return ldj + self.bias + torch.randn_like(ldj)

    def forward(self, x, context=None):
        z, ldj = super().forward(x, context)
        return z, self._noisy(ldj)

    def inverse(self, z, context=None):
        x, ldj = super().inverse(z, context)
        return x, self._noisy(ldj)


def test_estimating_layers_are_checked_in_exact_mode():
    result = check_bijector(Compose(NoisyLdj(D), Reverse(D)), torch.randn(4, D))
    assert result.exact_mode
    assert not check_bijector(ElementwiseAffine(D), torch.randn(4, D)).exact_mode
    with pytest.raises(AssertionError):  # a layer that ignores the exact mode is caught
        check_bijector(NoisyLdj(D, honours_exact_mode=False), torch.randn(4, D))
    layer = NoisyLdj(D)
    with exact_ldj(layer):
        assert layer.exact_ldj
    assert not layer.exact_ldj  # the mode is restored


def test_estimator_bias_check():
    assert check_estimator_unbiased(NoisyLdj(D), torch.randn(3, D)) < 4
    with pytest.raises(AssertionError, match="biased"):
        check_estimator_unbiased(NoisyLdj(D, bias=0.5), torch.randn(3, D))
    with pytest.raises(AssertionError, match="does not vary"):
        check_estimator_unbiased(ElementwiseAffine(D), torch.randn(3, D))


def test_failures_name_sampling_direction_layers():
    with pytest.raises(AssertionError, match=r"Inverse\(WrongLdj\)"):
        check_bijector(Inverse(WrongLdj(D)), torch.randn(4, D))
    assert "sampling-direction layer ElementwiseAffine" in repr(Inverse(ElementwiseAffine(D)))


def test_half_masks_merge_by_concatenation():
    assert half_mask(5, 0).tolist() == [True, True, True, False, False]
    assert half_mask(5, 1).tolist() == [False, False, False, True, True]
    assert coupling(Affine, mask=half_mask(D, 1))._blocks == "transformed_first"
    assert coupling(Affine)._blocks is None  # alternating features: one gather
