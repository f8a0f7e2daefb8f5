"""Speech to text (`audio/transcriptions`): rows naming local .wav/.mp3 files, sent as
multipart/form-data through both transports to the simulator over loopback."""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from pathlib import Path
from typing import Any

import httpx
import orjson
import pyarrow.parquet as pq
import pytest
from media import mp3, png, wav

from jobs import KEY, settings_for, write_spec
from runner import run_job
from runner.cost import load_prices
from runner.errors import RowError
from runner.estimate import estimate_spec
from runner.forms import form_body, form_fields
from runner.http.base import FilePart, Multipart
from runner.job import checkpoint_path
from runner.localfiles import (
    AUDIO,
    AudioTooLong,
    FileRefError,
    FileTooLarge,
    check_file,
    check_inline_audio,
    sniff_mime,
    wav_seconds,
)
from runner.sim import SimConfig, Simulator
from runner.sim.forms import Part, read_form
from runner.spec import SpecDefaults, read_spec
from runner.spec.validate import validate_spec
from runner.store import Store

pytestmark = pytest.mark.anyio

MB = 1024 * 1024
ASR = "glm-asr-2512"


def audio_row(cid: str, file: str | None = None, **body: Any) -> dict[str, Any]:
    if file is not None:
        body["file"] = file
    return {"custom_id": cid, "url": "/v4/audio/transcriptions", "body": {"model": ASR, **body}}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rows_of(out: Path) -> dict[str, dict[str, Any]]:
    store = Store(checkpoint_path(out), create=False)
    try:
        return {r["custom_id"]: r for chunk in store.iter_rows() for r in chunk}
    finally:
        store.close()


@pytest.mark.parametrize("transport", ["fast", "httpx"])
async def test_audio_rows_arrive_intact_over_both_transports(
    tmp_path: Path, transport: str
) -> None:
    (tmp_path / "clips").mkdir()
    sent: dict[str, bytes] = {}
    rows = []
    for i in range(6):
        # Random-looking samples: the bytes hold CR LF and dashes a form must carry as they are.
        data = wav(i, seconds=0.1 + i / 10)
        (tmp_path / f"clips/{i}.wav").write_bytes(data)
        sent[f"w{i}"] = data
        ref = f"clips/{i}.wav" if i % 2 else f"file:clips/{i}.wav"
        rows.append(audio_row(f"w{i}", ref, hotwords=["amber", f"w{i}"], prompt="earlier text"))
    for i, id3 in enumerate((True, False)):
        data = mp3(i, id3=id3)
        # A misleading extension: the type comes from the bytes, the name sent says mp3.
        (tmp_path / f"clips/m{i}.audio").write_bytes(data)
        sent[f"m{i}"] = data
        rows.append(audio_row(f"m{i}", f"clips/m{i}.audio"))
    inline = wav(99)
    sent["b64"] = inline
    rows.append(audio_row("b64", file_base64=base64.b64encode(inline).decode()))
    spec = write_spec(tmp_path / "spec.jsonl", rows)
    out = tmp_path / "out"
    async with Simulator(SimConfig()) as sim:
        result = await run_job(
            settings_for(out, spec, sim.base_url, transport=transport), handle_signals=False
        )
        stats = sim.stats()
    assert result.exit_code == 0, result.message
    assert sorted(stats["files"]) == sorted(sha(d) for d in sent.values())
    assert stats["requests"] == {"audio/transcriptions": len(rows)}
    assert stats["billed"]["by_model"][ASR]["requests"] == len(rows)
    got = rows_of(out)
    for cid in sent:
        row = got[cid]
        assert row["status"] == "succeeded", row
        answer = orjson.loads(row["response"])
        assert answer["text"] and answer["model"] == ASR
        # Priced from the answer's usage: glm-asr-2512 is in the price table.
        assert row["prompt_tokens"] > 0 and row["cost_nano"] > 0, row
    table = pq.read_table(out / "results.parquet")
    assert table.num_rows == len(rows)
    # The rows keep their paths; no file's bytes end up in the results.
    assert not any(b"UklGR" in (r or "").encode() for r in table.column("response").to_pylist())


