"""What every command shares: its common options and how it prints its result."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

# The command's result (text, or with --json the JSON object alone) goes to the real
# stdout; anything else printed meanwhile (Tune's status tables, forwarded worker output)
# goes to the log file, or with -v to stderr (see cluster/console.py). `main` sets it.
RESULT_STREAM = sys.stdout


def emit(args: argparse.Namespace, payload: Any, human: Callable[[], str]) -> None:
    if args.json:
        json.dump(payload, RESULT_STREAM, indent=2, default=str)
        RESULT_STREAM.write("\n")
    else:
        print(human(), file=RESULT_STREAM)
    RESULT_STREAM.flush()


def csv_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def unit_map(value: str) -> dict[str, str]:
    """`a=mm Hg,b=mg/dl` as {"a": "mm Hg", "b": "mg/dl"}."""
    units = {}
    for item in csv_list(value):
        name, equals, unit = item.partition("=")
        if not equals or not name.strip() or not unit.strip() or len(unit.strip()) > 64:
            raise argparse.ArgumentTypeError("write each as COLUMN=UNIT (a unit of 1-64 characters), "
                                             "separated by commas")
        units[name.strip()] = unit.strip()
    return units


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", metavar="URI",
                        help="storage root: file://PATH, a path, or s3://BUCKET/PREFIX (default: $MEDRAY_STORAGE, "
                             "else ~/.medray)")
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    parser.add_argument("-v", "--verbose", action="store_true", help="more detail on stderr")
