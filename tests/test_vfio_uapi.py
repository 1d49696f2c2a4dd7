"""The guest VFIO client's ioctl numbers, constants and struct layouts (agent/guest/vfio.py)
match the kernel's uapi headers ``linux/vfio.h`` and ``linux/iommufd.h``.

The headers come from the image's kernels (Debian's linux-headers-<release>-common in the
image rootfs, 7.3 and 6.12: each is checked), else from the host's /usr/include (vfio.h
only).  A tiny C program, generated from the Python tables and compiled with the host
compiler against a header, prints every offset, field size, constant and ioctl number;
each must equal what Python computes.  A name missing from a header fails to compile.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from agent.guest import vfio
from images.build import find_image
from cprobe import probe_values

HOST_INCLUDE = Path("/usr/include/linux")


def header_dirs() -> list[Path]:
    """Every directory holding a uapi vfio.h to check against (the image's kernels first)."""
    image = find_image()
    dirs = []
    if image is not None:
        dirs = sorted(image.rootfs.glob("usr/src/linux-headers-*-common/include/uapi/linux"))
    if not dirs and (HOST_INCLUDE / "vfio.h").is_file():
        dirs = [HOST_INCLUDE]
    return [d for d in dirs if (d / "vfio.h").is_file()]


def _probe_source(iommufd: bool) -> str:
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/vfio.h>"]
    lines += ["#include <linux/iommufd.h>"] if iommufd else []
    lines.append("int main(void) {")
    for name, fields in vfio.LAYOUTS:
        if name in vfio.IOMMUFD_LAYOUTS and not iommufd:
            continue
        for field, _ in fields:
            lines.append(f'printf("offsetof {name}.{field} %zu\\n", '
                         f"offsetof(struct {name}, {field}));")
            lines.append(f'printf("sizeof {name}.{field} %zu\\n", '
                         f"sizeof(((struct {name} *)0)->{field}));")
    names = list(vfio.CONSTANTS) + [n for n in vfio.IOCTLS
                                    if iommufd or n not in vfio.IOMMUFD_IOCTLS]
    for name in names:
        lines.append(f'printf("value {name} %llu\\n", (unsigned long long)({name}));')
    lines += ["return 0;", "}"]
    return "\n".join(lines) + "\n"


def _compile_and_run(header_dir: Path, work: Path) -> tuple[dict[str, int], bool]:
    """Copy the headers into ``work/linux`` (types and ioctl come from the host) and run
    the probe (``__user`` and ``__counted_by`` defined empty: the unexported uapi headers keep
    them); returns its
    values and whether iommufd.h was there."""
    (work / "linux").mkdir(parents=True)
    iommufd = (header_dir / "iommufd.h").is_file()
    for name in ("vfio.h", "iommufd.h") if iommufd else ("vfio.h",):
        shutil.copy(header_dir / name, work / "linux" / name)
    values = probe_values(work, _probe_source(iommufd),
                          ["-D__user=", "-D__counted_by(m)=", "-I", str(work)],
                          f"{header_dir} and vfio.py")
    return values, iommufd


@pytest.fixture(scope="module", params=header_dirs() or [None],
                ids=lambda d: d.parent.parent.parent.name if d else "none")
def probed(request, tmp_path_factory):
    if request.param is None:
        pytest.skip("no linux/vfio.h: neither the image nor the host has one")
    return _compile_and_run(request.param, tmp_path_factory.mktemp("vfio"))


def test_layouts_match_header(probed):
    values, iommufd = probed
    for name, fields in vfio.LAYOUTS:
        if name in vfio.IOMMUFD_LAYOUTS and not iommufd:
            continue
        for field, code in fields:
            key = f"{name}.{field}"
            assert vfio.layout_offset(name, field) == values[f"offsetof {key}"], key
            assert struct.calcsize("<" + code) == values[f"sizeof {key}"], key


def test_constants_and_ioctls_match_header(probed):
    values, iommufd = probed
    for name, value in vfio.CONSTANTS.items():
        assert value == values[f"value {name}"], name
    for name, value in vfio.IOCTLS.items():
        if iommufd or name not in vfio.IOMMUFD_IOCTLS:
            assert value == values[f"value {name}"], name


def test_image_headers_carry_iommufd():
    """The image's kernels' headers have iommufd.h, so the iommufd path is checked too."""
    dirs = header_dirs()
    if not dirs or dirs == [HOST_INCLUDE]:
        pytest.skip("the image is not built")
    assert all((d / "iommufd.h").is_file() for d in dirs)


def test_pack_sets_argsz_and_unpack_reads_fields():
    buf = vfio.pack("vfio_irq_info", 0, 0, vfio.VFIO_PCI_MSIX_IRQ_INDEX, 0)
    assert len(buf) == 16 and struct.unpack_from("<I", buf)[0] == 16
    struct.pack_into("<I", buf, 4, vfio.VFIO_IRQ_INFO_EVENTFD | vfio.VFIO_IRQ_INFO_NORESIZE)
    struct.pack_into("<I", buf, 12, 64)
    info = vfio.unpack("vfio_irq_info", buf)
    assert info == {"argsz": 16, "flags": 9, "index": 2, "count": 64}


def test_eventfds_take_counts_and_retired():
    fds = vfio.Eventfds()
    try:
        first = fds.new(3)
        vfio.os.eventfd_write(first, 1)
        second = fds.new(3)            # a swap: the old one is still watched
        vfio.os.eventfd_write(first, 1)
        vfio.os.eventfd_write(second, 2)
        assert fds.take() == ({3: 2}, 2)
        assert fds.take() == ({3: 0}, 0)
    finally:
        fds.close()
