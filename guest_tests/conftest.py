"""Fixtures for tests that boot the real guest with the image's QEMU.

The lab fixtures (``msixlab_lab``, ``msixlab_guest``, ``msixlab_device``, ``msixlab_qemu``,
``msixlab_image``) come from msixlab's pytest plugin (agent/host/testkit/plugin.py,
docs/writing-tests.md); ``image`` is kept as the name these tests have always used.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "guest_tests" in str(item.fspath):
            item.add_marker(pytest.mark.guest)


@pytest.fixture(scope="session")
def image(msixlab_image):
    return msixlab_image
