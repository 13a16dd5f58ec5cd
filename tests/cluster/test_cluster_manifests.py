"""The cluster manifests: ray-cluster.yaml passes the checks `ray up` runs before it
contacts AWS, the KubeRay manifests have the shape KubeRay and Ray Serve expect, and every
`medray …` command they (and README.md's code blocks) show parses with medray's parser.

No Ray cluster, no AWS, no Kubernetes: each file is read and checked as it stands."""

from __future__ import annotations

import contextlib
import copy
import io
import re
import shlex
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.serve.schema import ServeDeploySchema

PROJECT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = PROJECT / "ray-cluster.yaml"
K8S = PROJECT / "cluster" / "k8s"
SERVE_CONFIG = PROJECT / "serve" / "serve_config.yaml"
README = PROJECT / "README.md"
MANIFESTS = {"rayjob-train.yaml": "RayJob", "rayjob-tune.yaml": "RayJob", "rayservice.yaml": "RayService"}


# ray-cluster.yaml ---------------------------------------------------------------------
def load_cluster_yaml() -> dict[str, Any]:
    # `ray up` reads the file with yaml.safe_load (commands.create_or_update_cluster).
    return yaml.safe_load(CLUSTER_YAML.read_text())


def ray_up_checks(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does to the config before it contacts AWS (commands._bootstrap_config):
    prepare_config (defaults, merged setup commands, docker check, per-type worker bounds),
    then validate_config (ray-schema.json plus the cross-field checks). The provider step
    between them fills in node resources it looks up in EC2's instance catalogue; it needs
    AWS and is skipped, which is why every node type states its resources."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_ray_cluster_yaml_passes_ray_up_validation():
    config = load_cluster_yaml()
    validate_config(copy.deepcopy(config))  # complete as written, before any defaults
    prepared = ray_up_checks(config)
    assert prepared["available_node_types"][prepared["head_node_type"]]["max_workers"] == 0


def _gpu_type(config: dict) -> dict:
    return config["available_node_types"]["ray.worker.gpu"]


# Each makes one mistake `ray up` must refuse.
BROKEN = {
    "unknown-top-level-key": lambda c: c.update(max_worker=8),
    "max-workers-not-an-integer": lambda c: c.update(max_workers="eight"),
    "unknown-auth-key": lambda c: c["auth"].update(ssh_password="secret"),
    "fractional-gpu": lambda c: _gpu_type(c)["resources"].update(GPU=0.5),
    "no-resources": lambda c: _gpu_type(c).pop("resources"),
    "undefined-head-type": lambda c: c.update(head_node_type="ray.head.missing"),
    "run-options-not-a-list": lambda c: c["docker"].update(run_options="--env A=1"),
}


@pytest.mark.parametrize("break_it", BROKEN.values(), ids=BROKEN.keys())
def test_ray_up_validation_refuses_a_broken_copy(break_it):
    config = load_cluster_yaml()
    break_it(config)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        ray_up_checks(config)


def test_ray_cluster_design():
    config = load_cluster_yaml()
    node_types = config["available_node_types"]
    head = node_types[config["head_node_type"]]
    workers = {name: t for name, t in node_types.items() if name != config["head_node_type"]}

    # No training on the head; CPU and GPU workers that scale from zero.
    assert head["resources"].get("CPU") == 0
    assert any(t["resources"].get("GPU", 0) >= 1 for t in workers.values())
    assert any(t["resources"].get("CPU", 0) >= 1 and not t["resources"].get("GPU") for t in workers.values())
    assert all(t.get("min_workers", 0) == 0 for t in workers.values())
    # S3 through instance profiles, on every node.
    assert all("IamInstanceProfile" in t["node_config"] for t in node_types.values())

    # The image's Ray is the Ray this project pins.
    image = config["docker"]["image"]
    assert re.fullmatch(rf"rayproject/ray:{re.escape(ray.__version__)}-py3\d+-(gpu|cu\d+)", image), image

    # Token authentication on every node, with the token ray up copies there.
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in starts)
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "--dashboard-host=" in next(c for c in config["head_start_ray_commands"] if "--head" in c)
    assert any(o.startswith("--env MEDRAY_STORAGE=s3://") for o in config["docker"]["run_options"])

    # CUDA torch at the version constraints.txt pins.
    torch_pin = re.search(r"^torch==(\S+)$", (PROJECT / "constraints.txt").read_text(), re.M).group(1)
    torch_install = next(c for c in config["setup_commands"] if "torch==" in c)
    assert f'"torch=={torch_pin}"' in torch_install and "download.pytorch.org/whl/cu" in torch_install


