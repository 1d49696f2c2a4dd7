// SPDX-License-Identifier: GPL-2.0
/*
 * msixlab: guest driver for the msixlab test NIC (PCI 1234:11e9).
 *
 * Concepts:
 *  - probe: enable the device, bus mastering (without it QEMU drops the
 *    MSI-X writes), map BAR0 and the BARs holding the MSI-X table and PBA,
 *    enable MSI-X with one vector (group 0), register /dev/msixlab<N>.
 *  - remove (unbind, module unload): deregister the misc device, then free
 *    every group while holding the control lock, so an ioctl on a file that
 *    is still open finds the device gone (ENODEV) instead of freed memory.
 *  - The control interface is one dispatch table from ioctl number to
 *    handler; each ioctl holds a runtime PM reference (the function is in
 *    D0 while it runs); handlers run under ml->lock and find the device present,
 *    except the three marked unlocked: RAISE (it takes the lock only to ring
 *    the doorbell, then waits without it), TOTALS (it takes the lock for
 *    each read and waits without it) and CRASH (an oops must not die
 *    holding the lock).
 */
#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/interrupt.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "msixlab.h"

static DEFINE_IDA(msixlab_ida);

static void msixlab_dev_release(struct kref *ref)
{
	struct msixlab_dev *ml = container_of(ref, struct msixlab_dev, ref);

	pci_dev_put(ml->pdev);
	kfree(ml->vecs);
	kfree(ml);
}

/* ---- control interface ---- */

static int msixlab_ioc_info(struct msixlab_dev *ml, void *arg)
{
	struct msixlab_info *info = arg;
	struct pci_dev *pdev = ml->pdev;
	struct msixlab_grp *grp;

	info->version = MSIXLAB_UAPI_VERSION;
	info->domain = pci_domain_nr(pdev->bus);
	info->bus = pdev->bus->number;
	info->devfn = pdev->devfn;
	info->vendor = pdev->vendor;
	info->device = pdev->device;
	info->flags = (ml->can_alloc_dyn ? MSIXLAB_INFO_DYN_ALLOC : 0) |
		      (msixlab_fault_injection() ? MSIXLAB_INFO_FAULT_INJECTION : 0);
	info->table_size = ml->table_size;
	info->table_bar = ml->table_bar;
	info->table_offset = ml->table_offset;
	info->pba_bar = ml->pba_bar;
	info->pba_offset = ml->pba_offset;
	info->msix_control = msixlab_msix_control(ml);
	info->nr_cpu_ids = nr_cpu_ids;
	info->nr_groups = 0;
	list_for_each_entry(grp, &ml->groups, node)
		info->nr_groups++;
	info->nr_vectors = ml->nr_vectors;
	info->next_group = ml->next_group;
	msixlab_indices(ml, NULL, info->allocated);
	return 0;
}

static int msixlab_ioc_alloc(struct msixlab_dev *ml, void *arg)
{
	return msixlab_grp_alloc(ml, arg);
}

static int msixlab_ioc_free(struct msixlab_dev *ml, void *arg)
{
	struct msixlab_free *req = arg;
	int ret;

	ret = msixlab_grp_free(ml, req->id);
	if (ret < 0)
		return ret;
	req->count = ret;
	return 0;
}

static int msixlab_ioc_get(struct msixlab_dev *ml, void *arg)
{
	return msixlab_grp_get(ml, arg);
}

static int msixlab_ioc_vector(struct msixlab_dev *ml, void *arg)
{
	return msixlab_vector_info(ml, arg);
}

static int msixlab_ioc_raise(struct msixlab_dev *ml, void *arg)
{
	return msixlab_raise(ml, arg);
}

static int msixlab_ioc_pba(struct msixlab_dev *ml, void *arg)
{
	return msixlab_read_pba(ml, arg);
}

static int msixlab_ioc_entry(struct msixlab_dev *ml, void *arg)
{
	return msixlab_read_entry(ml, arg);
}

static int msixlab_ioc_function_mask(struct msixlab_dev *ml, void *arg)
{
	return msixlab_function_mask(ml, arg);
}

static int msixlab_ioc_crash(struct msixlab_dev *ml, void *arg)
{
	return msixlab_crash(ml, arg);
}

static int msixlab_ioc_totals(struct msixlab_dev *ml, void *arg)
{
	return msixlab_totals(ml, arg);
}

static int msixlab_ioc_irq_fault(struct msixlab_dev *ml, void *arg)
{
	return msixlab_arm_irq_fault(ml, arg);
}

static int msixlab_ioc_pm(struct msixlab_dev *ml, void *arg)
{
	return msixlab_pm_stats(ml, arg);
}

struct msixlab_ioc {
	unsigned int cmd;
	int (*fn)(struct msixlab_dev *ml, void *arg);
	bool unlocked;		/* fn takes ml->lock itself, or not at all */
};

