"""The simulator as a real process, for tests that kill or run the CLI as a user would."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["SimProcess"]


class SimProcess:
    """`python -m runner.sim --port 0 ...`; the first stdout line is its base URL."""

    def __init__(self, *args: str, ca_file: Path | None = None) -> None:
        # With --ssl-certfile the simulator serves https; ca_file is the CA that signed it.
        self._ctx = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runner.sim", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        assert self.proc.stdout is not None
        self.base_url = self.proc.stdout.readline().strip()
        if not self.base_url.startswith(("http://", "https://")):
            self.stop()
            raise RuntimeError(f"the simulator did not start: {self.base_url!r}")
        self.root = self.base_url.split("/api/")[0]

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.root + "/_sim/stats", timeout=10, context=self._ctx) as r:
            return dict(json.loads(r.read()))

    def get(self, path: str, key: str | None = None) -> Any:
        """GET a platform path (e.g. batches) as a client would, with an optional key."""
        req = urllib.request.Request(path)
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        with urllib.request.urlopen(req, timeout=10, context=self._ctx) as r:
            return json.loads(r.read())

    def configure(self, **knobs: Any) -> None:
        req = urllib.request.Request(
            self.root + "/_sim/config", data=json.dumps(knobs).encode(), method="POST"
        )
        with urllib.request.urlopen(req, timeout=10, context=self._ctx) as r:
            r.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
