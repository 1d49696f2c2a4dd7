"""The Python ioctl definitions (agent/guest/uapi.py) match agent/kmod/msixlab_uapi.h.

A tiny C program, generated from the Python layouts and compiled with the host compiler
against the header, prints every sizeof, offsetof, constant and ioctl number; each must
equal what Python computes.  A field or constant missing on either side fails to compile
or is reported by name.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.guest import uapi
from cprobe import probe_values

HEADER = Path(__file__).resolve().parents[1] / "agent" / "kmod" / "msixlab_uapi.h"


def _probe_source() -> str:
    lines = ["#include <stdio.h>", "#include <stddef.h>", '#include "msixlab_uapi.h"',
             "int main(void) {"]
    for layout in uapi.LAYOUTS:
        lines.append(f'printf("sizeof {layout.name} %zu\\n", sizeof(struct {layout.name}));')
        for field, _, count in layout.fields:
            lines.append(f'printf("offsetof {layout.name}.{field} %zu\\n", '
                         f"offsetof(struct {layout.name}, {field}));")
            lines.append(f'printf("sizeof {layout.name}.{field} %zu\\n", '
                         f"sizeof(((struct {layout.name} *)0)->{field}));")
    for name in list(uapi.IOCTLS) + list(uapi.CONSTANTS):
        lines.append(f'printf("value {name} %llu\\n", (unsigned long long)({name}));')
    lines += ["return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def c_values(tmp_path_factory) -> dict[str, int]:
    return probe_values(tmp_path_factory.mktemp("uapi"), _probe_source(),
                        ["-I", str(HEADER.parent)], "the header and uapi.py")


@pytest.mark.parametrize("layout", uapi.LAYOUTS, ids=lambda layout: layout.name)
def test_layout_matches_header(layout, c_values):
    assert layout.size == c_values[f"sizeof {layout.name}"]
    for field, code, count in layout.fields:
        key = f"{layout.name}.{field}"
        assert layout.offset(field) == c_values[f"offsetof {key}"], key
        assert uapi.struct.calcsize(f"<{count}{code}") == c_values[f"sizeof {key}"], key


@pytest.mark.parametrize("name", list(uapi.IOCTLS))
def test_ioctl_number_matches_header(name, c_values):
    assert uapi.IOCTLS[name][0] == c_values[f"value {name}"]


@pytest.mark.parametrize("name", list(uapi.CONSTANTS))
def test_constant_matches_header(name, c_values):
    assert uapi.CONSTANTS[name] == c_values[f"value {name}"]


def test_every_ioctl_of_the_header_is_mirrored():
    defined = set(re.findall(r"#define\s+(MSIXLAB_IOC_[A-Z_]+)\s+_IO", HEADER.read_text()))
    assert defined == set(uapi.IOCTLS)


def test_every_constant_of_the_header_is_mirrored():
    """Every object-like MSIXLAB_ macro is in CONSTANTS or IOCTLS (nothing drifts unseen)."""
    defined = set(re.findall(r"^#define\s+(MSIXLAB_\w+)[ \t]", HEADER.read_text(), re.M))
    assert defined == set(uapi.CONSTANTS) | set(uapi.IOCTLS)


def test_magic_is_not_a_registered_one():
    """0xB7 (version 1) belongs to remoteproc_cdev.h and nsfs.h in the kernel's
    ioctl-number.rst; the magic must stay off that list's taken codes near it."""
    registered = {0xB6, 0xB7, 0xB8, 0xBA, 0xC0, 0xCA, 0xCB, 0xCC, 0xCD, 0xCE, 0xCF}
    assert uapi.IOC_MAGIC not in registered
    assert all(number >> 8 & 0xFF == uapi.IOC_MAGIC for number, _ in uapi.IOCTLS.values())


def test_every_struct_of_the_header_is_mirrored():
    defined = set(re.findall(r"^struct\s+(msixlab_\w+)\s*\{", HEADER.read_text(), re.M))
    assert defined == {layout.name for layout in uapi.LAYOUTS}


def test_pack_roundtrip_and_array_padding():
    buf = uapi.GROUP.pack(id=3, min=2, max=4, start=uapi.ANY_INDEX, indices=[0b1010])
    assert len(buf) == uapi.GROUP.size
    back = uapi.GROUP.unpack(buf)
    assert (back["id"], back["min"], back["max"], back["start"]) == (3, 2, 4, uapi.ANY_INDEX)
    assert back["indices"] == [0b1010] + [0] * (uapi.VEC_WORDS - 1)


def test_pack_rejects_unknown_field_and_long_array():
    with pytest.raises(KeyError, match="nope"):
        uapi.FREE.pack(nope=1)
    with pytest.raises(ValueError, match="indices"):
        uapi.GROUP.pack(indices=[0] * (uapi.VEC_WORDS + 1))


def test_bitmap_helpers():
    words = uapi.list_to_bits([0, 63, 64, 2047], uapi.VEC_WORDS)
    assert words[0] == (1 | 1 << 63) and words[1] == 1 and words[31] == 1 << 63
    assert uapi.bits_to_list(words) == [0, 63, 64, 2047]
    assert uapi.bits_to_list(words, limit=64) == [0, 63]


def test_format_bdf_keeps_large_domains():
    assert uapi.format_bdf(1, 1, 3 << 3 | 1) == "0001:01:03.1"
    assert uapi.format_bdf(0x10000, 0xFF, 0xFF) == "10000:ff:1f.7"   # VMD-style domain


def test_vector_buffer_entries_have_no_cpu_limit():
    """Per-CPU entries are parsed at any CPU id, far past the old 256-CPU limit."""
    n = 1000
    buf = b"".join(uapi.VECTOR_CPU.pack(count=cpu, flags=uapi.CPU_EFFECTIVE if cpu == 999
                                        else 0) for cpu in range(n))
    entries = [uapi.VECTOR_CPU.unpack(buf[i * uapi.VECTOR_CPU.size:]) for i in range(n)]
    assert entries[999] == {"count": 999, "flags": uapi.CPU_EFFECTIVE, "pad": 0}
