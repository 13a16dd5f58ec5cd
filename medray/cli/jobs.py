"""`medray submit train|tune|serve` and `medray jobs list|status|logs|stop`: work on a
Ray cluster through its Jobs API."""

from __future__ import annotations

import argparse

from medray.cli.common import add_common, emit
from medray.cluster.errors import MedrayError


def submit(args: argparse.Namespace) -> None:
    from medray.cluster.config import load_config
    from medray.cluster.jobs import submit as submit_job

    if args.config and "=" in args.config and not args.config.endswith((".yaml", ".yml")):
        args.overrides, args.config = [args.config, *(args.overrides or [])], None  # `submit serve key=value`
    argv = [args.what]
    if args.what == "serve":
        argv += ["up"] + (["--config", args.config] if args.config else [])
    else:
        if not args.config:
            raise MedrayError(f"`medray submit {args.what}` needs a CONFIG")
        argv.append(args.config)
        if args.what == "tune":
            argv += ([f"--samples={args.samples}"] if args.samples else []) + (["--promote"] if args.promote else [])
    argv += list(args.overrides or [])
    load_config(args.config, list(args.overrides or []))  # a bad config fails here, not on the cluster
    if args.what != "serve":
        argv.append("--json")
    result = submit_job(args.address, argv, wait=not args.no_wait, config=args.config,
                        ship_code=not args.image_has_medray)
    emit(args, result, lambda: f"job {result['job_id']}: {result['status']}")
    if result["status"] in ("FAILED", "STOPPED"):
        raise MedrayError(f"job {result['job_id']} ended {result['status']}; `medray jobs logs {result['job_id']}`")


def jobs(args: argparse.Namespace) -> None:
    from medray.cluster import jobs as cluster_jobs

    if args.action == "list":
        rows = cluster_jobs.list_jobs(args.address)
        emit(args, rows, lambda: "\n".join(f"{r['job_id']:<28}{r['status']:<11}{r['entrypoint']}" for r in rows)
             or "no jobs")
        return
    if not args.job:
        raise MedrayError(f"`medray jobs {args.action}` needs a JOB id")
    if args.action == "status":
        info = cluster_jobs.job_status(args.address, args.job)
        emit(args, info, lambda: f"{info['job_id']}: {info['status']}" + (f" ({info['message']})" if info["message"]
                                                                            else ""))
    elif args.action == "logs":
        text = cluster_jobs.job_logs(args.address, args.job)
        emit(args, {"job_id": args.job, "logs": text}, lambda: text.rstrip("\n"))
    else:
        stopped = cluster_jobs.stop_job(args.address, args.job)
        emit(args, stopped, lambda: f"{stopped['job_id']}: {stopped['status']}")


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("submit", help="run train, tune or serve on a Ray cluster through its Jobs API")
    parser.add_argument("what", choices=["train", "tune", "serve"])
    parser.add_argument("config", nargs="?", help="YAML config (train, tune; optional for serve)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--address", help="the Jobs API, e.g. http://127.0.0.1:8265 (default: $RAY_ADDRESS)")
    parser.add_argument("--samples", type=int, help="tune: number of trials")
    parser.add_argument("--promote", action="store_true", help="tune: promote the best trial through the gate")
    parser.add_argument("--no-wait", action="store_true", help="return the job id at once instead of following it")
    parser.add_argument("--image-has-medray", action="store_true",
                        help="ship no medray code: the job runs the medray installed in the cluster's image "
                             "(default: this medray travels with the job)")
    add_common(parser)
    parser.set_defaults(handler=submit)

    parser = commands.add_parser("jobs", help="jobs on a Ray cluster: list, status, logs, stop")
    parser.add_argument("action", choices=["list", "status", "logs", "stop"])
    parser.add_argument("job", nargs="?", help="job id (status, logs, stop)")
    parser.add_argument("--address", help="the Jobs API, e.g. http://127.0.0.1:8265 (default: $RAY_ADDRESS)")
    add_common(parser)
    parser.set_defaults(handler=jobs)
