"""What each shipped config is held to, and the results published on the same data.

One table (`QUALITY`, keyed by the config's file stem in train/configs/): the levels of
the quality issue (a metric's mean over seeds on the test split, at least a number or at
least a same-run baseline's mean), the published results beside them
(../shared/data/README.md), and where each config's dataset comes from in that folder.
`benchmarks/quality.py` measures every config against it; the demo shows the published
results beside its own. `level_met` judges a config's summary over seeds (each figure's
`medray.train.evaluate.mean_sd`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medray.train.data.importers import ImportRequest

METRIC_NAMES = {"auroc": "AUROC", "accuracy": "ACC", "macro_f1": "macro-F1", "auprc": "AUPRC",
                "brier": "Brier", "challenge_score": "min(Se, PPV)"}
"""The figures the quality benchmark records per run, as tables name them."""
LOWER_IS_BETTER = frozenset({"brier"})


@dataclass(frozen=True)
class Level:
    """The quality issue's bar for one metric: the mean over seeds on the test split is
    at least `at_least`, or at least the same runs' `baseline` mean (its name in
    `metrics.baselines`)."""

    metric: str
    at_least: float | None = None
    baseline: str | None = None
    source: str = ""
    """Where the level is stated."""

    def text(self) -> str:
        return f"{METRIC_NAMES[self.metric]} >= " + (f"{self.at_least:g}" if self.baseline is None
                                                      else f"same-run {self.baseline}")


@dataclass(frozen=True)
class Published:
    """A result published on the same dataset (its test split unless `source` says not)."""

    method: str
    figures: Mapping[str, float]
    source: str

    def text(self) -> str:
        return f"{self.method}: " + ", ".join(f"{METRIC_NAMES[k]} {v:g}" for k, v in self.figures.items())


@dataclass(frozen=True)
class ConfigQuality:
    dataset: str
    """The config's `data.dataset`, a key of `shared_data_requests`."""
    metrics: tuple[str, ...]
    """What the benchmark reports for it, the levelled metrics first."""
    levels: tuple[Level, ...] = ()
    published: tuple[Published, ...] = ()
    note: str = ""

    def published_text(self) -> str:
        return "; ".join(f"{p.text()} ({p.source})" for p in self.published)


MEDMNIST = "MedMNIST v2, Yang et al. 2023"
QUALITY_ISSUE = "quality issue ('Quality that holds')"
BINARY = ("auroc", "accuracy", "auprc", "brier")
ICU = ("auroc", "auprc", "challenge_score", "accuracy", "brier")
TEXT = ("macro_f1", "accuracy", "auroc", "brier")
ICU_PUBLISHED = (Published("GRU-D", {"auroc": 0.84}, "various splits of set A, 48 h"),
                 Published("SeFT", {"auroc": 0.85}, "various splits of set A, 48 h"),
                 Published("Raindrop", {"auroc": 0.83}, "various splits of set A, 48 h"),
                 Published("SAPS-I (outcomes file)", {"auroc": 0.650}, "set A, 3,810 patients"))
ICU_LEVEL = Level("auroc", 0.85, source="ICU issue: GRU-D mean AUROC 0.85 (README, ICU stays)")
TEXT_PUBLISHED = (Published("TF-IDF + LR, stratified 80/20", {"accuracy": 0.61, "macro_f1": 0.58},
                            "../shared/data/README.md"),)
TEXT_LEVEL = Level("macro_f1", baseline="tfidf_logistic_regression",
                   source="text issue: at least the same runs' TF-IDF baseline (README, clinical text)")

ECG200_LEVEL = Level("accuracy", 0.90, source=QUALITY_ISSUE)
ECG200_PUBLISHED = (Published("1-NN Euclidean", {"accuracy": 0.88}, "UCR archive"),
                    Published("ResNet (mean of 5)", {"accuracy": 0.874}, "Fawaz et al. 2019"),
                    Published("ROCKET (mean of 10)", {"accuracy": 0.906}, "angus924/rocket"),
                    Published("InceptionTime (ensemble of 5)", {"accuracy": 0.930}, "hfawaz/InceptionTime"))

