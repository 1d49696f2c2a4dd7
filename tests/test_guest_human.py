"""msixlab-guest (agent/guest/human.py): a person's commands at the guest's shell.  The real
driver is exercised in guest_tests/test_shell.py; here the command line, the one-line
errors and the table's text."""

from __future__ import annotations

import io

import pytest

from agent.guest import human


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = human.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("argv,verb,words", [
    ((), "usage", "required"),
    (("alloc",), "alloc", "count"),
    (("alloc", "three"), "alloc", "not an integer: 'three'"),
    (("alloc", "3", "--start", "-1"), "alloc", "must be 0 or more"),
    (("free",), "free", "group"),
    (("free", "x"), "free", "not an integer"),
    (("raise",), "raise", "index"),
    (("raise", "5", "--timeout-ms", "soon"), "raise", "not an integer"),
    (("show", "extra"), "show", "unrecognized arguments: extra"),
    (("frobnicate",), "frobnicate", "invalid choice"),
])
def test_a_bad_command_line_is_one_plain_line_with_einval(argv, verb, words):
    code, out, err = _run(*argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1, err
    assert err.startswith(f"msixlab-guest: {verb}: EINVAL: ") and words in err, err


def test_without_the_driver_each_verb_names_enodev_and_why(tmp_path):
    for argv in (("alloc", "3"), ("free", "1"), ("raise", "5"), ("groups",), ("show",)):
        code, out, err = _run("--device", str(tmp_path / "msixlab9"), *argv)
        assert code == 1 and out == ""
        assert err.startswith(f"msixlab-guest: {argv[0]}: ENODEV: cannot open "), err
        assert err.count("\n") == 1


def test_managed_without_a_cpu_is_refused_before_the_driver_is_asked(tmp_path):
    code, _, err = _run("--device", "/dev/null", "alloc", "2", "--managed")
    assert (code, err) == (1, "msixlab-guest: alloc: EINVAL: --managed needs --cpu\n")


@pytest.mark.parametrize("indices,text", [
    ([], "-"), ([4], "4"), ([4, 5, 6], "4-6"), ([1, 2, 4, 7, 8], "1-2,4,7-8"),
])
def test_indices_are_written_as_ranges(indices, text):
    assert human._indices(indices) == text


def _vector(index, group, irq, address, data, ctrl=0, counts=(0, 0), effective=(0,)):
    return {"index": index, "group": group, "irq": irq,
            "msg": {"address_lo": address, "address_hi": 0, "data": data},
            "table": {"address_lo": address, "address_hi": 0, "data": data, "ctrl": ctrl},
            "affinity": {"requested": None, "mask": [0, 1], "effective": list(effective)},
            "counts": list(counts), "total": sum(counts), "last_cpu": None}


def test_show_prints_live_vectors_decoded_to_their_cpu_and_a_summary():
    vectors = [_vector(3, 1, 40, 0xFEE01000, 0x4025, counts=(0, 2), effective=(1,)),
               _vector(60, 2, 41, 0xFEE00000, 0x4026, ctrl=1)]
    lines = human.routing_lines(vectors, 64, False, apic={0: 0, 1: 1})
    assert lines[0].split() == ["idx", "grp", "irq", "address/data", "decoded", "cpu",
                                "effective", "counts"]
    assert lines[1].split() == ["3", "1", "40", "fee01000/4025", "apic", "1", "vec", "0x25",
                                "1", "1", "2", "(1:2)"]
    assert lines[2].split() == ["60", "2", "41", "fee00000/4026", "masked", "apic", "0", "vec",
                                "0x26", "0", "0", "0"]
    assert lines[-1] == "2 of 64 table entries live"


def test_show_names_an_irte_handle_under_remapping():
    remappable = 0xFEE00000 | (5 << 5) | 0x10 | 0x8
    line = human.routing_lines([_vector(0, 1, 40, remappable, 0)], 8, False)[1]
    assert "IRTE 5" in line


def test_show_all_lists_free_entries_from_the_table():
    lines = human.routing_lines([], 3, True,
                                entries={0: {"address_lo": 0, "data": 0, "ctrl": 1},
                                         1: {"address_lo": 0, "data": 0, "ctrl": 0},
                                         2: {"address_lo": 0, "data": 0, "ctrl": 1}})
    assert [line.split()[0] for line in lines[1:4]] == ["0", "1", "2"]
    assert "UNMASKED" in lines[2] and "masked" in lines[1]
    assert lines[-1] == "0 of 3 table entries live"
