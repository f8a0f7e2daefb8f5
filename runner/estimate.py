"""`runner estimate`: what a spec would cost, online and in batch mode, before anything is sent.

An estimate, not a quote. Its assumptions are printed with it:

* prompt tokens: UTF-8 bytes of the prompt text / 3 (+4 per chat message), or the
  provider's `tokenizer` endpoint with `--use-tokenizer` (counting tokens is not billed;
  no other endpoint is ever called);
* output tokens: the row's `max_tokens` (an upper bound: answers are usually shorter),
  else `--output-tokens` (default `DEFAULT_OUTPUT_TOKENS`), a guess;
* images and videos: `n` (default 1) per row at the per-item price; web search 1 use;
* agents: a translation's output as long as its source, the slide agent's output the
  guess above, one video per effects-video row; the conversation export is not billed;
* audio transcriptions: 12.5 prompt tokens per second of audio (the platform's audio rate)
  plus the prompt text, the seconds from a WAV file's header, else the 30 s cap; output
  `SPEECH_TOKENS_PER_SECOND` per second (a transcript of fast speech);
* batch mode: the online price times `PriceTable.batch_factor` for the endpoints the Batch
  API runs; other rows are priced online (they would run online);
* models without a price are listed as unpriced and count 0.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import orjson

from .agents import SLIDES, TRANSLATION, VIDU
from .cost import NANO, PriceTable, Usage
from .forms import AUDIO_TOKENS_PER_SECOND
from .http import ConnectionDropped, Transport
from .localfiles import AUDIO, FileRefError, resolve
from .spec import Request, SpecDefaults, read_spec

__all__ = [
    "DEFAULT_OUTPUT_TOKENS",
    "Estimate",
    "ModelEstimate",
    "estimate_spec",
    "local_prompt_tokens",
    "render",
    "transport_tokenizer",
]

DEFAULT_OUTPUT_TOKENS = 256
# Words of fast speech (~3 a second) in tokens: what a transcript of one second may hold.
SPEECH_TOKENS_PER_SECOND = 4
_CHAT = frozenset({"chat/completions", "async/chat/completions"})
_TOKENIZER_AT_ONCE = 8

# (model, messages) -> prompt tokens, or None when the tokenizer could not count them.
Tokenizer = Callable[[str, list[Any]], Awaitable[int | None]]


@dataclass
class ModelEstimate:
    rows: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    images: int = 0
    videos: int = 0
    uses: int = 0
    online_nano: int = 0
    batch_nano: int = 0
    priced: bool = True
    tokenized: int = 0  # rows whose prompt the tokenizer counted


@dataclass
class Estimate:
    currency: str
    models: dict[str, ModelEstimate] = field(default_factory=dict)
    invalid: int = 0
    output_guess: int = DEFAULT_OUTPUT_TOKENS
    used_tokenizer: bool = False
    batch_factor: Decimal = Decimal("0.5")

    @property
    def online_nano(self) -> int:
        return sum(m.online_nano for m in self.models.values())

    @property
    def batch_nano(self) -> int:
        return sum(m.batch_nano for m in self.models.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "estimate": True,
            "currency": self.currency,
            "online": self.online_nano / NANO,
            "batch": self.batch_nano / NANO,
            "invalid_rows": self.invalid,
            "assumptions": assumptions(self),
            "by_model": {
                name: {
                    "rows": m.rows,
                    "prompt_tokens": m.prompt_tokens,
                    "output_tokens": m.output_tokens,
                    "images": m.images,
                    "videos": m.videos,
                    "online": m.online_nano / NANO,
                    "batch": m.batch_nano / NANO,
                    "priced": m.priced,
                    "tokenizer_rows": m.tokenized,
                }
                for name, m in self.models.items()
            },
        }


def _texts(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for part in value:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    yield text
            else:
                yield from _texts(part)


def local_prompt_tokens(req: Request) -> int:
    """Prompt tokens by the bytes/3 rule (see the module docstring)."""
    body = req.body
    if req.endpoint in _CHAT or req.endpoint == "agents":
        messages = body.get("messages")
        if not isinstance(messages, list):
            return 0
        n = 0
        for m in messages:
            if isinstance(m, dict):
                n += 4 + sum(len(t.encode()) for t in _texts(m.get("content"))) // 3
        tools = body.get("tools")
        if tools:
            n += len(orjson.dumps(tools)) // 3
        return n
    if req.endpoint == "embeddings":
        return sum(len(t.encode()) for t in _texts(body.get("input"))) // 3
    text = body.get("prompt") or body.get("search_query") or ""
    return len(text.encode()) // 3 if isinstance(text, str) else 0


def audio_seconds(req: Request, root: Path) -> float:
    """How long a transcription row's audio plays: a WAV's header says; else the cap."""
    cap = AUDIO.seconds or 0.0
    ref = req.body.get("file")
    if not isinstance(ref, str):
        return cap
    try:
        seconds = resolve(ref, root).seconds
    except FileRefError:
        return cap
    return cap if seconds is None else min(seconds, cap)


def _output_tokens(req: Request, guess: int, prompt: int, seconds: float = 0.0) -> int:
    if req.endpoint == "audio/transcriptions":
        return round(seconds * SPEECH_TOKENS_PER_SECOND)
    if req.endpoint == "agents":
        return {TRANSLATION: prompt, SLIDES: guess}.get(req.model, 0)
    if req.endpoint not in _CHAT:
        return 0
    max_tokens = req.body.get("max_tokens")
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > 0:
        return max_tokens
    return guess


def _items(req: Request) -> tuple[int, int, int]:
    n = req.body.get("n")
    count = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
    if req.endpoint in ("images/generations", "async/images/generations"):
        return count, 0, 0
    if req.endpoint == "videos/generations" or (req.endpoint == "agents" and req.model == VIDU):
        return 0, 1, 0
    if req.endpoint == "web_search":
        return 0, 0, 1
    return 0, 0, 0


async def estimate_spec(
    spec: Any,
    defaults: SpecDefaults,
    prices: PriceTable,
    *,
    output_tokens: int = DEFAULT_OUTPUT_TOKENS,
    price_as: str | None = None,
    tokenizer: Tokenizer | None = None,
) -> Estimate:
    """Walk the spec once and price every valid row (see the module docstring)."""
    from .batch import BATCH_ENDPOINTS as batch_endpoints

    est = Estimate(
        prices.currency,
        output_guess=output_tokens,
        used_tokenizer=tokenizer is not None,
        batch_factor=prices.batch_factor,
    )
    batches = read_spec(spec, defaults)
    limiter = anyio.CapacityLimiter(_TOKENIZER_AT_ONCE)
    root = defaults.files_root or Path.cwd()

    def add(req: Request, counted: int | None = None) -> None:
        model = price_as or req.model
        m = est.models.setdefault(model, ModelEstimate())
        if counted is not None:
            m.tokenized += 1
        prompt = local_prompt_tokens(req) if counted is None else counted
        seconds = 0.0
        if req.endpoint == "audio/transcriptions":
            seconds = audio_seconds(req, root)
            prompt += round(seconds * AUDIO_TOKENS_PER_SECOND)
        out = _output_tokens(req, output_tokens, prompt, seconds)
        images, videos, uses = _items(req)
        usage = Usage(prompt, out, 0, prompt + out, images, videos, uses)
        price = prices.price(model)
        cost = price.cost(usage) if price is not None else 0
        m.priced = m.priced and price is not None
        m.rows += 1
        m.prompt_tokens += prompt
        m.output_tokens += out
        m.images += images
        m.videos += videos
        m.uses += uses
        m.online_nano += cost
        if req.endpoint in batch_endpoints:
            m.batch_nano += int(Decimal(cost) * prices.batch_factor)
        else:
            m.batch_nano += cost

    async def counted(req: Request) -> None:
        assert tokenizer is not None
        async with limiter:
            add(req, await tokenizer(req.model, req.body.get("messages") or []))

    while True:
        chunk = await anyio.to_thread.run_sync(next, batches, None)
        if chunk is None:
            break
        async with anyio.create_task_group() as tg:
            for item in chunk:
                if not isinstance(item, Request):
                    est.invalid += 1
                elif tokenizer is not None and item.endpoint in _CHAT:
                    tg.start_soon(counted, item)
                else:
                    add(item)
    return est


def transport_tokenizer(transport: Transport, timeout: float = 30.0) -> Tokenizer:
    """Count a chat row's prompt with `POST tokenizer` (not billed); None on any failure,
    so the row falls back to the local rule."""

    async def count(model: str, messages: list[Any]) -> int | None:
        body = orjson.dumps({"model": model, "messages": messages})
        try:
            resp = await transport.request("POST", "/tokenizer", body, timeout)
        except ConnectionDropped:
            return None
        if resp.status != 200:
            return None
        try:
            usage = orjson.loads(resp.body).get("usage") or {}
        except (orjson.JSONDecodeError, AttributeError):
            return None
        tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        return tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None

    return count


def assumptions(est: Estimate) -> list[str]:
    prompt = (
        "prompt tokens from the provider's tokenizer endpoint (chat rows; others bytes/3)"
        if est.used_tokenizer
        else "prompt tokens ~ UTF-8 bytes of the prompt text / 3 (+4 per chat message)"
    )
    return [
        prompt,
        f"output tokens = the row's max_tokens (an upper bound), else a guess of "
        f"{est.output_guess} (--output-tokens)",
        "images/videos: n per row (default 1) at the per-item price",
        "agents: a translation as long as its source, the slide agent's output the guess, "
        "one video per effects-video row",
        f"audio: {AUDIO_TOKENS_PER_SECOND:g} prompt tokens per second (a WAV header's length, "
        f"else the {AUDIO.seconds:g} s cap), output {SPEECH_TOKENS_PER_SECOND} per second",
        f"batch = online x {est.batch_factor} for chat, embeddings and images; other rows "
        "priced online",
        "no cached-input discount; models without a price count 0",
    ]


def _money(nano: int) -> str:
    return f"{Decimal(nano) / NANO:.6f}"


def render(est: Estimate) -> str:
    lines = [
        f"ESTIMATE (nothing was sent to a billable endpoint), currency {est.currency}",
        f"{'model':<24} {'rows':>6} {'prompt tok':>11} {'output tok':>11} "
        f"{'online':>12} {'batch':>12}",
    ]
    for name, m in sorted(est.models.items()):
        note = "" if m.priced else "  (no price known)"
        if m.priced and m.rows and not m.online_nano:
            note = "  (free model)"
        lines.append(
            f"{name:<24} {m.rows:>6} {m.prompt_tokens:>11} {m.output_tokens:>11} "
            f"{_money(m.online_nano):>12} {_money(m.batch_nano):>12}{note}"
        )
    rows = sum(m.rows for m in est.models.values())
    lines.append(
        f"{'total':<24} {rows:>6} {'':>11} {'':>11} "
        f"{_money(est.online_nano):>12} {_money(est.batch_nano):>12}"
    )
    if est.invalid:
        lines.append(f"{est.invalid} invalid rows left out (see `runner validate`)")
    lines.append("assumptions:")
    lines.extend(f"  - {a}" for a in assumptions(est))
    return "\n".join(lines)
