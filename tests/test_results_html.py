"""report.html: self-contained, every check with failures first, the routing map and the
timeline drawn from the run's own data, and rendered by a real headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from agent.host.results import timeline, write_all
from agent.host.results.model import load
from agent.host.results.pictures import groups_of, routing_map
from results_fixtures import RUN_ID, failing, infra, make_run, splat

CHROMIUM = shutil.which("chromium")
GREEN = (0x1A, 0x7F, 0x37)     # the pass banner's colour (html.py CSS)


class Page(HTMLParser):
    """What the tests look at in a page: tags, links, check rows, text."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[str] = []
        self.hrefs: list[str] = []
        self.rows: list[str] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if "href" in attrs:
            self.hrefs.append(attrs["href"])
        if tag == "tr" and attrs.get("class") in ("pass", "fail", "skip"):
            self.rows.append(attrs["class"])

    def handle_data(self, data):
        self.text.append(data)


def report(tmp_path: Path, variant=None) -> tuple[Path, str]:
    run_dir = make_run(tmp_path, variant)
    path = write_all(run_dir)["report.html"]
    return run_dir, path.read_text()


def test_page_is_self_contained(tmp_path):
    _, text = report(tmp_path, failing)
    page = Page(text)
    assert not {"script", "link", "img", "iframe", "object", "embed"} & set(page.tags)
    assert "src=" not in text and "@import" not in text
    assert re.findall(r"https?://[^\s\"')]+", text) == ["http://www.w3.org/2000/svg"] * 2


def test_every_check_is_listed_failures_first(tmp_path):
    _, text = report(tmp_path, failing)
    page = Page(text)
    assert len(page.rows) == 173
    assert page.rows[:2] == ["fail", "fail"] and set(page.rows[2:]) == {"pass"}
    assert f"<title>msixlab {RUN_ID}: check_failed</title>" in text
    assert "vector 1: no CPU counted the raise" in text
    assert "&quot;device_deltas&quot;" in text                  # the evidence, escaped
    assert "&lt;ctrl=0x0&gt; &amp;" in text


def test_provenance_and_reproduce_command_are_shown(tmp_path):
    _, text = report(tmp_path)
    for value in ("7.3.4+deb13-amd64", "89bc6f06f53ece59", "11.1.3",
                  "msixlab run --flavor default --vectors 64 --cpus 2 --seed 7"):
        assert value in text
    assert "PASS &middot; exit 0" in text


def test_a_boot_that_stalled_and_was_booted_again_is_shown(tmp_path):
    def stalled_once(doc):
        doc["metadata"]["boot_stalls"] = [{"attempt": 1, "logs": "boot-attempt-1",
                                           "reason": "the guest did not finish <booting>"}]
    _, text = report(tmp_path, stalled_once)
    assert ("<th>boot 1 stalled</th><td><code>the guest did not finish &lt;booting&gt; "
            "(logs in boot-attempt-1/)</code></td>") in text
    assert "stalled" not in report(tmp_path / "plain")[1]


def test_links_point_at_the_run_directorys_files(tmp_path):
    run_dir, text = report(tmp_path)
    hrefs = Page(text).hrefs
    assert {"console.log", "qemu.log", "device-events.jsonl", "dmesg.txt", "routing.json",
            "results.ktap", "junit.xml", "kcidb.json"} <= set(hrefs)
    assert all((run_dir / href).is_file() for href in hrefs)


def test_routing_map_marks_groups_reuse_and_failures(tmp_path):
    run = load(make_run(tmp_path, failing))
    groups = groups_of(run)
    assert {g.label: (g.live, sorted(g.indices)) for g in groups.values()} == {
        "0 (driver)": (True, [0]), "A": (True, [1, 2, 3, 4]), "B": (False, [5, 6]),
        "C": (True, [60, 61, 62]), "D": (True, list(range(7, 15))), "E": (True, [5, 6])}
    svg = routing_map(run)
    titles = re.findall(r"<title>([^<]*)</title>", svg)
    reused = [t for t in titles if "freed from group B (id 2)" in t]
    assert {t.split(";")[0] for t in reused} == {"index 5", "index 6"}
    failed = {t.split(";")[0] for t in titles if "a check FAILED here" in t}
    assert failed == {"index 1", "index 5"}
    cpu_of_b = [t for t in titles if t.startswith("index 5;")][0]
    assert "target CPU 1" in cpu_of_b                          # E on the CPU B asked for


def test_freed_entries_not_reused_are_hatched(tmp_path):
    def drop_e(doc):
        for record in doc["records"]:
            if record["index"] in (5, 6):
                record.update(guest=None, group=None, irq=None)
        del doc["metadata"]["groups"]["E"]
    svg = routing_map(load(make_run(tmp_path, drop_e)))
    assert svg.count('fill="url(#freed)"') == 2


def test_splat_and_could_not_judge_pages(tmp_path):
    _, text = report(tmp_path / "s", splat)
    assert "Why the run ended" in text and "Oops: invalid opcode" in text
    _, text = report(tmp_path / "i", infra)
    assert "COULD NOT JUDGE &middot; exit 125" in text
    assert "The run recorded no routing records." in text and "No check ran." in text


