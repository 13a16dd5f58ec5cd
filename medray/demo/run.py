"""`medray demo`'s stages, in order, through the Python API's code paths:

1. storage: a local S3-compatible server on 127.0.0.1 (cluster/local_s3.py), so the S3
   path is the one exercised, unless MEDRAY_STORAGE / --storage names one; a local Ray
   (with dashboard, for Tune) unless RAY_ADDRESS names a cluster;
2. datasets: scikit-learn's breast_cancer always; BreastMNIST, ECG200 and Cleveland from
   MEDRAY_DATA_SOURCES, downloaded there when missing and the network allows, else
   synthetic stand-ins made here and named `*_synthetic` everywhere;
3. training of the CNN, RNN and attention models with 2 Ray Train workers each (1 with
   `--quick`), a small Tune search, and promotion of every winner through its gate;
4. Serve: the champions deployed, sample requests (one of them bad) and their answers;
5. a results table beside the published numbers, and an HTML report with the plots
   (medray/demo/report.py);
6. everything it started is shut down, also on Ctrl-C.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from medray import api
from medray.cluster.config import load_config
from medray.cluster.errors import MedrayError
from medray.cluster.local_s3 import LocalS3
from medray.cluster.runtime import free_port
from medray.cluster.storage import Storage
from medray.demo.report import results_table, served_cases, write_report
from medray.quality import QUALITY
from medray.train.data.importers import ImportRequest, import_dataset
from medray.train.data.medmnist import write_synthetic_medmnist
from medray.train.data.sources import sources_dir
from medray.train.data.tabular import KNOWN_TABLES, write_synthetic_cleveland
from medray.train.data.ucr import write_synthetic_ucr

log = logging.getLogger(__name__)

# The shipped configs, installed with the package (train/configs/ in the repository).
CONFIGS = Path(str(files("medray.train") / "configs"))
SYNTHETIC_LICENSE = "synthetic stand-in made by medray's demo: not medical data"
DEMO_BUCKET = "medray-demo"


@dataclass(frozen=True)
class DemoModel:
    dataset: str
    config: str

    @property
    def published(self) -> str:
        """The published results on the same data (medray.quality, from ../shared/data/README.md)."""
        return QUALITY[self.config.removesuffix(".yaml")].published_text()


MODELS = (
    DemoModel("breastmnist", "breastmnist_cnn.yaml"),
    DemoModel("ecg200", "ecg200_rnn.yaml"),
    DemoModel("cleveland", "cleveland_attention.yaml"),
)
TUNED = DemoModel("wdbc", "wdbc_attention.yaml")


# Datasets --------------------------------------------------------------------------
def recognised_sources(folder: Path) -> list[ImportRequest]:
    """Import requests for the source files in `folder` whose format medray knows."""
    requests = [ImportRequest(kind="sklearn", source="breast_cancer", name="wdbc")]
    if not folder.is_dir():
        return requests
    for npz in sorted(folder.glob("*.npz")):
        requests.append(ImportRequest(kind="medmnist", source=str(npz), name=npz.stem.lower()))
    for train_file in sorted(folder.glob("*_TRAIN.txt")):
        dataset = train_file.name.removesuffix("_TRAIN.txt")
        if (folder / f"{dataset}_TEST.txt").is_file():
            requests.append(ImportRequest(kind="ucr", source=str(folder), dataset=dataset, name=dataset.lower()))
    cleveland = folder / KNOWN_TABLES["cleveland"]["file"]
    if cleveland.is_file():
        requests.append(cleveland_request(str(cleveland), "cleveland"))
    return requests


def cleveland_request(source: str, name: str) -> ImportRequest:
    known = KNOWN_TABLES["cleveland"]
    return ImportRequest(kind="csv", source=source, name=name, target=known["target"], columns=known["columns"],
                         missing=known["missing"], license=known["license"], units=known["units"])


def demo_requests(folder: Path, scratch: Path, allow_download: bool) -> tuple[list[ImportRequest], list[str]]:
    """What the demo imports: the real source where there is one (on disk, else
    downloaded), a synthetic stand-in otherwise. Returns the requests and the names of
    the synthetic ones."""
    found = {r.name: r for r in recognised_sources(folder)}
    wanted = {
        "breastmnist": ImportRequest(kind="medmnist", source="breastmnist", name="breastmnist"),
        "ecg200": ImportRequest(kind="ucr", source="ECG200", dataset="ECG200", name="ecg200"),
        "cleveland": cleveland_request(KNOWN_TABLES["cleveland"]["url"], "cleveland"),
    }
    requests, synthetic = [found["wdbc"]], []
    for name, download in wanted.items():
        if name in found:
            requests.append(found[name])
        elif allow_download:
            requests.append(download)
        else:
            requests.append(synthetic_request(name, scratch))
            synthetic.append(name)
    return requests, synthetic


def synthetic_request(name: str, scratch: Path) -> ImportRequest:
    """The stand-in for a real dataset, written by that dataset's importer module in the
    real file's format, so it carries the real class names and shapes and the shipped
    config runs on it unchanged; named `{name}_synthetic` everywhere it appears."""
    if name == "breastmnist":
        path = write_synthetic_medmnist("breastmnist", scratch / "breastmnist_synthetic.npz")
        request = ImportRequest(kind="medmnist", source=str(path), name="breastmnist_synthetic")
    elif name == "ecg200":
        folder = write_synthetic_ucr("ECG200", scratch / "ecg200_synthetic")
        request = ImportRequest(kind="ucr", source=str(folder), dataset="ECG200", name="ecg200_synthetic")
    elif name == "cleveland":
        path = write_synthetic_cleveland(scratch / "cleveland_synthetic.csv")
        request = cleveland_request(str(path), "cleveland_synthetic")
    else:
        raise MedrayError(f"the demo has no stand-in for '{name}'")
    request.license = SYNTHETIC_LICENSE
    return request


# The demo ---------------------------------------------------------------------------
class Stages:
    def __init__(self, total: int) -> None:
        self.total, self.done, self.started = total, 0, time.monotonic()

    def next(self, text: str) -> None:
        self.done += 1
        log.info("[%d/%d %5.0fs] %s", self.done, self.total, time.monotonic() - self.started, text)


def run_demo(storage_root: str | None = None, quick: bool = False, report_dir: str | Path = "demo-report",
             allow_download: bool | None = None) -> dict[str, Any]:
    """Run every stage; returns the results (and `text`, the table people read)."""
    import ray

    from medray.cluster import console

    stages = Stages(8)
    # Three models are trained: every 10th epoch line of each, not all 200.
    console.CONSOLE.epoch_every = 1 if quick else 10
    services: list[Any] = []
    root = storage_root or os.environ.get("MEDRAY_STORAGE")
    started_ray = False
    try:
        if root is None:
            root = _start_local_s3(services)
        storage = Storage(root)
        storage.check()
        stages.next(f"storage {storage.root}" + (" (local S3 server on 127.0.0.1)" if services else ""))

        from medray.cluster.config import RayConfig
        from medray.cluster.runtime import ensure_ray

        started_ray = not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")
        ensure_ray(RayConfig(), dashboard=True)
        stages.next(f"Ray with {int(ray.cluster_resources().get('CPU', 0))} CPUs")

        folder = sources_dir()
        scratch = Path(report_dir).resolve() / "synthetic-sources"
        if allow_download is None:
            allow_download = os.environ.get("MEDRAY_OFFLINE") != "1"
        requests, synthetic = demo_requests(folder, scratch, allow_download)
        datasets = {}
        for request in requests:
            try:
                manifest = import_dataset(storage, request)
            except MedrayError as error:  # a download that failed: the stand-in instead
                log.warning("could not import %s (%s); using a synthetic stand-in", request.name, error)
                base = request.name
                manifest = import_dataset(storage, synthetic_request(base, scratch))
                synthetic.append(base)
            datasets[manifest["name"].removesuffix("_synthetic")] = manifest
        stages.next("datasets: " + ", ".join(f"{m['name']} v{m['version']}" for m in datasets.values()))

        results = [_train_and_promote(storage, model, datasets[model.dataset], quick) for model in MODELS]
        stages.next("trained and promoted: " + ", ".join(f"{r['dataset']} ({r['promotion']})" for r in results))

        search = _search_and_promote(storage, TUNED, datasets[TUNED.dataset], quick)
        results.append(search["result"])
        stages.next(f"search {search['summary']['search']}: {len(search['summary']['trials'])} trials, "
                    f"{search['summary']['stopped_by_asha']} stopped early by ASHA")

        served = _serve_and_ask(storage, results)
        stages.next(f"served {', '.join(served['models']) or 'nothing'} at {served['url']}; each answered its "
                    "test split")

        report = write_report(storage, Path(report_dir), results, search["summary"], served, synthetic)
        table = results_table(results)
        stages.next(f"report {report}")
        text = "\n".join([table, "", "serving:", *(s["line"] for s in served["samples"]), "",
                          f"report: {report}"] + ([f"synthetic stand-ins (no real file, no network): "
                                                   f"{', '.join(synthetic)}"] if synthetic else []))
        stages.next("done")
        return {"storage": storage.root, "results": results, "search": search["summary"]["search"],
                "served": served, "report": str(report), "synthetic": synthetic, "text": text}
    finally:
        _shutdown(services, started_ray)


def _start_local_s3(services: list[Any]) -> str:
    """The local S3 server, this process (and the Ray it starts) pointed at it, and a
    bucket for the demo; returns the storage root."""
    s3 = LocalS3.start()
    services.append(s3)
    os.environ.update(s3.client_env("demo"))
    import boto3

    boto3.client("s3").create_bucket(Bucket=DEMO_BUCKET)
    return f"s3://{DEMO_BUCKET}/demo"


def _train_and_promote(storage: Storage, model: DemoModel, manifest: dict, quick: bool) -> dict[str, Any]:
    # Quick: one worker, since each worker is a process to start (seconds on 2 cores) and
    # the two-worker path is the same code, tested on its own (tests/integration).
    workers = 1 if quick else 2
    overrides = [f"data.dataset={manifest['name']}", f"scaling.num_workers={workers}", f"train.name=demo-{model.dataset}"]
    if quick:
        overrides += ["optim.epochs=2", "eval.bootstrap=50", "train.patience=0"]
    config = load_config(CONFIGS / model.config, overrides)
    summary = api.run_training(config, storage=storage)
    promotion = api.promote(summary["checkpoint"], config, storage=storage, source={"run": summary["run"]})
    return _result(model, manifest, summary["metrics"], summary["run"], promotion, config)


def _search_and_promote(storage: Storage, model: DemoModel, manifest: dict, quick: bool) -> dict[str, Any]:
    overrides = [f"data.dataset={manifest['name']}", "scaling.num_workers=1", "train.name=demo-search",
                 "tune.num_samples=" + ("2" if quick else "6"), "optim.epochs=" + ("2" if quick else "20"),
                 "tune.grace_period=" + ("1" if quick else "4"), "tune.reduction_factor=2"]
    if quick:
        overrides += ["eval.bootstrap=50"]
    config = load_config(CONFIGS / model.config, overrides)
    summary = api.run_search(config, storage=storage, promote=True)
    promotion = summary["promotion"]
    run = storage.uri(f"runs/{summary['search']}")
    # The search tunes no data.* setting: the base config names the classes as each trial does.
    result = _result(model, manifest, promotion.get("metrics", {}), run, promotion, config, tuned=True)
    return {"summary": summary, "result": result}


def _result(model: DemoModel, manifest: dict, metrics: dict, run: str, promotion: dict, config,
            tuned: bool = False) -> dict[str, Any]:
    from medray.train.data.preprocess import LabelMap

    test = metrics.get("test", {})
    labels = LabelMap.build(manifest["classes"], config.data.class_groups, config.data.positive_class)
    return {
        "label_map": labels.to_dict(),  # the dataset's classes as the model names them
        "dataset": manifest["name"], "synthetic": manifest["name"].endswith("_synthetic"),
        "model": f"{manifest['modality']}:{'tuned ' if tuned else ''}{model.config.removesuffix('.yaml')}",
        "test_auroc": test.get("auroc"), "test_auroc_ci": test.get("auroc_ci"), "test_accuracy": test.get("accuracy"),
        "test_auprc": test.get("auprc"), "test_brier": test.get("brier"),
        "test_calibration_slope": test.get("calibration_slope"),
        "published": model.published, "run": run,
        "promotion": f"v{promotion['version']}" if promotion.get("promoted") else
        "refused: " + ", ".join(promotion.get("failed") or []),
        "version": promotion.get("version"), "checkpoint": promotion.get("checkpoint"),
    }


def _serve_and_ask(storage: Storage, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Serve the champions and send each its whole test split, as a client would; show a
    few answers beside the truth: one right, one referred to a clinician (the conformal
    set holds more than one class), one confidently wrong, where there are such; then one
    input unlike the training data (a CT slice), referred."""
    import httpx

    from medray.serve.app import deploy
    from medray.train.data.dataset import read_manifest
    from medray.train.data.loading import read_split_arrays
    from medray.train.data.preprocess import LabelMap
    from medray.train.modalities import modality

    served_names = sorted({r["dataset"] for r in results if r["version"]})
    label_maps = {r["dataset"]: LabelMap.from_dict(r["label_map"]) for r in results}
    if not served_names:
        return {"url": None, "models": {}, "samples": [{"model": None, "status": None, "answer": None,
                                                         "line": "  no model passed its gate: nothing to serve"}]}
    config = load_config(None, [f"serve.port={free_port(8000)}", "serve.autoscaling.max_replicas=1",
                                "serve.replica_cpus=0.25"])
    deployed = deploy(config, storage, served_names)
    samples = []
    with httpx.Client(base_url=deployed["url"], timeout=60) as client:
        for name in served_names:
            manifest = read_manifest(storage, name)
            features, labels = read_split_arrays(storage, manifest, "test")
            kind = modality(manifest["modality"])
            model_labels = label_maps[name]
            truths = [model_labels.classes[i] for i in model_labels.apply(labels)]
            predictions, status, answer = [], 200, None
            for start in range(0, len(truths), 32):
                batch = [kind.request_instance(features, i, manifest["schema"])
                         for i in range(start, min(start + 32, len(truths)))]
                response = client.post(f"/v1/models/{name}/predict", json={"instances": batch})
                status, answer = response.status_code, response.json()
                if status != 200:
                    break
                predictions += answer["predictions"]
            if status != 200:
                samples.append({"model": name, "status": status, "answer": answer,
                                "line": f"  {name}: HTTP {status} {answer.get('detail')}"})
                continue
            samples.append({"model": name, "status": status, "answer": answer,
                            **served_cases(name, predictions, truths)})
        bad = client.post(f"/v1/models/{served_names[0]}/predict", json={"instances": [[[1, 2], [3, 4]]]})
        refusal = bad.json()
        samples.append({"model": served_names[0], "status": bad.status_code, "answer": refusal,
                        "line": f"  bad request to {served_names[0]} (a 2x2 array): HTTP {bad.status_code} "
                                f"{refusal.get('detail')}"})
        samples += _out_of_distribution_case(client, served_names)
    return {"url": deployed["url"], "models": deployed["models"], "samples": samples}