static const struct msixlab_ioc msixlab_iocs[] = {
	{ MSIXLAB_IOC_INFO,		msixlab_ioc_info },
	{ MSIXLAB_IOC_ALLOC_GROUP,	msixlab_ioc_alloc },
	{ MSIXLAB_IOC_FREE_GROUP,	msixlab_ioc_free },
	{ MSIXLAB_IOC_GET_GROUP,	msixlab_ioc_get },
	{ MSIXLAB_IOC_VECTOR,		msixlab_ioc_vector,	true },
	{ MSIXLAB_IOC_RAISE,		msixlab_ioc_raise,	true },
	{ MSIXLAB_IOC_READ_PBA,		msixlab_ioc_pba },
	{ MSIXLAB_IOC_READ_ENTRY,	msixlab_ioc_entry },
	{ MSIXLAB_IOC_FUNCTION_MASK,	msixlab_ioc_function_mask },
	{ MSIXLAB_IOC_CRASH,		msixlab_ioc_crash,	true },
	{ MSIXLAB_IOC_TOTALS,		msixlab_ioc_totals,	true },
	{ MSIXLAB_IOC_FAIL_REQUEST_IRQ,	msixlab_ioc_irq_fault },
	{ MSIXLAB_IOC_PM,		msixlab_ioc_pm },
};

static const struct msixlab_ioc *msixlab_ioc_find(unsigned int cmd)
{
	int i;

	for (i = 0; i < ARRAY_SIZE(msixlab_iocs); i++)
		if (msixlab_iocs[i].cmd == cmd)
			return &msixlab_iocs[i];
	return NULL;
}

static long msixlab_ioctl(struct file *file, unsigned int cmd,
			  unsigned long arg)
{
	const struct msixlab_ioc *ioc = msixlab_ioc_find(cmd);
	struct msixlab_dev *ml = file->private_data;
	void __user *uarg = (void __user *)arg;
	size_t size = _IOC_SIZE(cmd);
	void *buf;
	long ret;

	if (!ioc)
		return -ENOTTY;

	buf = kzalloc(size, GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	if ((_IOC_DIR(cmd) & _IOC_WRITE) && copy_from_user(buf, uarg, size)) {
		ret = -EFAULT;
		goto out_free;
	}

	ret = msixlab_pm_get(ml);
	if (ret)
		goto out_free;
	if (ioc->unlocked) {
		ret = ioc->fn(ml, buf);
	} else {
		mutex_lock(&ml->lock);
		ret = ml->gone ? -ENODEV : ioc->fn(ml, buf);
		mutex_unlock(&ml->lock);
	}
	msixlab_pm_put(ml);

	if (!ret && (_IOC_DIR(cmd) & _IOC_READ) &&
	    copy_to_user(uarg, buf, size))
		ret = -EFAULT;
out_free:
	kfree(buf);
	return ret;
}

static int msixlab_open(struct inode *inode, struct file *file)
{
	/* misc_open() set private_data to our miscdevice, under misc_mtx */
	struct msixlab_dev *ml = container_of(file->private_data,
					      struct msixlab_dev, misc);

	kref_get(&ml->ref);
	file->private_data = ml;
	return 0;
}

static int msixlab_release(struct inode *inode, struct file *file)
{
	struct msixlab_dev *ml = file->private_data;

	kref_put(&ml->ref, msixlab_dev_release);
	return 0;
}

static const struct file_operations msixlab_fops = {
	.owner		= THIS_MODULE,
	.open		= msixlab_open,
	.release	= msixlab_release,
	.unlocked_ioctl	= msixlab_ioctl,
	.compat_ioctl	= compat_ptr_ioctl,
	.llseek		= noop_llseek,
};

/* ---- PCI binding ---- */

static int msixlab_map_bar(struct msixlab_dev *ml, u32 bar)
{
	struct pci_dev *pdev = ml->pdev;
	void __iomem *base;

	if (bar >= PCI_STD_NUM_BARS ||
	    !(pci_resource_flags(pdev, bar) & IORESOURCE_MEM))
		return -ENODEV;
	if (ml->bar[bar])
		return 0;
	base = msixlab_iomap_bar(pdev, bar, KBUILD_MODNAME);
	if (IS_ERR(base))
		return PTR_ERR(base);
	ml->bar[bar] = base;
	return 0;
}

/* Locate the table and PBA (BIR + offset) and map their BARs. */
static int msixlab_map(struct msixlab_dev *ml)
{
	struct pci_dev *pdev = ml->pdev;
	u32 table, pba;
	int ret;

	ret = pci_msix_vec_count(pdev);
	if (ret < 0)
		return ret;
	ml->table_size = ret;

	pci_read_config_dword(pdev, pdev->msix_cap + PCI_MSIX_TABLE, &table);
	pci_read_config_dword(pdev, pdev->msix_cap + PCI_MSIX_PBA, &pba);
	ml->table_bar = table & PCI_MSIX_TABLE_BIR;
	ml->table_offset = table & PCI_MSIX_TABLE_OFFSET;
	ml->pba_bar = pba & PCI_MSIX_PBA_BIR;
	ml->pba_offset = pba & PCI_MSIX_PBA_OFFSET;

	ret = msixlab_map_bar(ml, 0);
	if (!ret)
		ret = msixlab_map_bar(ml, ml->table_bar);
	if (!ret)
		ret = msixlab_map_bar(ml, ml->pba_bar);
	if (ret)
		return ret;

	if (ml->table_offset + ml->table_size * PCI_MSIX_ENTRY_SIZE >
	    pci_resource_len(pdev, ml->table_bar) ||
	    ml->pba_offset + DIV_ROUND_UP(ml->table_size, 64) * 8 >
	    pci_resource_len(pdev, ml->pba_bar))
		return -ENODEV;

	ml->regs = ml->bar[0];
	ml->table = ml->bar[ml->table_bar] + ml->table_offset;
	ml->pba = ml->bar[ml->pba_bar] + ml->pba_offset;
	return 0;
}

static int msixlab_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct msixlab_dev *ml;
	int ret;

	if (!pdev->msix_cap)
		return -ENODEV;

	ml = kzalloc_obj(*ml, GFP_KERNEL);
	if (!ml)
		return -ENOMEM;
	ml->pdev = pci_dev_get(pdev);	/* runtime PM calls of a file left open */
	kref_init(&ml->ref);
	mutex_init(&ml->lock);
	INIT_LIST_HEAD(&ml->groups);
	init_waitqueue_head(&ml->raise_wq);
	atomic64_set(&ml->irqs, 0);
	msixlab_crash_init(ml);
	ml->next_group = 1;

	ret = pcim_enable_device(pdev);
	if (ret)
		goto err_put;
	pci_set_master(pdev);

	ret = msixlab_map(ml);
	if (ret)
		goto err_put;

	ml->vecs = kcalloc(ml->table_size, sizeof(*ml->vecs), GFP_KERNEL);
	if (!ml->vecs) {
		ret = -ENOMEM;
		goto err_put;
	}

	ml->id = ida_alloc(&msixlab_ida, GFP_KERNEL);
	if (ml->id < 0) {
		ret = ml->id;
		goto err_put;
	}
	snprintf(ml->name, sizeof(ml->name), "msixlab%d", ml->id);

	ret = pci_alloc_irq_vectors(pdev, 1, 1, PCI_IRQ_MSIX);
	if (ret < 0)
		goto err_ida;
	ml->can_alloc_dyn = pci_msix_can_alloc_dyn(pdev);

	ret = msixlab_grp0_setup(ml);
	if (ret)
		goto err_vectors;

	ml->misc.minor = MISC_DYNAMIC_MINOR;
	ml->misc.name = ml->name;
	ml->misc.fops = &msixlab_fops;
	ml->misc.parent = &pdev->dev;
	ml->misc.mode = 0600;
	ret = misc_register(&ml->misc);
	if (ret)
		goto err_grp0;

	pci_set_drvdata(pdev, ml);
	msixlab_pm_probe(ml);
	dev_info(&pdev->dev,
		 "%s: %u MSI-X entries, table BAR%u+%#x, PBA BAR%u+%#x, dynamic allocation %s, fault injection %s\n",
		 ml->name, ml->table_size, ml->table_bar, ml->table_offset,
		 ml->pba_bar, ml->pba_offset,
		 ml->can_alloc_dyn ? "supported" : "not supported",
		 msixlab_fault_injection() ? "on" : "off");
	return 0;

err_grp0:
	msixlab_grp0_teardown(ml);
err_vectors:
	pci_free_irq_vectors(pdev);
err_ida:
	ida_free(&msixlab_ida, ml->id);
err_put:
	kref_put(&ml->ref, msixlab_dev_release);
	return ret;
}

