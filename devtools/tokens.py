"""``python -m devtools.tokens USER`` (``make token USER=…``): print a development HS256 token for USER.

The secret is CHAT_JWT_SECRET, or the one ``make run`` keeps in .state/jwt-secret.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from shared.auth import MAX_USER_ID_LENGTH, mint


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.tokens", description="Print a development token for a user id."
    )
    parser.add_argument("user", help=f"user id, 1 to {MAX_USER_ID_LENGTH} characters")
    parser.add_argument("--ttl", type=int, default=24 * 3600, help="lifetime in seconds (default one day)")
    parser.add_argument("--state", default=".state", help="where make run keeps its secret (default .state)")
    args = parser.parse_args()
    if not 1 <= len(args.user) <= MAX_USER_ID_LENGTH:
        parser.error(f"user must be 1 to {MAX_USER_ID_LENGTH} characters")
    secret = os.environ.get("CHAT_JWT_SECRET")
    secret_file = Path(args.state) / "jwt-secret"
    if not secret:
        if not secret_file.exists():
            print(
                f"devtools.tokens: CHAT_JWT_SECRET is not set and {secret_file} does not exist (run make run first)",
                file=sys.stderr,
            )
            raise SystemExit(2)
        secret = secret_file.read_text().strip()
    claim = os.environ.get("CHAT_JWT_USER_CLAIM") or "cognito:username"
    print(mint(secret, args.user, ttl=args.ttl, claim=claim))


if __name__ == "__main__":
    main()
