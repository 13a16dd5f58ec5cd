"""Medical Abstracts end to end on 600 real abstracts taken from the shared file by the
test: imported from the local S3 server, a 2-worker Ray Train run of the shipped
attention config (cut to two epochs) with the same-run TF-IDF baseline, promotion, the
tokenizer rebuilt from the registry giving the training's ids, Ray Serve answering JSON
and text/plain uploads with token explanations as the offline model does, and a canary
document that reaches no answer, error or log."""

import csv
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from medray.cluster.config import load_config
from medray.cluster.registry import Registry
from medray.train.data.importers import ImportRequest, import_dataset
from support.project import PROJECT
from support.serving import assert_same_answers, assert_triton_answers, triton_infer_bytes

pytestmark = pytest.mark.integration

DOCUMENTS = 600
PORT = 8314
CANARY = "Zqxvjkwpatientname"


@pytest.fixture(scope="module")
def abstracts(shared_data, tmp_path_factory, s3_endpoint):
    import boto3

    from medray.cluster.storage import Storage

    folder = tmp_path_factory.mktemp("abstracts")
    with open(shared_data / "medical_abstracts.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    with open(folder / "notes.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows[:DOCUMENTS + 1])
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="medray-text")
    s3.upload_file(str(folder / "notes.csv"), "medray-text", "exports/notes.csv")
    s3.upload_file(str(shared_data / "medical_abstracts_labels.csv"), "medray-text", "exports/labels.csv")
    storage = Storage("s3://medray-text/root")
    request = ImportRequest(kind="text", source="s3://medray-text/exports/notes.csv", name="abstracts",
                            text_column="medical_abstract", label_column="condition_label",
                            label_names="s3://medray-text/exports/labels.csv")
    return {"storage": storage, "manifest": import_dataset(storage, request), "rows": rows[1:DOCUMENTS + 1]}


def config(*overrides):
    return load_config(PROJECT / "train" / "configs" / "medical_abstracts_attention.yaml",
                       ["optim.epochs=2", "eval.bootstrap=50", "scaling.num_workers=2", "train.name=abstracts-bag",
                        "promote.gate=[{metric: val.auroc, min: 0.0}]", *overrides])


def _ray_logs() -> list[Path]:
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    return [p for p in logs.rglob("*") if p.is_file()]


