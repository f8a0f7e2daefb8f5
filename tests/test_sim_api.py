"""The simulator's endpoints over real HTTP: shapes from the spec, usage, determinism."""

from __future__ import annotations

import math
import ssl
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.sim import SimConfig, Simulator

if TYPE_CHECKING:
    from conftest import ZaiSpec

pytestmark = pytest.mark.anyio

KEY = "4f1d2c3b5a6e.sim-secret-part"
AUTH = {"Authorization": f"Bearer {KEY}"}

# Embeddings are not in the spec; this is the API-NOTES 2.3 / SDK EmbeddingsResponded shape.
EMBEDDINGS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model", "object", "data", "usage"],
    "properties": {
        "model": {"type": "string"},
        "object": {"const": "list"},
        "data": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["index", "object", "embedding"],
                "properties": {
                    "index": {"type": "integer"},
                    "object": {"const": "embedding"},
                    "embedding": {"type": "array", "items": {"type": "number"}},
                },
            },
        },
        "usage": {
            "type": "object",
            "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
            "properties": {
                "prompt_tokens": {"type": "integer"},
                "completion_tokens": {"const": 0},
                "total_tokens": {"type": "integer"},
            },
        },
    },
}


def chat_body(text: str = "Tell me about rivers.", **extra: Any) -> dict[str, Any]:
    return {"model": "glm-4.6", "messages": [{"role": "user", "content": text}], **extra}


def tool_call_schema(spec: ZaiSpec) -> dict[str, Any]:
    """ChatCompletionResponse with the two places the spec contradicts its own prose.

    The spec types ``message.content`` as string while saying it "is null" when a function
    is called, and types ``function.arguments`` as object while the wire (and both SDKs'
    ``Function.arguments: str``) carries a JSON string. Everything else stays as specified.
    """
    message = spec.schema("ChatCompletionResponseMessage")
    message["properties"]["content"] = {"type": ["string", "null"]}
    call = spec.schema("ChatCompletionResponseMessageToolCall")
    call["properties"]["function"]["properties"]["arguments"] = {"type": "string"}
    message["properties"]["tool_calls"]["items"] = call
    response = spec.schema("ChatCompletionResponse")
    response["properties"]["choices"]["items"]["properties"]["message"] = message
    return response


async def post(client: httpx.AsyncClient, path: str, body: Any) -> httpx.Response:
    return await client.post(path, json=body, headers=AUTH)


async def poll_until_done(client: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    with anyio.fail_after(5):
        while True:
            response = await client.get(f"async-result/{task_id}", headers=AUTH)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            if body["task_status"] != "PROCESSING":
                return body
            await anyio.sleep(0.05)


# Building an SSL context loads the CA bundle (tens of ms); the loopback tests never use
# TLS, so every client shares this one instead of building its own.
TLS = ssl.create_default_context()


def client_for(sim: Simulator) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=sim.base_url + "/", timeout=10, verify=TLS)


async def test_chat_completion_matches_spec_and_bills_usage(
    sim: Simulator, zai_spec: ZaiSpec
) -> None:
    async with client_for(sim) as client:
        response = await post(client, "chat/completions", chat_body(request_id="row-1"))
    assert response.status_code == 200
    body = response.json()
    zai_spec.validate(body, "ChatCompletionResponse")
    assert body["object"] == "chat.completion"
    assert body["request_id"] == "row-1"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["message"]["content"]
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    billed = sim.stats()["billed"]
    assert billed["requests"] == 1
    assert billed["prompt_tokens"] == usage["prompt_tokens"]
    assert billed["by_model"]["glm-4.6"]["completion_tokens"] == usage["completion_tokens"]
    assert sim.stats()["submissions_by_request_id"] == {"row-1": 1}


