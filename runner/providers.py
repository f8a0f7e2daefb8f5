"""Providers as data: where to send, which key to read, how errors and limits look.

A provider is a value, not a code path: Zhipu (China), Z.ai (international), SiliconFlow
and any OpenAI-compatible endpoint differ only in these fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["PROVIDERS", "TIERS", "Provider", "get_provider", "tier_limit"]

# Concurrency tiers (in-flight requests per model per account), API-NOTES section 7.
# The GLM-4-Plus page gives 50/100/300/500 for V0..V3; text and embedding models share it.
_TEXT_TIERS = {"V0": 50, "V1": 100, "V2": 300, "V3": 500}
_MEDIA_TIERS = {"V0": 5, "V1": 10, "V2": 15, "V3": 20}

TIERS: Mapping[str, Mapping[str, int]] = {
    "default": _TEXT_TIERS,
    "cogview-4": _MEDIA_TIERS,
    "cogview-4-250304": _MEDIA_TIERS,
    "glm-image": _MEDIA_TIERS,
    "cogvideox-3": _MEDIA_TIERS,
    "viduq1-text": _MEDIA_TIERS,
    "viduq1-image": _MEDIA_TIERS,
    "viduq1-start-end": _MEDIA_TIERS,
    "vidu2-image": _MEDIA_TIERS,
    "vidu2-start-end": _MEDIA_TIERS,
    "vidu2-reference": _MEDIA_TIERS,
    "glm-z1-air": {"V0": 30, "V1": 40, "V2": 50, "V3": 60},
    "glm-z1-airx": {"V0": 30, "V1": 40, "V2": 50, "V3": 60},
}


def tier_limit(model: str, tier: str) -> int:
    """The account's concurrency for one model at a tier (V0..V3)."""
    table = TIERS.get(model.lower(), TIERS["default"])
    try:
        return table[tier.upper()]
    except KeyError:
        raise ValueError(f"unknown tier {tier!r}: use one of {', '.join(table)}") from None


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    base_url: str
    key_env: str
    currency: str
    # The error body the provider sends: "zhipu" ({"error":{"code":"1302",...}} or flat
    # {"code":1302,...}) or "openai_flat" (SiliconFlow: {"code":20012,"message":..,"data":..}).
    error_shape: str = "zhipu"
    # HTTP statuses that mean "out of money" whatever the body says (SiliconFlow: 403).
    balance_statuses: frozenset[int] = frozenset()
    # Whether the provider runs Zhipu's async task endpoints (videos, async images).
    async_tasks: bool = True
    price_table: str = "zai"
    default_tier: str = "V0"
    extra_headers: Mapping[str, str] = field(default_factory=dict)


PROVIDERS: Mapping[str, Provider] = {
    "zai": Provider("zai", "https://api.z.ai/api/paas/v4", "ZAI_API_KEY", "USD"),
    "zhipu": Provider(
        "zhipu",
        "https://open.bigmodel.cn/api/paas/v4",
        "ZHIPUAI_API_KEY",
        "CNY",
        price_table="zhipu",
    ),
    "siliconflow": Provider(
        "siliconflow",
        "https://api.siliconflow.cn/v1",
        "SILICONFLOW_API_KEY",
        "USD",
        error_shape="openai_flat",
        balance_statuses=frozenset({403}),
        async_tasks=False,
        price_table="siliconflow",
    ),
    "openai": Provider(
        "openai",
        "",
        "OPENAI_API_KEY",
        "USD",
        error_shape="openai_flat",
        async_tasks=False,
        price_table="zai",
    ),
    # The embedded simulator: Z.ai's shapes and prices, any non-empty key.
    "sim": Provider("sim", "", "ZAI_API_KEY", "USD"),
}


def get_provider(name: str) -> Provider:
    try:
        return PROVIDERS[name]
    except KeyError:
        raise ValueError(f"unknown provider {name!r}: use one of {', '.join(PROVIDERS)}") from None
