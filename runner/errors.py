"""The runner's one error hierarchy, and the classifier that maps a platform answer onto it.

    RunnerError
    ├── UsageError            bad flags, job file or spec as a whole: nothing was sent (exit 2)
    ├── CheckpointError       the output folder or its SQLite checkpoint can't be used (exit 2)
    ├── ConnectionDropped     the connection broke before a whole answer came (transport)
    │   ├── ResponseTimeout   no whole answer within the request's timeout
    │   └── Unreachable       no connection at all: refused, or the host name is unknown
    ├── JobStopped            the job stopped early and can be resumed (exit 3)
    │   ├── FatalAPIError     the platform refused the account: auth, balance, quota
    │   │   └── TransportFatal  no request can work as configured: an untrusted TLS
    │   │                       certificate, a proxy that refuses the tunnel, a redirect
    │   ├── BudgetExceeded    --max-cost reached
    │   └── Interrupted       SIGINT / SIGTERM
    └── RequestFailed         one request's final outcome when it did not succeed
        ├── RowError          the platform rejected this row (bad parameter, content filter)
        │   └── AnswerTooLarge  the answer passed the size cap (and would again)
        └── RetryableError    worth another attempt (rate limit, 5xx, dropped connection)
            └── RateLimited   the account's concurrency / frequency limit: also shrink the pool

Business codes are classified before HTTP status because Zhipu sends several different
conditions as HTTP 429: a concurrency limit (1302) must be retried, while an empty balance
(1113) must stop the job at once; a naive client that retries every 429 loops forever there.
"""

from __future__ import annotations

import re
from enum import Enum

__all__ = [
    "AnswerTooLarge",
    "BudgetExceeded",
    "CheckpointError",
    "ConnectionDropped",
    "FatalAPIError",
    "Interrupted",
    "JobStopped",
    "RateLimited",
    "RequestFailed",
    "ResponseTimeout",
    "RetryableError",
    "RowError",
    "RunnerError",
    "TransportFatal",
    "Unreachable",
    "UsageError",
    "Verdict",
    "classify",
    "redact",
]


class RunnerError(Exception):
    """Base of every error the runner raises on purpose."""


class UsageError(RunnerError):
    """The command, job file or spec can't be run as given; nothing was sent."""


class CheckpointError(RunnerError):
    """The output folder or its checkpoint can't be used."""


class ConnectionDropped(RunnerError):
    """The connection closed or broke before a whole response arrived.

    The transports raise it; the pool and the task submitter decide what it means (a
    retry, or for an async submit an unknown outcome), since only they know the request.
    """


class ResponseTimeout(ConnectionDropped):
    """No whole response within the request's timeout; the connection was closed."""


class Unreachable(ConnectionDropped):
    """No connection could be made: refused (nothing listens on the port) or the host name
    is unknown. Retried like a drop, unless no request of the job was ever answered."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind  # "refused" or "unknown host"


class JobStopped(RunnerError):
    """The job stopped before every row was done; running it again resumes it."""


class FatalAPIError(JobStopped):
    """The platform refused the account itself (auth, balance, quota); retrying can't help."""

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.status = status


class TransportFatal(FatalAPIError):
    """The connection itself cannot work as configured; every request would fail the same way.

    An untrusted certificate is the usual case: retrying it for minutes (what a plain
    "connection error" gets) only hides the one thing the user must fix. A subclass of
    FatalAPIError so every place that stops the job on a refused account stops it here too.
    """


class BudgetExceeded(JobStopped):
    """Sending more rows could pass --max-cost."""


class Interrupted(JobStopped):
    """Stopped by a signal."""


class RequestFailed(RunnerError):
    """A request did not succeed; carries what the platform said."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.retry_after = retry_after
        self.attempts = 1


class RowError(RequestFailed):
    """The platform rejected this row; sending it again would fail the same way."""


class AnswerTooLarge(RowError):
    """The answer passed the transport's size cap; asking again would get the same answer."""


class RetryableError(RequestFailed):
    """A transient failure: another attempt may succeed."""


class RateLimited(RetryableError):
    """The account's concurrency or frequency limit was hit (1302, 1303, 1305, 429)."""


class Verdict(Enum):
    OK = "ok"
    RETRY = "retry"
    RATE_LIMIT = "rate_limit"
    FAIL_ROW = "fail_row"
    STOP_JOB = "stop_job"


