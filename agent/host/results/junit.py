"""``junit.xml``: the run as JUnit XML, the format CI systems publish as test reports.

Concepts: one ``<testsuite>`` per scenario step, one ``<testcase>`` per check
(``classname`` ``msixlab.<step>``, ``name`` ``check[index]``).  A failed check carries a
``<failure>`` whose message is its summary and whose text is its evidence as JSON; a
skipped one ``<skipped>``.  A run that ended for a reason no check holds adds a suite
``run`` with a test case ``verdict``: a ``<failure>`` when the kernel misbehaved (exit 1),
an ``<error>`` when the run could not judge (125), with the evidence and, for a console
splat, the console lines in ``<system-out>``.  Every suite carries the provenance as
``<properties>``.  Written with the standard library's ElementTree (escaping included).
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

from agent.host.results.model import RunResult, Step

# XML 1.0 forbids most control characters, even escaped.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _x(text: object) -> str:
    return _NOT_XML.sub("?", str(text))


def _properties(parent: ET.Element, run: RunResult) -> None:
    props = ET.SubElement(parent, "properties")
    pairs = [("run_id", run.run_id), *run.provenance.as_dict().items(),
             ("outcome", run.verdict.outcome), ("exit_code", run.verdict.exit_code)]
    for name, value in pairs:
        ET.SubElement(props, "property", name=name, value=_x(value))


def _suite(root: ET.Element, run: RunResult, name: str, cases: int, failures: int,
           errors: int, skipped: int) -> ET.Element:
    suite = ET.SubElement(root, "testsuite", name=_x(name), tests=str(cases),
                          failures=str(failures), errors=str(errors), skipped=str(skipped),
                          timestamp=run.started.strftime("%Y-%m-%dT%H:%M:%S"),
                          hostname="msixlab-guest")
    _properties(suite, run)
    return suite


def _step_suite(root: ET.Element, run: RunResult, step: Step) -> None:
    failures = sum(c.failed for c in step.checks)
    skipped = sum(c.verdict == "skip" for c in step.checks)
    suite = _suite(root, run, step.name, len(step.checks), failures, 0, skipped)
    for check in step.checks:
        case = ET.SubElement(suite, "testcase", classname=_x(f"msixlab.{step.name}"),
                             name=_x(check.test_name), time="0")
        if check.verdict == "skip":
            ET.SubElement(case, "skipped", message=_x(check.summary))
        elif check.failed:
            failure = ET.SubElement(case, "failure", type=_x(check.verdict),
                                    message=_x(check.summary or check.verdict))
            failure.text = _x(json.dumps(dict(check.evidence), indent=2, sort_keys=True))


def _verdict_suite(root: ET.Element, run: RunResult) -> None:
    verdict = run.verdict
    error = verdict.exit_code == 125
    suite = _suite(root, run, "run", 1, int(not error), int(error), 0)
    case = ET.SubElement(suite, "testcase", classname="msixlab.run", name="verdict", time="0")
    element = ET.SubElement(case, "error" if error else "failure", type=_x(verdict.outcome),
                            message=_x(verdict.summary or verdict.meaning))
    evidence = {k: v for k, v in verdict.evidence.items() if k != "console"}
    element.text = _x(json.dumps(evidence, indent=2, sort_keys=True, default=str))
    console = verdict.evidence.get("console")
    if console:
        ET.SubElement(case, "system-out").text = _x(console)


def render(run: RunResult) -> str:
    """The JUnit XML document (UTF-8 text with its declaration)."""
    counts = run.counts()
    extra = not run.checks_hold_verdict
    root = ET.Element("testsuites", name=_x(f"msixlab {run.run_id}"),
                      tests=str(counts["total"] + int(extra)),
                      failures=str(counts["fail"] + int(extra and run.verdict.exit_code != 125)),
                      errors=str(int(extra and run.verdict.exit_code == 125)),
                      skipped=str(counts["skip"]),
                      time=str(run.metadata.get("wall_seconds", 0)))
    for step in run.steps:
        _step_suite(root, run, step)
    if extra:
        _verdict_suite(root, run)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"

