import pytest

from shared.settings import SettingsError, load

BASE = {
    "CHAT_DATABASE_URL": "postgresql://chat@db:5432/chat",
    "CHAT_AMQP_URL": "amqp://guest:guest@mq:5672/",
    "CHAT_REDIS_URL": "redis://cache:6379/0",
    "CHAT_JWT_SECRET": "x" * 40,
}


def test_defaults_for_each_service():
    s = load("gateway", BASE, amqp=True, redis=True, jwt=True)
    assert (s.port, s.partitions, s.log_level) == (8080, 4, "info")
    assert s.jwt is not None and s.jwt.algorithms == ("HS256",) and s.jwt.user_claim == "cognito:username"
    assert load("query", BASE, database=True).port == 8081
    assert load("writer", BASE, database=True).port == 8082
    assert load("notifier", BASE, redis=True).port == 8083


def test_instance_ids_are_unique_by_default():
    assert load("gateway", BASE).instance_id != load("gateway", BASE).instance_id


@pytest.mark.parametrize(
    ("change", "needs", "variable"),
    [
        ({"CHAT_DATABASE_URL": None}, {"database": True}, "CHAT_DATABASE_URL"),
        ({"CHAT_DATABASE_URL": ""}, {"database": True}, "CHAT_DATABASE_URL"),
        ({"CHAT_DATABASE_URL": "mysql://x@y/z"}, {"database": True}, "CHAT_DATABASE_URL"),
        ({"CHAT_DATABASE_URL": "postgresql://db:notaport/chat"}, {"database": True}, "CHAT_DATABASE_URL"),
        ({"CHAT_AMQP_URL": None}, {"amqp": True}, "CHAT_AMQP_URL"),
        ({"CHAT_AMQP_URL": "http://mq"}, {"amqp": True}, "CHAT_AMQP_URL"),
        ({"CHAT_REDIS_URL": None}, {"redis": True}, "CHAT_REDIS_URL"),
        ({"CHAT_REDIS_URL": "redis://"}, {"redis": True}, "CHAT_REDIS_URL"),
        # several engine nodes: every one is checked, not only the first
        ({"CHAT_AMQP_URL": "amqp://mq1:5672/,http://mq2"}, {"amqp": True}, "CHAT_AMQP_URL"),
        ({"CHAT_AMQP_URL": "amqp://mq1:5672/,amqp://mq2:notaport/"}, {"amqp": True}, "CHAT_AMQP_URL"),
        ({"CHAT_DATABASE_URL": "postgresql://u@h1:5432,h2:x/chat"}, {"database": True}, "CHAT_DATABASE_URL"),
        ({"CHAT_DATABASE_URL": "postgresql://u@h1:5432,/chat"}, {"database": True}, "CHAT_DATABASE_URL"),
        ({"CHAT_REDIS_URL": None, "CHAT_REDIS_SENTINELS": "s1:26379"}, {"redis": True}, "CHAT_REDIS_SENTINEL_MASTER"),
        ({"CHAT_REDIS_SENTINEL_MASTER": "chat"}, {"redis": True}, "CHAT_REDIS_SENTINELS"),
        (
            {"CHAT_REDIS_SENTINELS": "s1:26379,s2:99999", "CHAT_REDIS_SENTINEL_MASTER": "chat"},
            {"redis": True},
            "CHAT_REDIS_SENTINELS",
        ),
        ({"CHAT_PORT": "eighty"}, {}, "CHAT_PORT"),
        ({"CHAT_PORT": "70000"}, {}, "CHAT_PORT"),
        ({"CHAT_PARTITIONS": "0"}, {}, "CHAT_PARTITIONS"),
        ({"CHAT_FLUSH_LINGER_MS": "1001"}, {}, "CHAT_FLUSH_LINGER_MS"),
        ({"CHAT_FLUSH_LINGER_MS": "-1"}, {}, "CHAT_FLUSH_LINGER_MS"),
        ({"CHAT_LOG_LEVEL": "loud"}, {}, "CHAT_LOG_LEVEL"),
        ({"CHAT_INSTANCE_ID": "has space"}, {}, "CHAT_INSTANCE_ID"),
        ({"CHAT_ALLOWED_ORIGINS": "example.com"}, {}, "CHAT_ALLOWED_ORIGINS"),
        ({"CHAT_JWT_SECRET": None}, {"jwt": True}, "CHAT_JWT_SECRET"),
        ({"CHAT_JWT_SECRET": "short"}, {"jwt": True}, "CHAT_JWT_SECRET"),
        ({"CHAT_JWT_JWKS_URL": "https://idp/.well-known/jwks.json"}, {"jwt": True}, "CHAT_JWT_SECRET"),
        ({"CHAT_JWT_ALGORITHMS": "RS256"}, {"jwt": True}, "CHAT_JWT_ALGORITHMS"),
        ({"CHAT_JWT_ALGORITHMS": "none"}, {"jwt": True}, "CHAT_JWT_ALGORITHMS"),
        (
            {"CHAT_JWT_SECRET": None, "CHAT_JWT_JWKS_URL": "https://idp/jwks", "CHAT_JWT_ALGORITHMS": "HS256"},
            {"jwt": True},
            "CHAT_JWT_ALGORITHMS",
        ),
        ({"CHAT_JWT_SECRET": None, "CHAT_JWT_JWKS_URL": "ftp://idp/jwks"}, {"jwt": True}, "CHAT_JWT_JWKS_URL"),
        ({"CHAT_DEV_LOGIN": "sure"}, {"jwt": True}, "CHAT_DEV_LOGIN"),
        (
            {"CHAT_DEV_LOGIN": "true", "CHAT_JWT_SECRET": None, "CHAT_JWT_JWKS_URL": "https://idp/jwks"},
            {"jwt": True},
            "CHAT_DEV_LOGIN",
        ),
    ],
)
def test_bad_or_missing_setting_names_the_variable(change, needs, variable):
    env = {**BASE, **{k: v for k, v in change.items() if v is not None}}
    for k, v in change.items():
        if v is None:
            env.pop(k, None)
    with pytest.raises(SettingsError) as info:
        load("gateway", env, **needs)
    assert str(info.value).startswith(variable)


