"""Reports generated from runs: ``reports/<paper>.md``, ``reports/<paper>_ablation.md`` (a
paper's ablation, its own target) and the cross-paper index ``reports/README.md``.

Every number of ours comes from the runs' typed summaries (``metrics.json``, the same values
MLflow holds) and the curves from the MLflow histories; the papers' numbers come from
``papers/<paper>/paper.yaml`` (validated against ``paper.schema.yaml``) and are always labelled
as the paper's. Each of our numbers carries the scale it was obtained at.

    python -m common.run.reports paper --paper nice --profile cpu \\
        --metrics runs/cpu/nice/*/seed*/metrics.json --out reports/nice.md
    python -m common.run.reports index --profile cpu --papers nice realnvp glow \\
        --baseline nice/digits_gaussian --metrics runs/cpu/*/digits_*/seed*/metrics.json \\
        --out reports/README.md

Modules: ``runs`` (summaries grouped by experiment), ``stats`` (the tests behind verdicts),
``compare`` (the verdicts), ``figures``, ``meta`` (paper.yaml), ``paper`` (one paper's report),
``ablation`` (its ablation's report), ``index`` (the index).
"""

from common.run.reports.ablation import generate_ablation_report
from common.run.reports.index import generate_index
from common.run.reports.paper import generate_report

__all__ = ["generate_ablation_report", "generate_index", "generate_report"]
