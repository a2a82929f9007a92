"""MAF / IAF paper: the patches dataset, the model builders, the VAE and its objective."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from common.data import DATASETS, Dataset, load_dataset
from common.data.patches import BLOCK, PATCHES_PER_BLOCK, patch_levels, patches_from_photos
from common.flows.autoregressive import (
    GatedAffine,
    InverseAutoregressive,
    MADEMoG,
    MaskedAutoregressive,
)
from common.flows.bijector import Compose
from common.flows.image import BatchNorm
from common.flows.nets import MLP
from common.flows.testing import perturb_parameters
from common.flows.vae import VAE
from common.run.config import ConfigError, load_config
from common.run.loop import train
from common.run.objectives import (
    MaximumLikelihood,
    VariationalAutoencoder,
    batch_indices,
    eval_rng,
)
from papers.maf_iaf.model import MAFModel, build_maf, build_model
from papers.maf_iaf.train import CONFIG, IAFConfig, MAFConfig
from papers.maf_iaf.vae import VAEModel, build_vae

# --- data ---------------------------------------------------------------------------------------


def test_patch_splits_share_no_pixels():
    """A photograph whose pixels hold their block's number: every patch lies in one block,
    and no block gives patches to two splits."""
    rows, cols = 5, 7
    photo = np.kron(np.arange(rows * cols).reshape(rows, cols), np.ones((BLOCK, BLOCK)))
    photo = np.pad(photo, ((0, 9), (0, 3)), constant_values=255).astype(np.uint8)  # ragged edge
    levels = patch_levels([photo], np.random.default_rng(0))
    blocks = {}
    for split, x in levels.items():
        assert (x == x[:, :1]).all(), "a patch straddles two blocks"
        blocks[split] = set(x[:, 0].tolist())
        assert 255 not in blocks[split], "a patch reaches into the ragged edge"
        assert len(x) == PATCHES_PER_BLOCK * len(blocks[split])
    assert not (blocks["train"] & blocks["val"] or blocks["train"] & blocks["test"]
                or blocks["val"] & blocks["test"])  # fmt: skip
    assert [len(blocks[s]) for s in ("train", "val", "test")] == [28, 4, 3]


def test_patches_follow_the_bsds300_protocol():
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (2 * BLOCK + 5, 10 * BLOCK), dtype=np.uint8)
    out = patches_from_photos([photo], seed=3)
    assert set(out) == {"x_train", "x_val", "x_test"}
    x = out["x_train"]
    assert x.shape[1] == 63 and x.dtype == np.float32
    # the 64 mean-subtracted values sum to 0: the dropped pixel is minus the sum of the rest
    dropped = -x.astype(np.float64).sum(1)
    assert (np.abs(dropped) <= 1).all() and np.abs(dropped).max() > 0.05
    again = patches_from_photos([photo], seed=3)
    assert all(np.array_equal(out[k], again[k]) for k in out)


def test_photo_patches_dataset_loads(data_root):
    data = load_dataset("photo_patches", data_root)
    assert data.event_shape == (63,) and data.num_levels is None
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (49920, 6240, 6240)


# --- models -------------------------------------------------------------------------------------


def test_maf_builder_reverses_orders_and_places_batch_norm(data_root):
    data = load_dataset("photo_patches", data_root)
    flow = build_maf(MAFModel(num_layers=3, hidden_features=8, base="mog", num_components=3),
                     data)  # fmt: skip
    layers = list(flow.transform.layers)
    mades = [m for m in layers if isinstance(m, MaskedAutoregressive)]
    assert len(mades) == 3 and sum(isinstance(m, BatchNorm) for m in layers) == 3
    assert isinstance(layers[1], BatchNorm)
    orders = [m.made.order for m in mades] + [flow.base.made.order]
    for a, b in zip(orders, orders[1:], strict=False):
        assert torch.equal(a, b.flip(0)), "consecutive layers must reverse the order"
    assert isinstance(flow.base, MADEMoG)
    assert torch.isfinite(flow.log_prob(data.x_val[:5])).all()


def test_maf_config_errors(data_root):
    patches, digits = load_dataset("photo_patches", data_root), load_dataset("digits", data_root)
    with pytest.raises(ConfigError, match="num_layers: 0"):
        build_maf(MAFModel(num_layers=0), patches)
    with pytest.raises(ConfigError, match="logit_alpha"):
        build_maf(MAFModel(num_layers=1), digits)
    flow = build_maf(MAFModel(num_layers=1, hidden_features=8, logit_alpha=0.05), digits)
    assert torch.isfinite(flow.log_prob(digits.x_val[:4])).all()


def test_one_config_class_per_kind_of_experiment(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text(
        "paper: maf_iaf\nexperiment: e\nscale: smoke\ndata: {name: digits}\n"
        "model: {name: vae, depth: 2}\ntrain: {batch_size: 16, max_steps: 2}\n"
    )
    assert isinstance(load_config(CONFIG, path), IAFConfig)
    with pytest.raises(ConfigError, match="model.depht: unknown key"):
        load_config(CONFIG, path, ["model.depht=3"])
    with pytest.raises(ConfigError, match="hflip"):  # a flow's training key, not a VAE's
        load_config(CONFIG, path, ["train.hflip=true"])
    # a misspelt model is named with the models of both kinds, not as the flows' stray keys
    with pytest.raises(ConfigError, match=r"unknown model 'vea'; allowed: .*maf.*vae$"):
        load_config(CONFIG, path, ["model.name=vea"])
    path.write_text(path.read_text().replace("{name: vae, depth: 2}", "{name: maf}"))
    assert isinstance(load_config(CONFIG, path), MAFConfig)


# --- the VAE ------------------------------------------------------------------------------------


def _tiny_vae(depth: int) -> VAE:
    """D = 4 pixels, L = 2 latents: small enough to integrate p(x) = ∫ p(x|z) p(z) dz."""
    torch.manual_seed(0)
    L, C = 2, 3
    encoder = MLP(4, 2 * L + (C if depth else 0), 8, 1, "tanh")
    decoder = MLP(L, 4, 8, 1, "tanh")
    steps = [InverseAutoregressive(L, GatedAffine, 8, context_features=C,
                                   order=torch.arange(L).flip(0) if k % 2 else None)
             for k in range(depth)]  # fmt: skip
    vae = VAE(encoder, decoder, Compose(*steps) if depth else None, L, C if depth else 0).double()
    perturb_parameters(vae, 0.2, seed=depth)
    return vae


def _exact_log_px(vae: VAE, x: torch.Tensor) -> torch.Tensor:
    t = torch.linspace(-8, 8, 801, dtype=torch.float64)
    h = (t[1] - t[0]).item()
    z = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    logits = vae.decoder(z)  # (G, 4)
    log_prior = -0.5 * (z**2).sum(1) - math.log(2 * math.pi)
    out = []
    for xi in x:
        log_lik = -torch.nn.functional.binary_cross_entropy_with_logits(
            logits, xi.expand_as(logits), reduction="none"
        ).sum(1)
        out.append(torch.logsumexp(log_lik + log_prior, 0) + 2 * math.log(h))
    return torch.stack(out)


def test_importance_sampling_recovers_the_exact_likelihood():
    """mean_k w_k is an unbiased estimate of p(x) whatever q is, provided log q(z|x) is the
    density of the z it draws (a wrong term of log q biases it). Against p(x) by quadrature,
    within 4 standard errors; the ELBO stays below log p(x). With the diagonal posterior: an
    IAF posterior's heavier-tailed weights make the standard error unreliable, so its log q
    is checked by normalisation instead (next test)."""
    vae = _tiny_vae(0)
    x = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    with torch.no_grad():
        exact = _exact_log_px(vae, x)
        g = torch.Generator().manual_seed(0)
        log_w = vae.log_weights(x, torch.randn(40000, 2, 2, generator=g, dtype=torch.float64))
    w = (log_w - exact).exp()  # p̂(x) / p(x) per draw: mean 1 if unbiased
    se = w.std(0) / math.sqrt(len(w))
    assert ((w.mean(0) - 1).abs() < 4 * se).all(), (w.mean(0), se)
    assert (log_w.mean(0) < exact).all()


def test_iaf_posterior_density_is_normalised_and_matches_its_samples():
    """log q(z | x) of an IAF posterior: by the slow direction (z → z₀, D passes per step) it
    integrates to 1 over z by quadrature (a wrong sign or a missing log-det term does not), and
    at the posterior's own samples it equals the log q that sampling returned."""
    vae = _tiny_vae(2)
    x = torch.tensor([[1.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    with torch.no_grad():
        mu, log_sigma, h = vae.encoder(x).split([2, 2, 3], dim=1)

        def log_q(z):
            z0, ldj = vae.posterior(z, h.expand(len(z), 3))
            eps = (z0 - mu) * (-log_sigma).exp()
            return -0.5 * (eps**2).sum(1) - math.log(2 * math.pi) - log_sigma.sum() + ldj

        t = torch.linspace(-10, 10, 601, dtype=torch.float64)
        grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
        mass = log_q(grid).exp().sum() * (t[1] - t[0]) ** 2
        assert mass.item() == pytest.approx(1.0, abs=1e-3)
        z, sampled_log_q = vae.posterior_sample(x, torch.randn(7, 1, 2, dtype=torch.float64))
        torch.testing.assert_close(sampled_log_q[:, 0], log_q(z[:, 0]))


def test_iaf_posterior_draws_in_one_pass_per_step():
    vae = _tiny_vae(2)
    calls = []
    for step in vae.posterior.layers:
        step.bijector.made.register_forward_hook(lambda *_: calls.append(1))
    vae.log_weights(
        torch.ones(3, 4, dtype=torch.float64), torch.randn(5, 3, 2, dtype=torch.float64)
    )
    assert len(calls) == 2


def _vae_cfg(data_root, tmp_path, depth=2, steps=30):
    path = tmp_path / "vae.yaml"
    path.write_text(
        "paper: maf_iaf\nexperiment: v\nscale: smoke\ndata: {name: digits}\n"
        f"model: {{name: vae, latent_features: 4, hidden_features: 16, num_hidden: 1, "
        f"depth: {depth}, context_features: 4, iaf_hidden_features: 8}}\n"
        f"train: {{batch_size: 50, max_steps: {steps}, eval_every: 10, eval_samples: 128}}\n"
    )
    return load_config(CONFIG, path, [f"data.root={data_root}"])


def test_vae_objective_binarises_afresh_each_step_and_once_for_evaluation(data_root, tmp_path):
    objective = VariationalAutoencoder(_vae_cfg(data_root, tmp_path), build_model)
    model = objective.build(torch.device("cpu"))
    torch.manual_seed(0)
    x, eps = objective.batch(model, 0)
    assert set(x.unique().tolist()) <= {0.0, 1.0} and eps.shape == (1, 50, 4)
    first, second = objective.validate(model), objective.validate(model)
    assert first == second, "evaluation must draw the same binarisation and samples every time"
    assert first["log_px"] >= first["elbo"] - 1e-6
    assert first["nll"] == -first["log_px"] and first["neg_elbo"] == -first["elbo"]
    # the same digits binarised at two steps differ (a fixed binarisation would overfit)
    x_train = objective.data.x_train.flatten(1).float() / 16
    torch.manual_seed(1)
    assert not torch.equal(objective._binarize(x_train[:50]), objective._binarize(x_train[:50]))


def test_vae_run_trains_and_tests(data_root, tmp_path):
    cfg = _vae_cfg(data_root, tmp_path, depth=2, steps=40)
    summary = train(cfg, VariationalAutoencoder(cfg, build_model), tmp_path / "run",
                    progress=False)  # fmt: skip
    m = summary.metrics
    assert m["test/log_px"] >= m["test/elbo"] and m["test/nll"] == -m["test/log_px"]
    history = [h["val/neg_elbo"] for h in _val_history(tmp_path / "run")]
    assert history[-1] < history[0], "the ELBO must improve"
    assert {f.kind for f in summary.figures} == {"curves", "samples"}


def _val_history(workdir):
    ckpt = torch.load(workdir / "checkpoints" / "last.pt", weights_only=True)
    return [h for h in ckpt["state"]["history"] if "val/neg_elbo" in h]


def test_vae_rejects_continuous_data(data_root, tmp_path):
    cfg = _vae_cfg(data_root, tmp_path)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"name": "photo_patches"})})
    with pytest.raises(ConfigError, match="discrete images"):
        VariationalAutoencoder(cfg, build_model).build(torch.device("cpu"))


