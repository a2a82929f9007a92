"""Data-parallel training under torchrun (common.run.distributed): two gloo processes on the
CPU against one process with the same global batch, and kill-and-resume under DDP.

Tolerance. The runs use SGD with momentum, whose update is linear in the gradient, so the
parameters of the two runs differ only by the rounding of sums split over two ranks: about
1e-6 after 30 steps (measured: 2.4e-7 for Glow, 8.2e-7 for RealNVP), asserted at 1e-5. Adam is
not used here because it amplifies rounding: its first update is lr·g/(|g| + ε) ≈ ±lr, so a
gradient within rounding of 0 (an ActNorm bias right after its data-dependent initialisation)
flips a whole step of 1e-3 either way; that is Adam's, not DDP's, and one process summing in
another order shows it too. A missing all-reduce of the batch statistics or of the ActNorm
initialisation, or shards that are not the single process's batch, move the parameters by
1e-3 or more.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO_ROOT

SGD = ["--set", "train.optim.name=sgd", "--set", "train.optim.lr=1e-4",
       "--set", "train.optim.momentum=0.9"]  # fmt: skip
TOLERANCE = 1e-5  # see the module docstring

PAPERS = {  # a model with ActNorm (data-dependent init), one with both kinds of batch norm
    "glow": "papers/glow/configs/smoke/digits_conv_affine.yaml",
    "realnvp": "papers/realnvp/configs/smoke/digits_realnvp.yaml",
}


def _args(paper, data_root, workdir, *extra) -> list[str]:
    return ["--config", str(REPO_ROOT / PAPERS[paper]), "--set", f"data.root={data_root}",
            "--workdir", str(workdir), "--no-progress", *SGD, *extra]  # fmt: skip


def torchrun(paper: str, data_root, workdir, *extra, processes: int = 2):
    """``torchrun --standalone --nproc-per-node 2 -m papers.<paper>.train …``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={processes}", "-m", f"papers.{paper}.train",
           *_args(paper, data_root, workdir, *extra)]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def one_process(paper: str, data_root, workdir, *extra) -> None:
    import importlib

    importlib.import_module(f"papers.{paper}.train").main(_args(paper, data_root, workdir,
                                                                *extra))  # fmt: skip


def checkpoint(workdir):
    return torch.load(workdir / "checkpoints" / "last.pt", weights_only=True)


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item()
               for k in a if a[k].is_floating_point())  # fmt: skip