async def test_caps_and_types_fail_rows_before_anything_is_sent(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "clips").mkdir(parents=True)
    (root / "clips/ok.wav").write_bytes(wav(1))
    (root / "clips/long.wav").write_bytes(wav(2, seconds=31))
    huge = root / "clips/huge.mp3"
    with huge.open("wb") as f:  # sparse: a real header, then 25 MB of nothing
        f.write(mp3(3))
        f.truncate(25 * MB + 1)
    (root / "clips/picture.wav").write_bytes(png(4))
    (tmp_path / "x.wav").write_bytes(wav(5))
    os.symlink(tmp_path / "x.wav", root / "clips/link.wav")
    bad_b64 = base64.b64encode(png(6)).decode()
    rows = [
        audio_row("ok", "clips/ok.wav"),
        audio_row("long", "clips/long.wav"),
        audio_row("huge", "clips/huge.mp3"),
        audio_row("picture", "clips/picture.wav"),
        audio_row("up", "../x.wav"),
        audio_row("abs", "/etc/hostname"),
        audio_row("link", "clips/link.wav"),
        audio_row("url", "https://example.com/a.wav"),
        audio_row("b64png", file_base64=bad_b64),
        audio_row("none"),
        audio_row("stream", "clips/ok.wav", stream=True),
        audio_row("words", "clips/ok.wav", hotwords=["w"] * 101),
    ]
    spec = write_spec(root / "spec.jsonl", rows)
    expected = {
        "long": ("audio_too_long", "body.file", "over the 30 s cap"),
        "huge": ("file_too_large", "body.file", "over the 25 MB cap"),
        "picture": ("invalid_row", "body.file", "image/png"),
        "up": ("invalid_row", "body.file", "outside the files root"),
        "abs": ("invalid_row", "body.file", "outside the files root"),
        "link": ("invalid_row", "body.file", "symlink"),
        "url": ("invalid_row", "body.file", "fetches no URL"),
        "b64png": ("invalid_row", "body.file_base64", "image/png"),
        "none": ("invalid_row", "body.file", "missing file"),
        "stream": ("invalid_row", "body.stream", "does not stream"),
        "words": ("invalid_row", "body.hotwords", "at most 100"),
    }
    report = validate_spec(spec, SpecDefaults(files_root=root))
    listed = {e.custom_id: (e.code, e.field, e.message) for e in report.errors}
    assert report.valid == 1 and set(listed) == set(expected)
    for cid, (code, field, says) in expected.items():
        assert listed[cid][:2] == (code, field) and says in listed[cid][2], (cid, listed[cid])

    out = tmp_path / "out"
    async with Simulator(SimConfig()) as sim:
        result = await run_job(settings_for(out, spec, sim.base_url), handle_signals=False)
        stats = sim.stats()
    assert result.exit_code == 1
    assert stats["requests"] == {"audio/transcriptions": 1}
    assert stats["files"] == [sha(wav(1))]
    got = rows_of(out)
    assert got["ok"]["status"] == "succeeded"
    for cid, (code, field, says) in expected.items():
        row = got[cid]
        assert row["attempts"] == 0 and row["error_code"] == code, row
        assert field in row["error_message"] and says in row["error_message"], row


def test_a_file_that_goes_bad_after_the_check_is_named_when_sent(tmp_path: Path) -> None:
    """Checked when the spec is read, then replaced or removed before the row is sent: the
    send-time checks name it (the pool fails that row alone, with the error's code)."""
    (tmp_path / "a.wav").write_bytes(wav(1))
    (tmp_path / "b.wav").write_bytes(wav(2))
    spec = write_spec(tmp_path / "spec.jsonl", [audio_row("a", "a.wav"), audio_row("b", "b.wav")])
    reqs = [r for batch in read_spec(spec, SpecDefaults(files_root=tmp_path)) for r in batch]
    assert [type(r).__name__ for r in reqs] == ["Request", "Request"]
    (tmp_path / "a.wav").write_bytes(wav(1, seconds=40))
    (tmp_path / "b.wav").unlink()
    with pytest.raises(AudioTooLong):
        form_body(reqs[0].body, tmp_path)
    with pytest.raises(FileRefError, match="no such file"):
        form_body(reqs[1].body, tmp_path)
    # A form built before the file went: the transport's read is the row's error.
    part = FilePart("file", tmp_path / "b.wav", "b.wav", "audio/wav")
    with pytest.raises(RowError) as caught:
        Multipart((), (part,)).encode("x")
    assert caught.value.code == "file_unreadable"


