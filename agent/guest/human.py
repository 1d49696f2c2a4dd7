"""``msixlab-guest``: the guest agent's commands for a person at the guest's shell.

Concepts: in ``msixlab shell`` the agent does not run; the driver is loaded and its groups
belong to the device, not to an open file, so each ``msixlab-guest VERB`` is one short
process that opens ``/dev/msixlab<N>``, runs one of the agent's own handlers
(``commands.Agent``, the same code the host drives) and prints the result for a person:
``alloc``, ``free``, ``raise``, ``groups`` and ``show`` (the routing table, as ``msixlab run``
prints it, from the guest's side: the host's device and QEMU columns are not visible here).
Every error is one plain line, ``msixlab-guest: VERB: ECODE: what was wrong``, and a
non-zero exit (1 for an error of the driver or the guest, 2 for a bad command line).
Standard library only (argparse is fine here: this is not on the agent's import path).
"""

from __future__ import annotations

import argparse
import errno
import os
import sys

from .commands import Agent
from .errors import AgentError, RequestError

PROG = "msixlab-guest"


class UsageError(Exception):
    """A bad command line: reported as EINVAL, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:          # one plain line, never a usage block
        raise UsageError(message)


def _int(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The verbs and their arguments."""
    parser = _Parser(prog=PROG, description="dynamic MSI-X groups on the msixlab NIC, by hand")
    parser.add_argument("--device", help="the driver's device (default: the first "
                        "/dev/msixlab<N>)")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    verbs.required = True
    alloc = verbs.add_parser("alloc", help="allocate a group of COUNT vectors")
    alloc.add_argument("count", type=_int, help="vectors wanted (the group's max)")
    alloc.add_argument("--min", type=_int, help="fewest vectors accepted (default: COUNT)")
    alloc.add_argument("--start", type=_int, help="the group's first table index")
    alloc.add_argument("--cpu", type=_int, help="the CPU its vectors are affine to")
    alloc.add_argument("--managed", action="store_true", help="managed affinity (needs --cpu)")
    free = verbs.add_parser("free", help="free a group")
    free.add_argument("group", type=_int)
    raise_ = verbs.add_parser("raise", help="ring the doorbell for a vector and wait for it")
    raise_.add_argument("index", type=_int)
    raise_.add_argument("--timeout-ms", type=_int, default=0,
                        help="how long to wait for the handler (default: the driver's 1 s)")
    verbs.add_parser("groups", help="list the allocated groups")
    show = verbs.add_parser("show", help="the routing table of the allocated vectors")
    show.add_argument("--all", action="store_true", help="every table entry, not only live ones")
    return parser


def _indices(indices: list[int]) -> str:
    """``[4, 5, 6, 9]`` -> ``4-6,9``."""
    spans: list[str] = []
    for index in indices:
        if spans and index == last + 1:
            first = spans[-1].split("-")[0]
            spans[-1] = f"{first}-{index}"
        else:
            spans.append(str(index))
        last = index
    return ",".join(spans) or "-"


def _group_line(group: dict) -> str:
    where = f", cpu {group['cpu']}" if group["cpu"] is not None else ""
    managed = " managed" if group["managed"] else ""
    return (f"group {group['group']}: {group['count']} vector(s) at {_indices(group['indices'])}"
            f"{where}{managed}")


def _apic_ids(root: str = "/") -> dict[int, int]:
    """APIC ID -> CPU number, from /proc/cpuinfo."""
    ids, cpu = {}, None
    try:
        with open(os.path.join(root, "proc/cpuinfo")) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "processor":
                    cpu = int(value)
                elif key.strip() == "apicid" and cpu is not None:
                    ids[int(value)] = cpu
    except OSError:
        pass
    return ids


def _decoded(msg: dict, apic: dict[int, int]) -> tuple[str, str]:
    """What an x86 MSI message names: (destination, CPU)."""
    address, data = msg["address_lo"], msg["data"]
    if address >> 20 != 0xFEE:
        return "none", "-"
    if address & 0x10:                              # remappable format: an IRTE handle
        handle = ((address >> 5) & 0x7FFF) | (((address >> 2) & 1) << 15)
        return f"IRTE {handle}", "-"
    dest = ((address >> 12) & 0xFF) | (((address >> 5) & 0x7F) << 8)
    cpu = apic.get(dest)
    return f"apic {dest} vec {data & 0xFF:#04x}", "-" if cpu is None else str(cpu)


