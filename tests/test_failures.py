"""What goes wrong, and what the run machinery does about it (issue 11): crash-safe files,
honest MLflow run states, one MLflow run per workdir across kills and restarts."""

from __future__ import annotations

import math
import os

import pytest
import torch
from mlflow.tracking import MlflowClient

from common import files
from common.run.cli import run_cli
from common.run.config import ConfigError, load_config
from common.run.loop import NonFiniteLossError, train
from common.run.objectives import MaximumLikelihood
from common.run.tracking import Tracker, init_store, sqlite_uri
from papers.nice.model import build_model
from papers.nice.train import NiceConfig
from papers.nice.train import main as nice_main
from papers.realnvp.train import RealNVPConfig
from tests.conftest import REPO_ROOT
from tests.test_training import make_cfg


class Killed(BaseException):
    """Stands in for SIGKILL: raised mid-run, with the tracker's clean-up disabled."""


def store(tmp_path):
    uri = sqlite_uri(tmp_path / "store" / "mlflow.db")
    init_store(uri, ["nice"])
    client = MlflowClient(tracking_uri=uri)
    return uri, client, client.get_experiment_by_name("nice").experiment_id


# --- files ------------------------------------------------------------------------------------


def test_atomic_replace_syncs_the_file_before_the_rename_and_the_folder_after(
    tmp_path, monkeypatch
):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    target = tmp_path / "best.pt"
    files.write_atomic(target, "new")
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync", "replace", "fsync"]
    assert events[0][1] != str(target) and events[0][1].endswith(".pt")  # the temporary file
    assert events[1][1] == str(target) and events[2][1] == str(tmp_path)
    assert target.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would create it


def test_a_write_killed_midway_leaves_the_old_file_and_no_temporary(tmp_path):
    target = files.write_atomic(tmp_path / "metrics.json", "old")

    def half_then_killed(tmp):
        tmp.write_text("ne")
        raise Killed

    with pytest.raises(Killed):
        files.replace_atomically(target, half_then_killed)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["metrics.json"]


def test_a_kill_during_a_best_checkpoint_write_keeps_the_previous_best(
    data_root, tmp_path, monkeypatch
):
    """The second ``best.pt`` write is killed halfway: the first one still loads."""
    import common.run.loop as loop

    cfg = make_cfg(data_root, max_steps=40, eval_every=10)
    saves, real_save = [], torch.save

    def save(obj, path):
        saves.append(path)
        if len(saves) >= 3 and "best" in os.path.basename(str(path)):
            path.write_bytes(b"PK\x03\x04 half a zip")
            raise Killed
        real_save(obj, path)

    monkeypatch.setattr(loop.torch, "save", save)
    with pytest.raises(Killed):
        train(cfg, MaximumLikelihood(cfg, build_model), tmp_path, progress=False)
    kept = torch.load(tmp_path / "checkpoints/best.pt", weights_only=True)  # the first best
    assert kept and all(isinstance(v, torch.Tensor) for v in kept.values())


# --- run states -------------------------------------------------------------------------------


def test_a_failure_after_training_marks_the_run_failed(data_root, tmp_path, monkeypatch):
    """Figures, artifacts and the test evaluation run after the loop; a crash there still
    ends the MLflow run as FAILED, and no metrics.json claims a finished run."""
    uri, client, exp = store(tmp_path)
    cfg = make_cfg(data_root, max_steps=10)

    def broken_figures(*args, **kwargs):
        raise RuntimeError("plotting broke")

    monkeypatch.setattr(MaximumLikelihood, "figures", broken_figures)
    with pytest.raises(RuntimeError, match="plotting broke"):
        train(cfg, MaximumLikelihood(cfg, build_model), tmp_path / "run",
              Tracker(uri, "nice"), progress=False)  # fmt: skip
    (run,) = client.search_runs([exp])
    assert run.info.status == "FAILED" and not (tmp_path / "run/metrics.json").exists()


def test_non_finite_test_metrics_are_an_error_naming_the_split(data_root, tmp_path, monkeypatch):
    uri, client, exp = store(tmp_path)
    cfg = make_cfg(data_root, max_steps=10)
    monkeypatch.setattr(MaximumLikelihood, "test", lambda self, model: {"test/nll": math.nan})
    with pytest.raises(NonFiniteLossError, match=r"test/nll.*test split of digits"):
        train(cfg, MaximumLikelihood(cfg, build_model), tmp_path / "run",
              Tracker(uri, "nice"), progress=False)  # fmt: skip
    (run,) = client.search_runs([exp])
    assert run.info.status == "FAILED" and "test/nll" not in run.data.metrics