# KubeRay manifests ------------------------------------------------------------------------
def k8s_documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


SERVING_ACCOUNT = "medray-serve"  # the RayService's read-only identity (tests/serve/test_serve_manifests.py)


def shared_config() -> tuple[str, str]:
    """The ConfigMap and the jobs' ServiceAccount names medray-config.yaml defines."""
    docs = k8s_documents("medray-config.yaml")
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    account = next(d for d in docs if d["kind"] == "ServiceAccount" and d["metadata"]["name"] != SERVING_ACCOUNT)
    return config_map["metadata"]["name"], account["metadata"]["name"]


def ray_cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["rayClusterSpec" if doc["kind"] == "RayJob" else "rayClusterConfig"]


def pod_specs(cluster: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield cluster["headGroupSpec"]["template"]["spec"]
    for group in cluster["workerGroupSpecs"]:
        yield group["template"]["spec"]


def gpu_limit(group: dict[str, Any]) -> int:
    return max(int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
               for c in group["template"]["spec"]["containers"])


def test_medray_config():
    docs = k8s_documents("medray-config.yaml")
    by_kind = {doc["kind"]: doc for doc in docs}
    assert by_kind["ConfigMap"]["data"]["MEDRAY_STORAGE"].startswith("s3://")
    assert by_kind["ConfigMap"]["data"]["AWS_REGION"]
    role = by_kind["ServiceAccount"]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert role.startswith("arn:aws:iam::")
    # Secrets are created with kubectl, never applied from the repository with a placeholder.
    assert "Secret" not in by_kind


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_kuberay_manifest_shape(name):
    (doc,) = k8s_documents(name)
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] == MANIFESTS[name]
    cluster = ray_cluster_spec(doc)
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["authOptions"]["mode"] == "token"
    assert f"kubectl create secret generic {cluster['authOptions']['secretName']} " in \
        (K8S / "medray-config.yaml").read_text()

    head = cluster["headGroupSpec"]
    assert head["rayStartParams"].get("num-cpus") == "0"
    assert head["template"]["spec"]["containers"]
    assert cluster["workerGroupSpecs"], "at least one worker group"
    assert any(gpu_limit(group) >= 1 for group in cluster["workerGroupSpecs"])
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]

    configmap, service_account = shared_config()
    images = set()
    for pod in pod_specs(cluster):
        assert pod["serviceAccountName"] == (SERVING_ACCOUNT if doc["kind"] == "RayService" else service_account)
        for container in pod["containers"]:
            images.add(container["image"])
            config_maps = [e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e]
            assert configmap in config_maps, f"{container['name']} lacks envFrom {configmap}"
    assert len(images) == 1, images


@pytest.mark.parametrize("name", ["rayjob-train.yaml", "rayjob-tune.yaml"])
def test_rayjob_fields(name):
    (doc,) = k8s_documents(name)
    spec = doc["spec"]
    assert "medray " in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    assert spec["submissionMode"] in {"K8sJobMode", "HTTPMode", "SidecarMode"}


def test_rayjob_entrypoints_ask_for_gpus_on_an_autoscaling_cluster():
    def entrypoint_args(name):
        (command,) = [c for where, c in SHOWN if where.startswith(f"{name}:doc0.spec.entrypoint")]
        argv = shlex.split(command, comments=True)[1:]
        return argv, parse_like_main(argv)

    for name in ("rayjob-train.yaml", "rayjob-tune.yaml"):
        argv, _ = entrypoint_args(name)
        overrides = [a for a in argv if "=" in a]
        assert {"scaling.use_gpu=true", "scaling.check_resources=false"} <= set(overrides), name
    argv, args = entrypoint_args("rayjob-tune.yaml")
    assert argv[0] == "tune" and args.samples == 16 and args.promote is True


