"""Model quality that holds: every shipped config trained with several seeds, test metrics
as mean ± sd over them beside the level the quality issue asks for, the published
results and the same runs' classical baselines.

Imports each config's real dataset once from the shared data folder (../shared/data,
README there) into a scratch storage, trains the config as shipped (its
`scaling.num_workers`) with `train.seed=0..N-1` through `medray.api.run_training`, and
collects the test split's figures: AUROC with its 95% CI, accuracy, AUPRC, Brier (binary),
macro-F1 (K classes), the challenge score (ICU), and each of the run's
`metrics.baselines` on the same test rows. Levels and published results:
`medray.quality.QUALITY`. Prints one line per finished run, then the table; writes the
JSON (every per-seed figure, the command line, versions, machine) and a PNG beside it.

    python benchmarks/quality.py [--configs breastmnist_cnn,ecg200_rnn,...] [--seeds 5]
        [--data ../shared/data] [--storage URI] [--out benchmarks/results/quality.json]
        [--set key=value ...] [--search SAMPLES]
    python benchmarks/quality.py --from-json benchmarks/results/quality.json   # the table again

On 2 CPU cores: BreastMNIST about 3 min a run, ECG200 1.5 min, WDBC and Cleveland under
a minute; the ICU configs 2-3 min and the text ones 1-7 min.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
CONFIGS = PROJECT / "train" / "configs"
PUBLISHED_COLOURS = ("#16a34a", "#9333ea", "#ea580c", "#0891b2", "#a16207", "#db2777")
"""Dotted lines of the published results; the level's dashed line is red."""


def run_figures(summary: dict[str, Any], metrics: tuple[str, ...]) -> dict[str, Any]:
    """One run's test figures under the benchmark's names, and its baselines'."""
    test = summary["metrics"]["test"]
    # `f1` is the macro average for K classes; only those configs ask for macro_f1.
    named = {**test, "macro_f1": test.get("f1")}
    figures = {m: named.get(m) for m in metrics}
    figures["auroc_ci"] = test.get("auroc_ci")
    baselines = {name: {m: b.get(m) for m in metrics if b.get(m) is not None} | {"auroc_ci": b.get("auroc_ci"),
                                                                                  "n": b.get("n")}
                 for name, b in (summary["metrics"].get("baselines") or {}).items()}
    return {"test": figures, "n_test": test.get("n"), "baselines": baselines,
            "epochs_run": summary.get("epochs_run"), "best_epoch": summary.get("best_epoch"),
            **({"search": summary["search"]} if "search" in summary else {})}