# --- MAF's test-time batch norm -----------------------------------------------------------------


def _maf_cfg(data_root, tmp_path, stats: str):
    path = tmp_path / "maf.yaml"
    path.write_text(
        "paper: maf_iaf\nexperiment: m\nscale: smoke\ndata: {name: photo_patches}\n"
        "model: {name: maf, num_layers: 2, hidden_features: 8, num_hidden: 1}\n"
        f"train: {{batch_size: 100, max_steps: 20, eval_every: 10, batch_norm_stats: {stats}}}\n"
    )
    return load_config(CONFIG, path, [f"data.root={data_root}"])


def test_test_time_batch_norm_uses_the_whole_training_set(data_root, tmp_path):
    objective = MaximumLikelihood(_maf_cfg(data_root, tmp_path, "training_set"), build_model)
    model = objective.build(torch.device("cpu"))
    model.eval()
    objective.test(model)
    first_bn = model.transform.layers[1]
    assert isinstance(first_bn, BatchNorm)
    with torch.no_grad():
        h = model.transform.layers[0](objective.data.x_train)[0]
    torch.testing.assert_close(first_bn.running_mean, h.mean(0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(first_bn.running_var, h.var(0, unbiased=False), atol=1e-6, rtol=1e-4)


def test_running_statistics_are_left_alone_by_default(data_root, tmp_path):
    objective = MaximumLikelihood(_maf_cfg(data_root, tmp_path, "running"), build_model)
    model = objective.build(torch.device("cpu")).eval()
    objective.test(model)
    assert torch.equal(model.transform.layers[1].running_mean, torch.zeros(63))


def test_training_set_statistics_need_batch_norm(data_root, tmp_path):
    cfg = _maf_cfg(data_root, tmp_path, "training_set")
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"batch_norm": False})})
    with pytest.raises(ConfigError, match="batch norm"):
        MaximumLikelihood(cfg, build_model).build(torch.device("cpu"))


