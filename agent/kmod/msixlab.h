/* SPDX-License-Identifier: GPL-2.0 */
/*
 * msixlab guest driver: shared definitions.
 *
 * Concepts:
 *  - struct msixlab_dev: one bound 1234:11e9 function, its mapped BARs, its
 *    misc device /dev/msixlab<N>, and the vectors indexed by MSI-X index.
 *  - struct msixlab_vec: one allocated MSI-X index, its Linux IRQ and the
 *    handler's per-CPU counters.
 *  - struct msixlab_grp: vectors allocated by one request (group 0 is the
 *    enable-time vector at index 0).
 *  - ml->lock serialises every control operation except the waits of RAISE
 *    and TOTALS and the fault injection (they run without it); the interrupt handler
 *    only touches the vector's counters and the raise wait queue.
 *  - ml->irqs counts every interrupt of the device's handlers, so a caller
 *    waiting for several vectors at once (MSIXLAB_IOC_TOTALS) sleeps until
 *    any count moved, then re-reads them all under ml->lock.
 *  - Runtime PM: every ioctl holds a runtime PM reference (msixlab_pm.c);
 *    between a suspend and its resume every live vector is disabled
 *    (irqs_off), and the PCI core keeps the MSI-X state across D3hot.
 *  - A vector is reference counted: ml->vecs[] holds one reference and a
 *    raise waiting for it another, so a free or an unbind during the wait
 *    marks it dead and wakes the waiter instead of freeing it under it.
 */
#ifndef _MSIXLAB_H
#define _MSIXLAB_H

#include <linux/atomic.h>
#include <linux/kref.h>
#include <linux/list.h>
#include <linux/miscdevice.h>
#include <linux/msi_api.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "msixlab_compat.h"
#include "msixlab_uapi.h"

#define MSIXLAB_VENDOR_ID	0x1234
#define MSIXLAB_DEVICE_ID	0x11e9

/* BAR0 register map */
#define MSIXLAB_REG_ICS		0x20	/* write v: raise MSI-X vector v */

struct msixlab_dev;
struct msixlab_grp;

struct msixlab_vec {
	struct msixlab_dev *ml;
	struct msixlab_grp *grp;
	struct kref ref;		/* ml->vecs[] + each waiting raise */
	struct msi_map map;		/* index and Linux IRQ */
	bool dynamic;			/* from pci_msix_alloc_irq_at() */
	bool dead;			/* freed: its handler is gone */
	u64 __percpu *counts;
	/*
	 * The handler writes last_cpu and last_ns, then increments total
	 * with release ordering; readers load total with acquire ordering
	 * before reading last_cpu/last_ns (see msixlab_irq()).
	 */
	atomic64_t total;
	int last_cpu;
	u64 last_ns;			/* ktime of the last interrupt */
	char name[32];			/* request_irq() name */
};

struct msixlab_grp {
	struct list_head node;		/* in ml->groups, ascending id */
	u32 id;
	u32 count;
	u32 min, max, start, cpu, flags;
	u32 fail_irq;			/* this vector (1 = first) fails request_irq() */
};

struct msixlab_dev {
	struct pci_dev *pdev;
	struct kref ref;		/* the binding + one per open file */
	struct mutex lock;		/* control operations */
	bool gone;			/* unbound: ioctls fail with ENODEV */
	int id;				/* N of /dev/msixlab<N> */
	char name[sizeof("msixlab") + 10];	/* any int id: 10 digits */
	struct miscdevice misc;

	void __iomem *bar[PCI_STD_NUM_BARS];
	void __iomem *regs;		/* BAR0 */
	void __iomem *table;		/* MSI-X table */
	void __iomem *pba;		/* MSI-X PBA */
	u32 table_size;
	u32 table_bar, table_offset;
	u32 pba_bar, pba_offset;
	bool can_alloc_dyn;

	struct msixlab_vec **vecs;	/* [table_size], NULL = free */
	struct list_head groups;
	struct msixlab_grp grp0;
	u32 next_group;
	u32 nr_vectors;
	wait_queue_head_t raise_wq;	/* every handler wakes it */
	atomic64_t irqs;		/* interrupts every handler counted */
	struct delayed_work crash_work;	/* a delayed MSIXLAB_CRASH_PANIC */
	u32 fail_irq_next;		/* armed for the next group (FAIL_REQUEST_IRQ) */
	bool irqs_off;			/* suspended: every live vector disabled */
	struct {
		u32 runtime_suspends, runtime_resumes;
		u32 system_suspends, system_resumes;
	} pm;				/* callbacks run since probe (MSIXLAB_IOC_PM) */
};

/* msixlab_group.c */
int msixlab_grp0_setup(struct msixlab_dev *ml);
void msixlab_grp0_teardown(struct msixlab_dev *ml);
int msixlab_grp_alloc(struct msixlab_dev *ml, struct msixlab_group *req);
int msixlab_grp_free(struct msixlab_dev *ml, u32 id);
void msixlab_grp_free_all(struct msixlab_dev *ml);
int msixlab_grp_get(struct msixlab_dev *ml, struct msixlab_group *req);
void msixlab_indices(struct msixlab_dev *ml, struct msixlab_grp *grp,
		     __u64 *words);
void msixlab_vec_put(struct msixlab_vec *vec);

/* msixlab_route.c */
int msixlab_vector_info(struct msixlab_dev *ml, struct msixlab_vector *v);
int msixlab_read_entry(struct msixlab_dev *ml, struct msixlab_entry *e);
int msixlab_read_pba(struct msixlab_dev *ml, struct msixlab_pba *p);
int msixlab_raise(struct msixlab_dev *ml, struct msixlab_raise *r);
int msixlab_totals(struct msixlab_dev *ml, struct msixlab_totals *t);
int msixlab_function_mask(struct msixlab_dev *ml,
			  struct msixlab_function_mask *fm);
u16 msixlab_msix_control(struct msixlab_dev *ml);

/* msixlab_fault.c */
bool msixlab_fault_injection(void);
void msixlab_crash_init(struct msixlab_dev *ml);
void msixlab_crash_cancel(struct msixlab_dev *ml);
int msixlab_crash(struct msixlab_dev *ml, struct msixlab_crash *c);
int msixlab_arm_irq_fault(struct msixlab_dev *ml, struct msixlab_irq_fault *f);

/* msixlab_pm.c */
extern const struct dev_pm_ops msixlab_pm_ops;
void msixlab_pm_probe(struct msixlab_dev *ml);
void msixlab_pm_remove(struct msixlab_dev *ml);
int msixlab_pm_get(struct msixlab_dev *ml);
void msixlab_pm_put(struct msixlab_dev *ml);
int msixlab_pm_stats(struct msixlab_dev *ml, struct msixlab_pm *p);

#endif /* _MSIXLAB_H */