async def test_the_simulator_refuses_what_the_platform_refuses(sim: Simulator) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    model = {"model": ASR}
    cases: list[tuple[dict[str, Any], dict[str, Any], str]] = [
        ({**model}, {"file": ("a.png", png(1), "image/png")}, "1214"),
        ({**model}, {"file": ("a.wav", wav(1, seconds=31), "audio/wav")}, "1214"),
        ({**model}, {"file": ("a.mp3", mp3(1, frames=1) + bytes(25 * MB), "audio/mpeg")}, "1214"),
        ({**model, "hotwords": ["w"] * 101}, {"file": ("a.wav", wav(1), "audio/wav")}, "1214"),
        ({**model, "file_base64": "@@not base64@@"}, {}, "1214"),
        ({**model, "prompt": "no file"}, {}, "1213"),
        ({}, {"file": ("a.wav", wav(1), "audio/wav")}, "1213"),
    ]
    async with httpx.AsyncClient(base_url=sim.base_url, headers=auth) as client:
        for data, files, code in cases:
            if files:
                resp = await client.post("/audio/transcriptions", data=data, files=files)
            else:  # a form without a file: httpx would url-encode it
                form = Multipart(tuple((k, v) for k, v in data.items()))
                boundary = form.boundary()
                resp = await client.post(
                    "/audio/transcriptions",
                    content=b"".join(form.encode(boundary)),
                    headers={"Content-Type": form.content_type(boundary)},
                )
            assert resp.status_code == 400, (data, resp.text)
            assert resp.json()["error"]["code"] == code, (data, resp.text)
        # A JSON body naming a path is not an upload.
        resp = await client.post("/audio/transcriptions", json={**model, "file": "a.wav"})
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "1214"
        assert sim.stats()["files"] == []

        # A streamed answer: delta events, a done event, then [DONE].
        resp = await client.post(
            "/audio/transcriptions",
            data={**model, "stream": "true"},
            files={"file": ("a.wav", wav(2, seconds=2), "audio/wav")},
        )
        assert resp.status_code == 200
        frames = [line[6:] for line in resp.text.split("\n") if line.startswith("data: ")]
        assert frames[-1] == "[DONE]"
        events = [orjson.loads(f) for f in frames[:-1]]
        assert [e["type"] for e in events][-1] == "transcript.text.done"
        assert all(e["type"] == "transcript.text.delta" for e in events[:-1])
        text = "".join(e["delta"] for e in events)
        # The same audio unstreamed gets the same transcript.
        resp = await client.post(
            "/audio/transcriptions",
            data=model,
            files={"file": ("a.wav", wav(2, seconds=2), "audio/wav")},
        )
        assert resp.json()["text"] == text
        assert resp.json()["usage"]["prompt_tokens"] == 25  # 2 s at 12.5 tokens a second
    assert sim.stats()["files"] == [sha(wav(2, seconds=2))] * 2


# --- the form encoder against a real multipart parser ------------------------------------


def test_the_form_encoder_round_trips_through_python_multipart(tmp_path: Path) -> None:
    awkward = tmp_path / "clip.wav"
    # Bytes that look like form syntax: line breaks, a delimiter-like line, a closing one.
    data = b"RIFF\r\n--runner-\r\n\r\n--\x00\xff" + bytes(range(256)) * 64 + b"\r\n--"
    awkward.write_bytes(data)
    fields = (
        ("model", ASR),
        ("prompt", 'a "quoted"\r\nline, é and 中文'),
        ("hotwords[]", "one"),
        ("hotwords[]", "two"),
        ("empty", ""),
        ('we"ird\nname', "x"),
    )
    form = Multipart(fields, (FilePart("file", awkward, 'my "clip"\r\n.wav', "audio/wav"),))
    boundary = form.boundary()
    parts = read_form(form.content_type(boundary), b"".join(form.encode(boundary)))
    assert [(p.name, p.data.decode()) for p in parts[:-1]] == [
        (k.replace('"', "%22").replace("\n", "%0A"), v) for k, v in fields
    ]
    assert parts[-1] == Part("file", "my %22clip%22%0D%0A.wav", "audio/wav", data)

    # httpx's own encoder (what --transport httpx sends) reads back the same.
    request = httpx.Request(
        "POST",
        "http://x/",
        data={"model": ASR, "hotwords[]": ["one", "two"]},
        files=[("file", ("clip.wav", data, "audio/wav"))],
    )
    theirs = read_form(request.headers["content-type"], request.read())
    ours = Multipart(
        (("model", ASR), ("hotwords[]", "one"), ("hotwords[]", "two")),
        (FilePart("file", awkward, "clip.wav", "audio/wav"),),
    )
    b = ours.boundary()
    assert read_form(ours.content_type(b), b"".join(ours.encode(b))) == theirs


