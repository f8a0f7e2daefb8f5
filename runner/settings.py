"""Frozen job settings: everything a run needs, built once from flags and the job file.

The API key is read from the provider's environment variable and held in a `Secret`, whose
repr and str are masked, so a traceback, a log line or `Settings` printed by accident never
shows it; `to_record()` (what the checkpoint stores) leaves it out entirely.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .bodybudget import DEFAULT_BODY_BUDGET_MB
from .errors import UsageError
from .http import HttpConfig
from .keys import KeySpec, key_fingerprint, key_label, parse_key_specs, split_keys
from .providers import Provider, get_provider, tier_limit
from .spec import SpecDefaults, SpecWindow
from .storage import is_url, normalize

__all__ = [
    "RUN_ONLY",
    "ApiKey",
    "RetryConfig",
    "Secret",
    "Settings",
    "load_job_file",
    "spec_location",
]


class Secret:
    """A string that never shows itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One key of the job's pool: the secret, its account's settings, and its safe names."""

    secret: Secret = field(repr=False)
    spec: KeySpec
    fingerprint: str
    label: str

    @classmethod
    def of(cls, position: int, value: str, spec: KeySpec) -> ApiKey:
        return cls(Secret(value), spec, key_fingerprint(value), key_label(position, value))


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """Defaults: 8 attempts, 0.5 s first wait doubling to a 30 s cap, 10 min per row overall.

    Rate limits are waited out rather than failed: an overnight job that meets a busy
    hour should slow down, not fail rows. `testing=True` zeroes every wait (the stamina
    idea: a switch for tests instead of patching sleep).
    """

    max_attempts: int = 8
    initial_wait: float = 0.5
    max_wait: float = 30.0
    jitter: float = 1.0
    max_elapsed: float = 600.0
    testing: bool = False


@dataclass(frozen=True, slots=True)
class Settings:
    spec: Path
    out: Path
    provider: str = "zai"
    base_url: str = ""
    api_key: Secret = field(default_factory=lambda: Secret(""), repr=False)
    model: str | None = None
    endpoint: str | None = None
    body_defaults: Mapping[str, Any] = field(default_factory=dict)
    # `runner retry --set/--model`: dotted paths into each body ("body.max_tokens") and their
    # values, written over what the spec says; recorded so a stopped retry resumes with them.
    overrides: Mapping[str, Any] = field(default_factory=dict)
    tier: str | None = None
    concurrency: int | None = None
    model_concurrency: Mapping[str, int] = field(default_factory=dict)
    max_cost: Decimal | None = None
    strict: bool = False
    force: bool = False
    progress: bool = True
    transport: str = "fast"
    request_timeout: float = 300.0
    # Trusted CAs for every connection of the job (replaces the system's; SSL_CERT_FILE
    # works without it). Proxies come from HTTP_PROXY / HTTPS_PROXY / NO_PROXY.
    ca_bundle: Path | None = None
    retry: RetryConfig = field(default_factory=RetryConfig)
    prices: Path | None = None
    # Async tasks (videos, async images, async chat).
    poll_initial: float = 2.0
    poll_max: float = 30.0
    poll_concurrency: int = 16
    task_max_age: float = 3600.0
    download: bool = True
    max_artifact_bytes: int = 512 * 1024 * 1024
    # Rows whose results are committed in one SQLite transaction.
    commit_batch: int = 512
    commit_interval: float = 0.02
    # "online" (the worker pool) or "batch" (the provider's server-side Batch API, half price).
    mode: str = "online"
    # Batch mode: afterwards, send rows the batches did not finish through the online pool.
    retry_failed_online: bool = False
    # Batch mode: most lines per uploaded file (the platform allows 50,000; 10,000 for
    # embeddings); smaller files finish and merge sooner.
    batch_lines: int = 50_000
    # Requests / tokens per minute per model (SiliconFlow-style limits); None: the provider's.
    rpm: int | None = None
    tpm: int | None = None
    # The user's providers file (TOML); see `providers.py`.
    providers_file: Path | None = None
    # Several keys, one account each (keys.py): the variables that hold them and each
    # account's settings. Empty: the provider's variable, with one key or several.
    keys: tuple[KeySpec, ...] = ()
    # The keys themselves, read from the environment (never recorded); empty: `api_key`.
    api_keys: tuple[ApiKey, ...] = field(default=(), repr=False)
    # The part of the spec this job runs: set only for a shard of a sharded job (shards.py).
    window: SpecWindow | None = None
    # Unattended runs (attend.py), this run only and never recorded: webhook URLs carry
    # their token, and ports belong to the machine the run is on.
    notify: tuple[str, ...] | list[str] | str = ()
    serve: int | None = None  # the live page's port (loopback), served beside the job
    metrics_port: int | None = None  # Prometheus metrics while the job runs
    # Where rows' local files resolve (localfiles.py); None: the spec's folder.
    files_root: Path | None = None
    # MiB of file-carrying request bodies held at once (bodybudget.py).
    body_budget_mb: int = DEFAULT_BODY_BUDGET_MB
    # An object-storage prefix (s3://, gs://, abfs://) that results.parquet, the artifacts
    # and the report are uploaded to when the job ends (storage.py); recorded, so a resume
    # pushes to the same place. A URL, not a secret: credentials come from the environment.
    results_to: str | None = None
    # What the checkpoint keeps of a chat completion's answer: "full" (the body as it came)
    # or "answer" (its choices alone: endpoints.answer_only). The answers are most of a
    # checkpoint's bytes (1.6 of 2.1 KB a row with 1 KB answers).
    keep_response: str = "full"

    @property
    def http_config(self) -> HttpConfig:
        """What every client of this job shares: API calls, batch files, artifacts."""
        return HttpConfig(ca_bundle=self.ca_bundle)

    @property
    def provider_info(self) -> Provider:
        return get_provider(self.provider, self.providers_file)

    def spec_defaults(self) -> SpecDefaults:
        """What the spec reader fills in for rows that leave it out."""
        return SpecDefaults(
            endpoint=self.endpoint,
            model=self.model,
            body=dict(self.body_defaults),
            files_root=self.resolved_files_root,
            overrides=dict(self.overrides),
        )

    @property
    def resolved_files_root(self) -> Path:
        """The one folder rows' local files may come from."""
        return self.files_root if self.files_root is not None else self.spec.parent

    @property
    def key_pool(self) -> tuple[ApiKey, ...]:
        """The job's keys, in order; a single `api_key` is a pool of one."""
        if self.api_keys:
            return self.api_keys
        spec = KeySpec(env=self.provider_info.key_env)
        return (ApiKey.of(1, self.api_key.reveal(), spec),)

    def secrets(self) -> tuple[str, ...]:
        """Every key of the pool, for `redact`."""
        return tuple(k.secret.reveal() for k in self.key_pool)

    def cap_for(self, model: str, key: KeySpec | None = None) -> int:
        """The in-flight cap for one model: the key's own settings (per-model, concurrency,
        tier), then the job's explicit per-model, --concurrency, then tier."""
        if key is not None:
            if model in key.model_concurrency:
                return key.model_concurrency[model]
            if key.concurrency is not None:
                return key.concurrency
            if key.tier is not None:
                return tier_limit(model, key.tier)
        if model in self.model_concurrency:
            return self.model_concurrency[model]
        if self.concurrency is not None:
            return self.concurrency
        return tier_limit(model, self.tier or self.provider_info.default_tier)

    def to_record(self) -> dict[str, Any]:
        """What the checkpoint stores: every setting that shapes the job, never the key."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in ("api_key", "api_keys", *RUN_ONLY):
                continue
            value = getattr(self, f.name)
            if f.name == "keys":
                value = [k.to_record() for k in value]
            elif isinstance(value, RetryConfig | SpecWindow):
                value = {g.name: getattr(value, g.name) for g in fields(value)}
            elif f.name == "spec":
                value = spec_location(value)
            elif isinstance(value, Path | Decimal):
                value = str(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out

    @classmethod
    def from_record(cls, record: Mapping[str, Any], **overrides: Any) -> Settings:
        """Rebuild settings from the checkpoint (for `runner resume`); the key comes from env."""
        kw = dict(record)
        kw["spec"] = Path(kw["spec"])
        kw["out"] = Path(kw["out"])
        if kw.get("max_cost") is not None:
            kw["max_cost"] = Decimal(kw["max_cost"])
        for name in ("prices", "providers_file", "ca_bundle", "files_root"):
            if kw.get(name):
                kw[name] = Path(kw[name])
        kw["retry"] = RetryConfig(**kw.get("retry", {}))
        if kw.get("window"):
            kw["window"] = SpecWindow(**kw["window"])
        kw["keys"] = parse_key_specs(kw["keys"], "checkpoint") if kw.get("keys") else ()
        known = {f.name for f in fields(cls)} - {"api_keys"}
        kw = {k: v for k, v in kw.items() if k in known}
        kw.update(overrides)
        return cls(**kw)

    def with_key_from_env(self, env: Mapping[str, str] | None = None) -> Settings:
        """Read the API keys: from the variables a keys file names, else from the provider's
        variable (one key, or several separated by commas); the simulator takes any key."""
        env = os.environ if env is None else env
        info = self.provider_info
        specs = self.keys or (KeySpec(env=info.key_env),)
        pool: list[ApiKey] = []
        seen: dict[str, str] = {}
        for spec in specs:
            values = split_keys(env.get(spec.env, ""))
            if not values and not self.keys:
                if self.provider == "sim":
                    values = ["sim-key"]
                elif _loopback(self.base_url):
                    # A server on this machine (the simulator, a local vLLM or llama.cpp)
                    # takes any key or none: `run` and `generate` alike need not set one.
                    values = ["local-no-key"]
            if not values:
                raise UsageError(
                    f"no API key: set {spec.env} in the environment for provider "
                    f"{self.provider!r} (keys are never read from files or flags)"
                )
            for value in values:
                key = ApiKey.of(len(pool) + 1, value, spec)
                if value in seen:
                    raise UsageError(
                        f"{key.label} is the same key as {seen[value]}: each key is an "
                        "account, list it once"
                    )
                seen[value] = key.label
                pool.append(key)
        return replace(self, api_key=pool[0].secret, api_keys=tuple(pool))


def spec_location(spec: Path) -> str:
    """The spec as the checkpoint records and messages name it: a URL in its canonical
    spelling (a Path folds "s3://b/k" into "s3:/b/k"), a local path as it is."""
    return normalize(spec) if is_url(spec) else str(spec)


def _loopback(base_url: str) -> bool:
    host = urlsplit(base_url).hostname or ""
    return host in ("127.0.0.1", "localhost", "::1")


# Settings of one run that the checkpoint does not keep (a resume is given them again).
RUN_ONLY = ("notify", "serve", "metrics_port")

# The settings a user chooses: each is a flag of `runner run` and a key of a job file
# (where two have shorter names, JOB_FILE_NAMES). The rest are the runner's own tuning.
USER_SETTINGS = (
    "out",
    "provider",
    "providers_file",
    "base_url",
    "model",
    "endpoint",
    "body_defaults",
    "tier",
    "concurrency",
    "model_concurrency",
    "max_cost",
    "strict",
    "force",
    "prices",
    "transport",
    "request_timeout",
    "ca_bundle",
    "download",
    "task_max_age",
    "mode",
    "retry_failed_online",
    "batch_lines",
    "rpm",
    "tpm",
    "keys",
    "notify",
    "files_root",
    "body_budget_mb",
    "results_to",
    "keep_response",
)
JOB_FILE_NAMES = {"body_defaults": "body", "providers_file": "providers"}


def load_job_file(path: Path) -> dict[str, Any]:
    """Read a declarative job file (TOML); relative paths are relative to the file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read job file {path}: {exc}") from exc
    allowed = {"spec", *(JOB_FILE_NAMES.get(name, name) for name in USER_SETTINGS)}
    unknown = set(data) - allowed
    if unknown:
        raise UsageError(
            f"{path}: unknown key(s) {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
    for key in ("spec", "out", "prices", "providers", "ca_bundle", "files_root"):
        if key in data:
            if key == "spec" and is_url(str(data[key])):
                data[key] = Path(data[key])  # a URL is never relative to the job file
                continue
            p = Path(data[key])
            data[key] = p if p.is_absolute() else (path.parent / p)
    for name, key in JOB_FILE_NAMES.items():
        if key in data:
            data[name] = data.pop(key)
    if "keys" in data:
        data["keys"] = parse_key_specs(data["keys"], str(path))
    return data
