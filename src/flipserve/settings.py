"""The one place flipserve reads its configuration from the environment.

Every setting is a field of :class:`Settings`, read from ``FLIPSERVE_*``
environment variables (or a ``.env`` file). Nothing else in the package reads
``os.environ``: constructors take a ``Settings`` (or the values they need) as
arguments, so tests build their own instead of patching the environment.
The Helm chart puts ``values.yaml`` into these variables.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "flipserve"


class Settings(BaseSettings):
    """flipserve's settings; each field is ``FLIPSERVE_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix="FLIPSERVE_", env_file=".env", extra="ignore", protected_namespaces=()
    )

    # --- general -----------------------------------------------------------
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    """Where downloaded data, built tools and scratch artifacts are cached."""
    log_level: str = "INFO"

    # --- artifact store (store.py) -----------------------------------------
    store_uri: str = "file://./.flipserve-store"
    """Root of the artifact store: ``s3://bucket/prefix`` or ``file:///path``."""
    s3_endpoint_url: str | None = None
    """S3 API endpoint (SeaweedFS, moto); None means AWS's own."""
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_connect_timeout: float = 5.0
    s3_max_attempts: int = 3
    transfer_concurrency: int = 8
    """Parallel file transfers for publish and fetch."""
    multipart_threshold_mb: int = 64
    show_progress: bool = True

    # --- training (train.py) -----------------------------------------------
    seed: int = 13

    # --- server (server/) --------------------------------------------------
    model_dir: Path = Path("/mnt/models")
    """Mounted volume holding ``READY`` and the artifact under ``model/``."""
    model_name: str = "flipserve"
    colour: Literal["blue", "green", "local"] = "local"
    host: str = "0.0.0.0"  # noqa: S104 - a pod must listen on its own IP
    http_port: int = 8080
    max_batch_size: int = 16
    max_batch_wait_ms: float = 5.0
    max_items_per_request: int = 64
    max_body_bytes: int = 1_000_000
    torch_threads: int = 0
    """Torch intra-op threads; 0 picks the container's CPU limit."""
    api_token: SecretStr | None = None
    """Bearer token for ``POST /feedback`` and the traffic sample."""
    feedback_prefix: str = "feedback"
    ready_poll_s: float = 2.0
    """How often the server re-checks its volume's READY marker (the copier may finish later)."""
    traffic_sample_size: int = 1000
    """Recent input texts kept for ``GET /traffic/sample`` (the promotion's drift gate)."""
    shutdown_grace_s: int = 30
    """On SIGTERM, how long in-flight requests get to finish."""
    length_grouping: bool = True
    access_log: bool = False
    """One log line per request (uvicorn's access log); off by default, it costs throughput."""
    """Group queued texts of similar length into the same forward pass (less padding)."""

    # --- drift (drift.py) --------------------------------------------------
    drift_backend: Literal["alibi-mmd", "alibi-ks", "frouros-mmd", "ks"] = "ks"
    """``ks`` is the project's own (scipy, BSD); ``alibi-*`` are Business Source Licensed."""
    drift_p_value: float = 0.05
    drift_window: int = 256
    drift_min_samples: int = 64
    drift_interval_s: float = 10.0
    drift_test_max_texts: int = 4096
    """Most texts one ``POST /drift`` (the promotion's drift gate) may test."""

    # --- promotion (promotion/, copier.py, controller.py) ------------------
    release: str = "flipserve"
    namespace: str = "default"
    score_metric: str = "macro_f1"
    score_margin: float = 0.0
    """A candidate must beat production's score by more than this."""
    observe_seconds: float = 30.0
    max_error_rate: float = 0.01
    max_p99_latency_ms: float = 1000.0
    active_colour: Literal["blue", "green"] | None = None
    """For ``flipserve copy``: the colour users read now (the copy refuses to write to it)."""
    local_root: Path = Path(".flipserve-local")
    """Local backend: the blue/green directories, state.json and logs."""
    proxy_token: str = ""
    """Local backend: the admin token of the local proxy (set by the platform that starts it)."""
    heldout_path: Path | None = None
    """JSONL of ``{"text", "label"}`` for the score gate; None: the dataset's test split."""
    heldout_size: int = 500
    """How many of the test split's rows the score gate sends through the preview server."""
    drift_sample_size: int = 200
    copy_timeout_seconds: float = 1800.0
    """A copy (local copier or the cluster's copy Job) that takes longer fails the promotion."""
    ready_timeout_seconds: float = 600.0
    """How long the preview server may take to become ready."""
    rollout_timeout_seconds: float = 600.0
    """How long the API's switch (a rolling update in a cluster) may take."""

    # --- controller (controller.py, kube.py) ---------------------------------
    kubeconfig: Path | None = None
    """Kubeconfig to use; None means in-cluster, then ``~/.kube/config``."""
    kube_token_path: Path | None = None
    """A ServiceAccount token file; with ``kube_server`` it replaces the kubeconfig."""
    kube_server: str | None = None
    kube_ca_path: Path | None = None
    controller_interval_s: float = 2.0
    """How often the controller steps each unfinished Promotion."""
    controller_lease_s: float = 15.0
    """Leader-election Lease duration; a standby takes over this long after a crash."""
    controller_health_port: int = 8081
    """Port of the controller's ``GET /readyz`` and ``/healthz`` (its pod's probes; 0: any)."""
    pod_url: str = "http://{ip}:{port}"
    """How the observe window reaches each API pod of the new colour, directly: a template
    of ``{ip}`` (the pod IP), ``{port}`` (its ``http`` container port), ``{name}`` and
    ``{namespace}``. The integration tests point it at stand-ins on loopback."""
    service_urls: dict[str, str] = Field(default_factory=dict)
    """Overrides of the in-cluster URLs the gates call, by role (``preview``, ``api``).

    JSON, e.g. ``{"preview": "http://127.0.0.1:8081"}``. The integration tests point
    them at real model servers on loopback, because pods in the local control
    plane are faked by KWOK and serve nothing.
    """


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
