"""NICE: every layer and the whole model pass the invariance check; the paper's size."""

from __future__ import annotations

import pytest
import torch

from common.data import Dataset
from common.flows.testing import check_bijector
from papers.nice.model import NiceModel, build_nice


def fake_dataset(shape, levels):
    x = torch.randint(0, levels, (4, *shape), dtype=torch.uint8)
    return Dataset("fake", x, x, x, levels, md5="0")


@pytest.fixture
def small_nice():
    return build_nice(NiceModel(hidden_features=12, num_hidden=2), fake_dataset((1, 4, 4), 17))


def test_every_nice_layer_passes(small_nice):
    x = torch.randn(3, 1, 4, 4)
    for layer in small_nice.transform.layers:  # reshape, 4 additive couplings, scaling
        check_bijector(layer, x)
        x = layer(x)[0].detach()
    assert len(small_nice.transform.layers) == 6


def test_whole_nice_transform_passes(small_nice):
    check_bijector(small_nice.transform, torch.rand(3, 1, 4, 4))


def test_partition_alternates(small_nice):
    couplings = small_nice.transform.layers[1:5]
    kept = [c.identity_idx.tolist() for c in couplings]
    assert kept[0] == kept[2] == list(range(0, 16, 2)) and kept[1] == kept[3] == list(
        range(1, 16, 2)
    )


def test_volume_change_only_in_scaling(small_nice):
    x = torch.randn(5, 1, 4, 4)
    for layer in small_nice.transform.layers[:5]:
        x, ldj = layer(x)
        assert torch.equal(ldj, torch.zeros(5))


def test_paper_architecture_parameter_count():
    # 4 couplings of MLP 392 → 5 × 1000 ReLU → 392, plus the 784 log-scales of S.
    per_coupling = (392 * 1000 + 1000) + 4 * (1000 * 1000 + 1000) + (1000 * 392 + 392)
    model = build_nice(NiceModel(), fake_dataset((1, 28, 28), 256))
    assert sum(p.numel() for p in model.parameters()) == 4 * per_coupling + 784


def test_one_training_step_is_finite_and_samples_are_levels(small_nice):
    x = torch.randint(0, 17, (8, 1, 4, 4))
    loss = -small_nice.log_prob(x).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in small_nice.parameters())
    samples = small_nice.sample(5)
    assert samples.shape == (5, 1, 4, 4) and samples.min() >= 0 and samples.max() <= 16
