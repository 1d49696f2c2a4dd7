"""Sans-I/O vfio-user server connection: framing, header validation, state, replies.

Concepts: the sans-I/O vfio-user connection (server side).  ``receive_data(bytes, fds)``
frames the byte stream into events: a ``Request`` (header validated, whole payload, its
fds) or a ``BadMessage`` (the header broke a rule; the payload is drained, never parsed).
No sockets and no clock here.  fds go to the message holding the last byte of the chunk
they came with: Linux stops a unix-stream recvmsg right after the skb that carries fds,
and QEMU sends each message in one sendmsg, so that is the message the fds were sent
with.  At most ``MAX_PENDING_FDS`` fds may wait for a message not yet complete; more is a
fatal error (the fds are handed back to be closed).  ``has_partial()`` tells the server
a message is under way, so it can time out a client that stalls in the middle of one.
The connection state is an enum plus one transition table; ``reply()`` and
``reply_error()`` are the only places that build replies, and they never answer a
NO_REPLY message.
"""

from __future__ import annotations

import enum
import errno
import logging
from dataclasses import dataclass, field

from .errors import LocalProtocolError, RemoteProtocolError
from .protocol import (F_TYPE_MASK, HEADER_SIZE, MAX_MESSAGE_SIZE, MAX_MSG_FDS, Command,
                       Header, HeaderFlags)

log = logging.getLogger(__name__)

_HDR = Header.STRUCT
_NO_REPLY = int(HeaderFlags.VFIO_USER_F_NO_REPLY)
_REPLY = int(HeaderFlags.VFIO_USER_F_TYPE_REPLY)
_ERROR_REPLY = int(HeaderFlags.VFIO_USER_F_TYPE_REPLY | HeaderFlags.VFIO_USER_F_ERROR)
_KNOWN_COMMANDS = frozenset(int(c) for c in Command)
#: fds that may wait for a message not yet complete: what one message may carry.
MAX_PENDING_FDS = MAX_MSG_FDS


class ConnState(enum.Enum):
    """The states of a connection: before version negotiation, ready, closed."""
    AWAIT_VERSION = "await_version"
    READY = "ready"
    CLOSED = "closed"


class Transition(enum.Enum):
    """What moves a connection between states (the keys of ``TRANSITIONS``)."""
    VERSION_NEGOTIATED = "version_negotiated"
    FATAL_ERROR = "fatal_error"
    PEER_CLOSED = "peer_closed"


#: (state, transition) -> next state. Anything missing is a LocalProtocolError.
TRANSITIONS: dict[tuple[ConnState, Transition], ConnState] = {
    (ConnState.AWAIT_VERSION, Transition.VERSION_NEGOTIATED): ConnState.READY,
    (ConnState.AWAIT_VERSION, Transition.FATAL_ERROR): ConnState.CLOSED,
    (ConnState.AWAIT_VERSION, Transition.PEER_CLOSED): ConnState.CLOSED,
    (ConnState.READY, Transition.FATAL_ERROR): ConnState.CLOSED,
    (ConnState.READY, Transition.PEER_CLOSED): ConnState.CLOSED,
    (ConnState.CLOSED, Transition.FATAL_ERROR): ConnState.CLOSED,
    (ConnState.CLOSED, Transition.PEER_CLOSED): ConnState.CLOSED,
}


@dataclass(slots=True)
class Request:
    """A whole client request. The handler takes the fds it keeps (take_fds); whoever
    dispatches closes the rest."""
    msg_id: int
    command: int
    flags: int
    payload: bytes
    fds: list[int] = field(default_factory=list)

    @property
    def no_reply(self) -> bool:
        """Whether the client asked for no reply (NO_REPLY flag)."""
        return bool(self.flags & _NO_REPLY)

    def take_fds(self) -> list[int]:
        """Hand over the fds that came with this message; the message keeps none."""
        fds, self.fds = self.fds, []
        return fds


