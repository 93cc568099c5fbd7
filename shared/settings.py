"""Settings, read once from the ``CHAT_*`` environment at start.

Every service calls :func:`load` with the settings it needs. A missing or bad value raises
:class:`SettingsError` naming the variable; ``main()`` turns that into one line on stderr and
exit status 2, so a misconfigured pod fails fast instead of limping.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar
from urllib.parse import urlsplit

# Every variable the services read. docs, compose, k8s manifests and a test compare against this.
VARIABLES: dict[str, str] = {
    "CHAT_DATABASE_URL": "Postgres DSN, postgresql://user:pass@host:port/db; several hosts as libpq takes them (h1:5432,h2:5432): writes go to the primary",
    "CHAT_DATABASE_READ_URL": "query: a Postgres DSN to read from (standbys), reads staying read-your-writes; needs Redis (default: read from CHAT_DATABASE_URL)",
    "CHAT_AMQP_URL": "RabbitMQ URL, amqp://user:pass@host:port/vhost; several, comma-separated, one per cluster node",
    "CHAT_REDIS_URL": "Redis URL, redis://host:port/db (with Sentinel: only its password and db are used)",
    "CHAT_REDIS_SENTINELS": "comma-separated host:port of Redis Sentinels, with CHAT_REDIS_SENTINEL_MASTER: follow the master they elect",
    "CHAT_REDIS_SENTINEL_MASTER": "the master's name as the Sentinels know it (with CHAT_REDIS_SENTINELS)",
    "CHAT_HOST": "address to listen on (default 0.0.0.0)",
    "CHAT_PORT": "port to listen on (defaults: gateway 8080, query 8081, writer 8082, notifier 8083)",
    "CHAT_OPS_PORT": "gateway and query: serve /healthz, /readyz and /metrics on this port only, off the public one (default 0: on CHAT_PORT)",
    "CHAT_INSTANCE_ID": "this instance's identity, [A-Za-z0-9._-]{1,64} (default: hostname + random suffix)",
    "CHAT_PARTITIONS": "number of ordered partitions for commands and events, 1..256 (default 4; the same on every service; the most writers or notifiers that can be busy at once)",
    "CHAT_JWT_SECRET": "HS256 secret, at least 32 characters (development and self-hosting)",
    "CHAT_JWT_JWKS_URL": "JWKS document URL for RS256/ES256 keys (e.g. Cognito's <issuer>/.well-known/jwks.json)",
    "CHAT_JWT_ISSUER": "expected iss claim (checked when set)",
    "CHAT_JWT_AUDIENCE": "expected aud claim (checked when set)",
    "CHAT_JWT_ALGORITHMS": "comma-separated allow-list (default HS256 with a secret, RS256 with a JWKS)",
    "CHAT_JWT_USER_CLAIM": "claim that names the user (default cognito:username)",
    "CHAT_DEV_LOGIN": "true lets the web client at /app/ mint a token for any user id (development only; needs CHAT_JWT_SECRET)",
    "CHAT_JWT_TOKEN_USE": "expected token_use claim, e.g. id for Cognito ID tokens (checked when set)",
    "CHAT_ALLOWED_ORIGINS": "comma-separated origins allowed for WebSocket and CORS (default: any)",
    "CHAT_WEB_GATEWAYS": "comma-separated ws:// or wss:// URLs the web client at /app/ may connect to, first the default (default: the page's host, port 8080)",
    "CHAT_MAX_CONNECTIONS_PER_USER": "open WebSockets one user may hold across every gateway, 1..1000 (default 10)",
    "CHAT_RATE_SEND": "send-message per user, all connections together: per-second rate:burst (default 20:100)",
    "CHAT_RATE_READ": "read-messages per user: per-second rate:burst (default 5:30)",
    "CHAT_RATE_TYPING": "typing per user: per-second rate:burst; extra typing frames are dropped (default 5:20)",
    "CHAT_RATE_REST_READ": "query: GET requests per user: per-second rate:burst (default 20:200)",
    "CHAT_RATE_REST_CREATE": "query: POST /conversation per user: per-second rate:burst (default 0.5:30)",
    "CHAT_RATE_REST_SEARCH": "query: GET /search per user: per-second rate:burst (default 2:20)",
    "CHAT_TOKEN_GRACE_SECONDS": "a socket closes with 4001 this long after its token's exp, 0..86400 (default 3600)",
    "CHAT_WS_HEARTBEAT_SECONDS": "gateway: a socket silent this long is pinged, and dropped if silent half as long again, 2..600 (default 30)",
    "CHAT_OTLP_ENDPOINT": "OTLP/HTTP base URL (e.g. http://otel-collector:4318) to export one trace per message to; unset: tracing off",
    "CHAT_FLUSH_LINGER_MS": "gateway: the longest it holds commands to batch them under load, 0..1000 ms: nothing at 200 commands/s or less, rising to this at 1,000/s; 0 never holds (default 30)",
    "CHAT_DB_STATEMENT_CACHE": "prepared statements cached per database connection, 0..10000 (default 100; 0 behind a pgbouncer older than 1.21 in transaction mode)",
    "CHAT_LOG_LEVEL": "debug, info, warning or error (default info)",
}

DEFAULT_PARTITIONS = 4
DEFAULT_FLUSH_LINGER_MS = 30  # gateway/publisher.py; docs/benchmarks.md, "The gateway's linger under load"
DEFAULT_PORTS = {"gateway": 8080, "query": 8081, "writer": 8082, "notifier": 8083}
SYMMETRIC_ALGS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"})
LOG_LEVELS = ("debug", "info", "warning", "error")
_INSTANCE_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class SettingsError(Exception):
    """A setting is missing or malformed; the message starts with the variable's name."""


