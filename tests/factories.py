"""Sample envelopes for tests: one place that knows every required field, each test names
only what it is about."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from shared.envelope import MessageStored

AT = datetime(2022, 1, 1, tzinfo=timezone.utc)


def message_stored(**fields: Any) -> MessageStored:
    """A ``MessageStored`` of "hi" from alice to alice and bob, seq 1; ``fields`` override."""
    seq = fields.get("seq", 1)
    values: dict[str, Any] = {
        "message_id": uuid.uuid4(),
        "conversation_id": uuid.uuid4(),
        "seq": seq,
        "sender_id": "alice",
        "temp_message_id": f"t{seq}",
        "content": "hi",
        "sent_at": AT,
        "participants": ["alice", "bob"],
        "change": seq,
    }
    values.update(fields)
    return MessageStored(**values)
