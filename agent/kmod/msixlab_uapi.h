/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * msixlab control interface: /dev/msixlab<N>, one per bound device.
 *
 * Concepts:
 *  - A *group* is a set of MSI-X vectors allocated together after MSI-X is
 *    enabled (the 2019 RFC's pci_alloc_irq_vectors_dyn() semantics, built on
 *    pci_msix_alloc_irq_at()).  Group 0 is the vector MSI-X was enabled with
 *    (index 0); it lives as long as the binding and cannot be freed.  Group
 *    ids of dynamic groups start at 1 and are never reused while bound.
 *  - A *vector* is one MSI-X table index with its Linux IRQ and handler.
 *  - Bitmaps are arrays of __u64; bit b of word w stands for index/CPU
 *    w * 64 + b.
 *
 * Every ioctl returns 0 or -1 with errno; each errno has one meaning:
 *  ENOENT     no such group / the index is not allocated
 *  ENOSPC     no room: fewer than min free table entries (or CPU vectors)
 *  EBUSY      an explicit start index (start .. start+min-1) is taken
 *  EINVAL     bad argument or range (min > max, index >= table size, ...)
 *  EPERM      group 0 cannot be freed
 *  EOPNOTSUPP the device's MSI domain cannot allocate after enable
 *  ETIMEDOUT  a raised vector was not counted within timeout_ms
 *  ENODEV     the device was unbound while the file was open
 *
 * All structures have fixed-size fields and explicit padding so that the
 * Python agent (agent/guest/uapi.py) can pack them with struct; a host unit
 * test (tests/test_kmod_uapi.py) compares both.
 */
#ifndef _UAPI_MSIXLAB_H
#define _UAPI_MSIXLAB_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define MSIXLAB_UAPI_VERSION	1

#define MSIXLAB_MAX_VECTORS	2048	/* PCI limit on the MSI-X table size */
#define MSIXLAB_MAX_CPUS	256
#define MSIXLAB_VEC_WORDS	(MSIXLAB_MAX_VECTORS / 64)
#define MSIXLAB_CPU_WORDS	(MSIXLAB_MAX_CPUS / 64)

#define MSIXLAB_ANY_INDEX	0xffffffffU	/* msixlab_group.start */
#define MSIXLAB_NO_CPU		0xffffffffU	/* msixlab_group.cpu */
#define MSIXLAB_NO_GROUP	0xffffffffU

/* msixlab_group.flags */
#define MSIXLAB_GROUP_MANAGED	(1U << 0)	/* managed affinity (needs cpu) */

#define MSIXLAB_RAISE_DEFAULT_MS	1000
#define MSIXLAB_RAISE_MAX_MS		60000

/* MSIXLAB_IOC_INFO: the device and its MSI-X capability. */
struct msixlab_info {
	__u32 version;		/* MSIXLAB_UAPI_VERSION */
	__u32 bdf;		/* domain << 16 | bus << 8 | devfn */
	__u16 vendor;
	__u16 device;
	__u32 table_size;	/* MSI-X table entries */
	__u32 table_bar;
	__u32 table_offset;
	__u32 pba_bar;
	__u32 pba_offset;
	__u32 can_alloc_dyn;	/* pci_msix_can_alloc_dyn() */
	__u32 nr_cpu_ids;
	__u32 nr_groups;	/* including group 0 */
	__u32 nr_vectors;	/* allocated vectors, including index 0 */
	__u32 next_group;	/* id the next allocation will get */
	__u32 pad;
	__u64 allocated[MSIXLAB_VEC_WORDS];	/* allocated indices */
};

/*
 * MSIXLAB_IOC_ALLOC_GROUP (in: min, max, start, cpu, flags; out: id, count,
 * indices) and MSIXLAB_IOC_GET_GROUP (in: id; out: the group with the lowest
 * id >= the given id, ENOENT when there is none; iterate with id + 1).
 *
 * Allocation takes up to max vectors, at the lowest free indices
 * (start = MSIXLAB_ANY_INDEX) or at start, start + 1, ... (stopping at the
 * first taken index or the table end); fewer than min is undone and fails.
 * EINVAL: min == 0, min > max, min > table size, start >= table size or
 * start + min > table size, unknown flags, an offline or out-of-range cpu,
 * MANAGED without a cpu.  max may exceed the table size.
 */
