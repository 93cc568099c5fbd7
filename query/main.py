from shared.service import serve, settings_or_exit
from shared.settings import load_query


def main() -> None:
    settings = settings_or_exit("chat-query", load_query)
    from .app import create_app

    serve(create_app(settings), settings)
