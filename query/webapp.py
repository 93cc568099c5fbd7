"""The web client (``/app/``) and, in development only, its sign-in by user id."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from shared.auth import MAX_USER_ID_LENGTH, mint
from shared.settings import QuerySettings

from .requests import ParamError
from .responses import ApiError, json_response, read_json

STATIC = Path(__file__).parent / "static"
DEV_TOKEN_TTL = 12 * 3600


def add_routes(app: web.Application, settings: QuerySettings) -> None:
    async def index(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/app/")

    async def config(request: web.Request) -> web.Response:
        """``GET /app/config.json`` -> ``{"devLogin": bool, "userClaim": "cognito:username",
        "gateways": ["wss://..."]}``: the only gateways the page will send a token to (empty:
        the page's own host, port 8080)."""
        claim = settings.jwt.user_claim if settings.jwt else "cognito:username"
        return json_response(
            {"devLogin": settings.dev_login, "userClaim": claim, "gateways": list(settings.web_gateways)}
        )

    async def dev_token(request: web.Request) -> web.Response:
        """``POST /dev/token`` with ``{"userId": "alice"}`` -> ``{"token": "<jwt>"}``.

        Only with CHAT_DEV_LOGIN=true (which needs the HS256 secret); otherwise 404.
        """
        if not settings.dev_login or settings.jwt is None or settings.jwt.secret is None:
            raise ApiError(404, "not_found", "development sign-in is off")
        body = await read_json(request)
        user = body.get("userId") if isinstance(body, dict) else None
        if not isinstance(user, str) or not 1 <= len(user.strip()) <= MAX_USER_ID_LENGTH:
            raise ParamError(f"userId must be 1 to {MAX_USER_ID_LENGTH} characters")
        token = mint(settings.jwt.secret, user.strip(), ttl=DEV_TOKEN_TTL, claim=settings.jwt.user_claim)
        return json_response({"token": token})

    app.router.add_get("/app", redirect)
    app.router.add_get("/app/", index)
    app.router.add_get("/app/config.json", config)
    app.router.add_post("/dev/token", dev_token)
    app.router.add_static("/app/static/", STATIC, append_version=False)
