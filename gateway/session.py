"""One WebSocket's session: who it is, until when, its limits, and what each frame does.

Every frame a client sends is hostile until parsed: it is counted against the connection's
frame budget, parsed into a typed frame (shared/frames.py), checked against the user's rate
limits (shared by all the user's connections on this gateway), then published as a command.
Each refusal is a strike; a connection that runs out of strikes is closed with 1008, so a
flood costs its sender the connection and nobody else anything.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import prometheus_client

from shared import frames, tracing
from shared.auth import AuthError, AuthUnavailable, Identity
from shared.envelope import (
    Command,
    DeleteMessage,
    EditMessage,
    Origin,
    React,
    ReadMessages,
    SendMessage,
    StartTyping,
)
from shared.log import get_logger
from shared.ratelimit import TokenBucket

from .hub import Connection
from .limits import FRAMES, STRIKES, UserLimits
from .state import Gateway

log = get_logger(__name__)
POLICY_VIOLATION = 1008
TOKEN_EXPIRED = 4001
TYPING_INTERVAL = 1.0  # one typing frame per conversation per second reaches the others
TYPING_REMEMBERED = 64  # conversations whose last typing time a session keeps

FRAMES_IN = prometheus_client.Counter("chat_gateway_frames_received_total", "Client frames", ["action"])
# Each action's child, bound once: ``labels()`` costs a lock and a lookup per frame.
FRAMES_IN_BY = {action: FRAMES_IN.labels(action) for action in frames.ACTIONS}
FRAME_ERRORS = prometheus_client.Counter("chat_gateway_frame_errors_total", "Client frames refused", ["code"])
CLOSED_ABUSIVE = prometheus_client.Counter(
    "chat_gateway_abusive_closed_total", "Connections closed with 1008 for going on past their limits"
)
CLOSED_EXPIRED = prometheus_client.Counter(
    "chat_gateway_expired_closed_total", "Connections closed with 4001 when their token expired"
)


class Session:
    __slots__ = (
        "gw",
        "conn",
        "user_id",
        "limits",
        "origin",
        "expires_at",
        "frames",
        "strikes",
        "typing_at",
        "received",
        "_deadline",
        "_authenticating",
    )

    def __init__(self, gw: Gateway, conn: Connection, limits: UserLimits, identity: Identity) -> None:
        self.gw = gw
        self.conn = conn
        self.user_id = conn.user_id
        self.limits = limits
        self.origin = Origin(gw.settings.instance_id, conn.id)
        self.expires_at = identity.expires_at
        # made by the first frame, the first refusal: an idle socket costs less
        self.frames: TokenBucket | None = None
        self.strikes: TokenBucket | None = None
        self.typing_at: dict[uuid.UUID, float] | None = None  # made by the first typing frame
        self.received = 0
        self._deadline: float | None = None  # when the token's grace runs out (gateway/expiry.py)
        self._authenticating: asyncio.Task[None] | None = None

    # ---- lifetime ------------------------------------------------------------------------

    def start(self) -> None:
        self._schedule_expiry()

    async def stop(self) -> None:
        if self._deadline is not None:
            self.gw.expiries.discard(self, self._deadline)
            self._deadline = None
        task = self._authenticating
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    def _schedule_expiry(self) -> None:
        deadline = self.expires_at + self.gw.settings.limits.token_grace_seconds
        self.gw.expiries.set(self, deadline, self._deadline)
        self._deadline = deadline

    def expired(self) -> None:
        self._deadline = None
        CLOSED_EXPIRED.inc()
        log.info("ws_token_expired", conn=self.conn.id)
        self.conn.close_soon(TOKEN_EXPIRED, "token expired")

    # ---- frames --------------------------------------------------------------------------

    def handle(self, text: str) -> None:
        """One text frame, e.g. ``{"action":"send-message","tempMessageId":"t1","conversationId":"<uuid>",
        "content":"hi"}`` or ``{"action":"react","messageId":"<uuid>","emoji":"👍","on":true}``; answers
        problems with ``{"type":"error","code":...,"message":...}`` (plus the frame's ``action``,
        ``tempMessageId`` or ``messageId``)."""
        self.received += 1
        if not self.within_budget():
            return
        try:
            frame = frames.parse(text)
        except frames.FrameError as exc:
            self._refuse(
                exc.code, exc.message, action=exc.action, temp_message_id=exc.temp_message_id, message_id=exc.message_id
            )
            return
        if isinstance(frame, frames.HeartbeatFrame):
            FRAMES_IN_BY["heartbeat"].inc()
        elif isinstance(frame, frames.AuthenticateFrame):
            FRAMES_IN_BY["authenticate"].inc()
            self._authenticate(frame.token)
        elif isinstance(frame, frames.SendFrame):
            self._command(
                "send-message",
                SendMessage(
                    user_id=self.user_id,
                    conversation_id=frame.conversation_id,
                    temp_message_id=frame.temp_message_id,
                    content=frame.content,
                    origin=self.origin,
                    accepted_at=(accepted := time.time()),
                    trace=tracing.record("gateway.accept", None, accepted, conversation_id=str(frame.conversation_id)),
                ),
                frame.temp_message_id,
            )
        elif isinstance(frame, frames.ReadFrame):
            self._command(
                "read-messages",
                ReadMessages(user_id=self.user_id, conversation_id=frame.conversation_id, origin=self.origin),
            )
        elif isinstance(frame, frames.TypingFrame):
            self._typing(frame.conversation_id)
        elif isinstance(frame, frames.EditFrame):
            self._command(
                "edit-message",
                EditMessage(
                    user_id=self.user_id, message_id=frame.message_id, content=frame.content, origin=self.origin
                ),
                message_id=frame.message_id,
            )
        elif isinstance(frame, frames.DeleteFrame):
            self._command(
                "delete-message",
                DeleteMessage(user_id=self.user_id, message_id=frame.message_id, origin=self.origin),
                message_id=frame.message_id,
            )
        elif isinstance(frame, frames.ReactFrame):
            self._command(
                "react",
                React(
                    user_id=self.user_id,
                    message_id=frame.message_id,
                    emoji=frame.emoji,
                    on=frame.on,
                    origin=self.origin,
                ),
                message_id=frame.message_id,
            )

    def within_budget(self) -> bool:
        """Count one frame of any kind (text, binary, ping, pong) against the connection's budget;
        beyond it the frame is dropped unread, with no reply to amplify, and it is a strike."""
        if self.frames is None:
            self.frames = TokenBucket(FRAMES)
        if self.frames.take():
            return True
        self._strike("frames")
        return False

    def binary(self) -> None:
        if self.within_budget():
            self._refuse("invalid_frame", "frames must be JSON text")

    def _command(
        self,
        action: str,
        command: Command,
        temp_message_id: str | None = None,
        message_id: uuid.UUID | None = None,
    ) -> None:
        FRAMES_IN_BY[action].inc()
        shown_id = str(message_id) if message_id is not None else None
        # edits, deletes and reactions count against the sender's send-message limit
        if not self.limits.allow("send-message" if action in frames.MESSAGE_ACTIONS else action):
            self._refuse(
                "rate_limited",
                "too many frames, slow down",
                action=action,
                temp_message_id=temp_message_id,
                message_id=shown_id,
            )
            return
        conn = self.conn

        def unavailable(reason: str) -> None:
            conn.push(
                frames.error(
                    "unavailable",
                    "could not accept this, retry",
                    action=action,
                    temp_message_id=temp_message_id,
                    message_id=shown_id,
                )
            )

        if not self.gw.publisher.submit(command, unavailable):
            unavailable("publisher full")

    def _typing(self, conversation_id: uuid.UUID) -> None:
        FRAMES_IN_BY["typing"].inc()
        now = time.monotonic()
        if self.typing_at is None:
            self.typing_at = {}
        if now - self.typing_at.get(conversation_id, 0.0) < TYPING_INTERVAL:
            return  # ephemeral: extra typing frames are simply dropped
        if not self.limits.allow("typing"):
            FRAME_ERRORS.labels("rate_limited").inc()
            self._strike("typing")
            return
        self.typing_at.pop(conversation_id, None)
        self.typing_at[conversation_id] = now
        if len(self.typing_at) > TYPING_REMEMBERED:
            del self.typing_at[next(iter(self.typing_at))]  # the oldest: the dict stays bounded
        self.gw.publisher.submit(StartTyping(user_id=self.user_id, conversation_id=conversation_id, origin=self.origin))

    def _refuse(
        self,
        code: str,
        message: str,
        *,
        action: str | None = None,
        temp_message_id: str | None = None,
        message_id: str | None = None,
    ) -> None:
        FRAME_ERRORS.labels(code).inc()
        self.conn.push(
            frames.error(code, message, action=action, temp_message_id=temp_message_id, message_id=message_id)
        )
        self._strike(code)

    def _strike(self, why: str) -> None:
        if self.strikes is None:
            self.strikes = TokenBucket(STRIKES)
        if not self.strikes.take():
            CLOSED_ABUSIVE.inc()
            log.info("ws_abusive_closed", conn=self.conn.id, reason=why, frames=self.received)
            self.conn.close_soon(POLICY_VIOLATION, "rate limit exceeded")

    # ---- authenticate --------------------------------------------------------------------

    def _authenticate(self, token: str) -> None:
        if self._authenticating is not None and not self._authenticating.done():
            self._refuse("rate_limited", "an authenticate frame is already being checked", action="authenticate")
            return
        self._authenticating = asyncio.create_task(self._check(token), name=f"authenticate:{self.conn.id}")

    async def _check(self, token: str) -> None:
        """``{"action":"authenticate","token":"<jwt>"}``: a fresh token of the same user moves the
        connection's end; a bad one gets ``error`` ``unauthorized``; another user's closes with 1008."""
        try:
            identity = await self.gw.verifier.identify(token)
        except AuthError as exc:
            self._refuse("unauthorized", str(exc), action="authenticate")
            return
        except AuthUnavailable as exc:
            self.conn.push(frames.error("unavailable", str(exc), action="authenticate"))
            return
        if identity.user_id != self.user_id:
            log.info("ws_authenticate_other_user", conn=self.conn.id)
            self.conn.close_soon(POLICY_VIOLATION, "token names another user")
            return
        if identity.expires_at > self.expires_at:
            self.expires_at = identity.expires_at
            self._schedule_expiry()
