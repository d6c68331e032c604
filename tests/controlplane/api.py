"""A tiny JSON client for the API server, used by the starter itself (no kubectl spawn)."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


class Api:
    """JSON over HTTPS to the API server as the admin; enough for nodes, PVs and polling."""

    def __init__(self, server: str, pki: Path) -> None:
        self.server = server
        self._ssl = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self._ssl.load_cert_chain(pki / "admin.crt", pki / "admin.key")

    def call(self, method: str, path: str, body: Any = None, timeout: float = 10) -> Any:
        """The decoded JSON reply; raises urllib.error.HTTPError on a non-2xx status."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.server + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, context=self._ssl, timeout=timeout) as reply:
            raw = reply.read()
        return json.loads(raw) if raw[:1] == b"{" else raw.decode()

    def create(self, path: str, body: Any) -> None:
        """POST ``body``; an object that already exists is fine."""
        try:
            self.call("POST", path, body)
        except urllib.error.HTTPError as e:
            if e.code != 409:
                raise
