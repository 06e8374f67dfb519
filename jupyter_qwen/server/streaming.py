"""Server-sent events: how a streamed answer goes out."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse


async def sse(events: AsyncIterator[dict | str]) -> AsyncIterator[str]:
    """Server-sent events; an event is a dict, or a string of JSON already serialised."""
    async for event in events:
        if not isinstance(event, str):
            event = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        yield f"data: {event}\n\n"
    yield "data: [DONE]\n\n"


async def named_sse(events: AsyncIterator[dict]) -> AsyncIterator[str]:
    """Server-sent events whose `event:` line names each event's type, with no `[DONE]` at
    the end (the Responses API's stream)."""
    async for event in events:
        data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        yield f"event: {event['type']}\ndata: {data}\n\n"


def streaming_response(events: AsyncIterator[dict | str], named: bool = False,
                       ) -> StreamingResponse:
    body = named_sse(events) if named else sse(events)
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