# Zhipu / Z.ai business codes (API-NOTES section 4).
_RATE_LIMIT_CODES = frozenset({1302, 1303, 1305, 1312})
_RETRY_CODES = frozenset({500, 1230, 1234, 1120})
_STOP_CODES = frozenset(
    {1000, 1001, 1002, 1003, 1004, 1100, 1110, 1111, 1112, 1113, 1121}
    | {1220, 1221, 1222, 1304, 1308, 1309, 1310, 1311, 1313}
)
_ROW_CODES = frozenset({1200, 1210, 1211, 1212, 1213, 1214, 1215, 1231, 1261, 1300, 1301})

_ADVICE = {
    "auth": "check that the API key in {env} is valid for this provider (and not expired)",
    "balance": "top up the account balance or resource package, then run the same command "
    "again to resume",
    "quota": "the account's quota or plan limit was reached; wait for it to reset or raise it, "
    "then resume",
}


# SiliconFlow's flat numeric codes (API-NOTES 9). Only the documented one is listed; every
# other answer is classified by its HTTP status (403 = balance via balance_statuses).
# 20012 "model does not exist" fails the row (simple version: a systematic misconfiguration
# then fails every row of that model, cheaply, since a 400 is not billed).
_SILICONFLOW_CODES: dict[int | str, Verdict] = {20012: Verdict.FAIL_ROW}
# OpenAI-style string codes: insufficient_quota arrives as HTTP 429 but means "out of money",
# the same trap as Zhipu's 1113.
_OPENAI_CODES: dict[int | str, Verdict] = {
    "insufficient_quota": Verdict.STOP_JOB,
    "invalid_api_key": Verdict.STOP_JOB,
    "account_deactivated": Verdict.STOP_JOB,
    "billing_hard_limit_reached": Verdict.STOP_JOB,
    "rate_limit_exceeded": Verdict.RATE_LIMIT,
    "model_not_found": Verdict.FAIL_ROW,
    "context_length_exceeded": Verdict.FAIL_ROW,
    "invalid_request_error": Verdict.FAIL_ROW,
}
_TABLES = {"siliconflow": _SILICONFLOW_CODES, "openai": _OPENAI_CODES}


def _zhipu_code(icode: int) -> Verdict | None:
    if icode in _STOP_CODES:
        return Verdict.STOP_JOB
    if icode in _RATE_LIMIT_CODES:
        return Verdict.RATE_LIMIT
    if icode in _RETRY_CODES:
        return Verdict.RETRY
    if icode in _ROW_CODES:
        return Verdict.FAIL_ROW
    return None


def classify(
    status: int,
    code: str | None,
    *,
    balance_statuses: frozenset[int] = frozenset(),
    shape: str = "zhipu",
) -> Verdict:
    """Decide what a non-success answer means: business code first, HTTP status second.

    `shape` is the provider's error shape and picks the code table: a SiliconFlow code is
    never read as a Zhipu one (their numbers could collide; only Zhipu's mean 1113 etc.).
    """
    verdict: Verdict | None = None
    if code is not None:
        if shape == "zhipu":
            try:
                verdict = _zhipu_code(int(code))
            except ValueError:
                verdict = None
        else:
            table = _TABLES.get(shape, {})
            try:
                verdict = table.get(int(code))
            except ValueError:
                verdict = table.get(code)
    if verdict is not None:
        return verdict
    if status in balance_statuses:
        return Verdict.STOP_JOB
    if status == 401:
        return Verdict.STOP_JOB
    if status == 429:
        return Verdict.RATE_LIMIT
    if status in (408, 409) or status >= 500:
        return Verdict.RETRY
    if 400 <= status < 500:
        return Verdict.FAIL_ROW
    return Verdict.RETRY


def advice_for(code: str | None, status: int | None, key_env: str) -> str:
    """What the user should do when the platform stops the job."""
    try:
        icode = int(code) if code is not None else None
    except ValueError:
        icode = None
    if status == 401 or (icode is not None and 1000 <= icode <= 1004):
        return _ADVICE["auth"].format(env=key_env)
    if icode in (1113, 1110, 1112, 1121) or status == 403:
        return _ADVICE["balance"]
    return _ADVICE["quota"]


_SECRETISH = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-]+")


def redact(text: str, *secrets: str) -> str:
    """Remove every known secret and any bearer token from text meant for a log or a user."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return _SECRETISH.sub(r"\1***", text)