@pytest.mark.parametrize("killed_at", [7, 17], ids=["before-first-checkpoint", "after-it"])
def test_a_killed_run_is_reopened_and_replayed_steps_are_not_logged_twice(
    data_root, tmp_path, monkeypatch, killed_at
):
    """SIGKILL at step 7 (before the first checkpoint, at 10) or 17 (after it): the restart
    reopens the same MLflow run (named in ``run.json`` from the first step), replays from the
    checkpoint, and every metric has one point per step."""
    uri, client, exp = store(tmp_path)
    cfg = make_cfg(data_root, max_steps=40, log_every=5, checkpoint_every=10)
    real_batch = MaximumLikelihood.batch

    def batch(self, model, step):
        if step == killed_at and not getattr(self, "survived", False):
            raise Killed
        return real_batch(self, model, step)

    monkeypatch.setattr(MaximumLikelihood, "batch", batch)
    tracker = Tracker(uri, "nice", flush_seconds=0)  # every point reaches the store at once
    tracker.end = lambda status="FINISHED": None  # a kill runs no clean-up
    with pytest.raises(Killed):
        train(cfg, MaximumLikelihood(cfg, build_model), tmp_path / "run", tracker, progress=False)
    (orphan,) = client.search_runs([exp])
    assert orphan.info.status == "RUNNING"

    objective = MaximumLikelihood(cfg, build_model)
    objective.survived = True
    out = train(cfg, objective, tmp_path / "run", Tracker(uri, "nice"), progress=False)
    (run,) = client.search_runs([exp])
    assert run.info.run_id == orphan.info.run_id == out.run_id
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/nll")]
    assert steps == [5, 10, 15, 20, 25, 30, 35, 40]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/nll")] == [
        10,
        20,
        30,
        40,
    ]


def test_a_run_record_from_another_store_starts_a_new_run(data_root, tmp_path):
    cfg = make_cfg(data_root, max_steps=5, eval_every=5)
    first, _, _ = store(tmp_path / "a")
    train(cfg, MaximumLikelihood(cfg, build_model), tmp_path / "run", Tracker(first, "nice"),
          progress=False)  # fmt: skip
    (tmp_path / "run/checkpoints").rename(tmp_path / "old-checkpoints")
    second, client, exp = store(tmp_path / "b")
    out = train(cfg, MaximumLikelihood(cfg, build_model), tmp_path / "run",
                Tracker(second, "nice"), progress=False)  # fmt: skip
    (run,) = client.search_runs([exp])
    assert run.info.run_id == out.run_id and run.info.status == "FINISHED"


# --- configs that validated and then crashed or degenerated ----------------------------------

SMOKE = REPO_ROOT / "papers"


@pytest.mark.parametrize(
    "config_cls, path, override, message",
    [
        (NiceConfig, "nice/configs/smoke/digits_nice.yaml", "train.optim.lr=.inf",
         r"train.optim.lr: .*finite"),
        (NiceConfig, "nice/configs/smoke/digits_gaussian.yaml", "model.logit_alpha=0.7",
         r"logit_alpha: .*less than 0.5"),
        (RealNVPConfig, "realnvp/configs/smoke/digits_realnvp.yaml", "model.logit_alpha=0",
         r"logit_alpha: .*greater than 0"),
        (RealNVPConfig, "realnvp/configs/smoke/moons_realnvp.yaml", "train.batch_size=1",
         r"batch_norm .* train.batch_size 1 .* at least 16"),
    ],
    ids=["infinite-lr", "gaussian-alpha", "realnvp-alpha-0", "batch-norm-batch-1"],
)  # fmt: skip
def test_values_that_would_crash_or_degenerate_are_config_errors(
    config_cls, path, override, message
):
    load_config(config_cls, SMOKE / path)  # the committed config itself is fine
    with pytest.raises(ConfigError, match=message):
        load_config(config_cls, SMOKE / path, [override])


def test_batch_of_one_is_fine_without_batch_norm():
    path = SMOKE / "realnvp/configs/smoke/moons_realnvp.yaml"
    cfg = load_config(RealNVPConfig, path, ["train.batch_size=1", "model.batch_norm=false"])
    assert cfg.train.batch_size == 1


