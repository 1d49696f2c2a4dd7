"""``report.html``: one self-contained page to look at a run rather than read its JSON.

Concepts: the page loads nothing (no script, font, stylesheet or image from anywhere:
the CSS is inline and the pictures are inline SVG), so it opens from a CI artifact or a
mail attachment as well as from disk.  Top to bottom: the verdict banner (outcome, exit
code, summary, counts) and the run id; the provenance (kernel release, config hash, QEMU,
msixlab commit, seed) with the one-line reproduce command; the evidence of a verdict no
check holds (a splat's console lines, a driver call's errno); the routing map and the
interrupt timeline (pictures.py); every check with its evidence, failures first; the
scenario's steps; and a relative link to each log in the run directory.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from agent.host.results import pictures
from agent.host.results.model import RunResult
from agent.host.results.timeline import Timeline

_BANNER = {0: ("pass", "PASS"), 1: ("fail", "FAIL")}
_ORDER = {"fail": 0, "pass": 2, "skip": 3}

CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#1f2328;
 background:#fff;font-size:14px;line-height:1.4}
main{max-width:1100px;margin:0 auto;padding:18px 24px 40px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;
 border-bottom:1px solid #d8dee4;padding-bottom:4px}
.banner{border-radius:8px;padding:14px 18px;margin:10px 0 16px;color:#fff}
.banner.pass{background:#1a7f37}.banner.fail{background:#cf222e}.banner.infra{background:#9a6700}
.banner .big{font-size:20px;font-weight:700}.banner .meaning{opacity:.9}
.muted{color:#656d76} code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;
 font-size:12.5px} pre{background:#f6f8fa;border:1px solid #d8dee4;border-radius:6px;
 padding:8px 10px;overflow-x:auto;margin:4px 0;white-space:pre-wrap;word-break:break-all}
table{border-collapse:collapse;width:100%} th,td{text-align:left;padding:3px 8px;
 border-bottom:1px solid #eaeef2;vertical-align:top} th{background:#f6f8fa;font-weight:600}
table.kv th{width:160px;background:none;color:#656d76;font-weight:500}
.v{font-weight:700;font-size:12px;border-radius:4px;padding:1px 6px;color:#fff}
.v.pass{background:#1a7f37}.v.fail{background:#cf222e}.v.skip{background:#8c959f}
tr.fail td{background:#fff5f5}
.legend{display:flex;flex-wrap:wrap;gap:6px 18px;margin:6px 0 0;font-size:12.5px}
.legend span.sw{display:inline-block;width:12px;height:12px;border-radius:2px;
 vertical-align:-2px;margin-right:5px}
.legend span.sw.freed{background:repeating-linear-gradient(45deg,#c8ccd0 0 2px,#eef0f2 2px 4px)}
.legend span.sw.pending{border-radius:6px}.legend span.sw.fail{background:none;
 border:2px solid #d62728;width:9px;height:9px}
.pic svg{max-width:100%;height:auto}
.pic{overflow-x:auto;border:1px solid #eaeef2;border-radius:6px;padding:8px}
ul.logs{columns:3;padding-left:18px}
"""


def _e(value: Any) -> str:
    return escape(str(value))


def _banner(run: RunResult) -> str:
    verdict = run.verdict
    cls, word = _BANNER.get(verdict.exit_code, ("infra", "COULD NOT JUDGE"))
    counts = run.counts()
    declared = verdict.counts.get("declared")
    tally = (f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped"
             + (f" of {declared} declared" if declared else ""))
    faults = "".join(f"<div>device fault armed on purpose: <code>{_e(json.dumps(f))}</code></div>"
                     for f in verdict.faults_armed)
    outcome = "" if verdict.outcome == "pass" else f" &middot; {_e(verdict.outcome)}"
    return (f'<div class="banner {cls}"><div class="big">{word} &middot; exit '
            f'{verdict.exit_code}{outcome}</div>'
            f'<div>{_e(verdict.summary)}</div><div class="meaning">{_e(verdict.meaning)}'
            f'{" &middot; " if verdict.meaning else ""}{tally}</div>{faults}</div>')


def _provenance(run: RunResult) -> str:
    meta = run.metadata
    rows = [(label, value) for label, value in run.provenance.items() if label != "reproduce"]
    rows += [(label, meta[key]) for label, key in (("flavor", "flavor"), ("accelerator", "accel"),
                                                   ("vectors", "vectors"), ("CPUs", "cpus"))
             if key in meta]
    rows.append(("started", run.started.strftime("%Y-%m-%d %H:%M:%S UTC")))
    if "wall_seconds" in meta:
        rows.append(("wall time", f"{meta['wall_seconds']} s"))
    for stall in meta.get("boot_stalls") or ():      # a boot set aside and booted again
        rows.append((f"boot {stall.get('attempt')} stalled",
                     f"{stall.get('reason')} (logs in {stall.get('logs')}/)"))
    body = "".join(f"<tr><th>{_e(k)}</th><td><code>{_e(v)}</code></td></tr>" for k, v in rows)
    return (f'<table class="kv">{body}</table><h3 style="font-size:14px;margin:12px 0 2px">'
            f'Reproduce</h3><pre>{_e(run.provenance.reproduce)}</pre>')