@pytest.fixture(scope="module")
def ddp_glow(data_root, tmp_path_factory):
    """An uninterrupted 2-process Glow run, logging to its own MLflow store."""
    root = tmp_path_factory.mktemp("ddp_glow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    torchrun("glow", data_root, root / "run", "--tracking-uri", uri)
    return root / "run", uri


@pytest.mark.parametrize("paper", sorted(PAPERS))
def test_two_ranks_take_the_steps_of_one_process(paper, data_root, tmp_path, request):
    if paper == "glow":
        ddp = request.getfixturevalue("ddp_glow")[0]
    else:
        ddp = tmp_path / "ddp"
        torchrun(paper, data_root, ddp, "--no-tracking")
    one_process(paper, data_root, tmp_path / "one", "--no-tracking")
    single, parallel = checkpoint(tmp_path / "one"), checkpoint(ddp)
    assert parallel["state"]["step"] == single["state"]["step"] == 30
    # parameters and buffers: batch norm's running statistics, ActNorm's flag
    assert max_difference(single["model"], parallel["model"]) < TOLERANCE
    # the logged loss is the global batch's, as one process logs it
    history = [h["train/nll"] for h in parallel["state"]["history"] if "train/nll" in h]
    expected = [h["train/nll"] for h in single["state"]["history"] if "train/nll" in h]
    assert history == pytest.approx(expected, abs=1e-3)


def test_rank_zero_alone_logs_one_complete_mlflow_run(ddp_glow):
    from mlflow.tracking import MlflowClient

    workdir, uri = ddp_glow
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1, "one MLflow run per training run, however many processes"
    run = runs[0]
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/nll")]
    assert steps == [5, 10, 15, 20, 25, 30]
    assert (workdir / "metrics.json").exists() and (workdir / "checkpoints/best.pt").exists()


def test_ddp_kill_and_resume_ends_where_the_uninterrupted_run_ends(ddp_glow, data_root, tmp_path):
    # stopped at step 12, between checkpoints, then the same command again
    torchrun("glow", data_root, tmp_path / "run", "--no-tracking", "--stop-after", "12")
    assert checkpoint(tmp_path / "run")["state"]["step"] == 12
    torchrun("glow", data_root, tmp_path / "run", "--no-tracking")
    resumed, uninterrupted = checkpoint(tmp_path / "run"), checkpoint(ddp_glow[0])
    assert resumed["state"]["step"] == 30
    for key, value in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    assert torch.equal(resumed["torch_rng"], uninterrupted["torch_rng"])


def test_a_global_batch_that_does_not_split_evenly_is_refused(
    data_root, tmp_path, monkeypatch, capsys
):
    from contextlib import contextmanager

    from common.run import loop
    from common.run.distributed import Ranks

    @contextmanager
    def two_ranks(device):  # rank 0 of 2, before any process group is needed
        yield Ranks(rank=0, local_rank=0, world_size=2)

    monkeypatch.setattr(loop, "process_group", two_ranks)
    argv = ["--set", "train.batch_size=63", "--no-tracking"]
    with pytest.raises(SystemExit) as exit_info:
        one_process("glow", data_root, tmp_path, *argv)
    assert exit_info.value.code == 2
    assert "train.batch_size 63 does not split evenly over 2 processes" in capsys.readouterr().err


# --- shards ------------------------------------------------------------------------------------


def test_shards_are_the_global_batch_in_order():
    from common.run.objectives import MaximumLikelihood, VariationalAutoencoder

    y, ldj = torch.randn(8, 3), torch.randn(8)
    parts = [MaximumLikelihood.shard(None, (y, ldj), r, 2) for r in range(2)]
    assert torch.equal(torch.cat([p[0] for p in parts]), y)
    assert torch.equal(torch.cat([p[1] for p in parts]), ldj)
    assert torch.equal(MaximumLikelihood.shard(None, y, 3, 4), y[6:])
    x, eps = torch.randn(8, 5), torch.randn(1, 8, 2)  # the VAE's noise: examples on dim 1
    parts = [VariationalAutoencoder.shard(None, (x, eps), r, 2) for r in range(2)]
    assert torch.equal(torch.cat([p[1] for p in parts], dim=1), eps)
    assert torch.equal(parts[1][0], x[4:])


def test_noise_inside_the_loss_differs_between_ranks_and_repeats_on_resume():
    """loss_rng: under W > 1, draws inside a step's loss (i-ResNet's and FFJORD's probes) come
    from (seed, step, rank): independent across ranks, the same when the step is replayed, and
    the global stream, which every rank must share, is left as it was."""
    from common.run.distributed import Ranks, loss_rng

    cpu = torch.device("cpu")

    def draw(rank, step, world_size=2):
        with loss_rng(Ranks(rank, rank, world_size), seed=3, step=step, device=cpu):
            return torch.randn(4)

    torch.manual_seed(0)
    before = torch.get_rng_state()
    rank0, rank1 = draw(0, step=5), draw(1, step=5)
    assert torch.equal(torch.get_rng_state(), before)  # the global stream is untouched
    assert not torch.equal(rank0, rank1)
    assert torch.equal(draw(0, step=5), rank0)  # a resumed run draws the same probes
    assert not torch.equal(draw(0, step=6), rank0)
    torch.manual_seed(0)
    single = draw(0, step=5, world_size=1)
    torch.manual_seed(0)
    assert torch.equal(single, torch.randn(4))  # one process: the global stream, as ever
