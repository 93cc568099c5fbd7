"""JSON in and out for the query service: bodies, responses and the error shape."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from shared import untrusted

from .requests import ParamError

_json = msgspec.json.Encoder()


class ApiError(Exception):
    """An answer other than 400: ``{"error": code, "message": message}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=_json.encode(data), status=status, content_type="application/json", headers=headers)


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return json_response({"error": code, "message": message}, status=status, headers=headers)


async def read_json(request: web.Request) -> Any:
    """The request body as JSON (null when empty), or ParamError (400) naming what is refused."""
    try:
        return untrusted.load(await request.read() or b"null")
    except untrusted.Refused as exc:
        raise ParamError(f"body refused: {exc}") from None