# --- the command line: one clear line and a non-zero exit, no traceback ----------------------


def run_nice(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        nice_main([*map(str, argv), "--no-progress"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return exit_info.value.code, err


def nice_smoke(data_root, tmp_path, *overrides):
    config = tmp_path / "digits_nice.yaml"
    config.write_text((SMOKE / "nice/configs/smoke/digits_nice.yaml").read_text())
    sets = [f"data.root={data_root}", *overrides]
    return ["--config", config, *[a for s in sets for a in ("--set", s)]]


def test_cli_workdir_that_is_a_file(data_root, tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    code, err = run_nice(capsys, *nice_smoke(data_root, tmp_path), "--no-tracking",
                         "--workdir", tmp_path / "afile")  # fmt: skip
    assert code == 2 and "is a file" in err


def test_cli_truncated_checkpoint(data_root, tmp_path, capsys):
    ckpt = tmp_path / "run/checkpoints/last.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"PK\x03\x04truncated")
    code, err = run_nice(capsys, *nice_smoke(data_root, tmp_path), "--no-tracking",
                         "--workdir", tmp_path / "run")  # fmt: skip
    assert code == 1 and f"{ckpt} cannot be read" in err and "Move it aside" in err


def test_cli_negative_seed_and_cuda_without_a_gpu(data_root, tmp_path, capsys, monkeypatch):
    code, err = run_nice(capsys, *nice_smoke(data_root, tmp_path, "seed=-1"), "--no-tracking")
    assert code == 2 and "seed" in err and "greater than or equal to 0" in err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, err = run_nice(capsys, *nice_smoke(data_root, tmp_path, "device=cuda"),
                         "--no-tracking", "--workdir", tmp_path / "run")  # fmt: skip
    assert code == 2 and "no GPU" in err and "device=cpu" in err


def test_cli_stop_after_says_how_to_resume(data_root, tmp_path, capsys):
    argv = [*nice_smoke(data_root, tmp_path), "--no-tracking", "--workdir", tmp_path / "run"]
    nice_main([*map(str, argv), "--no-progress", "--stop-after", "3"])
    err = capsys.readouterr().err
    assert "stopped after step 3" in err and "same command" in err


@pytest.mark.parametrize("uri", ["runs/mlflow.db", "sqlite:///{tmp}/afile/mlflow.db"],
                         ids=["unsupported", "unwritable"])  # fmt: skip
def test_cli_bad_tracking_uri(data_root, tmp_path, capsys, uri):
    (tmp_path / "afile").write_text("")
    uri = uri.format(tmp=tmp_path)
    code, err = run_nice(capsys, *nice_smoke(data_root, tmp_path), "--tracking-uri", uri,
                         "--workdir", tmp_path / "run")  # fmt: skip
    assert code == 1 and uri.removeprefix("sqlite:///") in err
    assert ("unsupported tracking URI" if "sqlite" not in uri else "cannot open") in err


def test_cli_data_outside_the_models_domain(data_root, tmp_path, capsys):
    """NICE's dequantized-pixel model on a toy set with negative coordinates."""
    config = SMOKE / "nice/configs/smoke/moons_nice.yaml"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(NiceConfig, _logit_first, ["--config", str(config), "--set",
                f"data.root={data_root}", "--no-tracking", "--workdir", str(tmp_path / "r"),
                "--no-progress"], paper="nice")  # fmt: skip
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "Logit expects inputs in [0, 1]" in err
    assert "outside the model's domain" in err and "Traceback" not in err


def _logit_first(model_cfg, data):
    from common.flows.bijector import Compose
    from common.flows.dequantize import Logit

    flow = build_model(model_cfg, data)
    flow.transform = Compose(Logit(0.05), flow.transform)
    return flow


def test_prepare_offline_is_one_clear_error(tmp_path, capsys, monkeypatch):
    import common.data.__main__ as prepare_cli
    from common.data import prepare_mnist

    dead = ["http://127.0.0.1:9/"]  # nothing listens: what an offline machine sees
    monkeypatch.setattr(prepare_cli, "prepare_mnist",
                        lambda root, downloads: prepare_mnist(root, downloads, dead))  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        prepare_cli.main(["prepare", "--root", str(tmp_path / "data"), "--downloads",
                          str(tmp_path / "dl"), "--datasets", "mnist"])  # fmt: skip
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.startswith("error: could not download")
    assert "Traceback" not in err and "place it at" in err


# --- numerics at the edges --------------------------------------------------------------------


def test_logit_inverse_ldj_is_finite_far_out_in_float32():
    """σ(y) rounds to 1 in float32 for y ≳ 17: the ldj is written with log-sigmoids."""
    from common.flows.dequantize import Logit

    y = torch.tensor([[-40.0, -20.0, 0.0, 20.0, 40.0]])
    _, ldj32 = Logit(0.05).inverse(y)
    _, ldj64 = Logit(0.05).inverse(y.double())
    assert torch.isfinite(ldj32).all() and torch.allclose(ldj32.double(), ldj64, rtol=1e-6)


def test_logit_forward_rejects_nan():
    from common.flows.bijector import InputOutsideDomainError
    from common.flows.dequantize import Logit

    with pytest.raises(InputOutsideDomainError, match=r"\[0, 1\]"):
        Logit(0.05)(torch.tensor([[0.5, math.nan]]))


@pytest.mark.parametrize("family", ["mobius", "ncp"])
def test_mixture_inverse_stays_in_its_bracket_and_its_ldj_is_where_it_ends(family):
    """Very sharp mixtures in float32 (|ω| → 0.99, NCP slopes up to e^±16): the final Newton
    step is clamped to the solver's bracket, so θ ∈ [0, 2π], and the ldj is −log f' at the
    θ returned, not at the point before that step."""
    from common.flows.circle import TWO_PI, circle_map

    torch.manual_seed(5)
    cmap = circle_map(family, 6)
    params = 8 * torch.randn(64, 6, 18)
    y = torch.rand(64, 6) * TWO_PI
    theta, ldj = cmap.inverse(y, params)
    assert ((theta >= 0) & (theta <= TWO_PI)).all()
    _, log_deriv = cmap(theta, params)
    assert torch.equal(ldj, -log_deriv)


# --- continuing from the last good checkpoint with changed settings ---------------------------


def _diverge_at(step):
    """A MaximumLikelihood whose loss is NaN at ``step`` of its first call of train."""

    class Diverging(MaximumLikelihood):
        diverged = False

        def loss(self, model, batch):
            loss = super().loss(model, batch)
            if self.calls == step and not Diverging.diverged:
                Diverging.diverged = True
                return loss * math.nan
            return loss

        def batch(self, model, s):
            self.calls = s
            return super().batch(model, s)

    return Diverging


def test_continue_from_the_last_good_checkpoint_with_a_lower_learning_rate(data_root, tmp_path):
    uri, client, exp = store(tmp_path)
    cfg = make_cfg(data_root, max_steps=40, checkpoint_every=10,
                   schedule={"name": "constant", "warmup_steps": 4})  # fmt: skip
    objective = _diverge_at(25)
    with pytest.raises(NonFiniteLossError, match="--continue-with-changes"):
        train(cfg, objective(cfg, build_model), tmp_path / "run", Tracker(uri, "nice"),
              progress=False)  # fmt: skip
    lower = cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"optim": cfg.train.optim.model_copy(update={"lr": 1e-4})})})  # fmt: skip
    with pytest.raises(ConfigError, match=r"train.optim.lr: 0.001 -> 0.0001.*--continue-with"):
        train(lower, objective(lower, build_model), tmp_path / "run", progress=False)

    out = train(lower, objective(lower, build_model), tmp_path / "run", Tracker(uri, "nice"),
                progress=False, continue_with_changes=True)  # fmt: skip
    assert out.steps == 40 and [c.model_dump() for c in out.continuations] == [
        {"step": 20, "changes": {"train.optim.lr": [1e-3, 1e-4]}}
    ]
    (run,) = client.search_runs([exp])
    assert run.info.run_id == out.run_id and run.info.status == "FINISHED"
    assert run.data.tags["continued_at_step_20"] == "train.optim.lr: 0.001 -> 0.0001"
    lrs = {m.step: m.value for m in client.get_metric_history(out.run_id, "train/lr")}
    # steps 21-24 warm up again from the continuation, then the new rate holds
    assert lrs[5] == pytest.approx(1e-3) and lrs[25] == pytest.approx(1e-4)
    ckpt = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-4)


