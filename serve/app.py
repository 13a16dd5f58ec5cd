"""Build the Serve application from the registry's champions, and run it.

`medray serve up|update|status|down` call the functions here. `serve up` deploys one
application per model (`medray-model-NAME`, at `/v2/models/NAME`, its `ModelApplication` the
ingress: an Open Inference Protocol request takes one hop) and the `medray` application at
`/` (the ingress: `/v1`, the model list, the probes, the docs). A Serve config file deploys
the one-application layout (`app_builder`). Updating redeploys the same applications,
with the same code version (`_pinned`), and each model's new champion in its
`user_config`: Serve then calls `reconfigure()` on the live replicas instead of replacing
them, so no request is dropped.

The API token never enters Serve's config: the ingress is told where to read it on its
node (see serve/deployments.py). `serve up` puts this shell's MEDRAY_API_TOKEN in a 0600
file under MEDRAY_HOME when Ray runs on this machine; on a cluster the nodes' own
MEDRAY_API_TOKEN (a Kubernetes Secret on KubeRay) is named instead.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from medray.cluster.config import MedrayConfig
from medray.cluster.errors import ConfigError, MedrayError, NotFoundError
from medray.cluster.registry import Registry
from medray.cluster.storage import Storage
from medray.serve.deployments import (TOKEN_VARIABLE, Ingress, ModelApplication, ModelServer, proxy_options,
                                      refuse_open_beyond_loopback)
from medray.serve.web import page_url

log = logging.getLogger(__name__)

APP_NAME = "medray"
INGRESS_CPUS = 0.1
"""What the ingress replica reserves: it parses and forwards, the models compute."""


def champions(config: MedrayConfig, registry: Registry, names: list[str] | None = None) -> dict[str, int]:
    """name -> champion version of every model to serve (the config's list, else all)."""
    wanted = names or config.serve.models or registry.models()
    served = {}
    for name in wanted:
        pointer = registry.champion(name)
        if pointer is None:
            if not registry.versions(name):
                raise NotFoundError(f"model '{name}' is not in the registry at {registry.storage.uri('models')}")
            raise ConfigError(f"model '{name}' has no champion; promote one with `medray models promote {name} K`")
        served[name] = int(pointer["version"])
    if not served:
        raise NotFoundError(f"no model in the registry at {registry.storage.uri('models')} has a champion; "
                            "run `medray tune CONFIG --promote` first")
    return served


def model_app_name(name: str) -> str:
    """The application a model is the ingress of in `serve up`'s layout."""
    return f"{APP_NAME}-model-{name}"


def build_app(config: MedrayConfig, storage: Storage, versions: dict[str, int], auth: dict[str, str] | None = None):
    """One application: the ingress with one autoscaling ModelServer deployment per model
    bound into it (what a Serve config file deploys). Every request crosses the ingress.

    `auth`: where the ingress reads its token on its node, `{"token_env": NAME}` or
    `{"token_file": PATH}`; empty for an open API, which only starts on loopback."""
    models = {name: _model_server(config, storage, name, version, None) for name, version in sorted(versions.items())}
    return _ingress(config, models, _http_settings(config, auth))


def build_applications(config: MedrayConfig, storage: Storage, versions: dict[str, int],
                       auth: dict[str, str] | None = None) -> dict[str, tuple[str, Any]]:
    """`serve up`'s layout, application name -> (route prefix, application): each model the
    ingress of its own application at /v2/models/NAME (an infer request: proxy, then one
    model replica), and the ingress at / finding the model applications by name. The
    model applications come first: the ingress looks their deployments up when it starts."""
    settings = _http_settings(config, auth)
    applications = {model_app_name(name): (f"/v2/models/{name}", _model_server(config, storage, name, version, settings))
                    for name, version in sorted(versions.items())}
    applications[APP_NAME] = ("/", _ingress(config, {name: model_app_name(name) for name in sorted(versions)}, settings))
    return applications


def _http_settings(config: MedrayConfig, auth: dict[str, str] | None) -> dict[str, Any]:
    return {"max_instances": config.serve.max_instances, "max_body_bytes": config.serve.max_body_bytes,
            "auth": dict(auth or {})}


def _model_server(config: MedrayConfig, storage: Storage, name: str, version: int, settings: dict[str, Any] | None):
    """The model's deployment: its own application's ingress with `settings` (its HTTP
    settings), else a deployment behind the ingress."""
    serve_cfg = config.serve
    deployment = ModelServer if settings is None else ModelApplication
    return _pinned(deployment.options(
        name=f"model-{name}",
        autoscaling_config=serve_cfg.autoscaling.model_dump(),
        max_ongoing_requests=serve_cfg.max_ongoing_requests,
        ray_actor_options={"num_cpus": serve_cfg.replica_cpus},
        user_config={"storage": storage.root, "name": name, "version": version,
                     "max_batch_size": serve_cfg.max_batch_size,
                     "batch_wait_timeout_s": serve_cfg.batch_wait_timeout_s,
                     "threads": max(1, int(serve_cfg.replica_cpus)), "runtime": serve_cfg.runtime},
    ), settings).bind(*([] if settings is None else [settings]))


def _ingress(config: MedrayConfig, models: dict[str, Any], settings: dict[str, Any]):
    layout = {name: where if isinstance(where, str) else "bound" for name, where in models.items()}
    return _pinned(Ingress.options(
        ray_actor_options={"num_cpus": INGRESS_CPUS},
        max_ongoing_requests=max(256, config.serve.max_ongoing_requests * max(1, len(models))),
    ), layout, settings).bind(models, settings)


@functools.cache
def code_version() -> str:
    """What the serving code is: a hash of the modules replicas run."""
    digest = hashlib.sha256()
    for module in ("deployments.py", "model.py", "schemas.py"):
        digest.update((Path(__file__).parent / module).read_bytes())
    return digest.hexdigest()[:16]


def _pinned(deployment, *arguments: Any):
    """The deployment with a fixed code version: the serving code's hash and the
    deployment's own arguments (`arguments`, JSON). `serve.run` gives every deployment
    without one a random version on each call, so `serve update` would restart every
    replica, the ingress's too, all at once (on a small node with nothing left over, a gap
    of several seconds with no replica). With the version fixed, a new champion in
    `user_config` is what Serve calls a lightweight update: `reconfigure()` on the live
    replicas; changed arguments (another set of models, another token setting) restart
    the deployment, since Serve does not compare arguments itself.
    (`options(version=...)` was removed from Serve's API; the attribute is what
    `serve.run` reads.)"""
    digest = hashlib.sha256((code_version() + json.dumps(arguments, sort_keys=True)).encode())
    deployment._version = digest.hexdigest()[:16]
    return deployment


def bind_host(config: MedrayConfig, token: str | None) -> str:
    if config.serve.host:
        refuse_open_beyond_loopback(token, config.serve.host)
        return config.serve.host
    return "0.0.0.0" if token else "127.0.0.1"


# Where `serve up` keeps what it must find again: its local Ray, this shell's token.
MEDRAY_HOME = Path(os.environ.get("MEDRAY_HOME", "~/.medray")).expanduser()
# Where `serve up` keeps this shell's token for a Ray on this machine (mode 0600).
TOKEN_FILE = MEDRAY_HOME / "serve-token"


def token_auth(token: str | None, on_this_machine: bool) -> dict[str, str]:
    """The ingress's `auth` setting for this shell's token: a private file when every
    replica runs here; else the nodes' own variable of the same name, which the cluster
    sets from its secret store (the shell's token never travels to the cluster)."""
    if token is None:
        return {}
    if not on_this_machine:
        return {"token_env": TOKEN_VARIABLE}
    TOKEN_FILE.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=TOKEN_FILE.parent, prefix=".serve-token-")  # created 0600
    with os.fdopen(descriptor, "w") as handle:
        handle.write(token)
    os.replace(temporary, TOKEN_FILE)
    return {"token_file": str(TOKEN_FILE)}


