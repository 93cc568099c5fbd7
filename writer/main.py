from shared.service import serve, settings_or_exit
from shared.settings import load


def main() -> None:
    settings = settings_or_exit("chat-writer", lambda: load("writer", database=True, amqp=True, redis=True))
    from .app import create_app

    serve(create_app(settings), settings)
