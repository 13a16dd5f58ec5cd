"""From a checkpoint to a registry version, only through the gate.

The checkpoint is evaluated on val and test (train/job.py's evaluation: temperature and
threshold fitted on val, the out-of-distribution detector fitted on train and thresholded
on val), a split-conformal quantile is fitted on val for serving's prediction sets, and
every rule in `promote.gate` is checked (`ood.…` rules on the detector's figures). Passing writes a new,
immutable registry version with a model card and (by default) makes it champion;
failing writes nothing and says which rules failed.
"""

from __future__ import annotations

import json
import logging
import platform
import socket
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medray.cluster.config import GateRule, MedrayConfig
from medray.cluster.errors import ConfigError
from medray.cluster.registry import Registry
from medray.cluster.storage import Storage
from medray.train.checkpoint import CALIBRATION, MODEL_FILES, PROGRESS
from medray.train.data.dataset import describe_source, read_manifest

log = logging.getLogger(__name__)


GATED = ("val", "test", "ood", "subgroups")
"""Where a gate rule's metric may come from: a split's metrics, the out-of-distribution
figures (`ood.…`, nested names joined by dots, e.g. a minimum OOD AUROC), or the worst
subgroup's test figures (`subgroups.worst.auroc`, with `eval.subgroups`)."""
_MISSING = object()


def check_gate(metrics: dict[str, Any], rules: list[GateRule]) -> list[dict[str, Any]]:
    """Every rule with its value and verdict; a metric that is not computed, or is not a
    number (a per-class table, a flag), is a config error. An undefined value (None)
    fails its rule."""
    verdicts = []
    for rule in rules:
        root, _, rest = rule.metric.partition(".")
        # A split's metrics are named by one key; the OOD figures nest (per set).
        flat = root in ("val", "test") and "." in rest
        value = _lookup(metrics, rule.metric) if root in GATED and not flat else _MISSING
        if value is _MISSING or not (value is None or _is_number(value)):
            known = ", ".join(name for root in GATED
                              for name in _numbers(metrics.get(root), root, root not in ("val", "test")))
            raise ConfigError(f"gate metric '{rule.metric}' is not computed; choose one of: {known}")
        passed = value is not None and (rule.min is None or value >= rule.min) and (rule.max is None or value <= rule.max)
        verdicts.append({"metric": rule.metric, "value": value, "min": rule.min, "max": rule.max, "passed": passed})
    return verdicts


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _lookup(metrics: dict[str, Any], dotted: str) -> Any:
    value: Any = metrics
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _numbers(tree: Any, prefix: str, nested: bool = True) -> dict[str, Any]:
    """The numbers in `tree` (in nested dicts too, if `nested`) by dotted name."""
    if not isinstance(tree, dict):
        return {prefix: tree} if _is_number(tree) else {}
    return {name: number for key, value in tree.items() if nested or not isinstance(value, dict)
            for name, number in _numbers(value, f"{prefix}.{key}").items()}


