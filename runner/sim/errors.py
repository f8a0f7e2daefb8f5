"""Business error codes as the platform sends them, and their two body shapes.

The real wire nests the error and sends the code as a string
(``{"error": {"code": "1302", "message": "..."}}``) while the OpenAPI spec's ``Error``
schema is flat with an integer code. Clients must parse both, so the simulator can emit
either (``error_shape``); the code and HTTP status pairs follow API-NOTES section 4.

``error_shape="siliconflow"`` plays SiliconFlow instead (API-NOTES 9): a flat body
``{"code": 20012, "message": ..., "data": null}`` with a numeric code, and HTTP 403 for an
empty balance. Only 20012 (model does not exist) is a documented SiliconFlow code; for
everything else the simulated body repeats the HTTP status as its code, since clients are
told to classify SiliconFlow answers by status.
"""

from __future__ import annotations

from functools import lru_cache

import orjson

__all__ = ["CODES", "ApiError", "error_body", "render_error"]

# code -> (HTTP status, message). Messages are the English platform wording where known.
CODES: dict[int, tuple[int, str]] = {
    500: (500, "Internal server error, please try again later"),
    1000: (401, "Authentication failed"),
    1001: (401, "Authentication parameter not received in Header, unable to authenticate"),
    1002: (401, "Authorization Token is invalid"),
    1003: (401, "Authorization Token has expired"),
    1004: (401, "Authentication failed: token verification failed"),
    1110: (429, "Your account is currently inactive"),
    1112: (429, "Your account has been locked"),
    1113: (429, "Insufficient balance or no resource package. Please recharge."),
    1200: (400, "API call error"),
    1210: (400, "Incorrect API call parameters"),
    1211: (400, "Model does not exist, please check the model code"),
    1212: (400, "The current model does not support this call method"),
    1213: (400, "A required field was not received"),
    1214: (400, "Invalid field value"),
    1215: (400, "These two fields cannot be set at the same time"),
    1222: (404, "The API does not exist"),
    1261: (400, "Prompt exceeds the maximum length"),
    1300: (400, "The API call was blocked by policy"),
    1301: (
        400,
        "System detected potentially unsafe or sensitive content in input or generation",
    ),
    1302: (
        429,
        "High concurrency usage of this API, please reduce concurrency or contact "
        "customer service to increase limits",
    ),
    1303: (
        429,
        "High frequency usage of this API, please reduce frequency or contact "
        "customer service to increase limits",
    ),
    1304: (429, "The daily call limit for this API has been reached"),
    1305: (429, "The API has triggered a rate limit, please try again later"),
    1312: (429, "The model is experiencing high traffic, please try again later"),
}


class ApiError(Exception):
    """A platform error answer: HTTP status, business code and message."""

    def __init__(self, code: int, message: str | None = None, *, status: int | None = None):
        known = CODES.get(code)
        self.code = code
        self.status = status if status is not None else (known[0] if known else 400)
        self.message = message if message is not None else (known[1] if known else "Error")
        super().__init__(f"{self.status} {code}: {self.message}")


@lru_cache(maxsize=512)
def error_body(code: int, message: str, shape: str) -> bytes:
    """Serialised error body; cached because 1302 storms repeat the same few bodies."""
    if shape == "flat":
        return orjson.dumps({"code": code, "message": message})
    return orjson.dumps({"error": {"code": str(code), "message": message}})


# Zhipu codes meaning "the account has no money or is blocked": SiliconFlow answers 403.
_SF_FORBIDDEN = frozenset({1110, 1112, 1113})
_SF_MODEL_MISSING = (20012, "Model does not exist. Please check it carefully.")


def render_error(err: ApiError, shape: str) -> tuple[int, bytes]:
    """HTTP status and body of an error answer in the configured shape."""
    if shape != "siliconflow":
        return err.status, error_body(err.code, err.message, shape)
    status = 403 if err.code in _SF_FORBIDDEN else err.status
    code, message = (
        _SF_MODEL_MISSING if err.code == 1211 else (status, f"{err.message} (simulated {status})")
    )
    return status, orjson.dumps({"code": code, "message": message, "data": None})
