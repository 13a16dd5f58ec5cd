"""`medray …`: the command-line front door.

Each command's module is imported only when that command runs, so `medray --help` is
instant and a data command never pays for importing torch. Problems the user can fix
(`MedrayError`) print one line to stderr and exit 2; `--json` output goes to stdout
alone, progress and logs to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Callable

from medray.cluster.errors import MedrayError

log = logging.getLogger("medray")

RAY_COMMANDS = ("train", "evaluate", "tune", "serve", "submit", "demo")


def _csv_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


# The command's result (text, or with --json the JSON object alone) goes to the real
# stdout; anything else printed meanwhile (Tune's status tables, forwarded worker output)
# goes to the log file, or with -v to stderr (see cluster/console.py).
_RESULT_STREAM = sys.stdout


def _emit(args: argparse.Namespace, payload: Any, human: Callable[[], str]) -> None:
    if args.json:
        json.dump(payload, _RESULT_STREAM, indent=2, default=str)
        _RESULT_STREAM.write("\n")
    else:
        print(human(), file=_RESULT_STREAM)
    _RESULT_STREAM.flush()


def _storage(args: argparse.Namespace, config=None):
    """The root from --storage, else the config, else the environment; the config's
    storage settings (encryption, KMS key, retries) apply whichever gives the root."""
    from medray.cluster.storage import Storage

    return Storage.from_cli(args.storage, config.storage if config is not None else None)


# data ----------------------------------------------------------------------------
def _data_import(args: argparse.Namespace) -> None:
    from medray.cluster.config import DataConfig, validate_config
    from medray.train.data.importers import ImportRequest, import_dataset

    data = validate_config(
        {k: v for k, v in {"val_fraction": args.val_fraction, "test_fraction": args.test_fraction,
                            "seed": args.seed, "image_size": args.size}.items() if v is not None},
        DataConfig,
    )
    request = ImportRequest(
        kind=args.kind, source=args.source, name=args.name, dataset=args.dataset, target=args.target,
        columns=args.columns, missing=args.missing, categorical=args.categorical or [], group=args.group,
        drop=args.drop or [], classes=args.classes, sep=args.sep, grayscale=not args.rgb,
        license=args.license, source_label=args.source_label, data=data,
    )
    manifest = import_dataset(_storage(args), request)
    _emit(args, manifest, lambda: f"imported {manifest['name']} v{manifest['version']}\n" + describe_text(manifest))


def describe_text(manifest: dict[str, Any]) -> str:
    from medray.train.data.dataset import describe_source

    splits = manifest["splits"]
    quality = manifest["quality"]
    lines = [
        f"{manifest['name']} v{manifest['version']}  ({manifest['modality']}, {len(manifest['classes'])} classes)",
        f"  classes:  {', '.join(manifest['classes'])}",
        "  splits:   " + "  ".join(f"{name} {splits[name]['rows']}" for name in ("train", "val", "test")),
    ]
    schema = manifest["schema"]
    if "features" in schema:
        lines.append(f"  features: {len(schema['features'])} ({', '.join(f['name'] for f in schema['features'][:8])}"
                     + (", …)" if len(schema["features"]) > 8 else ")"))
    else:
        lines.append(f"  {schema['column']}:    shape {schema['shape']} {schema['dtype']}")
    for name in ("train", "val", "test"):
        counts = ", ".join(f"{cls} {n}" for cls, n in splits[name]["class_counts"].items())
        lines.append(f"  {name:<5} by class: {counts}")
    duplicates = quality["duplicates_across_splits"]
    lines += [
        f"  missing values: {quality['missing_values_total']}"
        + (f" ({', '.join(f'{k} {v}' for k, v in quality['missing_values'].items() if v)})"
           if quality["missing_values_total"] else ""),
        f"  duplicates across splits: {sum(duplicates.values())} ({', '.join(f'{k} {v}' for k, v in duplicates.items())})",
        f"  constant features: {quality['constant_features']}",
        f"  source:  {describe_source(manifest['source'])}",
        f"  license: {manifest['license']}",
        f"  created: {manifest['created_at']}",
    ]
    return "\n".join(lines)


def _data_list(args: argparse.Namespace) -> None:
    from medray.train.data.dataset import list_datasets, read_manifest

    storage = _storage(args)
    storage.check()
    rows = []
    for name, versions in list_datasets(storage).items():
        latest = read_manifest(storage, f"{name}@v{versions[-1]}")
        rows.append({
            "name": name, "versions": versions, "latest": versions[-1], "modality": latest["modality"],
            "classes": latest["classes"],
            "rows": {split: info["rows"] for split, info in latest["splits"].items()},
        })

    def human() -> str:
        if not rows:
            return f"no datasets in {storage.root}"
        header = f"{'name':<20} {'latest':>6} {'versions':>8}  {'modality':<9} {'train/val/test':<16} classes"
        body = [
            f"{r['name']:<20} {'v' + str(r['latest']):>6} {len(r['versions']):>8}  {r['modality']:<9} "
            f"{'/'.join(str(r['rows'][s]) for s in ('train', 'val', 'test')):<16} {', '.join(r['classes'])}"
            for r in rows
        ]
        return "\n".join([f"datasets in {storage.root}", header, *body])

    _emit(args, {"storage": storage.root, "datasets": rows}, human)


def _data_describe(args: argparse.Namespace) -> None:
    from medray.train.data.dataset import read_manifest

    manifest = read_manifest(_storage(args), args.ref)
    _emit(args, manifest, lambda: describe_text(manifest))


# train / evaluate ----------------------------------------------------------------
def _load(args: argparse.Namespace):
    from medray.cluster.config import load_config

    return load_config(args.config, args.overrides)


def _train(args: argparse.Namespace) -> None:
    from pathlib import Path

    from medray.train.job import run_training

    config = _load(args)
    storage = _storage(args, config)
    summary = run_training(config, storage, Path(args.config).stem)
    _emit(args, summary, lambda: result_text(summary))


def result_text(summary: dict[str, Any]) -> str:
    lines = [f"run:        {summary['run']}", f"checkpoint: {summary['checkpoint']}",
             f"dataset:    {summary['dataset']}   epochs run: {summary['epochs_run']}   "
             f"best epoch: {summary['best_epoch'] + 1 if summary['best_epoch'] is not None else 'n/a'}", ""]
    lines.append(f"{'split':<6}{'AUROC (95% CI)':<24}{'acc':>7}{'bal acc':>9}{'sens':>7}{'spec':>7}{'ECE':>7}{'ECE cal':>9}")
    for split in ("val", "test"):
        m = summary["metrics"][split]
        ci = m.get("auroc_ci") or [None, None]
        auroc = "n/a" if m["auroc"] is None else f"{m['auroc']:.3f} ({ci[0]:.3f}-{ci[1]:.3f})" if ci[0] is not None \
            else f"{m['auroc']:.3f}"
        lines.append(f"{split:<6}{auroc:<24}" + "".join(
            f"{'n/a' if m.get(k) is None else format(m[k], '.3f'):>{w}}"
            for k, w in (("accuracy", 7), ("balanced_accuracy", 9), ("sensitivity", 7), ("specificity", 7),
                         ("ece", 7), ("ece_calibrated", 9))))
    if summary.get("report"):
        lines += ["", "report: " + ", ".join(summary["report"].values())]
    return "\n".join(lines)


def _evaluate(args: argparse.Namespace) -> None:
    from medray.train.job import evaluate_checkpoint

    config = _load(args)
    storage = _storage(args, config)
    result = evaluate_checkpoint(storage, args.checkpoint, config, args.split)
    _emit(args, result, lambda: json.dumps(result["metrics"], indent=2))


# tune / models ----------------------------------------------------------------------
def _tune(args: argparse.Namespace) -> None:
    from pathlib import Path

    from medray.tune.run import run_search, trial_table

    if not args.config and not args.resume:
        raise MedrayError("give a CONFIG to start a search, or --resume NAME to continue one")
    overrides = list(args.overrides) + ([f"tune.num_samples={args.samples}"] if args.samples else [])
    config = _load_config(args.config, overrides)
    storage = _storage(args, config)
    summary = run_search(config, storage, Path(args.config).stem if args.config else None, resume=args.resume)
    if args.promote:
        from medray.tune.promote import promote_checkpoint

        best = summary["best"]
        if not best["checkpoint"]:
            raise MedrayError(f"the best trial {best['trial']} left no checkpoint to promote")
        from medray.tune.spaces import apply_params

        saved = storage.read_json(f"runs/{summary['search']}/search.json")
        best_config = apply_params(saved["base"], best["config"])
        summary["promotion"] = promote_checkpoint(
            storage, storage.key_of(best["checkpoint"]), best_config,
            source={"search": summary["search"], "trial": best["trial"]})

    def human() -> str:
        text = trial_table(summary)
        promotion = summary.get("promotion")
        if promotion:
            text += "\n" + promotion_text(promotion)
        return text

    _emit(args, summary, human)


def _load_config(path, overrides):
    from medray.cluster.config import load_config

    return load_config(path, overrides)


def promotion_text(promotion: dict[str, Any]) -> str:
    gate = "; ".join(f"{g['metric']} {g['value'] if g['value'] is None else round(g['value'], 4)} "
                     f"{'ok' if g['passed'] else 'FAILED'}" for g in promotion["gate"])
    if promotion["promoted"]:
        return f"promoted {promotion['model']} version {promotion['version']}" + \
            (" (champion)" if promotion["champion"] else "") + f"; gate: {gate}"
    return f"not promoted: {', '.join(promotion['failed'])} failed the gate; {gate}"


def _registry(args: argparse.Namespace):
    from medray.cluster.registry import Registry

    storage = _storage(args)
    storage.check()
    return Registry(storage)


def _models_list(args: argparse.Namespace) -> None:
    registry = _registry(args)
    rows = []
    for name in registry.models():
        champion = registry.champion(name)
        versions = registry.versions(name)
        info = registry.version_info(name, champion["version"] if champion else versions[-1])
        rows.append({"name": name, "versions": versions, "champion": champion["version"] if champion else None,
                     "dataset": info.get("dataset"), "test_auroc": info.get("metrics", {}).get("test", {}).get("auroc")})

    def human() -> str:
        if not rows:
            return f"no models in {registry.storage.uri('models')}"
        lines = [f"{'name':<20}{'champion':>9}{'versions':>10}  {'dataset':<18}test AUROC"]
        lines += [f"{r['name']:<20}{str(r['champion'] or '-'):>9}{len(r['versions']):>10}  {str(r['dataset']):<18}"
                  f"{'n/a' if r['test_auroc'] is None else format(r['test_auroc'], '.3f')}" for r in rows]
        return "\n".join(lines)

    _emit(args, {"models": rows}, human)


def _models_show(args: argparse.Namespace) -> None:
    registry = _registry(args)
    name, version = registry.resolve(args.ref)
    info = registry.version_info(name, version)
    champion = registry.champion(name)
    info["champion"] = bool(champion and champion["version"] == version)
    card = registry.read_file(name, version, "model_card.md", info).decode() if "model_card.md" in info["files"] else ""
    _emit(args, info, lambda: card or json.dumps(info, indent=2))


def _models_promote(args: argparse.Namespace) -> None:
    pointer = _registry(args).promote(args.name, args.version, "promoted by hand")
    _emit(args, pointer, lambda: f"{args.name}: champion is now version {pointer['version']}")


def _models_rollback(args: argparse.Namespace) -> None:
    pointer = _registry(args).rollback(args.name)
    _emit(args, pointer, lambda: f"{args.name}: champion rolled back to version {pointer['version']}")


# serve ---------------------------------------------------------------------------
def _serve_config(args: argparse.Namespace):
    # A local Ray from `serve up` (`ray start --head`) has Ray's token authentication on, with
    # the token in ~/.ray/auth_token; Ray reads the mode when it is imported, so set it first.
    if "ray" not in sys.modules and not os.environ.get("RAY_ADDRESS"):
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    config = _load_config(args.config, list(args.overrides or []))
    return config, _storage(args, config)


def _serve_up(args: argparse.Namespace) -> None:
    config, storage = _serve_config(args)
    from medray.serve.app import connect, deploy

    storage.check()
    connect(config, start=True)
    deployed = deploy(config, storage, args.models)
    _emit(args, deployed, lambda: "serving " + ", ".join(f"{n} v{v}" for n, v in deployed["models"].items())
          + f" at {deployed['url']}" + ("" if deployed["auth"] else " (no MEDRAY_API_TOKEN: 127.0.0.1 only)")
          + f"\nAPI docs: {deployed['url']}/docs")


def _serve_update(args: argparse.Namespace) -> None:
    config, storage = _serve_config(args)
    from medray.serve.app import connect, update

    connect(config, start=False)
    updated = update(config, storage)
    _emit(args, updated, lambda: "\n".join(f"{n}: version {c['from']} -> {c['to']}" for n, c in
                                           updated["changed"].items()) or "every model already serves its champion")


def _serve_status(args: argparse.Namespace) -> None:
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

    _emit(args, current, human)


def _serve_down(args: argparse.Namespace) -> None:
    config, _ = _serve_config(args)
    from medray.serve.app import connect, down

    connect(config, start=False)
    stopped_ray = down()
    _emit(args, {"stopped": True, "stopped_ray": stopped_ray},
          lambda: "medray serving stopped" + (" (and the local Ray it started)" if stopped_ray else ""))


def _predict(args: argparse.Namespace) -> None:
    from medray.serve.client import predict_file

    url = args.url or os.environ.get("MEDRAY_SERVE_URL") or "http://127.0.0.1:8000"
    answer = predict_file(url, args.name, args.file, explain=args.explain,
                          token=os.environ.get("MEDRAY_API_TOKEN") or None)
    _emit(args, answer, lambda: json.dumps(answer, indent=2))


# cluster jobs ----------------------------------------------------------------------
def _submit(args: argparse.Namespace) -> None:
    from medray.cluster.jobs import submit

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
    _load_config(args.config, [o for o in args.overrides or []])  # a bad config fails here, not on the cluster
    if args.what != "serve":
        argv.append("--json")
    result = submit(args.address, argv, wait=not args.no_wait)
    _emit(args, result, lambda: f"job {result['job_id']}: {result['status']}")
    if result["status"] in ("FAILED", "STOPPED"):
        raise MedrayError(f"job {result['job_id']} ended {result['status']}; `medray jobs logs {result['job_id']}`")


def _jobs(args: argparse.Namespace) -> None:
    from medray.cluster import jobs

    if args.action == "list":
        rows = jobs.list_jobs(args.address)
        _emit(args, rows, lambda: "\n".join(f"{r['job_id']:<28}{r['status']:<11}{r['entrypoint']}" for r in rows)
              or "no jobs")
        return
    if not args.job:
        raise MedrayError(f"`medray jobs {args.action}` needs a JOB id")
    if args.action == "status":
        info = jobs.job_status(args.address, args.job)
        _emit(args, info, lambda: f"{info['job_id']}: {info['status']}" + (f" ({info['message']})" if info["message"] else ""))
    elif args.action == "logs":
        text = jobs.job_logs(args.address, args.job)
        _emit(args, {"job_id": args.job, "logs": text}, lambda: text.rstrip("\n"))
    else:
        stopped = jobs.stop_job(args.address, args.job)
        _emit(args, stopped, lambda: f"{stopped['job_id']}: {stopped['status']}")


# demo ----------------------------------------------------------------------------
def _demo(args: argparse.Namespace) -> None:
    from medray.cluster.demo import run_demo

    summary = run_demo(args.storage, quick=args.quick, report_dir=args.report)
    _emit(args, summary, lambda: summary["text"])


# parser --------------------------------------------------------------------------
def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", metavar="URI",
                        help="storage root: file://PATH, a path, or s3://BUCKET/PREFIX (default: $MEDRAY_STORAGE, "
                             "else ~/.medray)")
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    parser.add_argument("-v", "--verbose", action="store_true", help="more detail on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medray", description="Train, tune and serve medical AI models on Ray.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="import, list and describe datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    imp = data_commands.add_parser(
        "import", help="import a source into a new dataset version",
        description="Import a source (file, folder, s3:// object, URL or dataset name) as a new, validated "
                    "dataset version.",
    )
    imp.add_argument("kind", choices=["medmnist", "ucr", "csv", "sklearn", "images"])
    imp.add_argument("source", help="path, s3:// or https:// URL, or a dataset name (MedMNIST flag, UCR "
                                    "dataset, scikit-learn dataset)")
    imp.add_argument("--name", required=True, help="dataset name on storage")
    imp.add_argument("--dataset", help="which dataset inside a multi-dataset source (UCR folder)")
    imp.add_argument("--target", help="csv: the label column")
    imp.add_argument("--columns", type=_csv_list, help="csv: column names for a file without a header row")
    imp.add_argument("--missing", type=_csv_list, help="csv: cell texts meaning missing (default: '',?,NA,NaN)")
    imp.add_argument("--categorical", type=_csv_list, help="csv: categorical columns")
    imp.add_argument("--group", help="csv: rows sharing this column (e.g. patient id) stay in one split")
    imp.add_argument("--drop", type=_csv_list, help="csv: columns to leave out (identifiers, free text)")
    imp.add_argument("--classes", type=_csv_list, help="class names in label order; other labels are refused")
    imp.add_argument("--sep", default=",", help="csv: field separator")
    imp.add_argument("--size", type=int, help="images: side length to resize to (default 64)")
    imp.add_argument("--rgb", action="store_true", help="images: keep colour (default: greyscale)")
    imp.add_argument("--val-fraction", type=float, help="share carved for validation (default 0.15)")
    imp.add_argument("--test-fraction", type=float, help="share held out for test when the source has none")
    imp.add_argument("--seed", type=int, help="split seed (default 0)")
    imp.add_argument("--license", help="license or terms of the source, recorded in the manifest")
    imp.add_argument("--source-label", help="your name for the source, recorded in the manifest instead of its "
                                            "path or file name (which are never stored)")
    _common(imp)
    imp.set_defaults(handler=_data_import)

    lst = data_commands.add_parser("list", help="datasets and their versions")
    _common(lst)
    lst.set_defaults(handler=_data_list)

    desc = data_commands.add_parser("describe", help="a dataset version's manifest")
    desc.add_argument("ref", metavar="NAME[@vN]")
    _common(desc)
    desc.set_defaults(handler=_data_describe)

    train = commands.add_parser(
        "train", help="train a model with Ray Train and evaluate it",
        description="Train from a YAML config (see train/configs/), with key=value overrides, e.g. "
                    "`medray train train/configs/wdbc_attention.yaml optim.lr=3e-4 scaling.num_workers=2`.",
    )
    train.add_argument("config", help="YAML config file")
    train.add_argument("overrides", nargs="*", metavar="key=value")
    _common(train)
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="re-evaluate a stored checkpoint")
    evaluate.add_argument("checkpoint", help="a run name (its best checkpoint) or a checkpoint URI")
    evaluate.add_argument("--split", default="test", choices=["val", "test"])
    evaluate.add_argument("--config", help="YAML config for evaluation settings (eval.*)")
    evaluate.add_argument("overrides", nargs="*", metavar="key=value")
    _common(evaluate)
    evaluate.set_defaults(handler=_evaluate)

    tune = commands.add_parser("tune", help="search hyperparameters with Ray Tune (ASHA + Optuna)")
    tune.add_argument("config", nargs="?", help="YAML config (its tune: section sets the search)")
    tune.add_argument("overrides", nargs="*", metavar="key=value")
    tune.add_argument("--samples", type=int, help="number of trials (tune.num_samples)")
    tune.add_argument("--promote", action="store_true", help="evaluate the best trial and register it if it passes "
                                                             "the gate")
    tune.add_argument("--resume", metavar="NAME", help="continue an interrupted search")
    _common(tune)
    tune.set_defaults(handler=_tune)

    models = commands.add_parser("models", help="the model registry")
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    m_list = model_commands.add_parser("list", help="models, versions and champions")
    _common(m_list)
    m_list.set_defaults(handler=_models_list)
    m_show = model_commands.add_parser("show", help="a version's model card (NAME = its champion)")
    m_show.add_argument("ref", metavar="NAME[@K]")
    _common(m_show)
    m_show.set_defaults(handler=_models_show)
    m_promote = model_commands.add_parser("promote", help="make version K the champion")
    m_promote.add_argument("name")
    m_promote.add_argument("version", type=int)
    _common(m_promote)
    m_promote.set_defaults(handler=_models_promote)
    m_rollback = model_commands.add_parser("rollback", help="point the champion back at the version it replaced")
    m_rollback.add_argument("name")
    _common(m_rollback)
    m_rollback.set_defaults(handler=_models_rollback)

    serve = commands.add_parser("serve", help="serve the registry's champions with Ray Serve")
    serve_commands = serve.add_subparsers(dest="serve_command", required=True, metavar="ACTION")
    for action, handler, text in (
        ("up", _serve_up, "deploy the champions (starts a local Ray if none) and print the URL"),
        ("update", _serve_update, "roll every served model to its current champion, in place"),
        ("status", _serve_status, "deployments, replicas and the version each serves"),
        ("down", _serve_down, "stop serving (and the local Ray `serve up` started)"),
    ):
        sub = serve_commands.add_parser(action, help=text)
        sub.add_argument("--config", help="YAML config (its serve: section), else the defaults")
        if action == "up":
            sub.add_argument("--models", type=_csv_list, help="registry names to serve (default: every champion)")
        sub.add_argument("overrides", nargs="*", metavar="key=value")
        _common(sub)
        sub.set_defaults(handler=handler)

    predict = commands.add_parser("predict", help="ask a served model about a file (image, .json or .npy)")
    predict.add_argument("name", help="served model name")
    predict.add_argument("file", help="PNG/JPEG/DICOM image, a .json body or instance list, or a .npy array")
    predict.add_argument("--url", help="server URL (default: $MEDRAY_SERVE_URL, else http://127.0.0.1:8000)")
    predict.add_argument("--explain", action="store_true", help="add the explanation (Grad-CAM, attention, saliency)")
    _common(predict)
    predict.set_defaults(handler=_predict)

    submit = commands.add_parser("submit", help="run train, tune or serve on a Ray cluster through its Jobs API")
    submit.add_argument("what", choices=["train", "tune", "serve"])
    submit.add_argument("config", nargs="?", help="YAML config (train, tune; optional for serve)")
    submit.add_argument("overrides", nargs="*", metavar="key=value")
    submit.add_argument("--address", help="the Jobs API, e.g. http://127.0.0.1:8265 (default: $RAY_ADDRESS)")
    submit.add_argument("--samples", type=int, help="tune: number of trials")
    submit.add_argument("--promote", action="store_true", help="tune: promote the best trial through the gate")
    submit.add_argument("--no-wait", action="store_true", help="return the job id at once instead of following it")
    _common(submit)
    submit.set_defaults(handler=_submit)

    jobs_parser = commands.add_parser("jobs", help="jobs on a Ray cluster: list, status, logs, stop")
    jobs_parser.add_argument("action", choices=["list", "status", "logs", "stop"])
    jobs_parser.add_argument("job", nargs="?", help="job id (status, logs, stop)")
    jobs_parser.add_argument("--address", help="the Jobs API, e.g. http://127.0.0.1:8265 (default: $RAY_ADDRESS)")
    _common(jobs_parser)
    jobs_parser.set_defaults(handler=_jobs)

    demo = commands.add_parser("demo", help="the whole platform end to end on this machine, with a report")
    demo.add_argument("--quick", action="store_true", help="2 epochs and 2 trials: a smoke test of every stage")
    demo.add_argument("--report", default="demo-report", help="folder for report.html and its plots")
    _common(demo)
    demo.set_defaults(handler=_demo)
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

    # Commands that run Ray keep the terminal for medray's own lines; the rest print little.
    out = console.setup(args.command, verbose=args.verbose or args.command not in RAY_COMMANDS)
    global _RESULT_STREAM
    _RESULT_STREAM = out.terminal_out
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


if __name__ == "__main__":
    sys.exit(main())
