"""Ping-pong echo server: python -m bench.pingpong SOCKET.

Concepts: the floor for the REGION_READ benchmark: a raw UNIX-socket echo server in
Python that answers each 32-byte request with a 36-byte reply, as the device server
does for a 4-byte REGION_READ, but with no parsing, no dispatch and no selector.
"""

import os
import socket
import sys

REPLY_EXTRA = b"\0\0\0\0"


def serve(path: str) -> None:
    """Listen on ``path``, print ``ready``, then answer each read from the one client with it
    plus 4 bytes, until it closes."""
    if os.path.exists(path):
        os.unlink(path)
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ls.bind(path)
    ls.listen(1)
    print("ready", flush=True)
    conn, _ = ls.accept()
    recv, send = conn.recv, conn.send
    while True:
        data = recv(4096)
        if not data:
            break
        send(data + REPLY_EXTRA)
    conn.close()
    ls.close()
    os.unlink(path)


if __name__ == "__main__":
    serve(sys.argv[1])
