"""Fixtures for tests that boot the real guest with the image's QEMU."""

from __future__ import annotations

import pytest

from images.build import ensure_image


def pytest_collection_modifyitems(items):
    for item in items:
        if "guest_tests" in str(item.fspath):
            item.add_marker(pytest.mark.guest)


@pytest.fixture(scope="session")
def image():
    return ensure_image()
