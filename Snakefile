# The reproduction pipeline. Targets: reproduce_<paper> (e.g. reproduce_glow), all, and
# reproduce_<paper>_ablation for a paper whose paper.yaml has an ablation (more seeds, longer).
#
#   snakemake reproduce_glow                          # cpu profile (default), offline
#   snakemake reproduce_glow_ablation                 # Glow's Figure 3 ablation, 5 seeds
#   snakemake reproduce_glow --config profile=smoke   # seconds
#   snakemake -n reproduce_glow --config profile=paper  # dry run of the paper-scale jobs
#   snakemake all                                     # every paper, and reports/README.md
#
# Rules live in pipelines/*.smk; the config is validated against pipelines/config.schema.yaml.

from snakemake.utils import validate


configfile: "pipelines/config.yaml"


validate(config, "pipelines/config.schema.yaml")


# `snakemake --report report.html`: the reports and their figures by paper (report() outputs)
report: "pipelines/report/workflow.rst"


include: "pipelines/common.smk"
include: "pipelines/data.smk"
include: "pipelines/tracking.smk"
include: "pipelines/train.smk"
include: "pipelines/report.smk"


# Jobs on a cluster inherit the pipeline invocation their MLflow runs nest under.
envvars:
    PIPELINE_ENV,


rule all:
    input:
        [run_outputs(paper) for paper in PAPERS],
        [report_path(paper) for paper in PAPERS],
        index_path(),


# A reproduce target asks for the runs as well as the report: in a fresh clone the committed
# report exists, and only the missing runs make Snakemake train and regenerate it.
for _paper in PAPERS:

    rule:
        name:
            f"reproduce_{_paper}"
        input:
            run_outputs(_paper),
            report_path(_paper),


for _paper in ablation_papers():

    rule:
        name:
            f"reproduce_{_paper}_ablation"
        input:
            ablation_outputs(_paper),
            ablation_report_path(_paper),
