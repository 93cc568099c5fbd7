"""The writer: persists commands from the broker and announces what it stored."""
