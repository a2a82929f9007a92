# One training job per (profile, paper, experiment, seed). Run with `shell:` (not `script:`)
# so the run records the git commit and Snakemake tracks the command. Paper-scale jobs ask
# for a GPU if their config says `device: auto` or `cuda`; limit concurrent GPU jobs with
# --resources gpu=N (see pipelines/profiles/paper). A run's inputs are its config and its
# dataset (none for a variational fit to an analytic target).


rule train:
    """One training run: papers/<paper>/train.py on one experiment config and seed, logging to
    the MLflow store and writing its metrics.json last (the job's output)."""
    input:
        config=lambda wc: experiment_config(wc.paper, wc.profile, wc.experiment),
        data=lambda wc: data_inputs(wc.paper, wc.profile, wc.experiment),
        store=ancient(MLFLOW_DB),
    output:
        f"{run_dir('{profile}', '{paper}', '{experiment}', '{seed}')}/metrics.json",
    log:
        f"{run_dir('{profile}', '{paper}', '{experiment}', '{seed}')}/train.log",
    # wall time, CPU time and peak memory of the whole job: the reports' compute table
    benchmark:
        f"{run_dir('{profile}', '{paper}', '{experiment}', '{seed}')}/benchmark.tsv"
    params:
        workdir=lambda wc: run_dir(wc.profile, wc.paper, wc.experiment, wc.seed),
        py=PY,
        tracking_uri=TRACKING_URI,
    conda:
        ENV
    threads: 1
    priority: train_priority
    resources:
        gpu=lambda wc: gpu_jobs(wc.paper, wc.profile, wc.experiment),
    shell:
        "{params.py:q} -m papers.{wildcards.paper:q}.train --config {input.config:q}"
        " --set seed={wildcards.seed:q} --workdir {params.workdir:q}"
        " --tracking-uri {params.tracking_uri:q} --no-progress > {log:q} 2>&1"
