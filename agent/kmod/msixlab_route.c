// SPDX-License-Identifier: GPL-2.0
/*
 * msixlab: what the guest sees of each vector, and raising it.
 *
 * Concepts:
 *  - Three views of one vector: the message the kernel cached for the IRQ
 *    (get_cached_msi_msg), the table entry read back through MMIO (under
 *    QEMU the table is emulated by QEMU, so this is QEMU's copy), and the
 *    IRQ's requested and effective affinity.
 *  - A raise writes the index to the ICS doorbell (BAR0 + 0x20) under the
 *    device lock, then waits without it (interruptibly, bounded) until the
 *    vector's handler has counted one more interrupt; it reports the CPU
 *    that counted it, so a caller can check that the interrupt arrived on
 *    the vector it raised and on the CPU it expects.
 *  - Per-CPU data (counts, what was asked, the kernel's affinity masks) goes
 *    to a caller-sized buffer of nr_cpu_ids entries: no CPU limit.
 *  - The Function Mask bit of the MSI-X Message Control register masks
 *    every vector at once; the device must hold raises pending meanwhile.
 */
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/irq.h>
#include <linux/jiffies.h>
#include <linux/ktime.h>
#include <linux/msi.h>
#include <linux/percpu.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "msixlab.h"

static void msixlab_entry_read(struct msixlab_dev *ml, u32 index,
			       u32 *addr_lo, u32 *addr_hi, u32 *data, u32 *ctrl)
{
	void __iomem *e = ml->table + index * PCI_MSIX_ENTRY_SIZE;

	*addr_lo = readl(e + PCI_MSIX_ENTRY_LOWER_ADDR);
	*addr_hi = readl(e + PCI_MSIX_ENTRY_UPPER_ADDR);
	*data = readl(e + PCI_MSIX_ENTRY_DATA);
	*ctrl = readl(e + PCI_MSIX_ENTRY_VECTOR_CTRL);
}

static struct msixlab_vec *msixlab_vec_lookup(struct msixlab_dev *ml,
					      u32 index, int *err)
{
	if (index >= ml->table_size) {
		*err = -EINVAL;
		return NULL;
	}
	if (!ml->vecs[index]) {
		*err = -ENOENT;
		return NULL;
	}
	return ml->vecs[index];
}

/* Flags of one CPU for vec: what was asked, the kernel's two masks. */
static u32 msixlab_cpu_flags(struct msixlab_vec *vec, unsigned int cpu,
			     const struct cpumask *affinity,
			     const struct cpumask *effective)
{
	u32 flags = 0;

	if (vec->grp->cpu == cpu)
		flags |= MSIXLAB_CPU_REQUESTED;
	if (affinity && cpumask_test_cpu(cpu, affinity))
		flags |= MSIXLAB_CPU_AFFINITY;
	if (effective && cpumask_test_cpu(cpu, effective))
		flags |= MSIXLAB_CPU_EFFECTIVE;
	return flags;
}

/* Fill one msixlab_vector_cpu per CPU id into cpus (nr_cpu_ids entries). */
static void msixlab_vector_cpus(struct msixlab_vec *vec,
				struct msixlab_vector_cpu *cpus)
{
	const struct cpumask *affinity = irq_get_affinity_mask(vec->map.virq);
	const struct cpumask *effective =
		irq_get_effective_affinity_mask(vec->map.virq);
	unsigned int cpu;

	for (cpu = 0; cpu < nr_cpu_ids; cpu++) {
		if (cpu_possible(cpu))
			cpus[cpu].count = READ_ONCE(*per_cpu_ptr(vec->counts, cpu));
		cpus[cpu].flags = msixlab_cpu_flags(vec, cpu, affinity,
						    effective);
	}
}

static void msixlab_vector_fill(struct msixlab_dev *ml, struct msixlab_vec *vec,
				struct msixlab_vector *v,
				struct msixlab_vector_cpu *cpus)
{
	struct msi_msg msg = { };
	int cpu;

	/* Acquire: pairs with the release in msixlab_irq(). */
	v->total = atomic64_read_acquire(&vec->total);
	cpu = READ_ONCE(vec->last_cpu);
	v->last_cpu = cpu < 0 ? MSIXLAB_NO_CPU : cpu;
	if (cpus)
		msixlab_vector_cpus(vec, cpus);
	v->nr_cpus = nr_cpu_ids;
	v->group = vec->grp->id;
	v->irq = vec->map.virq;
	get_cached_msi_msg(vec->map.virq, &msg);
	v->msg_address_lo = msg.address_lo;
	v->msg_address_hi = msg.address_hi;
	v->msg_data = msg.data;
	msixlab_entry_read(ml, v->index, &v->table_address_lo,
			   &v->table_address_hi, &v->table_data,
			   &v->table_ctrl);
}