struct msixlab_group {
	__u32 id;
	__u32 count;		/* vectors in the group */
	__u32 min;
	__u32 max;
	__u32 start;		/* first index or MSIXLAB_ANY_INDEX */
	__u32 cpu;		/* affinity CPU or MSIXLAB_NO_CPU */
	__u32 flags;		/* MSIXLAB_GROUP_* */
	__u32 pad;
	__u64 indices[MSIXLAB_VEC_WORDS];	/* the group's indices */
};

/* MSIXLAB_IOC_FREE_GROUP */
struct msixlab_free {
	__u32 id;		/* in */
	__u32 count;		/* out: vectors freed */
};

/* MSIXLAB_IOC_VECTOR: the routing of one allocated vector. */
struct msixlab_vector {
	__u32 index;		/* in: MSI-X table index */
	__u32 group;
	__u32 irq;		/* Linux interrupt number */
	__u32 nr_cpus;		/* valid entries in counts[] */
	/* message cached by the kernel (get_cached_msi_msg) */
	__u32 msg_address_lo;
	__u32 msg_address_hi;
	__u32 msg_data;
	/* the table entry as read back through MMIO */
	__u32 table_address_lo;
	__u32 table_address_hi;
	__u32 table_data;
	__u32 table_ctrl;
	__u32 last_cpu;		/* CPU of the last interrupt or NO_CPU */
	__u64 total;		/* interrupts counted, all CPUs */
	__u64 requested[MSIXLAB_CPU_WORDS];	/* affinity mask */
	__u64 effective[MSIXLAB_CPU_WORDS];	/* effective affinity */
	__u64 counts[MSIXLAB_MAX_CPUS];		/* interrupts per CPU */
};

/* MSIXLAB_IOC_RAISE: ring the doorbell for index, wait for the handler. */
struct msixlab_raise {
	__u32 index;		/* in */
	__u32 timeout_ms;	/* in: 0 = MSIXLAB_RAISE_DEFAULT_MS */
	__u32 cpu;		/* out: CPU whose handler counted it */
	__u32 irq;		/* out */
	__u64 latency_ns;	/* out: doorbell write to handler */
	__u64 total;		/* out: vector's count afterwards */
};

/* MSIXLAB_IOC_READ_PBA: the Pending Bit Array. */
struct msixlab_pba {
	__u32 table_size;
	__u32 pad;
	__u64 bits[MSIXLAB_VEC_WORDS];
};

/* MSIXLAB_IOC_READ_ENTRY: any table entry, allocated or not. */
struct msixlab_entry {
	__u32 index;		/* in */
	__u32 address_lo;
	__u32 address_hi;
	__u32 data;
	__u32 ctrl;
	__u32 pad;
};

#define MSIXLAB_IOC_MAGIC	0xB7

#define MSIXLAB_IOC_INFO	_IOR(MSIXLAB_IOC_MAGIC, 0x00, struct msixlab_info)
#define MSIXLAB_IOC_ALLOC_GROUP	_IOWR(MSIXLAB_IOC_MAGIC, 0x01, struct msixlab_group)
#define MSIXLAB_IOC_FREE_GROUP	_IOWR(MSIXLAB_IOC_MAGIC, 0x02, struct msixlab_free)
#define MSIXLAB_IOC_GET_GROUP	_IOWR(MSIXLAB_IOC_MAGIC, 0x03, struct msixlab_group)
#define MSIXLAB_IOC_VECTOR	_IOWR(MSIXLAB_IOC_MAGIC, 0x04, struct msixlab_vector)
#define MSIXLAB_IOC_RAISE	_IOWR(MSIXLAB_IOC_MAGIC, 0x05, struct msixlab_raise)
#define MSIXLAB_IOC_READ_PBA	_IOR(MSIXLAB_IOC_MAGIC, 0x06, struct msixlab_pba)
#define MSIXLAB_IOC_READ_ENTRY	_IOWR(MSIXLAB_IOC_MAGIC, 0x07, struct msixlab_entry)

#endif /* _UAPI_MSIXLAB_H */
