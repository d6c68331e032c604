"""The local platform: blue/green as two directories, real server processes and a proxy.

Layout under the local root (``--local-root``, default ``.flipserve-local``)::

    blue/ green/      the two "volumes" (``model/`` + ``READY``, filled by ``flipserve copy``)
    state.json        active colour, the model on each colour, processes, promotion history
    logs/             one log file per process
    store/            the production record, when no store is given (see below)

What is in production (and the scores a candidate must beat) is the store's
production record, not state.json: ``flipserve promote`` passes the store of
the settings (``FLIPSERVE_STORE_URI``), the same one ``flipserve publish``
writes to and every other promoter reads. A platform built without a store
keeps its record in a private ``file://`` store under the root.

The API users call is the proxy (promotion/proxy.py). A colour's server is a
real ``flipserve serve --model-dir <colour>`` process. The preview of the idle
colour *is* the server that later takes traffic: switching points the proxy
at it, in-flight requests finish on the old one, and the old server stays up
as a warm standby so a rollback is one more proxy switch. Processes are
started in their own session so they outlive the CLI that started them;
``stop_all`` ends them.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from flipserve import artifact
from flipserve.errors import ModelNotReadyError, PromotionError
from flipserve.promotion.platform import ActiveModel, CopyProgress, CopyState, Production
from flipserve.promotion.production import StoreProduction
from flipserve.promotion.proxy import ADMIN_HEADER
from flipserve.promotion.status import Colour, ModelTarget, ObservedMetrics, ServerCounters
from flipserve.settings import Settings
from flipserve.store import FileBackend, Store

STATE = "state.json"
COPY_STATUS = ".copy-status.json"
"""Written on the volume by ``flipserve copy`` (copier.STATUS_FILE): state, fraction, message."""
READY_PATH = "/v2/health/ready"
ServerCommand = Callable[[Path, int, Colour], list[str]]


def default_server_command(volume: Path, port: int, colour: Colour) -> list[str]:
    return [sys.executable, "-m", "flipserve", "serve", "--model-dir", str(volume)]


class LocalPlatform:
    """``Platform`` for one machine; see the module docstring."""

    def __init__(
        self,
        root: Path,
        *,
        server_command: ServerCommand = default_server_command,
        server_env: dict[str, str] | None = None,
        api_token: str | None = None,
        python: str = sys.executable,
        store: Store | None = None,
        updated_by: str | None = None,
    ) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)  # state.json holds the proxy's and the servers' tokens
        (self.root / "logs").mkdir(exist_ok=True)
        if store is None:
            # Only the production record is used: no transfers, so defaults (no env) suffice.
            quiet = Settings.model_construct(show_progress=False)
            store = Store(FileBackend(self.root / "store"), quiet)
        self.records = StoreProduction(
            store, updated_by or f"flipserve local {socket.gethostname()}:{self.root}"
        )
        self.server_command = server_command
        self.server_env = dict(server_env or {})
        self.api_token = api_token or self._local_token()
        self.python = python
        self.http = httpx.Client(timeout=10.0)

    # --- state -------------------------------------------------------------

    def load(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.root / STATE).read_text())
        except FileNotFoundError:
            data = {}
        data.setdefault("servers", {})
        data.setdefault("copies", {})
        data.setdefault("targets", {})
        data.setdefault("history", [])
        return data

    def save(self, state: dict[str, Any]) -> None:
        artifact.atomic_write(self.root / STATE, json.dumps(state, indent=1, default=str).encode())

    def volume(self, colour: Colour) -> Path:
        return self.root / colour.value

    @property
    def api_url(self) -> str | None:
        proxy = self.load().get("proxy")
        return f"http://127.0.0.1:{proxy['port']}" if proxy and _alive(proxy["pid"]) else None

    # --- Platform: reading --------------------------------------------------

    def active(self) -> ActiveModel | None:
        state = self.load()
        if state.get("active") is None:
            return None
        colour = Colour(state["active"])
        raw = state["targets"].get(colour.value)
        return ActiveModel(colour=colour, target=ModelTarget.model_validate(raw) if raw else None)

    def production(self) -> Production | None:
        return self.records.read()

    def write_production(self, target: ModelTarget, expected_etag: str | None) -> Production:
        return self.records.write(target, expected_etag)

    def production_scores(self) -> dict[str, float]:
        """The store's production record's scores (empty when there is no record)."""
        record = self.production()
        return dict(record.target.scores) if record else {}

    # --- Platform: copy -----------------------------------------------------

    def start_copy(self, colour: Colour, target: ModelTarget) -> None:
        state = self.load()
        if state.get("active") == colour.value:
            raise PromotionError(f"refusing to copy into {colour}: it is the active colour")
        job = state["copies"].get(colour.value)
        if job and _alive(job["pid"]):
            if job["digest"] == target.digest:
                return
            _terminate(job["pid"])  # a leftover copy of another target must not race this one
        self._stop_server(state, colour)  # a standby must not read a volume being rewritten
        cmd = [self.python, "-m", "flipserve", "copy", "--uri", target.uri]
        cmd += ["--digest", target.digest, "--version", target.version]
        cmd += ["--volume", str(self.volume(colour)), "--colour", colour.value]
        if state.get("active"):
            cmd += ["--active-colour", state["active"]]
        pid = self._spawn(cmd, f"copy-{colour}")
        state["copies"][colour.value] = {"pid": pid, "digest": target.digest}
        state["targets"].pop(colour.value, None)
        self.save(state)

    def copy_progress(self, colour: Colour, target: ModelTarget) -> CopyProgress:
        job = self.load()["copies"].get(colour.value)
        if _ready_digest(self.volume(colour)) == target.digest:
            self._remember_target(colour, target)
            return CopyProgress(state=CopyState.SUCCEEDED, fraction=1.0)
        status = _copy_status(self.volume(colour))
        if not job or job["digest"] != target.digest:
            return CopyProgress(state=CopyState.ABSENT)
        fraction = status.get("fraction") if status.get("digest") == target.digest else None
        if _alive(job["pid"]):
            return CopyProgress(state=CopyState.RUNNING, fraction=_float(fraction))
        message = str(status.get("message") or "the copy process exited")
        # Reported once: a later promotion of this target (the store fixed) copies afresh.
        state = self.load()
        state["copies"].pop(colour.value, None)
        self.save(state)
        return CopyProgress(
            state=CopyState.FAILED, message=f"{message} (log: logs/copy-{colour}.log)"
        )

    def verify(self, colour: Colour, target: ModelTarget) -> str | None:
        digest = _ready_digest(self.volume(colour))
        if digest is None:
            return "no valid READY marker"
        if digest != target.digest:
            return f"READY names digest {digest[:12]}, the ref {target.digest[:12]}"
        return None

    # --- Platform: servers ----------------------------------------------------

    def start_preview(self, colour: Colour) -> None:
        state = self.load()
        server = state["servers"].get(colour.value)
        if server and _alive(server["pid"]):
            return
        port = _free_port()
        env = {
            "FLIPSERVE_HOST": "127.0.0.1",
            "FLIPSERVE_HTTP_PORT": str(port),
            "FLIPSERVE_COLOUR": colour.value,
            "FLIPSERVE_MODEL_DIR": str(self.volume(colour)),
            "FLIPSERVE_API_TOKEN": self.api_token,  # the drift gate reads /traffic/sample
        }
        cmd = self.server_command(self.volume(colour), port, colour)
        pid = self._spawn(cmd, f"server-{colour}", env)
        state["servers"][colour.value] = {"pid": pid, "port": port}
        self.save(state)

    def preview_url(self, colour: Colour) -> str | None:
        server = self.load()["servers"].get(colour.value)
        if not server or not _alive(server["pid"]):
            return None
        url = f"http://127.0.0.1:{server['port']}"
        try:
            ok = self.http.get(url + READY_PATH, timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return None
        return url if ok else None

    def stop_preview(self, colour: Colour) -> None:
        state = self.load()
        if state.get("active") == colour.value:
            return  # the preview became the live server at the switch
        self._stop_server(state, colour)
        self.save(state)

    def wait_ready(self, colour: Colour, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while (url := self.preview_url(colour)) is None:
            server = self.load()["servers"].get(colour.value)
            if not server or not _alive(server["pid"]):
                raise ModelNotReadyError(
                    f"the {colour} server exited (log: logs/server-{colour}.log)"
                )
            if time.monotonic() > deadline:
                raise ModelNotReadyError(f"the {colour} server was not ready within {timeout:.0f}s")
            time.sleep(0.2)
        return url

    # --- Platform: traffic and switching --------------------------------------

    def traffic_sample(self, n: int) -> list[str]:
        state = self.load()
        active = state.get("active")
        server = state["servers"].get(active) if active else None
        if server and _alive(server["pid"]):
            texts = self._server_sample(f"http://127.0.0.1:{server['port']}", n)
            if texts is not None:
                return texts
        body = self._admin("GET", "/-/traffic", params={"n": n})
        return [str(t) for t in body.get("texts", [])] if body else []

    def switch(self, colour: Colour, target: ModelTarget | None) -> bool:
        self.start_preview(colour)
        url = self.wait_ready(colour, timeout=120.0)
        self._ensure_proxy(url, colour)
        body = self._admin("PUT", "/-/backend", json={"url": url, "colour": colour.value})
        state = self.load()
        changed = state.get("active") != colour.value or bool(body and body.get("changed"))
        previous = state.get("active")
        if previous and previous != colour.value:  # what a rollback returns to
            state["standby"] = {"colour": previous, "target": state["targets"].get(previous)}
        state["active"] = colour.value
        if target is not None:
            state["targets"][colour.value] = target.model_dump(mode="json")
        self.save(state)
        return changed

    def rollout_done(self, colour: Colour) -> bool:
        """Done when the proxy sends to ``colour`` and the other backend has drained."""
        stats = self._admin("GET", "/-/stats", params={"colour": colour.value, "since": 1})
        if not stats or stats.get("backend") != colour.value:
            return False
        return int(stats.get("in_flight", {}).get(colour.other.value, 0)) == 0

    def observe_start(self, colour: Colour) -> dict[str, ServerCounters]:
        return {}  # the proxy counts per colour over a time window itself

    def observe(
        self, colour: Colour, since_seconds: float, baseline: dict[str, ServerCounters]
    ) -> ObservedMetrics:
        stats = self._admin(
            "GET", "/-/stats", params={"colour": colour.value, "since": max(since_seconds, 1.0)}
        )
        observed = ObservedMetrics(
            requests=int((stats or {}).get("requests", 0)),
            errors=int((stats or {}).get("errors", 0)),
            p99_latency_ms=(stats or {}).get("p99_latency_ms"),
        )
        server = self.load()["servers"].get(colour.value)
        if server:
            try:
                drift = self.http.get(f"http://127.0.0.1:{server['port']}/drift").json()
                observed.drift = bool(drift.get("drift"))
                observed.drift_p_value = _float(drift.get("p_value"))
            except (httpx.HTTPError, ValueError, AttributeError):
                pass  # a server without online drift cannot breach on it
        return observed

    # --- beyond the protocol: rollback, history, teardown ---------------------

    def previous(self) -> ModelTarget | None:
        """The model that served before the last switch, on the colour now idle."""
        active = self.active()
        standby = self.load().get("standby") or {}
        raw = standby.get("target")
        if active is None or standby.get("colour") != active.colour.other.value or not raw:
            return None
        return ModelTarget.model_validate(raw)

    def held(self, colour: Colour) -> ModelTarget | None:
        """The model ``colour``'s volume holds now: the one its READY marker names.

        After a refused promotion the idle colour holds the refused candidate,
        not the model that served before it; None while a copy is incomplete.
        """
        try:
            ready = artifact.read_ready(self.volume(colour))
        except ModelNotReadyError:
            return None
        known = self.target_on(colour)
        if known is not None and known.digest == ready.digest:
            return known
        return ModelTarget(version=ready.version, uri="unknown", digest=ready.digest)

    def target_on(self, colour: Colour) -> ModelTarget | None:
        raw = self.load()["targets"].get(colour.value)
        return ModelTarget.model_validate(raw) if raw else None

    def append_history(self, entry: dict[str, Any], key: str | None = None) -> None:
        """Add (or, with the same ``key``, replace) one promotion in the history."""
        state = self.load()
        history = [h for h in state["history"] if key is None or h.get("key") != key]
        history.append({**entry, "key": key})
        state["history"] = history[-50:]
        self.save(state)

    def stop_all(self) -> None:
        state = self.load()
        for colour in Colour:
            self._stop_server(state, colour)
        for job in state["copies"].values():
            _terminate(job["pid"])
        state["copies"] = {}
        if state.get("proxy"):
            _terminate(state["proxy"]["pid"])
            state["proxy"] = None
        self.save(state)  # the active colour stays: the next switch restarts what it needs

    # --- internals --------------------------------------------------------

    def _local_token(self) -> str:
        """The bearer token of the servers this root starts, made once and kept in state."""
        state = self.load()
        if not state.get("api_token"):
            state["api_token"] = secrets.token_hex(16)
            self.save(state)
        return str(state["api_token"])

    def _spawn(self, cmd: Sequence[str], name: str, env: dict[str, str] | None = None) -> int:
        log = (self.root / "logs" / f"{name}.log").open("ab")
        full_env = {**os.environ, **self.server_env, **(env or {})}
        proc = subprocess.Popen(  # detached: it must outlive this CLI
            list(cmd), stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
        )
        log.close()
        return proc.pid

    def _stop_server(self, state: dict[str, Any], colour: Colour) -> None:
        server = state["servers"].pop(colour.value, None)
        if server:
            _terminate(server["pid"])

    def _ensure_proxy(self, url: str, colour: Colour) -> None:
        state = self.load()
        proxy = state.get("proxy")
        if proxy and _alive(proxy["pid"]):
            return
        token = secrets.token_hex(16)
        port = _free_port()
        cmd = [self.python, "-m", "flipserve", "proxy", "--port", str(port)]
        cmd += ["--backend", url, "--colour", colour.value]
        pid = self._spawn(cmd, "proxy", {"FLIPSERVE_PROXY_TOKEN": token})
        state["proxy"] = {"pid": pid, "port": port, "token": token}
        self.save(state)
        deadline = time.monotonic() + 30
        while self._admin("GET", "/-/stats", params={"colour": colour.value}) is None:
            if time.monotonic() > deadline or not _alive(pid):
                raise PromotionError("the local proxy did not start (log: logs/proxy.log)")
            time.sleep(0.1)

    def _admin(self, method: str, path: str, **kw: Any) -> dict[str, Any] | None:
        proxy = self.load().get("proxy")
        if not proxy:
            return None
        try:
            r = self.http.request(
                method,
                f"http://127.0.0.1:{proxy['port']}{path}",
                headers={ADMIN_HEADER: proxy["token"]},
                **kw,
            )
            r.raise_for_status()
            body: dict[str, Any] = r.json()
            return body
        except (httpx.HTTPError, ValueError):
            return None

    def _server_sample(self, url: str, n: int) -> list[str] | None:
        headers = {"Authorization": f"Bearer {self.api_token}"}
        try:
            r = self.http.get(f"{url}/traffic/sample", params={"n": n}, headers=headers)
            if r.status_code != 200:
                return None
            body = r.json()
        except (httpx.HTTPError, ValueError):
            return None
        texts = body.get("texts", body) if isinstance(body, dict) else body
        return [str(t) for t in texts] if isinstance(texts, list) else None

    def _remember_target(self, colour: Colour, target: ModelTarget) -> None:
        state = self.load()
        if state["targets"].get(colour.value) != target.model_dump(mode="json"):
            state["targets"][colour.value] = target.model_dump(mode="json")
            self.save(state)


def _copy_status(volume: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((volume / COPY_STATUS).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data


def _ready_digest(volume: Path) -> str | None:
    try:
        return artifact.read_ready(volume).digest
    except ModelNotReadyError:
        return None


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reap our own exited children
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _terminate(pid: int, grace: float = 10.0) -> None:
    """SIGTERM (the server drains in-flight requests), then SIGKILL after ``grace``."""
    if not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.05)


def embedding_drift(
    platform: LocalPlatform, backend: str = "ks", threshold: float = 0.05
) -> Callable[[Colour, list[str]], float]:
    """A drift function for the gate: embed with the colour's own model, test vs its reference.

    The candidate model embeds the live texts (mean of its last hidden layer,
    as at training time), and flipserve.drift's detector compares them with
    the ``drift/reference.npy`` saved in the artifact.
    """

    def drift(colour: Colour, texts: list[str]) -> float:
        import numpy as np

        from flipserve.drift import make_detector
        from flipserve.modeling import TextClassifier

        model_dir = platform.volume(colour) / artifact.MODEL_SUBDIR
        reference = np.load(model_dir / "drift" / "reference.npy")
        sample = TextClassifier.load(model_dir).embed(texts)
        return float(make_detector(backend, reference, threshold).test(sample).p_value)

    return drift