static void msixlab_remove(struct pci_dev *pdev)
{
	struct msixlab_dev *ml = pci_get_drvdata(pdev);
	u32 vectors;

	msixlab_pm_remove(ml);
	misc_deregister(&ml->misc);

	mutex_lock(&ml->lock);
	WRITE_ONCE(ml->gone, true);
	vectors = ml->nr_vectors;
	msixlab_grp_free_all(ml);
	msixlab_grp0_teardown(ml);
	mutex_unlock(&ml->lock);
	msixlab_crash_cancel(ml);	/* none can be scheduled once gone */

	pci_free_irq_vectors(pdev);
	ida_free(&msixlab_ida, ml->id);
	dev_info(&pdev->dev, "%s: removed, freed %u vectors\n", ml->name,
		 vectors);
	kref_put(&ml->ref, msixlab_dev_release);
}

static const struct pci_device_id msixlab_ids[] = {
	{ PCI_DEVICE(MSIXLAB_VENDOR_ID, MSIXLAB_DEVICE_ID) },
	{ }
};
MODULE_DEVICE_TABLE(pci, msixlab_ids);

static struct pci_driver msixlab_driver = {
	.name		= KBUILD_MODNAME,
	.id_table	= msixlab_ids,
	.probe		= msixlab_probe,
	.remove		= msixlab_remove,
	.driver.pm	= pm_ptr(&msixlab_pm_ops),
};
module_pci_driver(msixlab_driver);

MODULE_DESCRIPTION("msixlab dynamic MSI-X test driver");
MODULE_LICENSE("GPL");
