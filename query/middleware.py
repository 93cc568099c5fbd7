"""The query service's middleware: every failure as JSON, and CORS for the configured origins."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from shared.db import TRANSIENT, DatabaseUnavailable
from shared.log import get_logger

from .requests import ParamError
from .responses import ApiError, error_response

log = get_logger(__name__)
MAX_BODY = 16 * 1024


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes ``{"error": code, "message": text}`` with its status."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.headers)
    except ParamError as exc:
        return error_response(400, "bad_request", str(exc))
    except (DatabaseUnavailable, *TRANSIENT):
        return error_response(503, "unavailable", "the database is unavailable, retry")
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, "too_large", f"request body is larger than {MAX_BODY} bytes")
    except web.HTTPException as exc:
        if exc.status >= 400:
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "error")
            return error_response(exc.status, code, exc.reason)
        raise
    except Exception:  # a bug: still JSON, and logged with its traceback
        log.exception(
            "request_failed",
            route=request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched",
        )
        return error_response(500, "internal", "the server failed to answer this request")


def cors(allowed: frozenset[str]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """CORS for the configured origins (any origin when none are configured)."""

    def allow(origin: str | None) -> str | None:
        if origin is None:
            return None
        if not allowed:
            return "*"
        return origin if origin.rstrip("/") in allowed else None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = allow(request.headers.get("Origin"))
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            response: web.StreamResponse = web.Response(status=204 if origin else 403)
            if origin:
                response.headers.update(
                    {
                        "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                        "Access-Control-Allow-Headers": "Authorization, Content-Type",
                        "Access-Control-Max-Age": "600",
                    }
                )
        else:
            response = await handler(request)
        if origin:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = "X-Next-Before, Retry-After"
            if origin != "*":
                response.headers["Vary"] = "Origin"
        return response

    return middleware
