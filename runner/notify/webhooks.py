"""Where a message goes and in what shape: a plain URL, or a chat app's webhook.

`--notify URL` posts the event as plain JSON. A prefix names a chat app's incoming webhook,
which wants its own body: `slack:`, `feishu:` (Lark), `dingtalk:` and `wecom:` (WeCom /
WeChat Work group robots). Feishu and DingTalk robots may require signed calls; their
secret is read from the environment (`RUNNER_FEISHU_SECRET`, `RUNNER_DINGTALK_SECRET`),
never from a flag, so it stays out of shell history and of the checkpoint.

A webhook URL is itself a secret (the token is its path or query), so a target is only
ever shown by its kind and host (`Target.name`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, urlsplit

import orjson

from ..errors import UsageError

__all__ = ["KINDS", "SECRET_ENV", "Target", "parse_target"]

KINDS = ("json", "slack", "feishu", "dingtalk", "wecom")
SECRET_ENV = {"feishu": "RUNNER_FEISHU_SECRET", "dingtalk": "RUNNER_DINGTALK_SECRET"}


@dataclass(frozen=True, slots=True)
class Target:
    kind: str
    url: str

    @property
    def name(self) -> str:
        """How the target is shown: its kind and host, never the token in its path."""
        host = urlsplit(self.url).hostname or "?"
        return host if self.kind == "json" else f"{self.kind}:{host}"

    def request(
        self, event: Mapping[str, Any], text: str, env: Mapping[str, str] | None = None
    ) -> tuple[str, bytes]:
        """The URL to POST to and the body, in this target's format (signed if its secret
        is set)."""
        env = os.environ if env is None else env
        secret = env.get(SECRET_ENV.get(self.kind, ""), "")
        url, body = self.url, _body(self.kind, event, text)
        if self.kind == "feishu" and secret:
            body = {**body, **_feishu_sign(secret, int(time.time()))}
        elif self.kind == "dingtalk" and secret:
            stamp, sign = _dingtalk_sign(secret, int(time.time() * 1000))
            url += ("&" if "?" in url else "?") + f"timestamp={stamp}&sign={sign}"
        return url, orjson.dumps(body)

    def accepted(self, status: int, answer: bytes) -> str | None:
        """None if the app took the message, else why not (its error, in its words).

        Feishu, DingTalk and WeCom answer HTTP 200 with an error code in the body for a bad
        signature, a keyword filter or a rate limit, so the status alone says nothing.
        """
        if not 200 <= status < 300:
            return f"HTTP {status}: {answer[:200].decode('utf-8', 'replace')}"
        if self.kind in ("feishu", "dingtalk", "wecom"):
            try:
                data = orjson.loads(answer)
            except orjson.JSONDecodeError:
                return None
            if isinstance(data, dict):
                code = data.get("code", data.get("errcode", data.get("StatusCode", 0)))
                if code not in (0, None):
                    why = data.get("msg") or data.get("errmsg") or data.get("StatusMessage")
                    return f"{self.kind} answered code {code}: {why}"
        return None


def parse_target(value: str) -> Target:
    """`URL` or `KIND:URL` (slack, feishu, dingtalk, wecom); a usage error names the value
    by its kind only, since the rest of it is a token."""
    kind, sep, rest = value.partition(":")
    if sep and kind.lower() in KINDS[1:]:
        kind, url = kind.lower(), rest
    else:
        kind, url = "json", value
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        shown = f"{kind}:..." if kind != "json" else "the value"
        raise UsageError(
            f"--notify: {shown} is not an http(s) URL; give URL (plain JSON) or "
            f"{', '.join(k + ':URL' for k in KINDS[1:])}"
        )
    return Target(kind, url)


def _body(kind: str, event: Mapping[str, Any], text: str) -> dict[str, Any]:
    if kind == "slack":
        return {"text": text}
    if kind == "feishu":
        return {"msg_type": "text", "content": {"text": text}}
    if kind in ("dingtalk", "wecom"):
        return {"msgtype": "text", "text": {"content": text}}
    return dict(event)


def _feishu_sign(secret: str, stamp: int) -> dict[str, str]:
    """Feishu/Lark: HMAC-SHA256 keyed by "timestamp\\nsecret" over nothing, base64; the
    timestamp in seconds goes in the body beside it."""
    key = f"{stamp}\n{secret}".encode()
    sign = base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
    return {"timestamp": str(stamp), "sign": sign}


def _dingtalk_sign(secret: str, stamp_ms: int) -> tuple[int, str]:
    """DingTalk: HMAC-SHA256 keyed by the secret over "timestamp\\nsecret", base64 then
    URL-encoded; the timestamp in milliseconds goes in the query beside it."""
    text = f"{stamp_ms}\n{secret}".encode()
    digest = hmac.new(secret.encode(), text, hashlib.sha256).digest()
    return stamp_ms, quote_plus(base64.b64encode(digest).decode())
