"""JWT verification (docs/protocol.md section 1).

Two key sources: an HS256 secret, or RS256/ES256 keys from a JWKS document fetched with
aiohttp, cached, and refetched on an unknown ``kid`` at most once per ``refresh_interval``.
The algorithm list is pinned by configuration and never read from the token header;
``exp`` is required; ``iss`` and ``aud`` are checked when configured.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt

from .settings import JwtSettings
from .untrusted import storable

LEEWAY_SECONDS = 30
VERIFIED = 10_000  # tokens remembered once verified, per process (about 15 MB of 1.5 KB tokens)
VERIFIED_SECONDS = 300.0
# Longer tokens are checked every time: the memory stays under 10,000 x 4 KB however the text of
# valid tokens is dressed (identity providers' tokens are 1-2 KB)
VERIFIED_CHARS = 4096
MAX_USER_ID_LENGTH = 50


class AuthError(Exception):
    """The token is missing, malformed, forged, expired or for someone else: answer 401."""


class AuthUnavailable(Exception):
    """Keys could not be fetched: answer 503, the token may well be good."""


class JwksCache:
    """Keys from a JWKS URL by ``kid``.

    - One fetch at a time: concurrent callers share the fetch in flight (single flight).
    - An unknown ``kid`` refetches at most once per ``refresh_interval``; after a failed fetch
      nobody fetches again for ``retry_after`` (negative caching): callers get AuthUnavailable at
      once instead of waiting out another time-out each.
    - Keys are refetched after ``max_age`` even when known, so a key removed from the JWKS stops
      being trusted within ``max_age``; while the JWKS is unreachable, the keys last fetched stay
      in use (an outage of the identity provider does not sign everyone out).
    """

    def __init__(
        self,
        url: str,
        *,
        refresh_interval: float = 30.0,
        retry_after: float = 5.0,
        max_age: float = 300.0,
        timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.refresh_interval = refresh_interval
        self.retry_after = retry_after
        self.max_age = max_age
        self.timeout = timeout
        self.fetches = 0
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._failed_at: float | None = None
        self._failure = ""
        self._inflight: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._inflight is not None and not self._inflight.done():
            self._inflight.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _fetch(self) -> None:
        self.fetches += 1
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
            except (jwt.PyJWTError, ValueError, TypeError, KeyError):
                continue  # a key type we do not support is skipped, not fatal
        self._keys = keys
        self._fetched_at = time.monotonic()

    async def _refresh(self) -> None:
        """Fetch, sharing the fetch in flight; remember a failure for ``retry_after``."""
        now = time.monotonic()
        if self._failed_at is not None and now - self._failed_at < self.retry_after:
            raise AuthUnavailable(self._failure)
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(self._fetch())
        try:
            await asyncio.shield(self._inflight)
        except AuthUnavailable as exc:
            self._failed_at = time.monotonic()
            self._failure = str(exc)
            raise
        self._failed_at = None

    async def get(self, kid: str) -> jwt.PyJWK:
        now = time.monotonic()
        age = None if self._fetched_at is None else now - self._fetched_at
        if age is None or age > self.max_age or (kid not in self._keys and age > self.refresh_interval):
            try:
                await self._refresh()
            except AuthUnavailable:
                if kid not in self._keys or age is None:
                    raise  # nothing to fall back on: 503, the token may well be good
        key = self._keys.get(kid)
        if key is None:
            raise AuthError("unknown signing key")
        return key


@dataclass(frozen=True)
class Identity:
    user_id: str
    expires_at: float  # the token's exp, seconds since the epoch


class TokenVerifier:
    """Turns a raw token into the user id it names, or raises AuthError / AuthUnavailable.

    A token that verified is remembered (the ``VERIFIED`` most recently used, by its exact text)
    for ``VERIFIED_SECONDS``, or the JWKS cache's ``max_age`` if shorter, and never past its
    ``exp`` (plus the leeway the check allows): a client polling with one token is checked once,
    not on every request, and a key removed from the JWKS stops verifying as soon as it did
    before. Refusals are never remembered.
    """

    def __init__(self, settings: JwtSettings, jwks: JwksCache | None = None, *, remembered: int = VERIFIED) -> None:
        self.settings = settings
        self.remembered = remembered  # 0: check every token (the gateway sees each once per socket)
        self.algorithms = list(settings.algorithms)
        if settings.jwks_url and jwks is None:
            jwks = JwksCache(settings.jwks_url)
        self.jwks = jwks
        self.remember_seconds = min(VERIFIED_SECONDS, jwks.max_age) if jwks is not None else VERIFIED_SECONDS
        self._verified: OrderedDict[str, tuple[Identity, float]] = OrderedDict()  # token -> (identity, until)

    async def close(self) -> None:
        if self.jwks is not None:
            await self.jwks.close()

    async def verify(self, token: str | None) -> str:
        return (await self.identify(token)).user_id

    async def identify(self, token: str | None) -> Identity:
        if not token:
            raise AuthError("missing token")
        if token.lower().startswith("bearer "):
            token = token[7:].strip()
        known = self._verified.get(token)
        if known is not None:
            identity, until = known
            if time.monotonic() < until and time.time() <= identity.expires_at + LEEWAY_SECONDS:
                self._verified.move_to_end(token)
                return identity
            del self._verified[token]
        identity = await self._check(token)
        if self.remembered and len(token) <= VERIFIED_CHARS:
            self._verified[token] = (identity, time.monotonic() + self.remember_seconds)
            if len(self._verified) > self.remembered:
                self._verified.popitem(last=False)
        return identity

    async def _check(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
        except Exception:
            raise AuthError("malformed token") from None
        key: Any
        algorithms = self.algorithms
        if self.jwks is not None:
            kid = header.get("kid")
            if not isinstance(kid, str):
                raise AuthError("token has no kid")
            jwk = await self.jwks.get(kid)
            # the algorithm comes from the key, never from the token: an ES256 token naming an
            # RSA key is a bad signature, not a TypeError inside the library
            algorithms = [a for a in self.algorithms if a == jwk.algorithm_name]
            if not algorithms:
                raise AuthError("bad signature")
            key = jwk.key
        else:
            key = self.settings.secret
        options: jwt.types.Options = {"require": ["exp"], "verify_aud": self.settings.audience is not None}
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=algorithms,
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                leeway=LEEWAY_SECONDS,
                options=options,
            )
        except jwt.PyJWTError as exc:
            raise AuthError(_reason(exc)) from None
        except Exception:  # whatever else the library raises on hostile input is a refusal too
            raise AuthError("invalid token") from None
        if self.settings.token_use is not None and claims.get("token_use") != self.settings.token_use:
            raise AuthError(f"token_use must be {self.settings.token_use}")
        user = claims.get(self.settings.user_claim)
        if not isinstance(user, str) or not user or len(user) > MAX_USER_ID_LENGTH or not storable(user):
            raise AuthError(f"claim {self.settings.user_claim} must name a user (1-{MAX_USER_ID_LENGTH} characters)")
        exp = claims["exp"]
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise AuthError("exp must be a number")
        return Identity(user, float(exp))


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
    """A development HS256 token for ``user_id`` (used by make token, devtools and tests)."""
    now = int(time.time())
    return jwt.encode({claim: user_id, "iat": now, "exp": now + ttl, **extra}, secret, algorithm="HS256")