def test_iaf_vae_builder_alternates_orders(data_root):
    vae = build_vae(VAEModel(depth=3, latent_features=4), load_dataset("digits", data_root))
    orders = [step.bijector.made.order for step in vae.posterior.layers]
    assert torch.equal(orders[0], orders[1].flip(0)) and torch.equal(orders[0], orders[2])
    assert build_vae(VAEModel(depth=0), load_dataset("digits", data_root)).posterior is None


# --- the paper profile's configs ----------------------------------------------------------------

PAPER_CONFIGS = sorted(
    (Path(__file__).resolve().parents[1] / "papers/maf_iaf/configs/paper").glob("*.yaml")
)


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_paper_configs_build_and_score_data_of_their_datasets_shape(path):
    """Each paper-scale config (Table 1 rows on the tabular bundle, MNIST, CIFAR-10, the MNIST
    IAF-VAE) builds against data of its dataset's registered shape and gives finite scores;
    widths are shrunk so the check takes milliseconds."""
    small = ["model.hidden_features=8"]
    if "vae" in path.stem:
        small.append("model.iaf_hidden_features=8")
    cfg = load_config(CONFIG, path, small)
    info = DATASETS[cfg.data.name]
    shape = (6, *info.event_shape)
    if info.num_levels:
        x = torch.randint(0, info.num_levels, shape, dtype=torch.uint8)
    else:
        x = torch.randn(shape)
    data = Dataset(cfg.data.name, x, x, x, info.num_levels, md5="")
    context = None
    if cfg.data.conditional:  # as the objective sets it: the one-hot label
        data.context_features = info.num_classes
        context = torch.eye(info.num_classes)[torch.arange(6) % info.num_classes]
    model = build_model(cfg.model, data)
    if isinstance(model, VAE):
        eps = torch.randn(2, 6, model.latent_features)
        scores = model.log_weights((x.flatten(1) > 0).float(), eps)
    else:
        scores = model.log_prob(x, context)
    assert torch.isfinite(scores).all()