# --- the timeline ---------------------------------------------------------------------

def events(*rows):
    return [{"event": kind, "vector": vector, "mono": t, **extra} for t, kind, vector, extra in rows]


def test_timeline_raise_pending_delivered_per_vector():
    tl = timeline.build(events(
        (1.0, "eventfd_assign", 0, {}),                 # boot set-up: before t = 0, dropped
        (5.0, "pend", 60, {"source": "control"}),
        (5.1, "eventfd_assign", 60, {}),
        (5.1, "deliver_pending", 60, {}),
        (5.2, "deliver", 1, {"source": "ics"}),
        (5.3, "raise_dropped", 2, {"source": "control", "fault": 1}),
        (5.4, "raise_delayed", 3, {"source": "control", "delay_ms": 100}),
        (5.5, "deliver", 3, {"source": "control+delay"}),
    ))
    assert sorted(tl.lanes) == [1, 2, 3, 60]
    lane = tl.lanes[60]
    assert lane.spans == [(0.0, pytest.approx(0.1))]
    assert [(m.kind, m.source) for m in lane.marks] == [("raise", "control"), ("assign", ""),
                                                       ("deliver", "pending")]
    assert (lane.raises, lane.delivered) == (1, 1)
    assert [m.kind for m in tl.lanes[2].marks] == ["raise", "drop"]
    assert tl.lanes[3].raises == 1 and tl.lanes[3].spans == [(pytest.approx(0.4), pytest.approx(0.5))]


def test_timeline_is_bounded_and_survives_bad_lines(tmp_path):
    log = tmp_path / "device-events.jsonl"
    lines = ["not json", "[1]"] + [json.dumps({"event": "deliver", "vector": 7, "mono": i / 1000,
                                               "source": "control"})
                                   for i in range(timeline.MAX_MARKS * 2)]
    log.write_text("\n".join(lines) + "\n")
    tl = timeline.from_file(log)
    assert tl.bad_lines == 2
    lane = tl.lanes[7]
    assert len(lane.marks) == timeline.MAX_MARKS and lane.omitted == timeline.MAX_MARKS * 3
    assert lane.raises == lane.delivered == timeline.MAX_MARKS * 2
    assert timeline.from_file(tmp_path / "missing.jsonl").lanes == {}


def test_real_run_timeline_shows_the_early_pending_raise(tmp_path):
    tl = timeline.from_file(make_run(tmp_path) / "device-events.jsonl")
    assert tl.lanes[60].spans and tl.lanes[60].spans[0][1] is not None
    assert set(tl.lanes) == set(range(15)) | {60, 61, 62}
    assert all(lane.raises == lane.delivered for lane in tl.lanes.values())


# --- rendered by a real browser -------------------------------------------------------

def _render(page: Path, out: Path, profile: Path) -> "Image":
    from PIL import Image
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={profile}", "--hide-scrollbars", "--window-size=1200,1400",
         f"--screenshot={out}", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and out.is_file(), done.stderr[-2000:]
    return Image.open(out).convert("RGB")


def screenshot(page: Path, out: Path, profile: Path, tries: int = 4) -> "Image":
    """The page as headless Chromium draws it, once two renders in a row agree: on a busy
    machine a ``--screenshot`` can be taken before the last row of raster tiles is drawn
    (seen about once in 20 renders), which no flag of Chromium 156 prevents."""
    last = _render(page, out, profile)
    for _ in range(tries - 1):
        image = _render(page, out, profile)
        if image.tobytes() == last.tobytes():
            return image
        last = image
    raise AssertionError(f"{tries} renders of {page} in a row all differ")


def colours(image, box=None) -> dict[tuple, int]:
    """{colour: pixel count} of the image (or a box of it)."""
    part = image.crop(box) if box else image
    return {colour: count for count, colour in part.getcolors(part.width * part.height)}


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian package "
                    "chromium; msixlab setup (images/host_packages.py) installs it)")
def test_report_renders_in_headless_chromium(tmp_path):
    run_dir, text = report(tmp_path)
    image = screenshot(run_dir / "report.html", tmp_path / "shot.png", tmp_path / "profile")
    width, height = image.size
    seen = colours(image)
    assert sum(n for c, n in seen.items() if c != (255, 255, 255)) > 0.08 * width * height
    assert len(seen) > 200                                        # text and pictures, not blank
    assert GREEN in colours(image, (0, 0, width, 260))           # the verdict banner
    # the run id is drawn in the heading: the same page with another id of the same
    # length differs there, and nowhere below the banner
    other = tmp_path / "other"
    other.mkdir()
    (other / "report.html").write_text(text.replace(RUN_ID, "x" * len(RUN_ID)))
    changed = screenshot(other / "report.html", tmp_path / "other.png", tmp_path / "profile2")
    heading, below = (0, 0, width, 60), (0, 120, width, height)
    assert image.crop(heading).tobytes() != changed.crop(heading).tobytes()
    assert image.crop(below).tobytes() == changed.crop(below).tobytes()