def test_dev_login_is_off_unless_asked_for():
    assert load("query", BASE, jwt=True).dev_login is False
    assert load("query", {**BASE, "CHAT_DEV_LOGIN": "true"}, jwt=True).dev_login is True


def test_settings_that_are_not_needed_are_not_read():
    env = {**BASE, "CHAT_DATABASE_URL": "nonsense"}
    assert load("notifier", env, amqp=True, redis=True).database_url is None


def test_jwks_settings_and_origins():
    env = {k: v for k, v in BASE.items() if k != "CHAT_JWT_SECRET"}
    env.update(
        {
            "CHAT_JWT_JWKS_URL": "https://cognito-idp.eu-west-1.amazonaws.com/pool/.well-known/jwks.json",
            "CHAT_JWT_ISSUER": "https://cognito-idp.eu-west-1.amazonaws.com/pool",
            "CHAT_JWT_AUDIENCE": "client",
            "CHAT_JWT_ALGORITHMS": "RS256, ES256",
            "CHAT_ALLOWED_ORIGINS": "https://app.example.com, chrome-extension://abcdef/",
        }
    )
    s = load("query", env, jwt=True)
    assert s.jwt is not None
    assert s.jwt.algorithms == ("RS256", "ES256") and s.jwt.secret is None
    assert s.jwt.issuer.endswith("/pool") and s.jwt.audience == "client"
    assert s.allowed_origins == {"https://app.example.com", "chrome-extension://abcdef"}


def test_development_secrets_are_refused_in_production():
    from shared.settings import DEVELOPMENT_SECRETS, SettingsError, load

    dev_secret = next(iter(DEVELOPMENT_SECRETS))
    base = {"CHAT_DATABASE_URL": "postgresql://u@h/db", "CHAT_AMQP_URL": "amqp://h/"}
    ok = load("query", {**base, "CHAT_JWT_SECRET": dev_secret, "CHAT_DEV_LOGIN": "true"}, jwt=True)
    assert ok.dev_login  # a development setup, said so explicitly
    refused = [
        ({"CHAT_JWT_SECRET": dev_secret}, "development secret"),
        ({"CHAT_JWT_SECRET": "x" * 40, "CHAT_DEV_LOGIN": "true", "CHAT_JWT_ISSUER": "https://idp"}, "CHAT_JWT_ISSUER"),
        ({"CHAT_JWT_SECRET": "x" * 40, "CHAT_DEV_LOGIN": "true", "CHAT_JWT_AUDIENCE": "app"}, "CHAT_JWT_AUDIENCE"),
        (
            {"CHAT_JWT_SECRET": "x" * 40, "CHAT_DEV_LOGIN": "true", "CHAT_ALLOWED_ORIGINS": "https://chat.example.com"},
            "CHAT_ALLOWED_ORIGINS",
        ),
    ]
    for env, words in refused:
        with pytest.raises(SettingsError) as info:
            load("query", {**base, **env}, jwt=True)
        assert words in str(info.value)


