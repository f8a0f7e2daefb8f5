"""The slide agent's deck: after a `slides_glm_agent` answer, export it and keep its files.

The agent answers with the slides as HTML inside tool calls and a `conversation_id`; the
deck as a file comes from `POST agents/conversation` (`include_pdf`: a PDF, plus an image
per page). A batch user wants the files, so every slides row that succeeds is exported
once and its files are downloaded into OUT/artifacts with provenance sidecars, like the
videos of async tasks (`--no-download` records their URLs instead). An `agents/conversation`
row is an export the user asked for: its files are downloaded the same way.

The export is not billed; if it or a download fails, the row keeps its (paid) answer and
fails as `export_failed`, naming the conversation to export with an `agents/conversation`
row, rather than being sent (and paid) again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from .agents import SLIDES
from .artifacts import DownloadError, Provenance, items_of, listing
from .errors import RetryableError, RowError

if TYPE_CHECKING:
    from .pool import Lane, Lanes
    from .spec import Request

__all__ = ["deck_files", "exports_deck"]


def exports_deck(req: Request) -> bool:
    """Whether a row's success brings files to fetch: slides answers and conversation rows."""
    return req.endpoint == "agents/conversation" or (
        req.endpoint == "agents" and req.model == SLIDES
    )


async def deck_files(
    lanes: Lanes, req: Request, lane: Lane, answer: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The `artifacts` records of a slides row's deck; RowError('export_failed') if none."""
    ctx = lanes.ctx
    conversation = answer.get("conversation_id") or req.body.get("conversation_id")
    if not isinstance(conversation, str) or not conversation:
        raise RowError("the slide agent answered without a conversation_id", code="export_failed")
    again = (
        f"; its answer is kept: export conversation {conversation} with an "
        "/v1/agents/conversation row"
    )

    async def export() -> Mapping[str, Any]:
        if req.endpoint == "agents/conversation":
            body = req.body
        else:
            body = {
                "agent_id": SLIDES,
                "conversation_id": conversation,
                "custom_variables": {"include_pdf": True},
            }
        _, _, got, _ = await lanes.call_with_retry(
            lane, ctx.path("agents/conversation"), orjson.dumps(body)
        )
        return got

    try:
        exported = answer if req.endpoint == "agents/conversation" else await export()
        items = items_of(exported)
        if not items:
            raise RowError("the conversation export named no files" + again, code="export_failed")
        downloader = ctx.downloader
        if downloader is None:
            return listing(items)
        request_id = str(answer.get("id") or "")
        prov = Provenance(ctx.settings.provider, req.model, req.endpoint, conversation,
                          request_id, req.custom_id)  # fmt: skip
        return await downloader.fetch(prov, exported, export)
    except (DownloadError, RetryableError) as exc:
        msg = f"the deck could not be exported or downloaded ({exc})" + again
        raise RowError(msg, code="export_failed") from exc
    except RowError as exc:
        if exc.code != "export_failed":
            exc = RowError(f"the export was refused: {exc.message}" + again, code="export_failed")
        raise exc from None
