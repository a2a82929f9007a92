"""One small facade over MLflow: every run of every paper is logged through it.

Store: an SQLite database at an absolute path (``runs/mlflow.db`` by default) with artifacts
beside it in ``runs/mlartifacts/``. Opening it creates it (tables and migrations) on first use;
that runs under an OS file lock (``mlflow.db.lock`` beside it), so any number of jobs may
start together against a store that does not exist yet. Writes to an existing store from
parallel jobs are SQLite's business (it serialises them).

A run carries tags (paper, experiment, scale, seed, git commit and dirty flag, data hash),
params (the flattened resolved config), metrics per step and artifacts (config, checkpoint,
figures). ``metrics.json`` beside the run's outputs mirrors the final metrics for file-based
consumers (Snakemake, the report generator).

Pipeline runs: every Snakemake invocation that trains (``snakemake reproduce_glow``) gets one
*parent* run per paper it trains, and its training runs are nested under it (MLflow's
``mlflow.parentRunId`` tag, which the UI folds). The Snakefile puts the invocation in the
environment (:data:`PIPELINE_ENV`, JSON ``{"id", "name", "scale"}``); the first job of a paper
to start creates that paper's parent under a file lock, later jobs find it by its
``pipeline_invocation`` tag; the Snakefile's ``onsuccess``/``onerror`` handlers end the parents
(``python -m common.run.tracking end-pipeline``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

__all__ = [
    "PIPELINE_ENV",
    "NullTracker",
    "Tracker",
    "TrackingError",
    "default_tracking_uri",
    "end_pipeline",
    "git_state",
    "init_store",
    "lock_hash",
    "sqlite_uri",
]

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
EXPERIMENT_KIND = "custom_model_development"  # MLflow 3's tag value for model training
PIPELINE_ENV = "FLOWS_PIPELINE"  # the Snakemake invocation a job belongs to (JSON), if any
REPO_ROOT = Path(__file__).resolve().parents[2]


def sqlite_uri(db_path: str | Path) -> str:
    return f"sqlite:///{Path(db_path).resolve()}"


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else the project store ``<repo>/runs/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or sqlite_uri(REPO_ROOT / "runs" / "mlflow.db")


def _sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of an ``sqlite:///`` URI; None for any other store."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///"))
    return None


def _artifact_root(tracking_uri: str) -> str:
    db = _sqlite_path(tracking_uri)
    return (db.parent / "mlartifacts").as_uri() if db else ""  # a server chooses its own


# Tracked files the pipeline itself regenerates: changing them does not change the code a run
# executes, so they never make a run "dirty" (the reports of one paper are rewritten while
# another paper's jobs are still starting).
GENERATED = ("reports", "data.dvc")


LOCK_FILE = REPO_ROOT / "requirements.lock"


def lock_hash(path: Path = LOCK_FILE) -> str:
    """SHA-256 of the lock file of the full resolved environment (``requirements.lock``, what
    ``make setup`` installs), recorded with every run; "missing" where there is none."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "missing"


def git_state(cwd: Path = REPO_ROOT) -> tuple[str, bool]:
    """(commit hash, dirty flag) of the repository, or ("unknown", True) outside git. Dirty
    means a tracked file other than the pipeline's own outputs (:data:`GENERATED`) differs
    from the commit."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        excluded = [f":(exclude){path}" for path in GENERATED]
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *excluded],
            cwd=cwd, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown", True
    return commit, bool(status.strip())


class TrackingError(RuntimeError):
    """The tracking store cannot be opened or written (a bad URI, an unwritable folder)."""


def _client(tracking_uri: str):
    """An MLflow client of ``tracking_uri``, its store created (or migrated) under a file lock.

    MLflow creates an SQLite store's tables the first time a client opens it; two processes
    doing that at once corrupt it (a test starting four jobs on a fresh path lost most of their
    runs and left the file unopenable). The lock serialises that step only: once a client
    is built, every later write goes through SQLite's own locking."""
    from filelock import FileLock, Timeout
    from mlflow.tracking import MlflowClient

    db = _sqlite_path(tracking_uri)
    if db is None:
        if "://" not in tracking_uri and not tracking_uri.startswith(("file:", "databricks")):
            raise TrackingError(
                f"unsupported tracking URI {tracking_uri!r}: use sqlite:///ABSOLUTE/PATH.db "
                "or http(s)://HOST:PORT of an MLflow server"
            )
        return MlflowClient(tracking_uri=tracking_uri)
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{db}.lock", timeout=600):
            client = MlflowClient(tracking_uri=tracking_uri)
            client.search_experiments(max_results=1)  # creates and migrates the store now
    except Timeout:
        raise TrackingError(f"waited 10 minutes for the lock {db}.lock; is a job stuck?") from None
    except Exception as exc:  # OSError, or SQLAlchemy's OperationalError on a read-only folder
        raise TrackingError(f"cannot open the MLflow store at {db}: {exc}") from None
    return client


