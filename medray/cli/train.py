"""`medray train` and `medray evaluate`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from medray.cli.common import add_common, emit


def train(args: argparse.Namespace) -> None:
    from medray.api import run_training

    folds = [f"train.folds={args.folds}"] if args.folds else []
    summary = run_training(args.config, [*args.overrides, *folds], storage=args.storage)
    emit(args, summary, lambda: result_text(summary))


def result_text(summary: dict[str, Any]) -> str:
    if summary.get("cv"):
        runs = f"{summary['cv']['folds']} folds, an ensemble of their models"
    else:
        runs = (f"epochs run: {summary['epochs_run']}   best epoch: "
                f"{summary['best_epoch'] + 1 if summary['best_epoch'] is not None else 'n/a'}")
    lines = [f"run:        {summary['run']}", f"checkpoint: {summary['checkpoint']}",
             f"dataset:    {summary['dataset']}   {runs}", ""]
    # F1 is class 1's for two classes, the macro average over classes for more.
    lines.append(f"{'split':<6}{'AUROC (95% CI)':<24}{'acc':>7}{'bal acc':>9}{'sens':>7}{'spec':>7}{'F1':>7}"
                 f"{'ECE':>7}{'ECE cal':>9}")
    # A cross-validated ensemble's "val" is every train + val row, predicted out of fold.
    names = {"val": "oof" if summary["metrics"].get("calibration_set") == "out_of_fold" else "val", "test": "test"}
    for split in ("val", "test"):
        m = summary["metrics"][split]
        ci = m.get("auroc_ci") or [None, None]
        auroc = "n/a" if m["auroc"] is None else f"{m['auroc']:.3f} ({ci[0]:.3f}-{ci[1]:.3f})" if ci[0] is not None \
            else f"{m['auroc']:.3f}"
        lines.append(f"{names[split]:<6}{auroc:<24}" + "".join(
            f"{'n/a' if m.get(k) is None else format(m[k], '.3f'):>{w}}"
            for k, w in (("accuracy", 7), ("balanced_accuracy", 9), ("sensitivity", 7), ("specificity", 7),
                         ("f1", 7), ("ece", 7), ("ece_calibrated", 9))))
    test = summary["metrics"]["test"]
    if test.get("auprc") is not None:
        lines.append(f"test AUPRC {test['auprc']:.3f}   challenge score min(sens, PPV) "
                     f"{'n/a' if test.get('challenge_score') is None else format(test['challenge_score'], '.3f')}")
    lines += cv_text(summary.get("cv"))
    lines += baselines_text(summary["metrics"].get("baselines"), test)
    lines += ood_text(summary["metrics"].get("ood"))
    if summary.get("report"):
        lines += ["", "report: " + ", ".join(summary["report"].values())]
    return "\n".join(lines)


def cv_text(cv: dict[str, Any] | None) -> list[str]:
    """A cross-validation's folds: each one's held-out figures, then mean ± sd [95% CI]."""
    if not cv:
        return []
    number = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    keys = ("auroc", "accuracy", "balanced_accuracy", "brier")
    lines = ["", f"{cv['folds']}-fold cross-validation over {cv['rows']} train + val rows (each fold's model on "
                 "the fold it did not train on, at the most probable class); oof: all of them, calibrated",
             f"{'fold':<6}{'n':>5}{'AUROC':>8}{'acc':>8}{'bal acc':>9}{'Brier':>8}{'epochs':>8}{'kept':>6}"]
    for f in cv["per_fold"]:
        kept = "n/a" if f["best_epoch"] is None else str(f["best_epoch"] + 1)
        lines.append(f"{f['fold']:<6}{f['n']:>5}" + "".join(f"{number(f[k]):>{w}}" for k, w in zip(keys, (8, 8, 9, 8)))
                     + f"{f['epochs_run']:>8}{kept:>6}")
    for k in keys:
        s = cv[k]
        if s["mean"] is not None:
            ci = "" if s["ci"][0] is None else f" [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}]"
            lines.append(f"  {k:<18}{s['mean']:.3f} ± {number(s['sd'])}{ci}")
    return lines


def baselines_text(baselines: dict[str, Any] | None, test: dict[str, Any]) -> list[str]:
    """The same-run baselines beside the model, on the same test patients: AUROC and
    AUPRC for two classes, macro AUROC, accuracy and macro-F1 for more."""
    if not baselines:
        return []
    number = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    multiclass = any("macro_f1" in b for b in baselines.values())
    names = ("accuracy", "macro-F1") if multiclass else ("accuracy", "AUPRC")
    keys = (("accuracy", "accuracy"), ("f1", "macro_f1")) if multiclass else (("accuracy", "accuracy"),
                                                                              ("auprc", "auprc"))
    lines = ["", f"{'on the test split':<28}{'AUROC (95% CI)':<24}" + "".join(f"{n:>10}" for n in names) + f"{'n':>7}",
             f"{'model':<28}{number(test['auroc']):<24}" + "".join(f"{number(test.get(k)):>10}" for k, _ in keys)
             + f"{test['n']:>7}"]
    for name, b in baselines.items():
        ci = b["auroc_ci"]
        auroc = number(b["auroc"]) + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci[0] is not None else "")
        lines.append(f"{name:<28}{auroc:<24}" + "".join(f"{number(b.get(k)):>10}" for _, k in keys) + f"{b['n']:>7}")
    return lines


def ood_text(ood: dict[str, Any] | None) -> list[str]:
    """The out-of-distribution detector's figures on test and the OOD sets, one line per kind."""
    if not ood:
        return []
    pct = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    lines = ["", f"out of distribution ({ood['detector']['method']}): false alarms on test "
                 f"{pct(ood['false_alarm_rate'])} (target {pct(ood['detector']['false_alarm_target'])})"]
    for kind in ("far", "near"):
        pooled = ood.get(kind)
        if pooled:
            lines.append(f"  {kind:<5}AUROC {pooled['auroc']:.3f} (lowest set {pooled['min_auroc']:.3f}), "
                         f"detected {pct(pooled['detection_rate'])}: {', '.join(pooled['sets'])}")
    return lines


def evaluate(args: argparse.Namespace) -> None:
    from medray.api import evaluate as evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, args.config, args.overrides, split=args.split, storage=args.storage)
    emit(args, result, lambda: json.dumps(result["metrics"], indent=2))


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train", help="train a model with Ray Train and evaluate it",
        description="Train from a YAML config (see train/configs/), with key=value overrides, e.g. "
                    "`medray train train/configs/wdbc_attention.yaml optim.lr=3e-4 scaling.num_workers=2`.",
    )
    parser.add_argument("config", help="YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--folds", type=int, metavar="K",
                        help="K-fold cross-validation over train + val: the K models, one per fold, answer as "
                             "one ensemble (train.folds=K)")
    add_common(parser)
    parser.set_defaults(handler=train)

    parser = commands.add_parser("evaluate", help="re-evaluate a stored checkpoint")
    parser.add_argument("checkpoint", help="a run name (its best checkpoint) or a checkpoint URI")
    parser.add_argument("--split", default="test", choices=["val", "test"])
    parser.add_argument("--config", help="YAML config for evaluation settings (eval.*); default: the run's own")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    add_common(parser)
    parser.set_defaults(handler=evaluate)
