"""FFJORD paper: the vector model, training with the function evaluations logged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from common.data import Dataset
from common.flows.continuous import CNF
from common.flows.testing import check_bijector
from common.run.config import ConfigError, load_config
from common.run.loop import train
from common.run.objectives import MaximumLikelihood
from common.run.tracking import Tracker, init_store, sqlite_uri
from papers.ffjord.model import authors_num_scales, build_model
from papers.ffjord.train import CONFIG

SMOKE = Path(__file__).resolve().parents[1] / "papers/ffjord/configs/smoke/moons_ffjord.yaml"


def _cfg(data_root, *overrides):
    return load_config(CONFIG, SMOKE, [f"data.root={data_root}", *overrides])


@pytest.mark.parametrize("adjoint", [False, True])
def test_training_logs_forward_and_backward_function_evaluations(data_root, tmp_path, adjoint):
    """rk4 with steps of 0.25 in s: 16 evaluations per forward solve; backpropagating through
    the solver evaluates nothing more, the adjoint method solves backwards (16 again)."""
    uri = sqlite_uri(tmp_path / "mlflow.db")
    init_store(uri, ["ffjord"])
    cfg = _cfg(data_root, f"model.adjoint={str(adjoint).lower()}")
    summary = train(cfg, MaximumLikelihood(cfg, build_model), tmp_path / "run",
                    tracker=Tracker(uri, "ffjord"), progress=False)  # fmt: skip
    metrics = MlflowClient(uri).get_run(summary.run_id).data.metrics
    assert metrics["train/nfe_forward"] == 16
    assert metrics["train/nfe_backward"] == (16 if adjoint else 0)
    assert summary.metrics["train/nfe_forward_mean"] == 16  # the means over training
    assert summary.metrics["train/nfe_backward_mean"] == (16 if adjoint else 0)
    assert summary.metrics["test/nll"] < 4.0  # a 2-D standard normal on moons scores ~3.4-3.9


def test_width_is_set_one_way_and_images_are_refused(data_root):
    with pytest.raises(ConfigError, match="hidden_multiple"):
        _cfg(data_root, "model.hidden_multiple=10")
    with pytest.raises(ConfigError, match="ffjord_multiscale"):
        MaximumLikelihood(_cfg(data_root, "data.name=digits"), build_model).build(
            torch.device("cpu")
        )


def test_tabular_width_is_a_multiple_of_the_dimension(data_root):
    cfg = _cfg(data_root, "model={name: ffjord, hidden_multiple: 10, num_hidden: 2}")
    flow = MaximumLikelihood(cfg, build_model).build(torch.device("cpu"))
    widths = [layer.linear.out_features for layer in flow.transform.layers[0].dynamics.net.layers]
    assert widths == [20, 20, 2]


def test_nfe_means_survive_a_resume(data_root, tmp_path):
    """dopri5's evaluations vary by step: the means over training, stopped after 4 of 10
    steps and resumed, equal those of a run that never stopped."""
    cfg = _cfg(data_root, "model.solver=dopri5", "model.atol=1e-3", "model.rtol=1e-3")

    def run(workdir, stop_after=None):
        return train(cfg, MaximumLikelihood(cfg, build_model), workdir, stop_after=stop_after,
                     progress=False)  # fmt: skip

    whole = run(tmp_path / "whole")
    run(tmp_path / "resumed", stop_after=4)
    resumed = run(tmp_path / "resumed")
    for key in ("train/nfe_forward_mean", "train/nfe_backward_mean"):
        assert resumed.metrics[key] == whole.metrics[key]


def test_authors_number_of_scales():
    assert [authors_num_scales(s, s) for s in (8, 28, 32)] == [2, 3, 4]


def test_multiscale_model_arranges_cnfs_around_each_squeeze(data_root):
    """Digits (1×8×8), one block per side: CNFs on 1×8×8, then 4×4×4 after the squeeze, then
    2×4×4 on the kept half (the last scale, unsqueezed); the whole transform, logit included,
    passes the check."""
    model = "model={name: ffjord_multiscale, blocks_per_side: 1, hidden_channels: [2]}"
    cfg = _cfg(data_root, "data.name=digits", model)
    flow = MaximumLikelihood(cfg, build_model).build(torch.device("cpu"))
    cnfs = [m for m in flow.modules() if isinstance(m, CNF)]
    assert [m.dynamics.net.layers[0].conv.in_channels - 1 for m in cnfs] == [1, 4, 2]
    assert all(m.divergence == "hutchinson" and m.noise == "rademacher" for m in cnfs)
    for m in cnfs:
        m.atol = m.rtol = m.test_atol = m.test_rtol = 1e-9
    x = torch.rand(2, 1, 8, 8) * 0.9 + 0.05
    check_bijector(flow.transform, x, atol=1e-5)


def _conv_net_params(c: int, hidden: list[int]) -> int:
    """3×3 concat convolutions c → hidden → c, each input with the time channel."""
    widths = [c, *hidden, c]
    return sum(9 * (a + 1) * b + b for a, b in zip(widths[:-1], widths[1:], strict=True))


@pytest.mark.parametrize(("experiment", "shape", "channels"),
                         [("mnist_ffjord", (1, 28, 28), [1, 4, 2, 8, 4]),
                          ("cifar10_ffjord", (3, 32, 32), [3, 12, 6, 24, 12, 48, 24])])  # fmt: skip
def test_paper_image_models_have_the_authors_size(experiment, shape, channels):
    """Per scale 2 CNFs before and 2 after the squeeze (the last scale: 2, unsqueezed), each
    f = 64-64-64 concat convolutions on that many channels, and a (fixed) end time each."""
    cfg = load_config(CONFIG, SMOKE.parents[1] / "paper" / f"{experiment}.yaml")
    x = torch.zeros(2, *shape, dtype=torch.uint8)
    flow = build_model(cfg.model, Dataset("fake", x, x, x, 256, md5="0"))
    expected = sum(2 * (_conv_net_params(c, [64, 64, 64]) + 1) for c in channels)
    assert sum(p.numel() for p in flow.parameters()) == expected


@pytest.mark.parametrize(("experiment", "d", "blocks", "hidden", "squash"),
                         [("power_ffjord", 6, 5, [60] * 3, False),
                          ("miniboone_ffjord", 43, 1, [860] * 2, False),
                          ("bsds300_ffjord", 63, 2, [1260] * 3, True)])  # fmt: skip
def test_paper_tabular_models_have_the_authors_size(experiment, d, blocks, hidden, squash):
    """Blocks of f with widths hdim_factor × D: concat layers (the input and t → out) or
    concatsquash (x → out, with a gate and a bias from t), and each block's end time."""
    cfg = load_config(CONFIG, SMOKE.parents[1] / "paper" / f"{experiment}.yaml")
    x = torch.zeros(2, d)
    flow = build_model(cfg.model, Dataset("fake", x, x, x, None, md5="0"))
    widths = [d, *hidden, d]
    pairs = list(zip(widths[:-1], widths[1:], strict=True))
    per_net = sum((a * b + b + 2 * b + b) if squash else ((a + 1) * b + b) for a, b in pairs)
    assert sum(p.numel() for p in flow.parameters()) == blocks * (per_net + 1)