async def test_vision_thinking_and_json_mode(sim: Simulator, zai_spec: ZaiSpec) -> None:
    parts = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]
    vision = {"model": "glm-4.6v", "messages": [{"role": "user", "content": parts}]}
    thinking = chat_body(thinking={"type": "enabled"})
    json_mode = chat_body(response_format={"type": "json_object"})
    async with client_for(sim) as client:
        answers = [
            (await post(client, "chat/completions", b)).json()
            for b in (vision, thinking, json_mode)
        ]
    for answer in answers:
        zai_spec.validate(answer, "ChatCompletionResponse")
    assert answers[0]["usage"]["prompt_tokens"] > 256  # the image counts
    message = answers[1]["choices"][0]["message"]
    assert message["reasoning_content"] and message["content"]
    assert answers[1]["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0
    assert isinstance(orjson.loads(answers[2]["choices"][0]["message"]["content"]), dict)


async def test_tools_give_a_tool_call_with_schema_valid_arguments(
    sim: Simulator, zai_spec: ZaiSpec
) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["c", "f"]},
                    "days": {"type": "integer", "minimum": 1, "maximum": 7},
                },
                "required": ["city", "unit"],
            },
        },
    }
    async with client_for(sim) as client:
        body = (await post(client, "chat/completions", chat_body(tools=[tool]))).json()
        # Once the tool answered, the model replies in text.
        history = chat_body(tools=[tool])
        history["messages"] += [
            {"role": "assistant", "tool_calls": body["choices"][0]["message"]["tool_calls"]},
            {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
        ]
        after = (await post(client, "chat/completions", history)).json()
    zai_spec.validate(body, tool_call_schema(zai_spec))
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    arguments = orjson.loads(call["function"]["arguments"])
    assert isinstance(arguments["city"], str)
    assert arguments["unit"] in ("c", "f")
    assert 1 <= arguments["days"] <= 7
    assert after["choices"][0]["finish_reason"] == "stop"


async def test_max_tokens_truncates_with_length(sim: Simulator) -> None:
    async with client_for(sim) as client:
        body = (await post(client, "chat/completions", chat_body(max_tokens=5))).json()
        thinking = chat_body(max_tokens=3, thinking={"type": "enabled"})
        short = (await post(client, "chat/completions", thinking)).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] <= 5
    assert short["choices"][0]["finish_reason"] == "length"
    assert short["usage"]["completion_tokens"] <= 3


async def test_answer_words_sets_the_answer_length() -> None:
    """The scale benchmark's realistic answers: `answer_words` words, billed as such."""
    async with Simulator(SimConfig(answer_words=180)) as sim, client_for(sim) as client:
        long = (await post(client, "chat/completions", chat_body(max_tokens=1024))).json()
        cut = (await post(client, "chat/completions", chat_body("Other.", max_tokens=16))).json()
    text = long["choices"][0]["message"]["content"]
    assert len(text.split()) == 180 and long["choices"][0]["finish_reason"] == "stop"
    assert long["usage"]["completion_tokens"] > 180
    assert cut["choices"][0]["finish_reason"] == "length"  # max_tokens still cuts it


async def test_bad_chat_requests_are_400(sim: Simulator) -> None:
    async with client_for(sim) as client:
        stream = await post(client, "chat/completions", chat_body(stream=True))
        empty = await post(client, "chat/completions", {"model": "glm-4.6", "messages": []})
        no_model = await post(client, "chat/completions", {"messages": [{"role": "user"}]})
        big = await post(client, "chat/completions", chat_body(max_tokens=0))
        only_system = {"model": "m", "messages": [{"role": "system", "content": "x"}]}
        system = await post(client, "chat/completions", only_system)
        not_json = await client.post("chat/completions", content=b"{", headers=AUTH)
    assert stream.status_code == 400 and stream.json()["error"]["code"] == "1210"
    assert "streaming" in stream.json()["error"]["message"]
    assert [r.status_code for r in (empty, no_model, big, system, not_json)] == [400] * 5
    assert empty.json()["error"]["code"] == "1214"
    assert no_model.json()["error"]["code"] == "1213"
    assert not_json.json()["error"]["code"] == "1210"
    assert sim.stats()["billed"]["requests"] == 0


async def test_async_chat_polls_to_choices_and_usage(sim: Simulator, zai_spec: ZaiSpec) -> None:
    async with client_for(sim) as client:
        submit = await post(client, "async/chat/completions", chat_body(request_id="a-1"))
        sync = (await post(client, "chat/completions", chat_body())).json()
        accepted = submit.json()
        zai_spec.validate(accepted, "AsyncResponse")
        assert accepted["task_status"] == "PROCESSING"
        assert accepted["request_id"] == "a-1"
        done = await poll_until_done(client, accepted["id"])
    assert done["task_status"] == "SUCCESS"
    assert done["choices"] == sync["choices"]
    assert done["usage"] == sync["usage"]
    stats = sim.stats()
    assert stats["tasks"]["submitted"] == 1 and stats["tasks"]["succeeded"] == 1
    assert stats["tasks"]["polls"] >= 1