# --- the density-vs-sampling cost measurement ---------------------------------------------------


def test_cost_counts_one_pass_for_the_fast_direction_and_d_for_the_slow(tmp_path):
    """MAF: density 1 MADE pass, sampling D; IAF the reverse (counted, then shown in the
    report's section with its plot)."""
    from common.run.reports.measurements import measurement_section
    from papers.maf_iaf.cost import main

    out = tmp_path / "cost.json"
    main(["--profile", "smoke", "--out", str(out)])
    data = json.loads(out.read_text())
    passes = {(flow, d, op): n for flow, d, op, n, _ in data["rows"]}
    for d in (8, 16):
        assert passes[("MAF", d, "log_prob")] == 1 and passes[("MAF", d, "sample")] == d
        assert passes[("IAF", d, "log_prob")] == d and passes[("IAF", d, "sample")] == 1
    assert all(ms > 0 for *_, ms in data["rows"])
    lines = measurement_section(out, tmp_path / "fig", Path("fig"))
    assert "## Density vs sampling cost: MAF and IAF" in lines
    assert "| IAF | 16 | sample | 1 |" in "\n".join(lines)
    assert (tmp_path / "fig" / "cost.png").stat().st_size > 0
    del data["rows"]
    out.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"lacks \['rows'\]"):
        measurement_section(out, tmp_path / "fig", Path("fig"))


