"""``python3 -m agent.guest --port PATH | --stdio``: the guest agent's entry point.

Concepts: the only I/O of the agent.  It opens the virtio-serial port (or uses
stdin/stdout with ``--stdio``), writes the hello event, then feeds every chunk it reads
to a ``protocol.Session`` and writes back what the session returns, until ``shutdown``.
On a virtio-serial port a read of 0 bytes means the host end is not connected (yet, or
any more): the agent waits and reads again; on stdin it means the end.
"""

from __future__ import annotations

import getopt
import logging
import os
import sys
import time

from .commands import Agent
from .protocol import Session, encode

log = logging.getLogger("agent.guest")

RECONNECT_POLL_S = 0.2


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def serve(agent: Agent, read_fd: int, write_fd: int, eof_ends: bool) -> int:
    """Send the hello event on ``write_fd``, then answer requests read from ``read_fd`` until
    a ``shutdown``.  At EOF: stop if ``eof_ends`` (stdin), else wait and read again (a
    virtio-serial port whose host end is not connected).  A failed reply write is logged.
    Returns 0."""
    session = Session(agent.commands())
    _write_all(write_fd, encode(agent.hello()))
    while not session.stopped:
        data = os.read(read_fd, 1 << 16)
        if not data:
            if eof_ends:
                log.info("end of input")
                break
            time.sleep(RECONNECT_POLL_S)
            continue
        out = session.receive_data(data)
        if out:
            try:
                _write_all(write_fd, out)
            except OSError as err:
                log.error("cannot send a reply: %s", err)
    return 0


USAGE = """usage: python3 -m agent.guest (--port PATH | --stdio) [--device PATH] [-v]

msixlab guest agent (JSON lines)

  --port PATH     virtio-serial port, e.g. /dev/virtio-ports/org.msixlab.agent
  --stdio         serve stdin/stdout
  --device PATH   driver device (default: first /dev/msixlab<N>)
  -v, --verbose   trace requests
"""


class Options:
    """The parsed command line (``parse_args``)."""

    def __init__(self) -> None:
        self.port: str | None = None
        self.stdio = False
        self.device: str | None = None
        self.verbose = False


def parse_args(argv: list[str]) -> Options:
    """Parse the agent's options with ``getopt`` (argparse alone costs the guest about
    0.2 s of its start under TCG).  A usage error prints the usage and the reason on
    stderr and exits 2, as argparse would; ``-h``/``--help`` prints the usage, exits 0."""
    try:
        opts, rest = getopt.getopt(argv, "hv", ["port=", "stdio", "device=", "verbose", "help"])
        if rest:
            raise getopt.GetoptError(f"unexpected argument {rest[0]!r}")
    except getopt.GetoptError as err:
        _usage_error(str(err))
    args = Options()
    for name, value in opts:
        if name in ("-h", "--help"):
            sys.stdout.write(USAGE)
            raise SystemExit(0)
        if name == "--port":
            args.port = value
        elif name == "--stdio":
            args.stdio = True
        elif name == "--device":
            args.device = value
        else:
            args.verbose = True
    if (args.port is None) == (not args.stdio):
        _usage_error("exactly one of --port PATH and --stdio is required")
    return args


def _usage_error(reason: str) -> None:
    sys.stderr.write(USAGE.splitlines()[0] + f"\npython3 -m agent.guest: error: {reason}\n")
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    """The agent's entry point: open the driver, then serve the virtio-serial ``--port`` or
    stdin/stdout.  Returns 1 if the port cannot be opened, else ``serve``'s code."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if args.verbose else logging.INFO,
                        format="msixlab-agent: %(levelname)s %(name)s: %(message)s")

    agent = Agent(args.device)
    if agent.device_error:
        log.warning("%s", agent.device_error)
    if args.stdio:
        return serve(agent, sys.stdin.fileno(), sys.stdout.fileno(), eof_ends=True)
    try:
        fd = os.open(args.port, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        log.error("cannot open %s: %s", args.port, err.strerror)
        return 1
    try:
        return serve(agent, fd, fd, eof_ends=False)
    finally:
        os.close(fd)


if __name__ == "__main__":
    sys.exit(main())
