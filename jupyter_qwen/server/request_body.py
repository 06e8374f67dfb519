"""The pre-pass every JSON request body goes through before its model validates it: a literal
`extra_body` object is merged into the top level, and fields that other servers know but
that change nothing here are noted. Both are reported in response headers (streamed or not).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from jupyter_qwen.server.fields import (
    EXTRA_BODY,
    MERGED_HEADER,
    NO_EFFECT_HEADER,
    merge_extra_body,
    no_effect_fields,
)

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class ParsedBodyRequest(Request):
    """A request whose JSON body was already read (and perhaps rewritten)."""

    def __init__(self, request: Request, data: dict[str, Any]):
        super().__init__(request.scope, request.receive)
        self._data = data

    async def body(self) -> bytes:
        return json.dumps(self._data).encode()

    async def json(self) -> Any:
        return self._data


class RequestBodyRoute(APIRoute):
    """A route whose JSON object body passes the pre-pass first (routes without a body, and
    bodies that are not a JSON object, go on untouched: their own checks answer them)."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def with_pre_pass(request: Request) -> Response:
            data = await _json_object(request)
            if data is None:
                return await handler(request)
            headers = {}
            if EXTRA_BODY in data:
                data = merge_extra_body(data)
                headers[MERGED_HEADER] = EXTRA_BODY
            if no_effect := no_effect_fields(data):
                headers[NO_EFFECT_HEADER] = ", ".join(no_effect)
            response = await handler(ParsedBodyRequest(request, data))
            if response.status_code < 400:
                response.headers.update(headers)
            return response

        return with_pre_pass


async def _json_object(request: Request) -> dict[str, Any] | None:
    """The body as a dict, or None when it is empty, not JSON or not an object."""
    if "json" not in request.headers.get("content-type", ""):
        return None
    try:
        data = json.loads(await request.body())
    except (ValueError, RecursionError):  # the route's own parsing answers these with a 400
        return None
    return data if isinstance(data, dict) else None
