"""A small VFIO client: open a PCI device bound to vfio-pci and drive its MSI-X triggers.

Concepts: standard library only (``fcntl.ioctl``, ``os.eventfd``, ``struct``), usable
without the rest of the agent.  ``open_device(bdf)`` opens the device through iommufd's
device cdev (``/dev/vfio/devices/vfioN`` bound to ``/dev/iommu`` with an IOAS attached:
``VFIO_DEVICE_BIND_IOMMUFD``, ``IOMMU_IOAS_ALLOC``, ``VFIO_DEVICE_ATTACH_IOMMUFD_PT``)
where the kernel has it, else through the legacy container and group (``/dev/vfio/vfio``,
``/dev/vfio/<group>``, type1 IOMMU); ``Device.path`` says which ("iommufd" or "legacy").
``Device.irq_info`` is ``VFIO_DEVICE_GET_IRQ_INFO``; ``set_triggers`` / ``trigger`` /
``disable`` are ``VFIO_DEVICE_SET_IRQS`` with eventfds (fd -1 releases a trigger), with
``DATA_NONE`` or ``DATA_BOOL`` (the kernel signals the trigger itself) and with count 0
(MSI-X off).  Each C structure is a ``(name, fields)`` layout packed little-endian with
no implicit padding; ``LAYOUTS``, ``IOCTLS`` and ``CONSTANTS`` are what
tests/test_vfio_uapi.py compiles against the kernel's ``linux/vfio.h`` and
``linux/iommufd.h`` and compares, number by number.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

# ---- linux/vfio.h and linux/iommufd.h ----
VFIO_TYPE = ord(";")
VFIO_BASE = 100
IOMMUFD_TYPE = ord(";")
IOMMUFD_CMD_BASE = 0x80


def _io(kind: int, nr: int) -> int:
    return (kind << 8) | nr          # _IO(): no direction, no size: VFIO's convention


VFIO_API_VERSION = 0
VFIO_TYPE1_IOMMU = 1
VFIO_TYPE1v2_IOMMU = 3
VFIO_GROUP_FLAGS_VIABLE = 1 << 0
VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1
VFIO_IRQ_INFO_EVENTFD = 1 << 0
VFIO_IRQ_INFO_MASKABLE = 1 << 1
VFIO_IRQ_INFO_AUTOMASKED = 1 << 2
VFIO_IRQ_INFO_NORESIZE = 1 << 3
VFIO_IRQ_SET_DATA_NONE = 1 << 0
VFIO_IRQ_SET_DATA_BOOL = 1 << 1
VFIO_IRQ_SET_DATA_EVENTFD = 1 << 2
VFIO_IRQ_SET_ACTION_MASK = 1 << 3
VFIO_IRQ_SET_ACTION_UNMASK = 1 << 4
VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 5
VFIO_PCI_MSI_IRQ_INDEX = 1
VFIO_PCI_MSIX_IRQ_INDEX = 2
VFIO_PCI_CONFIG_REGION_INDEX = 7
# every constant above by its header name, for tests/test_vfio_uapi.py
CONSTANTS = {name: value for name, value in globals().items() if name.startswith("VFIO_")
             and name not in ("VFIO_TYPE", "VFIO_BASE")}

IOCTLS = {
    "VFIO_GET_API_VERSION": _io(VFIO_TYPE, VFIO_BASE + 0),
    "VFIO_CHECK_EXTENSION": _io(VFIO_TYPE, VFIO_BASE + 1),
    "VFIO_SET_IOMMU": _io(VFIO_TYPE, VFIO_BASE + 2),
    "VFIO_GROUP_GET_STATUS": _io(VFIO_TYPE, VFIO_BASE + 3),
    "VFIO_GROUP_SET_CONTAINER": _io(VFIO_TYPE, VFIO_BASE + 4),
    "VFIO_GROUP_GET_DEVICE_FD": _io(VFIO_TYPE, VFIO_BASE + 6),
    "VFIO_DEVICE_GET_INFO": _io(VFIO_TYPE, VFIO_BASE + 7),
    "VFIO_DEVICE_GET_REGION_INFO": _io(VFIO_TYPE, VFIO_BASE + 8),
    "VFIO_DEVICE_GET_IRQ_INFO": _io(VFIO_TYPE, VFIO_BASE + 9),
    "VFIO_DEVICE_SET_IRQS": _io(VFIO_TYPE, VFIO_BASE + 10),
    "VFIO_DEVICE_BIND_IOMMUFD": _io(VFIO_TYPE, VFIO_BASE + 18),
    "VFIO_DEVICE_ATTACH_IOMMUFD_PT": _io(VFIO_TYPE, VFIO_BASE + 19),
    "IOMMU_DESTROY": _io(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 0),
    "IOMMU_IOAS_ALLOC": _io(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 1),
}
IOMMUFD_IOCTLS = ("VFIO_DEVICE_BIND_IOMMUFD", "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
                  "IOMMU_DESTROY", "IOMMU_IOAS_ALLOC")

PCI_COMMAND = 0x04                 # linux/pci_regs.h
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_MASTER = 0x4

# (struct name, ((field, struct code), ...)): the fields the client uses, in order, from
# offset 0; later kernels may append fields (argsz tells the kernel which ones we know)
LAYOUTS = (
    ("vfio_group_status", (("argsz", "I"), ("flags", "I"))),
    ("vfio_device_info", (("argsz", "I"), ("flags", "I"), ("num_regions", "I"),
                          ("num_irqs", "I"))),
    ("vfio_region_info", (("argsz", "I"), ("flags", "I"), ("index", "I"), ("cap_offset", "I"),
                          ("size", "Q"), ("offset", "Q"))),
    ("vfio_irq_info", (("argsz", "I"), ("flags", "I"), ("index", "I"), ("count", "I"))),
    ("vfio_irq_set", (("argsz", "I"), ("flags", "I"), ("index", "I"), ("start", "I"),
                      ("count", "I"))),
    ("vfio_device_bind_iommufd", (("argsz", "I"), ("flags", "I"), ("iommufd", "i"),
                                  ("out_devid", "I"))),
    ("vfio_device_attach_iommufd_pt", (("argsz", "I"), ("flags", "I"), ("pt_id", "I"))),
    ("iommu_ioas_alloc", (("size", "I"), ("flags", "I"), ("out_ioas_id", "I"))),
    ("iommu_destroy", (("size", "I"), ("id", "I"))),
)
IOMMUFD_LAYOUTS = ("vfio_device_bind_iommufd", "vfio_device_attach_iommufd_pt",
                   "iommu_ioas_alloc", "iommu_destroy")
_FORMATS = {name: "<" + "".join(code for _, code in fields) for name, fields in LAYOUTS}


def layout_offset(name: str, field: str) -> int:
    """The byte offset of ``field`` in layout ``name`` (what the header's offsetof says)."""
    fields = dict(LAYOUTS)[name]
    names = [f for f, _ in fields]
    return struct.calcsize("<" + "".join(code for _, code in fields[:names.index(field)]))


def pack(name: str, *values: int) -> bytearray:
    """Layout ``name`` packed with ``values``, its first field (argsz/size) set to its
    length when given as 0."""
    size = struct.calcsize(_FORMATS[name])
    return bytearray(struct.pack(_FORMATS[name], values[0] or size, *values[1:]))


def unpack(name: str, buf: bytes) -> dict[str, int]:
    """Layout ``name`` from the start of ``buf``, by field name."""
    fields = [f for f, _ in dict(LAYOUTS)[name]]
    return dict(zip(fields, struct.unpack_from(_FORMATS[name], buf)))


class VfioError(OSError):
    """A VFIO step failed: ``errno`` and the step (``what``) that failed, with the path."""

    def __init__(self, err: int, what: str):
        super().__init__(err, f"{what}: {os.strerror(err)}")
        self.what = what


def _ioctl(fd: int, request: str, arg, what: str) -> int:
    """The ioctl's return value; a ``bytearray`` argument is updated in place."""
    try:
        return fcntl.ioctl(fd, IOCTLS[request], arg)
    except OSError as err:
        raise VfioError(err.errno or errno.EIO, f"{request} ({what})") from err


def _open(path: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        raise VfioError(err.errno or errno.EIO, f"open {path}") from err


def cdev_name(bdf: str, root: str = "/") -> str | None:
    """The device's vfio cdev (``vfioN``) under sysfs ``vfio-dev/``, None without one."""
    try:
        names = os.listdir(os.path.join(root, "sys/bus/pci/devices", bdf, "vfio-dev"))
    except OSError:
        return None
    return next((n for n in sorted(names) if n.startswith("vfio")), None)


def iommu_group(bdf: str, root: str = "/") -> str:
    """The device's IOMMU group number (sysfs ``iommu_group`` link); ENODEV without one."""
    link = os.path.join(root, "sys/bus/pci/devices", bdf, "iommu_group")
    try:
        return os.path.basename(os.readlink(link))
    except OSError as err:
        raise VfioError(errno.ENODEV, f"{bdf} has no IOMMU group ({link})") from err


class Device:
    """One open VFIO device.  ``path`` is "iommufd" or "legacy"; ``fds`` are the other
    fds this client holds open for it (closed by ``close``, the device's first)."""

    def __init__(self, fd: int, path: str, fds: list[int], record: dict):
        self.fd, self.path, self.fds, self.record = fd, path, fds, record

    def info(self) -> dict[str, int]:
        """``VFIO_DEVICE_GET_INFO``: flags, number of regions and IRQ indexes."""
        buf = pack("vfio_device_info", 0, 0, 0, 0)
        _ioctl(self.fd, "VFIO_DEVICE_GET_INFO", buf, "info")
        return unpack("vfio_device_info", buf)

    def region_info(self, index: int) -> dict[str, int]:
        """``VFIO_DEVICE_GET_REGION_INFO`` of region ``index``: its size and fd offset."""
        buf = pack("vfio_region_info", 0, 0, index, 0, 0, 0)
        _ioctl(self.fd, "VFIO_DEVICE_GET_REGION_INFO", buf, f"region {index}")
        return unpack("vfio_region_info", buf)

    def config_read(self, offset: int, size: int) -> int:
        """``size`` bytes (1, 2 or 4) of config space at ``offset``, little-endian."""
        base = self.region_info(VFIO_PCI_CONFIG_REGION_INDEX)["offset"]
        try:
            data = os.pread(self.fd, size, base + offset)
        except OSError as err:
            raise VfioError(err.errno or errno.EIO, f"config read at {offset:#x}") from err
        return int.from_bytes(data, "little")

    def config_write(self, offset: int, size: int, value: int) -> None:
        """Write ``size`` bytes of config space at ``offset``."""
        base = self.region_info(VFIO_PCI_CONFIG_REGION_INDEX)["offset"]
        try:
            os.pwrite(self.fd, value.to_bytes(size, "little"), base + offset)
        except OSError as err:
            raise VfioError(err.errno or errno.EIO, f"config write at {offset:#x}") from err

    def enable_bus_master(self) -> int:
        """Set Bus Master Enable (and memory space) in the command register, as a VMM does
        when its guest does: without it the device's MSI writes go nowhere.  Returns the
        command register before."""
        command = self.config_read(PCI_COMMAND, 2)
        self.config_write(PCI_COMMAND, 2, command | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
        return command

    def irq_info(self, index: int = VFIO_PCI_MSIX_IRQ_INDEX) -> dict[str, int]:
        """``VFIO_DEVICE_GET_IRQ_INFO`` of IRQ ``index``: its flags and count."""
        buf = pack("vfio_irq_info", 0, 0, index, 0)
        _ioctl(self.fd, "VFIO_DEVICE_GET_IRQ_INFO", buf, f"irq index {index}")
        return unpack("vfio_irq_info", buf)

    def _set_irqs(self, flags: int, start: int, count: int, data: bytes, index: int) -> None:
        head = pack("vfio_irq_set", 0, flags, index, start, count)
        struct.pack_into("<I", head, 0, len(head) + len(data))
        _ioctl(self.fd, "VFIO_DEVICE_SET_IRQS", head + data,
               f"index {index} start {start} count {count} flags {flags:#x}")

    def set_triggers(self, start: int, fds: list[int],
                     index: int = VFIO_PCI_MSIX_IRQ_INDEX) -> None:
        """Set vectors ``start``.. to eventfds ``fds`` (-1 releases that vector's trigger);
        the first call on a disabled index enables it."""
        data = struct.pack(f"<{len(fds)}i", *fds)
        self._set_irqs(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, start,
                       len(fds), data, index)

    def trigger(self, start: int, count: int = 1, bools: list[bool] | None = None,
                index: int = VFIO_PCI_MSIX_IRQ_INDEX) -> None:
        """The kernel signals the triggers itself: ``DATA_NONE`` (every vector from
        ``start``), or ``DATA_BOOL`` with ``bools`` (those set)."""
        if bools is None:
            self._set_irqs(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, start,
                           count, b"", index)
        else:
            self._set_irqs(VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_ACTION_TRIGGER, start,
                           len(bools), bytes(int(bool(b)) for b in bools), index)

    def disable(self, index: int = VFIO_PCI_MSIX_IRQ_INDEX) -> None:
        """Turn the IRQ index off (``DATA_NONE``, count 0): every trigger and vector goes."""
        self._set_irqs(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0, b"", index)

    def close(self) -> None:
        """Close the device, then the iommufd/group/container fds."""
        for fd in [self.fd] + self.fds[::-1]:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fd, self.fds = -1, []


def _open_iommufd(bdf: str, cdev: str, root: str) -> Device:
    fds: list[int] = []
    try:
        iommufd = _open(os.path.join(root, "dev/iommu"))
        fds.append(iommufd)
        device = _open(os.path.join(root, "dev/vfio/devices", cdev))
        fds.append(device)
        bind = pack("vfio_device_bind_iommufd", 0, 0, iommufd, 0)
        _ioctl(device, "VFIO_DEVICE_BIND_IOMMUFD", bind, bdf)
        ioas = pack("iommu_ioas_alloc", 0, 0, 0)
        _ioctl(iommufd, "IOMMU_IOAS_ALLOC", ioas, bdf)
        ioas_id = unpack("iommu_ioas_alloc", ioas)["out_ioas_id"]
        _ioctl(device, "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
               pack("vfio_device_attach_iommufd_pt", 0, 0, ioas_id), bdf)
    except VfioError:
        for fd in fds[::-1]:
            os.close(fd)
        raise
    fds.remove(device)
    return Device(device, "iommufd", fds, {"cdev": cdev, "ioas_id": ioas_id,
                                           "devid": unpack("vfio_device_bind_iommufd",
                                                           bind)["out_devid"]})


def _open_legacy(bdf: str, root: str) -> Device:
    group_id = iommu_group(bdf, root)
    fds: list[int] = []
    try:
        container = _open(os.path.join(root, "dev/vfio/vfio"))
        fds.append(container)
        version = _ioctl(container, "VFIO_GET_API_VERSION", 0, "container")
        if version != VFIO_API_VERSION:
            raise VfioError(errno.EPROTO, f"VFIO API version {version}, not {VFIO_API_VERSION}")
        iommu = next((t for t in (VFIO_TYPE1v2_IOMMU, VFIO_TYPE1_IOMMU)
                      if _ioctl(container, "VFIO_CHECK_EXTENSION", t, "container")), None)
        if iommu is None:
            raise VfioError(errno.ENODEV, "the container offers no type1 IOMMU")
        group = _open(os.path.join(root, "dev/vfio", group_id))
        fds.append(group)
        status = pack("vfio_group_status", 0, 0)
        _ioctl(group, "VFIO_GROUP_GET_STATUS", status, f"group {group_id}")
        status = unpack("vfio_group_status", status)
        if not status["flags"] & VFIO_GROUP_FLAGS_VIABLE:
            raise VfioError(errno.EBUSY, f"group {group_id} is not viable (a device of it "
                            "is bound to another driver)")
        _ioctl(group, "VFIO_GROUP_SET_CONTAINER", bytearray(struct.pack("<i", container)),
               group_id)
        _ioctl(container, "VFIO_SET_IOMMU", iommu, "container")
        name = bytearray(bdf.encode() + b"\0")
        device = _ioctl(group, "VFIO_GROUP_GET_DEVICE_FD", name, bdf)
    except VfioError:
        for fd in fds[::-1]:
            os.close(fd)
        raise
    return Device(device, "legacy", fds, {"group": int(group_id),
                                          "iommu": "type1v2" if iommu == 3 else "type1"})


def open_device(bdf: str, root: str = "/", prefer: str = "iommufd") -> Device:
    """Open ``bdf`` (bound to vfio-pci): through iommufd's device cdev when the kernel has
    it (a ``vfio-dev/vfioN`` and ``/dev/iommu``) and ``prefer`` is "iommufd", else the
    legacy container and group.  A ``VfioError`` names the step that failed."""
    cdev = cdev_name(bdf, root)
    if prefer == "iommufd" and cdev and os.path.exists(os.path.join(root, "dev/iommu")):
        return _open_iommufd(bdf, cdev, root)
    return _open_legacy(bdf, root)


class Eventfds:
    """Eventfds by table index, non-blocking: ``new(i)`` makes (or replaces) vector i's,
    ``take()`` reads every counter (each read resets it: what fired since the last)."""

    def __init__(self):
        self.by_index: dict[int, int] = {}
        self.retired: list[int] = []       # replaced ones, still watched until closed

    def new(self, index: int) -> int:
        """A fresh eventfd for ``index``; one it replaces stays open in ``retired``."""
        old = self.by_index.get(index)
        if old is not None:
            self.retired.append(old)
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.by_index[index] = fd
        return fd

    def take(self) -> tuple[dict[int, int], int]:
        """({index: count fired since the last take}, count on the retired fds)."""
        return ({i: _drain(fd) for i, fd in self.by_index.items()},
                sum(_drain(fd) for fd in self.retired))

    def close(self) -> None:
        """Close every eventfd."""
        for fd in list(self.by_index.values()) + self.retired:
            os.close(fd)
        self.by_index, self.retired = {}, []


def _drain(fd: int) -> int:
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0
