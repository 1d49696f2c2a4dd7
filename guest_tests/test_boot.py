"""The toolchain works: each kernel flavor boots under the image's QEMU to stage 2."""

from __future__ import annotations

import pytest

from agent.host.lab.boot import boot_ready
from images import recipe


@pytest.mark.parametrize("flavor", sorted(recipe.FLAVORS))
def test_flavor_boots_to_ready_marker(image, flavor, tmp_path):
    kernel = image.kernel(flavor)
    result = boot_ready(image, flavor, accel="tcg", timeout=120, results_root=tmp_path)
    assert result.kernel == kernel.version
    assert 0 < result.guest_uptime < result.ready_seconds
    assert result.exitcode == 0                      # the guest powered itself off
    console = (result.results / "console.log").read_text()
    assert f"msixlab init: {kernel.version}" in console   # our initramfs ran
    assert "MSIXLAB-POWEROFF status=0" in console
