"""The WebSocket gateway: authenticates users, publishes their commands, delivers their events."""
