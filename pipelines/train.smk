# One training job per (profile, paper, experiment, seed). Run with `shell:` (not `script:`)
# so the run records the git commit and Snakemake tracks the command. Paper-scale jobs ask
# for a GPU if their config says `device: auto` or `cuda`; limit concurrent GPU jobs with
# --resources gpu=N (see pipelines/profiles/paper). A run's inputs are its config and its
# dataset (none for a variational fit to an analytic target).


rule train:
    input:
        config=lambda wc: experiment_config(wc.paper, wc.profile, wc.experiment),
        data=lambda wc: data_inputs(wc.paper, wc.profile, wc.experiment),
        store=ancient(MLFLOW_DB),
    output:
        f"{run_dir('{profile}', '{paper}', '{experiment}', '{seed}')}/metrics.json",
    log:
        f"{run_dir('{profile}', '{paper}', '{experiment}', '{seed}')}/train.log",
    params:
        workdir=lambda wc: run_dir(wc.profile, wc.paper, wc.experiment, wc.seed),
    threads: 1
    priority: train_priority
    resources:
        gpu=lambda wc: gpu_jobs(wc.paper, wc.profile, wc.experiment),
    shell:
        "{PY:q} -m papers.{wildcards.paper:q}.train --config {input.config:q}"
        " --set seed={wildcards.seed:q} --workdir {params.workdir:q}"
        " --tracking-uri {TRACKING_URI:q} --no-progress > {log:q} 2>&1"