async def test_embeddings_shape_dimensions_and_limits(sim: Simulator, zai_spec: ZaiSpec) -> None:
    async with client_for(sim) as client:
        default = await post(client, "embeddings", {"model": "embedding-3", "input": "hello"})
        small = await post(
            client, "embeddings", {"model": "embedding-3", "input": ["a", "b c"], "dimensions": 256}
        )
        again = await post(client, "embeddings", {"model": "embedding-3", "input": "hello"})
        too_many = await post(client, "embeddings", {"model": "embedding-3", "input": ["x"] * 65})
        bad_dims = await post(
            client, "embeddings", {"model": "embedding-3", "input": "x", "dimensions": 300}
        )
        empty = await post(client, "embeddings", {"model": "embedding-3", "input": ""})
    for response in (default, small):
        assert response.status_code == 200
        zai_spec.validate(response.json(), EMBEDDINGS_SCHEMA)
    vector = default.json()["data"][0]["embedding"]
    assert len(vector) == 2048
    assert math.isclose(math.fsum(v * v for v in vector), 1.0, rel_tol=1e-9)
    assert [len(d["embedding"]) for d in small.json()["data"]] == [256, 256]
    assert [d["index"] for d in small.json()["data"]] == [0, 1]
    assert again.json()["data"] == default.json()["data"]
    for bad in (too_many, bad_dims, empty):
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "1214"


async def test_sync_image_url_downloads(sim: Simulator, zai_spec: ZaiSpec) -> None:
    async with client_for(sim) as client:
        response = await post(
            client, "images/generations", {"model": "cogview-4-250304", "prompt": "a red fox"}
        )
        body = response.json()
        zai_spec.validate(body, "ImageGenerationResponse")
        url = body["data"][0]["url"]
        assert url.startswith(sim.root_url + "/_sim/files/")
        image = await client.get(url)
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    assert int(image.headers["content-length"]) == len(image.content) > 100
    assert image.content.startswith(b"\x89PNG\r\n\x1a\n")
    stats = sim.stats()
    assert stats["billed"]["images"] == 1 and stats["downloads"] == 1


async def test_async_image_task(sim: Simulator, zai_spec: ZaiSpec) -> None:
    async with client_for(sim) as client:
        submit = await post(
            client, "async/images/generations", {"model": "glm-image", "prompt": "a boat"}
        )
        zai_spec.validate(submit.json(), "AsyncResponse")
        done = await poll_until_done(client, submit.json()["id"])
        png = await client.get(done["image_result"][0]["url"])
    # The spec's async-result is a oneOf of two all-optional object schemas, so every
    # body matches both branches; each result is checked against its own branch instead.
    zai_spec.validate(done, "AsyncImageGenerationResponse")
    assert done["task_status"] == "SUCCESS"
    assert png.content.startswith(b"\x89PNG")


async def test_video_task_processing_then_success_with_files(
    sim: Simulator, zai_spec: ZaiSpec
) -> None:
    async with client_for(sim) as client:
        submit = await post(
            client, "videos/generations", {"model": "cogvideox-3", "prompt": "waves", "fps": 30}
        )
        accepted = submit.json()
        zai_spec.validate(accepted, "VideoResponse")
        first = (await client.get(f"async-result/{accepted['id']}", headers=AUTH)).json()
        done = await poll_until_done(client, accepted["id"])
        (result,) = done["video_result"]
        video = await client.get(result["url"])
        cover = await client.get(result["cover_image_url"])
    assert first["task_status"] == "PROCESSING" and "video_result" not in first
    zai_spec.validate(first, "AsyncVideoGenerationResponse")
    zai_spec.validate(done, "AsyncVideoGenerationResponse")
    assert done["request_id"] == accepted["request_id"]
    assert video.headers["content-type"] == "video/mp4" and video.content[4:8] == b"ftyp"
    assert cover.headers["content-type"] == "image/jpeg"
    assert cover.content.startswith(b"\xff\xd8\xff") and cover.content.endswith(b"\xff\xd9")
    assert sim.stats()["billed"]["videos"] == 1