def test_each_service_gets_its_settings_with_what_it_needs_simply_there():
    from shared.settings import load_gateway, load_migrate, load_notifier, load_query, load_writer

    gateway = load_gateway(BASE)
    assert (gateway.amqp_urls, gateway.redis.url, gateway.jwt.user_claim) == (
        (BASE["CHAT_AMQP_URL"],),
        BASE["CHAT_REDIS_URL"],
        "cognito:username",
    )
    assert gateway.limits.max_connections_per_user == 10
    assert (gateway.flush_linger_ms, load_gateway({**BASE, "CHAT_FLUSH_LINGER_MS": "0"}).flush_linger_ms) == (30, 0)
    assert (gateway.heartbeat_seconds, load_gateway({**BASE, "CHAT_WS_HEARTBEAT_SECONDS": "5"}).heartbeat_seconds) == (
        30,
        5,
    )
    with pytest.raises(SettingsError, match="CHAT_WS_HEARTBEAT_SECONDS"):
        load_gateway({**BASE, "CHAT_WS_HEARTBEAT_SECONDS": "1"})  # a ping a second per socket: refused
    writer = load_writer(BASE)
    assert (writer.database_url, writer.amqp_urls, writer.redis.url) == (
        BASE["CHAT_DATABASE_URL"],
        (BASE["CHAT_AMQP_URL"],),
        BASE["CHAT_REDIS_URL"],
    )
    assert load_notifier(BASE).redis.url == BASE["CHAT_REDIS_URL"]
    assert load_query(BASE).web_gateways == ()
    assert load_migrate(BASE).database_url == BASE["CHAT_DATABASE_URL"]
    for loader, variable in (
        (load_writer, "CHAT_REDIS_URL"),
        (load_query, "CHAT_JWT_SECRET"),
        (load_migrate, "CHAT_DATABASE_URL"),
    ):
        with pytest.raises(SettingsError) as info:
            loader({k: v for k, v in BASE.items() if k != variable})
        assert variable in str(info.value)


def test_rest_limits_of_the_query_service():
    from shared.settings import Rate, RestLimits, load_query

    assert load_query(BASE).rest_limits == RestLimits(read=Rate(20, 200), create=Rate(0.5, 30))
    tuned = load_query({**BASE, "CHAT_RATE_REST_READ": "50:500", "CHAT_RATE_REST_CREATE": "2:10"})
    assert tuned.rest_limits == RestLimits(read=Rate(50, 500), create=Rate(2, 10))
    for variable, value in (("CHAT_RATE_REST_READ", "0:10"), ("CHAT_RATE_REST_CREATE", "fast")):
        with pytest.raises(SettingsError) as info:
            load_query({**BASE, variable: value})
        assert str(info.value).startswith(variable)


def test_clustered_engines_are_reached_by_lists_of_hosts():
    from shared.settings import RedisSettings, load_query, load_writer

    env = {
        **BASE,
        "CHAT_AMQP_URL": "amqp://u:p@mq-0:5672/chat, amqp://u:p@mq-1:5672/chat,amqp://u:p@[::1]:5673/chat",
        "CHAT_DATABASE_URL": "postgresql://chat:pw@pg-0:5432,pg-1,[::1]:5433/chat?target_session_attrs=read-write",
        "CHAT_REDIS_URL": "redis://:secret@ignored:6379/3",
        "CHAT_REDIS_SENTINELS": "sentinel-0:26379,sentinel-1,sentinel-2:26380",
        "CHAT_REDIS_SENTINEL_MASTER": "chat",
    }
    writer = load_writer(env)
    assert writer.amqp_urls == (
        "amqp://u:p@mq-0:5672/chat",
        "amqp://u:p@mq-1:5672/chat",
        "amqp://u:p@[::1]:5673/chat",
    )
    assert writer.database_url == env["CHAT_DATABASE_URL"]
    assert writer.redis == RedisSettings(
        url="redis://:secret@ignored:6379/3",
        sentinels=(("sentinel-0", 26379), ("sentinel-1", 26379), ("sentinel-2", 26380)),
        master="chat",
    )
    # the query service reads from standbys only with Redis, where the freshness marks live
    assert load_query(BASE).database_read_url is None and load_query(BASE).redis is None
    read = {**BASE, "CHAT_DATABASE_READ_URL": "postgresql://chat@pg-1,pg-2/chat"}
    query = load_query(read)
    assert query.database_read_url == read["CHAT_DATABASE_READ_URL"] and query.redis == RedisSettings(
        url=BASE["CHAT_REDIS_URL"]
    )
    with pytest.raises(SettingsError) as info:
        load_query({k: v for k, v in read.items() if k != "CHAT_REDIS_URL"})
    assert str(info.value).startswith("CHAT_REDIS_URL")