def deploy(config: MedrayConfig, storage: Storage, names: list[str] | None = None) -> dict[str, Any]:
    """Start Serve (if needed) and deploy the champions; returns the URL and what is served."""
    from ray import serve

    token = os.environ.get(TOKEN_VARIABLE) or None
    host = bind_host(config, token)
    versions = champions(config, Registry(storage), names)
    on_this_machine = not (config.ray.address or os.environ.get("RAY_ADDRESS"))
    check_capacity(config, len(versions), on_this_machine)
    serve.start(http_options={"host": host, "port": config.serve.port})
    # A Serve already running keeps the address it started with, whatever was asked now.
    refuse_open_beyond_loopback(token, proxy_options().host)
    deployed = _run(config, storage, versions, token_auth(token, on_this_machine))
    if not token:
        log.warning("no %s set: the API is open, so it listens on 127.0.0.1 only", TOKEN_VARIABLE)
    return deployed


def check_capacity(config: MedrayConfig, models: int, fixed_size: bool) -> None:
    """Refuse, before deploying, replicas this Ray cannot place: Serve would wait for them
    for ever ("taken more than 30s to be scheduled") and `serve up` with it. `fixed_size`:
    a Ray that no autoscaler will grow (the local one); on a cluster only a warning, since
    nodes may be on their way."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 0.0)
    first_replicas = models * max(1, config.serve.autoscaling.min_replicas)  # even min 0 starts one to answer
    needed = first_replicas * config.serve.replica_cpus + INGRESS_CPUS
    if needed <= cpus + 1e-9:
        return
    fits = math.floor((cpus - INGRESS_CPUS) / first_replicas * 100) / 100
    problem = (f"serving {models} model(s) needs {needed:g} CPUs for their first replicas "
               f"(serve.replica_cpus={config.serve.replica_cpus:g} each, {INGRESS_CPUS:g} for the ingress) and this "
               f"Ray has {cpus:g}")
    if not fixed_size:
        log.warning("%s: Serve waits until the cluster grows", problem)
        return
    advice = f"set serve.replica_cpus={fits:g}" if fits > 0 else "serve fewer models"
    raise ConfigError(f"{problem}: {advice} (or name fewer with --models)")


def update(config: MedrayConfig, storage: Storage) -> dict[str, Any]:
    """Roll every served model to its current champion, in place. The ingress keeps the
    auth it runs with, whatever this shell's MEDRAY_API_TOKEN says."""
    current = status()
    if current["status"] == "NOT_RUNNING":
        raise NotFoundError("medray is not being served; start it with `medray serve up`")
    names = sorted(name.removeprefix("model-") for name in current["deployments"] if name.startswith("model-"))
    before = {name: current["deployments"][f"model-{name}"].get("version") for name in names}
    deployed = _run(config, storage, champions(config, Registry(storage), names), _running_auth())
    deployed["changed"] = {n: {"from": before[n], "to": v} for n, v in deployed["models"].items() if before[n] != v}
    return deployed


