"""Agent rows (`/v1/agents`) against the simulator over real HTTP on loopback.

The runner is given the model API's base URL (`.../api/paas/v4`) and must find the agents
beside it (`.../api/v1/agents`); the simulator serves only the real paths there.
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import orjson
import pytest
from conftest import ZaiSpec
from simproc import SimProcess
from zai import ZaiClient

from jobs import settings_for, write_spec
from runner import run_job
from runner.agent_files import LocalFileError, is_local_ref, local_file
from runner.agents import KNOWN_AGENTS, agents_prefix, fold_sse, request_path
from runner.cost import load_prices
from runner.estimate import estimate_spec
from runner.http.base import Target
from runner.job import checkpoint_path
from runner.sim import SimConfig, Simulator
from runner.sim.agents import sse_body
from runner.spec import InvalidRow, Request, SpecDefaults, canonical_endpoint
from runner.spec.checks import endpoint_hint
from runner.spec.rows import Rows
from runner.store import Store

if TYPE_CHECKING:
    from conftest import ZaiSpec

pytestmark = pytest.mark.anyio


def text(t: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": t}]}]


def translation(cid: str, words: str = "good morning", **variables: Any) -> dict[str, Any]:
    body = {
        "agent_id": "general_translation",
        "messages": text(words),
        "custom_variables": {"source_lang": "en", "target_lang": "fr", **variables},
    }
    return {"custom_id": cid, "url": "/v1/agents", "body": body}


def rows_of(out: Path) -> dict[str, dict[str, Any]]:
    store = Store(checkpoint_path(out), create=False)
    try:
        return {r["custom_id"]: r for chunk in store.iter_rows() for r in chunk}
    finally:
        store.close()


async def test_translation_rows_are_answered_beside_the_model_api(tmp_path: Path) -> None:
    rows = [translation(f"t{i}", f"sentence number {i}") for i in range(5)]
    rows.append({"custom_id": "bad", "url": "/v1/agents", "body": {"agent_id": "nope"}})
    spec = write_spec(tmp_path / "spec.jsonl", rows)
    async with Simulator(SimConfig()) as sim:
        result = await run_job(settings_for(tmp_path / "out", spec, sim.base_url))
        stats = sim.stats()
    assert result.summary["succeeded"] == 5, result.message
    assert stats["requests"].get("agents") == 5 and "unknown" not in stats["requests"]
    got = rows_of(tmp_path / "out")
    for i in range(5):
        row = got[f"t{i}"]
        assert row["endpoint"] == "agents" and row["model"] == "general_translation"
        answer = orjson.loads(row["response"])
        assert answer["choices"][0]["messages"]["content"]["text"]
        # $3 per million tokens, input and output
        tokens = row["prompt_tokens"] + row["completion_tokens"]
        assert tokens > 0 and row["cost_nano"] == tokens * 3000
    bad = got["bad"]
    assert bad["status"] == "failed" and bad["error_code"] == "invalid_row"
    assert "agent_id must be one of general_translation" in bad["error_message"]


FAIL = "[[sim:task-fail]]"


def vidu(cid: str, prompt: str = "dance", template: str = "bodyshake") -> dict[str, Any]:
    content = [
        {"type": "image_url", "image_url": f"https://example.com/{cid}.png"},
        {"type": "text", "text": prompt},
    ]
    body = {
        "agent_id": "vidu_template_agent",
        "messages": [{"role": "user", "content": content}],
        "custom_variables": {"template": template},
    }
    return {"custom_id": cid, "url": "/v1/agents", "body": body}


async def test_vidu_rows_are_submitted_once_polled_and_downloaded(tmp_path: Path) -> None:
    rows = [vidu(f"v{i}", f"clip {i}") for i in range(4)] + [vidu("vf", f"clip {FAIL}")]
    rows.append(vidu("bad-template", template="moonwalk"))
    no_image = vidu("no-image")
    no_image["body"]["messages"][0]["content"].pop(0)
    rows.append(no_image)
    spec = write_spec(tmp_path / "spec.jsonl", rows)
    out = tmp_path / "out"
    async with Simulator(SimConfig(task_seconds=0.3)) as sim:
        result = await run_job(settings_for(out, spec, sim.base_url))
        stats = sim.stats()
    assert result.summary["succeeded"] == 4, result.message
    job_id = result.summary["settings"]["job_id"]
    assert stats["agents"]["tasks"] == {f"{job_id}-{c}": 1 for c in ("v0", "v1", "v2", "v3", "vf")}
    assert stats["tasks"]["polls"] >= 5 and stats["requests"]["agents/async-result"] >= 5
    got = rows_of(out)
    for i in range(4):
        row = got[f"v{i}"]
        assert row["task_status"] == "SUCCESS" and row["request_id"] == f"{job_id}-v{i}"
        assert row["videos"] == 1 and row["cost_nano"] == 200_000_000  # 0.2 USD per video
        (record,) = orjson.loads(row["artifacts"])
        video = out / record["path"]
        data = video.read_bytes()
        assert record["kind"] == "video" and hashlib.sha256(data).hexdigest() == record["sha256"]
        side = orjson.loads(video.with_name(video.name + ".json").read_bytes())
        assert side["ai_generated"] is True and side["model"] == "vidu_template_agent"
        assert side["task_id"] == row["task_id"] and side["custom_id"] == f"v{i}"
    failed = got["vf"]
    assert failed["error_code"] == "task_failed" and failed["cost_nano"] == 0
    refused = got["no-image"]  # answered `status: failed`: no task, nothing to poll
    assert refused["error_code"] == "1214" and refused["task_id"] is None
    assert (
        "did not create the task: an effects video needs an image_url" in refused["error_message"]
    )
    assert got["bad-template"]["error_code"] == "invalid_row"
    assert "template must be one of" in got["bad-template"]["error_message"]


def _statuses(db_path: Path) -> dict[str, int]:
    """Row counts by status in the runner's live checkpoint (empty if none yet)."""
    if not db_path.exists():
        return {}
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1.0)
        try:
            return dict(db.execute("SELECT status, COUNT(*) FROM rows GROUP BY status"))
        finally:
            db.close()
    except sqlite3.Error:
        return {}


