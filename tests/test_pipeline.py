"""End to end: `snakemake reproduce_nice` at the smoke profile in a fresh copy of the repo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from common.data.npz import file_md5
from common.data_registry import DATASETS, dataset_path

REPO = Path(__file__).resolve().parents[1]


def snakemake(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """Snakemake as ``make reproduce`` runs it: with the clone's own ``.venv`` interpreter
    (a link to this one's environment), so the jobs' interpreter (``params.py``) lies under
    the clone's path."""
    python = cwd / ".venv/bin/python"
    python = python if python.exists() else Path(sys.executable)
    env = dict(os.environ, PATH=f"{python.parent}:{os.environ['PATH']}")
    return subprocess.run(
        [str(python), "-m", "snakemake", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def git(cwd: Path, *args: str) -> str:
    cmd = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", *args]
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """The working tree as a clean clone would have it, in a folder whose path has a space
    and a ``$`` (every shell interpolation must be quoted: an unquoted one splits the path or
    expands ``$PATH``)."""
    return make_clone(tmp_path_factory.mktemp("clone") / "my repo $PATH")


def make_clone(dest: Path) -> Path:
    """Copy the working tree's tracked and not-ignored files to ``dest``, commit them in a
    fresh repository, give it its own DVC remote and this virtual environment as ``.venv``."""
    files = git(REPO, "ls-files", "--cached", "--others", "--exclude-standard").splitlines()
    for rel in files:
        src = REPO / rel
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the working tree
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target, follow_symlinks=False)
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    git(dest, "commit", "-qm", "snapshot")
    # The committed default remote is ~/.cache/…, shared by the machine's clones: the tests'
    # clones push to and pull from a remote of their own (.dvc/config.local, git-ignored).
    remote = dest.parent / "dvc-remote"
    (dest / ".dvc" / "config.local").write_text(f"['remote \"storage\"']\n    url = {remote}\n")
    if sys.prefix != sys.base_prefix:  # in a virtual environment: the clone gets it as .venv
        (dest / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    return dest


@pytest.mark.slow
def test_all_papers_smoke_end_to_end(clone):
    result = snakemake(clone, "all", "reproduce_glow_ablation", "--config", "profile=smoke",
                       "--cores", "2")  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]

    report = (clone / "reports/smoke/nice.md").read_text()
    assert "**`smoke`** profile" in report and "`digits_nice`" in report
    assert (clone / "reports/smoke/figures/nice/digits_nice_samples.png").exists()
    for committed in ("nice.md", "glow.md", "realnvp.md", "README.md"):
        assert not (clone / "reports" / committed).exists() or (
            (clone / "reports" / committed).read_bytes()
            == (REPO / "reports" / committed).read_bytes()
        ), "a smoke run must not overwrite the committed cpu reports"

    glow = (clone / "reports/smoke/glow.md").read_text()
    assert "## Ablation: Figure 3" in glow and "[`glow_ablation.md`](glow_ablation.md)" in glow
    ablation = (clone / "reports/smoke/glow_ablation.md").read_text()
    assert "no verdict" in ablation  # 2 of 6 variants at smoke
    assert "| 3 | `digits_reverse_additive` |" in ablation  # the paper ranks it third
    assert (clone / "reports/smoke/figures/glow_ablation/ablation_curves.png").exists()
    for t in ("_T0.5", "_T0.7", ""):  # sample grids at three temperatures
        assert (clone / f"reports/smoke/figures/glow/digits_conv_affine_samples{t}.png").exists()
    assert "| T = 0.5 | T = 0.7 | T = 1 |" in glow and "## Compute used" in glow

    index = (clone / "reports/smoke/README.md").read_text()
    assert "[glow.md](glow.md)" in index and "[realnvp.md](realnvp.md)" in index
    for row in (
        "| nice | `digits_nice`",
        "| realnvp | `digits_realnvp`",
        "| glow | `digits_conv_affine`",
        "| diagonal Gaussian | `digits_gaussian`",
    ):
        assert row in index, row
    assert "Fixed training budget: 30 steps for every flow" in index  # smoke: no patience

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{clone / 'runs/mlflow.db'}")

    def pipeline_and_training_runs(paper):
        found = client.search_runs([client.get_experiment_by_name(paper).experiment_id])
        parents = [r for r in found if r.data.tags.get("run_kind") == "pipeline"]
        return parents, [r for r in found if "experiment" in r.data.tags]

    # one invocation: one parent run per paper, FINISHED, with every training run nested
    (parent,), runs = pipeline_and_training_runs("nice")
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name.startswith("nice · snakemake · smoke · ")
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in runs)
    assert sorted(r.data.tags["experiment"] for r in runs) == [
        "digits_gaussian", "digits_nice", "moons_gaussian", "moons_nice",
    ]  # fmt: skip
    assert all(r.info.status == "FINISHED" and "test/bpd" in r.data.metrics for r in runs)
    for run in runs:  # every run id in the report's provenance is a real MLflow run
        assert run.info.run_id[:8] in report
        # the UI's Dataset column: the data file, by the MD5 that DVC records for it
        (data_input,) = client.get_run(run.info.run_id).inputs.dataset_inputs
        name = run.data.tags["dataset"]
        assert data_input.dataset.name == name and data_input.dataset.digest == file_md5(
            clone / dataset_path(name)
        )
    assert len({r.info.run_name for r in runs}) == 4  # unique names
    # digits_nice asks for two data-parallel processes: the job ran torchrun, one MLflow run
    processes = {r.data.tags["experiment"]: r.data.tags["processes"] for r in runs}
    assert processes == {"digits_nice": "2", "digits_gaussian": "1", "moons_gaussian": "1",
                         "moons_nice": "1"}  # fmt: skip
    summary = clone / "runs/smoke/nice/digits_nice/seed0/metrics.json"
    assert json.loads(summary.read_text())["processes"] == 2
    glow_parents, glow_runs = pipeline_and_training_runs("glow")
    # the baseline and the index experiment (seed 0) in glow.md; the ablation's two variants
    # at seeds 0 and 1 in glow_ablation.md, sharing the index experiment's seed 0
    assert len(glow_runs) == 5 and all(r.info.run_id[:8] in glow + ablation for r in glow_runs)
    assert len(glow_parents) == 1
    seeds = sorted(int(r.data.tags["seed"]) for r in glow_runs
                   if r.data.tags["experiment"] == "digits_reverse_additive")  # fmt: skip
    assert seeds == [0, 1]

    # The data rule rebuilt data/ offline; the rebuild reproduces the committed DVC hash.
    if (REPO / "data.dvc").exists():
        committed = yaml.safe_load((REPO / "data.dvc").read_text())["outs"][0]["md5"]
        assert yaml.safe_load((clone / "data.dvc").read_text())["outs"][0]["md5"] == committed
    assert any((clone.parent / "dvc-remote").rglob("*")), "dvc push left the remote empty"

    # A fresh clone of that repository, offline, with the remote populated: `dvc pull` serves
    # data/ (and would the raw downloads the remote holds; here none: --allow-missing, as the
    # README says) and Snakemake plans no rebuild of it.
    fresh = clone.parent / "fresh clone"
    git(clone.parent, "clone", "-q", str(clone), str(fresh))
    shutil.copy(clone / ".dvc" / "config.local", fresh / ".dvc" / "config.local")
    (fresh / ".venv").symlink_to(clone / ".venv")
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    pull = subprocess.run([str(fresh / ".venv/bin/python"), "-m", "dvc", "pull", "--allow-missing"],
                          cwd=fresh, capture_output=True, text=True, env=env)  # fmt: skip
    assert pull.returncode == 0, pull.stdout + pull.stderr
    assert (fresh / "data" / "digits.npz").exists()
    plan = snakemake(fresh, "-n", "reproduce_nice", "--config", "profile=smoke")
    assert plan.returncode == 0 and "rule train:" in plan.stdout, plan.stderr[-3000:]
    assert "rule data:" not in plan.stdout

    # Snakemake's benchmark of every training job feeds the compute table
    assert (clone / "runs/smoke/nice/digits_nice/seed0/benchmark.tsv").exists()
    row = next(line for line in report.splitlines() if line.startswith("| `digits_nice` |"))
    assert row.count(" s |") == 2 and " MB |" in row  # train time, job time, peak memory

    # `snakemake --report` holds the Markdown reports and their figures, by paper
    # (a relative path: Snakemake expands environment variables in it, and the clone's path
    # holds a literal `$PATH`)
    made = snakemake(clone, "all", "reproduce_glow_ablation", "--config", "profile=smoke",
                     "--report", "report.html")  # fmt: skip
    assert made.returncode == 0, made.stderr[-3000:]
    text = (clone / "report.html").read_text()
    for name in ("nice.md", "glow_ablation.md", "digits_nice_samples.png", "ablation_curves.png",
                 "index_bpd.png"):  # fmt: skip
        assert name in text, name

    # Nothing is out of date afterwards (the MLflow store is an ancient() input).
    again = snakemake(clone, "-n", "all", "--config", "profile=smoke")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


GPU_PAPERS = ["nice", "realnvp", "glow", "maf_iaf", "iresnet", "ffjord"]


@pytest.fixture(scope="module")
def paper_plan(clone) -> str:
    """One dry run of every GPU paper's target at the paper profile (one Snakemake start
    instead of one per checked experiment)."""
    targets = [f"reproduce_{paper}" for paper in GPU_PAPERS]
    result = snakemake(clone, "-n", *targets, "--config", "profile=paper")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    return out


@pytest.mark.parametrize(
    ("paper", "experiment"),
    [("nice", "mnist_nice"), ("realnvp", "cifar10_realnvp"), ("glow", "cifar10_glow"),
     ("maf_iaf", "hepmass_maf_mog5"), ("maf_iaf", "mnist_vae_iaf"),
     ("iresnet", "cifar10_iresnet"), ("ffjord", "cifar10_ffjord"), ("ffjord", "bsds300_ffjord")],
)  # fmt: skip
def test_paper_profile_dry_run_lists_gpu_jobs(clone, paper_plan, paper, experiment):
    out = paper_plan
    assert f"runs/paper/{paper}/{experiment}/seed0/metrics.json" in out
    # the job's own block: from its "rule train:" line to its shell command
    at = out.index(f"wildcards: profile=paper, paper={paper}, experiment={experiment}")
    job = out[out.rindex("rule train:", 0, at) :].split("Shell command")[0]
    assert "gpu=1" in job
    # the experiment's dataset is the job's input, with a download job of its own (the MAF
    # tabular bundle's sets included)
    config = clone / "papers" / paper / "configs" / "paper" / f"{experiment}.yaml"
    name = yaml.safe_load(config.read_text())["data"]["name"]
    dataset = DATASETS[name]
    assert str(dataset_path(name)) in job.split("output:")[0]
    downloads = {line.split("=")[1] for line in out.splitlines() if "wildcards: online=" in line}
    assert dataset.file.removesuffix(".npz") in downloads


def test_a_config_asking_for_several_processes_runs_under_torchrun(clone):
    """``resources: {processes: 4}`` at the paper profile: torchrun with 4 processes, 4 GPUs,
    the threads of 4 processes, and the config's memory and time limit as job resources
    (which the Slurm executor passes to sbatch)."""
    config = clone / "papers/glow/configs/paper/cifar10_glow.yaml"
    original = config.read_text()
    try:
        config.write_text(original + "resources: {processes: 4, mem_mb: 64000, runtime: 600}\n")
        result = snakemake(
            clone, "-n", "-p", "--cores", "64", "reproduce_glow", "--config", "profile=paper"
        )
    finally:
        config.write_text(original)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    job = out[out.index("experiment=cifar10_glow") :].split("rule ")[0]
    assert "gpu=4" in job and "mem_mb=64000" in job and "runtime=600" in job
    threads = yaml.safe_load(original).get("threads", 1)
    assert f"threads: {4 * threads}" in job  # the config's threads for each process
    assert "-m torch.distributed.run --standalone --nproc-per-node=4 -m papers.glow.train" in job


def test_paper_profile_leaves_git_status_as_it_was(clone):
    """A paper-scale dry run, and the download rule's commands, touch no tracked file: the raw
    files' .dvc files are hand-written (never rewritten by `dvc add`) and the converted files
    are outside data.dvc (.dvcignore)."""
    before = git(clone, "status", "--porcelain")
    result = snakemake(clone, "-n", "-p", "reproduce_maf_iaf", "--config", "profile=paper")
    assert result.returncode == 0, result.stderr[-3000:]
    assert git(clone, "status", "--porcelain") == before
    job = result.stdout[result.stdout.index("wildcards: online=maf/power") :]
    job = job.split("rule ")[0]
    assert "dvc add" not in job and "dvc commit" not in job
    assert (
        "stash --datasets power" in job and "dvc push --quiet downloads/maf/data.tar.gz.dvc" in job
    )


def test_tori_spheres_paper_profile_is_the_cpu_protocol_without_a_gpu(clone):
    """configs/paper links to configs/cpu: the same 20k-iteration jobs, no GPU, no data."""
    result = snakemake(clone, "-n", "reproduce_tori_spheres", "--config", "profile=paper")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "runs/paper/tori_spheres/s2_emsre_24x1/seed0/metrics.json" in out
    job = out[out.index("experiment=s2_mobius_spline") :].split("Shell command")[0]
    assert "gpu=0" in job and "rule data:" not in out
    assert "configs/paper/s2_mobius_spline.yaml" in out


def test_bad_pipeline_config_is_rejected(clone):
    result = snakemake(clone, "-n", "reproduce_nice", "--config", "profile=huge")
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Failed validating 'enum'" in out and "'huge'" in out


def test_fresh_clone_plans_training_although_the_report_is_committed(clone):
    # reports/nice.md is committed; a fresh clone must still train rather than say "Nothing
    # to be done" (the reproduce target asks for the runs, not only the report).
    assert (clone / "reports/nice.md").exists()
    result = snakemake(clone, "-n", "reproduce_nice")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "runs/cpu/nice/digits_nice/seed2/metrics.json" in out
    assert "rule report:" in out and "Nothing to be done" not in out


def _priorities(out: str) -> dict[tuple[str, str], int]:
    """(experiment, seed) → scheduling priority of each training job in a dry run's listing
    (Snakemake prints the line only for a non-zero priority)."""
    found = {}
    for block in out.split("rule train:")[1:]:
        wildcards = block.split("wildcards: ")[1].split("\n")[0]
        fields = dict(kv.split("=") for kv in wildcards.split(", "))
        line = [row for row in block.split("\n") if row.strip().startswith("priority:")]
        found[fields["experiment"], fields["seed"]] = int(line[0].split()[-1]) if line else 0
    return found


def test_first_seeds_and_long_jobs_start_first(clone):
    """Every first seed outranks every later seed (its compile warms the cache); within each
    group the long jobs of pipelines/config.yaml outrank the rest."""
    result = snakemake(clone, "-n", "reproduce_tori_spheres")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    prio = _priorities(out)
    assert len(prio) == 14 * 3
    assert prio["s2_emsre_24x1", "0"] > prio["t2_unimodal_ncp", "0"] > prio["s2_emsre_24x1", "1"]
    assert prio["s2_emsre_24x1", "2"] > prio["t2_unimodal_ncp", "2"]
    assert min(p for (_, s), p in prio.items() if s == "0") > max(
        p for (_, s), p in prio.items() if s != "0"
    )


def test_misspelt_long_job_is_named(clone, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("long_jobs: {cpu: {tori_spheres: [s2_emsre_42x1]}}\n")
    result = snakemake(clone, "-n", "reproduce_tori_spheres", "--configfile", str(bad))
    out = result.stdout + result.stderr
    assert result.returncode != 0 and "s2_emsre_42x1" in out and "no such experiments" in out


def test_ablation_has_its_own_target_with_more_seeds(clone):
    """reproduce_glow trains the baseline and the index experiment (3 seeds); the ablation
    target trains the six variants at the ablation's 5 seeds."""
    main = snakemake(clone, "-n", "reproduce_glow")
    out = main.stdout + main.stderr
    assert main.returncode == 0, out[-3000:]
    assert "experiment=digits_shuffle_affine" not in out
    assert "experiment=digits_conv_affine, seed=2" in out
    ablation = snakemake(clone, "-n", "reproduce_glow_ablation")
    out = ablation.stdout + ablation.stderr
    assert ablation.returncode == 0, out[-3000:]
    for variant in ("conv", "shuffle", "reverse"):
        for coupling in ("additive", "affine"):
            assert f"experiment=digits_{variant}_{coupling}, seed=4" in out
    assert "reports/glow_ablation.md" in out and "rule report_ablation:" in out


def test_paper_scale_ablation_is_the_authors_cifar10_command(clone):
    result = snakemake(clone, "-n", "reproduce_glow_ablation", "--config", "profile=paper")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    job = out[out.index("experiment=cifar10_shuffle_additive, seed=2") :].split("Shell command")[0]
    assert "gpu=1" in job
    assert out.count("rule train:") == 18  # 6 variants × the authors' seeds 0, 1, 2


def test_workflow_lints_clean(clone):
    """`snakemake --lint`: every rule documented, logged, given its conda environment, and
    no shell command reading a global (its values go through params, so Snakemake tracks
    them)."""
    result = snakemake(clone, "--lint")
    out = result.stdout + result.stderr
    assert result.returncode == 0 and "Congratulations" in out, out[-3000:]
