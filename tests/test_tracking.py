"""The tracking facade writes what it promises to MLflow and to metrics.json."""

from __future__ import annotations

import hashlib
import json
import re
import tomllib

import pytest
from mlflow.tracking import MlflowClient

from common.run.summary import RunSummary
from common.run.tracking import (
    PIPELINE_ENV,
    Tracker,
    TrackingError,
    end_pipeline,
    init_store,
    sqlite_uri,
)
from papers.nice.model import build_model
from tests.conftest import REPO_ROOT
from tests.test_training import make_cfg, train_and_evaluate


def test_run_has_tags_params_metrics_and_artifacts(data_root, tmp_path):
    uri = sqlite_uri(tmp_path / "store" / "mlflow.db")
    init_store(uri, ["nice"])
    cfg = make_cfg(data_root, max_steps=20)
    out = train_and_evaluate(cfg, build_model, tmp_path / "run", tracker=Tracker(uri, "nice"),
                             progress=False)  # fmt: skip

    client = MlflowClient(tracking_uri=uri)
    note = client.get_experiment_by_name("nice").tags["mlflow.note.content"]
    assert "NICE" in note and "arxiv.org" in note  # the experiment says which paper it is
    # model training, so that MLflow 3's UI opens the experiment on its runs table
    assert client.get_experiment_by_name("nice").tags["mlflow.experimentKind"] == (
        "custom_model_development"
    )
    run = client.get_run(out.run_id)
    tags = run.data.tags
    for key in ("paper", "experiment", "scale", "seed", "git_commit", "git_dirty", "data_md5"):
        assert key in tags, key
    assert (tags["paper"], tags["experiment"], tags["scale"]) == ("nice", "digits_test", "smoke")
    # MLflow's Source and Version columns, and a name that says what ran, where and when
    assert tags["mlflow.source.name"] == "papers/nice/train.py"
    assert tags["mlflow.source.git.commit"] == tags["git_commit"]
    assert re.fullmatch(r"nice/digits_test/seed0 · smoke · \d{4}-\d\d-\d\d \d\d:\d\d:\d\d",
                        run.info.run_name)  # fmt: skip
    # the UI's Dataset column: the training data by the MD5 DVC records, and its splits
    (data_input,) = run.inputs.dataset_inputs
    assert (data_input.dataset.name, data_input.dataset.digest) == ("digits", tags["data_md5"])
    assert json.loads(data_input.dataset.source)["uri"].endswith("digits.npz")
    assert json.loads(data_input.dataset.profile)["train"] == 1437
    assert [(t.key, t.value) for t in data_input.tags] == [("mlflow.data.context", "training")]
    lock = hashlib.sha256((REPO_ROOT / "requirements.lock").read_bytes()).hexdigest()
    assert tags["requirements_lock_sha256"] == lock  # the environment the run had
    assert run.data.params["train.batch_size"] == "32"
    assert run.data.params["model.name"] == "nice"
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train/nll")
    assert [m.step for m in history] == [5, 10, 15, 20]
    for key in ("val/nll", "val/bpd", "train/samples_per_s", "test/nll", "test/bpd"):
        assert key in run.data.metrics, key

    def listing(path=None):
        return {a.path for a in client.list_artifacts(run.info.run_id, path)}

    assert {"config.yaml", "metrics.json", "figures", "checkpoints"} <= listing()
    assert {"figures/curves.png", "figures/samples.png"} <= listing("figures")
    assert "checkpoints/best.pt" in listing("checkpoints")
    # The artifact store lives beside the database, not in the working directory.
    assert (tmp_path / "store" / "mlartifacts").is_dir()

    payload = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert payload["run_id"] == run.info.run_id
    assert payload["metrics"]["test/nll"] == run.data.metrics["test/nll"]
    summary = RunSummary.read(tmp_path / "run" / "metrics.json")
    assert summary == out and summary.budget.batch_size == 32 and summary.threads == 1
    assert summary.num_params == int(tags["num_params"]) and summary.data_md5 == tags["data_md5"]
    samples = summary.figure("samples", temperature=1.0)
    assert samples is not None and f"figures/{samples.path.split('/')[-1]}" in listing("figures")


