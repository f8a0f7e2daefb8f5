"""Providers as data: where to send, which key to read, how errors and limits look.

A provider is a value, not a code path: Zhipu (China), Z.ai (international), SiliconFlow
and any OpenAI-compatible endpoint differ only in these fields. Users add their own in a
TOML file named by `--providers FILE` or the `RUNNER_PROVIDERS` variable (never an implicit
file in the home folder: a job's behaviour should be visible in its command or job file):

    [providers.myhost]
    extends = "openai"            # start from a shipped provider (optional)
    base_url = "https://llm.example.com/v1"
    key_env = "MYHOST_API_KEY"
    error_shape = "openai"        # zhipu | siliconflow | openai: picks the code table
    balance_statuses = [402]
    rpm = 600                     # default request/token budgets per model
    tpm = 200000
    probe_capacity = true         # no published tiers: find the server's capacity
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import UsageError

__all__ = [
    "ERROR_SHAPES",
    "PROVIDERS",
    "PROVIDERS_ENV",
    "TIERS",
    "Provider",
    "get_provider",
    "load_providers",
    "provider_names",
    "tier_limit",
]

PROVIDERS_ENV = "RUNNER_PROVIDERS"
# Error body shapes, each with its own business-code table in `errors.classify`.
ERROR_SHAPES = ("zhipu", "siliconflow", "openai")

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
    # Agents are keyed by agent_id (agents.py); the slide agent's page gives its own tiers,
    # the effects-video templates are priced and limited like the other video models.
    "slides_glm_agent": {"V0": 10, "V1": 15, "V2": 20, "V3": 30},
    "vidu_template_agent": _MEDIA_TIERS,
    # The GLM-ASR page gives the media tiers for speech recognition.
    "glm-asr-2512": _MEDIA_TIERS,
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
    # The error body the provider sends, which also picks the business-code table:
    # "zhipu" ({"error":{"code":"1302",...}} or flat {"code":1302,...}), "siliconflow"
    # (flat {"code":20012,"message":..,"data":null}) or "openai" ({"error":{"code":"..."}}).
    error_shape: str = "zhipu"
    # HTTP statuses that mean "out of money" whatever the body says (SiliconFlow: 403).
    balance_statuses: frozenset[int] = frozenset()
    # Whether the provider runs Zhipu's async task endpoints (videos, async images).
    async_tasks: bool = True
    price_table: str = "zai"
    default_tier: str = "V0"
    extra_headers: Mapping[str, str] = field(default_factory=dict)
    # How a Batch-API line names its endpoint: Zhipu "/v4/chat/completions", OpenAI-style
    # providers "/v1/chat/completions" (API-NOTES 5.1, 9).
    batch_url_prefix: str = "/v4/"
    # Default requests / tokens per minute per model (None: the provider limits by
    # concurrency only). --rpm / --tpm override them.
    rpm: int | None = None
    tpm: int | None = None
    # The provider publishes no concurrency tiers (a self-hosted vLLM / llama.cpp server,
    # OpenAI): --concurrency is a ceiling, not the server's capacity, so the limiter starts
    # low and finds the capacity from the answers' latency (limits.py).
    probe_capacity: bool = False
    # The provider enforces response_format {"type": "json_schema"} (OpenAI, vLLM,
    # llama.cpp): `generate` asks for the user's schema that way; otherwise (Z.ai, Zhipu:
    # json_object only) it asks for json_object with the schema in the prompt.
    json_schema: bool = False


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
        error_shape="siliconflow",
        balance_statuses=frozenset({403}),
        async_tasks=False,
        price_table="siliconflow",
        batch_url_prefix="/v1/",
    ),
    "openai": Provider(
        "openai",
        "",
        "OPENAI_API_KEY",
        "USD",
        error_shape="openai",
        async_tasks=False,
        price_table="openai",
        batch_url_prefix="/v1/",
        probe_capacity=True,
        json_schema=True,
    ),
    # The embedded simulator: Z.ai's shapes and prices, any non-empty key.
    "sim": Provider("sim", "", "ZAI_API_KEY", "USD"),
}


_FIELDS = {f.name for f in fields(Provider)}


def _provider_from(name: str, raw: Mapping[str, Any], known: Mapping[str, Provider]) -> Provider:
    where = f"provider {name!r}"
    data = dict(raw)
    base_name = data.pop("extends", None)
    unknown = set(data) - _FIELDS
    if unknown:
        raise UsageError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
            f"allowed: extends, {', '.join(sorted(_FIELDS - {'name'}))}"
        )
    data.pop("name", None)
    if "balance_statuses" in data:
        data["balance_statuses"] = frozenset(int(x) for x in data["balance_statuses"])
    if "extra_headers" in data:
        data["extra_headers"] = {str(k): str(v) for k, v in dict(data["extra_headers"]).items()}
    shape = data.get("error_shape")
    if shape is not None and shape not in ERROR_SHAPES:
        raise UsageError(f"{where}: error_shape must be one of {', '.join(ERROR_SHAPES)}")
    if base_name is not None:
        base = known.get(str(base_name))
        if base is None:
            raise UsageError(f"{where}: extends unknown provider {base_name!r}")
        return replace(base, name=name, **data)
    missing = {"key_env", "currency"} - set(data)
    if missing:
        raise UsageError(
            f"{where}: needs {', '.join(sorted(missing))} (or `extends` a shipped provider)"
        )
    data.setdefault("base_url", "")
    try:
        return Provider(name=name, **data)
    except TypeError as exc:
        raise UsageError(f"{where}: {exc}") from None


@lru_cache(maxsize=8)
def _load(path: str) -> Mapping[str, Provider]:
    """Read once per process: `Settings.provider_info` is looked up on the hot path."""
    import tomllib  # only for a providers file: most runs never read one

    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read providers file {path}: {exc}") from exc
    table = raw.get("providers", raw)
    if not isinstance(table, dict):
        raise UsageError(f"{path}: expected [providers.NAME] tables")
    out: dict[str, Provider] = dict(PROVIDERS)
    for name, body in table.items():
        if not isinstance(body, dict):
            raise UsageError(f"{path}: providers.{name} must be a table")
        try:
            out[name] = _provider_from(name, body, out)
        except UsageError as exc:
            raise UsageError(f"{path}: {exc}") from None
    return out


def load_providers(path: Path | None) -> Mapping[str, Provider]:
    """The shipped providers, with the user's file (if any) laid over them."""
    if path is None:
        return PROVIDERS
    return _load(str(path))


def provider_names(path: Path | None = None) -> list[str]:
    return list(load_providers(path))


def get_provider(name: str, providers_file: Path | None = None) -> Provider:
    table = PROVIDERS if providers_file is None else load_providers(providers_file)
    try:
        return table[name]
    except KeyError:
        raise UsageError(f"unknown provider {name!r}: use one of {', '.join(table)}") from None
