"""Several API keys in one job: each key is an account with its own tier, limits and balance.

Keys come from the provider's variable, several separated by commas
(``ZAI_API_KEY=k1,k2,k3``), or from a keys file (``--keys FILE``, or ``[[keys]]`` in a job
file) whose entries name *environment variables*, never secrets, each with the settings of
that account:

    [[keys]]
    env = "ZAI_KEY_TEAM_A"        # the variable that holds the key (or several, comma-separated)
    tier = "V2"                   # the account's tier (default: the job's)
    concurrency = 30              # in flight per model (default: the job's, then the tier's)
    model_concurrency = { "glm-4.5-air" = 20 }
    rpm = 600                     # per-minute limits per model (default: the job's)
    tpm = 200000

What a user, a log or the checkpoint may see of a key is its `label` (its position and last
four characters) and its `fingerprint` (a truncated SHA-256): neither lets anyone call the
platform, and the fingerprint ties an async task or a batch to the key that created it.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import UsageError

__all__ = ["KeySpec", "key_fingerprint", "key_label", "load_keys_file", "parse_key_specs"]


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One account's settings, as a keys file gives them: the variable, never the secret."""

    env: str
    tier: str | None = None
    concurrency: int | None = None
    model_concurrency: Mapping[str, int] = field(default_factory=dict)
    rpm: int | None = None
    tpm: int | None = None

    def to_record(self) -> dict[str, Any]:
        return {
            f.name: dict(v) if isinstance(v := getattr(self, f.name), Mapping) else v
            for f in fields(self)
        }


_FIELDS = {f.name for f in fields(KeySpec)}


def _positive(where: str, name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{where}: {name} must be a positive integer")
    return value


def parse_key_specs(entries: Any, where: str) -> tuple[KeySpec, ...]:
    """Check `[[keys]]` entries (from a keys file, a job file or a checkpoint's record)."""
    if isinstance(entries, Mapping) or not isinstance(entries, Sequence):
        raise UsageError(f"{where}: keys must be a list of [[keys]] tables")
    specs = []
    for n, raw in enumerate(entries, 1):
        at = f"{where}: keys entry {n}"
        if not isinstance(raw, Mapping):
            raise UsageError(f"{at} must be a table")
        unknown = set(raw) - _FIELDS
        if unknown:
            raise UsageError(
                f"{at}: unknown key(s) {', '.join(sorted(unknown))}; "
                f"allowed: {', '.join(sorted(_FIELDS))} (a keys file names variables, "
                "never the keys themselves)"
            )
        env = raw.get("env")
        if not isinstance(env, str) or not env.strip():
            raise UsageError(f'{at}: needs env = "VARIABLE", the variable that holds the key')
        tier = raw.get("tier")
        if tier is not None and not isinstance(tier, str):
            raise UsageError(f'{at}: tier must be a string like "V2"')
        per_model = raw.get("model_concurrency") or {}
        if not isinstance(per_model, Mapping):
            raise UsageError(f"{at}: model_concurrency must be a table of model = N")
        specs.append(
            KeySpec(
                env=env.strip(),
                tier=tier,
                concurrency=_positive(at, "concurrency", raw.get("concurrency")),
                model_concurrency={
                    str(m): int(_positive(at, f"model_concurrency.{m}", v) or 1)
                    for m, v in per_model.items()
                },
                rpm=_positive(at, "rpm", raw.get("rpm")),
                tpm=_positive(at, "tpm", raw.get("tpm")),
            )
        )
    if not specs:
        raise UsageError(f"{where}: no [[keys]] entries")
    return tuple(specs)


def load_keys_file(path: Path) -> tuple[KeySpec, ...]:
    """Read a keys file (TOML, `[[keys]]` tables)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read keys file {path}: {exc}") from exc
    unknown = set(data) - {"keys"}
    if unknown:
        raise UsageError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; expected [[keys]]")
    return parse_key_specs(data.get("keys", []), str(path))


def split_keys(value: str) -> list[str]:
    """The keys a variable holds: one, or several separated by commas."""
    return [k.strip() for k in value.split(",") if k.strip()]


def key_fingerprint(key: str) -> str:
    """A non-secret name for a key that stays the same across runs: 12 hex of its SHA-256."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def key_label(position: int, key: str) -> str:
    """How a key is named to the user: its position (1-based) and its last 4 characters.

    A short key would give away too large a share of itself: it is named by its fingerprint.
    """
    tail = f"...{key[-4:]}" if len(key) >= 16 else f"sha:{key_fingerprint(key)[:8]}"
    return f"key #{position} ({tail})"