def test_buffered_metrics_reach_the_store_at_each_checkpoint(data_root, tmp_path):
    """Metrics are written in batches; a run stopped after a checkpoint has every metric up to
    it in the store (what a resumed run continues from), long before the next timed flush."""
    uri = sqlite_uri(tmp_path / "store" / "mlflow.db")
    init_store(uri, ["nice"])
    cfg = make_cfg(data_root, max_steps=40, checkpoint_every=10)
    tracker = Tracker(uri, "nice", flush_seconds=3600)
    stopped = train_and_evaluate(cfg, build_model, tmp_path / "run", tracker=tracker,
                                 stop_after=20, progress=False)  # fmt: skip
    history = MlflowClient(tracking_uri=uri).get_metric_history(tracker.run_id, "train/nll")
    assert stopped.step == 20 and [m.step for m in history] == [5, 10, 15, 20]


def test_dirty_means_code_not_the_pipeline_outputs(tmp_path):
    import subprocess

    from common.run.tracking import git_state

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
                       cwd=tmp_path, check=True, capture_output=True)  # fmt: skip

    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "nice.md").write_text("old")
    (tmp_path / "model.py").write_text("x = 1")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "init")
    assert git_state(tmp_path)[1] is False
    (tmp_path / "reports" / "nice.md").write_text("regenerated")
    assert git_state(tmp_path)[1] is False  # a regenerated report is not a code change
    (tmp_path / "model.py").write_text("x = 2")
    assert git_state(tmp_path)[1] is True


def test_lock_file_pins_what_pyproject_pins():
    """requirements.lock (make setup's input) holds every direct dependency at pyproject's
    version, and nothing unpinned: a stale lock after a pin change fails here."""
    lines = (REPO_ROOT / "requirements.lock").read_text().splitlines()
    pins = dict(line.split("==") for line in lines if line and not line.startswith("#"))
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) for name in pins)

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    locked = {norm(k): v for k, v in pins.items()}
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    for dep in project["dependencies"]:
        name, version = dep.split("==")
        assert locked.get(norm(name)) == version, dep


def test_runs_of_one_pipeline_invocation_nest_under_one_parent_per_paper(tmp_path, monkeypatch):
    """Two jobs of one invocation share their paper's parent run; another invocation gets its
    own; end_pipeline ends only its own parents; the env variable is how jobs learn it."""
    uri = sqlite_uri(tmp_path / "mlflow.db")
    init_store(uri, ["nice", "glow"])
    first = {"id": "inv-1", "name": "snakemake · smoke · t1", "scale": "smoke"}
    monkeypatch.setenv(PIPELINE_ENV, json.dumps(first))

    def job(paper, name, pipeline=None):
        tracker = Tracker(uri, paper, pipeline=pipeline)
        return tracker.start(name, {"paper": paper, "experiment": name}, {})

    client = MlflowClient(tracking_uri=uri)
    parent_of = lambda run_id: client.get_run(run_id).data.tags["mlflow.parentRunId"]  # noqa: E731
    a, b, c = job("nice", "a"), job("nice", "b"), job("glow", "c")
    assert parent_of(a) == parent_of(b) != parent_of(c)
    parent = client.get_run(parent_of(a))
    assert parent.info.run_name == "nice · snakemake · smoke · t1"
    assert parent.data.tags["run_kind"] == "pipeline"
    second = {"id": "inv-2", "name": "snakemake · smoke · t2"}
    d = job("nice", "d", pipeline=second)
    assert parent_of(d) != parent_of(a)

    assert end_pipeline(uri, "inv-1", "FAILED") == 2
    assert client.get_run(parent_of(a)).info.status == "FAILED"
    assert client.get_run(parent_of(c)).info.status == "FAILED"
    assert client.get_run(parent_of(d)).info.status == "RUNNING"  # another invocation's

    monkeypatch.delenv(PIPELINE_ENV)
    alone = job("nice", "alone")  # outside a pipeline: no parent
    assert "mlflow.parentRunId" not in client.get_run(alone).data.tags
    monkeypatch.setenv(PIPELINE_ENV, "{not json")
    with pytest.raises(TrackingError, match=PIPELINE_ENV):
        Tracker(uri, "nice")
    assert end_pipeline(sqlite_uri(tmp_path / "none.db"), "inv-1") == 0  # no store: no-op
    assert not (tmp_path / "none.db").exists()