def routing_lines(vectors: list[dict], table_size: int, show_all: bool,
                  entries: dict[int, dict] | None = None, apic: dict[int, int] | None = None
                  ) -> list[str]:
    """The routing table as text: one row per live vector (with ``show_all``, every table
    entry, ``entries`` giving the free ones' live table words), then a summary line."""
    apic = apic if apic is not None else {}
    header = ("idx", "grp", "irq", "address/data", "decoded", "cpu", "effective", "counts")
    rows = [header]
    live = {v["index"]: v for v in vectors}
    for index in range(table_size) if show_all else sorted(live):
        vector = live.get(index)
        if vector is None:
            entry = (entries or {}).get(index, {})
            masked = " masked" if entry.get("ctrl", 1) & 1 else " UNMASKED"
            cell = f"{entry.get('address_lo', 0):08x}/{entry.get('data', 0):04x}{masked}"
            rows.append((str(index), "-", "-", cell, "-", "-", "-", "-"))
            continue
        msg = vector["msg"]
        high = f"{msg['address_hi']:08x}:" if msg["address_hi"] else ""
        masked = " masked" if vector["table"]["ctrl"] & 1 else ""
        decoded, cpu = _decoded(msg, apic)
        per_cpu = " ".join(f"{c}:{n}" for c, n in enumerate(vector["counts"]) if n)
        counts = f"{vector['total']}" + (f" ({per_cpu})" if per_cpu else "")
        effective = ",".join(str(c) for c in vector["affinity"]["effective"]) or "-"
        rows.append((str(index), str(vector["group"]), str(vector["irq"]),
                     f"{high}{msg['address_lo']:08x}/{msg['data']:04x}{masked}", decoded, cpu,
                     effective, counts))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    right = {0, 1, 2, 5}
    lines = ["  ".join(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
                       for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.append(f"{len(live)} of {table_size} table entries live")
    return lines


def _run(agent: Agent, args: argparse.Namespace) -> list[str]:
    if args.verb == "alloc":
        if args.managed and args.cpu is None:
            raise RequestError(errno.EINVAL, "--managed needs --cpu")
        low = args.count if args.min is None else args.min
        return [_group_line(agent.alloc_group(low, args.count, args.start, args.cpu,
                                              args.managed))]
    if args.verb == "free":
        freed = agent.free_group(args.group)
        return [f"group {freed['group']} freed: {freed['freed']} vector(s)"]
    if args.verb == "raise":
        got = agent.raise_(args.index, args.timeout_ms)
        return [f"vector {got['index']} (irq {got['irq']}) counted on CPU {got['cpu']} in "
                f"{got['latency_ns'] / 1000:.0f} us; total {got['total']}"]
    if args.verb == "groups":
        return [_group_line(g) for g in agent.list_groups()] or ["no groups"]
    info = agent.info()
    entries = None
    if args.all:
        allocated = set(info["allocated"])
        entries = {i: agent.read_entry(i) for i in range(info["table_size"])
                   if i not in allocated}
    return routing_lines(agent.routing(), info["table_size"], args.all, entries, _apic_ids())


def main(argv: list[str] | None = None, out=sys.stdout, err=sys.stderr) -> int:
    """Run one verb; 0 on success, 1 on an error of the driver or the guest, 2 on a bad
    command line.  Errors are one line on ``err``."""
    argv = sys.argv[1:] if argv is None else argv
    verb = next((word for word in argv if not word.startswith("-")), "")
    try:
        args = build_parser().parse_args(argv)
    except UsageError as usage:
        print(f"{PROG}: {verb or 'usage'}: EINVAL: {usage}", file=err)
        return 2
    agent = Agent(args.device)
    try:
        for line in _run(agent, args):
            print(line, file=out)
    except AgentError as error:
        print(f"{PROG}: {args.verb}: {error.code}: {error.message}", file=err)
        return 1
    finally:
        if agent.driver is not None:
            agent.driver.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