def config_summary(stem: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± sd over seeds of the model's and each baseline's figures, and each level met or not."""
    from medray.quality import QUALITY, level_met
    from medray.train.evaluate import mean_sd

    quality = QUALITY[stem]
    model = {m: mean_sd([r["test"].get(m) for r in runs]) for m in quality.metrics}
    names = sorted({name for r in runs for name in r["baselines"]})
    baselines = {name: {m: mean_sd([r["baselines"].get(name, {}).get(m) for r in runs])
                        for m in quality.metrics if any(m in r["baselines"].get(name, {}) for r in runs)}
                 for name in names}
    levels = [{"metric": lv.metric, "level": lv.text(), "at_least": lv.at_least, "baseline": lv.baseline,
               "source": lv.source, "met": level_met(lv, model, baselines)} for lv in quality.levels]
    return {"dataset": quality.dataset, "seeds": [r["seed"] for r in runs], "model": model, "baselines": baselines,
            "levels": levels, "published": [{"method": p.method, "figures": dict(p.figures), "source": p.source}
                                            for p in quality.published],
            "note": quality.note, "runs": runs}


def table(results: dict[str, dict[str, Any]]) -> str:
    """The printed summary: per config and metric, mean ± sd (the seeds' values), the
    level and whether the mean meets it, the published results, the baselines' mean ± sd."""
    from medray.quality import METRIC_NAMES, QUALITY, mean_sd_text

    header = f"{'config':<28}{'metric':<14}{'mean ± sd':<16}{'per seed':<42}{'level':<50}{'met':<5}"
    lines = [header, "-" * len(header)]
    for stem, result in results.items():
        quality = QUALITY[stem]
        levels = {lv["metric"]: lv for lv in result["levels"]}
        for i, metric in enumerate(quality.metrics):
            summary = result["model"][metric]
            if summary["mean"] is None:
                continue
            values = " ".join("n/a" if v is None else f"{v:.3f}" for v in summary["values"])
            level = levels.get(metric)
            met = "" if level is None else {True: "yes", False: "NO", None: "n/a"}[level["met"]]
            lines.append(f"{stem if i == 0 else '':<28}{METRIC_NAMES[metric]:<14}{mean_sd_text(summary):<16}"
                         f"{values:<42}{'' if level is None else level['level']:<50}{met:<5}")
            for name, figures in result["baselines"].items():
                if metric in figures and figures[metric]["mean"] is not None:
                    lines.append(f"{'':<28}{'':<14}{mean_sd_text(figures[metric]):<16}{'baseline ' + name:<42}")
            for published in quality.published:
                if metric in published.figures:
                    lines.append(f"{'':<28}{'':<14}{published.figures[metric]:<16.3f}"
                                 f"{'published ' + published.method:<42}{published.source}")
        if not result["baselines"]:
            lines.append(f"{'':<28}{'':<14}{'':<16}(no same-run baseline: the modality computes none)")
        lines.append("")
    return "\n".join(line.rstrip() for line in lines)


def _error_bar(summary: dict[str, Any]) -> list[float]:
    """The sd as matplotlib's yerr; none drawn for one seed (sd None)."""
    return [math.nan if summary["sd"] is None else summary["sd"]]


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    """Per config, one panel per levelled metric (else AUROC): the seeds' figures as
    points, their mean ± sd, the level as a dashed line, published results dotted, the
    baselines' mean ± sd beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medray.quality import METRIC_NAMES, mean_sd_text

    panels = [(stem, metric) for stem, r in results.items()
              for metric in ([lv["metric"] for lv in r["levels"]] or ["auroc"])
              if r["model"].get(metric, {}).get("mean") is not None]
    if not panels:
        return
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (stem, metric) in zip(axes.flat, panels):
        result = results[stem]
        summary = result["model"][metric]
        values = [v for v in summary["values"] if v is not None]
        ax.scatter([0] * len(values), values, color="#2563eb", alpha=0.6, label="seeds", zorder=3)
        ax.errorbar([0.25], [summary["mean"]], yerr=_error_bar(summary), fmt="o", color="#1e3a8a", capsize=5,
                    label=f"mean ± sd {mean_sd_text(summary)}", zorder=3)
        ticks, labels = [0.1], ["medray"]
        for j, (name, figures) in enumerate(result["baselines"].items(), start=1):
            if figures.get(metric, {}).get("mean") is not None:
                b = figures[metric]
                ax.errorbar([j], [b["mean"]], yerr=_error_bar(b), fmt="s", color="#64748b", capsize=5)
                ticks.append(j)
                labels.append(name.replace("_", " "))
        for level in result["levels"]:
            if level["metric"] != metric:
                continue
            bar = level["at_least"] if level["baseline"] is None else \
                result["baselines"].get(level["baseline"], {}).get(metric, {}).get("mean")
            if bar is not None:
                ax.axhline(bar, color="#dc2626", linestyle="--", label=f"level {bar:.3g}" + (
                    f" ({level['baseline']}'s mean)" if level["baseline"] else ""))
        for colour, published in zip(PUBLISHED_COLOURS, result["published"]):
            if metric in published["figures"]:
                ax.axhline(published["figures"][metric], color=colour, linestyle=":",
                           label=f"{published['method']} {published['figures'][metric]:g}")
        ax.set_xticks(ticks, labels, fontsize=7, rotation=15)
        ax.set_xlim(-0.5, max(ticks) + 0.5)
        ax.set_title(f"{stem}: test {METRIC_NAMES[metric]}, {len(values)} seeds", fontsize=9)
        ax.legend(fontsize=6, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("medray", "ray", "torch", "scikit-learn", "numpy"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def git_commit() -> str | None:
    import subprocess

    done = subprocess.run(["git", "-C", str(PROJECT), "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(PROJECT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True)
    return (done.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")) if done.returncode == 0 else None


def searched(stem: str, overrides: list[str], storage, samples: int) -> dict[str, Any]:
    """A search of `samples` trials over the config, and its best checkpoint (a
    cross-validated search's ensemble) evaluated with the best trial's own config, as
    `medray tune --promote` would: what `run_figures` reads from a training run."""
    from medray import api
    from medray.train.job import evaluate_stored_checkpoint
    from medray.tune.spaces import apply_params

    summary = api.run_search(CONFIGS / f"{stem}.yaml", overrides, storage=storage, samples=samples)
    best = summary["best"]
    config = apply_params(storage.read_json(f"runs/{summary['search']}/search.json")["base"], best["config"])
    with tempfile.TemporaryDirectory(prefix="medray-quality-eval-") as scratch:
        report = evaluate_stored_checkpoint(storage, storage.key_of(best["checkpoint"]), Path(scratch), config)
    return {"metrics": report["metrics"], "epochs_run": best["epochs_run"], "best_epoch": report["best_epoch"],
            "search": {"trial": best["trial"], "config": best["config"], summary["metric"]: best[summary["metric"]],
                       "trial_epochs": summary["trial_epochs"]}}


def main() -> None:
    from medray.quality import QUALITY

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=",".join(QUALITY),
                        help="comma-separated config names in train/configs (default: all shipped)")
    parser.add_argument("--seeds", type=int, default=5, help="train.seed = 0 .. N-1 for each config")
    parser.add_argument("--data", type=Path, default=PROJECT.parent / "shared" / "data")
    parser.add_argument("--storage", help="storage URI (default: a scratch file:// folder)")
    parser.add_argument("--out", type=Path, default=PROJECT / "benchmarks" / "results" / "quality.json",
                        help="the JSON; the PNG is written beside it")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="key=value",
                        help="a config override for every run (repeatable)")
    parser.add_argument("--search", type=int, metavar="SAMPLES",
                        help="each seed runs a search of SAMPLES trials (`medray tune`, the config's tune: "
                             "section and --set) and measures its best checkpoint, chosen on train + val")
    parser.add_argument("--from-json", type=Path, metavar="JSON",
                        help="train nothing: print the table and redraw the PNG of a finished run's JSON")
    args = parser.parse_args()
    if args.from_json:
        results = json.loads(args.from_json.read_text())["configs"]
        plot(results, args.from_json.with_suffix(".png"))
        print(table(results))
        return
    stems = args.configs.split(",")
    unknown = [s for s in stems if s not in QUALITY or not (CONFIGS / f"{s}.yaml").is_file()]
    if unknown:
        parser.error(f"no shipped config or quality entry: {', '.join(unknown)} (known: {', '.join(QUALITY)})")
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")

    from medray.cluster import console

    # Ray's and the workers' output go to a log file, as `medray train` sends them; the
    # progress lines and the table to the terminal.
    out = console.setup("quality", verbose=False)
    out.epoch_every = 1000  # one line per run is the progress here, not one per epoch

    def say(text: str) -> None:
        print(text, file=out.terminal_err, flush=True)

    from medray import api
    from medray.cluster.storage import Storage
    from medray.quality import shared_data_request
    from medray.train.data.importers import import_dataset

    started = time.monotonic()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results: dict[str, dict[str, Any]] = {}
    report: dict[str, Any] = {
        "benchmark": "quality", "command": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": git_commit(),
        "versions": versions(), "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "seeds": list(range(args.seeds)), "overrides": args.overrides, "search_samples": args.search,
        "configs": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="medray-quality-") as scratch:
        storage = Storage(args.storage or f"file://{scratch}/store")
        imported: set[str] = set()
        say(f"quality: {len(stems)} configs x {args.seeds} seeds; Ray's output: {out.log_path}")
        for stem in stems:
            dataset = QUALITY[stem].dataset
            if dataset not in imported:
                manifest = import_dataset(storage, shared_data_request(dataset, args.data, Path(scratch)))
                imported.add(dataset)
                say(f"imported {dataset} v{manifest['version']}: "
                    + ", ".join(f"{s} {i['rows']}" for s, i in manifest["splits"].items()))
            runs = []
            for seed in range(args.seeds):
                run_started = time.monotonic()
                overrides = [*args.overrides, f"train.seed={seed}", f"train.name=quality-{stem}-seed{seed}-{stamp}"]
                summary = (searched(stem, overrides, storage, args.search) if args.search else
                           api.run_training(CONFIGS / f"{stem}.yaml", overrides, storage=storage))
                run = {"seed": seed, **run_figures(summary, QUALITY[stem].metrics),
                       "seconds": round(time.monotonic() - run_started, 1)}
                runs.append(run)
                shown = ", ".join(f"{k} {v:.3f}" for k, v in run["test"].items() if isinstance(v, float))
                say(f"{stem} seed {seed}: {shown}; " + "; ".join(
                    f"{name} " + ", ".join(f"{k} {v:.3f}" for k, v in b.items() if isinstance(v, float) and k != "n")
                    for name, b in run["baselines"].items()) + f" ({run['seconds']:.0f} s)")
                results[stem] = config_summary(stem, runs)
                report["seconds"] = round(time.monotonic() - started, 1)
                args.out.write_text(json.dumps(report, indent=2))  # a run cut short keeps what it measured
    plot(results, args.out.with_suffix(".png"))
    print(table(results), file=out.terminal_out, flush=True)
    say(f"{report['seconds']:.0f} s; JSON {args.out}, plot {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
