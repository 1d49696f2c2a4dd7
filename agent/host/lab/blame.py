"""Who failed, the rig or the kernel: the judgement of what the guest's console shows.

Concepts owned here:
- The *kernel's own report* is evidence that kernel code misbehaved: a headline the
  console patterns know (an oops, BUG, WARN, ...: console.py), a register dump of
  kernel code (``RIP: 0010:``), report letters in the taint flags a dump header shows
  (``Tainted: G D W``), report taint bits the kernel gained while the guest agent ran,
  or kernel messages at KERN_WARNING or worse logged while it ran (the last two from
  the rig's ``MSIXLAB-AGENT-EXIT`` marker).  Any of them makes the ending the kernel's
  (``KernelSplat``, exit 1).
- Everything else that goes wrong in the guest *before the guest agent's hello* is the
  rig's (``guest_setup_failed``, 125): its init reporting a failure
  (``MSIXLAB-INIT-FAILED``, ``-KMOD-FAILED``, ``-BAD-MODE``), its agent exiting (a
  truncated python3), its init dying or a root it could not mount (the kernel panics,
  naming user space: ``Attempted to kill init``, ``VFS: Unable to mount root fs``),
  the guest powering off.  The rule is the phase, not the pattern: until the hello the
  rig's user space has not proven it works, so only the kernel's own report blames the
  kernel.
- After the hello a panic is the kernel's, as is the guest powering off; the agent
  exiting with no kernel report at all is still the rig's (the agent failed).
- At the end of a run the guest agent's ``kernel_health`` (taint now, kernel messages at
  KERN_WARNING or worse since the hello) is judged against the hello's taint
  (``judge_kernel_health``): report taint gained, or a message at KERN_CRIT or worse, is
  the kernel's; KERN_ERR and KERN_WARNING messages are evidence only.
"""

from __future__ import annotations

from agent.host.lab.console import (
    ConsoleWatch,
    Marker,
    Splat,
    panic_blames_userspace,
    report_taints,
)
from agent.host.lab.machine import tail
from agent.host.verdict.outcome import CouldNotJudge, GuestUnresponsive, KernelSplat, Outcome

#: how long a panic naming user space waits for its stack dump (whose header shows the
#: taint flags) before it is judged without it; QEMU exits at once on a panic (-no-reboot)
PANIC_DUMP_WAIT_S = 3.0


def _phase(answered: bool) -> str:
    return "after the guest agent's hello" if answered else "before the guest agent's hello"


def judge_splat(watch: ConsoleWatch, splat: Splat, answered: bool) -> Exception:
    """A kernel report on the console: the kernel's, except a panic naming user space (the
    rig's init gone, no root) before the hello with no report taint in its dump."""
    console = str(watch.path)
    if splat.kind != "panic" or not panic_blames_userspace(splat.line) or answered:
        return KernelSplat(splat.line, splat.kind, console=console)
    taints = watch.report_taints
    if taints:
        return KernelSplat(splat.line, splat.kind, console=console, taints=taints,
                           message=f"the guest kernel panicked with report taint {taints} "
                           f"(it had reported a {_taint_text(taints)} before): {splat.line}")
    return CouldNotJudge(Outcome.GUEST_SETUP_FAILED,
                         f"the rig's guest user space failed {_phase(answered)} and the "
                         f"kernel panicked over it, with no kernel report: {splat.line}",
                         line=splat.line, console=console,
                         before=lines_before(watch.path, splat.lineno, 6))


