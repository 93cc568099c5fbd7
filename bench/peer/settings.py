"""Django settings for the peer, from the environment (``PEER_DB_*``)."""

import os

SECRET_KEY = "bench-peer-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["bench.peer"]
USE_TZ = True
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("PEER_DB_HOST", "127.0.0.1"),
        "PORT": os.environ.get("PEER_DB_PORT", "5432"),
        "NAME": os.environ.get("PEER_DB_NAME", "chat"),
        "USER": os.environ.get("PEER_DB_USER", "chat"),
        "PASSWORD": os.environ.get("PEER_DB_PASSWORD", ""),
        # Django's default is 0: database_sync_to_async closes the connection after each call, so every
        # message opens a new Postgres connection. `bench.load --peer-conn-max-age 600` keeps it open.
        "CONN_MAX_AGE": int(os.environ.get("PEER_CONN_MAX_AGE", "0")),
    }
}
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
