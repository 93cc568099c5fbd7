"""JWT verification (contract section 1).

Two key sources: an HS256 secret, or RS256/ES256 keys from a JWKS document fetched with
aiohttp, cached, and refetched on an unknown ``kid`` at most once per ``refresh_interval``.
The algorithm list is pinned by configuration and never read from the token header;
``exp`` is required; ``iss`` and ``aud`` are checked when configured.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import jwt

from .settings import JwtSettings

LEEWAY_SECONDS = 30
MAX_USER_ID_LENGTH = 50


class AuthError(Exception):
    """The token is missing, malformed, forged, expired or for someone else: answer 401."""


class AuthUnavailable(Exception):
    """Keys could not be fetched: answer 503, the token may well be good."""


class JwksCache:
    """Keys from a JWKS URL by ``kid``; an unknown ``kid`` refetches at a bounded rate."""

    def __init__(self, url: str, *, refresh_interval: float = 30.0, timeout: float = 5.0) -> None:
        self.url = url
        self.refresh_interval = refresh_interval
        self.timeout = timeout
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _fetch(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        try:
            async with self._session.get(self.url) as resp:
                if resp.status != 200:
                    raise AuthUnavailable(f"JWKS answered {resp.status}")
                document = await resp.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            raise AuthUnavailable(f"JWKS fetch failed: {exc.__class__.__name__}") from exc
        keys: dict[str, jwt.PyJWK] = {}
        for entry in document.get("keys", []) if isinstance(document, dict) else []:
            if not isinstance(entry, dict) or "kid" not in entry or entry.get("use", "sig") != "sig":
                continue
            try:
                keys[str(entry["kid"])] = jwt.PyJWK(entry)
            except jwt.PyJWTError:
                continue  # a key type we do not support is skipped, not fatal
        self._keys = keys
        self._fetched_at = time.monotonic()

    async def get(self, kid: str) -> jwt.PyJWK:
        key = self._keys.get(kid)
        if key is not None:
            return key
        async with self._lock:
            key = self._keys.get(kid)
            if key is not None:
                return key
            fresh = self._fetched_at is not None and time.monotonic() - self._fetched_at < self.refresh_interval
            if not fresh:
                await self._fetch()
            key = self._keys.get(kid)
        if key is None:
            raise AuthError("unknown signing key")
        return key


class TokenVerifier:
    """Turns a raw token into the user id it names, or raises AuthError / AuthUnavailable."""

    def __init__(self, settings: JwtSettings, jwks: JwksCache | None = None) -> None:
        self.settings = settings
        self.algorithms = list(settings.algorithms)
        if settings.jwks_url and jwks is None:
            jwks = JwksCache(settings.jwks_url)
        self.jwks = jwks

    async def close(self) -> None:
        if self.jwks is not None:
            await self.jwks.close()

    async def verify(self, token: str | None) -> str:
        if not token:
            raise AuthError("missing token")
        if token.lower().startswith("bearer "):
            token = token[7:].strip()
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed token") from None
        key: Any
        if self.jwks is not None:
            kid = header.get("kid")
            if not isinstance(kid, str):
                raise AuthError("token has no kid")
            key = (await self.jwks.get(kid)).key
        else:
            key = self.settings.secret
        options: dict[str, Any] = {"require": ["exp"], "verify_aud": self.settings.audience is not None}
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=self.algorithms,
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                leeway=LEEWAY_SECONDS,
                options=options,
            )
        except jwt.PyJWTError as exc:
            raise AuthError(_reason(exc)) from None
        user = claims.get(self.settings.user_claim)
        if not isinstance(user, str) or not user or len(user) > MAX_USER_ID_LENGTH:
            raise AuthError(f"claim {self.settings.user_claim} must name a user (1-{MAX_USER_ID_LENGTH} characters)")
        return user


def _reason(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "token expired"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "token not yet valid"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "wrong audience"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "wrong issuer"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"token lacks {exc.claim}"
    if isinstance(exc, (jwt.InvalidAlgorithmError, jwt.InvalidSignatureError)):
        return "bad signature"
    return "invalid token"


def mint(secret: str, user_id: str, *, ttl: int = 24 * 3600, claim: str = "cognito:username", **extra: Any) -> str:
    """A development HS256 token for ``user_id`` (used by chat-dev-token and tests)."""
    now = int(time.time())
    return jwt.encode({claim: user_id, "iat": now, "exp": now + ttl, **extra}, secret, algorithm="HS256")