@dataclass(frozen=True)
class JwtSettings:
    secret: str | None
    jwks_url: str | None
    issuer: str | None
    audience: str | None
    algorithms: tuple[str, ...]
    user_claim: str
    token_use: str | None = None


@dataclass(frozen=True)
class Rate:
    """A token bucket's shape: ``per_second`` sustained, ``burst`` at once."""

    per_second: float
    burst: int


@dataclass(frozen=True)
class Limits:
    max_connections_per_user: int = 10
    send: Rate = Rate(20, 100)
    read: Rate = Rate(5, 30)
    typing: Rate = Rate(5, 20)
    token_grace_seconds: int = 3600


@dataclass(frozen=True)
class RedisSettings:
    """Where Redis is: one URL, or the Sentinels that know the master (then ``url``, when set,
    gives only the password and the database number)."""

    url: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str | None = None


@dataclass(frozen=True)
class RestLimits:
    """The query service's per-user buckets: GETs draw from ``read``, searches from ``search``,
    ``POST /conversation`` from ``create``."""

    read: Rate = Rate(20, 200)
    create: Rate = Rate(0.5, 30)
    search: Rate = Rate(2, 20)


@dataclass(frozen=True, kw_only=True)
class Common:
    """What every service has."""

    service: str
    host: str
    port: int
    instance_id: str
    partitions: int
    log_level: str
    allowed_origins: frozenset[str] = field(default_factory=frozenset)
    ops_port: int = 0
    otlp_endpoint: str | None = None
    db_statement_cache: int = 100


@dataclass(frozen=True, kw_only=True)
class Settings(Common):
    """Everything :func:`load` read; a setting the caller did not ask for is absent (None).
    Services take the typed view their loader returns (GatewaySettings, ...), where what they
    need is simply there."""

    database_url: str | None = None
    database_read_url: str | None = None
    amqp_urls: tuple[str, ...] = ()
    redis: RedisSettings | None = None
    jwt: JwtSettings | None = None
    dev_login: bool = False
    limits: Limits = Limits()
    rest_limits: RestLimits = RestLimits()
    web_gateways: tuple[str, ...] = ()
    flush_linger_ms: int = DEFAULT_FLUSH_LINGER_MS


