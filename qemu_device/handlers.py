"""vfio-user request handlers and dispatch.

Concepts: the vfio-user endpoint: one Connection (framing, state, replies) plus the
Device, joined by one dispatch table from Command to handler.  Validate, dispatch, reply
happen in one place each: handle() checks the state and the fds, calls the handler,
which decodes its payload strictly and raises a QemuDeviceError carrying an errno on any
problem, and turns the result into exactly one reply (or none, for NO_REPLY).  Every fd
a message brought is either kept by its handler or closed here.

Sans-I/O: bytes and fd numbers in, reply bytes out.  The endpoint never calls the OS:
closing an fd and asking whether an fd is an eventfd go through the device's injected
``FdPort`` (``fdport.py``; the real one is ``fdio.OsFdPort``).
"""

from __future__ import annotations

import errno
import json
import logging
import struct
from dataclasses import fields
from typing import Callable

from .connection import BadMessage, ConnState, Connection, Request, Transition
from .device.nic import Device
from .device.registers import REG_BLOCK_SIZE
from .errors import (DeviceError, LocalProtocolError, QemuDeviceError,
                     RemoteProtocolError)
from .protocol import (HEADER_SIZE, IRQ_SET_ACTION_TYPE_MASK, IRQ_SET_DATA_TYPE_MASK,
                       MAX_DATA_XFER_SIZE, MAX_MSG_FDS, SERVER_CAPS_JSON,
                       WRITE_MULTI_COUNT, WRITE_MULTI_MAX, Command, DeviceInfo, DmaMap,
                       DmaUnmap, DmaUnmapFlags, HeaderFlags, IrqIndex, IrqInfo, IrqSet, IrqSetFlags,
                       RegionAccess, RegionInfo, Version, WriteMultiOne, command_name)

log = logging.getLogger(__name__)

C = Command
_RA = RegionAccess.STRUCT
_RA_SIZE = _RA.size
_MSIX = int(IrqIndex.VFIO_PCI_MSIX_IRQ_INDEX)
_NONE = int(IrqSetFlags.VFIO_IRQ_SET_DATA_NONE)
_BOOL = int(IrqSetFlags.VFIO_IRQ_SET_DATA_BOOL)
_EVENTFD = int(IrqSetFlags.VFIO_IRQ_SET_DATA_EVENTFD)
_TRIGGER = int(IrqSetFlags.VFIO_IRQ_SET_ACTION_TRIGGER)
_MASK = int(IrqSetFlags.VFIO_IRQ_SET_ACTION_MASK)
_UNMASK = int(IrqSetFlags.VFIO_IRQ_SET_ACTION_UNMASK)
_FD_COMMANDS = frozenset({C.VFIO_USER_DMA_MAP, C.VFIO_USER_DEVICE_SET_IRQS})
_UNSUPPORTED = frozenset({C.VFIO_USER_DEVICE_GET_REGION_IO_FDS, C.VFIO_USER_DMA_READ,
                          C.VFIO_USER_DMA_WRITE, C.VFIO_USER_DIRTY_PAGES,
                          C.VFIO_USER_DEVICE_FEATURE, C.VFIO_USER_MIG_DATA_READ,
                          C.VFIO_USER_MIG_DATA_WRITE})

_READ_CMD = int(C.VFIO_USER_REGION_READ)
_READ_SIZE = HEADER_SIZE + _RA_SIZE
_REPLY_FLAG = int(HeaderFlags.VFIO_USER_F_TYPE_REPLY)
#: A REGION_READ request and its reply prefix in one: header, then offset, region, count.
_READ_MSG = struct.Struct("<HHIIIQII")
#: The reply to a 4-byte REGION_READ: _READ_MSG then the value.
_READ4_REPLY = struct.Struct("<HHIIIQIII")
_READ4_SIZE = _READ_SIZE + 4
_READY = ConnState.READY
_WRITE_CMD = int(C.VFIO_USER_REGION_WRITE)
_NO_REPLY = int(HeaderFlags.VFIO_USER_F_NO_REPLY)
_WRITE_MAX = _READ_SIZE + 8           # the fast path takes writes of up to 8 bytes

Sink = Callable[[dict], None]


def _bad(msg: str, code: int = errno.EINVAL) -> RemoteProtocolError:
    return RemoteProtocolError(msg, errno=code)


def _fixed(req: Request, cls, name: str):
    """Decode a fixed-size payload exactly, checking argsz against the struct size."""
    size = cls.STRUCT.size
    if len(req.payload) != size:
        raise _bad(f"{name} payload is {len(req.payload)} bytes, expected {size}")
    msg = cls.unpack(req.payload)
    if msg.argsz < size:
        raise _bad(f"{name} argsz {msg.argsz} < {size}")
    return msg