def test_continuing_refuses_changes_to_the_model(data_root, tmp_path):
    cfg = make_cfg(data_root, max_steps=20)
    train(cfg, MaximumLikelihood(cfg, build_model), tmp_path, stop_after=10, progress=False)
    wider = cfg.model_copy(update={"model": cfg.model.model_copy(update={"hidden_features": 8})})
    with pytest.raises(ConfigError, match=r"model.hidden_features cannot change"):
        train(wider, MaximumLikelihood(wider, build_model), tmp_path, progress=False,
              continue_with_changes=True)  # fmt: skip


def test_lr_factor_restarts_the_warm_up_at_a_continuation():
    from common.run.config import ScheduleConfig
    from common.run.loop import lr_factor

    s = ScheduleConfig(name="exponential", gamma=0.5, warmup_steps=4)
    assert [lr_factor(s, k, 100) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 0.5]
    assert [lr_factor(s, k, 100, since=20) for k in (20, 21, 23)] == [
        0.25 * 0.5**16, 0.5 * 0.5**17, 1.0 * 0.5**19,
    ]  # fmt: skip


# --- tests that let real bugs through (item 12): each fails on a one-line bug named in it -----


def test_kl_estimate_adds_log_z_hat():
    """KL ≈ mean log(q/p̃) + log Ẑ. Writing − log Ẑ would still pass a one-sided "≤ exact KL"
    check; the estimate must equal the exact KL up to the Monte-Carlo error of log Ẑ."""
    from common.flows.bijector import Reverse
    from common.flows.flow import Flow
    from common.flows.manifolds import UniformTorus
    from common.run.objectives import kl_metrics
    from papers.tori_spheres.targets import TorusTarget

    torch.manual_seed(7)
    target = TorusTarget("t2_unimodal")
    m = kl_metrics(Flow(Reverse(2), UniformTorus(2)).double(), target, 40000)
    assert m["log_z_estimate"] == pytest.approx(target.log_z, abs=5 * m["kl_se"])
    assert m["kl"] == pytest.approx(m["kl_exact"], abs=5 * m["kl_se"])


