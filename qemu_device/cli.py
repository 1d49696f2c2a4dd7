"""qemu-device command line: serve, ctl, log.

Concepts: the command line. `serve` runs the device server and prints one JSON ready
line once both sockets listen; `ctl` sends one control request and prints the reply
(a table for state, JSON lines for subscribe); `log` prints an event log readably.
This is the only module that prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys

from msixlab_common import jsonlines
from msixlab_common.argtypes import bounded_float, bounded_int

from .errors import ConfigurationError
from .server import Limits

SHARED = "shared"


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qemu-device",
                                description="vfio-user server emulating a PCIe NIC with MSI-X")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the device server")
    s.add_argument("--socket", required=True, help="vfio-user socket path to listen on")
    s.add_argument("--vectors", type=bounded_int("--vectors", 1, 2048), default=64,
                   help="MSI-X vectors (1..2048)")
    s.add_argument("--control", help="control socket path (JSON lines)")
    s.add_argument("--log", help="event log path (JSON lines, appended)")
    s.add_argument("--msix-layout", choices=["own", SHARED], default="own",
                   help="own: table in BAR2, PBA in BAR4 (default); shared: both in BAR0")
    s.add_argument("--table-bar", type=bounded_int("--table-bar", 0, 5),
                   help="MSI-X table BIR (overrides the layout)")
    s.add_argument("--table-offset", type=bounded_int("--table-offset", 0, 2**32 - 1),
                   help="MSI-X table offset in its BAR")
    s.add_argument("--pba-bar", type=bounded_int("--pba-bar", 0, 5),
                   help="PBA BIR (overrides the layout)")
    s.add_argument("--pba-offset", type=bounded_int("--pba-offset", 0, 2**32 - 1),
                   help="PBA offset in its BAR")
    s.add_argument("--msix-maskable", action="store_true",
                   help="advertise VFIO_IRQ_INFO_MASKABLE on MSI-X (per-vector SET_IRQS "
                        "MASK/UNMASK)")
    s.add_argument("--msix-noresize", action="store_true",
                   help="advertise VFIO_IRQ_INFO_NORESIZE on MSI-X (QEMU re-enables all "
                        "vectors on every growth)")
    s.add_argument("--pm", action="store_true",
                   help="a PCI Power Management capability: D3hot, No_Soft_Reset clear "
                        "(docs/device.md: a bus reset then waits for a link QEMU never "
                        "reports)")
    s.add_argument("--message-timeout", type=bounded_float("--message-timeout", 0.0, 86400.0),
                   default=Limits.message_timeout,
                   metavar="S", help="drop a vfio-user client that takes longer than S s to "
                   "finish a message it began, or to send VERSION (0: never; default "
                   "%(default)g; QEMU's own reply timeout is 5 s)")
    s.add_argument("--idle-timeout", type=bounded_float("--idle-timeout", 0.0, 86400.0),
                   default=Limits.idle_timeout, metavar="S",
                   help="drop a vfio-user client that sends nothing for S s (default 0: "
                   "never, QEMU may idle)")
    s.add_argument("--max-control-clients", type=bounded_int("--max-control-clients", 1, 1024),
                   default=Limits.max_control_clients,
                   metavar="N", help="control clients served at once (default %(default)d)")
    s.add_argument("--log-level", default=os.environ.get("QEMU_DEVICE_LOG_LEVEL", "WARNING"))
    c = sub.add_parser("ctl", help="send a control request")
    c.add_argument("--control", required=True, help="control socket path")
    c.add_argument("--json", action="store_true", help="print raw JSON replies")
    c.add_argument("--timeout", type=bounded_float("--timeout", 0.1, 3600.0), default=10.0,
                   help="seconds to wait for the reply (default %(default)g)")
    c.add_argument("request", nargs="+",
                   help="state | raise V [V...] | reset_counters | subscribe [KIND...] | "
                        "fault KIND [key=value...] | faults | clear_faults [ID] | ping")
    lg = sub.add_parser("log", help="print an event log readably")
    lg.add_argument("path")
    lg.add_argument("--kind", action="append", help="only these event kinds")
    return p


def _layout(args):
    from .device.msix import MsixLayout
    from .device.nic import shared_layout
    base = shared_layout(args.vectors) if args.msix_layout == SHARED else MsixLayout(args.vectors)
    over = {k: v for k, v in (("table_bar", args.table_bar), ("table_offset", args.table_offset),
                              ("pba_bar", args.pba_bar), ("pba_offset", args.pba_offset))
            if v is not None}
    return MsixLayout(**{**base.__dict__, **over})


def cmd_serve(args) -> int:
    """`serve`: build the device from the options, listen on the vfio-user and control
    sockets, print the JSON ready line, then serve until SIGTERM, SIGINT or SIGHUP.  Returns
    0, or 2 when the device options are inconsistent (the reason goes to stderr)."""
    from .device.nic import Device
    from .fdio import OsFdPort
    from .server import Server
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        device = Device(_layout(args), fds=OsFdPort(), maskable=args.msix_maskable,
                        noresize=args.msix_noresize, pm=args.pm)
    except ConfigurationError as err:
        print(f"qemu-device: {err}", file=sys.stderr)
        return 2
    _raise_fd_limit()
    limits = Limits(max_control_clients=args.max_control_clients,
                    message_timeout=args.message_timeout, idle_timeout=args.idle_timeout)
    server = Server(device, args.socket, args.control, args.log, limits)
    server.install_signal_handlers()
    server.bind()
    print(json.dumps({"event": "ready", "socket": args.socket, "control": args.control,
                      "pid": os.getpid()}), flush=True)
    server.serve_forever()
    return 0


class UsageError(ValueError):
    """A `ctl` request that cannot be built from its words."""


def _word_int(what: str, word: str) -> int:
    try:
        return int(word, 0)
    except ValueError:
        raise UsageError(f"{what} must be an integer (decimal or 0x...), not {word!r}") \
            from None


def _raise_fd_limit() -> None:
    """Let the server use every fd it is allowed (soft RLIMIT_NOFILE up to the hard one,
    at most 65536): each DMA map with an fd holds one."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as err:
            logging.getLogger(__name__).info("cannot raise RLIMIT_NOFILE: %s", err)


