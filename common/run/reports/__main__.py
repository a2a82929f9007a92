"""``python -m common.run.reports {paper,index} ...``: see the package docstring."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.run.reports import __doc__ as DOC
from common.run.reports import generate_ablation_report, generate_index, generate_report
from common.run.tracking import default_tracking_uri


def _baseline(text: str) -> tuple[str, str]:
    paper, sep, experiment = text.partition("/")
    if not sep or not paper or not experiment:
        raise argparse.ArgumentTypeError(f"expected PAPER/EXPERIMENT, got {text!r}")
    return paper, experiment


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m common.run.reports",
        description=DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("paper", help="reports/<paper>.md")
    ablation = sub.add_parser("ablation", help="reports/<paper>_ablation.md")
    for p in (one, ablation):
        p.add_argument("--paper", required=True)
        p.add_argument(
            "--tracking-uri",
            default=default_tracking_uri(),
            help="MLflow store holding the runs' histories",
        )
    index = sub.add_parser("index", help="reports/README.md, the cross-paper index")
    index.add_argument("--papers", nargs="+", required=True)
    index.add_argument(
        "--baseline",
        type=_baseline,
        required=True,
        help="PAPER/EXPERIMENT of the baseline row (pipelines/config.yaml: index_baseline)",
    )
    for p in (one, ablation, index):
        p.add_argument("--profile", required=True, choices=["smoke", "cpu", "paper"])
        p.add_argument("--metrics", nargs="*", type=Path, default=[])
        p.add_argument("--out", type=Path, required=True)
    one.add_argument("--measurements", nargs="*", type=Path, default=[],
                     help="the paper's measurement files (paper.yaml: measurements)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.command == "paper":
        path = generate_report(args.paper, args.profile, args.metrics, args.out,
                               args.tracking_uri, measurements=args.measurements)  # fmt: skip
    elif args.command == "ablation":
        path = generate_ablation_report(
            args.paper, args.profile, args.metrics, args.out, args.tracking_uri
        )
    else:
        path = generate_index(args.profile, args.papers, args.metrics, args.out, args.baseline)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