/*
 * One vector's three views.  The per-CPU buffer is filled under the device
 * lock into kernel memory and copied to the caller after unlocking, so a
 * user buffer that faults never holds up the other ioctls or remove().
 */
int msixlab_vector_info(struct msixlab_dev *ml, struct msixlab_vector *v)
{
	struct msixlab_vector_cpu *cpus = NULL;
	struct msixlab_vec *vec;
	int ret = 0;

	if (v->pad)
		return -EINVAL;
	if (v->cpus) {
		if (v->cpus_len < nr_cpu_ids)
			return -EOVERFLOW;
		cpus = kcalloc(nr_cpu_ids, sizeof(*cpus), GFP_KERNEL);
		if (!cpus)
			return -ENOMEM;
	} else if (v->cpus_len) {
		return -EINVAL;
	}

	mutex_lock(&ml->lock);
	vec = ml->gone ? NULL : msixlab_vec_lookup(ml, v->index, &ret);
	if (ml->gone)
		ret = -ENODEV;
	if (vec)
		msixlab_vector_fill(ml, vec, v, cpus);
	mutex_unlock(&ml->lock);

	if (!ret && cpus &&
	    copy_to_user(u64_to_user_ptr(v->cpus), cpus,
			 nr_cpu_ids * sizeof(*cpus)))
		ret = -EFAULT;
	kfree(cpus);
	return ret;
}

int msixlab_read_entry(struct msixlab_dev *ml, struct msixlab_entry *e)
{
	if (e->pad || e->index >= ml->table_size)
		return -EINVAL;
	msixlab_entry_read(ml, e->index, &e->address_lo, &e->address_hi,
			   &e->data, &e->ctrl);
	return 0;
}

int msixlab_read_pba(struct msixlab_dev *ml, struct msixlab_pba *p)
{
	u32 words = DIV_ROUND_UP(ml->table_size, 64);
	u32 i;

	p->table_size = ml->table_size;
	for (i = 0; i < words; i++) {
		u64 lo = readl(ml->pba + i * 8);
		u64 hi = readl(ml->pba + i * 8 + 4);

		p->bits[i] = hi << 32 | lo;
	}
	return 0;
}

static bool msixlab_raise_done(struct msixlab_vec *vec, s64 before)
{
	/* Acquire: pairs with the release of total in msixlab_irq(). */
	if (atomic64_read_acquire(&vec->total) != before)
		return true;
	/* Acquire: pairs with the release of dead in msixlab_vec_detach(). */
	return smp_load_acquire(&vec->dead);
}

/* After the wait: the handler's record, or why there is none. */
static int msixlab_raise_result(struct msixlab_dev *ml,
				struct msixlab_vec *vec, s64 before, u64 t0,
				long left, struct msixlab_raise *r)
{
	s64 total = atomic64_read_acquire(&vec->total);

	if (total != before) {
		r->irq = vec->map.virq;
		r->cpu = READ_ONCE(vec->last_cpu);
		r->latency_ns = READ_ONCE(vec->last_ns) - t0;
		r->total = total;
		return 0;
	}
	/* Acquire: pairs with msixlab_vec_detach(), so ml->gone is seen too. */
	if (smp_load_acquire(&vec->dead))
		return READ_ONCE(ml->gone) ? -ENODEV : -ENOENT;
	if (left < 0)
		return -EINTR;	/* not -ERESTARTSYS: a restart would ring twice */
	return -ETIMEDOUT;
}

/*
 * Ring the doorbell under ml->lock (the vector is live, the BAR mapped),
 * then wait without it, interruptibly and bounded by timeout_ms, holding a
 * reference on the vector so a concurrent free or unbind cannot free it.
 */
int msixlab_raise(struct msixlab_dev *ml, struct msixlab_raise *r)
{
	struct msixlab_vec *vec;
	s64 before;
	long left;
	u64 t0;
	int ret;

	if (r->timeout_ms > MSIXLAB_RAISE_MAX_MS)
		return -EINVAL;
	if (!r->timeout_ms)
		r->timeout_ms = MSIXLAB_RAISE_DEFAULT_MS;

	mutex_lock(&ml->lock);
	ret = -ENODEV;
	vec = ml->gone ? NULL : msixlab_vec_lookup(ml, r->index, &ret);
	if (!vec) {
		mutex_unlock(&ml->lock);
		return ret;
	}
	kref_get(&vec->ref);
	before = atomic64_read_acquire(&vec->total);
	t0 = ktime_get_ns();
	writel(r->index, ml->regs + MSIXLAB_REG_ICS);
	mutex_unlock(&ml->lock);

	left = wait_event_interruptible_timeout(ml->raise_wq,
						msixlab_raise_done(vec, before),
						msecs_to_jiffies(r->timeout_ms));
	ret = msixlab_raise_result(ml, vec, before, t0, left, r);
	msixlab_vec_put(vec);
	return ret;
}