def _out_of_distribution_case(client: Any, served_names: list[str]) -> list[dict[str, Any]]:
    """pydicom's CT slice sent to the first served model that takes image files: unlike
    anything it was trained on, so it should be referred to a clinician rather than
    answered; the line says which it was."""
    from pydicom.data import get_testdata_file

    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    for name in served_names:
        response = client.post(f"/v1/models/{name}/predict-file", files={"file": ("ct.dcm", ct)})
        if response.status_code != 200:  # a model for signals or records takes no image file
            continue
        answer = response.json()
        (p,) = answer["predictions"]
        verdict = "refer to clinician" if p.get("refer_to_clinician") else "answered"
        return [{"model": name, "status": 200, "answer": answer, "out_of_distribution": True,
                 "line": f"  a CT slice (pydicom's CT_small.dcm) sent to {name}: out_of_distribution "
                         f"{p.get('out_of_distribution')} (score {p.get('ood_score')}) -> {verdict}"}]
    return []


def _shutdown(services: list[Any], started_ray: bool) -> None:
    import ray

    try:
        if ray.is_initialized():
            from ray import serve

            serve.shutdown()
    except Exception as error:  # shutting down what may be half started: report, go on
        log.warning("stopping Serve: %s", error)
    if started_ray and ray.is_initialized():
        ray.shutdown()
    for service in services:
        service.stop()
