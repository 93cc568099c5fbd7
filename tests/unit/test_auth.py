import asyncio
import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from shared.auth import AuthError, AuthUnavailable, JwksCache, TokenVerifier, mint
from shared.settings import JwtSettings

SECRET = "s" * 40
HS = JwtSettings(
    secret=SECRET, jwks_url=None, issuer=None, audience=None, algorithms=("HS256",), user_claim="cognito:username"
)


def claims(**kw):
    now = int(time.time())
    return {"cognito:username": "alice", "iat": now, "exp": now + 600, **kw}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_hs256_token_names_the_user():
    assert await TokenVerifier(HS).verify(mint(SECRET, "alice")) == "alice"
    assert await TokenVerifier(HS).verify("Bearer " + mint(SECRET, "bob")) == "bob"


def hmac_token(key: bytes, header, payload) -> str:
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    return signing_input + "." + b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())


def unsigned(payload) -> str:
    return b64(json.dumps({"alg": "none", "typ": "JWT"}).encode()) + "." + b64(json.dumps(payload).encode()) + "."


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: None, "missing token"),
        (lambda: "", "missing token"),
        (lambda: "not.a.jwt", "malformed"),
        (lambda: "abc", "malformed"),
        (lambda: unsigned(claims()), "bad signature"),
        (lambda: jwt.encode(claims(), "another-secret-another-secret-1234", algorithm="HS256"), "bad signature"),
        (lambda: jwt.encode(claims(), SECRET, algorithm="HS512"), "bad signature"),
        (lambda: jwt.encode(claims(exp=int(time.time()) - 120), SECRET, algorithm="HS256"), "expired"),
        (lambda: jwt.encode(claims(nbf=int(time.time()) + 300), SECRET, algorithm="HS256"), "not yet valid"),
        (lambda: jwt.encode({"cognito:username": "alice"}, SECRET, algorithm="HS256"), "lacks exp"),
        (lambda: jwt.encode(claims(**{"cognito:username": None}), SECRET, algorithm="HS256"), "must name a user"),
        (lambda: jwt.encode(claims(**{"cognito:username": "x" * 51}), SECRET, algorithm="HS256"), "must name a user"),
    ],
)
async def test_bad_hs256_tokens_are_refused(make, reason):
    with pytest.raises(AuthError) as info:
        await TokenVerifier(HS).verify(make())
    assert reason in str(info.value)


async def test_leeway_is_bounded():
    verifier = TokenVerifier(HS)
    assert await verifier.verify(jwt.encode(claims(exp=int(time.time()) - 10), SECRET, algorithm="HS256")) == "alice"
    with pytest.raises(AuthError):
        await verifier.verify(jwt.encode(claims(exp=int(time.time()) - 61), SECRET, algorithm="HS256"))


async def test_issuer_and_audience_are_checked_when_configured():
    settings = JwtSettings(
        secret=SECRET, jwks_url=None, issuer="https://idp", audience="app", algorithms=("HS256",), user_claim="sub"
    )
    verifier = TokenVerifier(settings)
    good = {"sub": "alice", "iss": "https://idp", "aud": "app", "exp": int(time.time()) + 60}
    assert await verifier.verify(jwt.encode(good, SECRET, algorithm="HS256")) == "alice"
    for bad, reason in (
        ({"iss": "https://evil"}, "issuer"),
        ({"aud": "other"}, "audience"),
        ({"iss": None}, "lacks iss"),
        ({"aud": None}, "lacks aud"),
    ):
        payload = {**good, **bad}
        payload = {k: v for k, v in payload.items() if v is not None}
        with pytest.raises(AuthError) as info:
            await verifier.verify(jwt.encode(payload, SECRET, algorithm="HS256"))
        assert reason in str(info.value)


class Jwks:
    """A real JWKS endpoint on loopback, counting fetches."""

    def __init__(self):
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.fetches = 0
        self.status = 200
        self.keys = [self.jwk(self.rsa, "rsa-1", "RS256"), self.jwk(self.ec, "ec-1", "ES256")]

    @staticmethod
    def jwk(key, kid, alg):
        data = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key()))
        return {**data, "kid": kid, "alg": alg, "use": "sig"}

    async def handler(self, request):
        self.fetches += 1
        if self.status != 200:
            return web.Response(status=self.status)
        return web.json_response({"keys": self.keys})


@pytest.fixture
async def jwks(aiohttp_server_factory):
    endpoint = Jwks()
    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", endpoint.handler)
    url = await aiohttp_server_factory(app)
    endpoint.url = url + "/.well-known/jwks.json"
    return endpoint