@dataclass(frozen=True, kw_only=True)
class GatewaySettings(Common):
    amqp_urls: tuple[str, ...]
    redis: RedisSettings
    jwt: JwtSettings
    limits: Limits
    flush_linger_ms: int = DEFAULT_FLUSH_LINGER_MS
    heartbeat_seconds: int = 30  # a socket silent this long is pinged; one that answers nothing is dropped


@dataclass(frozen=True, kw_only=True)
class WriterSettings(Common):
    database_url: str
    amqp_urls: tuple[str, ...]
    redis: RedisSettings


@dataclass(frozen=True, kw_only=True)
class NotifierSettings(Common):
    amqp_urls: tuple[str, ...]
    redis: RedisSettings


@dataclass(frozen=True, kw_only=True)
class QuerySettings(Common):
    database_url: str
    amqp_urls: tuple[str, ...]
    jwt: JwtSettings
    dev_login: bool
    web_gateways: tuple[str, ...]
    rest_limits: RestLimits = RestLimits()
    database_read_url: str | None = None
    redis: RedisSettings | None = None  # set when reads go to standbys (freshness marks live there)


@dataclass(frozen=True, kw_only=True)
class MigrateSettings(Common):
    database_url: str


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def _url(env: Mapping[str, str], name: str, schemes: tuple[str, ...], required: bool) -> str | None:
    value = _get(env, name)
    if value is None:
        if required:
            raise SettingsError(f"{name} is required ({VARIABLES[name]})")
        return None
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        raise SettingsError(
            f"{name} must be a {' or '.join(s + '://' for s in schemes)} URL, got scheme {parts.scheme!r}"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise SettingsError(f"{name} has a bad port") from None
    if parts.scheme != "unix" and not parts.hostname:
        raise SettingsError(f"{name} has no host")
    return value


def _hostport(text: str, name: str, default_port: int | None) -> tuple[str, int]:
    """``host[:port]`` or ``[v6]:port``; raises SettingsError naming ``name``."""
    host, port = text, default_port
    if text.startswith("["):
        close = text.find("]")
        host, rest = text[1:close], text[close + 1 :]
        if close < 0 or (rest and not rest.startswith(":")):
            raise SettingsError(f"{name} has a bad host {text!r}")
        port = int(rest[1:]) if rest[1:].isascii() and rest[1:].isdigit() else (None if rest else default_port)
    elif ":" in text:
        host, _, digits = text.rpartition(":")
        port = int(digits) if digits.isascii() and digits.isdigit() else None
    if not host or port is None or not 1 <= port <= 65535:
        raise SettingsError(f"{name} has a bad host or port in {text!r}")
    return host, port


def _postgres_dsn(env: Mapping[str, str], name: str, required: bool) -> str | None:
    """A Postgres DSN, one host or several as libpq takes them (``h1:5432,h2:5432``)."""
    value = _get(env, name)
    if value is None:
        if required:
            raise SettingsError(f"{name} is required ({VARIABLES[name]})")
        return None
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        raise SettingsError(f"{name} must be a postgresql:// URL, got scheme {scheme!r}")
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    hosts = netloc.rpartition("@")[2]
    if not hosts:
        raise SettingsError(f"{name} has no host")
    for host in hosts.split(","):
        _hostport(host, name, 5432)
    return value


def _amqp_urls(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """One AMQP URL, or several separated by commas (one per cluster node)."""
    raw = _get(env, name)
    if raw is None:
        raise SettingsError(f"{name} is required ({VARIABLES[name]})")
    urls = tuple(_csv(raw))
    for url in urls:
        _url({name: url}, name, ("amqp", "amqps"), required=True)
    return urls


def _redis(env: Mapping[str, str], required: bool) -> RedisSettings | None:
    url = _url(env, "CHAT_REDIS_URL", ("redis", "rediss", "unix"), required=False)
    raw_sentinels, master = _get(env, "CHAT_REDIS_SENTINELS"), _get(env, "CHAT_REDIS_SENTINEL_MASTER")
    if raw_sentinels is None and master is None:
        if url is None and required:
            raise SettingsError(
                "CHAT_REDIS_URL is required (or CHAT_REDIS_SENTINELS with CHAT_REDIS_SENTINEL_MASTER): "
                + VARIABLES["CHAT_REDIS_URL"]
            )
        return None if url is None else RedisSettings(url=url)
    if raw_sentinels is None or master is None:
        missing = "CHAT_REDIS_SENTINELS" if raw_sentinels is None else "CHAT_REDIS_SENTINEL_MASTER"
        raise SettingsError(f"{missing} is required with the other Sentinel setting")
    sentinels = tuple(_hostport(item, "CHAT_REDIS_SENTINELS", 26379) for item in _csv(raw_sentinels))
    if not sentinels:
        raise SettingsError("CHAT_REDIS_SENTINELS has no host:port")
    return RedisSettings(url=url, sentinels=sentinels, master=master)


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _csv(raw: str | None) -> list[str]:
    return [item.strip() for item in (raw or "").split(",") if item.strip()]


def _jwt(env: Mapping[str, str]) -> JwtSettings:
    secret = _get(env, "CHAT_JWT_SECRET")
    jwks_url = _url(env, "CHAT_JWT_JWKS_URL", ("http", "https"), required=False)
    if secret and jwks_url:
        raise SettingsError("CHAT_JWT_SECRET and CHAT_JWT_JWKS_URL are exclusive: set one")
    if not secret and not jwks_url:
        raise SettingsError("CHAT_JWT_SECRET or CHAT_JWT_JWKS_URL is required (how tokens are verified)")
    if secret is not None and len(secret) < 32:
        raise SettingsError("CHAT_JWT_SECRET must be at least 32 characters")
    algorithms = _csv(_get(env, "CHAT_JWT_ALGORITHMS")) or (["HS256"] if secret else ["RS256"])
    allowed = SYMMETRIC_ALGS if secret else ASYMMETRIC_ALGS
    bad = [a for a in algorithms if a not in allowed]
    if bad:
        kind = "CHAT_JWT_SECRET takes HS256/HS384/HS512" if secret else "a JWKS takes RS*, ES* or PS* algorithms"
        raise SettingsError(f"CHAT_JWT_ALGORITHMS has {', '.join(bad)}: {kind}")
    claim = _get(env, "CHAT_JWT_USER_CLAIM") or "cognito:username"
    return JwtSettings(
        secret=secret,
        jwks_url=jwks_url,
        issuer=_get(env, "CHAT_JWT_ISSUER"),
        audience=_get(env, "CHAT_JWT_AUDIENCE"),
        algorithms=tuple(algorithms),
        user_claim=claim,
        token_use=_get(env, "CHAT_JWT_TOKEN_USE"),
    )


def _rate(env: Mapping[str, str], name: str, default: Rate) -> Rate:
    raw = _get(env, name)
    if raw is None:
        return default
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?):([0-9]+)", raw)
    if match is None or float(match[1]) <= 0 or not 1 <= int(match[2]) <= 100_000:
        raise SettingsError(
            f"{name} must be rate:burst, e.g. 20:100 (a positive rate per second, a burst of 1 or more)"
        )
    return Rate(float(match[1]), int(match[2]))


def _limits(env: Mapping[str, str]) -> Limits:
    base = Limits()
    return Limits(
        max_connections_per_user=_int(env, "CHAT_MAX_CONNECTIONS_PER_USER", base.max_connections_per_user, 1, 1000),
        send=_rate(env, "CHAT_RATE_SEND", base.send),
        read=_rate(env, "CHAT_RATE_READ", base.read),
        typing=_rate(env, "CHAT_RATE_TYPING", base.typing),
        token_grace_seconds=_int(env, "CHAT_TOKEN_GRACE_SECONDS", base.token_grace_seconds, 0, 86400),
    )


def _rest_limits(env: Mapping[str, str]) -> RestLimits:
    base = RestLimits()
    return RestLimits(
        read=_rate(env, "CHAT_RATE_REST_READ", base.read),
        create=_rate(env, "CHAT_RATE_REST_CREATE", base.create),
        search=_rate(env, "CHAT_RATE_REST_SEARCH", base.search),
    )


def _origins(env: Mapping[str, str]) -> frozenset[str]:
    origins = _csv(_get(env, "CHAT_ALLOWED_ORIGINS"))
    for origin in origins:
        parts = urlsplit(origin)
        if (
            parts.scheme not in ("http", "https", "chrome-extension", "moz-extension")
            or not parts.netloc
            or parts.path not in ("", "/")
        ):
            raise SettingsError(f"CHAT_ALLOWED_ORIGINS has {origin!r}: an origin is scheme://host[:port]")
    return frozenset(o.rstrip("/") for o in origins)


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = (_get(env, name) or "false").lower()
    if raw not in ("true", "false", "1", "0", "yes", "no"):
        raise SettingsError(f"{name} must be true or false, got {raw!r}")
    return raw in ("true", "1", "yes")


# Published in this repository (docker-compose.yml, the dev overlay): anyone can mint tokens with it.
DEVELOPMENT_SECRETS = frozenset({"dev-secret-change-me-dev-secret-change-me"})


def _refuse_development_in_production(jwt: JwtSettings, dev_login: bool, origins: frozenset[str]) -> None:
    """Development settings are one copy-paste from production: refuse them outside development.

    The published development secret is accepted only with CHAT_DEV_LOGIN=true (which says
    "development"), and CHAT_DEV_LOGIN=true is refused next to anything that says "production":
    an issuer or audience to check, or an https:// origin.
    """
    if jwt.secret in DEVELOPMENT_SECRETS and not dev_login:
        raise SettingsError(
            "CHAT_JWT_SECRET is the development secret published in this repository: "
            "set a secret of your own (at least 32 random characters)"
        )
    if dev_login:
        marker = (
            "CHAT_JWT_ISSUER"
            if jwt.issuer
            else "CHAT_JWT_AUDIENCE"
            if jwt.audience
            else "CHAT_ALLOWED_ORIGINS"
            if any(o.startswith("https://") for o in origins)
            else None
        )
        if marker is not None:
            raise SettingsError(
                f"CHAT_DEV_LOGIN=true lets anyone sign in as anyone: refused with {marker} set (a production setting)"
            )


def default_instance_id() -> str:
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:48] or "chat"
    return f"{host}-{uuid.uuid4().hex[:8]}"


