"""What a person at the terminal sees: medray's own lines, with everything else in a log file.

A training run on Ray prints a great deal that is not for its user: Ray Train's
`Reporting training result ...` line per worker and epoch, Tune's status tables, raylet
warnings, Ray Data's execution plans, Serve's controller logs. By default (`quiet`) the
CLI keeps the terminal for medray's stage lines, one line per epoch or trial, and
progress bars, and sends the rest to a log file whose path it prints first:

- `sys.stdout` and `sys.stderr` are pointed at the log file before Ray is imported, so
  every handler and `print` that Ray (or any library) sets up writes there, including
  the worker output Ray forwards to the driver (`log_to_driver`);
- medray's loggers (`cluster`, `train`, `tune`, `serve`, `medray`) keep a handler on the
  real stderr;
- training workers announce progress as one marked line (`emit_progress`); the driver
  picks those out of Ray's forwarded worker output (`route_worker_output`) and renders
  them, however many processes away the worker ran.

`-v` (`verbose`) leaves the standard streams alone, as Ray's own default is; so do
commands that start no Ray, which have nothing to hide.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

PROGRESS_MARK = "medray-progress "
OWN_LOGGERS = ("medray", "cluster", "train", "tune", "serve")
LOG_DIR_ENV = "MEDRAY_LOG_DIR"


@dataclass
class Console:
    """Where this process's output goes; one per process (`CONSOLE`)."""

    real_out: IO[str] | None = None
    real_err: IO[str] | None = None
    """The terminal's streams, kept by `setup` before `sys.stdout`/`sys.stderr` move."""
    log_path: Path | None = None
    log_file: IO[str] | None = None
    verbose: bool = True
    epoch_every: int = 1
    """Render every k-th epoch line (and the last); the demo trains several models."""

    @property
    def terminal_out(self) -> IO[str]:
        return self.real_out or sys.stdout

    @property
    def terminal_err(self) -> IO[str]:
        return self.real_err or sys.stderr


CONSOLE = Console()


def log_dir() -> Path:
    return Path(os.environ.get(LOG_DIR_ENV) or "~/.cache/medray/logs").expanduser()


class _OwnRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".", 1)[0] in OWN_LOGGERS


def setup(command: str, verbose: bool) -> Console:
    """Configure this process's output for a CLI command (see the module docstring)."""
    console = CONSOLE  # changed in place: modules hold it from `from cluster.console import CONSOLE`
    console.real_out, console.real_err = sys.stdout, sys.stderr
    console.verbose = verbose
    terminal = logging.StreamHandler(console.terminal_err)
    terminal.setFormatter(logging.Formatter("medray: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [terminal]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:
        try:
            folder = log_dir()
            folder.mkdir(parents=True, exist_ok=True)
            console.log_path = folder / f"medray-{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
            console.log_file = open(console.log_path, "a", buffering=1, encoding="utf-8", errors="replace")
        except OSError as error:  # no writable log folder: stay verbose rather than lose the output
            console.verbose = True
            logging.getLogger("medray").warning("cannot write a log file in %s (%s); showing all output",
                                                log_dir(), error.strerror or error)
        else:
            terminal.addFilter(_OwnRecords())
            to_file = logging.StreamHandler(console.log_file)
            to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            root.addHandler(to_file)
            sys.stdout = sys.stderr = console.log_file
            logging.getLogger("medray").info("log: %s (Ray's and the workers' output; -v shows it here)",
                                             console.log_path)
    return console


def one_line(error: BaseException) -> str:
    """An unexpected error (a bug, or a failure inside Ray) for the terminal: its type and
    first line; the traceback goes to the log file, whose path the line then names.
    (A `MedrayError` is written for the user and printed whole.)"""
    import traceback

    text = str(error).strip()
    first = f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__
    if CONSOLE.log_file is None:
        return first
    traceback.print_exception(error, file=CONSOLE.log_file)
    return f"{first} (details: {CONSOLE.log_path})"


def summarized(text: str) -> str:
    """A long message from Ray (a worker's traceback) as its first line, with the whole of
    it in the log file when there is one."""
    lines = str(text).strip().splitlines() or [""]
    if len(lines) == 1:
        return lines[0]
    if CONSOLE.log_file is None:
        return str(text).strip()
    CONSOLE.log_file.write(str(text).strip() + "\n")
    return f"{lines[0]} (details: {CONSOLE.log_path})"


# Training progress -------------------------------------------------------------------
def emit_progress(event: dict[str, Any]) -> None:
    """Called in a training worker: one marked line that the driver renders."""
    print(PROGRESS_MARK + json.dumps(event, default=float), flush=True)


def epoch_line(event: dict[str, Any]) -> str:
    def show(value):
        return "  n/a" if value is None or value != value else f"{value:.4f}"

    return (f"epoch {event['epoch'] + 1:>3}/{event['epochs']}  train_loss {show(event.get('train_loss'))}  "
            f"val_loss {show(event.get('val_loss'))}  val_auroc {show(event.get('val_auroc'))}  "
            f"val_acc {show(event.get('val_accuracy'))}  {event.get('epoch_seconds', 0.0):.1f}s"
            + ("  (resumed)" if event.get("resumed_from_epoch") is not None else "")
            + ("  stopped early (patience)" if event.get("stopped_early") else ""))


def render_progress(event: dict[str, Any]) -> None:
    number, every = event["epoch"] + 1, max(1, CONSOLE.epoch_every)
    if number % every == 0 or number == event["epochs"] or number == 1 or event.get("stopped_early"):
        logging.getLogger("medray.progress").info(epoch_line(event))


def route_worker_output() -> None:
    """Take over Ray's printing of forwarded worker output in this driver: progress lines
    are rendered, the rest printed as Ray would (to the log file when quiet).

    Ray exposes no public hook for this; the dispatcher is internal, so if it moves in a
    later Ray, worker output is simply printed as Ray prints it."""
    try:
        from ray._private import worker as ray_worker
    except ImportError:
        return
    dispatcher = getattr(ray_worker, "global_worker_stdstream_dispatcher", None)
    handlers = dict(getattr(dispatcher, "handlers", []))
    default = handlers.get("ray_print_logs")
    if default is None or getattr(default, "medray_router", False):
        return

    def route(batch: dict[str, Any]) -> None:
        lines = batch.get("lines") or []
        rest = []
        for line in lines:
            if PROGRESS_MARK in line:
                try:
                    render_progress(json.loads(line.split(PROGRESS_MARK, 1)[1]))
                except (ValueError, KeyError, TypeError):
                    rest.append(line)
            else:
                rest.append(line)
        if rest:
            default({**batch, "lines": rest})

    route.medray_router = True  # type: ignore[attr-defined]
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", route)
