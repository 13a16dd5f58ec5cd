"""`medray …`: the command-line front door.

One module per command group (data, train/evaluate, tune, models, serve/predict,
submit/jobs, demo); each builds its part of the parser and holds its handlers, which call
the Python API (medray/api.py) and print what it returns. A handler imports what its
command needs only when that command runs, so `medray --help` is instant and a data
command never pays for importing torch. Problems the user can fix (`MedrayError`) print
one line to stderr and exit 2; `--json` output goes to stdout alone, progress and logs
to stderr.
"""

from __future__ import annotations

import argparse
import sys

from medray import __version__
from medray.cli import common, data, demo, jobs, models, serve, train, tune
from medray.cluster.errors import MedrayError

# Commands that run Ray keep the terminal for medray's own lines; the rest print little.
RAY_COMMANDS = ("train", "evaluate", "tune", "serve", "submit", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medray", description="Train, tune and serve medical AI models on Ray.")
    parser.add_argument("--version", action="version", version=f"medray {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (data, train, tune, models, serve, jobs, demo):
        group.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come after options too (`medray tune C --samples 4 optim.lr=1e-3`).
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any("=" not in item or item.startswith("-") for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides or []) + extra
    from medray.cluster import console

    # An image import runs Ray Data tasks; every other data command runs in this process.
    runs_ray = args.command in RAY_COMMANDS or getattr(args, "kind", None) == "images"
    out = console.setup(args.command, verbose=args.verbose or not runs_ray)
    common.RESULT_STREAM = out.terminal_out
    if args.json and out.verbose:
        # For good, not just during the handler: Ray's log thread may still print (e.g.
        # raylet warnings) while the process shuts down, after the JSON is out.
        sys.stdout = sys.stderr
    try:
        args.handler(args)
    except MedrayError as error:
        print(f"medray: error: {error}", file=out.terminal_err)
        return 2
    except BrokenPipeError:  # `medray … | head` closed the pipe; not an error
        out.terminal_err.close()
        return 0
    except KeyboardInterrupt:
        print("medray: interrupted", file=out.terminal_err)
        return 130
    except Exception as error:  # a bug, or a failure inside Ray: one line here, the traceback in the log
        if out.verbose:
            raise
        print(f"medray: failed: {console.one_line(error)}", file=out.terminal_err)
        return 1
    return 0