def _code_version() -> str:
    from importlib.metadata import version

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"medray {version('medray')}" + (f" (git {commit})" if commit else "")


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def model_card(name: str, config: MedrayConfig, manifest: dict[str, Any], metrics: dict,
               gate: list[dict], conformal: dict, source: dict[str, Any], ood: dict[str, Any] | None = None) -> str:
    """The version's model card; `ood` is the detector's `summary()`, its measured figures
    are `metrics["ood"]`."""
    test, val = metrics["test"], metrics["val"]
    ci = test.get("auroc_ci") or [None, None]
    lines = [
        f"# Model card: {name}",
        "",
        "## Intended use",
        f"Decision support for classifying {manifest['modality']} data as one of: "
        f"{', '.join(metrics.get('classes', []))}. The output is a probability per class, a label at a "
        "threshold chosen on validation data, and a conformal prediction set; a set with more than one "
        "class is referred to a clinician. Not for use as the sole basis of a diagnosis.",
        "",
        "## Data",
        f"- dataset: `{manifest['name']}` v{manifest['version']} ({manifest['description']})",
        f"- source: {describe_source(manifest['source'])}",
        f"- license: {manifest['license']}",
        "- rows: " + ", ".join(f"{s} {manifest['splits'][s]['rows']}" for s in ("train", "val", "test")),
        "",
        "## Training",
        f"- model: {config.model.family} / {config.model.preset}, options {json.dumps(config.model.options)}",
        f"- optimiser: AdamW lr {config.optim.lr:g}, weight decay {config.optim.weight_decay:g}, "
        f"batch {config.optim.batch_size}, up to {config.optim.epochs} epochs; seed {config.train.seed}",
        f"- from: {source.get('checkpoint')}" + (f" (search {source['search']}, trial {source['trial']})"
                                                  if source.get("search") else ""),
        "",
        "## Metrics (test split; threshold and temperature fitted on validation)",
        "| metric | test | val |",
        "|---|---|---|",
        f"| AUROC (95% CI) | {_fmt(test['auroc'])} ({_fmt(ci[0])}-{_fmt(ci[1])}) | {_fmt(val['auroc'])} |",
        *(f"| {k} | {_fmt(test.get(k))} | {_fmt(val.get(k))} |" for k in
          ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "auprc", "ece",
           "ece_calibrated", "brier", "calibration_slope", "calibration_intercept")),
        f"| threshold | {_fmt(metrics['threshold'])} | |",
        f"| temperature | {_fmt(metrics['temperature'])} | |",
        "",
        *_net_benefit_section(test.get("net_benefit")),
        "## Per-class results (test)",
        "| class | precision | recall | f1 | support |",
        "|---|---|---|---|---|",
        *(f"| {cls} | {_fmt(r.get('precision'))} | {_fmt(r.get('recall'))} | {_fmt(r.get('f1'))} | {r.get('support')} |"
          for cls, r in test.get("per_class", {}).items()),
        "",
        "## Conformal prediction sets",
        f"- target coverage {conformal['target']:.2f}, quantile {conformal['quantile']:.4f} (fitted on val)",
        f"- test coverage {conformal['test_coverage']:.3f}, mean set size {conformal['test_mean_set_size']:.2f}",
        "",
        *_subgroup_section(metrics.get("subgroups")),
        *_ood_section(ood, metrics.get("ood")),
        "## Promotion gate",
        *(f"- {g['metric']} = {_fmt(g['value'])} ({'>=' if g['min'] is not None else '<='} "
          f"{g['min'] if g['min'] is not None else g['max']}): {'passed' if g['passed'] else 'FAILED'}" for g in gate),
        "",
        "## Limitations",
        f"- Trained and tested on one dataset ({manifest['name']}); performance on other sites, devices or "
        "populations is unknown until measured there.",
        f"- Small test set ({manifest['splits']['test']['rows']} rows): see the interval around AUROC.",
        "- Quality flags at import: " + json.dumps(manifest["quality"]["duplicates_across_splits"]) +
        " exact duplicates across splits.",
        "",
        "## Provenance",
        f"- trained: {source.get('trained_at', 'unknown')} on {platform.node() or socket.gethostname()}",
        f"- registered: {datetime.now(timezone.utc).isoformat(timespec='seconds')}",
        f"- code: {_code_version()}",
    ]
    return "\n".join(lines) + "\n"


def _interval(value: Any, ci: list | None) -> str:
    low, high = ci or [None, None]
    return _fmt(value) + (f" ({_fmt(low)}-{_fmt(high)})" if low is not None else "")


def _subgroup_section(subgroups: dict[str, Any] | None) -> list[str]:
    """The test metrics per subgroup (`eval.subgroups`), each with its 95% interval."""
    if not subgroups:
        return []
    return ["## Subgroups (test; 95% intervals: bootstrap for AUROC, Wilson for the rest)",
            "| subgroup | n | positives | AUROC | accuracy | sensitivity | specificity |", "|---|---|---|---|---|---|---|",
            *(f"| {g['subgroup']} | {g['n']} | {g['positives']} | {_interval(g['auroc'], g['auroc_ci'])} | "
              f"{_interval(g['accuracy'], g['accuracy_ci'])} | {_interval(g['sensitivity'], g['sensitivity_ci'])} | "
              f"{_interval(g['specificity'], g['specificity_ci'])} |" for g in subgroups["groups"]),
            "", "Worst subgroup: " + ", ".join(f"{k} {_fmt(v)}" for k, v in subgroups["worst"].items()), ""]


def _net_benefit_section(rows: list[dict[str, float]] | None) -> list[str]:
    """Decision curve analysis on test (binary models): the net benefit of acting on the
    model at each threshold probability, beside treating everyone (treating no one: 0)."""
    if not rows:
        return []
    return ["## Net benefit (test; decision curve analysis, Vickers & Elkin 2006)",
            "| threshold probability | model | treat all | treat none |", "|---|---|---|---|",
            *(f"| {r['threshold']:.2f} | {r['model']:.3f} | {r['treat_all']:.3f} | 0 |" for r in rows), ""]


OOD_FITTED_ON = {
    "val": ("fitted on train", "val"),
    "fold_0": ("the ensemble's first member's features, fitted on the rows it trained on",
               "the fold it held out"),
}
"""How the model card names where a detector was fitted and thresholded (`OODDetector.threshold_set`)."""


