"""``python -m bench.peer``: create the peer's table (what ``manage.py migrate`` would do)."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.peer.settings")
django.setup()

from django.db import connection  # noqa: E402

from bench.peer.models import Message  # noqa: E402

with connection.schema_editor() as editor:
    editor.create_model(Message)
