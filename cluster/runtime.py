"""Connecting to Ray: a cluster when an address is given, else a local Ray started here."""

from __future__ import annotations

import logging
import os

from medray.cluster.config import RayConfig, ScalingSection
from medray.cluster.errors import ConfigError

log = logging.getLogger(__name__)

# Settings (never secrets) a remote cluster's workers need to reach the same storage.
FORWARDED_ENV = ("MEDRAY_STORAGE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")

# Set by Ray in the driver of a job submitted through the Jobs API.
IN_RAY_JOB = "RAY_JOB_CONFIG_JSON_ENV_VAR"

# Ray Train's controller collects each worker's report only every 2 s by default, and
# `ray.train.report` blocks until it has: epochs shorter than 2 s all take 2 s (measured
# with benchmarks/train_overhead.py: 5.3x a plain loop on BreastMNIST's seed CNN, 1.04x
# at 0.25 s). Read by the controller actor, so it must be in Ray's environment.
RAY_TUNING = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}


def ensure_ray(config: RayConfig | None = None, dashboard: bool = False) -> None:
    """Use the Ray this process already has, else connect or start one.

    `dashboard`: a local Ray also starts its dashboard (on 127.0.0.1). Tune needs it: when
    ASHA stops a trial, Ray Train frees the trial's worker placement group through the
    dashboard's API; without it the CPUs stay reserved and later trials wait forever.
    """
    import ray
    import ray.data

    if ray.is_initialized():
        return
    # (The print patch makes each line a worker prints reach the driver twice.)
    for key, value in RAY_TUNING.items():
        os.environ.setdefault(key, value)
    config = config or RayConfig()
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        if IN_RAY_JOB in os.environ:  # `medray submit`: the job's runtime env already carries the settings
            ray.init(address=address, log_to_driver=True)
        else:
            env = {**RAY_TUNING, **{k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}}
            ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True)
    else:
        # Local workers inherit this process's environment, credentials included.
        options: dict = {}
        if dashboard:
            port = free_port()
            os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
            options = {"dashboard_host": "127.0.0.1", "dashboard_port": port}
        # "local": a Ray of its own, even when another (e.g. `medray serve up`'s) runs here.
        ray.init(address="local", num_cpus=config.num_cpus, include_dashboard=dashboard, log_to_driver=True,
                 configure_logging=True, logging_level=logging.WARNING, **options)
    ray.data.DataContext.get_current().enable_progress_bars = False
    from medray.cluster.console import route_worker_output

    route_worker_output()  # workers' progress lines are rendered, not printed raw


def free_port(preferred: int | None = None) -> int:
    """A TCP port free on 127.0.0.1: `preferred` when it is free, else one the OS picks.
    Free when asked only: another process may take it before the caller binds it."""
    import socket

    with socket.socket() as sock:
        if preferred is not None:
            try:
                sock.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:  # taken: a failed bind leaves the socket unbound, so ask the OS
                pass
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_placement(scaling: ScalingSection) -> None:
    """Refuse, before any work starts, a worker group the cluster cannot place."""
    import ray

    if not scaling.check_resources:
        return
    total = ray.cluster_resources()
    need_cpu = scaling.num_workers * scaling.cpus_per_worker
    have_cpu = total.get("CPU", 0.0)
    if need_cpu > have_cpu:
        raise ConfigError(
            f"scaling asks for {scaling.num_workers} workers x {scaling.cpus_per_worker:g} CPU = {need_cpu:g} CPUs, "
            f"but the cluster has {have_cpu:g}; lower scaling.num_workers or scaling.cpus_per_worker "
            "(or set scaling.check_resources=false on an autoscaling cluster)"
        )
    if scaling.use_gpu and scaling.num_workers > total.get("GPU", 0.0):
        raise ConfigError(
            f"scaling asks for {scaling.num_workers} GPU workers but the cluster has {total.get('GPU', 0.0):g} GPUs; "
            "set scaling.use_gpu=false or add GPU nodes"
        )
