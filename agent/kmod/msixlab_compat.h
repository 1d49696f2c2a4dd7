/* SPDX-License-Identifier: GPL-2.0 */
/*
 * msixlab: every difference between the kernel versions the driver builds
 * against, in one place.
 *
 * Concepts:
 *  - The rest of the driver calls only the helpers below and never tests
 *    LINUX_VERSION_CODE itself; each helper behaves like the newest
 *    kernel's interface.
 *  - Linux 6.2 added dynamic MSI-X allocation (pci_msix_alloc_irq_at(),
 *    struct msi_map, linux/msi_api.h); older kernels cannot build the
 *    driver at all, and the build says so.
 *  - Linux 6.11 added pcim_iomap_region() and deprecated
 *    pcim_iomap_regions()/pcim_iomap_table(): msixlab_iomap_bar() maps one
 *    BAR (request + map, devres-managed) either way and returns an
 *    ERR_PTR on failure.
 *  - kzalloc_obj(P, gfp) allocates one zeroed object of P's type and
 *    returns a pointer typed for it (both image kernels have it, older
 *    ones may not).  The fallback is kzalloc(sizeof(P), gfp): an untyped
 *    pointer, and the GFP flags are required (the kernel's makes them
 *    optional).
 */
#ifndef _MSIXLAB_COMPAT_H
#define _MSIXLAB_COMPAT_H

#include <linux/err.h>
#include <linux/io.h>
#include <linux/pci.h>
#include <linux/slab.h>
#include <linux/version.h>

#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 2, 0)
#error "msixlab needs Linux 6.2 or later (dynamic MSI-X: pci_msix_alloc_irq_at())"
#endif

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 11, 0)
static inline void __iomem *msixlab_iomap_bar(struct pci_dev *pdev, int bar,
					      const char *name)
{
	return pcim_iomap_region(pdev, bar, name);
}
#else
static inline void __iomem *msixlab_iomap_bar(struct pci_dev *pdev, int bar,
					      const char *name)
{
	int ret = pcim_iomap_regions(pdev, BIT(bar), name);

	if (ret)
		return IOMEM_ERR_PTR(ret);
	return pcim_iomap_table(pdev)[bar];
}
#endif

#ifndef kzalloc_obj
#define kzalloc_obj(P, GFP)	kzalloc(sizeof(P), GFP)
#endif

#endif /* _MSIXLAB_COMPAT_H */