async def test_unknown_task_and_other_keys_task_are_404(sim: Simulator) -> None:
    async with client_for(sim) as client:
        submit = await post(client, "videos/generations", {"model": "cogvideox-3", "prompt": "x"})
        task_id = submit.json()["id"]
        unknown = await client.get("async-result/nope-123", headers=AUTH)
        other = await client.get(f"async-result/{task_id}", headers={"Authorization": "Bearer b"})
    for response in (unknown, other):
        assert response.status_code == 404
        assert response.json()["error"]["message"].startswith("Task not found")


async def test_tokenizer_counts_what_chat_bills(sim: Simulator, zai_spec: ZaiSpec) -> None:
    tools = [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {}}}]
    parts = [
        {"type": "text", "text": "Describe both, in detail, héllo wörld."},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        {"type": "video_url", "video_url": {"url": "https://example.com/a.mp4"}},
    ]
    cases = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}],
        [{"role": "user", "content": parts}],
    ]
    async with client_for(sim) as client:
        for messages in cases:
            for extra in ({}, {"tools": tools}):
                count = await post(
                    client, "tokenizer", {"model": "glm-4.6", "messages": messages, **extra}
                )
                chat = await post(
                    client, "chat/completions", {"model": "glm-4.6", "messages": messages, **extra}
                )
                zai_spec.validate(count.json(), "TokenizerResponse")
                usage = count.json()["usage"]
                assert usage["prompt_tokens"] == chat.json()["usage"]["prompt_tokens"]
    assert usage["image_tokens"] > 0 and usage["video_tokens"] > 0


async def test_web_search_layout_and_reader(sim: Simulator, zai_spec: ZaiSpec) -> None:
    async with client_for(sim) as client:
        search = await post(
            client,
            "web_search",
            {"search_engine": "search-prime", "search_query": "batch APIs", "count": 3},
        )
        layout = await post(
            client, "layout_parsing", {"model": "glm-ocr", "file": "https://example.com/a.pdf"}
        )
        reader = await post(client, "reader", {"url": "https://example.com/page"})
    zai_spec.validate(search.json(), "WebSearchResponse")
    assert len(search.json()["search_result"]) == 3
    zai_spec.validate(layout.json(), "LayoutParsingResponse")
    zai_spec.validate(reader.json(), "ReaderResponse")
    assert sim.stats()["billed"]["searches"] == 1


async def test_same_body_same_answer_and_seed_changes_it() -> None:
    body = chat_body("Determinism, please.", temperature=0.3)
    answers = []
    for seed in (1, 1, 2):
        async with Simulator(SimConfig(seed=seed)) as sim, client_for(sim) as client:
            first = (await post(client, "chat/completions", body)).json()
            second = (await post(client, "chat/completions", body)).json()
            assert first["choices"] == second["choices"]
            assert first["usage"] == second["usage"]
            assert first["id"] != second["id"]
            answers.append(first["choices"])
    assert answers[0] == answers[1] != answers[2]


async def test_other_prefixes_and_unknown_paths(sim: Simulator) -> None:
    async with httpx.AsyncClient(base_url=sim.root_url) as client:
        v4 = await client.post("/v4/chat/completions", json=chat_body(), headers=AUTH)
        v1 = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
        missing = await client.post("/api/paas/v4/nothing/here", json={}, headers=AUTH)
        wrong_method = await client.get("/api/paas/v4/chat/completions", headers=AUTH)
    assert v4.status_code == v1.status_code == 200
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "1222"
    assert wrong_method.status_code == 405


async def test_duplicates_by_request_id_and_fingerprint(sim: Simulator) -> None:
    async with client_for(sim) as client:
        await post(client, "chat/completions", chat_body("one", request_id="r1"))
        await post(client, "chat/completions", chat_body("one", request_id="r1"))
        await post(client, "chat/completions", chat_body("two", request_id="r2"))
        # A fresh request_id does not hide a resubmission of the same body.
        await post(client, "chat/completions", chat_body("two", request_id="r3"))
    stats = sim.stats()
    assert stats["submissions_by_request_id"] == {"r1": 2, "r2": 1, "r3": 1}
    assert stats["duplicates"]["request_id"] == ["r1"]
    assert len(stats["duplicates"]["fingerprint"]) == 2
    assert sorted(stats["submissions_by_fingerprint"].values()) == [2, 2]


