// SPDX-License-Identifier: GPL-2.0
/*
 * msixlab_iommu_mode.c - choose the VFIO selftests' default IOMMU mode at run time.
 *
 * The selftests' library (tools/testing/selftests/vfio/lib/iommu.c) opens every device
 * that a test does not give a mode of its own (vfio_pci_device_test, the driver test's
 * probe) in default_iommu_mode, which is "iommufd": /dev/iommu.  A kernel without
 * CONFIG_IOMMUFD (Debian's 7.3 and 6.12) has only the legacy container, so those tests
 * would fail in their fixture before testing anything.  msixlab links this file into
 * every selftest binary: when MSIXLAB_VFIO_IOMMU_MODE names a mode (one of the library's
 * own names, e.g. "vfio_type1v2_iommu"), it becomes the default before main() runs.
 * Without the variable nothing changes.  The symbol is weak, so a selftests version
 * without it links (and is left alone).
 */
#include <stdlib.h>

extern const char *default_iommu_mode __attribute__((weak));

static void __attribute__((constructor)) msixlab_iommu_mode(void)
{
	const char *mode = getenv("MSIXLAB_VFIO_IOMMU_MODE");

	if (&default_iommu_mode && mode && *mode)
		default_iommu_mode = mode;
}
