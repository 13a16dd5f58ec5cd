"""`medray demo`: the platform on real data, on this machine.

Today it imports scikit-learn's breast_cancer and every source file it recognises in
`MEDRAY_DATA_SOURCES` into storage, and shows what it made.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cluster.storage import Storage
from train.data.importers import ImportRequest, import_dataset
from train.data.sources import sources_dir

log = logging.getLogger(__name__)

CLEVELAND_COLUMNS = [
    "age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak", "slope", "ca", "thal",
    "num",
]


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
    cleveland = folder / "processed.cleveland.data"
    if cleveland.is_file():
        requests.append(ImportRequest(
            kind="csv", source=str(cleveland), name="cleveland", target="num", columns=CLEVELAND_COLUMNS,
            missing=["?"], license="CC BY 4.0 (UCI Heart Disease; Janosi, Steinbrunn, Pfisterer, Detrano 1988)",
        ))
    return requests


def run_demo(storage: Storage) -> dict[str, Any]:
    folder = sources_dir()
    requests = recognised_sources(folder)
    log.info("demo: importing %d datasets into %s (sources: %s)", len(requests), storage.root, folder)
    made = []
    for step, request in enumerate(requests, start=1):
        log.info("[%d/%d] %s %s -> %s", step, len(requests), request.kind, request.source, request.name)
        manifest = import_dataset(storage, request)
        made.append({
            "name": manifest["name"], "version": manifest["version"], "modality": manifest["modality"],
            "classes": manifest["classes"], "rows": {s: manifest["splits"][s]["rows"] for s in ("train", "val", "test")},
            "uri": storage.uri(f"datasets/{manifest['name']}/v{manifest['version']}"),
        })
    lines = [f"medray demo: {len(made)} datasets in {storage.root}",
             f"{'dataset':<14}{'version':>8}  {'modality':<9}{'train/val/test':<16}classes"]
    lines += [
        f"{m['name']:<14}{'v' + str(m['version']):>8}  {m['modality']:<9}"
        f"{'/'.join(str(m['rows'][s]) for s in ('train', 'val', 'test')):<16}{', '.join(m['classes'])}"
        for m in made
    ]
    if not folder.is_dir():
        lines.append(f"(no source folder at {folder}: set MEDRAY_DATA_SOURCES=../shared/data for the real files)")
    return {"storage": storage.root, "datasets": made, "text": "\n".join(lines)}
