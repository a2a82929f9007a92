# One training job per (profile, paper, experiment, seed). Run with `shell:` (not `script:`)
# so the run records the git commit and Snakemake tracks the command. Paper-scale jobs ask
# for a GPU per process if their config says `device: auto` or `cuda`; limit concurrent GPU
# jobs with --resources gpu=N (see pipelines/profiles/paper). A config asking for several
# data-parallel processes (`resources: {processes: N}`) is started with torchrun. Its threads,
# GPUs, memory and time limit are the job's resources, which the Slurm profile turns into
# sbatch options. A run's inputs are its config and its dataset (none for a variational fit
# to an analytic target).


rule train:
    """One training run: papers/<paper>/train.py on one experiment config and seed, logging to
    the MLflow store and writing its metrics.json last (the job's output)."""
    input:
        config=lambda wc: experiment_config(wc.paper, wc.profile, wc.experiment),
        data=lambda wc: data_inputs(wc.paper, wc.profile, wc.experiment),
        store=ancient(STORE),
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
        launcher=lambda wc: launcher(wc.paper, wc.profile, wc.experiment),
        tracking_uri=TRACKING_URI,
    conda:
        ENV
    threads: lambda wc: train_threads(wc.paper, wc.profile, wc.experiment)
    priority: train_priority
    resources:
        gpu=lambda wc: gpu_jobs(wc.paper, wc.profile, wc.experiment),
        mem_mb=lambda wc: job_resources(wc.paper, wc.profile, wc.experiment)["mem_mb"],
        runtime=lambda wc: job_resources(wc.paper, wc.profile, wc.experiment)["runtime"],
    shell:
        "{params.py:q} {params.launcher:q} -m papers.{wildcards.paper:q}.train"
        " --config {input.config:q}"
        " --set seed={wildcards.seed:q} --workdir {params.workdir:q}"
        " --tracking-uri {params.tracking_uri:q} --no-progress > {log:q} 2>&1"