def run_killed(
    spec: Path, out: Path, base_url: str, kills: int, seed: int, *extra: str
) -> list[dict[str, int]]:
    """`runner run` as a process, SIGKILLed `kills` times at random moments after its
    checkpoint moved, then run (resumed) to the end; the checkpoint counts at each kill."""
    env = {**os.environ, "ZAI_API_KEY": "agents-crash-key"}
    cmd = [sys.executable, "-m", "runner", "run", str(spec), "--out", str(out),
           "--base-url", base_url, "--provider", "zai", "--no-progress", *extra]  # fmt: skip
    rng = random.Random(seed)
    seen: list[dict[str, int]] = []
    started = time.monotonic()
    db_path = checkpoint_path(out)
    while True:
        assert time.monotonic() - started < 90, f"no end after kills {seen}"
        with (out.parent / f"run-{len(seen)}.log").open("wb") as sink:
            proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=sink)
        if len(seen) < kills:
            before = _statuses(db_path)
            while proc.poll() is None and _statuses(db_path) == before:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.3))
            if proc.poll() is None:
                seen.append(_statuses(db_path))
                proc.kill()
                proc.wait()
                continue
        rc = proc.wait(timeout=60)
        if rc in (0, 1):
            return seen
        assert rc == 3, (out.parent / f"run-{len(seen)}.log").read_text()


