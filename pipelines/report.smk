# reports/<paper>.md from the MLflow runs of this profile's jobs and papers/<paper>/paper.yaml,
# reports/<paper>_ablation.md from the ablation's runs (more seeds), and the cross-paper index
# reports/README.md from every paper's index experiment.


rule measure:
    """A measurement of the paper's report (paper.yaml: measurements), e.g. MAF's density vs
    sampling cost; it asks for every core, so no training job shares the machine while it
    times."""
    output:
        "runs/{profile}/{paper}/measurements/{name}.json",
    params:
        module=lambda wc: measurement_module(wc.paper, wc.name),
    log:
        "runs/logs/measure_{profile}_{paper}_{name}.log",
    threads: workflow.cores
    shell:
        "{PY:q} -m {params.module:q} --profile {wildcards.profile:q} --out {output:q}"
        " > {log:q} 2>&1"


rule report:
    wildcard_constraints:
        paper="|".join(PAPERS),  # not <paper>_ablation
    input:
        metrics=lambda wc: run_outputs(wc.paper),
        measurements=lambda wc: measurement_outputs(wc.paper),
        claims="papers/{paper}/paper.yaml",
        store=ancient(MLFLOW_DB),
    output:
        report=report_path("{paper}"),
    log:
        f"runs/logs/report_{PROFILE}_{{paper}}.log",
    localrule: True
    shell:
        "{PY:q} -m common.run.reports paper --paper {wildcards.paper:q} --profile {PROFILE:q}"
        " --tracking-uri {TRACKING_URI:q} --metrics {input.metrics:q}"
        " --measurements {input.measurements:q} --out {output.report:q} > {log:q} 2>&1"


rule report_ablation:
    input:
        metrics=lambda wc: ablation_outputs(wc.paper),
        claims="papers/{paper}/paper.yaml",
        store=ancient(MLFLOW_DB),
    output:
        report=ablation_report_path("{paper}"),
    log:
        f"runs/logs/report_{PROFILE}_{{paper}}_ablation.log",
    localrule: True
    shell:
        "{PY:q} -m common.run.reports ablation --paper {wildcards.paper:q} --profile {PROFILE:q}"
        " --tracking-uri {TRACKING_URI:q} --metrics {input.metrics:q} --out {output.report:q}"
        " > {log:q} 2>&1"


rule report_index:
    input:
        metrics=index_run_outputs(),
        reports=[report_path(p) for p in PAPERS],
        claims=[f"papers/{p}/paper.yaml" for p in PAPERS],
        store=ancient(MLFLOW_DB),
    output:
        index=index_path(),
    params:
        baseline=f"{config['index_baseline']['paper']}/{config['index_baseline']['experiment']}",
    log:
        f"runs/logs/report_{PROFILE}_index.log",
    localrule: True
    shell:
        "{PY:q} -m common.run.reports index --papers {PAPERS:q} --profile {PROFILE:q}"
        " --baseline {params.baseline:q} --metrics {input.metrics:q} --out {output.index:q}"
        " > {log:q} 2>&1"
