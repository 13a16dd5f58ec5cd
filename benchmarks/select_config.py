"""Choose a config on train + val alone: each candidate (a set of overrides of a shipped
config) is cross-validated over the train and val splits (`train.folds`), and the
candidates are ranked by their mean held-out accuracy over the folds, ties broken by
the mean held-out log loss. The test split plays no part in the choice: this script
never reads a test figure (the runs compute them, as every run does; they stay in the
scratch storage).

Medical validation splits are tiny (Cleveland 46 rows, WDBC 86): one split ranks
candidates by a row or two. K folds over train + val hold every one of those rows out
once, and repeating them with new seeds (new folds, new initialisations) averages out
the luck of one cut, so the ranking rests on many times the cases. Once a candidate is chosen, its test
figures over 5 seeds come from `benchmarks/quality.py`, run once, after the choice.

    python benchmarks/select_config.py --config wdbc_attention [--folds 5] [--seeds 3]
        [--candidates NAME=key=value,key=value ...] [--data ../shared/data]
        [--out benchmarks/results/select_wdbc_attention.json]

Without --candidates, the config's entry in CANDIDATES below. Prints one line per
candidate as it finishes, then the ranking; the JSON keeps every fold's figures, and a
rerun into the same JSON measures only the candidates it does not hold yet.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
CONFIGS = PROJECT / "train" / "configs"
RANKED_METRICS = ("accuracy", "log_loss", "auroc", "brier", "balanced_accuracy")

_TABLE_CANDIDATES: dict[str, list[str]] = {
    "shipped": [],
    "narrow16": ["model.options.dims=[16]"],
    "wide64": ["model.options.dims=[64]"],
    "two_stages": ["model.options.dims=[64,32]"],
    "dropout0.2": ["model.options.dropout=0.2"],
    "decay0.01": ["optim.weight_decay=0.01"],
    "decay0.1": ["optim.weight_decay=0.1"],
    "lr3e-4": ["optim.lr=0.0003"],
    "ft_transformer": ["model.preset=ft_transformer", "model.options.dims="],
}
CANDIDATES: dict[str, dict[str, list[str]]] = {
    "wdbc_attention": _TABLE_CANDIDATES,
    # ECG200's InceptionTime is the paper's network with ecg200_rnn's training recipe,
    # fixed before it ran: its cross-validated estimate alone, no choice among candidates.
    "ecg200_cnn": {"shipped": []},
    "cleveland_attention": {**_TABLE_CANDIDATES, "one_stage32": ["model.options.dims=[32]"]},
}
"""Each config's candidates: a name and the overrides it applies to the shipped config.
Written down before any was run, and chosen for small tables: narrower or wider tokens,
one stage or two, dropout, stronger weight decay, a slower learning rate, and the
FT-Transformer preset."""


def parse_candidate(text: str) -> tuple[str, list[str]]:
    """NAME=key=value,key=value → (NAME, [key=value, ...]); NAME= alone is the shipped config.
    A comma starts a new override only before `key=`, so a list value (`dims=[64,32]`) stays whole."""
    name, _, overrides = text.partition("=")
    if not name:
        raise argparse.ArgumentTypeError(f"a candidate is NAME=key=value,...; got {text!r}")
    return name, [o for o in re.split(r",(?=[\w.]+=)", overrides) if o]


def ranking(results: dict[str, dict[str, Any]]) -> list[str]:
    """Candidate names, best first: highest mean fold accuracy, then lowest mean log loss."""
    def key(name: str) -> tuple[float, float]:
        cv = results[name]["cv"]
        return -(cv["accuracy"]["mean"] or 0.0), cv["log_loss"]["mean"] or float("inf")
    return sorted(results, key=key)


def main() -> None:
    from medray.quality import QUALITY

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, choices=sorted(CANDIDATES), help="a shipped config's name")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3,
                        help="repeat the cross-validation with train.seed = 0 .. N-1 (new folds, new initialisations)")
    parser.add_argument("--candidates", nargs="+", type=parse_candidate, metavar="NAME=key=value,...")
    parser.add_argument("--data", type=Path, default=PROJECT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/select_{config}.json")
    args = parser.parse_args()
    candidates = dict(args.candidates) if args.candidates else CANDIDATES[args.config]
    out_path = args.out or PROJECT / "benchmarks" / "results" / f"select_{args.config}.json"

    from medray.cluster import console

    out = console.setup("select", verbose=False)
    out.epoch_every = 1000

    def say(text: str) -> None:
        print(text, file=out.terminal_err, flush=True)

    from medray import api
    from medray.cluster.storage import Storage
    from medray.quality import shared_data_request
    from medray.train.data.importers import import_dataset
    from medray.train.evaluate import mean_sd

    started = time.monotonic()
    # Candidates an earlier invocation finished (same config, folds and seeds) are kept, not rerun.
    earlier = json.loads(out_path.read_text()) if out_path.is_file() else {}
    same = (earlier.get("config"), earlier.get("folds"), earlier.get("seeds")) == (args.config, args.folds, args.seeds)
    results: dict[str, dict[str, Any]] = dict(earlier.get("candidates", {})) if same else {}
    report = {"benchmark": "select_config", "config": args.config, "folds": args.folds, "seeds": args.seeds,
              "command": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "rule": "highest mean fold accuracy over train + val, then lowest mean fold log loss; test unread",
              "candidates": results}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="medray-select-") as scratch:
        storage = Storage(f"file://{scratch}/store")
        import_dataset(storage, shared_data_request(QUALITY[args.config].dataset, args.data, Path(scratch)))
        for name, overrides in candidates.items():
            if results.get(name, {}).get("overrides") == overrides:
                say(f"{name}: measured before ({out_path.name}), kept")
                continue
            run_started, per_fold = time.monotonic(), []
            for seed in range(args.seeds):
                summary = api.run_training(CONFIGS / f"{args.config}.yaml",
                                           [*overrides, f"train.folds={args.folds}", f"train.seed={seed}",
                                            "scaling.num_workers=1", f"train.name=select-{name}-seed{seed}"],
                                           storage=storage)
                per_fold += [{"seed": seed, **fold} for fold in summary["cv"]["per_fold"]]
            results[name] = {"overrides": overrides, "per_fold": per_fold,
                             "cv": {m: mean_sd([f[m] for f in per_fold]) for m in RANKED_METRICS},
                             "seconds": round(time.monotonic() - run_started, 1)}
            cv = results[name]["cv"]
            say(f"{name}: accuracy {cv['accuracy']['mean']:.4f} ± {cv['accuracy']['sd']:.4f}, "
                f"log loss {cv['log_loss']['mean']:.4f}, AUROC {cv['auroc']['mean']:.4f} "
                f"({results[name]['seconds']:.0f} s)")
            report["seconds"] = round(time.monotonic() - started, 1)
            out_path.write_text(json.dumps(report, indent=2))
    order = ranking(results)
    report["ranking"], report["chosen"] = order, order[0]
    out_path.write_text(json.dumps(report, indent=2))
    print(f"{'candidate':<16} {'accuracy':>16} {'log loss':>9} {'AUROC':>7}  overrides", file=out.terminal_out)
    for name in order:
        cv = results[name]["cv"]
        print(f"{name:<16} {cv['accuracy']['mean']:.4f} ± {cv['accuracy']['sd']:.4f} {cv['log_loss']['mean']:>9.4f} "
              f"{cv['auroc']['mean']:>7.4f}  {' '.join(results[name]['overrides']) or '(as shipped)'}",
              file=out.terminal_out)
    say(f"chosen: {order[0]}; {report['seconds']:.0f} s; JSON {out_path}")


if __name__ == "__main__":
    main()
