from shared.service import serve, settings_or_exit
from shared.settings import load_notifier


def main() -> None:
    settings = settings_or_exit("chat-notifier", load_notifier)
    from .app import create_app

    serve(create_app(settings), settings)
