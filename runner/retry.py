"""The retry policy as data: tenacity strategies built once from the job's RetryConfig.

Two budgets, because they fail for different reasons: a transient fault (5xx, timeout,
dropped connection) gets `max_attempts` tries, while a rate limit is the platform asking us
to slow down, so it is waited out for up to `max_elapsed` seconds (the pool also shrinks
its concurrency meanwhile). A server's Retry-After wins over our own jittered curve, from
the first retry on.

The online pool sends a row's first attempt outside tenacity (building the policy for
every row cost more CPU than the request); it passes that failure as `first_failure`, so
the budgets count it and `max_attempts` is the number of sends, as the README says.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import anyio
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from .errors import RateLimited, RetryableError
from .settings import RetryConfig

__all__ = ["RATE_LIMIT_ATTEMPTS", "build_retrying", "first_wait"]

# A 429 storm at 30 % gives 8 consecutive 429s once in ~15,000 rows; rate limits get a much
# larger attempt budget so such rows wait instead of failing.
RATE_LIMIT_ATTEMPTS = 60


def _retry_after(cfg: RetryConfig, exc: BaseException | None) -> float | None:
    after = getattr(exc, "retry_after", None)
    if isinstance(after, int | float) and after > 0:
        return min(float(after), cfg.max_wait * 4)
    return None


def first_wait(cfg: RetryConfig, exc: BaseException) -> float:
    """The wait before a row's first retry: the server's Retry-After, else `initial_wait`."""
    if cfg.testing:
        return 0.0
    after = _retry_after(cfg, exc)
    return cfg.initial_wait if after is None else after


def _wait(cfg: RetryConfig, offset: int) -> Callable[[RetryCallState], float]:
    def wait(state: RetryCallState) -> float:
        if cfg.testing:
            return 0.0
        exc = state.outcome.exception() if state.outcome else None
        after = _retry_after(cfg, exc)
        if after is not None:
            return after
        n = state.attempt_number - 1 + offset
        base: float = min(cfg.max_wait, cfg.initial_wait * 2.0**n)
        return base + random.uniform(0, cfg.jitter)

    return wait


def _stop(
    cfg: RetryConfig, first_failure: BaseException | None
) -> Callable[[RetryCallState], bool]:
    """Stop when either budget is spent; each is counted on its own errors only."""
    transient = rate_limited = 0
    if isinstance(first_failure, RateLimited):
        rate_limited = 1
    elif first_failure is not None:
        transient = 1

    def stop(state: RetryCallState) -> bool:
        nonlocal transient, rate_limited
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RateLimited):
            rate_limited += 1
        else:
            transient += 1
        if transient >= cfg.max_attempts or rate_limited >= RATE_LIMIT_ATTEMPTS:
            return True
        elapsed = state.seconds_since_start or 0.0
        return not cfg.testing and elapsed >= cfg.max_elapsed

    return stop


def build_retrying(
    cfg: RetryConfig,
    *,
    on_retry: Callable[[RetryCallState], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    first_failure: BaseException | None = None,
) -> AsyncRetrying:
    """A fresh AsyncRetrying for one row; `on_retry(state)` runs before each wait.

    `first_failure`: the error of an attempt already made outside this policy (it counts).
    """
    return AsyncRetrying(
        retry=retry_if_exception_type(RetryableError),
        stop=_stop(cfg, first_failure),
        wait=_wait(cfg, 0 if first_failure is None else 1),
        sleep=sleep,
        reraise=True,
        before_sleep=on_retry,
    )