def test_import_train_promote_and_serve_notes(abstracts, ray_session, tmp_path):
    from medray.serve.app import deploy, down
    from medray.serve.model import ServedModel
    from medray.train.checkpoint import load_bundle
    from medray.train.data.loading import read_split_arrays
    from medray.train.job import run_training
    from medray.tune.promote import promote_checkpoint

    storage, manifest = abstracts["storage"], abstracts["manifest"]
    assert manifest["modality"] == "text" and manifest["classes"][0] == "neoplasms"
    assert sum(s["rows"] for s in manifest["splits"].values()) == DOCUMENTS
    stored = json.dumps(manifest)
    assert not any(text[:40] in stored for _, text in abstracts["rows"])

    summary = run_training(config(), storage)
    test = summary["metrics"]["test"]
    assert test["n"] == manifest["splits"]["test"]["rows"] and len(test["confusion_matrix"]) == 5
    assert set(test["per_class"]) == set(manifest["classes"])
    tfidf = summary["metrics"]["baselines"]["tfidf_logistic_regression"]
    assert tfidf["n"] == test["n"] and 0.3 < tfidf["accuracy"] <= 1 and 0 < tfidf["macro_f1"] <= 1

    promoted = promote_checkpoint(storage, storage.key_of(summary["checkpoint"]), config())
    assert promoted["promoted"]
    offline = ServedModel.from_registry(Registry(storage), "abstracts", promoted["version"])
    bundle = load_bundle(storage.download_dir(storage.key_of(summary["checkpoint"]), tmp_path / "ckpt"))
    features, _ = read_split_arrays(storage, manifest, "test")
    # The tokenizer rebuilt from the registry gives the training's token ids.
    np.testing.assert_array_equal(offline.bundle.preprocessor.transform(features.iloc[:20]),
                                  bundle.preprocessor.transform(features.iloc[:20]))
    documents = [{"text": str(t)} for t in features["text"].iloc[:3]]
    expected = offline.predict(offline.decode(documents))

    deployed = deploy(load_config(None, [f"serve.port={PORT}", "serve.autoscaling.max_replicas=1",
                                         "serve.replica_cpus=0.25"]), storage)
    try:
        with httpx.Client(base_url=deployed["url"], timeout=60) as client:
            listing = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
            assert listing["abstracts"]["input"]["type"] == "text"
            answer = client.post("/v1/models/abstracts/predict", json={"instances": documents, "explain": True})
            assert answer.status_code == 200, answer.text
            predictions = answer.json()["predictions"]
            assert_same_answers([{k: v for k, v in p.items() if k != "explanation"} for p in predictions], expected)
            why = predictions[0]["explanation"]
            assert why["type"] == "token_attributions" and why["tokens"]
            assert all(set(t) == {"token", "weight"} for t in why["tokens"])
            upload = client.post("/v1/models/abstracts/predict-file",
                                 files={"file": ("note.txt", documents[0]["text"].encode(), "text/plain")})
            assert upload.status_code == 200, upload.text
            assert_same_answers(upload.json()["predictions"], expected[:1])

            note = f"{CANARY} was admitted with chest pain."
            cases = [
                (client.post("/v1/models/abstracts/predict", json={"instances": [{"text": " "}]}),
                 "instances[0].text: is empty"),
                (client.post("/v1/models/abstracts/predict", json={"instances": [{"text": note * 10_000}]}),
                 "instances[0].text: longer than"),
                (client.post("/v1/models/abstracts/predict", json={"instances": [{"text": note, "mrn": CANARY}]}),
                 'must be an object with one key, "text"'),
                (client.post("/v1/models/abstracts/predict-file",
                             files={"file": ("n.txt", note.encode() + b"\xff", "text/plain")}),
                 "not UTF-8 text"),
            ]
            for response, problem in cases:
                assert response.status_code in (413, 422), (problem, response.text)
                assert problem in response.json()["detail"] and CANARY not in response.text
            good = client.post("/v1/models/abstracts/predict", json={"instances": [{"text": note}]})
            assert good.status_code == 200 and CANARY not in good.text  # no explanation asked: no tokens back
            # The same notes through the Open Inference Protocol, as a BYTES tensor.
            assert_triton_answers(triton_infer_bytes(deployed["url"], "abstracts", "text",
                                                     [d["text"].encode() for d in documents]), expected)
    finally:
        down()
    leaked = [p.name for p in _ray_logs() if CANARY.encode() in p.read_bytes()]
    assert not leaked, leaked


def test_class_folders_on_s3_import_as_the_same_local_folder_does(abstracts, tmp_path):
    import boto3

    from medray.cluster.storage import Storage
    from medray.train.data.loading import read_split_arrays

    folder = tmp_path / "notes"
    classes = {"cardiovascular": "4", "neoplasms": "1"}  # folder name: the shared file's label
    s3 = boto3.client("s3")
    for name, label in classes.items():
        (folder / name).mkdir(parents=True)
        for i, text in enumerate([text for value, text in abstracts["rows"] if value == label][:12]):
            path = folder / name / f"{CANARY}_{i:02d}.txt"
            path.write_text(text)
            s3.upload_file(str(path), "medray-text", f"exports/notes/{name}/{path.name}")
    (folder / "README").write_text("not a note")  # neither a class folder nor a .txt file: ignored
    s3.upload_file(str(folder / "README"), "medray-text", "exports/notes/README")

    manifests = {}
    for where, source in (("local", str(folder)), ("s3", "s3://medray-text/exports/notes")):
        storage = Storage(f"file://{tmp_path / where}")
        manifests[where] = import_dataset(storage, ImportRequest(kind="text", source=source, name="notes"))
        manifests[where]["texts"] = {split: sorted(read_split_arrays(storage, manifests[where], split)[0]["text"])
                                     for split in ("train", "val", "test")}
    local, remote = manifests["local"], manifests["s3"]
    assert remote["classes"] == sorted(classes) and remote["texts"] == local["texts"]
    assert {s: v["rows"] for s, v in remote["splits"].items()} == {s: v["rows"] for s, v in local["splits"].items()}
    assert sum(len(t) for t in remote["texts"].values()) == 24 and CANARY not in json.dumps(remote)

    with pytest.raises(Exception, match="holds no class sub-folders of .txt files"):
        import_dataset(Storage(f"file://{tmp_path / 'empty'}"),
                       ImportRequest(kind="text", source="s3://medray-text/exports/nothing/", name="notes"))