async def test_http_stats_equal_python_stats_and_never_show_the_key() -> None:
    config = SimConfig(keys={KEY: 4})
    async with Simulator(config) as sim, httpx.AsyncClient(base_url=sim.root_url) as client:
        await client.post("/api/paas/v4/chat/completions", json=chat_body(), headers=AUTH)
        bad = await client.post(
            "/api/paas/v4/chat/completions",
            json=chat_body(),
            headers={"Authorization": f"Bearer {KEY}x"},
        )
        over_http = (await client.get("/_sim/stats")).json()
        shown_config = (await client.get("/_sim/config")).text
        assert over_http == sim.stats()
    assert bad.status_code == 401
    secret = KEY.split(".")[1]
    for text in (orjson.dumps(over_http).decode(), shown_config, bad.text, repr(config)):
        assert KEY not in text and secret not in text
    assert list(over_http["peak_concurrency"]) == [next(iter(orjson.loads(shown_config)["keys"]))]


async def test_ledger_ids_off_keeps_counts_only() -> None:
    async with Simulator(SimConfig(ledger_ids=False)) as sim, client_for(sim) as client:
        await post(client, "chat/completions", chat_body(request_id="r1"))
        stats = sim.stats()
    assert stats["billed"]["requests"] == 1
    assert stats["submissions_by_request_id"] == {} and stats["submissions_by_fingerprint"] == {}


async def test_an_error_in_the_block_propagates_as_itself() -> None:
    with pytest.raises(ValueError, match="boom"):
        async with Simulator():
            raise ValueError("boom")


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
SCHEMA = st.recursive(
    st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["string", "integer", "number", "boolean", "array", "x"])
            | JSON,
            "enum": JSON,
            "minimum": JSON,
            "maximum": JSON,
            "minItems": JSON,
        },
    ),
    lambda inner: (
        st.fixed_dictionaries(
            {"type": st.just("object")},
            optional={"properties": st.dictionaries(st.text(max_size=5), inner, max_size=3) | JSON},
        )
        | st.fixed_dictionaries({"type": st.just("array")}, optional={"items": inner})
    ),
    max_leaves=6,
)
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
VALID: dict[str, dict[str, Any]] = {
    "chat/completions": chat_body(),
    "async/chat/completions": chat_body(),
    "embeddings": {"model": "embedding-3", "input": "x"},
    "images/generations": {"model": "glm-image", "prompt": "x"},
    "videos/generations": {"model": "cogvideox-3", "prompt": "x"},
    "tokenizer": chat_body(),
    "web_search": {"search_engine": "search-prime", "search_query": "x"},
    "layout_parsing": {"model": "glm-ocr", "file": "https://example.com/a.png"},
    "reader": {"url": "https://example.com"},
}
FIELDS = [
    "model", "messages", "max_tokens", "tools", "thinking", "response_format", "temperature",
    "input", "dimensions", "prompt", "image_url", "search_query", "count", "request_id", "url",
    "file", "stream",
]  # fmt: skip
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "x"])},
    optional={"content": JSON, "tool_calls": JSON},
)
HOSTILE = {
    "messages": st.lists(MESSAGE, max_size=3) | JSON,
    "tools": st.lists(
        st.builds(lambda schema: {**TOOL, "function": {"name": "f", "parameters": schema}}, SCHEMA)
        | JSON,
        max_size=2,
    ),
}


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A valid body for some endpoint with one or two fields replaced by hostile values."""
    endpoint = draw(st.sampled_from(sorted(VALID)))
    body = dict(VALID[endpoint])
    for field in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=2)):
        body[field] = draw(HOSTILE.get(field, JSON))
    return endpoint, body


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=mutated())
async def test_hostile_bodies_get_200_or_a_400_never_a_crash(
    sim: Simulator, case: tuple[str, dict[str, Any]]
) -> None:
    endpoint, body = case
    async with client_for(sim) as client:
        response = await post(client, endpoint, body)
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert response.json()["error"]["code"] in ("1210", "1213", "1214")
