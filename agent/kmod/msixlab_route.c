// SPDX-License-Identifier: GPL-2.0
/*
 * msixlab: what the guest sees of each vector, and raising it.
 *
 * Concepts:
 *  - Three views of one vector: the message the kernel cached for the IRQ
 *    (get_cached_msi_msg), the table entry read back through MMIO (under
 *    QEMU the table is emulated by QEMU, so this is QEMU's copy), and the
 *    IRQ's requested and effective affinity.
 *  - A raise writes the index to the ICS doorbell (BAR0 + 0x20) and waits,
 *    bounded, until the vector's handler has counted one more interrupt;
 *    it reports the CPU that counted it, so a caller can check that the
 *    interrupt arrived on the vector it raised and on the CPU it expects.
 */
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/irq.h>
#include <linux/jiffies.h>
#include <linux/ktime.h>
#include <linux/msi.h>
#include <linux/percpu.h>

#include "msixlab.h"

static void msixlab_cpumask_words(const struct cpumask *mask, __u64 *words)
{
	unsigned int cpu;

	memset(words, 0, MSIXLAB_CPU_WORDS * sizeof(*words));
	if (!mask)
		return;
	for_each_cpu(cpu, mask)
		if (cpu < MSIXLAB_MAX_CPUS)
			words[cpu / 64] |= 1ULL << (cpu % 64);
}

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

int msixlab_vector_info(struct msixlab_dev *ml, struct msixlab_vector *v)
{
	struct msixlab_vec *vec;
	struct msi_msg msg = { };
	unsigned int cpu;
	int ret;

	vec = msixlab_vec_lookup(ml, v->index, &ret);
	if (!vec)
		return ret;

	v->group = vec->grp->id;
	v->irq = vec->map.virq;
	get_cached_msi_msg(vec->map.virq, &msg);
	v->msg_address_lo = msg.address_lo;
	v->msg_address_hi = msg.address_hi;
	v->msg_data = msg.data;
	msixlab_entry_read(ml, v->index, &v->table_address_lo,
			   &v->table_address_hi, &v->table_data,
			   &v->table_ctrl);
	msixlab_cpumask_words(irq_get_affinity_mask(vec->map.virq),
			      v->requested);
	msixlab_cpumask_words(irq_get_effective_affinity_mask(vec->map.virq),
			      v->effective);

	v->nr_cpus = min_t(u32, nr_cpu_ids, MSIXLAB_MAX_CPUS);
	for_each_possible_cpu(cpu)
		if (cpu < MSIXLAB_MAX_CPUS)
			v->counts[cpu] = *per_cpu_ptr(vec->counts, cpu);
	v->total = atomic64_read(&vec->total);
	cpu = READ_ONCE(vec->last_cpu);
	v->last_cpu = (int)cpu < 0 ? MSIXLAB_NO_CPU : cpu;
	return 0;
}

int msixlab_read_entry(struct msixlab_dev *ml, struct msixlab_entry *e)
{
	if (e->index >= ml->table_size)
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

int msixlab_raise(struct msixlab_dev *ml, struct msixlab_raise *r)
{
	struct msixlab_vec *vec;
	unsigned long left;
	s64 before;
	u64 t0;
	int ret;

	if (r->timeout_ms > MSIXLAB_RAISE_MAX_MS)
		return -EINVAL;
	vec = msixlab_vec_lookup(ml, r->index, &ret);
	if (!vec)
		return ret;
	if (!r->timeout_ms)
		r->timeout_ms = MSIXLAB_RAISE_DEFAULT_MS;

	before = atomic64_read(&vec->total);
	t0 = ktime_get_ns();
	writel(r->index, ml->regs + MSIXLAB_REG_ICS);
	left = wait_event_timeout(ml->raise_wq,
				  atomic64_read(&vec->total) != before,
				  msecs_to_jiffies(r->timeout_ms));
	if (!left)
		return -ETIMEDOUT;

	r->irq = vec->map.virq;
	r->cpu = READ_ONCE(vec->last_cpu);
	r->latency_ns = READ_ONCE(vec->last_ns) - t0;
	r->total = atomic64_read(&vec->total);
	return 0;
}
