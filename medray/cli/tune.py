"""`medray tune`."""

from __future__ import annotations

import argparse
from typing import Any

from medray.cli.common import add_common, emit


def tune(args: argparse.Namespace) -> None:
    from medray.api import run_search
    from medray.cli.train import cv_text
    from medray.tune.run import trial_table

    summary = run_search(args.config, args.overrides, storage=args.storage, samples=args.samples,
                         promote=args.promote, resume=args.resume)

    def human() -> str:
        text = "\n".join([trial_table(summary), *cv_text(summary.get("cv"))])
        promotion = summary.get("promotion")
        if promotion:
            text += "\n" + promotion_text(promotion)
        return text

    emit(args, summary, human)


def promotion_text(promotion: dict[str, Any]) -> str:
    gate = "; ".join(f"{g['metric']} {g['value'] if g['value'] is None else round(g['value'], 4)} "
                     f"{'ok' if g['passed'] else 'FAILED'}" for g in promotion["gate"])
    if promotion["promoted"]:
        return f"promoted {promotion['model']} version {promotion['version']}" + \
            (" (champion)" if promotion["champion"] else "") + f"; gate: {gate}"
    return f"not promoted: {', '.join(promotion['failed'])} failed the gate; {gate}"


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("tune", help="search hyperparameters with Ray Tune (ASHA + Optuna)")
    parser.add_argument("config", nargs="?", help="YAML config (its tune: section sets the search)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--samples", type=int, help="number of trials (tune.num_samples)")
    parser.add_argument("--promote", action="store_true", help="evaluate the best trial and register it if it "
                                                               "passes the gate")
    parser.add_argument("--resume", metavar="NAME", help="continue an interrupted search")
    add_common(parser)
    parser.set_defaults(handler=tune)