@dataclass(slots=True)
class BadMessage:
    """A message whose header broke a rule; its payload was skipped."""
    error: RemoteProtocolError
    msg_id: int
    command: int
    flags: int
    fds: list[int] = field(default_factory=list)

    @property
    def no_reply(self) -> bool:
        """Whether no reply may be sent: NO_REPLY was set, or the message is itself a reply."""
        return bool(self.flags & _NO_REPLY) or (self.flags & F_TYPE_MASK) == _REPLY

    def take_fds(self) -> list[int]:
        """Hand over the fds that came with this message (for the caller to close)."""
        fds, self.fds = self.fds, []
        return fds


Event = Request | BadMessage


class Connection:
    """Server side of one vfio-user connection, without I/O."""

    def __init__(self, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self.state = ConnState.AWAIT_VERSION
        self.max_message_size = max_message_size
        self._buf = bytearray()
        self._carry_fds: list[int] = []   # fds for the message at the head of _buf
        self._discard = 0                 # payload bytes of a rejected message to skip
        self.messages_in = 0

    # -- state ---------------------------------------------------------------------
    def transition(self, what: Transition) -> ConnState:
        """Move to the state ``TRANSITIONS`` gives for ``what`` and return it; raise
        ``LocalProtocolError`` if the table has no such move from the current state."""
        try:
            new = TRANSITIONS[(self.state, what)]
        except KeyError:
            raise LocalProtocolError(
                f"transition {what.value} not allowed in state {self.state.value}") from None
        log.debug("state %s -> %s (%s)", self.state.value, new.value, what.value)
        self.state = new
        return new

    def check_allowed(self, req: Request) -> None:
        """Raise RemoteProtocolError if req may not be handled in the current state."""
        if self.state is ConnState.READY:
            if req.command == Command.VFIO_USER_VERSION:
                raise RemoteProtocolError("VERSION sent twice", errno=errno.EINVAL,
                                          msg_id=req.msg_id)
            return
        if self.state is ConnState.AWAIT_VERSION:
            if req.command != Command.VFIO_USER_VERSION:
                raise RemoteProtocolError(
                    f"{req.command} before VERSION", errno=errno.EINVAL, msg_id=req.msg_id)
            return
        raise RemoteProtocolError("connection closed", errno=errno.ENOTCONN,
                                  msg_id=req.msg_id)

    @property
    def closed(self) -> bool:
        """Whether the connection has reached ``CLOSED``."""
        return self.state is ConnState.CLOSED

    def has_partial(self) -> bool:
        """Bytes, fds or a skip are held for a message not yet complete."""
        return bool(self._buf or self._carry_fds or self._discard)

    def pending_fds(self) -> list[int]:
        """fds held for a message not yet complete (the caller closes them at the end)."""
        fds, self._carry_fds = self._carry_fds, []
        return fds

    # -- framing -------------------------------------------------------------------
    def receive_data(self, data: bytes, fds: list[int] | tuple = ()) -> list[Event]:
        """Feed bytes (and the fds that came with them); return complete events."""
        if self.state is ConnState.CLOSED:
            return [self._stray(fds, "data after a fatal error")] if fds else []
        if self._discard:
            skip = min(self._discard, len(data))
            self._discard -= skip
            data = data[skip:]
            if not data:
                return [self._stray(fds, "fds on a discarded payload")] if fds else []
        buf = self._buf
        if not buf and len(data) >= HEADER_SIZE:
            msg_id, cmd, size, flags, _err = _HDR.unpack_from(data, 0)
            if size == len(data) and HEADER_SIZE <= size <= self.max_message_size:
                # Fast path: exactly one whole message.
                fdl = self._carry_fds + list(fds) if self._carry_fds else list(fds)
                self._carry_fds = []
                return [self._make_event(msg_id, cmd, size, flags, data[HEADER_SIZE:], fdl)]
        buf += data
        return self._drain(list(fds))

    def _drain(self, new_fds: list[int]) -> list[Event]:
        events: list[Event] = []
        buf = self._buf
        pos = 0
        end = len(buf)
        while end - pos >= HEADER_SIZE:
            msg_id, cmd, size, flags, _err = _HDR.unpack_from(buf, pos)
            if size < HEADER_SIZE:
                fdl = self._carry_fds + new_fds
                self._carry_fds, new_fds = [], []
                events.append(self._fatal(msg_id, cmd, flags, fdl,
                                          f"message size {size} < header size"))
                del buf[:]
                return events
            if size > self.max_message_size:
                fdl = self._carry_fds
                self._carry_fds = []
                if pos + size >= end:       # the chunk's last byte is in this message
                    fdl, new_fds = fdl + new_fds, []
                err = RemoteProtocolError(f"message size {size} exceeds "
                                          f"{self.max_message_size}", errno=errno.E2BIG,
                                          msg_id=msg_id)
                events.append(BadMessage(err, msg_id, cmd, flags, fdl))
                skip = min(size, end - pos)
                self._discard = size - skip
                pos += skip
                continue
            if end - pos < size:
                break
            fdl = self._carry_fds
            self._carry_fds = []
            if pos + size == end:           # holds the chunk's last byte
                fdl, new_fds = fdl + new_fds, []
            payload = bytes(buf[pos + HEADER_SIZE:pos + size])
            events.append(self._make_event(msg_id, cmd, size, flags, payload, fdl))
            pos += size
        del buf[:pos]
        if new_fds:
            self._carry_fds.extend(new_fds)
            if len(self._carry_fds) > MAX_PENDING_FDS:
                events.append(self._too_many_fds())
        return events

    def _too_many_fds(self) -> BadMessage:
        """More fds wait for the incomplete message than any message may carry: the
        stream is not QEMU's, so the connection ends (the fds go back to be closed)."""
        fdl, self._carry_fds = self._carry_fds, []
        buf = self._buf
        if len(buf) >= HEADER_SIZE:
            msg_id, cmd, _size, flags, _err = _HDR.unpack_from(buf, 0)
        else:
            msg_id, cmd, flags = 0, 0, _NO_REPLY
        del buf[:]
        return self._fatal(msg_id, cmd, flags, fdl, f"{len(fdl)} fds sent with an incomplete "
                           f"message (at most {MAX_PENDING_FDS})")

    def _make_event(self, msg_id, cmd, size, flags, payload, fdl) -> Event:
        self.messages_in += 1
        mtype = flags & F_TYPE_MASK
        if mtype != 0:
            what = "reply from client" if mtype == _REPLY else f"message type {mtype}"
            return BadMessage(RemoteProtocolError(f"unexpected {what}", errno=errno.EINVAL,
                                                  msg_id=msg_id), msg_id, cmd, flags, fdl)
        if cmd not in _KNOWN_COMMANDS:
            return BadMessage(RemoteProtocolError(f"unknown command {cmd}",
                                                  errno=errno.ENOSYS, msg_id=msg_id),
                              msg_id, cmd, flags, fdl)
        return Request(msg_id, cmd, flags, payload, fdl)

    def _fatal(self, msg_id, cmd, flags, fdl, why: str) -> BadMessage:
        self.transition(Transition.FATAL_ERROR)
        return BadMessage(RemoteProtocolError(why, errno=errno.EINVAL, msg_id=msg_id,
                                              fatal=True), msg_id, cmd, flags, fdl)

    @staticmethod
    def _stray(fds, why: str) -> BadMessage:
        """fds that belong to no message we will handle: to be closed, never answered."""
        err = RemoteProtocolError(why, errno=errno.EINVAL)
        return BadMessage(err, 0, 0, _NO_REPLY, list(fds))

    # -- replies -------------------------------------------------------------------
    @staticmethod
    def reply(req: Request, payload: bytes = b"") -> bytes | None:
        """The reply to req, or None when req asked for no reply."""
        if req.flags & _NO_REPLY:
            return None
        return _HDR.pack(req.msg_id, req.command, HEADER_SIZE + len(payload), _REPLY,
                         0) + payload

    @staticmethod
    def reply_error(req: Request | BadMessage, err: int) -> bytes | None:
        """A header-only error reply (the spec allows nothing after it), or None."""
        if req.no_reply:
            return None
        if err <= 0:
            raise LocalProtocolError(f"error reply needs a positive errno, not {err}")
        return _HDR.pack(req.msg_id, req.command & 0xFFFF, HEADER_SIZE, _ERROR_REPLY, err)
