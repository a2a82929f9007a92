# Helpers shared by the pipeline's files (paths, experiment discovery, the Python interpreter).
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(workflow.basedir)
# The interpreter of the jobs: the one running Snakemake (the project's virtualenv), or the
# rule's conda environment's own under --software-deployment-method conda.
_CONDA = any(m.name == "CONDA" for m in workflow.deployment_settings.deployment_method)
PY = "python" if _CONDA else sys.executable
ENV = "envs/flows.yaml"  # relative to pipelines/: every rule's conda environment
PROFILE = config["profile"]
PAPERS = config["papers"]
SEEDS = config["seeds"][PROFILE]
ABLATION_SEEDS = config["ablation_seeds"][PROFILE]
# The MLflow store: the config's tracking_uri (a shared server), else $MLFLOW_TRACKING_URI,
# else the project's SQLite file (an absolute URI: every job writes the same store). The
# mlflow_store job prepares it once, before any job logs; STORE is what that job writes (the
# SQLite file itself, or a marker file per other store).
MLFLOW_DB = "runs/mlflow.db"
TRACKING_URI = (
    config.get("tracking_uri")
    or os.environ.get("MLFLOW_TRACKING_URI")
    or f"sqlite:///{ROOT / MLFLOW_DB}"
)
if TRACKING_URI == f"sqlite:///{ROOT / MLFLOW_DB}":
    STORE = MLFLOW_DB
else:
    STORE = f"runs/mlflow_stores/{hashlib.sha1(TRACKING_URI.encode()).hexdigest()[:12]}.ready"

# Dataset files come from the one registry in common/ (dependency-free, cheap to import).
sys.path.insert(0, str(ROOT))
from common.data_registry import DATASETS, dataset_path, raw_paths  # noqa: E402
from common.run.tracking import PIPELINE_ENV  # noqa: E402 (stdlib only; MLflow loads lazily)

OFFLINE_DATA = [str(dataset_path(n)) for n, info in DATASETS.items() if not info.download]
# data/<stem>.npz of each downloaded dataset (the download rule's wildcard): stem → name
_ONLINE = {
    str(dataset_path(n, root="")).removesuffix(".npz"): n for n, i in DATASETS.items() if i.download
}
ONLINE_STEMS = sorted(_ONLINE)


def online_name(stem):
    return _ONLINE[stem]


def raw_dvc_files(name):
    """The committed .dvc files of a downloaded dataset's raw files."""
    return [f"{path}.dvc" for path in raw_paths(name)]


wildcard_constraints:
    profile="smoke|cpu|paper",
    paper="[a-z_]+",
    experiment="[A-Za-z0-9_]+",
    seed=r"\d+",


def experiment_config(paper, profile, experiment):
    return ROOT / "papers" / paper / "configs" / profile / f"{experiment}.yaml"


def experiments(paper, profile=PROFILE):
    """Experiment names: one YAML file each in papers/<paper>/configs/<profile>/."""
    folder = ROOT / "papers" / paper / "configs" / profile
    names = sorted(p.stem for p in folder.glob("*.yaml"))
    if not names:
        raise ValueError(f"no experiment configs in {folder}")
    return names


def run_config(paper, profile, experiment):
    return yaml.safe_load(experiment_config(paper, profile, experiment).read_text())


def dataset_of(paper, profile, experiment):
    """The dataset an experiment reads, or None (a variational fit to an analytic target)."""
    return run_config(paper, profile, experiment).get("data", {}).get("name")


def data_inputs(paper, profile, experiment):
    name = dataset_of(paper, profile, experiment)
    return [str(dataset_path(name))] if name else []


def job_resources(paper, profile, experiment):
    """The experiment config's ``resources`` (common.run.config.JobResources) over the
    profile's ``job_resources`` of pipelines/config.yaml: processes, mem_mb, runtime."""
    own = run_config(paper, profile, experiment).get("resources") or {}
    return {"processes": 1, **config["job_resources"][profile], **own}


def processes(paper, profile, experiment):
    return job_resources(paper, profile, experiment)["processes"]


def gpu_jobs(paper, profile, experiment):
    """GPUs of a paper-scale job whose config asks for one (device: auto or cuda): one per
    data-parallel process; else 0."""
    device = run_config(paper, profile, experiment).get("device", "cpu")
    gpu = profile == "paper" and device != "cpu"
    return processes(paper, profile, experiment) if gpu else 0


def train_threads(paper, profile, experiment):
    """CPU cores of a training job: the config's threads for each of its processes."""
    threads = run_config(paper, profile, experiment).get("threads", 1)
    return threads * processes(paper, profile, experiment)


def launcher(paper, profile, experiment):
    """How the job starts Python on the entry point: torchrun with one process per
    data-parallel rank when the config asks for more than one (``resources.processes``), else
    plainly. ``--standalone``: one machine, a local rendezvous on a free port."""
    n = processes(paper, profile, experiment)
    if n == 1:
        return []
    return ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}"]


def measurement_threads():
    """Every core Snakemake may use, so that a timing measurement runs alone on the machine;
    on a cluster (no --cores), where a job's CPUs are its own, 2."""
    return workflow.resource_settings.cores or 2


