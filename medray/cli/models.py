"""`medray models list|show|promote|rollback|export`: the model registry."""

from __future__ import annotations

import argparse
import json

from medray.cli.common import add_common, emit


def _registry(args: argparse.Namespace):
    from medray.api import open_storage
    from medray.cluster.registry import Registry

    storage = open_storage(args.storage)
    storage.check()
    return Registry(storage)


def models_list(args: argparse.Namespace) -> None:
    from medray.api import models

    listing = models(args.storage)
    rows = listing["models"]

    def human() -> str:
        if not rows:
            return f"no models in {listing['storage']}/models"
        lines = [f"{'name':<20}{'champion':>9}{'versions':>10}  {'dataset':<18}test AUROC"]
        lines += [f"{r['name']:<20}{str(r['champion'] or '-'):>9}{len(r['versions']):>10}  {str(r['dataset']):<18}"
                  f"{'n/a' if r['test_auroc'] is None else format(r['test_auroc'], '.3f')}" for r in rows]
        return "\n".join(lines)

    emit(args, listing, human)


def models_show(args: argparse.Namespace) -> None:
    registry = _registry(args)
    name, version = registry.resolve(args.ref)
    info = registry.version_info(name, version)
    champion = registry.champion(name)
    info["champion"] = bool(champion and champion["version"] == version)
    card = registry.read_file(name, version, "model_card.md", info).decode() if "model_card.md" in info["files"] else ""
    emit(args, info, lambda: card or json.dumps(info, indent=2))


def models_promote(args: argparse.Namespace) -> None:
    pointer = _registry(args).promote(args.name, args.version, "promoted by hand")
    emit(args, pointer, lambda: f"{args.name}: champion is now version {pointer['version']}")


def models_rollback(args: argparse.Namespace) -> None:
    pointer = _registry(args).rollback(args.name)
    emit(args, pointer, lambda: f"{args.name}: champion rolled back to version {pointer['version']}")


def models_export(args: argparse.Namespace) -> None:
    from medray.api import export_model

    exported = export_model(args.ref, args.format, args.destination, args.storage)
    emit(args, exported, lambda: f"{exported['model']} version {exported['version']} exported as {args.format} to "
                                 f"{exported['destination']}/{exported['graph']} (input {exported['input']['takes']}; "
                                 f"output calibrated probabilities of {', '.join(exported['classes'])})")


def add_commands(commands: argparse._SubParsersAction) -> None:
    models = commands.add_parser("models", help="the model registry")
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    m_list = model_commands.add_parser("list", help="models, versions and champions")
    add_common(m_list)
    m_list.set_defaults(handler=models_list)
    m_show = model_commands.add_parser("show", help="a version's model card (NAME = its champion)")
    m_show.add_argument("ref", metavar="NAME[@K]")
    add_common(m_show)
    m_show.set_defaults(handler=models_show)
    m_promote = model_commands.add_parser("promote", help="make version K the champion")
    m_promote.add_argument("name")
    m_promote.add_argument("version", type=int)
    add_common(m_promote)
    m_promote.set_defaults(handler=models_promote)
    m_rollback = model_commands.add_parser("rollback", help="point the champion back at the version it replaced")
    m_rollback.add_argument("name")
    add_common(m_rollback)
    m_rollback.set_defaults(handler=models_rollback)
    m_export = model_commands.add_parser(
        "export", help="a version as an ONNX or TorchScript graph giving calibrated probabilities, with checksums")
    m_export.add_argument("ref", metavar="NAME[@K]")
    m_export.add_argument("destination", metavar="DEST", help="folder to write (made if missing)")
    m_export.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    add_common(m_export)
    m_export.set_defaults(handler=models_export)