def test_resume_restores_the_learning_rate_schedule(data_root, tmp_path):
    """A warm-up and an exponential decay: a resumed run whose scheduler restarted from step
    0 would train at other rates and end elsewhere."""
    cfg = make_cfg(data_root, schedule={"name": "exponential", "gamma": 0.9, "warmup_steps": 8})
    full = train(cfg, MaximumLikelihood(cfg, build_model), tmp_path / "a", progress=False)
    train(cfg, MaximumLikelihood(cfg, build_model), tmp_path / "b", stop_after=13,
          progress=False)  # fmt: skip
    resumed = train(cfg, MaximumLikelihood(cfg, build_model), tmp_path / "b", progress=False)
    assert resumed.metrics["test/nll"] == full.metrics["test/nll"]
    lrs = [torch.load(tmp_path / d / "checkpoints/last.pt", weights_only=True)["optimizer"]
           ["param_groups"][0]["lr"] for d in ("a", "b")]  # fmt: skip
    assert lrs[0] == lrs[1] == pytest.approx(1e-3 * 0.9 ** (40 - 8))


def test_the_test_score_is_the_best_checkpoints(data_root, tmp_path, monkeypatch):
    """Validation made to peak at step 20 of 40: the test metrics are those of best.pt's
    weights, not of the last ones."""
    cfg = make_cfg(data_root, max_steps=40, eval_every=10)
    fake = iter([3.0, 1.0, 2.0, 4.0])  # val/nll at steps 10, 20, 30, 40
    real_validate = MaximumLikelihood.validate
    monkeypatch.setattr(
        MaximumLikelihood, "validate", lambda self, m: real_validate(self, m) | {"nll": next(fake)}
    )
    objective = MaximumLikelihood(cfg, build_model)
    out = train(cfg, objective, tmp_path, progress=False)
    assert out.best_step == 20 and out.steps == 40
    model = objective.build(torch.device("cpu"))
    model.load_state_dict(torch.load(tmp_path / "checkpoints/best.pt", weights_only=True))
    model.eval()
    assert objective.test(model)["test/nll"] == out.metrics["test/nll"]
    last = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)["model"]
    model.load_state_dict(last)
    assert objective.test(model)["test/nll"] != out.metrics["test/nll"]


