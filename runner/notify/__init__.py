"""`--notify`: a message when a job ends, or stops, or starts failing more rows.

webhooks.py says where a message goes and in what shape (plain JSON, or Slack, Feishu,
DingTalk and WeCom robots, signed where the app signs); messages.py what it says (counts,
cost, times, the stop's reason and remedy; never a key, a prompt or an answer); sender.py
sends it in the background, with retries, never in the job's way.
"""

from .messages import FailureWatch, ended, failing, stop_kind, text
from .sender import NOTES, Notifier, read_notes
from .webhooks import Target, parse_target

__all__ = [
    "NOTES",
    "FailureWatch",
    "Notifier",
    "Target",
    "ended",
    "failing",
    "parse_target",
    "read_notes",
    "stop_kind",
    "text",
]
