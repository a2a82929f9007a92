"""Four training jobs started at once, logging to one MLflow store, all finish with complete
metric histories: against an SQLite store (a fresh one, which the jobs create together; in
`make test`), and against an MLflow tracking server on PostgreSQL (tools/mlflow_server.py,
what `make mlflow-server` runs; `make test-server`)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from common.run.tracking import sqlite_uri
from tests.conftest import REPO_ROOT

CONFIG = REPO_ROOT / "papers/nice/configs/smoke/moons_nice.yaml"
SHORT = ["--set", "train.max_steps=10", "--set", "train.eval_every=5",
         "--set", "train.log_every=2"]  # fmt: skip
SEEDS = range(4)


def train_four_at_once(uri: str, data_root: Path, workdirs: Path) -> None:
    jobs = [
        subprocess.Popen(
            [sys.executable, "-m", "papers.nice.train", "--config", str(CONFIG),
             "--set", f"data.root={data_root}", "--set", f"seed={seed}",
             "--workdir", str(workdirs / f"seed{seed}"), "--tracking-uri", uri, "--no-progress",
             *SHORT],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for seed in SEEDS
    ]  # fmt: skip
    outputs = [job.communicate(timeout=600)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [0] * len(jobs), "\n".join(outputs)[-4000:]


def assert_complete(uri: str) -> None:
    """Four FINISHED runs, each with every logged step of its training and validation curves,
    its test metrics and its artifacts."""
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("nice").experiment_id])
    assert sorted(int(r.data.tags["seed"]) for r in runs) == list(SEEDS)
    for run in runs:
        assert run.info.status == "FINISHED"
        history = {key: [m.step for m in client.get_metric_history(run.info.run_id, key)]
                   for key in ("train/nll", "val/nll", "test/nll")}  # fmt: skip
        assert history == {"train/nll": [2, 4, 6, 8, 10], "val/nll": [5, 10],
                           "test/nll": [10]}, run.info.run_name  # fmt: skip
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"metrics.json", "config.yaml", "checkpoints", "figures"} <= artifacts


def test_four_parallel_jobs_on_the_sqlite_store(data_root, tmp_path):
    """Against a store that does not exist yet, the harder case: the pipeline creates its
    store once before any job (its mlflow_store job), but four jobs opening a fresh store
    together once failed most of their runs in MLflow's concurrent table creation and
    migrations and could leave the file unopenable; the trainer's creation lock
    (common.run.tracking._client) prevents it."""
    uri = sqlite_uri(tmp_path / "store" / "mlflow.db")
    train_four_at_once(uri, data_root, tmp_path / "runs")
    assert_complete(uri)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """tools/mlflow_server.py on free ports, its PostgreSQL cluster in a fresh folder; stopped
    (server, then PostgreSQL) with SIGTERM afterwards. Without PostgreSQL the script installs
    it (as root) or exits naming the package, and the test fails with that message."""
    # outside pytest's private temporary folder: as root, the cluster belongs to `postgres`
    pg_dir = Path(tempfile.mkdtemp(prefix="mlflow-pg-"))
    port, pg_port = _free_port(), _free_port()
    server = subprocess.Popen(
        [sys.executable, "tools/mlflow_server.py", "--dir", str(pg_dir), "--artifacts",
         str(tmp_path / "artifacts"), "--port", str(port), "--pg-port", str(pg_port)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the MLflow server did not start in 3 minutes"
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        yield url, tmp_path / "artifacts"
    finally:
        server.send_signal(signal.SIGTERM)
        out = server.communicate(timeout=120)[0]
        shutil.rmtree(pg_dir, ignore_errors=True)
    assert "stopped the MLflow server and PostgreSQL" in out, out[-3000:]


@pytest.mark.server
def test_four_parallel_jobs_on_a_postgres_backed_server(mlflow_server, data_root, tmp_path):
    url, artifacts = mlflow_server
    env_uri = os.environ.get("MLFLOW_TRACKING_URI")
    assert env_uri != url  # the jobs get the server from --tracking-uri, not by accident
    train_four_at_once(url, data_root, tmp_path / "runs")
    assert_complete(url)
    # the server stores the artifacts it is sent in its own artifact root
    assert len(list(artifacts.rglob("metrics.json"))) == len(SEEDS)