class Endpoint:
    """One client connection to the device, without I/O."""

    def __init__(self, device: Device, sink: Sink | None = None) -> None:
        self.conn = Connection()
        self.device = device
        self.fds = device.fds
        self.sink = sink
        self.counts = {"messages": 0, "errors": 0, "bad_messages": 0}
        self._faults = device.faults
        self._device_read = device.region_read
        self._register_dword = device.register_dword
        self._set_register_dword = device.set_register_dword
        self._device_write = device.region_write
        self._table: dict[int, Callable[[Request], bytes]] = {
            C.VFIO_USER_VERSION: self._version,
            C.VFIO_USER_DMA_MAP: self._dma_map,
            C.VFIO_USER_DMA_UNMAP: self._dma_unmap,
            C.VFIO_USER_DEVICE_GET_INFO: self._get_info,
            C.VFIO_USER_DEVICE_GET_REGION_INFO: self._region_info,
            C.VFIO_USER_DEVICE_GET_IRQ_INFO: self._irq_info,
            C.VFIO_USER_DEVICE_SET_IRQS: self._set_irqs,
            C.VFIO_USER_REGION_READ: self._region_read,
            C.VFIO_USER_REGION_WRITE: self._region_write,
            C.VFIO_USER_REGION_WRITE_MULTI: self._write_multi,
            C.VFIO_USER_DEVICE_RESET: self._reset,
        }

    @property
    def closed(self) -> bool:
        """True once the connection ended (a fatal protocol error or ``close()``)."""
        return self.conn.closed

    def receive_data(self, data: bytes, fds=()) -> list[bytes]:
        """Feed received bytes and fds; return the replies to send, in order.

        The hot path is answered here, inline: one whole, well-formed REGION_READ, or
        REGION_WRITE of 1 to 8 bytes (posted or not), with no fds, nothing to log (no
        sink) or inject, on a connection with nothing under way; a BAR0 register is read
        or written as one dword.  Anything unusual takes the general path (framing,
        ``handle``), which answers the same."""
        n = len(data)
        if _READ_SIZE <= n <= _WRITE_MAX and not fds and self.sink is None:
            msg_id, cmd, size, flags, _, offset, region, count = _READ_MSG.unpack_from(data)
            conn = self.conn
            if (size == n and conn.state is _READY and not conn.partial
                    and not self._faults.any_command):
                if (cmd == _READ_CMD and n == _READ_SIZE and not flags
                        and count <= MAX_DATA_XFER_SIZE):
                    self.counts["messages"] += 1
                    conn.messages_in += 1
                    if (count == 4 and region == 0 and not offset & 3
                            and offset < REG_BLOCK_SIZE):
                        return [_READ4_REPLY.pack(msg_id, _READ_CMD, _READ4_SIZE, _REPLY_FLAG,
                                                  0, offset, 0, 4,
                                                  self._register_dword(offset))]
                    return [self._fast_read(msg_id, offset, region, count, data)]
                if (cmd == _WRITE_CMD and n == _READ_SIZE + count and count
                        and flags & ~_NO_REPLY == 0):
                    self.counts["messages"] += 1
                    conn.messages_in += 1
                    return self._fast_write(msg_id, flags, offset, region, count, data)
        out = []
        for ev in self.conn.receive_data(data, fds):
            r = self.handle(ev)
            if r is not None:
                out.append(r)
        return out

    def _fast_write(self, msg_id: int, flags: int, offset: int, region: int, count: int,
                    data: bytes) -> list[bytes]:
        """A hot-path REGION_WRITE of 1 to 8 bytes (``receive_data`` checked the rest;
        ``flags`` is 0 or NO_REPLY): a BAR0 register dword is written as one int."""
        try:
            if count == 4 and region == 0 and not offset & 3 and offset < REG_BLOCK_SIZE:
                self._set_register_dword(offset, int.from_bytes(data[_READ_SIZE:], "little"),
                                         True)
            else:
                self._device_write(region, offset, data[_READ_SIZE:])
        except Exception as err:            # noqa: BLE001 - answered as handle() would
            r = self._fast_error(Request(msg_id, _WRITE_CMD, flags, data[HEADER_SIZE:]), err)
            return [] if r is None else [r]
        if flags:                           # NO_REPLY (a posted write)
            return []
        return [_READ_MSG.pack(msg_id, _WRITE_CMD, _READ_SIZE, _REPLY_FLAG, 0, offset, region,
                               count)]

    def _fast_read(self, msg_id: int, offset: int, region: int, count: int,
                   data: bytes) -> bytes:
        """A hot-path REGION_READ that is not one register (``receive_data`` checked
        the rest); an error is answered here (a retry would count the message twice)."""
        try:
            value = self._device_read(region, offset, count)
        except Exception as err:            # noqa: BLE001 - answered as handle() would
            return self._fast_error(Request(msg_id, _READ_CMD, 0, data[HEADER_SIZE:]), err)
        return _READ_MSG.pack(msg_id, _READ_CMD, _READ_SIZE + count, _REPLY_FLAG, 0, offset,
                              region, count) + value

    def _fast_error(self, req: Request, err: Exception) -> bytes | None:
        """The error reply ``handle`` gives: the errno of a QemuDeviceError, EIO (and
        the traceback logged) for anything else.  Never a retry: the message counted."""
        if not isinstance(err, QemuDeviceError):
            log.error("msg %d %s: internal error", req.msg_id, command_name(req.command),
                      exc_info=err)
            err = LocalProtocolError(f"internal error: {err!r}", errno=errno.EIO)
        return self._error(req, err)

    def handle(self, ev: Request | BadMessage) -> bytes | None:
        """The reply bytes for one parsed message (an errno reply for a bad one), or None
        for a NO_REPLY message.  Never raises: a handler bug becomes an EIO reply.  Every
        message and reply is logged to the sink with its real errno."""
        self.counts["messages"] += 1
        code = 0
        try:
            if ev.__class__ is BadMessage:
                raise ev.error
            if ev.fds and ev.command not in _FD_COMMANDS:
                raise _bad(f"{len(ev.fds)} fds on {command_name(ev.command)}")
            if self.sink is not None:
                self._log_request(ev)
            self.conn.check_allowed(ev)
            if self.device.faults.any_command:
                code = self.device.faults.on_command(ev.command)
                if code is not None:
                    raise DeviceError("injected fault", errno=code, msg_id=ev.msg_id)
            if ev.command in _UNSUPPORTED:
                raise _bad(f"{command_name(ev.command)} not supported", errno.ENOTSUP)
            reply = self.conn.reply(ev, self._table[ev.command](ev))
        except QemuDeviceError as err:
            code = err.errno
            reply = self._error(ev, err)
        except Exception as err:            # a bug here must not kill the server
            log.exception("msg %d %s: internal error", ev.msg_id, command_name(ev.command))
            code = errno.EIO
            reply = self._error(ev, LocalProtocolError(f"internal error: {err!r}",
                                                       errno=errno.EIO))
        finally:
            if ev.fds:
                self._close_fds(ev.take_fds())
        if self.sink is not None and reply is not None:
            self.sink({"event": "tx", "id": ev.msg_id, "cmd": command_name(ev.command),
                       "msg_size": len(reply), "error": code})
        return reply

    def _close_fds(self, fds) -> None:
        for fd in fds:
            self.fds.close(fd)

    def _error(self, ev, err: QemuDeviceError) -> bytes | None:
        self.counts["errors"] += 1
        if isinstance(ev, BadMessage):
            self.counts["bad_messages"] += 1
        fatal = getattr(err, "fatal", False)
        log.info("msg %d %s: %s%s", ev.msg_id, command_name(ev.command), err,
                 " (fatal)" if fatal else "")
        reply = self.conn.reply_error(ev, err.errno)
        if self.sink is not None:
            self.sink({"event": "error", "id": ev.msg_id, "cmd": command_name(ev.command),
                       "errno": err.errno, "code": err.code, "message": err.message,
                       "fatal": fatal, "replied": reply is not None})
        return reply

    def _log_request(self, req: Request) -> None:
        ev = {"event": "rx", "id": req.msg_id, "cmd": command_name(req.command),
              "msg_size": HEADER_SIZE + len(req.payload), "hdr_flags": req.flags,
              "nfds": len(req.fds)}
        ev.update(describe_payload(req.command, req.payload))
        self.sink(ev)

    def close(self) -> tuple[int, int]:
        """The peer went away: drop its maps and eventfds."""
        self._close_fds(self.conn.pending_fds())
        self.conn.transition(Transition.PEER_CLOSED)
        return self.device.client_gone()

    # -- handlers ----------------------------------------------------------------------
    def _version(self, req: Request) -> bytes:
        p = req.payload
        if len(p) < Version.STRUCT.size + 1:
            raise _bad("VERSION payload too short")
        v = Version.unpack(p)
        if v.major != 0:
            raise _bad(f"VERSION major {v.major} not supported", errno.ENOTSUP)
        text = bytes(p[Version.STRUCT.size:]).split(b"\0", 1)[0]
        try:
            caps = json.loads(text.decode()) if text else {}
        except (UnicodeDecodeError, ValueError) as err:
            raise _bad(f"VERSION capabilities are not JSON: {err}") from err
        if not isinstance(caps, dict):
            raise _bad("VERSION capabilities are not an object")
        self.conn.transition(Transition.VERSION_NEGOTIATED)
        return Version(0, 0).pack() + SERVER_CAPS_JSON.encode() + b"\0"

    def _dma_map(self, req: Request) -> bytes:
        m = _fixed(req, DmaMap, "DMA_MAP")
        if len(req.fds) > 1:
            raise _bad(f"DMA_MAP with {len(req.fds)} fds")
        fds = req.take_fds()
        self.device.dma.add(m.addr, m.size, m.flags, m.offset, fds[0] if fds else None)
        return b""

    def _dma_unmap(self, req: Request) -> bytes:
        m = _fixed(req, DmaUnmap, "DMA_UNMAP")
        if m.flags == DmaUnmapFlags.VFIO_DMA_UNMAP_FLAG_ALL:
            if m.addr or m.size:
                raise _bad("DMA_UNMAP ALL with a range")
            self.device.dma.clear()
        elif m.flags:
            raise _bad(f"DMA_UNMAP flags {m.flags:#x} not supported", errno.ENOTSUP)
        else:
            self.device.dma.remove_range(m.addr, m.size)
        return b""

    def _get_info(self, req: Request) -> bytes:
        _fixed(req, DeviceInfo, "DEVICE_GET_INFO")
        flags, regions, irqs = self.device.info()
        return DeviceInfo(DeviceInfo.STRUCT.size, flags, regions, irqs).pack()

    def _region_info(self, req: Request) -> bytes:
        r = _fixed(req, RegionInfo, "GET_REGION_INFO")
        flags, size = self.device.region_info(r.index)
        return RegionInfo(RegionInfo.STRUCT.size, flags, r.index, 0, size, 0).pack()

    def _irq_info(self, req: Request) -> bytes:
        r = _fixed(req, IrqInfo, "GET_IRQ_INFO")
        flags, count = self.device.irq_info(r.index)
        return IrqInfo(IrqInfo.STRUCT.size, flags, r.index, count).pack()

    def _set_irqs(self, req: Request) -> bytes:
        s, dtype, action, data = self._check_set_irqs(req)
        msix = self.device.msix
        if s.count == 0:
            if s.index == _MSIX:
                msix.disable_all()
            return b""
        if action != _TRIGGER:
            if s.index != _MSIX or not self.device.maskable or dtype == _EVENTFD:
                raise _bad(f"SET_IRQS {'MASK' if action == _MASK else 'UNMASK'} of index "
                           f"{s.index} flags {s.flags:#x}: not maskable that way")
            msix.set_masked(s.start, s.count, action == _MASK,
                            data if dtype == _BOOL else None)
        elif dtype == _EVENTFD and req.fds:
            if not all(self.fds.is_eventfd(fd) for fd in req.fds):
                raise _bad("SET_IRQS fd that is not an eventfd")
            fds = req.take_fds()
            try:
                msix.assign(s.start, fds)
            except BaseException:
                self._close_fds(fds)
                raise
        elif dtype == _EVENTFD:
            msix.deassign(s.start, s.count)
        else:
            msix.trigger(s.start, s.count, data if dtype == _BOOL else None)
        return b""

    def _check_set_irqs(self, req: Request) -> tuple[IrqSet, int, int, bytes]:
        """Decode and validate a SET_IRQS: (fixed part, data type, action, bool data)."""
        p = req.payload
        if len(p) < IrqSet.STRUCT.size:
            raise _bad("SET_IRQS payload too short")
        s = IrqSet.unpack(p)
        data = bytes(p[IrqSet.STRUCT.size:])
        dtype, action = s.flags & IRQ_SET_DATA_TYPE_MASK, s.flags & IRQ_SET_ACTION_TYPE_MASK
        if s.argsz < IrqSet.STRUCT.size or s.flags & ~0x3F:
            raise _bad(f"SET_IRQS argsz {s.argsz} flags {s.flags:#x}")
        if dtype not in (_NONE, _BOOL, _EVENTFD) or action not in (_MASK, _UNMASK, _TRIGGER):
            raise _bad(f"SET_IRQS flags {s.flags:#x}: need one data type and one action")
        _, nirq = self.device.irq_info(s.index)
        nfds = len(req.fds)
        if nfds and (dtype != _EVENTFD or nfds != s.count):
            raise _bad(f"SET_IRQS with {nfds} fds for count {s.count} flags {s.flags:#x}")
        if nfds > MAX_MSG_FDS:
            raise _bad(f"SET_IRQS with {nfds} fds > {MAX_MSG_FDS}")
        if dtype == _BOOL and len(data) != s.count:
            raise _bad(f"SET_IRQS DATA_BOOL with {len(data)} bytes for count {s.count}")
        if dtype != _BOOL and data:
            raise _bad("SET_IRQS with trailing data")
        if s.count == 0 and (dtype != _NONE or action != _TRIGGER or s.start != 0):
            raise _bad("SET_IRQS count 0 is only NONE|TRIGGER at start 0")
        if s.start + s.count > nirq:
            raise _bad(f"SET_IRQS index {s.index} vectors {s.start}+{s.count} > {nirq}")
        return s, dtype, action, data

    def _region_read(self, req: Request) -> bytes:
        p = req.payload
        if len(p) != _RA_SIZE:
            raise _bad(f"REGION_READ payload is {len(p)} bytes, expected {_RA_SIZE}")
        offset, region, count = _RA.unpack_from(p, 0)
        if count > MAX_DATA_XFER_SIZE:
            raise _bad(f"REGION_READ count {count} too large", errno.E2BIG)
        return p + self.device.region_read(region, offset, count)

    def _region_write(self, req: Request) -> bytes:
        p = req.payload
        if len(p) < _RA_SIZE:
            raise _bad("REGION_WRITE payload too short")
        offset, region, count = _RA.unpack_from(p, 0)
        if len(p) != _RA_SIZE + count:
            raise _bad(f"REGION_WRITE count {count} but {len(p) - _RA_SIZE} data bytes")
        self.device.region_write(region, offset, bytes(p[_RA_SIZE:]))
        return p[:_RA_SIZE]

    def _write_multi(self, req: Request) -> bytes:
        p = req.payload
        one = WriteMultiOne.STRUCT
        if len(p) < WRITE_MULTI_COUNT.size:
            raise _bad("REGION_WRITE_MULTI payload too short")
        (n,) = WRITE_MULTI_COUNT.unpack_from(p, 0)
        if not 0 < n <= WRITE_MULTI_MAX or len(p) != WRITE_MULTI_COUNT.size + n * one.size:
            raise _bad(f"REGION_WRITE_MULTI of {n} entries in {len(p)} bytes")
        writes = [one.unpack_from(p, WRITE_MULTI_COUNT.size + i * one.size)
                  for i in range(n)]
        if any(not 0 < c <= 8 for _, _, c, _ in writes):
            raise _bad("REGION_WRITE_MULTI entry count not in 1..8")
        for offset, region, count, data in writes:
            self.device.region_write(region, offset, data[:count])
        return b""

    def _reset(self, req: Request) -> bytes:
        if req.payload:
            raise _bad("DEVICE_RESET with a payload")
        self.device.reset()
        return b""


