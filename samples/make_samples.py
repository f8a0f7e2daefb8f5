"""Write the example specs in samples/ (run from anywhere: `python samples/make_samples.py`).

The files are committed; this script is how they were made, so a change to a sample is a change
here followed by a rerun. Output is deterministic: the same script writes the same bytes.
`BAD_LINES` is also what tests/test_spec.py checks samples/bad.jsonl against.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
CHAT = "/v4/chat/completions"
IMAGE = "https://upload.wikimedia.org/wikipedia/commons/4/47/PNG_transparency_demonstration_1.png"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        },
    },
}


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def system_user(system: str, text: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": system}, *user(text)]


def chat_bodies() -> list[dict[str, Any]]:
    """Twenty chat bodies in the shapes jobs send; one model, as the Batch API wants."""
    m = "glm-4.7-flash"
    off, on = {"type": "disabled"}, {"type": "enabled"}
    return [
        {"model": m, "messages": user("Say hello in French."), "max_tokens": 32},
        {"model": m, "messages": user("What is 17 * 23?"), "max_tokens": 32, "temperature": 0.1},
        {"model": m, "messages": user("Name three prime numbers."), "thinking": off},
        {"model": m, "messages": user("Translate 'good morning' to Japanese."), "top_p": 0.9},
        {"model": m, "messages": system_user("Answer in one word.", "Capital of Italy?")},
        {
            "model": m,
            "messages": system_user("You are terse.", "Define entropy."),
            "max_tokens": 64,
        },
        {"model": m, "messages": system_user("Reply in English.", "你好吗？"), "temperature": 0.5},
        {"model": m, "messages": user("Is 221 prime? Explain briefly."), "thinking": on},
        {"model": m, "messages": user("How many r's are in strawberry?"), "thinking": on},
        {
            "model": m,
            "messages": user("Sort: pear, apple, fig."),
            "thinking": off,
            "max_tokens": 16,
        },
        {"model": m, "messages": user("Weather in Paris?"), "tools": [WEATHER_TOOL]},
        {
            "model": m,
            "messages": user("Weather in Beijing and Tokyo?"),
            "tools": [WEATHER_TOOL],
            "tool_choice": "auto",
        },
        {
            "model": m,
            "messages": [
                *user("Weather in Oslo?"),
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                        }
                    ],
                },
                {"role": "tool", "content": '{"temp_c": 4}', "tool_call_id": "call_1"},
            ],
            "tools": [WEATHER_TOOL],
        },
        {
            "model": m,
            "messages": user('Give {"name", "age"} for a made-up person as JSON.'),
            "response_format": {"type": "json_object"},
        },
        {
            "model": m,
            "messages": system_user("Output JSON only.", "List two colours as {colours: []}."),
            "response_format": {"type": "json_object"},
            "temperature": 0.2,
        },
        {"model": m, "messages": user("Write a haiku about rain."), "max_tokens": 48},
        {"model": m, "messages": user("One tip for learning Python?"), "do_sample": False},
        {"model": m, "messages": user("Summarise: the cat sat on the mat."), "max_tokens": 24},
        {"model": m, "messages": user("What year did Apollo 11 land?"), "stop": ["\n"]},
        {"model": m, "messages": user("Spell 'necessary' backwards."), "request_id": "demo-20"},
    ]


def batch_line(custom_id: str, url: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def write_jsonl(name: str, rows: list[Any]) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    (HERE / name).write_text(text, encoding="utf-8")


def write_parquet(name: str, table: pa.Table) -> None:
    # No statistics and one row group keep the file small and its bytes stable across runs.
    pq.write_table(table, HERE / name, compression="zstd", write_statistics=False)


def chat_files() -> None:
    bodies = chat_bodies()
    lines = [batch_line(f"chat-{i:02d}", CHAT, body) for i, body in enumerate(bodies, 1)]
    write_jsonl("chat.jsonl", lines)
    columns = {k: [line[k] for line in lines] for k in ("custom_id", "method", "url")}
    as_text = [json.dumps(line["body"], ensure_ascii=False) for line in lines]
    write_parquet("chat.parquet", pa.table({**columns, "body": as_text}))
    write_parquet("chat_struct.parquet", pa.table({**columns, "body": pa.array(bodies)}))
    short = [{k: v for k, v in body.items() if k != "model"} for body in bodies[:8]]
    for i, body in enumerate(short):
        if i % 2 == 0:  # half carry their own id; the rest get line-N
            body["custom_id"] = f"short-{i + 1}"
    write_jsonl("chat_short.jsonl", short)


def other_files() -> None:
    vision = [
        batch_line(
            f"vision-{i}",
            CHAT,
            {
                "model": "glm-4.6v",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": IMAGE}},
                            {"type": "text", "text": question},
                        ],
                    }
                ],
                "thinking": {"type": "disabled"},
            },
        )
        for i, question in enumerate(
            ["What shapes are in this image?", "Describe the colours.", "Is the background clear?"],
            1,
        )
    ]
    write_jsonl("vision.jsonl", vision)
    emb = "/v4/embeddings"
    write_jsonl(
        "embeddings.jsonl",
        [
            batch_line("emb-1", emb, {"model": "embedding-3", "input": "The sky is blue."}),
            batch_line("emb-2", emb, {"model": "embedding-3", "input": "Grass is green."}),
            batch_line(
                "emb-3", emb, {"model": "embedding-3", "input": ["red", "amber"], "dimensions": 512}
            ),
            batch_line("emb-4", emb, {"model": "embedding-3", "input": ["one", "two", "three"]}),
        ],
    )
    img = "/v4/images/generations"
    write_jsonl(
        "images.jsonl",
        [
            batch_line("img-1", img, {"model": "cogview-4-250304", "prompt": "A red fox in snow"}),
            batch_line(
                "img-2",
                img,
                {"model": "cogview-4-250304", "prompt": "A lighthouse", "size": "1024x1024"},
            ),
            batch_line(
                "img-3", img, {"model": "glm-image", "prompt": "A bowl of ramen", "quality": "hd"}
            ),
        ],
    )
    aimg = "/v4/async/images/generations"
    write_jsonl(
        "images_async.jsonl",
        [
            batch_line(f"aimg-{i}", aimg, {"model": "glm-image", "prompt": p, "quality": "hd"})
            for i, p in enumerate(["A paper boat on a pond", "A city at dusk, watercolour"], 1)
        ],
    )
    vid = "/v4/videos/generations"
    write_jsonl(
        "videos.jsonl",
        [
            batch_line("vid-1", vid, {"model": "cogvideox-3", "prompt": "Waves on a beach"}),
            batch_line(
                "vid-2",
                vid,
                {"model": "cogvideox-3", "prompt": "A cat yawns", "quality": "speed", "fps": 30},
            ),
            batch_line(
                "vid-3",
                vid,
                {"model": "cogvideox-3", "image_url": IMAGE, "prompt": "Slowly zoom in"},
            ),
        ],
    )
    write_jsonl(
        "mixed.jsonl",
        [
            batch_line("mix-1", CHAT, {"model": "glm-4.7-flash", "messages": user("Hi!")}),
            batch_line("mix-2", CHAT, {"model": "glm-4.5-air", "messages": user("2 + 2?")}),
            batch_line("mix-3", "/v4/embeddings", {"model": "embedding-3", "input": "hello"}),
            batch_line("mix-4", CHAT, {"model": "glm-4.7-flash", "messages": user("Bye!")}),
            batch_line("mix-5", CHAT, {"model": "glm-4.5-air", "messages": user("Pi to 3 dp?")}),
            batch_line("mix-6", "/v4/embeddings", {"model": "embedding-3", "input": ["a", "b"]}),
            batch_line("mix-7", CHAT, {"model": "glm-4-plus", "messages": user("Name a river.")}),
        ],
    )


def agent_files() -> None:
    """Agent rows: translations (two with a local glossary), effects videos, a slide deck."""
    (HERE / "glossary").mkdir(exist_ok=True)
    (HERE / "glossary" / "fr.txt").write_text(
        "batch runner\texécuteur de lots\ncheckpoint\tpoint de reprise\n", encoding="utf-8"
    )
    agents = "/v1/agents"

    def parts(text: str) -> list[dict[str, Any]]:
        return [{"role": "user", "content": [{"type": "text", "text": text}]}]

    def translate(cid: str, text: str, **variables: str) -> dict[str, Any]:
        variables = {"source_lang": "en", "target_lang": "fr", **variables}
        body = {"agent_id": "general_translation", "messages": parts(text)}
        return batch_line(cid, agents, {**body, "custom_variables": variables})

    def effect(cid: str, template: str) -> dict[str, Any]:
        content = [{"type": "image_url", "image_url": IMAGE}, {"type": "text", "text": "Go"}]
        body = {
            "agent_id": "vidu_template_agent",
            "messages": [{"role": "user", "content": content}],
            "custom_variables": {"template": template},
        }
        return batch_line(cid, agents, body)

    write_jsonl(
        "agents.jsonl",
        [
            translate("tr-1", "The batch runner resumes from its checkpoint."),
            translate("tr-2", "Every row is answered once.", glossary="glossary/fr.txt"),
            translate("tr-3", "A checkpoint per job.", glossary="glossary/fr.txt"),
            effect("fx-1", "bodyshake"),
            effect("fx-2", "french_kiss"),
            batch_line("deck-1", agents, {"agent_id": "slides_glm_agent",
                                          "messages": parts("Three slides on owls")}),
        ],
    )  # fmt: skip


def _bad(cid: str, body: Any, url: str = CHAT, **extra: Any) -> bytes:
    line = {"custom_id": cid, **extra, "url": url, "body": body}
    return json.dumps(line, ensure_ascii=False).encode()


_OK = {"model": "glm-4.7-flash", "messages": user("Hi")}

# (line bytes, field the error names or None for the whole line, what the line demonstrates);
# a None field with an empty `shows` is a row that is valid or a blank line.
BAD_LINES: list[tuple[bytes, str | None, str]] = [
    (_bad("ok-1", _OK), None, ""),
    (b'{"custom_id": "bad-json", "url": "/v4/chat/completions", "body": {', None, "invalid JSON"),
    (b'{"custom_id": "caf\xe9", "body": {}}', None, "bytes that are not UTF-8 (Latin-1 e-acute)"),
    (b'["not", "an", "object"]', None, "a line that is a JSON array, not an object"),
    (b"", None, ""),
    (_bad("m", _OK, method="GET"), "method", "method other than POST"),
    (_bad("u", _OK, url="/v4/chat/complete"), "url", "unknown endpoint"),
    (_bad("b", "Hi"), "body", "body that is a string, not an object"),
    (json.dumps({"custom_id": 1.5, "url": CHAT, "body": _OK}).encode(), "custom_id", "float id"),
    (_bad("x" * 300, _OK), "custom_id", "custom_id over 256 characters"),
    (_bad("", _OK), "custom_id", "empty custom_id"),
    (_bad("ok-1", _OK), "custom_id", "duplicate custom_id (line 1 keeps it)"),
    (_bad("no-model", {"messages": user("Hi")}), "body.model", "missing model, no --model"),
    (_bad("num-model", {"model": 4, "messages": user("Hi")}), "body.model", "model not a string"),
    (_bad("empty", {"model": "glm-4.7-flash", "messages": []}), "body.messages", "no messages"),
    (
        _bad("role", {"model": "glm-4.7-flash", "messages": [{"role": "bot", "content": "Hi"}]}),
        "body.messages[0].role",
        "unknown role",
    ),
    (
        _bad("content", {"model": "glm-4.7-flash", "messages": [{"role": "user", "content": 7}]}),
        "body.messages[0].content",
        "content that is a number",
    ),
    (
        _bad(
            "part",
            {
                "model": "glm-4.6v",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is this?"},
                            {"type": "image_url", "image_url": {}},
                        ],
                    }
                ],
            },
        ),
        "body.messages[0].content[1].image_url.url",
        "image part without a url",
    ),
    (
        _bad("tool", {"model": "glm-4.7-flash", "messages": [{"role": "tool", "content": "4"}]}),
        "body.messages[0].tool_call_id",
        "tool message without tool_call_id",
    ),
    (_bad("stream", {**_OK, "stream": True}), "body.stream", "stream: true"),
    (_bad("maxtok", {**_OK, "max_tokens": 0}), "body.max_tokens", "max_tokens 0"),
    (_bad("booltok", {**_OK, "max_tokens": True}), "body.max_tokens", "max_tokens true (a bool)"),
    (_bad("temp", {**_OK, "temperature": "0.5"}), "body.temperature", "temperature as a string"),
    (
        _bad(
            "emb", {"model": "embedding-3", "input": [f"t{i}" for i in range(65)]}, "/v4/embeddings"
        ),
        "body.input",
        "65 inputs to embedding-3 (limit 64)",
    ),
    (_bad("img", {"model": "glm-image"}, "/v4/images/generations"), "body.prompt", "no prompt"),
    (
        _bad("vid", {"model": "cogvideox-3", "quality": "speed"}, "/v4/videos/generations"),
        "body.prompt",
        "video with neither prompt nor image_url",
    ),
    (
        _bad("ws", {"search_engine": "search-prime"}, "/v4/web_search"),
        "body.search_query",
        "web search without search_query",
    ),
    (
        b'{"model": "glm-image", "prompt": "a red kite"}',
        "url",
        "short line whose endpoint is ambiguous (image or video?), no --endpoint given",
    ),
]


def bad_file() -> None:
    (HERE / "bad.jsonl").write_bytes(b"".join(line + b"\n" for line, _, _ in BAD_LINES))


README_HEAD = """\
# Sample specs