def load(
    service: str,
    env: Mapping[str, str] | None = None,
    *,
    database: bool = False,
    amqp: bool = False,
    redis: bool = False,
    jwt: bool = False,
) -> Settings:
    """Read the settings ``service`` needs; raise :class:`SettingsError` on the first bad one."""
    env = os.environ if env is None else env
    level = (_get(env, "CHAT_LOG_LEVEL") or "info").lower()
    if level not in LOG_LEVELS:
        raise SettingsError(f"CHAT_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    instance_id = _get(env, "CHAT_INSTANCE_ID") or default_instance_id()
    if not _INSTANCE_RE.match(instance_id):
        raise SettingsError("CHAT_INSTANCE_ID must match [A-Za-z0-9._-]{1,64}")
    jwt_settings = _jwt(env) if jwt else None
    dev_login = _bool(env, "CHAT_DEV_LOGIN") if jwt else False
    if dev_login and jwt_settings is not None and jwt_settings.secret is None:
        raise SettingsError("CHAT_DEV_LOGIN needs CHAT_JWT_SECRET: development tokens are HS256")
    allowed_origins = _origins(env)
    if jwt_settings is not None:
        _refuse_development_in_production(jwt_settings, dev_login, allowed_origins)
    return Settings(
        service=service,
        host=_get(env, "CHAT_HOST") or "0.0.0.0",
        port=_int(env, "CHAT_PORT", DEFAULT_PORTS.get(service, 8080), 1, 65535),
        instance_id=instance_id,
        partitions=_int(env, "CHAT_PARTITIONS", DEFAULT_PARTITIONS, 1, 256),
        log_level=level,
        allowed_origins=allowed_origins,
        database_url=_postgres_dsn(env, "CHAT_DATABASE_URL", required=True) if database else None,
        database_read_url=_postgres_dsn(env, "CHAT_DATABASE_READ_URL", required=False) if service == "query" else None,
        amqp_urls=_amqp_urls(env, "CHAT_AMQP_URL") if amqp else (),
        redis=_redis(env, required=redis) if redis or service == "query" else None,
        jwt=jwt_settings,
        dev_login=dev_login,
        limits=_limits(env) if service == "gateway" else Limits(),
        web_gateways=_web_gateways(env) if service == "query" else (),
        rest_limits=_rest_limits(env) if service == "query" else RestLimits(),
        flush_linger_ms=_int(env, "CHAT_FLUSH_LINGER_MS", DEFAULT_FLUSH_LINGER_MS, 0, 1000)
        if service == "gateway"
        else DEFAULT_FLUSH_LINGER_MS,
        ops_port=_int(env, "CHAT_OPS_PORT", 0, 0, 65535),
        otlp_endpoint=_url(env, "CHAT_OTLP_ENDPOINT", ("http", "https"), required=False),
        db_statement_cache=_int(env, "CHAT_DB_STATEMENT_CACHE", 100, 0, 10_000) if database else 100,
    )


def _web_gateways(env: Mapping[str, str]) -> tuple[str, ...]:
    urls = _csv(_get(env, "CHAT_WEB_GATEWAYS"))
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise SettingsError(f"CHAT_WEB_GATEWAYS has {url!r}: each must be a ws:// or wss:// URL")
    return tuple(urls)


T = TypeVar("T")


def _present(value: T | None) -> T:
    """A setting :func:`load` was told to require (it raised SettingsError if it was missing)."""
    assert value is not None, "load() requires it"
    return value


def _common(s: Settings) -> dict[str, Any]:
    return {f.name: getattr(s, f.name) for f in fields(Common)}


def load_gateway(env: Mapping[str, str] | None = None) -> GatewaySettings:
    s = load("gateway", env, amqp=True, redis=True, jwt=True)
    return GatewaySettings(
        **_common(s),
        amqp_urls=s.amqp_urls,
        redis=_present(s.redis),
        jwt=_present(s.jwt),
        limits=s.limits,
        flush_linger_ms=s.flush_linger_ms,
        heartbeat_seconds=_int(os.environ if env is None else env, "CHAT_WS_HEARTBEAT_SECONDS", 30, 2, 600),
    )


def load_writer(env: Mapping[str, str] | None = None) -> WriterSettings:
    s = load("writer", env, database=True, amqp=True, redis=True)
    return WriterSettings(
        **_common(s), database_url=_present(s.database_url), amqp_urls=s.amqp_urls, redis=_present(s.redis)
    )


def load_notifier(env: Mapping[str, str] | None = None) -> NotifierSettings:
    s = load("notifier", env, amqp=True, redis=True)
    return NotifierSettings(**_common(s), amqp_urls=s.amqp_urls, redis=_present(s.redis))


def load_query(env: Mapping[str, str] | None = None) -> QuerySettings:
    s = load("query", env, database=True, amqp=True, jwt=True)
    if s.database_read_url is not None and s.redis is None:
        raise SettingsError(
            "CHAT_REDIS_URL (or CHAT_REDIS_SENTINELS) is required with CHAT_DATABASE_READ_URL: "
            "reads stay read-your-writes through the freshness marks kept there"
        )
    return QuerySettings(
        **_common(s),
        database_url=_present(s.database_url),
        database_read_url=s.database_read_url,
        redis=s.redis if s.database_read_url is not None else None,
        amqp_urls=s.amqp_urls,
        jwt=_present(s.jwt),
        dev_login=s.dev_login,
        web_gateways=s.web_gateways,
        rest_limits=s.rest_limits,
    )


def load_migrate(env: Mapping[str, str] | None = None) -> MigrateSettings:
    s = load("migrate", env, database=True)
    return MigrateSettings(**_common(s), database_url=_present(s.database_url))
