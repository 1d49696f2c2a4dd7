"""Fixtures shared by the host-only unit tests."""

import pytest

from qemu_device.testing import FakeFdPort


@pytest.fixture
def port():
    """The device model's fd seam without the OS; at the end it must have seen no
    misuse (an fd closed twice, a signal to an fd the device does not own, ...)."""
    p = FakeFdPort()
    yield p
    assert p.problems == []