Small example job specs, written by `python samples/make_samples.py` (edit the script, not the
files). Check any of them with `runner validate samples/<file>`; a spec is JSONL or Parquet, one
request per row (see `runner/spec/`).

| file | rows | what it shows |
|---|---|---|
"""

FILES = {
    "chat.jsonl": "Batch-API lines (`custom_id`, `method`, `url`, `body`), all `glm-4.7-flash`: "
    "plain, system + user, `thinking` on and off, function `tools` (with a tool-call round trip), "
    "`response_format: json_object`",
    "chat_short.jsonl": "bare request bodies without `model` or `url`: run with "
    "`--endpoint chat/completions --model glm-4.7-flash`; half carry a `custom_id`, the others "
    "get `line-N`",
    "chat.parquet": "`chat.jsonl` as Parquet, `body` a JSON string column",
    "chat_struct.parquet": "`chat.jsonl` as Parquet, `body` a struct column",
    "vision.jsonl": "`glm-4.6v` with `image_url` + `text` content parts",
    "embeddings.jsonl": "`embedding-3`, single and list `input`, `dimensions`",
    "images.jsonl": "sync `images/generations` with `cogview-4-250304` and `glm-image`",
    "images_async.jsonl": "`async/images/generations` with `glm-image` (a task id to poll)",
    "videos.jsonl": "`cogvideox-3` from a prompt, and from an image plus a prompt (async task)",
    "mixed.jsonl": "chat on `glm-4.7-flash`, `glm-4.5-air` and `glm-4-plus`, plus `embedding-3`",
    "agents.jsonl": "`/v1/agents`: `general_translation` (two rows with the local glossary "
    "`glossary/fr.txt`, uploaded once), `vidu_template_agent` (async, a video), "
    "`slides_glm_agent` (a deck, exported as PDF)",
    "bad.jsonl": "one row per error kind, listed below; `runner validate` names line and field",
    "books.parquet": "an input table for `runner generate` (`id`, `topic`, `audience`), with "
    "`book.schema.json` and `generate_books.py` (below)",
}

README_GENERATE = """
## Dataset generation: `books.parquet`

