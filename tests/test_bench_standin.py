"""bench/standin.py, the benchmarks' lean chat server: the runner against it, its limit and
its HTTP framing (requests split across reads, several in one read)."""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest

from jobs import KEY

ROOT = Path(__file__).resolve().parents[1]
STANDIN = ROOT / "bench" / "standin.py"
LATENCY, LIMIT = 0.05, 5


def _harness() -> ModuleType:
    """bench/harness.py by path: bench/ is scripts, not a package."""
    spec = importlib.util.spec_from_file_location("bench_harness", ROOT / "bench" / "harness.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class Standin:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        url = urlsplit(base_url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.path = url.path + "/chat/completions"

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=10)

    def stats(self) -> dict[str, Any]:
        conn = self.connection()
        try:
            conn.request("GET", "/_sim/stats")
            return dict(json.loads(conn.getresponse().read()))
        finally:
            conn.close()

    def chat(self, prompt: str, model: str = "glm-4.5-air") -> tuple[int, dict[str, Any]]:
        conn = self.connection()
        try:
            conn.request("POST", self.path, _body(prompt, model), _headers())
            r = conn.getresponse()
            return r.status, json.loads(r.read())
        finally:
            conn.close()


def _body(prompt: str, model: str = "glm-4.5-air") -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}]}).encode()


def _headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


@pytest.fixture(params=["uvloop", "stdlib"])
def standin(request: pytest.FixtureRequest) -> Iterator[Standin]:
    args = ["--port", "0", "--latency", str(LATENCY), "--concurrency", str(LIMIT)]
    if request.param == "stdlib":
        args.append("--no-uvloop")
    proc = subprocess.Popen(
        [sys.executable, str(STANDIN), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    try:
        assert line.startswith("http://127.0.0.1:") and line.endswith("/api/paas/v4"), line
        yield Standin(line)
    finally:
        proc.terminate()
        # SIGTERM is a clean exit, not a traceback.
        assert proc.wait(10) == 0
        assert proc.stderr is not None and proc.stderr.read() == ""


def test_runner_against_standin(standin: Standin, tmp_path: Path) -> None:
    spec = _harness().write_spec(tmp_path / "spec.jsonl", 40, "standin", models=2)
    argv = [
        sys.executable, "-m", "runner", "run", str(spec), "--out", str(tmp_path / "out"),
        "--provider", "zai", "--base-url", standin.base_url,
        "--concurrency", str(LIMIT), "--no-progress",
    ]  # fmt: skip
    proc = subprocess.run(
        argv,
        env={**os.environ, "ZAI_API_KEY": KEY},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = standin.stats()
    assert stats["statuses"].get("200") == 40
    assert stats["billed"] == {"requests": 40}
    assert stats["duplicates"] == {"fingerprint": []}
    assert stats["in_flight"] == 0
    (peaks,) = stats["peak_concurrency"].values()
    assert len(peaks) == 2 and max(peaks.values()) <= LIMIT
    assert KEY not in json.dumps(stats)  # keys are labelled, never served
    bench = stats["bench"]
    assert bench["last_finished"] - bench["first_received"] >= 4 * LATENCY  # 40 / (2 x 5)
    assert sum(s.get("200", 0) for s in bench["by_second"].values()) == 40


def test_over_the_limit_is_1302_at_once(standin: Standin) -> None:
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(standin.chat, [f"over {i}" for i in range(8)]))
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200] * LIMIT + [429] * (8 - LIMIT)
    for status, doc in answers:
        if status == 429:
            assert doc["error"]["code"] == "1302"
        else:
            assert doc["object"] == "chat.completion"
            assert doc["choices"][0]["finish_reason"] == "stop"
            usage = doc["usage"]
            assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    stats = standin.stats()
    assert stats["statuses"] == {"200": LIMIT, "429": 8 - LIMIT}
    assert stats["peak_in_flight"] >= LIMIT
    # The same prompt answered twice is counted; another model has its own C.
    assert standin.chat("over 0")[0] == 200
    assert standin.chat("over 0", model="glm-4.6")[0] == 200
    assert len(standin.stats()["duplicates"]["fingerprint"]) == 1


def _request(standin: Standin, prompt: str) -> bytes:
    body = _body(prompt)
    head = (
        f"POST {standin.path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _read_responses(sock: socket.socket, count: int) -> list[int]:
    """The statuses of `count` responses read off a keep-alive socket."""
    data = b""
    statuses: list[int] = []
    while len(statuses) < count:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            head = data[:end].decode()
            length = int(head.lower().split("content-length:")[1].split("\r\n")[0])
            if len(data) >= end + 4 + length:
                statuses.append(int(head.split(" ")[1]))
                data = data[end + 4 + length :]
                continue
        chunk = sock.recv(65536)
        assert chunk, "connection closed early"
        data += chunk
    return statuses


def test_split_and_coalesced_requests(standin: Standin) -> None:
    with socket.create_connection((standin.host, standin.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        one = _request(standin, "split")
        cut = one.index(b"Content-Length") + 5  # mid-header; the body comes later
        sock.sendall(one[:cut])
        time.sleep(0.05)  # two reads on the server's side, not one
        sock.sendall(one[cut:])
        assert _read_responses(sock, 1) == [200]
        sock.sendall(_request(standin, "first") + _request(standin, "second"))
        assert _read_responses(sock, 2) == [200, 200]
    assert standin.stats()["statuses"] == {"200": 3}


def test_malformed_and_unknown(standin: Standin) -> None:
    conn = standin.connection()
    try:
        conn.request("POST", standin.path, b"{not json", _headers())
        r = conn.getresponse()
        assert r.status == 400 and "error" in json.loads(r.read())
        conn.request("GET", "/api/paas/v4/models")
        r = conn.getresponse()
        assert r.status == 404 and "error" in json.loads(r.read())
    finally:
        conn.close()
    with socket.create_connection((standin.host, standin.port), timeout=10) as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):  # the server closes: the framing is lost
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]
