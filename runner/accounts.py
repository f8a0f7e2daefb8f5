"""The job's keys at run time: one `Account` per key, each with its own connection and limits.

An account is what a platform bills and limits: its key's transport (the key lives in one
header of it and nowhere else), its RPM/TPM buckets, and (in pool.py) one adaptive limiter
per model. A key the platform refuses for good (arrears, a bad key, a spent quota) is
*retired*: it gets no new request for the rest of the run, one line names it by its label,
and the job goes on with the others; a run starts with every key active again, so a
recharged key comes back on resume. Only when every key is retired does the job stop.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import FatalAPIError, advice_for, redact
from .http import Transport
from .ratelimit import RateLimits
from .settings import ApiKey, Settings

__all__ = ["Account", "Accounts"]


@dataclass(eq=False, slots=True)
class Account:
    key: ApiKey
    transport: Transport
    rate: RateLimits | None
    retired: FatalAPIError | None = None
    why: str = ""  # why it was retired, safe to show and store

    @property
    def fingerprint(self) -> str:
        return self.key.fingerprint

    @property
    def label(self) -> str:
        return self.key.label


class Accounts:
    """The pool of accounts; the order is the user's, which the labels number."""

    def __init__(self, settings: Settings, transports: Sequence[Transport]) -> None:
        info = settings.provider_info
        self.key_env = info.key_env
        self._secrets = settings.secrets()
        self.items: list[Account] = []
        for key, transport in zip(settings.key_pool, transports, strict=True):
            spec = key.spec
            rpm = spec.rpm or settings.rpm or info.rpm
            tpm = spec.tpm or settings.tpm or info.tpm
            rate = RateLimits(rpm, tpm) if rpm or tpm else None
            self.items.append(Account(key, transport, rate))
        self._by_fp = {a.fingerprint: a for a in self.items}
        self.first = self.items[0]

    def __len__(self) -> int:
        return len(self.items)

    def by_fingerprint(self, fp: str | None) -> Account | None:
        return self._by_fp.get(fp) if fp else None

    def active(self) -> list[Account]:
        return [a for a in self.items if a.retired is None]

    def retire(self, account: Account, exc: FatalAPIError) -> None:
        """Take a refused key out of the run; the first refusal is the one remembered."""
        if account.retired is not None:
            return
        account.retired = exc
        account.why = redact(str(exc), *self._secrets)
        left = len(self.active())
        if len(self.items) > 1:
            rest = f"the job goes on with {left} of {len(self.items)} keys" if left else ""
            print(
                f"warning: {account.label} retired for this run: {account.why}"
                + (f"; {rest}" if rest else ""),
                file=sys.stderr,
                flush=True,
            )

    def exhausted(self) -> FatalAPIError:
        """The error that stops the job once every key is retired."""
        last = self.items[-1].retired
        if len(self.items) == 1 and last is not None:
            return last  # one key: the platform's own words, as always
        code = last.code if last is not None else None
        status = last.status if last is not None else None
        lines = "; ".join(f"{a.label}: {a.why}" for a in self.items)
        return FatalAPIError(f"every key is retired ({lines})", code=code, status=status)

    def states(self) -> list[dict[str, Any]]:
        """What the checkpoint keeps of each key: safe names, state and why."""
        now = time.time()
        return [
            {
                "fingerprint": a.fingerprint,
                "position": n,
                "label": a.label,
                "state": "retired" if a.retired is not None else "active",
                "reason": a.why or None,
                "advice": (
                    advice_for(a.retired.code, a.retired.status, a.key.spec.env)
                    if a.retired is not None
                    else None
                ),
                "updated_at": now,
            }
            for n, a in enumerate(self.items, 1)
        ]
