"""FdWatch, the fd-leak detector the other tests trust: it must see a leak, and must not
blame the code under test for an fd someone else closes."""

import os

from qemu_device.testing import FdWatch


def test_sees_an_fd_left_open():
    watch = FdWatch()
    fd = os.eventfd(0)
    try:
        opened = watch.opened()
        assert list(opened) == [fd] and "eventfd" in opened[fd]
    finally:
        os.close(fd)
    assert watch.opened() == {}


def test_an_fd_closed_by_someone_else_is_not_a_leak():
    foreign_r, foreign_w = os.pipe()
    watch = FdWatch()
    os.close(foreign_r)          # e.g. the garbage collector closing another test's pipe
    os.close(foreign_w)
    assert watch.opened() == {}
    assert set(watch.closed()) == {foreign_r, foreign_w}


def test_a_reused_fd_number_still_counts_as_opened():
    foreign = os.open("/dev/null", os.O_RDONLY)
    watch = FdWatch()
    os.close(foreign)
    leaked = os.eventfd(0)       # takes the lowest free number: the one just closed
    try:
        assert leaked == foreign
        assert list(watch.opened()) == [leaked]
    finally:
        os.close(leaked)