/*
 * One read of every index's total under ml->lock (0 when not allocated);
 * *short_count: allocated indices below want (none without want).  *seen:
 * ml->irqs before the read, for the wait on the next interrupt.
 */
static int msixlab_totals_read(struct msixlab_dev *ml, u64 *totals,
			       const u64 *want, u32 *short_count, s64 *seen)
{
	u32 i;

	*short_count = 0;
	mutex_lock(&ml->lock);
	if (ml->gone) {
		mutex_unlock(&ml->lock);
		return -ENODEV;
	}
	/* Acquire: pairs with the release in msixlab_irq(). */
	*seen = atomic64_read_acquire(&ml->irqs);
	for (i = 0; i < ml->table_size; i++) {
		struct msixlab_vec *vec = ml->vecs[i];

		totals[i] = vec ? atomic64_read_acquire(&vec->total) : 0;
		if (vec && want && totals[i] < want[i])
			(*short_count)++;
	}
	mutex_unlock(&ml->lock);
	return 0;
}

/* Whether any handler counted an interrupt since @seen, or unbind came. */
static bool msixlab_irqs_moved(struct msixlab_dev *ml, s64 seen)
{
	/* Acquire: pairs with the release of irqs in msixlab_irq(). */
	return atomic64_read_acquire(&ml->irqs) != seen || READ_ONCE(ml->gone);
}

/*
 * Every index's total, after waiting (bounded, interruptibly, without the
 * lock) until each allocated index reached want[index], if want is given.
 */
int msixlab_totals(struct msixlab_dev *ml, struct msixlab_totals *t)
{
	u64 *totals, *want = NULL;
	long left;
	s64 seen;
	int ret;

	if (t->pad || t->timeout_ms > MSIXLAB_RAISE_MAX_MS ||
	    t->count > MSIXLAB_MAX_VECTORS || !t->totals)
		return -EINVAL;
	if (t->count < READ_ONCE(ml->table_size))
		return -EOVERFLOW;
	totals = kcalloc(t->count, sizeof(*totals), GFP_KERNEL);
	if (!totals)
		return -ENOMEM;
	if (t->want) {
		want = memdup_user(u64_to_user_ptr(t->want),
				   t->count * sizeof(*want));
		if (IS_ERR(want)) {
			kfree(totals);
			return PTR_ERR(want);
		}
	}
	left = want ? msecs_to_jiffies(t->timeout_ms) : 0;
	for (;;) {
		ret = msixlab_totals_read(ml, totals, want, &t->short_count,
					  &seen);
		if (ret || !t->short_count || !left)
			break;
		left = wait_event_interruptible_timeout(ml->raise_wq,
							msixlab_irqs_moved(ml, seen),
							left);
		if (left < 0) {
			ret = -EINTR;
			break;
		}
	}
	if (!ret && copy_to_user(u64_to_user_ptr(t->totals), totals,
				 t->count * sizeof(*totals)))
		ret = -EFAULT;
	kfree(want);
	kfree(totals);
	return ret;
}

u16 msixlab_msix_control(struct msixlab_dev *ml)
{
	u16 control = 0;

	pci_read_config_word(ml->pdev, ml->pdev->msix_cap + PCI_MSIX_FLAGS,
			     &control);
	return control;
}

/* Set or clear the Function Mask bit; report the register read back. */
int msixlab_function_mask(struct msixlab_dev *ml,
			  struct msixlab_function_mask *fm)
{
	struct pci_dev *pdev = ml->pdev;
	u16 control = msixlab_msix_control(ml);
	int ret;

	if (fm->masked > 1 || fm->pad)
		return -EINVAL;
	if (fm->masked)
		control |= PCI_MSIX_FLAGS_MASKALL;
	else
		control &= ~PCI_MSIX_FLAGS_MASKALL;
	ret = pci_write_config_word(pdev, pdev->msix_cap + PCI_MSIX_FLAGS,
				    control);
	if (ret)
		return pcibios_err_to_errno(ret);
	fm->control = msixlab_msix_control(ml);
	dev_dbg(&pdev->dev, "%s: function mask %s, control %#06x\n", ml->name,
		fm->masked ? "set" : "cleared", fm->control);
	return 0;
}
