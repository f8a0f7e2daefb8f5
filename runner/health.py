"""Whether the server can answer at all: a job that nothing can make work stops early.

A wrong --base-url (404 for the endpoint), a closed port (connection refused) or a host
name that does not resolve fails every row the same way; retrying each row eight times
would take minutes a row and say nothing. So the job stops (exit 3, TransportFatal) with
one message naming the base URL and what to check, when either

- the job's first few attempts all fail that way, before the server answered anything, or
- every attempt has failed that way for a while (the server went away mid-job and did not
  come back), counted from its last answer.

A single refused connection after answers (a server restarting) is retried as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .errors import TransportFatal
from .http.base import redact_url

__all__ = ["ServerHealth"]

# Attempts that all miss before the server ever answered: a few, so one unlucky start of a
# server that is still coming up does not stop a job, yet well within ten seconds.
FIRST_MISSES = 3
# After answers: this long since the last one, with at least this many misses in a row.
GONE_SECONDS = 60.0
GONE_MISSES = 20

_CHECK = {
    "refused": "that the server is running and listens on that host and port",
    "unknown host": "the host name in --base-url",
    "not found": (
        "--base-url: it must end where the API's paths begin (an OpenAI-compatible server "
        "such as vLLM or llama.cpp: http://HOST:PORT/v1; Z.ai: https://api.z.ai/api/paas/v4)"
    ),
}


class ServerHealth:
    """Counts answers and misses (no connection, or no such endpoint) of one job."""

    def __init__(self, base_url: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.base_url = redact_url(base_url) if base_url else "the server"
        self._clock = clock
        self.answers = 0
        self.misses = 0  # in a row, since the last answer
        self._last_answer = clock()

    def answered(self) -> None:
        """The server answered (any status but a 404 for the endpoint)."""
        self.answers += 1
        self.misses = 0
        self._last_answer = self._clock()

    def missed(self, kind: str, detail: str) -> None:
        """One attempt met `kind` ("refused", "unknown host", "not found"); raises
        TransportFatal once nothing can work."""
        self.misses += 1
        first = self.answers == 0 and self.misses >= FIRST_MISSES
        gone = self.misses >= GONE_MISSES and self._clock() - self._last_answer >= GONE_SECONDS
        if first or gone:
            when = "every request so far" if first else f"every request for {GONE_SECONDS:g} s"
            raise TransportFatal(
                f"nothing can work at {self.base_url}: {when} failed ({detail}); "
                f"check {_CHECK[kind]}, then run the same command again to resume"
            )
