# reports/<paper>.md from the MLflow runs of this profile's jobs and papers/<paper>/paper.yaml,
# reports/<paper>_ablation.md from the ablation's runs (more seeds), and the cross-paper index
# reports/README.md from every paper's index experiment.


rule measure:
    """A measurement of the paper's report (paper.yaml: measurements), e.g. MAF's density vs
    sampling cost; locally it asks for every core, so no training job shares the machine
    while it times."""
    output:
        "runs/{profile}/{paper}/measurements/{name}.json",
    params:
        module=lambda wc: measurement_module(wc.paper, wc.name),
        py=PY,
    log:
        "runs/logs/measure_{profile}_{paper}_{name}.log",
    conda:
        ENV
    threads: measurement_threads()
    shell:
        "{params.py:q} -m {params.module:q} --profile {wildcards.profile:q} --out {output:q}"
        " > {log:q} 2>&1"


rule report:
    """reports/<paper>.md: the paper's numbers beside ours, orderings tested, figures."""
    wildcard_constraints:
        paper="|".join(PAPERS),  # not <paper>_ablation
    input:
        metrics=lambda wc: run_outputs(wc.paper),
        measurements=lambda wc: measurement_outputs(wc.paper),
        claims="papers/{paper}/paper.yaml",
        store=ancient(STORE),
    output:
        report=report(
            report_path("{paper}"),
            caption="report/paper.rst",
            category="Reports",
            labels={"paper": "{paper}", "report": "main"},
        ),
        figures=report(
            directory(figures_dir("{paper}")),
            patterns=["{figure}.png"],
            caption="report/figure.rst",
            category="Figures",
            subcategory="{paper}",
            labels={"paper": "{paper}", "figure": "{figure}"},
        ),
    params:
        py=PY,
        profile=PROFILE,
        tracking_uri=TRACKING_URI,
    log:
        f"runs/logs/report_{PROFILE}_{{paper}}.log",
    conda:
        ENV
    localrule: True
    shell:
        "{params.py:q} -m common.run.reports paper --paper {wildcards.paper:q} --profile {params.profile:q}"
        " --tracking-uri {params.tracking_uri:q} --metrics {input.metrics:q}"
        " --measurements {input.measurements:q} --out {output.report:q} > {log:q} 2>&1"


rule report_ablation:
    """reports/<paper>_ablation.md from the ablation's runs (more seeds than the main ones)."""
    input:
        metrics=lambda wc: ablation_outputs(wc.paper),
        claims="papers/{paper}/paper.yaml",
        store=ancient(STORE),
    output:
        report=report(
            ablation_report_path("{paper}"),
            caption="report/ablation.rst",
            category="Reports",
            labels={"paper": "{paper}", "report": "ablation"},
        ),
        figures=report(
            directory(figures_dir("{paper}_ablation")),
            patterns=["{figure}.png"],
            caption="report/figure.rst",
            category="Figures",
            subcategory="{paper} ablation",
            labels={"paper": "{paper}", "figure": "{figure}"},
        ),
    params:
        py=PY,
        profile=PROFILE,
        tracking_uri=TRACKING_URI,
    log:
        f"runs/logs/report_{PROFILE}_{{paper}}_ablation.log",
    conda:
        ENV
    localrule: True
    shell:
        "{params.py:q} -m common.run.reports ablation --paper {wildcards.paper:q} --profile {params.profile:q}"
        " --tracking-uri {params.tracking_uri:q} --metrics {input.metrics:q} --out {output.report:q}"
        " > {log:q} 2>&1"


rule report_index:
    """reports/README.md: every paper's index experiment side by side on digits."""
    input:
        metrics=index_run_outputs(),
        reports=[report_path(p) for p in PAPERS],
        claims=[f"papers/{p}/paper.yaml" for p in PAPERS],
        store=ancient(STORE),
    output:
        index=report(
            index_path(),
            caption="report/index.rst",
            category="Reports",
            labels={"paper": "all", "report": "index"},
        ),
        figure=report(
            f"{reports_dir()}/figures/index_bpd.png",
            caption="report/index.rst",
            category="Figures",
            subcategory="all papers",
            labels={"paper": "all", "figure": "index_bpd"},
        ),
    params:
        baseline=f"{config['index_baseline']['paper']}/{config['index_baseline']['experiment']}",
        py=PY,
        profile=PROFILE,
        papers=PAPERS,
    log:
        f"runs/logs/report_{PROFILE}_index.log",
    conda:
        ENV
    localrule: True
    shell:
        "{params.py:q} -m common.run.reports index --papers {params.papers:q} --profile {params.profile:q}"
        " --baseline {params.baseline:q} --metrics {input.metrics:q} --out {output.index:q}"
        " > {log:q} 2>&1"
