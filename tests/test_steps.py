"""The compiled training step (``train.compile``): the same gradients, buffers and updates as
the eager step, and runs that resume exactly."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from common.flows.bijector import Bijector
from common.flows.distributions import StandardNormal
from common.flows.flow import Flow
from common.run.config import OptimConfig, ScheduleConfig, TrainBase, load_config
from common.run.loop import StoppedAt, lr_factor, make_optimizer, train
from common.run.objectives import MaximumLikelihood, ReverseKL
from common.run.steps import CompiledGradient, compile_optimizer_step, eager_gradient
from tests.conftest import needs_compile

pytestmark = needs_compile  # every test here compiles


def _paper_model(paper: str, experiment: str, data_root):
    """A smoke model of ``paper``, one eager step taken (ActNorm initialised), parameters
    perturbed, and its objective."""
    import importlib

    train_module = importlib.import_module(f"papers.{paper}.train")
    model_module = importlib.import_module(f"papers.{paper}.model")
    cfg = load_config(train_module.CONFIG, f"papers/{paper}/configs/smoke/{experiment}.yaml",
                      [f"data.root={data_root}"])  # fmt: skip
    objective = MaximumLikelihood(cfg, model_module.build_model)
    torch.manual_seed(0)
    model = objective.build(torch.device("cpu"))
    model.train()
    eager_gradient(objective.loss, model, objective.batch(model, 0))  # data-dependent init
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model, objective


@pytest.mark.parametrize(
    ("paper", "experiment"),
    [("nice", "digits_nice"), ("realnvp", "digits_realnvp"), ("glow", "digits_conv_affine")],
)
def test_compiled_gradient_equals_autograd(paper, experiment, data_root):
    """Loss, every parameter's gradient and every buffer after the step (RealNVP's batch-norm
    running statistics; Glow's ActNorm flags) match ``loss.backward()``."""
    model, objective = _paper_model(paper, experiment, data_root)
    twin = copy.deepcopy(model)
    batch = objective.batch(model, 1)
    loss = eager_gradient(objective.loss, model, batch)
    compiled = CompiledGradient(twin, objective.loss)
    twin_loss, grads = compiled(batch)
    assert twin_loss.item() == pytest.approx(loss.item(), rel=1e-5)
    for (name, p), g in zip(model.named_parameters(), grads, strict=True):
        scale = p.grad.abs().max().item() + 1e-3
        assert (p.grad - g).abs().max().item() < 1e-3 * scale, name
    for (name, b), twin_b in zip(model.named_buffers(), twin.buffers(), strict=True):
        assert torch.allclose(b.double(), twin_b.double(), atol=1e-5), name
    compiled.assign(grads)
    assert all(p.grad is g for p, g in zip(twin.parameters(), grads, strict=True))