def _verdict_evidence(run: RunResult) -> str:
    if run.checks_hold_verdict or not run.verdict.evidence:
        return ""
    evidence = dict(run.verdict.evidence)
    console = evidence.pop("console", None)
    out = f"<h2>Why the run ended</h2><pre>{_e(json.dumps(evidence, indent=2, default=str))}</pre>"
    if console:
        out += f"<h3 style='font-size:14px'>Console</h3><pre>{_e(console)}</pre>"
    return out


def _map_section(run: RunResult) -> str:
    svg = pictures.routing_map(run)
    if not svg:
        return "<h2>Routing map</h2><p class='muted'>The run recorded no routing records.</p>"
    items = []
    for kind, colour, text in pictures.legend(run):
        style = f' style="background:{colour}"' if kind in ("swatch", "pending") else ""
        items.append(f'<span><span class="sw {kind}"{style}></span>{_e(text)}</span>')
    return ("<h2>Routing map</h2><p class='muted'>Each MSI-X table entry at the end of the run: "
            "its state in the table row, and below it the CPU its message targets, with the "
            "interrupts counted there. Hover a cell for its record.</p>"
            f"<div class='pic'>{svg}</div><div class='legend'>{''.join(items)}</div>")


def _timeline_section(timeline: Timeline) -> str:
    svg = pictures.timeline_svg(timeline)
    if not svg:
        return ("<h2>Interrupt timeline</h2><p class='muted'>The device's event log holds no "
                "interrupt events.</p>")
    keys = [("raise (host, control socket)", pictures.SOURCE_COLOURS["control"], "tick"),
            ("raise (guest, ICS doorbell)", pictures.SOURCE_COLOURS["ics"], "tick"),
            ("pending", pictures.PENDING, "bar"), ("delivered", "#2ca02c", "dot"),
            ("dropped", pictures.FAIL, "x"), ("eventfd assigned", "#76b7b2", "tri"),
            ("eventfd removed", "#9aa3ab", "tri")]
    items = "".join(f'<span><span class="sw" style="background:{c}"></span>{_e(t)}</span>'
                    for t, c, _ in keys)
    note = (f"<p class='muted'>{timeline.bad_lines} unreadable line(s) in the event log were "
            "skipped.</p>" if timeline.bad_lines else "")
    return ("<h2>Interrupt timeline</h2><p class='muted'>From the device's event log: each raise, "
            "how long it waited pending, and its delivery, per vector.</p>"
            f"<div class='pic'>{svg}</div><div class='legend'>{items}</div>{note}")


def _checks_section(run: RunResult) -> str:
    checks = sorted(run.checks(), key=lambda c: _ORDER.get("fail" if c.failed else c.verdict, 1))
    counts = run.counts()
    rows = []
    for check in checks:
        cls = "fail" if check.failed else check.verdict
        shown = json.dumps(dict(check.evidence), indent=2, sort_keys=True, default=str)
        evidence = f"<pre>{_e(shown)}</pre>" if check.evidence else ""
        rows.append(f'<tr class="{cls}"><td><span class="v {cls}">{_e(check.verdict.upper())}'
                    f'</span></td><td>{_e(check.step)}</td><td><code>{_e(check.test_name)}</code>'
                    f'</td><td>{_e(check.summary)}{evidence}</td></tr>')
    if not rows:
        return "<h2>Checks</h2><p class='muted'>No check ran.</p>"
    return (f"<h2>Checks</h2><p class='muted'>{counts['total']} results: {counts['fail']} failed "
            f"(listed first), {counts['pass']} passed, {counts['skip']} skipped.</p>"
            "<table><tr><th style='width:70px'>verdict</th><th style='width:210px'>step</th>"
            f"<th>check</th><th>summary and evidence</th></tr>{''.join(rows)}</table>")


def _steps_section(run: RunResult) -> str:
    steps = [s for s in run.metadata.get("steps") or () if isinstance(s, dict)]
    if not steps:
        return ""
    rows = "".join(
        f"<tr><td>{_e(s.get('step'))}</td><td>{_e(s.get('seconds', ''))}</td><td><code>"
        f"{_e(json.dumps({k: v for k, v in s.items() if k not in ('step', 'seconds')}))}"
        "</code></td></tr>" for s in steps)
    return ("<h2>Scenario steps</h2><table><tr><th>step</th><th style='width:80px'>seconds</th>"
            f"<th>detail</th></tr>{rows}</table>")


def _logs_section(run: RunResult, extra: tuple[str, ...]) -> str:
    names = list(run.logs) + [n for n in extra if n not in run.logs]
    items = "".join(f'<li><a href="{_e(name)}">{_e(name)}</a></li>' for name in names)
    return f"<h2>Logs and results</h2><ul class='logs'>{items}</ul>"


def render(run: RunResult, timeline: Timeline, siblings: tuple[str, ...] = ()) -> str:
    """The whole page; ``siblings`` are the other result files to link (results.ktap, ...)."""
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>msixlab {_e(run.run_id)}: {_e(run.verdict.outcome)}</title>"
        f"<style>{CSS}</style></head><body><main>"
        f"<h1 id='run-id'>msixlab run {_e(run.run_id)}</h1>"
        f"<div class='muted'>kernel {_e(run.provenance.kernel_release)} &middot; QEMU "
        f"{_e(run.provenance.qemu_version)}</div>"
        f"{_banner(run)}{_provenance(run)}{_verdict_evidence(run)}{_map_section(run)}"
        f"{_timeline_section(timeline)}{_checks_section(run)}{_steps_section(run)}"
        f"{_logs_section(run, siblings)}</main></body></html>\n")
