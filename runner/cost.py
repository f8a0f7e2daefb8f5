"""Price tables as data, and usage → cost in exact integer nano-units of the currency.

Costs are integers of 1e-9 currency units so that sums over a million rows are exact and
the checkpoint, `runner status` and the Parquet results always agree to the last digit.
A price of X per million tokens is X·1000 nano per token, exact for any price quoted with
up to three decimals per million (every published GLM price is).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

__all__ = [
    "ASSUMED_MAX_OUTPUT",
    "NANO",
    "ModelPrice",
    "PriceTable",
    "Usage",
    "format_cost",
    "format_total",
    "load_prices",
]

_PRICES = Path(__file__).with_name("data") / "prices.json"

NANO = 1_000_000_000
# When a row sets no max_tokens, its worst case assumes this many output tokens.
ASSUMED_MAX_OUTPUT = 4096


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    total_tokens: int = 0
    images: int = 0
    videos: int = 0
    uses: int = 0


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Nano-units per token (input, cached input, output) and per item."""

    input: int = 0
    cached_input: int = 0
    output: int = 0
    image: int = 0
    video: int = 0
    use: int = 0

    def cost(self, u: Usage) -> int:
        cached = min(u.cached_tokens, u.prompt_tokens)
        return (
            (u.prompt_tokens - cached) * self.input
            + cached * self.cached_input
            + u.completion_tokens * self.output
            + u.images * self.image
            + u.videos * self.video
            + u.uses * self.use
        )


def _per_token(value: Any) -> int:
    return int((Decimal(str(value)) * 1000).to_integral_value())


def _per_item(value: Any) -> int:
    return int((Decimal(str(value)) * NANO).to_integral_value())


@dataclass(frozen=True, slots=True)
class PriceTable:
    currency: str
    models: Mapping[str, ModelPrice]
    # Batch API discount, as a fraction of the online price.
    batch_factor: Decimal = Decimal("0.5")

    def price(self, model: str) -> ModelPrice | None:
        return self.models.get(model.lower())

    def cost(self, model: str, usage: Usage) -> int | None:
        """Cost in nano-units, or None when the model has no known price."""
        p = self.models.get(model.lower())
        return None if p is None else p.cost(usage)

    def worst_case(self, model: str, body: Mapping[str, Any], size: int) -> int:
        """The most one request of `size` bytes could cost online (0 when unpriced).

        Bytes bound input tokens from above (no tokenizer emits more tokens than bytes);
        output is bounded by max_tokens, or ASSUMED_MAX_OUTPUT; each item (image, video)
        and the per-use price are counted once per `n`.
        """
        p = self.models.get(model.lower())
        if p is None:
            return 0
        max_out = body.get("max_tokens")
        out_tokens = max_out if isinstance(max_out, int) else ASSUMED_MAX_OUTPUT
        n = body.get("n")
        items = n if isinstance(n, int) and n > 0 else 1
        return size * p.input + out_tokens * p.output + items * (p.image + p.video) + p.use


def _parse_table(raw: Mapping[str, Any]) -> PriceTable:
    models: dict[str, ModelPrice] = {}
    for name, row in raw.get("models", {}).items():
        models[name.lower()] = ModelPrice(
            input=_per_token(row.get("input", 0)),
            cached_input=_per_token(row.get("cached_input", row.get("input", 0))),
            output=_per_token(row.get("output", 0)),
            image=_per_item(row.get("image", 0)),
            video=_per_item(row.get("video", 0)),
            use=_per_item(row.get("use", 0)),
        )
    return PriceTable(currency=str(raw.get("currency", "USD")), models=models)


def load_prices(table: str, override: Path | None = None) -> PriceTable:
    """The shipped table for a provider, with the user's file (same shape) laid over it."""
    # A path beside this module, not importlib.resources: that import (tempfile, random,
    # zipfile, importlib.metadata) cost more start-up CPU than reading the file.
    shipped = json.loads(_PRICES.read_text())
    base = dict(shipped.get(table, {"currency": "USD", "models": {}}))
    if override is not None:
        user = json.loads(override.read_text())
        # Accept either {"zai": {...}} or a bare {"currency":..., "models": {...}}.
        user = user.get(table, user) if "models" not in user else user
        base = {
            "currency": user.get("currency", base.get("currency", "USD")),
            "models": {**base.get("models", {}), **user.get("models", {})},
        }
    return _parse_table(base)


def format_cost(nano: int, currency: str) -> str:
    """An amount for people: six decimals, or more where that would hide a small cost.

    Costs are exact in nano-units, so a cheap row (2.8e-07) is shown with three significant
    digits ("0.00000028 USD") instead of rounding to a misleading "0.000000".
    """
    value = Decimal(nano) / NANO
    if nano == 0:
        return f"0 {currency}"
    places = 6
    while places < 9 and abs(value) < Decimal(10) ** (3 - places):
        places += 1
    text = f"{value:.{places}f}"
    if places > 6:
        text = text.rstrip("0")
    return f"{text} {currency}"


def format_total(nano: int, currency: str, unpriced: int) -> str:
    """A total that may leave out rows of models with no price: said, never shown as 0."""
    if not unpriced:
        return format_cost(nano, currency)
    rows = f"{unpriced} row{'s' if unpriced != 1 else ''} with no price"
    if nano == 0:
        return f"no price ({rows}; give prices with --prices FILE)"
    return f"at least {format_cost(nano, currency)} ({rows} not counted)"