_DESCRIBE = {C.VFIO_USER_DMA_MAP: DmaMap, C.VFIO_USER_DMA_UNMAP: DmaUnmap,
             C.VFIO_USER_DEVICE_GET_REGION_INFO: RegionInfo,
             C.VFIO_USER_DEVICE_GET_IRQ_INFO: IrqInfo, C.VFIO_USER_DEVICE_SET_IRQS: IrqSet,
             C.VFIO_USER_REGION_READ: RegionAccess, C.VFIO_USER_REGION_WRITE: RegionAccess}


def describe_payload(command: int, payload: bytes) -> dict:
    """Decoded fields of a request payload, for the event log (best effort)."""
    cls = _DESCRIBE.get(command)
    out: dict = {}
    try:
        if cls is not None and len(payload) >= cls.STRUCT.size:
            msg = cls.unpack(payload)
            out = {f.name: getattr(msg, f.name) for f in fields(msg)}
            if command == C.VFIO_USER_REGION_WRITE:
                out["data"] = bytes(payload[_RA_SIZE:_RA_SIZE + 8]).hex()
        elif command == C.VFIO_USER_VERSION and len(payload) >= 4:
            out = {"caps": bytes(payload[4:]).split(b"\0", 1)[0].decode(errors="replace")}
    except Exception:     # never let the log break the protocol   # noqa: BLE001
        return {}
    return out
