# reports/<paper>.md from the MLflow runs of this profile's jobs and papers/<paper>/paper.yaml.


rule report:
    input:
        metrics=lambda wc: run_outputs(wc.paper),
        claims="papers/{paper}/paper.yaml",
        store=ancient(MLFLOW_DB),
    output:
        report=report_path("{paper}"),
    log:
        f"runs/logs/report_{PROFILE}_{{paper}}.log",
    localrule: True
    shell:
        "{PY} -m common.reports --paper {wildcards.paper} --profile {PROFILE}"
        " --tracking-uri {TRACKING_URI} --metrics {input.metrics} --out {output.report}"
        " > {log} 2>&1"
