"""Four training jobs started at once, logging to one MLflow store, all finish with complete
metric histories: against an SQLite store (a fresh one, which the jobs create together; in
`make test`), and against an MLflow tracking server on PostgreSQL (tools/mlflow_server.py,
what `make mlflow-server` runs; `make test-server`)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from common.run.tracking import sqlite_uri
from tests.conftest import REPO_ROOT

CONFIG = REPO_ROOT / "papers/nice/configs/smoke/moons_nice.yaml"
SERVER_SCRIPT = REPO_ROOT / "tools/mlflow_server.py"
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


def _stop_leftovers(port: int, pg_dir: Path) -> None:
    """After a server script that would not stop was killed: its `mlflow server` (a session
    of its own) and its PostgreSQL cluster, so that a failing test leaves nothing running."""
    subprocess.run(["pkill", "-f", f"mlflow server .*--port {port}"], check=False)
    if (pg_dir / "data").exists():  # the script's own stop (its pg_ctl, as the cluster's owner)
        spec = importlib.util.spec_from_file_location("mlflow_server", SERVER_SCRIPT)
        tool = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tool)
        tool.stop_postgres(pg_dir / "data")


@contextmanager
def running_server(tmp_path: Path, stop_with: int = signal.SIGTERM,
                   start_ignoring_sigint: bool = False):  # fmt: skip
    """tools/mlflow_server.py on free ports, its PostgreSQL cluster in a fresh folder; stopped
    (server, then PostgreSQL) with ``stop_with`` afterwards, and checked to have stopped both.
    Without PostgreSQL the script installs it (as root) or exits naming the package, and the
    test fails with that message. ``start_ignoring_sigint``: started the way a
    non-interactive shell starts a background job (``make mlflow-server &`` in a script)."""
    # outside pytest's private temporary folder: as root, the cluster belongs to `postgres`
    pg_dir = Path(tempfile.mkdtemp(prefix="mlflow-pg-"))
    port, pg_port = _free_port(), _free_port()
    log_path = tmp_path / "server.log"

    def ignore_sigint():
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    # the output goes to a file, not a pipe: a child left running would hold a pipe open
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [sys.executable, str(SERVER_SCRIPT), "--dir", str(pg_dir), "--artifacts",
             str(tmp_path / "artifacts"), "--port", str(port), "--pg-port", str(pg_port)],
            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=ignore_sigint if start_ignoring_sigint else None,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the MLflow server did not start in 3 minutes"
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        yield url, tmp_path / "artifacts"
    finally:
        server.send_signal(stop_with)
        try:
            server.wait(timeout=60)
            stopped = True
        except subprocess.TimeoutExpired:  # clean up, then fail below
            server.kill()
            server.wait()
            _stop_leftovers(port, pg_dir)
            stopped = False
        # PostgreSQL removes its pid file when it has shut down
        postgres_left = (pg_dir / "data" / "postmaster.pid").exists()
        if postgres_left:
            _stop_leftovers(port, pg_dir)
        shutil.rmtree(pg_dir, ignore_errors=True)
    out = log_path.read_text()
    assert stopped, f"the server script did not stop within 60 s of {stop_with!r}\n{out[-3000:]}"
    assert server.returncode == 0, out[-3000:]
    assert not postgres_left, "the server script exited and left PostgreSQL running"
    assert "stopped the MLflow server and PostgreSQL" in out, out[-3000:]


@pytest.fixture
def mlflow_server(tmp_path):
    with running_server(tmp_path) as server:
        yield server


@pytest.mark.server
def test_ctrl_c_stops_a_server_started_in_the_background(tmp_path):
    """Started as `make mlflow-server &` from a script starts it (SIGINT ignored), Ctrl-C or
    `kill -INT` still stops the server and its PostgreSQL cluster (the checks on leaving)."""
    with running_server(tmp_path, signal.SIGINT, start_ignoring_sigint=True):
        pass


@pytest.mark.server
def test_four_parallel_jobs_on_a_postgres_backed_server(mlflow_server, data_root, tmp_path):
    url, artifacts = mlflow_server
    env_uri = os.environ.get("MLFLOW_TRACKING_URI")
    assert env_uri != url  # the jobs get the server from --tracking-uri, not by accident
    train_four_at_once(url, data_root, tmp_path / "runs")
    assert_complete(url)
    # the server stores the artifacts it is sent in its own artifact root
    assert len(list(artifacts.rglob("metrics.json"))) == len(SEEDS)