def _parse_request(words: list[str]) -> dict:
    """The control request that ``qemu-device ctl WORDS`` sends; UsageError if the words
    do not make one."""
    cmd, rest = words[0], words[1:]
    req: dict = {"id": 1, "cmd": cmd}
    if cmd == "raise":
        if not rest:
            raise UsageError("raise needs at least one vector: raise V [V...]")
        req["vectors"] = [_word_int("a vector", w) for w in rest]
    elif cmd == "subscribe" and rest:
        req["events"] = rest
    elif cmd == "fault":
        if not rest:
            raise UsageError("fault needs a kind: fault KIND [key=value...]")
        req["kind"] = rest[0]
        for kv in rest[1:]:
            k, eq, v = kv.partition("=")
            if not eq or not k:
                raise UsageError(f"fault fields are key=value, not {kv!r}")
            try:
                req[k] = int(v, 0)
            except ValueError:
                req[k] = v
    elif cmd == "clear_faults" and rest:
        if len(rest) > 1:
            raise UsageError("clear_faults takes at most one fault id")
        req["fault"] = _word_int("a fault id", rest[0])
    elif rest:
        raise UsageError(f"{cmd} takes no arguments, got {' '.join(rest)!r}")
    return req


def cmd_ctl(args) -> int:
    """`ctl`: send one control request and print its reply (a table for a successful
    `state` unless --json, JSON otherwise); `subscribe` prints events until the server closes
    or Ctrl-C.  Returns 0, 1 when there is no reply or it is not JSON we accept, 2 for a bad
    request on the command line."""
    try:
        req = _parse_request(args.request)
    except UsageError as err:
        print(f"qemu-device ctl: {err}", file=sys.stderr)
        return 2
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(args.timeout)
        s.connect(args.control)
        s.sendall(jsonlines.dumps(req))
        f = s.makefile("rb")
        if req["cmd"] == "subscribe":
            s.settimeout(None)
            try:
                for line in f:
                    print(line.decode(errors="replace").rstrip(), flush=True)
            except KeyboardInterrupt:
                pass
            return 0
        line = f.readline(1 << 24)
    if not line:
        print("qemu-device: no reply", file=sys.stderr)
        return 1
    try:
        reply = jsonlines.loads_object(line, max_depth=64)
    except jsonlines.JsonLinesError as err:
        print(f"qemu-device: the server's reply is not JSON we accept: {err}", file=sys.stderr)
        return 1
    if args.json or not reply.get("ok") or req["cmd"] != "state":
        print(json.dumps(reply, indent=None if args.json else 2))
    else:
        _print_state(reply["result"])
    return 0 if reply.get("ok") else 1


def _print_state(st: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    con = Console()
    m = st["msix"]
    con.print(f"[bold]MSI-X[/] {m['table_size']} vectors, enabled={m['enabled']} "
              f"function_mask={m['function_mask']} table=BAR{m['table_bar']}+"
              f"{m['table_offset']:#x} pba=BAR{m['pba_bar']}+{m['pba_offset']:#x}")
    con.print(f"client_connected={st.get('client_connected')} bus_master={st['bus_master']} "
              f"dma_maps={len(st['dma_maps'])} resets={st['resets']} errors={st['errors']}")
    t = Table("vector", "eventfd", "raised", "delivered", "pending", "dropped")
    for v in st["vectors"]:
        if v["eventfd"] or v["raised"] or v["pending"]:
            t.add_row(str(v["index"]), "yes" if v["eventfd"] else "-", str(v["raised"]),
                      str(v["delivered"]), "PENDING" if v["pending"] else "-",
                      str(v["dropped"]))
    con.print(t)
    if st.get("faults"):
        con.print(f"faults: {st['faults']}")


def cmd_log(args) -> int:
    """`log`: print the event log at ``args.path`` one readable line per event, times
    relative to the first event, only the kinds in ``--kind`` if given.  Returns 0."""
    from rich.console import Console
    from .eventlog import format_event, read_log
    con = Console(highlight=False)
    t0 = None
    for ev in read_log(args.path):
        if t0 is None and isinstance(ev.get("mono"), (int, float)):
            t0 = ev["mono"]
        if args.kind and ev.get("event") not in args.kind:
            continue
        rel, kind, details = format_event(ev, t0)
        con.print(f"{rel} [bold]{kind:<16}[/] {details}", markup=True, soft_wrap=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The qemu-device entry point: run one subcommand and return its exit code (1 for
    an OS or configuration error, 130 on Ctrl-C)."""
    args = _build_parser().parse_args(argv)
    try:
        return {"serve": cmd_serve, "ctl": cmd_ctl, "log": cmd_log}[args.command](args)
    except (OSError, ConfigurationError) as err:
        print(f"qemu-device: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