@pytest.fixture
async def aiohttp_server_factory():
    runners = []

    async def start(app):
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


def jwks_verifier(endpoint, algorithms=("RS256", "ES256"), refresh=30.0):
    settings = JwtSettings(
        secret=None,
        jwks_url=endpoint.url,
        issuer=None,
        audience=None,
        algorithms=algorithms,
        user_claim="cognito:username",
    )
    return TokenVerifier(settings, JwksCache(endpoint.url, refresh_interval=refresh, timeout=2))


async def test_rs256_and_es256_from_jwks(jwks):
    verifier = jwks_verifier(jwks)
    try:
        rs = jwt.encode(claims(), jwks.rsa, algorithm="RS256", headers={"kid": "rsa-1"})
        es = jwt.encode(claims(**{"cognito:username": "bob"}), jwks.ec, algorithm="ES256", headers={"kid": "ec-1"})
        assert await verifier.verify(rs) == "alice"
        assert await verifier.verify(es) == "bob"
        assert jwks.fetches == 1  # cached
    finally:
        await verifier.close()


async def test_jwks_bad_tokens(jwks):
    verifier = jwks_verifier(jwks)
    public_pem = jwks.rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases = {
        # HS/RS confusion: HMAC keyed with the public key, naming the real kid
        "confusion": hmac_token(public_pem, {"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}, claims()),
        "none": b64(json.dumps({"alg": "none", "kid": "rsa-1"}).encode())
        + "."
        + b64(json.dumps(claims()).encode())
        + ".",
        "forged": jwt.encode(claims(), other, algorithm="RS256", headers={"kid": "rsa-1"}),
        "no kid": jwt.encode(claims(), jwks.rsa, algorithm="RS256"),
        "expired": jwt.encode(
            claims(exp=int(time.time()) - 100), jwks.rsa, algorithm="RS256", headers={"kid": "rsa-1"}
        ),
        "alg not allowed": jwt.encode(claims(), jwks.rsa, algorithm="RS512", headers={"kid": "rsa-1"}),
    }
    try:
        for token in cases.values():
            with pytest.raises(AuthError):
                await verifier.verify(token)
    finally:
        await verifier.close()


async def test_unknown_kid_refetches_at_a_bounded_rate(jwks):
    verifier = jwks_verifier(jwks, refresh=30.0)
    try:
        for _ in range(5):
            with pytest.raises(AuthError) as info:
                await verifier.verify(jwt.encode(claims(), jwks.rsa, algorithm="RS256", headers={"kid": "nope"}))
            assert "unknown signing key" in str(info.value)
        assert jwks.fetches == 1
    finally:
        await verifier.close()


async def test_rotated_key_is_found_by_refetch(jwks):
    verifier = jwks_verifier(jwks, refresh=0.0)
    try:
        assert await verifier.verify(jwt.encode(claims(), jwks.rsa, algorithm="RS256", headers={"kid": "rsa-1"}))
        rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwks.keys.append(Jwks.jwk(rotated, "rsa-2", "RS256"))
        assert (
            await verifier.verify(jwt.encode(claims(), rotated, algorithm="RS256", headers={"kid": "rsa-2"})) == "alice"
        )
        assert jwks.fetches == 2
    finally:
        await verifier.close()


async def test_jwks_outage_is_unavailable_not_unauthorized(jwks):
    jwks.status = 500
    verifier = jwks_verifier(jwks)
    try:
        with pytest.raises(AuthUnavailable):
            await verifier.verify(jwt.encode(claims(), jwks.rsa, algorithm="RS256", headers={"kid": "rsa-1"}))
    finally:
        await verifier.close()


async def test_a_token_whose_alg_does_not_fit_its_key_is_401_not_a_crash(jwks):
    """ES256 and RS256 both allowed; an ES256 token naming the RSA key is a bad signature."""
    verifier = jwks_verifier(jwks)
    try:
        mismatched = jwt.encode(claims(), jwks.ec, algorithm="ES256", headers={"kid": "rsa-1"})
        with pytest.raises(AuthError):
            await verifier.verify(mismatched)
        mismatched = jwt.encode(claims(), jwks.rsa, algorithm="RS256", headers={"kid": "ec-1"})
        with pytest.raises(AuthError):
            await verifier.verify(mismatched)
    finally:
        await verifier.close()


async def test_a_hanging_jwks_is_fetched_once_for_20_concurrent_connects_then_not_again(jwks):
    hang = asyncio.Event()

    async def hanging(request):
        jwks.fetches += 1
        await hang.wait()
        return web.json_response({"keys": jwks.keys})

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", hanging)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/.well-known/jwks.json"
    settings = JwtSettings(
        secret=None, jwks_url=url, issuer=None, audience=None, algorithms=("RS256",), user_claim="cognito:username"
    )
    cache = JwksCache(url, timeout=1.0, retry_after=5.0)
    verifier = TokenVerifier(settings, cache)
    token = jwt.encode(claims(), jwks.rsa, algorithm="RS256", headers={"kid": "rsa-1"})
    try:
        started = time.monotonic()
        results = await asyncio.gather(*(verifier.verify(token) for _ in range(20)), return_exceptions=True)
        assert all(isinstance(r, AuthUnavailable) for r in results)
        assert time.monotonic() - started < 3  # one time-out for all, not twenty in a row
        assert cache.fetches == 1
        started = time.monotonic()
        with pytest.raises(AuthUnavailable):
            await verifier.verify(token)  # within retry_after: no new fetch, no waiting
        assert time.monotonic() - started < 0.1 and cache.fetches == 1
    finally:
        hang.set()
        await verifier.close()
        await runner.cleanup()


async def test_a_key_removed_from_the_jwks_stops_being_trusted(jwks):
    settings = JwtSettings(
        secret=None,
        jwks_url=jwks.url,
        issuer=None,
        audience=None,
        algorithms=("RS256", "ES256"),
        user_claim="cognito:username",
    )
    verifier = TokenVerifier(settings, JwksCache(jwks.url, max_age=0.2, timeout=2))
    token = jwt.encode(claims(), jwks.rsa, algorithm="RS256", headers={"kid": "rsa-1"})
    try:
        assert await verifier.verify(token) == "alice"
        jwks.keys = [k for k in jwks.keys if k["kid"] != "rsa-1"]
        await asyncio.sleep(0.3)
        with pytest.raises(AuthError):
            await verifier.verify(token)
    finally:
        await verifier.close()


async def test_token_use_is_checked_when_configured():
    settings = JwtSettings(
        secret=SECRET,
        jwks_url=None,
        issuer=None,
        audience=None,
        algorithms=("HS256",),
        user_claim="cognito:username",
        token_use="id",
    )
    verifier = TokenVerifier(settings)
    assert await verifier.verify(jwt.encode(claims(token_use="id"), SECRET, algorithm="HS256")) == "alice"
    for wrong in ({"token_use": "access"}, {}):
        with pytest.raises(AuthError):
            await verifier.verify(jwt.encode(claims(**wrong), SECRET, algorithm="HS256"))


async def test_a_verified_token_is_checked_once_never_past_its_exp_and_refusals_are_not_remembered(monkeypatch):
    """A client polling with one token costs one signature check, not one a request; but the
    memory never outlives the token (nor makes a refused token pass)."""
    import shared.auth as auth

    decodes = []
    original = jwt.decode

    def counting(*args, **kwargs):
        decodes.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(auth.jwt, "decode", counting)
    verifier = TokenVerifier(HS)
    exp = int(time.time()) + 5
    token = jwt.encode(claims(exp=exp), SECRET, algorithm="HS256")
    for _ in range(3):
        assert (await verifier.identify(token)).user_id == "alice"
    assert len(decodes) == 1
    with monkeypatch.context() as later:
        later.setattr(auth.time, "time", lambda: exp + auth.LEEWAY_SECONDS + 1)
        try:
            await verifier.identify(token)
        except AuthError:
            pass
    assert len(decodes) == 2  # past exp (and the leeway) it is checked again, not served from memory
    forged = jwt.encode(claims(), "another-secret-another-secret-1234", algorithm="HS256")
    for _ in range(2):
        with pytest.raises(AuthError):
            await verifier.identify(forged)
    assert len(decodes) == 4


async def test_the_verified_tokens_remembered_are_bounded():
    verifier = TokenVerifier(HS, remembered=2)
    tokens = [mint(SECRET, user) for user in ("a", "b", "c")]
    for token in tokens:
        await verifier.identify(token)
    assert list(verifier._verified) == tokens[1:]  # the least recently used went
    gateways = TokenVerifier(HS, remembered=0)
    assert (await gateways.identify(tokens[0])).user_id == "a"
    assert not gateways._verified  # the gateway's remembers nothing
