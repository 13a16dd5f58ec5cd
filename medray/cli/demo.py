"""`medray demo`."""

from __future__ import annotations

import argparse

from medray.cli.common import add_common, emit


def demo(args: argparse.Namespace) -> None:
    from medray.demo import run_demo

    summary = run_demo(args.storage, quick=args.quick, report_dir=args.report)
    emit(args, summary, lambda: summary["text"])


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("demo", help="the whole platform end to end on this machine, with a report")
    parser.add_argument("--quick", action="store_true", help="2 epochs, 1 worker and 2 trials: a smoke test of every stage")
    parser.add_argument("--report", default="demo-report", help="folder for report.html and its plots")
    add_common(parser)
    parser.set_defaults(handler=demo)