def _experiment_id(client, name: str, tracking_uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    root = _artifact_root(tracking_uri)
    try:
        return client.create_experiment(name, artifact_location=f"{root}/{name}" if root else None)
    except Exception:  # created by a concurrent job in the meantime
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def experiment_description(paper: str) -> str | None:
    """The paper's title, citation and link from ``papers/<paper>/paper.yaml`` (Markdown, for
    the MLflow experiment's description), or None without one."""
    if not (REPO_ROOT / "papers" / paper / "paper.yaml").exists():
        return None
    from common.run.reports.meta import load_paper_meta  # validated, as the reports read it

    meta = load_paper_meta(paper)
    return (f"**{meta['title']}**\n\n{meta['citation']}\n\n<{meta['url']}> · reproduced in "
            f"`papers/{paper}`, reported in `reports/{paper}.md`")  # fmt: skip


def init_store(tracking_uri: str, experiments: list[str]) -> None:
    """Create the store (if new) and one MLflow experiment per paper, described by its
    paper.yaml (the description MLflow's UI shows on the experiment's page). Idempotent."""
    client = _client(tracking_uri)
    for name in experiments:
        experiment_id = _experiment_id(client, name, tracking_uri)
        # model training, not GenAI: MLflow 3's UI then opens on the runs table
        client.set_experiment_tag(experiment_id, "mlflow.experimentKind", EXPERIMENT_KIND)
        if description := experiment_description(name):
            client.set_experiment_tag(experiment_id, "mlflow.note.content", description)


class NullTracker:
    """Tracks nothing (``--no-tracking``, unit tests)."""

    run_id: str | None = None
    tracking_uri: str | None = None

    def start(self, *args: Any, **kwargs: Any) -> None: ...
    def log_dataset(self, *args: Any, **kwargs: Any) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def flush(self) -> None: ...
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def log_all_after(self, step: int) -> None: ...
    def end(self, status: str = "FINISHED") -> None: ...


class Tracker(NullTracker):
    """MLflow-backed tracker; one instance per run. ``experiment`` is the MLflow experiment
    (the paper); the trainer names the run ``<paper>/<experiment>/seed<k> · <scale> ·
    <start time>``.

    Metrics are buffered and written in batches, at most ``flush_seconds`` apart, at every
    :meth:`flush` (the loop flushes at each checkpoint, so a resumed run loses none) and at
    :meth:`end`: one write to the store costs ~10 ms, as much as a hundred training steps of a
    small flow."""

    MAX_BATCH = 1000  # MLflow's limit on metrics per log_batch

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        flush_seconds: float = 15.0,
        pipeline: dict[str, str] | None = None,
    ) -> None:
        """``pipeline``: the Snakemake invocation the run belongs to (default: read from
        :data:`PIPELINE_ENV`); a new run is nested under the invocation's parent run."""
        self.tracking_uri = tracking_uri
        self.pipeline = pipeline if pipeline is not None else _pipeline_from_env()
        self.flush_seconds = flush_seconds
        self._pending: list = []
        self._logged_through: dict[str, int] = {}
        self._flushed_at = time.monotonic()
        self.client = _client(tracking_uri)
        self.experiment_id = _experiment_id(self.client, experiment, tracking_uri)

    def start(
        self,
        run_name: str,
        tags: dict[str, Any],
        params: dict[str, Any],
        run_id: str | None = None,
    ) -> str:
        """Start a new run, or reopen ``run_id`` when resuming (params are not re-logged;
        see :meth:`_reopen`)."""
        from mlflow.entities import Param, RunTag

        if run_id is not None and self._reopen(run_id):
            return run_id
        tags = {k: str(v) for k, v in tags.items()}
        if self.pipeline:
            tags["mlflow.parentRunId"] = self._pipeline_parent(tags)
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])
        self.client.log_batch(self.run_id, tags=[RunTag("mlflow.source.type", "JOB")])
        return self.run_id

    def _pipeline_parent(self, tags: dict[str, str]) -> str:
        """The run id of this invocation's parent run in this experiment, created by the
        first job to ask (under a file lock: parallel jobs must not create two)."""
        from filelock import FileLock

        pipeline = self.pipeline
        db = _sqlite_path(self.tracking_uri)
        lock = f"{db}.pipeline.lock" if db else str(REPO_ROOT / "runs" / ".pipeline.lock")
        Path(lock).parent.mkdir(parents=True, exist_ok=True)
        query = f"tags.pipeline_invocation = '{pipeline['id']}'"
        with FileLock(lock, timeout=600):
            found = self.client.search_runs([self.experiment_id], query, max_results=1)
            if found:
                return found[0].info.run_id
            source = {k: tags[k] for k in ("mlflow.source.git.commit", "git_commit") if k in tags}
            parent = self.client.create_run(
                self.experiment_id,
                run_name=f"{tags.get('paper', '')} · {pipeline['name']}",
                tags={
                    "pipeline_invocation": pipeline["id"], "run_kind": "pipeline",
                    "scale": pipeline.get("scale", ""), "paper": tags.get("paper", ""),
                    "mlflow.source.name": "Snakefile", "mlflow.source.type": "PROJECT",
                    "mlflow.note.content": f"One Snakemake invocation ({pipeline['name']}); "
                    "its training runs of this paper are nested below.",
                    **source,
                },
            )  # fmt: skip
            return parent.info.run_id

    def log_dataset(
        self, name: str, digest: str, source: str, profile: dict[str, Any] | None = None
    ) -> None:
        """Log the training data as the run's MLflow dataset input (the UI's Dataset column):
        ``digest`` is the file's MD5, the hash DVC records for it; ``source`` its path."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(
            name=name,
            digest=digest,
            source_type="local",
            source=json.dumps({"uri": source, "dvc_md5": digest}),
            profile=json.dumps(profile) if profile else None,
        )
        context = InputTag("mlflow.data.context", "training")
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset, tags=[context])])

    def _reopen(self, run_id: str) -> bool:
        """Mark ``run_id`` RUNNING again and note, per metric, the last step it holds: a
        resumed run replays the steps after its checkpoint, and those already in the store
        are not logged twice. False (and a note) if the store has no such run."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            print(f"note: run {run_id} is not in {self.tracking_uri}; starting a new MLflow run")
            return False
        self.run_id = run_id
        self._logged_through = {
            key: max(m.step for m in self.client.get_metric_history(run_id, key))
            for key in run.data.metrics
        }
        self.client.update_run(run_id, status="RUNNING")
        return True

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        through = self._logged_through
        self._pending += [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if step > through.get(k, -1)  # not a replayed step already in the store
        ]
        if time.monotonic() - self._flushed_at >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the buffered metrics to the store."""
        pending, self._pending = self._pending, []
        for i in range(0, len(pending), self.MAX_BATCH):
            self.client.log_batch(self.run_id, metrics=pending[i : i + self.MAX_BATCH])
        self._flushed_at = time.monotonic()

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_all_after(self, step: int) -> None:
        """Log every point after ``step`` even where the store holds one already: a run
        continued with changed settings at ``step`` follows a new trajectory from there (the
        points the failed attempt logged after it stay, beside the new ones)."""
        self._logged_through = {k: min(v, step) for k, v in self._logged_through.items()}

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            try:
                self.flush()
            finally:
                self.client.set_terminated(self.run_id, status=status)


def _pipeline_from_env() -> dict[str, str] | None:
    text = os.environ.get(PIPELINE_ENV)
    if not text:
        return None
    try:
        pipeline = json.loads(text)
        if not (isinstance(pipeline, dict) and pipeline.get("id") and pipeline.get("name")):
            raise ValueError("needs 'id' and 'name'")
    except ValueError as exc:
        raise TrackingError(f"${PIPELINE_ENV} is not a pipeline invocation: {exc}") from None
    return pipeline


def end_pipeline(tracking_uri: str, invocation: str, status: str = "FINISHED") -> int:
    """Mark the parent runs of pipeline ``invocation`` (one per paper it trained) ``status``;
    return how many there were. Nothing to do when the store does not exist yet."""
    db = _sqlite_path(tracking_uri)
    if db is not None and not db.exists():
        return 0
    client = _client(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    query = f"tags.pipeline_invocation = '{invocation}'"
    parents = client.search_runs(experiments, query) if experiments else []
    for run in parents:
        client.set_terminated(run.info.run_id, status=status)
    return len(parents)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m common.run.tracking")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="create the MLflow store and one experiment per paper")
    init.add_argument("--tracking-uri", default=default_tracking_uri())
    init.add_argument("--experiments", nargs="+", required=True)
    end = sub.add_parser("end-pipeline", help="end the parent runs of a pipeline invocation")
    end.add_argument("--tracking-uri", default=default_tracking_uri())
    end.add_argument("--invocation", required=True)
    end.add_argument("--status", default="FINISHED", choices=["FINISHED", "FAILED", "KILLED"])
    args = parser.parse_args(argv)
    if args.command == "end-pipeline":
        n = end_pipeline(args.tracking_uri, args.invocation, args.status)
        print(f"{n} pipeline run(s) of {args.invocation} marked {args.status}")
        return
    init_store(args.tracking_uri, args.experiments)
    print(f"MLflow store ready at {args.tracking_uri}")


if __name__ == "__main__":
    main()
