"""The pipeline on a real Slurm cluster: `make test-cluster` (root, Debian's packages; not
part of `make test`).

tools/slurm_localhost.sh starts a one-node cluster on this machine (slurmctld, slurmd,
munge); `snakemake reproduce_nice --config profile=smoke` then runs in a clean copy of the
working tree with the Slurm workflow profile, every training job submitted with sbatch by
snakemake-executor-plugin-slurm. Checked afterwards: Slurm ran and completed each training job
with the resources its config asked for (digits_nice: two data-parallel processes under
torchrun inside the Slurm job), the MLflow runs are FINISHED and nested under the
invocation's parent, and the report names them. The cluster is torn down at the end.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.test_pipeline import make_clone, snakemake

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = ["digits_gaussian", "digits_nice", "moons_gaussian", "moons_nice"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm")
    script = str(REPO / "tools/slurm_localhost.sh")
    subprocess.run([script, "up", str(state)], check=True, timeout=600)
    try:
        yield state
    finally:
        subprocess.run([script, "down", str(state)], check=False, timeout=120)


def scontrol_job(job_id: str) -> dict[str, str]:
    """``scontrol show job`` as key → value (Slurm keeps finished jobs for MinJobAge, 300 s)."""
    text = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip
    return dict(re.findall(r"(\w[\w:/]*)=(\S*)", text))


def test_reproduce_nice_smoke_through_sbatch(cluster, tmp_path):
    clone = make_clone(tmp_path / "repo")
    result = snakemake(
        clone, "reproduce_nice", "--workflow-profile", "pipelines/profiles/slurm",
        "--slurm-status-command", "squeue",  # no accounting database on this cluster
        "--slurm-init-seconds-before-status-checks", "5",
        "--seconds-between-status-checks", "5",
        "--config", "profile=smoke",
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-5000:]

    # every training job went through sbatch, and Slurm completed it as configured
    submitted = re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", out)
    assert len(submitted) == 4, out[-5000:]
    jobs = [scontrol_job(slurm_id) for _, slurm_id in submitted]
    assert all(job["JobState"] == "COMPLETED" for job in jobs), jobs
    # the plugin comments each job rule_<rule>_wildcards_<profile>_<paper>_<experiment>_<seed>
    by_experiment = {e: job for job in jobs for e in EXPERIMENTS if f"_{e}_" in job["Comment"]}
    assert sorted(by_experiment) == EXPERIMENTS, [job["Comment"] for job in jobs]
    assert by_experiment["digits_nice"]["NumCPUs"] == "2"  # 2 processes × 1 thread
    assert all(job["TimeLimit"] == "00:15:00" for job in jobs)  # job_resources.smoke.runtime
    assert all(job["MinMemoryNode"] == "2000M" for job in jobs)  # job_resources.smoke.mem_mb

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{clone / 'runs/mlflow.db'}")
    found = client.search_runs([client.get_experiment_by_name("nice").experiment_id])
    (parent,) = [r for r in found if r.data.tags.get("run_kind") == "pipeline"]
    runs = [r for r in found if "experiment" in r.data.tags]
    assert parent.info.status == "FINISHED"
    assert sorted(r.data.tags["experiment"] for r in runs) == EXPERIMENTS
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in runs)
    summary = json.loads((clone / "runs/smoke/nice/digits_nice/seed0/metrics.json").read_text())
    assert summary["processes"] == 2  # torchrun inside the Slurm job

    report = (clone / "reports/smoke/nice.md").read_text()
    assert all(r.info.run_id[:8] in report for r in runs)