def test_rayservice_serves_the_serve_config_applications():
    (doc,) = k8s_documents("rayservice.yaml")
    serve_config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_config)

    # The applications of serve/serve_config.yaml, less the runtime_env whose MEDRAY_STORAGE
    # would override the ConfigMap's.
    def without_runtime_env(apps):
        return [{k: v for k, v in app.items() if k != "runtime_env"} for app in apps]

    shipped = yaml.safe_load(SERVE_CONFIG.read_text())["applications"]
    assert without_runtime_env(serve_config["applications"]) == without_runtime_env(shipped)
    assert all("MEDRAY_STORAGE" not in app.get("runtime_env", {}).get("env_vars", {})
               for app in serve_config["applications"])

    config_text = (K8S / "medray-config.yaml").read_text()
    for pod in pod_specs(ray_cluster_spec(doc)):
        for container in pod["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            ref = env["MEDRAY_API_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert ref["key"] == "MEDRAY_API_TOKEN"
            assert f"kubectl create secret generic {ref['name']} --from-literal=MEDRAY_API_TOKEN=" in config_text


def test_serve_deploy_schema_refuses_a_broken_serve_config():
    (doc,) = k8s_documents("rayservice.yaml")
    serve_config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    serve_config["applications"][0]["import_path"] = "app_builder"  # no module part
    with pytest.raises(ValueError):
        ServeDeploySchema.model_validate(serve_config)


# `medray …` commands shown anywhere ---------------------------------------------------------
_COMMAND = re.compile(r"^\$?\s*(medray\s.*)$")
_COMMENT = re.compile(r"(?:^|\s)#(.*)$")


def _commands_in_text(text: str) -> Iterator[str]:
    """Commands in a shell-like string: each `&&`, `||`, `;` or newline-separated part that
    starts with `medray`, plus `medray …` in backticks."""
    for part in re.split(r"&&|\|\||;|\n", text):
        match = _COMMAND.match(part.strip())
        if match:
            yield match.group(1)
    yield from re.findall(r"`(medray\s[^`]+)`", text)


def _strings(node: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, str):
        yield where, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _strings(value, f"{where}[{i}]")


def yaml_commands(path: Path) -> Iterator[tuple[str, str]]:
    text = path.read_text()
    for lineno, line in enumerate(text.splitlines(), 1):
        comment = _COMMENT.search(line)
        if comment:
            for command in _commands_in_text(comment.group(1)):
                yield f"{path.name}:{lineno}", command
    for index, doc in enumerate(yaml.safe_load_all(text)):
        for where, value in _strings(doc, f"doc{index}"):
            for command in _commands_in_text(value):
                yield f"{path.name}:{where}", command


def readme_commands(path: Path) -> Iterator[tuple[str, str]]:
    """`medray …` lines in the fenced code blocks, with backslash continuations joined."""
    in_block, pending, start = False, "", 0
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_block, pending = not in_block, ""
            continue
        if not in_block:
            continue
        if not pending:
            start = lineno
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full, pending = pending + line, ""
        match = _COMMAND.match(full.strip())
        if match:
            yield f"{path.name}:{start}", match.group(1)


def shown_commands() -> list[tuple[str, str]]:
    found = list(yaml_commands(CLUSTER_YAML))
    for path in sorted(K8S.glob("*.yaml")):
        found += yaml_commands(path)
    if README.is_file():
        found += readme_commands(README)
    return found


SHOWN = shown_commands()


def test_commands_are_found_where_they_are_run():
    sources = {where.split(":")[0] for where, _ in SHOWN}
    assert {"ray-cluster.yaml", "rayjob-train.yaml", "rayjob-tune.yaml"} <= sources, sources
    words = {tuple(shlex.split(command, comments=True)[1:3]) for _, command in SHOWN}
    assert {("submit", "train"), ("submit", "tune"), ("submit", "serve"), ("jobs", "list")} <= words
    assert {("train", "train/configs/breastmnist_cnn.yaml"), ("tune", "train/configs/breastmnist_cnn.yaml")} <= words


def parse_like_main(argv: list[str]):
    """medray/cli main()'s parsing: options anywhere, and leftover arguments allowed
    only as key=value overrides of a command that takes overrides."""
    from medray.cli import build_parser

    parser = build_parser()
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args, extra = parser.parse_known_args(argv)
    except SystemExit:
        pytest.fail(f"medray {shlex.join(argv)}: {errors.getvalue().strip().splitlines()[-1:]}")
    if extra and (not hasattr(args, "overrides") or any("=" not in x or x.startswith("-") for x in extra)):
        pytest.fail(f"medray {shlex.join(argv)}: unrecognized arguments: {' '.join(extra)}")
    return args


@pytest.mark.parametrize("where,command", SHOWN, ids=[f"{where}:{command[:60]}" for where, command in SHOWN])
def test_shown_command_parses(where, command):
    argv = shlex.split(command, comments=True)[1:]
    args = parse_like_main(argv)
    # Every YAML config it names is in the repository.
    named = [a for a in argv if a.endswith((".yaml", ".yml")) and "=" not in a]
    if isinstance(getattr(args, "config", None), str):
        named.append(args.config)
    for config in named:
        assert (PROJECT / config).is_file(), f"{where}: {config} is not in the repository"
