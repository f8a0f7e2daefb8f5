"""The actor the shards share, on the driver's node: the bank and the inbox in one.

Both must live where the driver does (a lost worker node must not take the tier or the
outcomes on their way with it), so one Ray worker process serves both: one process fewer
to start is about a second less before the first request on a busy machine. The bank's
calls are short and never wait, so they run on the inbox's event loop between its awaits.
This module imports only the two it joins, so the actor's worker loads nothing else.
"""

from __future__ import annotations

from .inbox import Inbox
from .slots import SlotBank

__all__ = ["Hub"]


class Hub(SlotBank, Inbox):
    def __init__(self) -> None:
        SlotBank.__init__(self)
        Inbox.__init__(self)