def lines_before(path, lineno: int, count: int) -> str:
    """The ``count`` console lines before line ``lineno`` (1-based): what the rig's user
    space said before the kernel panicked over it."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[max(0, lineno - 1 - count):lineno - 1])


def _taint_text(letters: str) -> str:
    names = {"M": "machine check", "B": "bad page", "D": "oops or BUG", "W": "WARN",
             "L": "soft lockup"}
    return " and ".join(names[letter] for letter in letters)


def judge_marker(watch: ConsoleWatch, marker: Marker, answered: bool) -> Exception:
    """A rig failure marker: the rig's (125, with the marker's reason), unless the kernel
    reported something (report taint in a dump header, or what ``AGENT-EXIT`` says)."""
    console = str(watch.path)
    if marker.kind == "AGENT-EXIT":
        kernel = _agent_exit_kernel_evidence(watch, marker)
        if kernel is not None:
            return kernel
        return CouldNotJudge(Outcome.GUEST_SETUP_FAILED,
                             f"the guest agent exited {_phase(answered)} "
                             f"(MSIXLAB-AGENT-EXIT: {marker.reason}), with no kernel report "
                             "(taint unchanged, no kernel warning): the rig's agent failed",
                             marker=f"MSIXLAB-{marker.kind}", reason=marker.reason,
                             console=console, console_tail=tail(watch.path, 12))
    if watch.report_taints:
        return KernelSplat(f"MSIXLAB-{marker.kind}: {marker.reason}", "taint",
                           console=console, taints=watch.report_taints,
                           message=f"the rig's guest init failed ({marker.kind}: "
                           f"{marker.reason}) after the kernel reported a "
                           f"{_taint_text(watch.report_taints)}")
    return CouldNotJudge(Outcome.GUEST_SETUP_FAILED,
                         f"the rig's guest init failed {_phase(answered)}: "
                         f"MSIXLAB-{marker.kind}: {marker.reason}",
                         marker=f"MSIXLAB-{marker.kind}", reason=marker.reason,
                         console=console, console_tail=tail(watch.path, 12))


def _agent_exit_kernel_evidence(watch: ConsoleWatch, marker: Marker) -> Exception | None:
    """The kernel's report behind the agent's exit, if any: report taint bits gained while
    it ran, kernel messages at KERN_WARNING or worse meanwhile, or report taint in a dump
    header on the console."""
    fields = marker.fields()
    line = f"MSIXLAB-{marker.kind}: {marker.reason}"
    before, _, after = fields.get("tainted", "").partition("->")
    try:
        gained = report_taints(int(after) & ~int(before))
    except ValueError:
        gained = ""
    try:
        kmsg = int(fields.get("kmsg", "0"))
    except ValueError:
        kmsg = 0
    status = fields.get("status", "unknown")
    taints = gained or watch.report_taints
    if taints:
        return KernelSplat(line, "taint", console=str(watch.path), taints=taints,
                           tainted=fields.get("tainted"), kernel_warnings=kmsg,
                           message=f"the guest agent died (status {status}) and the kernel "
                           f"reported a {_taint_text(taints)} (taint {taints}) meanwhile")
    if kmsg > 0:
        return KernelSplat(line, "kernel warning", console=str(watch.path),
                           tainted=fields.get("tainted"), kernel_warnings=kmsg,
                           message=f"the guest agent died (status {status}) while the kernel "
                           f"logged {kmsg} message(s) at KERN_WARNING or worse")
    return None


def judge_qemu_exit_0(watch: ConsoleWatch, answered: bool) -> Exception:
    """QEMU exited with status 0 (the guest powered off or reset itself, -no-reboot) and
    no report or marker explains it: the kernel's after the hello, the rig's before."""
    if answered:
        return GuestUnresponsive("the guest powered off or reset by itself in the middle "
                                 "of the run (QEMU exited with status 0)",
                                 console_tail=tail(watch.path, 8))
    return CouldNotJudge(Outcome.GUEST_SETUP_FAILED,
                         "the guest powered off or reset before its agent said hello "
                         "(QEMU exited with status 0), with no kernel report",
                         console=str(watch.path), console_tail=tail(watch.path, 12))


def health_evidence(tainted_before: int | None, health: dict) -> dict:
    """The evidence of the guest agent's ``kernel_health`` answer against the hello's taint:
    the taint before and after, how many kernel messages at KERN_WARNING or worse were
    logged and the first ten (``<level> text``)."""
    warnings = health.get("warnings") or {}
    return {"tainted_before": tainted_before, "tainted_after": health.get("tainted"),
            "kernel_warnings": warnings.get("count", 0),
            "messages": [f"<{m['level']}> {m['text']}"
                         for m in warnings.get("messages", [])[:10]]}


def judge_kernel_health(evidence: dict, health: dict) -> None:
    """Raise ``KernelSplat`` when the kernel reported something during the run: report
    taint bits gained (kind ``taint``) or a message at KERN_CRIT or worse (kind
    ``kernel message``), with ``evidence`` (``health_evidence``) named."""
    before, after = evidence["tainted_before"], evidence["tainted_after"]
    gained = (report_taints(after & ~before)
              if isinstance(before, int) and isinstance(after, int) else "")
    if gained:
        raise KernelSplat(f"tainted {before} -> {after}", "taint", taints=gained,
                          message=f"the guest kernel gained report taint {gained} "
                          f"({_taint_text(gained)}) during the run "
                          f"(/proc/sys/kernel/tainted {before} -> {after})", **evidence)
    messages = (health.get("warnings") or {}).get("messages", [])
    worst = [m for m in messages if m["level"] <= 2]
    if worst:
        raise KernelSplat(worst[0]["text"], "kernel message",
                          message=f"the guest kernel logged at level {worst[0]['level']} "
                          f"(KERN_CRIT or worse) during the run: {worst[0]['text']}",
                          **evidence)
