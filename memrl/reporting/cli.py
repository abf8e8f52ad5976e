"""``memrl report RUN``: the run folder as one readable page (HTML or Markdown)."""

from __future__ import annotations

import argparse
import json


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write a run folder as one readable page (HTML or Markdown)",
        description="Read a run folder written by memrl train and write one page: summary, config, best mask per "
        "dataset with its samples beside their nearest training images, Pareto fronts, the mask-bit heatmap, "
        "reward and regret curves, the policy against random masks, and failed evaluations. Pictures go to "
        "<page stem>_files/ beside the page. Optional pieces a run lacks are skipped with a note.",
    )
    p.add_argument("run", metavar="RUN", help="run folder written by memrl train (needs evaluations.csv and config.yaml)")
    p.add_argument("--out", default=None, help="the page to write (default RUN/report.html); a .md suffix selects Markdown")
    p.add_argument("--format", choices=("html", "md"), default=None, help="html or md (default: from the --out suffix, html unless it ends in .md)")
    p.add_argument("--json", action="store_true", help="print what was written (page, format, assets folder, skipped parts) as JSON instead of the path")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from memrl.reporting.report import write_report

    info = write_report(args.run, args.out, args.format)
    print(json.dumps(info) if args.json else info["report"])
    return 0