def test_an_already_downloaded_file_is_checked(tmp_path):
    from common.data import ChecksumError
    from common.data.download import fetch

    dest = tmp_path / "dl" / "train-images-idx3-ubyte.gz"
    dest.parent.mkdir()
    dest.write_bytes(b"a stale or tampered download")
    good = "0" * 32
    with pytest.raises(ChecksumError, match="does not match the published"):
        fetch(["http://127.0.0.1:9/"], dest, good)
    assert not dest.exists() and dest.with_name(dest.name + ".corrupt").exists()


def test_reverse_kl_logs_its_test_metrics(tmp_path):
    from common.run.objectives import ReverseKL
    from common.run.targets import EnergyTarget
    from tests.test_objectives import energy_config, plane_flow

    uri, client, _ = store(tmp_path)
    init_store(uri, ["tests"])
    cfg = energy_config(max_steps=20, eval_every=10, log_every=10)
    objective = ReverseKL(cfg, plane_flow, lambda t: EnergyTarget(t["name"]))
    out = train(cfg, objective, tmp_path / "run", Tracker(uri, "tests"), progress=False)
    logged = client.get_run(out.run_id).data.metrics
    for key in ("test/kl", "test/kl_exact", "test/ess", "test/quadrature_mass"):
        assert logged[key] == out.metrics[key], key


def test_flow_sample_applies_its_temperature():
    """x = f⁻¹(T·z): the same base draw, scaled, through the inverse."""
    from common.flows.testing import perturb_parameters
    from common.run.targets import EnergyTarget
    from tests.test_objectives import plane_flow

    flow = plane_flow(None, EnergyTarget("u1"))
    perturb_parameters(flow, 0.3, seed=0)  # not the identity it starts as
    torch.manual_seed(1)
    z = flow.base.sample(500)
    torch.manual_seed(1)
    x = flow.sample(500, temperature=0.5)
    assert torch.allclose(x, flow.transform.inverse(0.5 * z)[0])
    assert not torch.allclose(x, flow.transform.inverse(z)[0])


def test_polyak_average_moves_by_one_minus_decay():
    """avg ← decay·avg + (1 − decay)·θ: after one update from avg = 0 towards θ = 1 with decay
    0.9 the average is 0.1 (1 − decay would give 0.9)."""
    from common.run.loop import Polyak

    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    polyak = Polyak(model, decay=0.9)
    polyak.update(model)  # the first update copies
    with torch.no_grad():
        model.weight.fill_(1.0)
    polyak.update(model)
    assert polyak.model.weight.item() == pytest.approx(0.1)


def test_sigterm_marks_the_run_killed(data_root, tmp_path):
    """What Snakemake, Slurm and ``kill`` send: the run unwinds, MLflow says KILLED (not a
    RUNNING orphan), the exit status is 130."""
    import signal
    import subprocess
    import sys
    import time

    uri, client, exp = store(tmp_path)
    argv = [sys.executable, "-m", "papers.nice.train",
            *map(str, nice_smoke(data_root, tmp_path, "train.max_steps=1000000")),
            "--tracking-uri", uri, "--workdir", str(tmp_path / "run"), "--no-progress"]  # fmt: skip
    job = subprocess.Popen(argv, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "run/run.json").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # into the training loop
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 130 and "run the same command again" in err
    (run,) = client.search_runs([exp])
    assert run.info.status == "KILLED"


def test_compile_falls_back_to_eager_where_torch_cannot_link(data_root, tmp_path, monkeypatch,
                                                             capsys):  # fmt: skip
    """PyTorch 2.13 cannot compile with torch under a path with a space; a run asking for
    train.compile then trains eagerly, says so, and records compiled = False."""
    import common.run.loop as loop
    from common.run import steps

    monkeypatch.setattr(steps.torch, "__file__", "/opt/my envs/torch/__init__.py")
    assert "path with a space (/opt/my envs/torch/lib)" in steps.compile_blocker()
    monkeypatch.setattr(loop, "compile_blocker", steps.compile_blocker)
    uri, client, exp = store(tmp_path)
    cfg = make_cfg(data_root, max_steps=10, compile=True)
    out = train(cfg, MaximumLikelihood(cfg, build_model), tmp_path / "run",
                Tracker(uri, "nice"), progress=False)  # fmt: skip
    assert "training eagerly" in capsys.readouterr().out
    assert client.get_run(out.run_id).data.tags["compiled"] == "False"
