from shared.service import serve, settings_or_exit
from shared.settings import load_gateway


def main() -> None:
    settings = settings_or_exit("chat-gateway", load_gateway)
    from .app import create_app

    serve(create_app(settings), settings)