def train_priority(wildcards):
    """Order in which ready training jobs start (higher first; Snakemake's ``priority``).

    Each experiment's first seed runs before any of its other seeds: its compile fills the
    ``torch.compile`` cache that the later seeds then read instead of compiling the same
    graphs again side by side. Within each group the experiments listed under ``long_jobs``
    start first, so that two cores finish together instead of one waiting on a long job
    started last (longest-processing-time-first scheduling)."""
    long_jobs = config.get("long_jobs", {}).get(wildcards.profile, {}).get(wildcards.paper, [])
    first_seed = int(wildcards.seed) == SEEDS[0]
    return 2 * first_seed + (wildcards.experiment in long_jobs)


def check_long_jobs():
    """A misspelt ``long_jobs`` entry would silently schedule nothing: name it instead."""
    for profile, by_paper in config.get("long_jobs", {}).items():
        for paper, names in by_paper.items():
            unknown = sorted(set(names) - set(experiments(paper, profile)))
            if unknown:
                raise ValueError(f"long_jobs.{profile}.{paper}: no such experiments {unknown}")


check_long_jobs()


def run_dir(profile, paper, experiment, seed):
    return f"runs/{profile}/{paper}/{experiment}/seed{seed}"


def paper_meta(paper):
    return yaml.safe_load((ROOT / "papers" / paper / "paper.yaml").read_text())


def ablation_experiments(paper, profile=PROFILE):
    """The experiments of the paper's ablation (paper.yaml) that exist at this profile."""
    groups = paper_meta(paper).get("ablation", {}).get("groups", {})
    present = set(experiments(paper, profile))
    return sorted({e for names in groups.values() for e in names} & present)


def measurement_outputs(paper, profile=PROFILE):
    """The files of the paper's ``measurements`` (paper.yaml), one ``measure`` job each."""
    return [
        f"runs/{profile}/{paper}/measurements/{m['name']}.json"
        for m in paper_meta(paper).get("measurements", [])
    ]


def measurement_module(paper, name):
    (module,) = [m["module"] for m in paper_meta(paper)["measurements"] if m["name"] == name]
    return module


def main_experiments(paper, profile=PROFILE):
    """What reproduce_<paper> runs: every experiment but the ablation's, except the paper's
    index experiment, which the ablation shares (its first seeds are the same runs)."""
    index = paper_meta(paper).get("index_experiment")
    ablation = set(ablation_experiments(paper, profile)) - {index}
    return [e for e in experiments(paper, profile) if e not in ablation]


def run_outputs(paper, profile=PROFILE):
    return [
        f"{run_dir(profile, paper, e, s)}/metrics.json"
        for e in main_experiments(paper, profile)
        for s in SEEDS
    ]


def ablation_outputs(paper, profile=PROFILE):
    return [
        f"{run_dir(profile, paper, e, s)}/metrics.json"
        for e in ablation_experiments(paper, profile)
        for s in ABLATION_SEEDS
    ]


def ablation_papers():
    return [p for p in PAPERS if ablation_experiments(p)]


def reports_dir(profile=PROFILE):
    """The committed reports are the cpu ones; other profiles write under reports/<profile>/."""
    return "reports" if profile == "cpu" else f"reports/{profile}"


def report_path(paper, profile=PROFILE):
    return f"{reports_dir(profile)}/{paper}.md"


def index_experiments(profile=PROFILE):
    """(paper, experiment) pairs of the cross-paper table: each paper's ``index_experiment``
    (papers/<paper>/paper.yaml) and the baseline of pipelines/config.yaml, where they exist at
    this profile."""
    baseline = config["index_baseline"]
    pairs = [(p, yaml.safe_load((ROOT / "papers" / p / "paper.yaml").read_text()).get(
        "index_experiment")) for p in PAPERS]
    pairs.append((baseline["paper"], baseline["experiment"]))
    return [(p, e) for p, e in pairs if e and p in PAPERS and e in experiments(p, profile)]


def index_run_outputs(profile=PROFILE):
    return [
        f"{run_dir(profile, p, e, s)}/metrics.json" for p, e in index_experiments(profile) for s in SEEDS
    ]


def figures_dir(name, profile=PROFILE):
    """Where a report's figures go: figures/<paper> (or <paper>_ablation) beside it."""
    return f"{reports_dir(profile)}/figures/{name}"


def ablation_report_path(paper, profile=PROFILE):
    return f"{reports_dir(profile)}/{paper}_ablation.md"


def index_path(profile=PROFILE):
    return f"{reports_dir(profile)}/README.md"


# One MLflow parent run per paper per invocation, its training runs nested under it (see
# common/run/tracking.py). Jobs learn the invocation from the environment, not from params:
# a param that changes every invocation would make Snakemake rerun every finished job.
# os.environ is read once per invocation; jobs on a cluster re-read the Snakefile and
# inherit it (the Snakefile's envvars).
if not os.environ.get(PIPELINE_ENV):
    _now = time.gmtime()
    os.environ[PIPELINE_ENV] = json.dumps({
        "id": f"{time.strftime('%Y%m%dT%H%M%SZ', _now)}-{os.getpid()}",
        "name": f"snakemake · {PROFILE} · {time.strftime('%Y-%m-%d %H:%M:%S', _now)}",
        "scale": PROFILE,
    })
PIPELINE_ID = json.loads(os.environ[PIPELINE_ENV])["id"]


def end_pipeline(status):
    """End this invocation's parent runs (a no-op when nothing was trained)."""
    shell(
        "mkdir -p runs/logs && {PY:q} -m common.run.tracking end-pipeline"
        " --tracking-uri {TRACKING_URI:q} --invocation {PIPELINE_ID:q} --status {status:q}"
        " >> runs/logs/pipeline_runs.log 2>&1"
    )