An input table, not a spec: `runner generate` (or `runner.generate()` in Python) maps a prompt
over its rows. `book.schema.json` is the shape of each answer; its fields become typed columns.

```sh
runner generate samples/books.parquet --out runs/books --provider sim \\
  --prompt "Suggest one book about {topic} for {audience}." --schema samples/book.schema.json
```

`generate_books.py` does the same from Python, with a prompt function and a pydantic model, and
prints the table (`python samples/generate_books.py`; it serves the simulator itself).
"""

TOPICS = [
    ("volcanoes", "children"),
    ("the history of tea", "adults"),
    ("sourdough baking", "beginners"),
    ("black holes", "teenagers"),
    ("medieval castles", "children"),
    ("sailing", "beginners"),
    ("bees", "children"),
    ("the Roman roads", "adults"),
    ("chess openings", "club players"),
    ("rivers of Asia", "teenagers"),
    ("typography", "designers"),
    ("glaciers", "adults"),
]
BOOK_SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "author": {"type": "string"},
        "year": {"type": "integer"},
        "pages": {"type": "integer", "minimum": 1},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["title", "author", "year", "pages", "tags"],
}


def generate_files() -> None:
    rows = [{"id": i, "topic": t, "audience": a} for i, (t, a) in enumerate(TOPICS)]
    write_parquet("books.parquet", pa.Table.from_pylist(rows))
    (HERE / "book.schema.json").write_text(json.dumps(BOOK_SCHEMA, indent=2) + "\n")


README_BAD = """
## `bad.jsonl`, line by line

Line 1 is valid (line 12 reuses its id). Line 5 is blank: not a row, but line numbers keep
counting. A line over the 16 MiB cap is left out (it would make the sample 16 MiB); the tests
cover it.

| line | field | shows |
|---|---|---|
"""


def rows_in(name: str) -> int:
    path = HERE / name
    if path.suffix == ".parquet":
        return int(pq.read_metadata(path).num_rows)
    return sum(1 for line in path.read_bytes().split(b"\n") if line.strip())


def readme() -> None:
    text = README_HEAD + "".join(
        f"| `{n}` | {rows_in(n)} | {what} |\n" for n, what in FILES.items()
    )
    text += README_GENERATE
    text += README_BAD
    for number, (_, field, shows) in enumerate(BAD_LINES, 1):
        if shows:
            text += f"| {number} | {f'`{field}`' if field else '(whole line)'} | {shows} |\n"
    (HERE / "README.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    chat_files()
    other_files()
    agent_files()
    bad_file()
    generate_files()
    readme()
