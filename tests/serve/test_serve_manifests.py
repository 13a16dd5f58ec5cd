"""How the shipped serving configs hand the ingress its token and its storage rights, read
as files (no Ray, no Kubernetes): the token is named, never written; on KubeRay it comes
from a Secret into the variable serveConfigV2 names; serving reads models/ and nothing more."""

import json
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[2]
K8S = PROJECT / "cluster" / "k8s"


def _documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _rayservice() -> dict:
    (doc,) = _documents(K8S / "rayservice.yaml")
    return doc


def _pods(doc: dict):
    cluster = doc["spec"]["rayClusterConfig"]
    yield cluster["headGroupSpec"]["template"]["spec"]
    for group in cluster["workerGroupSpecs"]:
        yield group["template"]["spec"]


def test_serve_configs_name_where_the_token_lies_and_never_hold_it():
    (shipped,) = yaml.safe_load((PROJECT / "serve" / "serve_config.yaml").read_text())["applications"]
    (kuberay,) = yaml.safe_load(_rayservice()["spec"]["serveConfigV2"])["applications"]
    for app in (shipped, kuberay):
        assert app["args"]["token_env"] == "MEDRAY_API_TOKEN" and "token_file" not in app["args"]
        assert "MEDRAY_API_TOKEN" not in app.get("runtime_env", {}).get("env_vars", {})


def test_every_rayservice_pod_sets_the_named_variable_from_a_secret():
    doc = _rayservice()
    (app,) = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"]
    named = app["args"]["token_env"]
    for pod in _pods(doc):
        for container in pod["containers"]:
            (entry,) = [e for e in container["env"] if e["name"] == named]
            assert set(entry) == {"name", "valueFrom"} and "secretKeyRef" in entry["valueFrom"]  # never a value


def test_serving_runs_as_its_own_identity_that_only_reads_models():
    accounts = {d["metadata"]["name"]: d for d in _documents(K8S / "medray-config.yaml") if d["kind"] == "ServiceAccount"}
    used = {pod["serviceAccountName"] for pod in _pods(_rayservice())}
    assert used == {"medray-serve"}
    role = "eks.amazonaws.com/role-arn"
    assert accounts["medray-serve"]["metadata"]["annotations"][role] != accounts["medray"]["metadata"]["annotations"][role]

    # The role's policy, as the manifest documents it in its header.
    header = "".join(line[1:] for line in (K8S / "rayservice.yaml").read_text().splitlines()
                     if line.startswith("#"))
    policy, _ = json.JSONDecoder().raw_decode(header[header.index('{"Version"'):])
    actions = {action for statement in policy["Statement"] for action in statement["Action"]}
    assert actions == {"s3:GetObject", "s3:ListBucket"}
    (get,) = [s for s in policy["Statement"] if s["Action"] == ["s3:GetObject"]]
    assert all(resource.endswith("/models/*") for resource in get["Resource"])
    (listing,) = [s for s in policy["Statement"] if s["Action"] == ["s3:ListBucket"]]
    assert all("/models/" in prefix for prefix in listing["Condition"]["StringLike"]["s3:prefix"])
