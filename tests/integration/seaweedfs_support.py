"""A real SeaweedFS (``weed server -s3``) on loopback: the S3 server the chart embeds.

``weed`` comes from ``hack/realnode/build.sh`` (built from the pinned SeaweedFS
module on first use, ~10 minutes, then cached). :class:`SeaweedFS` runs it on
free loopback ports with admin credentials in a directory of its own, waits
until its S3 gateway creates buckets, and stops it by process id. The flags are
the chart's (``templates/deployment-object-store.yaml``) with paths and ports
moved, so a process started here behaves as the pod does.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "hack" / "realnode" / "build.sh"
# The components `weed server -s3` starts, each with an HTTP and a gRPC port.
COMPONENTS = ("master", "volume", "filer", "s3")


class SeaweedFSError(RuntimeError):
    """weed could not be built or did not come up; the message says why."""


def weed_binary() -> Path:
    """The ``weed`` built by hack/realnode/build.sh (building it first when missing)."""
    result = subprocess.run(
        [str(BUILD_SCRIPT)], capture_output=True, text=True, check=False, cwd=REPO
    )
    if result.returncode != 0:
        raise SeaweedFSError(f"{BUILD_SCRIPT} failed:\n{result.stderr[-4000:]}")
    weed = Path(result.stdout.strip().splitlines()[-1]) / "weed"
    if not os.access(weed, os.X_OK):
        raise SeaweedFSError(f"{BUILD_SCRIPT} printed no directory with weed in it ({weed})")
    return weed


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports on 127.0.0.1 that nothing listens on right now."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def server_args(data: Path, ports: dict[str, int], volume_size_mb: int = 64) -> list[str]:
    """The chart's ``weed server`` flags, with the data directory and ports given here."""
    args = [
        "-logtostderr", "server", f"-dir={data}",
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-s3", "-s3.ip.bind=127.0.0.1", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-master.volumeSizeLimitMB={volume_size_mb}", "-volume.max=0",
        "-volume.preStopSeconds=1", "-master.electionTimeout=1s", "-master.telemetry=false",
    ]  # fmt: skip
    return args + port_args(ports)


def loopback_args(chart_args: list[str], data: Path, ports: dict[str, int]) -> list[str]:
    """The chart's weed args for a process here: data in ``data``, free ports, S3 on loopback."""
    moved = {"-dir=/data": f"-dir={data}", "-s3.ip.bind=0.0.0.0": "-s3.ip.bind=127.0.0.1"}
    kept = [moved.get(a, a) for a in chart_args if not a.startswith("-s3.port=")]
    return kept + port_args(ports)


def port_args(ports: dict[str, int]) -> list[str]:
    """``-<component>.port`` and ``.port.grpc`` flags; ``ports`` has both for each."""
    return [
        flag
        for c in COMPONENTS
        for flag in (f"-{c}.port={ports[c]}", f"-{c}.port.grpc={ports[c + '.grpc']}")
    ]


class SeaweedFS:
    """One ``weed`` process: ``start()``, ``client()``, ``create_bucket()``, ``stop()``."""

    def __init__(
        self,
        work: Path,
        access_key: str,
        secret_key: str,
        chart_args: list[str] | None = None,
        weed: Path | None = None,
    ) -> None:
        """``chart_args``: the chart's container args to run (see :func:`loopback_args`)."""
        self.work, self.access_key, self.secret_key = work, access_key, secret_key
        names = [n for c in COMPONENTS for n in (c, f"{c}.grpc")]
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        self.data = work / "data"
        self.log = work / "weed.log"
        if chart_args is None:
            self.args = server_args(self.data, self.ports)
        else:
            self.args = loopback_args(chart_args, self.data, self.ports)
        self.weed = weed or weed_binary()
        self.endpoint_url = f"http://127.0.0.1:{self.ports['s3']}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90) -> SeaweedFS:
        """Start weed (again, after ``stop``: same data and ports) and wait until it writes."""
        self.data.mkdir(parents=True, exist_ok=True)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.work),
            "TMPDIR": str(self.work),
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }
        setpriv = shutil.which("setpriv")
        # A killed pytest must not leave weed behind: it gets SIGKILL with its parent.
        prefix = [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*prefix, str(self.weed), *self.args],
                cwd=self.work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_until_it_creates_buckets(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_it_creates_buckets(self, timeout: float) -> None:
        # /healthz answers as soon as the gateway listens; a bucket proves the
        # filer, master and volume server behind it are up too.
        deadline = time.monotonic() + timeout
        probe = f"probe-{os.getpid()}"
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise SeaweedFSError(f"weed exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.create_bucket(probe)
                self.client().put_object(Bucket=probe, Key="probe", Body=b"ok")
                return
            except (BotoCoreError, ClientError) as e:
                if time.monotonic() > deadline:
                    why = f"weed's S3 gateway not ready after {timeout:.0f}s ({e})"
                    raise SeaweedFSError(f"{why}:\n{self.log_tail()}") from e
                time.sleep(0.2)

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client with the admin keys; ``config``: botocore Config overrides."""
        settings: dict[str, Any] = {
            "s3": {"addressing_style": "path"},
            "retries": {"max_attempts": 1},
            "connect_timeout": 2,
            "read_timeout": 30,
        }
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(**(settings | config)),
        )

    def create_bucket(self, name: str) -> None:
        """Create ``name``; a bucket that is already there (and ours) is fine."""
        try:
            self.client().create_bucket(Bucket=name)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; remove the sockets it leaves in /tmp.

        A graceful stop takes ~16 s: the filer waits 15 s to flush its metadata
        log to the volume server that has already stopped.
        """
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        # weed puts its in-process gRPC and HTTP sockets in /tmp, named by port.
        for port in self.ports.values():
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)
