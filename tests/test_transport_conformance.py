"""Every transport the runner ships against real loopback servers speaking real-internet HTTP.

Proxies from the environment (HTTP_PROXY, CONNECT via HTTPS_PROXY, NO_PROXY), TLS with a
private CA (SSL_CERT_FILE, or the job's CA bundle), an untrusted certificate (fatal at
once), gzip/deflate, chunked and close-delimited bodies, 1xx before the answer, redirects
(never followed for API calls), keep-alive connections the server closes when idle, an
IPv6 literal, credentials and a query in the base URL, and an answer over the size cap.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from simproc import SimProcess
from transport_servers import Origin, Proxy, Reply, Seen, ServerThread, TlsFiles, reply, tls_files

from runner.artifacts import Downloader, Provenance
from runner.endpoints import raise_for_answer
from runner.errors import AnswerTooLarge, TransportFatal, UsageError
from runner.http import HttpConfig, Transport, make_transport

pytestmark = pytest.mark.anyio

TRANSPORTS = ["fast", "httpx"]
KEY = "conformance-secret-key"
BODY = b'{"model": "glm-4.5-air", "messages": []}'
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "SSL_CERT_FILE")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def servers() -> Iterator[ServerThread]:
    st = ServerThread()
    yield st
    st.close()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return tls_files(tmp_path_factory.mktemp("tls"))


def echo(seen: Seen) -> Reply:
    return reply(body=b'{"target": "%s"}' % seen.target.encode())


def transport(kind: str, base: str, config: HttpConfig | None = None) -> Transport:
    return make_transport(kind, base, KEY, config=config)


async def post(t: Transport, path: str = "/chat/completions") -> bytes:
    try:
        resp = await t.request("POST", path, BODY, 10.0)
    finally:
        await t.aclose()
    assert resp.status == 200, resp
    return resp.body


# -- base URL ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_query_and_credentials_in_the_base_url_are_kept(
    kind: str, servers: ServerThread
) -> None:
    origin = servers.serve(Origin(echo))
    base = origin.url.replace("://", "://us%40er:p%3Ass@") + "/api/paas/v4?tenant=7"
    t = transport(kind, base)
    try:
        for path in ("/chat/completions", "/files?purpose=batch"):
            resp = await t.request("POST" if "chat" in path else "GET", path, None, 10.0)
            assert resp.status == 200
    finally:
        await t.aclose()
    targets = [s.target for s in origin.seen]
    assert targets == [
        "/api/paas/v4/chat/completions?tenant=7",
        "/api/paas/v4/files?purpose=batch&tenant=7",
    ]
    # user:pass@ authenticates as HTTP Basic (as curl and httpx do); the key is not sent then.
    assert origin.seen[0].headers["authorization"] == "Basic dXNAZXI6cDpzcw=="


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_ipv6_literal(kind: str, servers: ServerThread) -> None:
    try:
        origin = servers.serve(Origin(echo, host="::1"))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    assert await post(transport(kind, f"{origin.url}/v4")) == b'{"target": "/v4/chat/completions"}'
    assert origin.seen[0].headers["host"] == f"[::1]:{origin.port}"
    assert origin.seen[0].headers["authorization"] == f"Bearer {KEY}"


# -- bodies ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TRANSPORTS)
@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate"])
async def test_compressed_bodies(kind: str, encoding: str, servers: ServerThread) -> None:
    text = b'{"text": "' + b"hello " * 5000 + b'"}'
    origin = servers.serve(Origin(lambda s: reply(body=text, encoding=encoding)))
    assert await post(transport(kind, origin.url)) == text
    assert "gzip" in origin.seen[0].headers["accept-encoding"]
    assert "deflate" in origin.seen[0].headers["accept-encoding"]


@pytest.mark.parametrize("kind", TRANSPORTS)
@pytest.mark.parametrize("framing", ["chunked", "close"])
async def test_chunked_and_close_delimited_bodies(
    kind: str, framing: str, servers: ServerThread
) -> None:
    text = b'{"text": "' + b"x" * 70_000 + b'"}'
    origin = servers.serve(Origin(lambda s: reply(body=text, framing=framing)))
    t = transport(kind, origin.url)
    try:
        for _ in range(3):  # and the next request still works (a new connection after close)
            resp = await t.request("POST", "/chat/completions", BODY, 10.0)
            assert resp.status == 200 and resp.body == text
    finally:
        await t.aclose()
    assert origin.connections == (3 if framing == "close" else 1)


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_1xx_then_the_real_answer(kind: str, servers: ServerThread) -> None:
    interim = [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"]
    origin = servers.serve(
        Origin(lambda s: reply(body=b'{"n": %d}' % len(origin.seen), interim=interim))
    )
    t = transport(kind, origin.url)
    try:
        bodies = [(await t.request("POST", "/chat/completions", BODY, 10.0)).body for _ in "ab"]
    finally:
        await t.aclose()
    # Each request gets its own answer: a 1xx never resolves one, nor shifts the next.
    assert bodies == [b'{"n": 1}', b'{"n": 2}']


@pytest.mark.parametrize("kind", TRANSPORTS)
@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
async def test_an_oversized_answer_is_capped(
    kind: str, framing: str, servers: ServerThread
) -> None:
    origin = servers.serve(Origin(lambda s: reply(body=b"y" * 300_000, framing=framing)))
    t = transport(kind, origin.url, HttpConfig(max_answer_bytes=100_000))
    with pytest.raises(AnswerTooLarge, match="100000-byte cap"):
        await post(t)


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_a_gzip_bomb_is_capped(kind: str, servers: ServerThread) -> None:
    origin = servers.serve(Origin(lambda s: reply(body=b"0" * 5_000_000, encoding="gzip")))
    t = transport(kind, origin.url, HttpConfig(max_answer_bytes=100_000))
    with pytest.raises(AnswerTooLarge):
        await post(t)


# -- redirects and keep-alive ---------------------------------------------------------------


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_a_redirect_is_not_followed_for_api_calls(kind: str, servers: ServerThread) -> None:
    moved = "https://api.example.test/v4/chat/completions"
    origin = servers.serve(Origin(lambda s: reply(307, b"", headers={"Location": moved})))
    t = transport(kind, origin.url)
    try:
        resp = await t.request("POST", "/chat/completions", BODY, 10.0)
    finally:
        await t.aclose()
    assert resp.status == 307 and len(origin.seen) == 1
    with pytest.raises(TransportFatal, match=r"redirected .* to https://api\.example\.test"):
        raise_for_answer(resp)


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_a_keepalive_connection_closed_when_idle_is_replaced(
    kind: str, servers: ServerThread
) -> None:
    origin = servers.serve(Origin(echo, idle_close=1.0))
    t = transport(kind, origin.url)
    try:
        for _ in range(2):
            resp = await t.request("POST", "/chat/completions", BODY, 10.0)
            assert resp.status == 200
            await anyio.sleep(1.3)  # the server closes the idle connection meanwhile
    finally:
        await t.aclose()
    assert len(origin.seen) == 2 and origin.connections == 2


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_a_request_crossing_the_servers_close_goes_again(
    kind: str, servers: ServerThread
) -> None:
    """The server closes a kept-alive connection as our request arrives, answering nothing:
    the request goes again on a fresh connection at once, not as a dropped (ambiguous) one."""

    def handler(seen: Seen) -> Reply:
        if seen.conn == 1 and sum(s.conn == 1 for s in origin.seen) == 2:
            return Reply(b"", close=True)
        return echo(seen)

    origin = servers.serve(Origin(handler))
    t = transport(kind, origin.url)
    try:
        for _ in range(2):
            assert (await t.request("POST", "/chat/completions", BODY, 10.0)).status == 200
    finally:
        await t.aclose()
    assert [s.conn for s in origin.seen] == [1, 1, 2]


# -- proxies --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_http_proxy_and_no_proxy(
    kind: str, servers: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    origin = servers.serve(Origin(echo))
    proxy = servers.serve(Proxy())
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    await post(transport(kind, origin.url + "/v4?x=1"))
    assert proxy.forwarded == [f"POST {origin.url}/v4/chat/completions?x=1"]
    assert origin.seen[0].target == "/v4/chat/completions?x=1"
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    await post(transport(kind, origin.url + "/v4"))
    assert len(proxy.forwarded) == 1 and len(origin.seen) == 2
    monkeypatch.delenv("NO_PROXY")
    monkeypatch.delenv("HTTP_PROXY")
    monkeypatch.setenv("ALL_PROXY", proxy.url)
    await post(transport(kind, origin.url + "/v4"))
    assert len(proxy.forwarded) == 2 and len(origin.seen) == 3


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_https_through_a_connect_proxy_with_ssl_cert_file(
    kind: str, servers: ServerThread, tls: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    origin = servers.serve(Origin(echo, tls=tls.server))
    proxy = servers.serve(Proxy())
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca_file))
    t = transport(kind, origin.url + "/api/paas/v4")
    try:
        for _ in range(3):
            assert (await t.request("POST", "/chat/completions", BODY, 10.0)).status == 200
    finally:
        await t.aclose()
    assert proxy.connects == [f"127.0.0.1:{origin.port}"]  # one tunnel, kept alive
    assert origin.seen[0].headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_a_proxy_refusing_the_tunnel_is_fatal(
    kind: str, servers: ServerThread, tls: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    origin = servers.serve(Origin(echo, tls=tls.server))
    proxy = servers.serve(Proxy(refuse=407))
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    with pytest.raises(TransportFatal, match="407"):
        await post(transport(kind, origin.url, HttpConfig(ca_bundle=tls.ca_file)))


# -- TLS ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_tls_with_the_ca_bundle_option(
    kind: str, servers: ServerThread, tls: TlsFiles
) -> None:
    origin = servers.serve(Origin(echo, tls=tls.server))
    await post(transport(kind, origin.url, HttpConfig(ca_bundle=tls.ca_file)))


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_an_untrusted_certificate_is_fatal_at_once(
    kind: str, servers: ServerThread, tls: TlsFiles, tmp_path: Path
) -> None:
    origin = servers.serve(Origin(echo, tls=tls.server))
    started = time.monotonic()
    with pytest.raises(TransportFatal) as caught:
        await post(transport(kind, origin.url))
    message = str(caught.value)
    assert "certificate" in message and f"127.0.0.1:{origin.port}" in message
    assert "--ca-bundle" in message and KEY not in message
    assert time.monotonic() - started < 5
    assert origin.seen == []


async def test_an_unreadable_ca_bundle_is_fatal(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(TransportFatal, match="CA bundle"):
        HttpConfig(ca_bundle=bad).ssl_context()


# -- a whole job ----------------------------------------------------------------------------


def _job_spec(path: Path, chats: int, videos: int) -> Path:
    rows = [
        {
            "custom_id": f"c{i}",
            "url": "/v4/chat/completions",
            "body": {"model": "glm-4.5-air", "messages": [{"role": "user", "content": f"q {i}"}]},
        }
        for i in range(chats)
    ] + [
        {
            "custom_id": f"v{i}",
            "url": "/v4/videos/generations",
            "body": {"model": "cogvideox-3", "prompt": f"waves {i}"},
        }
        for i in range(videos)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _runner(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k.upper() not in _PROXY_VARS}
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        env={**clean, "ZAI_API_KEY": KEY, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def tls_sim(tls: TlsFiles) -> Iterator[SimProcess]:
    with SimProcess(
        "--task-seconds", "0.2",
        "--ssl-certfile", str(tls.cert_file), "--ssl-keyfile", str(tls.key_file),
        ca_file=tls.ca_file,
    ) as sim:  # fmt: skip
        yield sim


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_a_job_over_verified_tls_through_a_connect_proxy(
    kind: str, tmp_path: Path, tls: TlsFiles, tls_sim: SimProcess, servers: ServerThread
) -> None:
    """Chat rows, video tasks and their files: every call through the tunnel, verified."""
    proxy = servers.serve(Proxy())
    spec = _job_spec(tmp_path / "spec.jsonl", chats=30, videos=3)
    out = tmp_path / "out"
    env = {"HTTPS_PROXY": proxy.url, "SSL_CERT_FILE": str(tls.ca_file)}
    args = ["run", str(spec), "--out", str(out), "--base-url", tls_sim.base_url]
    r = _runner([*args, "--transport", kind, "--concurrency", "8", "--no-progress"], env)
    assert r.returncode == 0, r.stderr
    assert "finished: all 33 rows succeeded" in r.stdout
    status = json.loads(_runner(["status", str(out), "--json"], {}).stdout)
    assert status["succeeded"] == 33
    files = sorted(p.name for p in (out / "artifacts").iterdir() if not p.name.endswith(".json"))
    assert len(files) == 6 and sum(".video." in f for f in files) == 3  # a video and a cover each
    port = tls_sim.base_url.split("://")[1].split("/")[0].split(":")[1]
    assert set(proxy.connects) == {f"127.0.0.1:{port}"}  # API calls and downloads alike
    stats = tls_sim.stats()
    assert stats["tasks"]["submitted"] == 3 and stats["downloads"] == 6


def test_the_ca_bundle_of_a_job_file_serves_api_calls_and_downloads(
    tmp_path: Path, tls: TlsFiles, tls_sim: SimProcess
) -> None:
    spec = _job_spec(tmp_path / "spec.jsonl", chats=5, videos=1)
    job = tmp_path / "job.toml"
    job.write_text(
        f'spec = "spec.jsonl"\nout = "out"\nbase_url = "{tls_sim.base_url}"\n'
        f'ca_bundle = "{tls.ca_file.name}"\n'
    )
    assert tls.ca_file.parent != tmp_path
    (tmp_path / tls.ca_file.name).write_bytes(tls.ca_file.read_bytes())
    r = _runner(["run", str(job), "--no-progress"], {})
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "out" / "artifacts").glob("*.video.mp4"))) == 1
    assert spec.exists()


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_an_untrusted_certificate_stops_the_job_at_once(
    kind: str, tmp_path: Path, tls_sim: SimProcess
) -> None:
    spec = _job_spec(tmp_path / "spec.jsonl", chats=200, videos=2)
    started = time.monotonic()
    r = _runner(
        ["run", str(spec), "--out", str(tmp_path / "out"), "--base-url", tls_sim.base_url,
         "--transport", kind, "--concurrency", "50", "--no-progress"],
        {},
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert r.returncode == 3, r.stderr
    assert r.stderr.count("is not trusted") == 1, r.stderr
    assert "certificate" in r.stderr and "--ca-bundle" in r.stderr
    assert "Traceback" not in r.stderr and "refused the account" not in r.stderr
    assert elapsed < 15
    assert sum(tls_sim.stats()["requests"].values()) == 0


# -- artifact downloads and batch files: the same settings ---------------------------------


def _downloader(tmp_path: Path, config: HttpConfig, max_bytes: int = 10_000_000) -> Downloader:
    async def no_wait(n: int) -> None:
        return None

    d = Downloader(tmp_path, max_bytes=max_bytes, concurrency=2, timeout=10.0, sleep=no_wait,
                   config=config)  # fmt: skip
    d.prepare()
    return d


PROV = Provenance("zai", "cogvideox-3", "videos/generations", "task-1", "req-1", "row-1")


async def _no_refresh() -> dict[str, object]:
    raise AssertionError("no refresh expected")


def _files(seen: Seen) -> Reply:
    if seen.target == "/old.mp4":
        return reply(302, b"", headers={"Location": "/new.mp4"})
    return reply(body=b"\x00video-bytes" * 100, headers={"Content-Type": "video/mp4"})


async def test_artifact_downloads_follow_redirects_through_the_proxy(
    tmp_path: Path, servers: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    origin = servers.serve(Origin(_files))
    proxy = servers.serve(Proxy())
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    d = _downloader(tmp_path, HttpConfig())
    try:
        body = {"video_result": [{"url": origin.url + "/old.mp4"}]}
        [record] = await d.fetch(PROV, body, _no_refresh)
    finally:
        await d.aclose()
    assert record["bytes"] == 1200
    assert [s.target for s in origin.seen] == ["/old.mp4", "/new.mp4"]
    assert proxy.forwarded == [f"GET {origin.url}/old.mp4", f"GET {origin.url}/new.mp4"]


async def test_an_artifact_host_with_an_untrusted_certificate_stops_the_job(
    tmp_path: Path, servers: ServerThread, tls: TlsFiles
) -> None:
    origin = servers.serve(Origin(_files, tls=tls.server))
    d = _downloader(tmp_path, HttpConfig())
    try:
        with pytest.raises(TransportFatal, match="not trusted"):
            await d.fetch(PROV, {"video_result": [{"url": origin.url + "/v.mp4"}]}, _no_refresh)
    finally:
        await d.aclose()
    d = _downloader(tmp_path, HttpConfig(ca_bundle=tls.ca_file))
    try:
        [record] = await d.fetch(
            PROV, {"video_result": [{"url": origin.url + "/v.mp4"}]}, _no_refresh
        )
    finally:
        await d.aclose()
    assert record["bytes"] == 1200


def test_batch_mode_over_verified_tls_through_a_connect_proxy(
    tmp_path: Path, tls: TlsFiles, servers: ServerThread
) -> None:
    """Files uploaded and downloaded, batches created and polled: all through the tunnel."""
    proxy = servers.serve(Proxy())
    with SimProcess(
        "--batch-seconds", "0.2",
        "--ssl-certfile", str(tls.cert_file), "--ssl-keyfile", str(tls.key_file),
        ca_file=tls.ca_file,
    ) as sim:  # fmt: skip
        spec = _job_spec(tmp_path / "spec.jsonl", chats=12, videos=0)
        out = tmp_path / "out"
        env = {"HTTPS_PROXY": proxy.url}
        r = _runner(
            ["run", str(spec), "--out", str(out), "--base-url", sim.base_url, "--mode", "batch",
             "--ca-bundle", str(tls.ca_file), "--no-progress"],
            env,
        )  # fmt: skip
        stats = sim.stats()
    assert r.returncode == 0, r.stderr
    assert stats["batch"]["requests"] == 12 and stats["batch"]["files"] >= 1
    assert proxy.connects and all(c.startswith("127.0.0.1:") for c in proxy.connects)


def test_a_proxy_the_fast_transport_cannot_speak_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "socks5://user:secret@127.0.0.1:1080")
    with pytest.raises(UsageError, match="--transport httpx") as caught:
        make_transport("fast", "https://api.example.test/v4", KEY)
    assert "secret" not in str(caught.value)


def test_the_cli_says_so_without_a_traceback(tmp_path: Path) -> None:
    spec = _job_spec(tmp_path / "spec.jsonl", chats=2, videos=0)
    r = _runner(
        ["run", str(spec), "--out", str(tmp_path / "out"), "--provider", "sim", "--no-progress"],
        {"HTTP_PROXY": "socks5://user:secret@127.0.0.1:1080"},
    )
    assert r.returncode == 2, r.stderr
    assert "--transport httpx" in r.stderr and "Traceback" not in r.stderr