def _ood_section(ood: dict[str, Any] | None, figures: Any) -> list[str]:
    if ood is None:
        return ["## Out-of-distribution detection", "- none: inputs unlike the training data are not flagged", ""]
    fitted_on, threshold_on = OOD_FITTED_ON[ood.get("threshold_set", "val")]
    lines = [
        "## Out-of-distribution detection",
        f"- score: {ood['method']} ({fitted_on}), threshold {_fmt(ood['threshold'])} chosen on {threshold_on} to flag "
        f"{ood['false_alarm_target']:.0%} of in-distribution cases (flagged there: {ood['val_false_alarm']:.1%} "
        f"of {ood['n_val']})",
        "- an input scoring above the threshold is answered `out_of_distribution: true` and referred to a "
        "clinician, whatever its prediction set",
    ]
    rows = _numbers(figures, "ood") if isinstance(figures, dict) else {}
    if rows:
        lines += ["", "| figure | value |", "|---|---|",
                  *(f"| {name.removeprefix('ood.')} | {_fmt(value)} |" for name, value in rows.items())]
    return [*lines, ""]


def promote_checkpoint(storage: Storage, checkpoint_key: str, config: MedrayConfig,
                       source: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate, gate and (if it passes) register the checkpoint; returns what happened."""
    from medray.train.evaluate import apply_temperature, conformal_quantile, set_coverage
    from medray.train.job import evaluate_stored_checkpoint

    source = {"checkpoint": storage.uri(checkpoint_key), **(source or {})}
    with tempfile.TemporaryDirectory(prefix="medray-promote-") as scratch:
        folder = Path(scratch)
        report = evaluate_stored_checkpoint(storage, checkpoint_key, folder / "report", config)
        metrics = {**report["metrics"], "classes": report["classes"]}
        gate = check_gate(metrics, config.promote.gate)
        manifest = read_manifest(storage, report["dataset"])
        name = config.promote.model_name or manifest["name"]
        failed = [g for g in gate if not g["passed"]]
        outcome = {"model": name, "checkpoint": source["checkpoint"], "gate": gate,
                   "metrics": {"val": metrics["val"], "test": metrics["test"]}}
        if failed:
            log.info("not promoted: %s", "; ".join(f"{g['metric']}={_fmt(g['value'])}" for g in failed))
            return {**outcome, "promoted": False, "failed": [g["metric"] for g in failed]}

        (y_val, z_val), (y_test, z_test) = report["outputs"]["val"], report["outputs"]["test"]
        temperature = metrics["temperature"]
        quantile = conformal_quantile(y_val, apply_temperature(z_val, temperature), config.promote.coverage)
        on_test = set_coverage(y_test, apply_temperature(z_test, temperature), quantile)
        conformal = {"target": config.promote.coverage, "quantile": quantile,
                     "test_coverage": on_test["coverage"], "test_mean_set_size": on_test["mean_set_size"]}
        ood = report["ood_detector"].summary()
        files = _version_files(storage, checkpoint_key, folder, report, metrics, conformal)
        history = json.loads((folder / "checkpoint" / PROGRESS).read_text()).get("history") or [{}]
        finished = history[-1].get("finished_at")
        if finished:
            source.setdefault("trained_at", datetime.fromtimestamp(finished, timezone.utc).isoformat(timespec="seconds"))
        registry = Registry(storage)
        card_path = folder / "model_card.md"
        card_path.write_text(model_card(name, config, manifest, metrics, gate, conformal, source, ood))
        files["model_card.md"] = card_path
        version = registry.register(name, files, {
            "dataset": report["dataset"], "dataset_sha256": manifest["source"].get("sha256"),
            "modality": manifest["modality"], "classes": report["classes"], "source": source,
            "metrics": {"val": _headline(metrics["val"]), "test": _headline(metrics["test"])},
            "gate": gate, "calibration": {"temperature": temperature, "threshold": metrics["threshold"],
                                          "conformal": conformal},
            "ood": {**ood, "metrics": metrics["ood"]},
            "config": config.model_dump(mode="json"),
        })
        pointer = registry.promote(name, version, "passed the gate") if config.promote.make_champion else None
    return {**outcome, "promoted": True, "version": version, "champion": pointer is not None}


def _headline(split: dict[str, Any]) -> dict[str, Any]:
    return {k: split.get(k) for k in ("auroc", "auroc_ci", "accuracy", "sensitivity", "specificity", "ece",
                                      "ece_calibrated", "brier", "calibration_slope", "n")}


def _version_files(storage: Storage, checkpoint_key: str, folder: Path, report: dict, metrics: dict,
                   conformal: dict) -> dict[str, Path]:
    checkpoint = storage.download_dir(checkpoint_key, folder / "checkpoint")
    files = {name: checkpoint / name for name in MODEL_FILES}
    calibration = folder / CALIBRATION
    calibration.write_text(json.dumps({"temperature": metrics["temperature"], "threshold": metrics["threshold"],
                                       "conformal": conformal, "ood": report["ood_detector"].to_dict()}))
    files[CALIBRATION] = calibration
    for name in report["files"]:
        files[name] = folder / "report" / name
    return files