def test_body_values_become_fields_as_openapi_lays_out_a_form(tmp_path: Path) -> None:
    assert list(form_fields("stream", False)) == [("stream", "false")]
    assert list(form_fields("hotwords", ["a", "b"])) == [("hotwords", "a"), ("hotwords", "b")]
    assert list(form_fields("n", 2)) == [("n", "2")]
    assert list(form_fields("meta", {"k": 1.5})) == [("meta", '{"k":1.5}')]
    assert list(form_fields("user_id", None)) == []
    (tmp_path / "a.wav").write_bytes(wav(1))
    form = form_body({"model": ASR, "file": "a.wav", "hotwords": ["x"]}, tmp_path)
    assert form.fields == (("model", ASR), ("hotwords", "x"))
    (part,) = form.files
    assert (part.name, part.filename, part.content_type) == ("file", "a.wav", "audio/wav")
    assert form.size > len(wav(1))


# --- types, lengths and caps ---------------------------------------------------------------


def test_mp3_and_wav_are_known_by_their_bytes(tmp_path: Path) -> None:
    assert sniff_mime(mp3(1)[:16]) == "audio/mpeg"
    assert sniff_mime(mp3(1, id3=False)[:16]) == "audio/mpeg"
    assert sniff_mime(wav(1)[:16]) == "audio/wav"
    # Sync bits alone are not a frame: reserved version, layer, bitrate or rate are not audio.
    for head in (
        b"\xff\xe9\x90\x00",
        b"\xff\xf9\x90\x00",
        b"\xff\xfb\xf0\x00",
        b"\xff\xfb\x9c\x00",
    ):
        assert sniff_mime(head + bytes(12)) is None, head
    # The length from the header, whatever the codec (here 32-bit float, 2 s).
    fmt = struct.pack("<HHIIHH", 3, 1, 8000, 32000, 4, 32)
    header = b"fmt " + struct.pack("<I", len(fmt)) + fmt
    extra = b"LIST" + struct.pack("<I", 3) + b"abc\x00"  # odd size: padded to even
    data = b"data" + struct.pack("<I", 64000) + bytes(64000)
    body = b"WAVE" + header + extra + data
    path = tmp_path / "float.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    with path.open("rb") as fh:
        assert wav_seconds(fh) == 2.0
    assert check_file("float.wav", AUDIO, tmp_path).seconds == 2.0
    path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt ")  # cut short: length unknown, not refused
    assert check_file("float.wav", AUDIO, tmp_path).seconds is None


def test_inline_audio_is_capped_by_its_length_without_decoding_it() -> None:
    check_inline_audio(base64.b64encode(wav(1)).decode())
    check_inline_audio("data:audio/mpeg;base64," + base64.b64encode(mp3(1)).decode())
    big = base64.b64encode(mp3(1) + bytes(3)).decode() + "A" * (34 * MB)
    with pytest.raises(FileTooLarge, match="25 MB"):
        check_inline_audio(big)
    with pytest.raises(FileRefError, match="not valid base64"):
        check_inline_audio("@@@@" * 10)
    with pytest.raises(FileRefError, match="image/png"):
        check_inline_audio(base64.b64encode(png(1)).decode())


async def test_estimate_prices_audio_by_its_length(tmp_path: Path) -> None:
    (tmp_path / "two.wav").write_bytes(wav(1, seconds=2))
    (tmp_path / "a.mp3").write_bytes(mp3(1))
    rows = [
        audio_row("w", "two.wav"),
        audio_row("m", "a.mp3", prompt="abc" * 10),
    ]
    spec = write_spec(tmp_path / "spec.jsonl", rows)
    prices = load_prices("zai")
    est = await estimate_spec(spec, SpecDefaults(files_root=tmp_path), prices)
    m = est.models[ASR]
    # 2 s and (an mp3's length unknown) the 30 s cap at 12.5 tokens a second, plus the prompt.
    assert m.rows == 2 and m.priced
    assert m.prompt_tokens == 25 + 375 + 10
    assert m.output_tokens == 8 + 120
    assert est.online_nano == (m.prompt_tokens + m.output_tokens) * 30


def test_an_answer_without_usage_is_unpriced_and_one_without_text_fails() -> None:
    from runner.endpoints import parse_success

    spec_shape = {"id": "1", "created": 1, "request_id": "r", "model": ASR, "text": "hello"}
    parsed = parse_success("audio/transcriptions", orjson.dumps(spec_shape), spec_shape)
    assert parsed.failure is None and not parsed.priced  # unknown cost, never "free"
    with_usage = {**spec_shape, "usage": {"prompt_tokens": 25, "completion_tokens": 2}}
    parsed = parse_success("audio/transcriptions", orjson.dumps(with_usage), with_usage)
    assert parsed.priced and parsed.usage.total_tokens == 27
    parsed = parse_success("audio/transcriptions", b"{}", {"model": ASR})
    assert parsed.failure is not None and parsed.failure.code == "no_text"