QUALITY: dict[str, ConfigQuality] = {
    "breastmnist_cnn": ConfigQuality(
        "breastmnist", BINARY,
        (Level("auroc", 0.92, source=QUALITY_ISSUE), Level("accuracy", 0.88, source=QUALITY_ISSUE)),
        (Published("Google AutoML Vision", {"auroc": 0.919, "accuracy": 0.861}, MEDMNIST),
         Published("ResNet-18 (28)", {"auroc": 0.901, "accuracy": 0.863}, MEDMNIST))),
    "breastmnist_cnn_224": ConfigQuality(
        "breastmnist224", BINARY, (),
        (Published("ResNet-18 (224)", {"auroc": 0.891, "accuracy": 0.833}, MEDMNIST),),
        note="the benchmark upscales the 28x28 file (no network here), not MedMNIST+'s 224x224 images"),
    "ecg200_rnn": ConfigQuality("ecg200", BINARY, (ECG200_LEVEL,), ECG200_PUBLISHED),
    "ecg200_cnn": ConfigQuality("ecg200", BINARY, (ECG200_LEVEL,), ECG200_PUBLISHED),
    "wdbc_attention": ConfigQuality(
        "wdbc", BINARY, (Level("accuracy", 0.975, source=QUALITY_ISSUE),),
        (Published("Street et al. 1993", {"accuracy": 0.975}, "repeated 10-fold CV, not a test split"),)),
    "cleveland_attention": ConfigQuality(
        "cleveland", BINARY, (Level("accuracy", 0.85, source=QUALITY_ISSUE),),
        (Published("Detrano et al. 1989", {"accuracy": 0.77}, "about 77%"),
         Published("NTgrowth", {"accuracy": 0.770}, "Aha & Kibler 1988"))),
    "physionet2012_rnn": ConfigQuality("p12", ICU, (ICU_LEVEL,), ICU_PUBLISHED),
    "physionet2012_attention": ConfigQuality("p12", ICU, (ICU_LEVEL,), ICU_PUBLISHED),
    "medical_abstracts_linear": ConfigQuality("abstracts", TEXT, (TEXT_LEVEL,), TEXT_PUBLISHED),
    "medical_abstracts_attention": ConfigQuality("abstracts", TEXT, (TEXT_LEVEL,), TEXT_PUBLISHED),
    "medical_abstracts_rnn": ConfigQuality("abstracts", TEXT, (TEXT_LEVEL,), TEXT_PUBLISHED),
}


# Summaries over seeds ----------------------------------------------------------------
def level_met(level: Level, model: Mapping[str, dict[str, Any]],
              baselines: Mapping[str, Mapping[str, dict[str, Any]]]) -> bool | None:
    """Whether the model's mean over seeds meets `level` (`model`: metric -> mean_sd();
    `baselines`: name -> metric -> mean_sd()); None when a figure is missing."""
    mean = model.get(level.metric, {}).get("mean")
    bar = level.at_least if level.baseline is None else \
        baselines.get(level.baseline, {}).get(level.metric, {}).get("mean")
    if mean is None or bar is None:
        return None
    return mean <= bar if level.metric in LOWER_IS_BETTER else mean >= bar


def mean_sd_text(summary: Mapping[str, Any], digits: int = 3) -> str:
    if summary.get("mean") is None:
        return "n/a"
    sd = "n/a" if summary["sd"] is None else f"{summary['sd']:.{digits}f}"  # one seed
    return f"{summary['mean']:.{digits}f} ± {sd}"


# The datasets in ../shared/data --------------------------------------------------------
def shared_data_request(dataset: str, folder: Path, scratch: Path) -> ImportRequest:
    """The import request for a shipped config's dataset (by the name the config reads)
    from the shared data folder (../shared/data/README.md), or scikit-learn's WDBC. The
    224x224 BreastMNIST is the 28x28 file upscaled, written under `scratch`."""
    from medray.demo.run import cleveland_request
    from medray.train.data.importers import ImportRequest
    from medray.train.data.medmnist import write_resized_medmnist

    if dataset == "breastmnist224":
        upscaled = write_resized_medmnist(folder / "breastmnist.npz", scratch, 224)
        return ImportRequest(kind="medmnist", source=str(upscaled), name=dataset)
    requests = {
        "breastmnist": ImportRequest(kind="medmnist", source=str(folder / "breastmnist.npz"), name=dataset),
        "ecg200": ImportRequest(kind="ucr", source=str(folder), dataset="ECG200", name=dataset),
        "cleveland": cleveland_request(str(folder / "processed.cleveland.data"), dataset),
        "wdbc": ImportRequest(kind="sklearn", source="breast_cancer", name=dataset),
        "p12": ImportRequest(kind="physionet2012", source=str(folder / "physionet2012" / "set-a.tar.gz"),
                             outcomes=str(folder / "physionet2012" / "Outcomes-a.txt"), name=dataset),
        "abstracts": ImportRequest(kind="text", source=str(folder / "medical_abstracts.csv"),
                                   text_column="medical_abstract", label_column="condition_label",
                                   label_names=str(folder / "medical_abstracts_labels.csv"), name=dataset),
    }
    if dataset not in requests:
        raise KeyError(f"no source in the shared data folder for dataset '{dataset}'")
    return requests[dataset]