class _Shift(Bijector):
    """z = x + b, with a penalty c·‖b‖² (a stand-in for RealNVP's L2 on weight-norm scales)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.linspace(-1, 1, dim))

    def forward(self, x, context=None):
        return x + self.b, x.new_zeros(x.shape[0])

    def inverse(self, z, context=None):
        return z - self.b, z.new_zeros(z.shape[0])

    def penalty(self):
        return 10.0 * self.b.pow(2).sum()


def test_compiled_gradient_counts_the_penalty_but_returns_the_objectives_loss():
    """The gradient is that of loss + penalty; the returned loss (what is logged) has no
    penalty. d/db of mean ½‖x + b‖² + 10‖b‖² = mean(x) + b + 20 b."""
    model = Flow(_Shift(3), StandardNormal(3))
    x = torch.randn(64, 3)

    def loss_fn(model, batch):
        return -model.log_prob(batch).mean()

    loss, (grad,) = CompiledGradient(model, loss_fn)(x)
    b = model.transform.b.detach()
    assert loss.item() == pytest.approx(loss_fn(model, x).item(), rel=1e-6)
    assert torch.allclose(grad, x.mean(0) + b + 20 * b, atol=1e-5)


def test_compiled_optimizer_follows_a_schedule_without_recompiling():
    """Adam with a cosine schedule: the compiled update equals the eager one, and a new
    learning rate every step does not recompile (the rate lives in a tensor)."""
    cfg = TrainBase(batch_size=1, max_steps=6, optim=OptimConfig(name="adam", lr=0.1),
                    schedule=ScheduleConfig(name="cosine"), compile=True)  # fmt: skip
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(4, 3)) for _ in range(3)]
    eager_params = [nn.Parameter(p.detach().clone()) for p in params]
    initial = [p.detach().clone() for p in params]
    eager_cfg = cfg.model_copy(update={"compile": False})
    optimizers = [make_optimizer(cfg, params), make_optimizer(eager_cfg, eager_params)]
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: lr_factor(cfg.schedule, s, 6))
                  for o in optimizers]  # fmt: skip
    step = compile_optimizer_step(optimizers[0])
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(cfg.max_steps):
            grads = [torch.randn_like(p) for p in params]
            for p, q, g in zip(params, eager_params, grads, strict=True):
                p.grad, q.grad = g, g.clone()
            step()
            optimizers[1].step()
            for s in schedulers:
                s.step()
    assert float(schedulers[0].get_last_lr()[0]) == pytest.approx(schedulers[1].get_last_lr()[0])
    for p, q, p0 in zip(params, eager_params, initial, strict=True):
        assert torch.allclose(p, q, atol=1e-6) and not torch.allclose(p, p0, atol=1e-2)


def test_compiled_reverse_kl_run_follows_the_eager_one_and_resumes_exactly(tmp_path):
    from papers.tori_spheres.model import build_model
    from papers.tori_spheres.targets import make_target
    from papers.tori_spheres.train import ToriSpheresConfig

    def run(compile_: bool, workdir, **kwargs):
        cfg = load_config(ToriSpheresConfig,
                          "papers/tori_spheres/configs/smoke/t2_multimodal_mobius.yaml",
                          [f"train.compile={compile_}", "train.max_steps=30",
                           "train.eval_every=10", "train.checkpoint_every=10"])  # fmt: skip
        objective = ReverseKL(cfg, build_model, build_target=make_target)
        return train(cfg, objective, workdir, progress=False, **kwargs)

    eager, compiled = run(False, tmp_path / "eager"), run(True, tmp_path / "compiled")
    for key in ("test/kl_exact", "test/ess"):
        assert compiled.metrics[key] == pytest.approx(eager.metrics[key], rel=1e-3, abs=1e-4)
    assert run(True, tmp_path / "resumed", stop_after=13) == StoppedAt(13)
    resumed = run(True, tmp_path / "resumed")
    for key, value in compiled.metrics.items():
        if "wall_time" not in key:
            assert resumed.metrics[key] == value or math.isnan(value), key


@pytest.mark.parametrize(("mode", "permutation"), [("graph", "conv_lu"), ("loss", "conv_lu"),
                                                   ("graph", "conv")])  # fmt: skip
def test_compiled_glow_run_initialises_actnorm_from_data(mode, permutation, data_root, tmp_path):
    """A compiled Glow run trains in either compile mode, and ActNorm is initialised from
    data (in 'graph' mode by the run's first step, which is eager). The plain 1×1 conv's
    weight is column-major (from QR): its compiled gradient must be laid out the same."""
    from papers.glow.model import build_model
    from papers.glow.train import CONFIG

    cfg = load_config(CONFIG, "papers/glow/configs/smoke/digits_conv_affine.yaml",
                      [f"data.root={data_root}", "train.compile=true", "train.max_steps=3",
                       f"train.compile_mode={mode}", "train.eval_every=3",
                       f"model.permutation={permutation}",
                       "train.num_samples=0"])  # fmt: skip
    out = train(cfg, MaximumLikelihood(cfg, build_model), tmp_path, progress=False)
    assert math.isfinite(out.metrics["test/nll"]) and out.steps == 3
    state = torch.load(tmp_path / "checkpoints/best.pt", weights_only=True)
    flags = [v for k, v in state.items() if k.endswith("initialized")]
    assert flags and all(bool(f) for f in flags)