# --- class-conditional MAF (MAF Table 2's conditional column) -----------------------------------


def _conditional_cfg(data_root, tmp_path, model="{name: maf, num_layers: 2, hidden_features: 16, "
                     "num_hidden: 1, logit_alpha: 0.05}", data="digits", overrides=()):  # fmt: skip
    path = tmp_path / "cond.yaml"
    path.write_text(
        f"paper: maf_iaf\nexperiment: c\nscale: smoke\ndata: {{name: {data}, conditional: true}}\n"
        f"model: {model}\n"
        "train: {batch_size: 32, max_steps: 4, eval_every: 2, eval_batch_size: 500,\n"
        "        batch_norm_stats: training_set, num_samples: 20}\n"
    )
    return load_config(CONFIG, path, [f"data.root={data_root}", *overrides])


def test_conditional_batches_carry_their_own_labels_and_scores_use_them(data_root, tmp_path):
    cfg = _conditional_cfg(data_root, tmp_path)
    objective = MaximumLikelihood(cfg, build_model)
    model = objective.build(torch.device("cpu"))
    perturb_parameters(model, 0.02, seed=0)  # the zero-initialised outputs ignore the context
    data = objective.data
    y, _, context = objective.batch(model, 3)
    index = batch_indices(len(data.x_train), objective.batch_size, cfg.seed, 3)
    assert context.shape == (32, 10) and torch.equal(context.argmax(1), data.y_train[index])
    # the validation NLL is −log p(x | y) with each digit's own label, not another's
    nll = objective.validate(model)["nll"]
    one_hot = torch.nn.functional.one_hot
    model.eval()
    with torch.no_grad(), eval_rng(torch.device("cpu")):
        own = -model.log_prob(data.x_val, one_hot(data.y_val, 10).float()).mean().item()
    with torch.no_grad(), eval_rng(torch.device("cpu")):
        shifted = one_hot((data.y_val + 1) % 10, 10).float()
        other = -model.log_prob(data.x_val, shifted).mean().item()
    assert nll == pytest.approx(own, rel=1e-6) and abs(own - other) > 1e-3


def test_conditional_run_trains_tests_and_samples_per_class(data_root, tmp_path):
    """Training, the training-set batch-norm statistics (computed with the labels) and the
    class-conditional sample grid all run with the context."""
    cfg = _conditional_cfg(data_root, tmp_path)
    summary = train(cfg, MaximumLikelihood(cfg, build_model), tmp_path / "run", progress=False)
    assert math.isfinite(summary.metrics["test/nll"])
    assert "samples" in {f.kind for f in summary.figures}


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        ("{name: maf, num_layers: 1, hidden_features: 8}", "photo_patches", "needs class labels"),
        ("{name: diagonal_gaussian, logit_alpha: 0.05}", "digits", "takes no context"),
        ("{name: maf, num_layers: 1, hidden_features: 8, base: mog, logit_alpha: 0.05}", "digits",
         "needs base: gaussian"),
    ],
)  # fmt: skip
def test_conditional_needs_labels_and_a_model_that_takes_them(data_root, tmp_path, model, data,
                                                              message):  # fmt: skip
    closed_form = ["train.max_steps=0", "train.batch_norm_stats=running"]
    cfg = _conditional_cfg(data_root, tmp_path, model, data, closed_form if "diag" in model else [])
    with pytest.raises(ConfigError, match=message):
        MaximumLikelihood(cfg, build_model).build(torch.device("cpu"))


def test_vae_rejects_conditional(data_root, tmp_path):
    cfg = _vae_cfg(data_root, tmp_path)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"conditional": True})})
    with pytest.raises(ConfigError, match="does not condition on labels"):
        VariationalAutoencoder(cfg, build_model).build(torch.device("cpu"))