def _run(config: MedrayConfig, storage: Storage, versions: dict[str, int], auth: dict[str, str]) -> dict[str, Any]:
    from ray import serve
    from ray.serve.api import RunTarget

    applications = build_applications(config, storage, versions, auth)
    ingress_prefix, ingress = applications.pop(APP_NAME)
    # The models' applications together (their replicas load in parallel), then the
    # ingress, which looks them up; then the models no longer served, which it no longer calls.
    serve.run_many([RunTarget(target, name=name, route_prefix=prefix) for name, (prefix, target) in applications.items()])
    serve.run(ingress, name=APP_NAME, route_prefix=ingress_prefix)
    for stale in set(_model_applications()) - set(applications):
        serve.delete(stale)
    http = proxy_options()
    url = f"http://{'127.0.0.1' if http.host in ('0.0.0.0', '::') else http.host}:{http.port}"
    return {"url": url, "page": page_url(url), "host": http.host, "auth": bool(auth), "models": versions}


def _running_auth() -> dict[str, str]:
    """The running ingress's `auth` setting; refuses when it cannot be read, rather than
    guess and redeploy an open API."""
    from ray import serve

    try:
        handle = serve.get_deployment_handle("Ingress", app_name=APP_NAME)
        return handle.auth_settings.remote().result(timeout_s=30)
    except Exception:  # an ingress from an older medray, or one not answering
        raise MedrayError("cannot read how the running API checks its token, so it is not redeployed; "
                          f"run `medray serve up` again (with {TOKEN_VARIABLE} set for a token)") from None


def status() -> dict[str, Any]:
    from ray import serve

    applications = serve.status().applications
    app = applications.get(APP_NAME)
    if app is None:
        return {"status": "NOT_RUNNING", "deployments": {}}
    deployments, statuses = {}, []
    for app_name in [APP_NAME, *_model_applications(applications)]:
        statuses.append(_name(applications[app_name].status))
        for name, state in applications[app_name].deployments.items():
            deployments[name] = {"status": _name(state.status),
                                 "replicas": {_name(k): v for k, v in state.replica_states.items()}}
            if name.startswith("model-"):
                deployments[name]["version"] = _served_version(name, app_name)
    # The whole is as far along as its least ready application.
    return {"status": next((s for s in statuses if s != "RUNNING"), "RUNNING"), "deployments": deployments}


def _model_applications(applications: dict[str, Any] | None = None) -> list[str]:
    from ray import serve

    if applications is None:
        applications = serve.status().applications
    return sorted(name for name in applications if name.startswith(model_app_name("")))