def test_sigkill_during_vidu_job_never_creates_a_task_twice(tmp_path: Path) -> None:
    n = 24
    rows = [vidu(f"v{i}", f"clip {i}" + (f" {FAIL}" if i % 8 == 3 else "")) for i in range(n)]
    spec = write_spec(tmp_path / "spec.jsonl", rows)
    out = tmp_path / "out"
    sim = SimProcess("--task-seconds", "1", "--latency", "0.1")
    try:
        kills = run_killed(spec, out, sim.base_url, 4, 20261202, "--concurrency", "2")
        stats = sim.stats()
    finally:
        sim.stop()
    assert len(kills) >= 3, kills
    assert any(k.get("submitting") or k.get("submitted") for k in kills), kills
    got = rows_of(out)
    assert len(got) == n and all(r["status"] in ("succeeded", "failed") for r in got.values())
    created = stats["agents"]["tasks"]
    assert all(count == 1 for count in created.values()), created
    for row in got.values():
        if row["error_code"] == "submit_unknown":
            assert created.get(row["request_id"], 0) <= 1, row
            continue
        assert created.get(row["request_id"]) == 1, row
        if row["status"] == "succeeded":
            (record,) = orjson.loads(row["artifacts"])
            data = (out / record["path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == record["sha256"]
        else:
            assert row["error_code"] == "task_failed", row
    assert stats["tasks"]["submitted"] == sum(created.values())


def _glossary_job(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """Rows naming two glossaries (one under two paths, with the same bytes) and bad paths."""
    root = tmp_path / "spec"
    (root / "g").mkdir(parents=True)
    (root / "g" / "fr.txt").write_text("cat\tchat\ndog\tchien\n")
    (root / "copy.txt").write_text("cat\tchat\ndog\tchien\n")
    (root / "g" / "de.txt").write_text("cat\tKatze\n")
    (tmp_path / "out-of-root.txt").write_text("secret")
    (root / "leak.txt").symlink_to(tmp_path / "out-of-root.txt")
    rows = [translation(f"fr{i}", f"the cat {i}", glossary="g/fr.txt") for i in range(6)]
    rows += [translation(f"copy{i}", f"the dog {i}", glossary="copy.txt") for i in range(3)]
    rows += [translation(f"de{i}", f"a cat {i}", glossary="file:g/de.txt") for i in range(3)]
    bad = {"climb": "../out-of-root.txt", "abs": "/etc/hostname", "link": "leak.txt",
           "missing": "g/nope.txt"}  # fmt: skip
    rows += [translation(cid, "x", glossary=ref) for cid, ref in bad.items()]
    spec = write_spec(root / "spec.jsonl", rows)
    return spec, bad


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_glossaries_are_uploaded_once_per_content(tmp_path: Path) -> None:
    spec, bad = _glossary_job(tmp_path)
    out = tmp_path / "out"
    async with Simulator(SimConfig()) as sim:
        result = await run_job(settings_for(out, spec, sim.base_url, concurrency=16))
        stats = sim.stats()
    assert result.summary["succeeded"] == 12, result.message
    # The simulator refuses a glossary that is not an uploaded agent file of the key, so
    # every row that succeeded sent its glossary's file id.
    fr, de = _sha(tmp_path / "spec/g/fr.txt"), _sha(tmp_path / "spec/g/de.txt")
    assert stats["agents"]["files"] == {fr: 1, de: 1}
    assert stats["requests"]["agents"] == 12  # nothing sent for the refused paths
    got = rows_of(out)
    for cid, ref in bad.items():
        row = got[cid]
        assert row["status"] == "failed" and row["error_code"] == "invalid_file", row
        assert "body.custom_variables.glossary" in row["error_message"]
        assert ref in row["error_message"]
    assert "outside the files root" in got["climb"]["error_message"]
    assert "outside the files root" in got["abs"]["error_message"]
    assert "symlink" in got["link"]["error_message"]
    assert "no such file" in got["missing"]["error_message"]
    store = Store(checkpoint_path(out), create=False)
    try:
        recorded = {sha: row["file_id"] for (sha, _), row in store.agent_files().items()}
    finally:
        store.close()
    assert set(recorded) == {fr, de} and all(recorded.values())


async def test_an_upload_in_doubt_is_found_not_repeated(tmp_path: Path) -> None:
    """A kill between the upload and the commit of its id: the resume finds the file by its
    name in `GET files` and uploads nothing."""
    spec, _ = _glossary_job(tmp_path)
    out = tmp_path / "out"
    async with Simulator(SimConfig()) as sim:
        await run_job(settings_for(out, spec, sim.base_url))
        # The state a kill -9 leaves after the upload arrived and before its id and the
        # rows' answers were committed: intents without ids, the rows not done.
        store = Store(checkpoint_path(out), create=False)
        try:
            store.db.execute("UPDATE agent_files SET file_id = NULL")
            store.db.execute("DELETE FROM rows WHERE custom_id LIKE 'fr%' OR custom_id LIKE 'de%'")
            store.db.conn.commit()
        finally:
            store.close()
        result = await run_job(settings_for(out, spec, sim.base_url))
        stats = sim.stats()
    assert result.summary["succeeded"] == 12, result.message
    fr, de = _sha(tmp_path / "spec/g/fr.txt"), _sha(tmp_path / "spec/g/de.txt")
    assert stats["agents"]["files"] == {fr: 1, de: 1}
    assert stats["requests"]["agents"] == 12 + 9


def test_sigkill_during_a_mixed_agents_job(tmp_path: Path) -> None:
    """30 translations (half with a glossary) and 30 effects videos, killed three times:
    each glossary uploaded once, no task created twice, no translation answered twice
    beyond the few in flight or awaiting their commit at each kill."""
    root = tmp_path / "spec"
    root.mkdir()
    (root / "fr.txt").write_text("cat\tchat\n")
    rows = [
        translation(f"t{i}", f"line {i}", **({"glossary": "fr.txt"} if i % 2 else {}))
        for i in range(30)
    ]
    rows += [vidu(f"v{i}", f"clip {i}" + (f" {FAIL}" if i % 10 == 7 else "")) for i in range(30)]
    spec = write_spec(root / "spec.jsonl", rows)
    out = tmp_path / "out"
    sim = SimProcess("--latency", "0.1", "--task-seconds", "1")
    try:
        kills = run_killed(spec, out, sim.base_url, 3, 11, "--concurrency", "2")
        stats = sim.stats()
    finally:
        sim.stop()
    assert len(kills) == 3, kills
    assert stats["agents"]["files"] == {_sha(root / "fr.txt"): 1}
    created = stats["agents"]["tasks"]
    assert created and all(count == 1 for count in created.values()), created
    got = rows_of(out)
    assert len(got) == 60 and all(r["status"] in ("succeeded", "failed") for r in got.values())
    for i in range(30):
        assert got[f"t{i}"]["status"] == "succeeded", got[f"t{i}"]
        v = got[f"v{i}"]
        if v["error_code"] != "submit_unknown":
            assert created.get(v["request_id"]) == 1, v
            assert v["status"] == ("failed" if i % 10 == 7 else "succeeded"), v
    answered = stats["billed"]["by_model"]["general_translation"]["requests"]
    assert 30 <= answered <= 30 + 4 * len(kills), answered


def slides(cid: str, prompt: str, **extra: Any) -> dict[str, Any]:
    body = {"agent_id": "slides_glm_agent", "messages": text(prompt), **extra}
    return {"custom_id": cid, "url": "/v1/agents", "body": body}


async def test_slides_rows_are_read_whole_and_their_decks_downloaded(tmp_path: Path) -> None:
    rows = [slides("s-stream", "a deck about owls"), slides("s-sync", "owls", stream=False)]
    export = {"agent_id": "slides_glm_agent", "conversation_id": "conv-given"}
    rows.append({"custom_id": "c1", "url": "/v1/agents/conversation", "body": export})
    spec = write_spec(tmp_path / "spec.jsonl", rows)
    out = tmp_path / "out"
    async with Simulator(SimConfig()) as sim:
        result = await run_job(settings_for(out, spec, sim.base_url))
        stats = sim.stats()
    assert result.summary["succeeded"] == 3, result.message
    # Two slides answers, each exported once, and the export the spec asked for.
    assert stats["requests"]["agents"] == 2 and stats["requests"]["agents/conversation"] == 3
    got = rows_of(out)
    for cid in ("s-stream", "s-sync"):
        row = got[cid]
        answer = orjson.loads(row["response"])  # a streamed answer is stored as one JSON
        phases = [m["phase"] for m in answer["choices"][0]["message"]]
        assert phases == ["thinking", "tool", "answer"], phases
        assert answer["conversation_id"].startswith("conv-")
        assert row["completion_tokens"] > 0 and row["cost_nano"] > 0
    for cid, kinds in (("s-stream", ["deck", "page"]), ("s-sync", ["deck", "page"]),
                       ("c1", ["page"])):  # fmt: skip
        records = orjson.loads(got[cid]["artifacts"])
        assert [r["kind"] for r in records] == kinds, records
        for record in records:
            path = out / record["path"]
            data = path.read_bytes()
            assert hashlib.sha256(data).hexdigest() == record["sha256"]
            side = orjson.loads(path.with_name(path.name + ".json").read_bytes())
            assert side["model"] == "slides_glm_agent" and side["ai_generated"] is True
        if kinds[0] == "deck":
            assert (out / records[0]["path"]).read_bytes().startswith(b"%PDF")
    assert got["c1"]["cost_nano"] == 0


async def test_official_sdk_reads_the_agents_answers(sim: Simulator, tmp_path: Path) -> None:
    """zai-sdk's agents.invoke / agents.async_result and files.create (purpose agent)."""
    glossary = tmp_path / "terms.txt"
    glossary.write_text("cat\tchat\n")

    def scenario() -> None:
        client = ZaiClient(api_key="1a2b3c.sdk-agents", base_url=sim.base_url)
        uploaded = client.files.create(file=glossary.open("rb"), purpose="agent")  # type: ignore[arg-type]
        assert uploaded.id and uploaded.purpose == "agent" and uploaded.bytes == 9
        done = client.agents.invoke(
            agent_id="general_translation",
            messages=text("good night"),
            custom_variables={"target_lang": "fr", "glossary": uploaded.id},
        )
        assert done.choices[0].message.content["text"]
        assert done.usage is not None and done.usage.total_tokens > 0
        task = client.agents.invoke(
            agent_id="vidu_template_agent",
            messages=vidu("sdk")["body"]["messages"],
            custom_variables={"template": "french_kiss"},
        )
        assert task.status == "pending"
        async_id = task.model_extra["async_id"] if task.model_extra else None
        assert async_id
        deadline = time.monotonic() + 5
        result = client.agents.async_result(agent_id="vidu_template_agent", async_id=async_id)
        while result.status == "pending" and time.monotonic() < deadline:
            time.sleep(0.05)
            result = client.agents.async_result(agent_id="vidu_template_agent", async_id=async_id)
        assert result.status == "success"
        # The spec's message is a list; the SDK keeps it as a list of its message objects.
        (message,) = result.choices[0].message  # type: ignore[misc]
        (item,) = message.content
        assert item["type"] == "video_url" and item["video_url"].startswith(sim.root_url)

    await anyio.to_thread.run_sync(scenario)
    stats = sim.stats()
    assert len(stats["agents"]["tasks"]) == 1 and len(stats["agents"]["files"]) == 1


# -- pieces ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"messages": text("hi")}, "body.agent_id", "agent_id must be one of"),
        ({"agent_id": "general_translation"}, "body.messages", "non-empty list"),
        (
            {"agent_id": "general_translation", "messages": [{"role": "user", "content": "hi"}]},
            "body.messages[0].content",
            "non-empty list of text parts",
        ),
        (
            {"agent_id": "general_translation", "messages": text("hi"), "stream": True},
            "body.stream",
            "set stream to false",
        ),
        (
            {"agent_id": "general_translation", "messages": text("hi"),
             "custom_variables": {"glossary": 3}},
            "body.custom_variables.glossary",
            "file id or a file path",
        ),
        (
            {"agent_id": "vidu_template_agent", "messages": text("hi")},
            "body.custom_variables.template",
            "template must be one of",
        ),
        (
            {"agent_id": "slides_glm_agent",
             "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
            "body.messages[0].content[0]",
            "type text",
        ),
    ],
)  # fmt: skip
def test_agent_rows_are_checked_before_sending(body: dict[str, Any], field: str, says: str) -> None:
    rows = Rows(SpecDefaults())
    item = rows.build(0, 7, "r", "/v1/agents", None, body, False)
    assert isinstance(item, InvalidRow) and item.field == field, item
    assert says in item.message and "line 7" in str(item)


def test_agent_urls_and_paths() -> None:
    for url in ("/v1/agents", "/api/v1/agents", "agents", "/v1/agents/"):
        assert canonical_endpoint(url) == "agents"
    assert canonical_endpoint("/v1/agents/conversation") == "agents/conversation"
    assert endpoint_hint("/v1/agent") == "did you mean /v1/agents?"
    good = Rows(SpecDefaults(model="glm-4.5-air")).build(
        0, 1, "t", "/v1/agents", None, translation("t")["body"], False
    )
    assert isinstance(good, Request) and good.model == "general_translation"
    assert "model" not in good.body  # a default model is never written into an agent body
    prefix = agents_prefix("https://api.z.ai/api/paas/v4")
    assert (
        Target.parse("https://api.z.ai/api/paas/v4?x=1").path(request_path("agents", prefix))
        == "/api/v1/agents?x=1"
    )
    assert (
        Target.parse("https://h/api/paas/v4/").path(request_path("agents/async-result", prefix))
        == "/api/v1/agents/async-result"
    )
    assert request_path("chat/completions", prefix) == "/chat/completions"
    assert agents_prefix("https://gateway.example/llm") == ""


def test_a_streamed_answer_is_read_whole() -> None:
    frames = [
        {"id": "r", "conversation_id": "c", "choices": [{"message": [{"phase": "thinking"}]}]},
        {"id": "r", "choices": [{"message": [{"phase": "answer"}], "finish_reason": "stop"}]},
    ]
    folded = fold_sse(sse_body(frames))
    assert folded is not None
    body = orjson.loads(folded)
    assert body["conversation_id"] == "c" and body["choices"][0]["finish_reason"] == "stop"
    assert [m["phase"] for m in body["choices"][0]["message"]] == ["thinking", "answer"]
    assert fold_sse(b"not a stream") is None


def test_local_glossary_paths_stay_under_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "g").mkdir(parents=True)
    (root / "g" / "a.txt").write_text("x")
    (root / "g" / "a.exe").write_text("x")
    (tmp_path / "b.txt").write_text("x")
    (root / "out.txt").symlink_to(tmp_path / "b.txt")
    (root / "in.txt").symlink_to(root / "g" / "a.txt")
    assert local_file(root, "g/a.txt") == (root / "g" / "a.txt").resolve()
    assert local_file(root, "file:g/a.txt") == (root / "g" / "a.txt").resolve()
    assert local_file(root, str(root / "g" / "a.txt")) == (root / "g" / "a.txt").resolve()
    assert local_file(root, "g/../in.txt") == (root / "g" / "a.txt").resolve()
    for ref, says in (
        ("../b.txt", "climbs out"),
        (str(tmp_path / "b.txt"), "absolute path"),
        ("out.txt", "symlink"),
        ("g/missing.txt", "no such file"),
        ("g", "not a regular file"),
        ("g/a.exe", "must be one of"),
    ):
        with pytest.raises(LocalFileError, match=says):
            local_file(root, ref)
    assert is_local_ref("terms.xlsx") and is_local_ref("a/b") and is_local_ref("file:x")
    assert not is_local_ref("file-20240514-abc") and not is_local_ref("1234567")


async def test_agent_rows_over_the_httpx_transport(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.jsonl", [translation("t1"), vidu("v1")])
    async with Simulator(SimConfig(task_seconds=0.1)) as sim:
        settings = settings_for(tmp_path / "out", spec, sim.base_url, transport="httpx")
        result = await run_job(settings)
    assert result.summary["succeeded"] == 2, result.message


async def test_simulated_agent_answers_match_the_spec(sim: Simulator, zai_spec: ZaiSpec) -> None:
    """Each answer of the simulator's agents API validates against the platform's schema."""
    root = sim.root_url
    async with httpx.AsyncClient(headers={"Authorization": "Bearer k"}, timeout=10) as client:

        async def post(path: str, body: dict[str, Any]) -> Any:
            r = await client.post(root + path, json=body)
            assert r.status_code == 200, r.text
            return r.json()

        done = await post("/api/v1/agents", translation("t")["body"])
        zai_spec.validate(done, "TranslationAgentResponse")
        submitted = await post("/api/v1/agents", {**vidu("v")["body"], "request_id": "v"})
        zai_spec.validate(submitted, "SpecialEffectsVideosAgentResponse")
        poll = {"agent_id": "vidu_template_agent", "async_id": submitted["async_id"]}
        zai_spec.validate(poll, "CommonAgentResultRequest")
        pending = await post("/api/v1/agents/async-result", poll)
        assert pending["status"] == "pending"
        await anyio.sleep(0.3)
        result = await post("/api/v1/agents/async-result", poll)
        zai_spec.validate(result, "CommonAgentResultResponse")
        assert result["status"] == "success"
        deck = await post("/api/v1/agents", slides("s", "owls", stream=False)["body"])
        zai_spec.validate(deck, "GlmSlideAgentResponse")
        export = {"agent_id": "slides_glm_agent", "conversation_id": deck["conversation_id"],
                  "custom_variables": {"include_pdf": True}}  # fmt: skip
        zai_spec.validate(export, "GlmSlideAgentConversationRequest")
        exported = await post("/api/v1/agents/conversation", export)
        zai_spec.validate(exported, "GlmSlideAgentConversationResponse")
        r = await client.post(
            root + "/api/paas/v4/files", files={"file": ("g.exe", b"x")}, data={"purpose": "agent"}
        )
        assert r.status_code == 400 and "agent files must be one of" in r.text
        nope = {"agent_id": "vidu_template_agent", "async_id": "nope"}
        unknown = await client.post(root + "/api/v1/agents/async-result", json=nope)
        assert unknown.status_code == 404
    stats = sim.stats()
    assert stats["agents"]["tasks"] == {"v": 1}
    assert not stats["duplicates"]["fingerprint"]  # polls are not counted as submissions


async def test_estimate_prices_agent_rows(tmp_path: Path) -> None:
    bare = translation("bare")["body"]  # a short line: agent_id implies /v1/agents
    rows = [translation("t1", "x" * 300), vidu("v1"), vidu("v2"), slides("s1", "owls"), bare]
    spec = write_spec(tmp_path / "spec.jsonl", rows)
    est = await estimate_spec(spec, SpecDefaults(), load_prices("zai"), output_tokens=100)
    assert est.invalid == 0
    tr, fx, deck = (est.models[m] for m in KNOWN_AGENTS)
    assert tr.rows == 2 and tr.output_tokens == tr.prompt_tokens > 100  # as long as the source
    assert tr.online_nano == (tr.prompt_tokens + tr.output_tokens) * 3000
    assert fx.videos == 2 and fx.online_nano == 400_000_000
    assert deck.output_tokens == 100 and deck.priced
