from shared.service import serve, settings_or_exit
from shared.settings import load_writer


def main() -> None:
    settings = settings_or_exit("chat-writer", load_writer)
    from .app import create_app

    serve(create_app(settings), settings)