def model_handle(name: str):
    """A handle to the deployment serving model `name`, in either layout."""
    from ray import serve

    app_name = model_app_name(name)
    return serve.get_deployment_handle(f"model-{name}", app_name=app_name if app_name in _model_applications()
                                       else APP_NAME)


def _name(state: Any) -> str:
    """A Serve status enum (or plain string) as its name."""
    return str(getattr(state, "value", state))


def _served_version(deployment: str, app_name: str) -> int | None:
    from ray import serve

    try:
        handle = serve.get_deployment_handle(deployment, app_name=app_name)
        return int(handle.info.remote().result(timeout_s=30)["version"])
    except Exception:  # not running yet: status reports it without a version
        return None


def down() -> bool:
    """Delete the application; stop the local Ray too when `serve up` started it."""
    import ray
    from ray import serve

    serve.shutdown()
    TOKEN_FILE.unlink(missing_ok=True)  # a secret at rest outlives no server
    state = _local_state()
    if state is None or state["address"] != _connected_to:
        return False
    ray.shutdown()
    try:
        os.killpg(state["pid"], signal.SIGTERM)  # `ray start --block` stops its node's processes
    except ProcessLookupError:
        pass
    LOCAL_STATE.unlink(missing_ok=True)
    return True


# The local Ray `serve up` starts is its own, found again through this file: `ray.init("auto")`
# would attach Serve to whatever Ray runs here, e.g. a training run's, which ends with it.
LOCAL_STATE = MEDRAY_HOME / "serve-ray.json"
_connected_to: str | None = None


def _local_state() -> dict[str, Any] | None:
    try:
        return json.loads(LOCAL_STATE.read_text())
    except (OSError, ValueError):
        return None


def connect(config: MedrayConfig, start: bool) -> None:
    """Join the Ray that serves: the configured cluster, else the local Ray an earlier
    `serve up` started; `serve up` starts one (it outlives this command) when neither."""
    global _connected_to
    import ray

    from medray.cluster.runtime import RAY_TUNING, ensure_ray, free_port

    if ray.is_initialized():
        return
    if config.ray.address or os.environ.get("RAY_ADDRESS"):
        ensure_ray(config.ray)
        return
    state = _local_state()
    if state is not None:
        try:
            ray.init(address=state["address"], logging_level=logging.WARNING)
            _connected_to = state["address"]
            return
        except ConnectionError:
            LOCAL_STATE.unlink(missing_ok=True)  # that Ray is gone
    if not start:
        raise NotFoundError("nothing is being served here: no Ray started by `medray serve up` is running "
                            "(set RAY_ADDRESS for a cluster)")
    port = free_port()
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={port}", "--block",
               "--include-dashboard=false", "--disable-usage-stats"] + (
        [f"--num-cpus={config.ray.num_cpus}"] if config.ray.num_cpus else [])
    log.info("starting a local Ray for serving (stopped by `medray serve down`)")
    process = subprocess.Popen(command, env={**os.environ, **RAY_TUNING}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while not _listening(port):  # the head's GCS is up; ray.init itself waits long on a dead address
        if process.poll() is not None or time.monotonic() > deadline:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
            raise MedrayError("could not start a local Ray for serving (`ray start --head` did not come up)")
        time.sleep(0.5)
    ray.init(address=address, logging_level=logging.WARNING)
    LOCAL_STATE.parent.mkdir(parents=True, exist_ok=True)
    LOCAL_STATE.write_text(json.dumps({"address": address, "pid": process.pid}))
    _connected_to = address


def _listening(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def app_builder(args: dict[str, Any]):
    """For `serve deploy serve/serve_config.yaml` on a cluster: args `config` (a YAML
    path, optional), `overrides` (list of key=value), `storage` (else MEDRAY_STORAGE), and
    where each node holds the API token: `token_env` (a variable's name) or `token_file`
    (a path). Naming neither serves an open API, which only starts on loopback."""
    from medray.cluster.config import load_config

    config = load_config(args.get("config"), list(args.get("overrides") or []))
    storage = Storage.from_cli(args.get("storage"), config.storage)
    auth = {key: str(args[key]) for key in ("token_env", "token_file") if args.get(key)}
    # Checked here too, though the ingress checks again: a refusal here names the problem
    # in the deploy's status instead of in a replica's crash log.
    if not auth:
        refuse_open_beyond_loopback(None, proxy_options().host)
    return build_app(config, storage, champions(config, Registry(storage)), auth)
