"""`medray serve up|update|status|down` and `medray predict`."""

from __future__ import annotations

import argparse
import json
import os
import sys

from medray.cli.common import add_common, csv_list, emit


def _serve_config(args: argparse.Namespace):
    from medray.api import open_storage
    from medray.cluster.config import load_config

    # A local Ray from `serve up` (`ray start --head`) has Ray's token authentication on, with
    # the token in ~/.ray/auth_token; Ray reads the mode when it is imported, so set it first.
    if "ray" not in sys.modules and not os.environ.get("RAY_ADDRESS"):
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    config = load_config(args.config, list(args.overrides or []))
    return config, open_storage(args.storage, config)


def serve_up(args: argparse.Namespace) -> None:
    config, storage = _serve_config(args)
    from medray.serve.app import connect, deploy

    storage.check()
    connect(config, start=True)
    deployed = deploy(config, storage, args.models)
    emit(args, deployed, lambda: "serving " + ", ".join(f"{n} v{v}" for n, v in deployed["models"].items())
         + f" at {deployed['url']}" + ("" if deployed["auth"] else " (no MEDRAY_API_TOKEN: 127.0.0.1 only)")
         + f"\nweb page: {deployed['page']}\nAPI docs: {deployed['url']}/docs")


def serve_update(args: argparse.Namespace) -> None:
    config, storage = _serve_config(args)
    from medray.serve.app import connect, update

    connect(config, start=False)
    updated = update(config, storage)
    emit(args, updated, lambda: "\n".join(f"{n}: version {c['from']} -> {c['to']}" for n, c in
                                          updated["changed"].items()) or "every model already serves its champion")


def serve_status(args: argparse.Namespace) -> None:
    config, _ = _serve_config(args)
    from medray.serve.app import connect, status

    connect(config, start=False)
    current = status()

    def human() -> str:
        lines = [f"medray: {current['status']}"]
        for name, d in current["deployments"].items():
            replicas = ", ".join(f"{k.lower()} {v}" for k, v in d["replicas"].items())
            version = f" version {d['version']}" if d.get("version") is not None else ""
            lines.append(f"  {name:<24}{d['status']:<12}{replicas}{version}")
        return "\n".join(lines)

    emit(args, current, human)


def serve_down(args: argparse.Namespace) -> None:
    config, _ = _serve_config(args)
    from medray.serve.app import connect, down

    connect(config, start=False)
    stopped_ray = down()
    emit(args, {"stopped": True, "stopped_ray": stopped_ray},
         lambda: "medray serving stopped" + (" (and the local Ray it started)" if stopped_ray else ""))


def predict(args: argparse.Namespace) -> None:
    from medray.serve.client import predict_file

    url = args.url or os.environ.get("MEDRAY_SERVE_URL") or "http://127.0.0.1:8000"
    answer = predict_file(url, args.name, args.file, explain=args.explain,
                          token=os.environ.get("MEDRAY_API_TOKEN") or None)
    emit(args, answer, lambda: json.dumps(answer, indent=2))


def add_commands(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="serve the registry's champions with Ray Serve")
    serve_commands = serve.add_subparsers(dest="serve_command", required=True, metavar="ACTION")
    for action, handler, text in (
        ("up", serve_up, "deploy the champions (starts a local Ray if none) and print the URL"),
        ("update", serve_update, "roll every served model to its current champion, in place"),
        ("status", serve_status, "deployments, replicas and the version each serves"),
        ("down", serve_down, "stop serving (and the local Ray `serve up` started)"),
    ):
        sub = serve_commands.add_parser(action, help=text)
        sub.add_argument("--config", help="YAML config (its serve: section), else the defaults")
        if action == "up":
            sub.add_argument("--models", type=csv_list, help="registry names to serve (default: every champion)")
        sub.add_argument("overrides", nargs="*", metavar="key=value")
        add_common(sub)
        sub.set_defaults(handler=handler)

    parser = commands.add_parser("predict", help="ask a served model about a file (image, .json or .npy)")
    parser.add_argument("name", help="served model name")
    parser.add_argument("file", help="PNG/JPEG/DICOM image, a .json body or instance list, or a .npy array")
    parser.add_argument("--url", help="server URL (default: $MEDRAY_SERVE_URL, else http://127.0.0.1:8000)")
    parser.add_argument("--explain", action="store_true", help="add the explanation (Grad-CAM, attention, saliency)")
    add_common(parser)
    parser.set_defaults(handler=predict)
