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
 *  - Index bitmaps are arrays of __u64; bit b of word w stands for index
 *    w * 64 + b.  Per-CPU data has no fixed limit: MSIXLAB_IOC_VECTOR
 *    writes one struct msixlab_vector_cpu per CPU id (nr_cpu_ids of them)
 *    into a buffer the caller passes by address and length.
 *  - Every field called pad must be zero on input (EINVAL otherwise), so
 *    that a later version can give it a meaning.
 *
 * Every ioctl returns 0 or -1 with errno; each errno has one meaning:
 *  ENOENT     no such group / the index is not allocated (or was freed
 *             while a raise waited for it)
 *  ENOSPC     no room: fewer than min free table entries (or CPU vectors)
 *  EBUSY      an explicit start index (start .. start+min-1) is taken
 *  EINVAL     bad argument or range (min > max, index >= table size,
 *             non-zero pad, unknown flags or kind, ...)
 *  EPERM      group 0 cannot be freed
 *  EOPNOTSUPP the device's MSI domain cannot allocate after enable
 *  ETIMEDOUT  a raised vector was not counted within timeout_ms
 *  EINTR      a signal interrupted a raise's wait (the doorbell was rung)
 *  EOVERFLOW  the per-CPU buffer holds fewer than nr_cpu_ids entries, or
 *             MSIXLAB_IOC_TOTALS' count is below the table size
 *  EIO        the kernel gave a vector another index than the one asked
 *             for, or one the driver already holds (the kernel misbehaved)
 *  EACCES     fault injection is off (module parameter fault_injection=0)
 *  ENOMEM     no memory, or request_irq() failed for a vector of the group
 *             (MSIXLAB_IOC_FAIL_REQUEST_IRQ makes it fail on purpose)
 *  ENODEV     the device was unbound while the file was open
 *
 * All structures have fixed-size fields and explicit padding so that the
 * Python agent (agent/guest/uapi.py) can pack them with struct; a host unit
 * test (tests/test_kmod_uapi.py) compares both.
 *
 * The ioctl magic 0xC4 is not registered in the kernel's
 * Documentation/userspace-api/ioctl/ioctl-number.rst (0xC0 is iowarrior,
 * 0xCA-0xCF cxl/cxlflash/ibmvmc/reiserfs/cxl_mem/cifs; 0xC1-0xC9 are free).
 * Version 1 used 0xB7, which remoteproc_cdev.h and nsfs.h own.  Version 3
 * added MSIXLAB_IOC_PM (the structures of version 2 are unchanged).
 */
#ifndef _UAPI_MSIXLAB_H
#define _UAPI_MSIXLAB_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define MSIXLAB_UAPI_VERSION	3

#define MSIXLAB_MAX_VECTORS	2048	/* PCI limit on the MSI-X table size */
#define MSIXLAB_VEC_WORDS	(MSIXLAB_MAX_VECTORS / 64)

#define MSIXLAB_ANY_INDEX	0xffffffffU	/* msixlab_group.start */
#define MSIXLAB_NO_CPU		0xffffffffU	/* msixlab_group.cpu */
#define MSIXLAB_NO_GROUP	0xffffffffU

/* msixlab_info.flags */
#define MSIXLAB_INFO_DYN_ALLOC		(1U << 0)	/* pci_msix_can_alloc_dyn() */
/* MSIXLAB_IOC_CRASH and MSIXLAB_IOC_FAIL_REQUEST_IRQ allowed */
#define MSIXLAB_INFO_FAULT_INJECTION	(1U << 1)

/* msixlab_group.flags */
#define MSIXLAB_GROUP_MANAGED	(1U << 0)	/* managed affinity (needs cpu) */

/* msixlab_vector_cpu.flags */
#define MSIXLAB_CPU_REQUESTED	(1U << 0)	/* the group's cpu (what was asked) */
#define MSIXLAB_CPU_AFFINITY	(1U << 1)	/* in the IRQ's affinity mask */
#define MSIXLAB_CPU_EFFECTIVE	(1U << 2)	/* in the effective affinity */

#define MSIXLAB_RAISE_DEFAULT_MS	1000
#define MSIXLAB_RAISE_MAX_MS		60000

/* msixlab_crash.kind */
#define MSIXLAB_CRASH_WARN	1	/* WARN() in the ioctl path, returns 0 */
#define MSIXLAB_CRASH_OOPS	2	/* NULL write in the ioctl path: the caller dies */
#define MSIXLAB_CRASH_PANIC	3	/* panic(), after delay_ms from a work item */
#define MSIXLAB_CRASH_MAX_DELAY_MS	10000

/* msixlab_pm.flags */
#define MSIXLAB_PM_IRQS_DISABLED	(1U << 0)	/* suspended: vectors disabled */
#define MSIXLAB_AUTOSUSPEND_MS		200	/* idle time before runtime suspend */

/* MSIXLAB_IOC_INFO: the device and its MSI-X capability. */
struct msixlab_info {
	__u32 version;		/* MSIXLAB_UAPI_VERSION */
	__u32 domain;		/* PCI domain (segment), full 32 bits */
	__u32 bus;
	__u32 devfn;		/* device << 3 | function */
	__u16 vendor;
	__u16 device;
	__u32 flags;		/* MSIXLAB_INFO_* */
	__u32 table_size;	/* MSI-X table entries */
	__u32 table_bar;
	__u32 table_offset;
	__u32 pba_bar;
	__u32 pba_offset;
	__u32 nr_cpu_ids;
	__u32 nr_groups;	/* including group 0 */
	__u32 nr_vectors;	/* allocated vectors, including index 0 */
	__u32 next_group;	/* id the next allocation will get */
	__u32 msix_control;	/* MSI-X Message Control register, read now */
	__u64 allocated[MSIXLAB_VEC_WORDS];	/* allocated indices */
};

/*
 * MSIXLAB_IOC_ALLOC_GROUP (in: min, max, start, cpu, flags; out: id, count,
 * indices) and MSIXLAB_IOC_GET_GROUP (in: id; out: the group with the lowest
 * id >= the given id, ENOENT when there is none; iterate with id + 1).
 *
 * Allocation takes up to max vectors, at the lowest free indices
 * (start = MSIXLAB_ANY_INDEX) or at exactly start, start + 1, ...
 * (stopping at the first taken index or the table end); fewer than min is
 * undone and fails.  EINVAL: min == 0, min > max, min > table size,
 * start >= table size or start + min > table size, unknown flags, an
 * offline or out-of-range cpu, MANAGED without a cpu.  max may exceed the
 * table size.
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

/* One CPU id of MSIXLAB_IOC_VECTOR's per-CPU buffer (entry i is CPU i). */
struct msixlab_vector_cpu {
	__u64 count;		/* interrupts this CPU's handler counted */
	__u32 flags;		/* MSIXLAB_CPU_* */
	__u32 pad;
};

/*
 * MSIXLAB_IOC_VECTOR: the routing of one allocated vector.  With cpus != 0
 * the driver writes nr_cpu_ids entries of struct msixlab_vector_cpu at the
 * user address cpus, which must hold cpus_len >= nr_cpu_ids of them
 * (EOVERFLOW otherwise); with cpus == 0 it writes none.
 */
struct msixlab_vector {
	__u32 index;		/* in: MSI-X table index */
	__u32 group;
	__u32 irq;		/* Linux interrupt number */
	__u32 last_cpu;		/* CPU of the last interrupt or NO_CPU */
	/* message cached by the kernel (get_cached_msi_msg) */
	__u32 msg_address_lo;
	__u32 msg_address_hi;
	__u32 msg_data;
	/* the table entry as read back through MMIO */
	__u32 table_address_lo;
	__u32 table_address_hi;
	__u32 table_data;
	__u32 table_ctrl;
	__u32 nr_cpus;		/* out: nr_cpu_ids */
	__u32 cpus_len;		/* in: entries the buffer at cpus holds */
	__u32 pad;
	__u64 cpus;		/* in: address of msixlab_vector_cpu[cpus_len] */
	__u64 total;		/* interrupts counted, all CPUs */
};

/*
 * MSIXLAB_IOC_RAISE: ring the doorbell for index and wait, without holding
 * the device's lock and interruptibly, for the handler to count it.
 */
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

/*
 * MSIXLAB_IOC_FUNCTION_MASK: set (masked = 1) or clear (masked = 0) the
 * Function Mask bit (PCI_MSIX_FLAGS_MASKALL) of the MSI-X Message Control
 * register; control is the register read back after the write.
 */
struct msixlab_function_mask {
	__u32 masked;		/* in: 0 or 1 */
	__u16 control;		/* out */
	__u16 pad;
};

/*
 * MSIXLAB_IOC_CRASH: make the kernel report a failure on purpose, so that
 * the rig's console watcher can be tested.  Allowed only when the module
 * was loaded with fault_injection=1 (EACCES otherwise).  delay_ms applies
 * to MSIXLAB_CRASH_PANIC only (0 = at once, in the ioctl) and must be 0
 * for the other kinds.
 */
struct msixlab_crash {
	__u32 kind;		/* MSIXLAB_CRASH_* */
	__u32 delay_ms;		/* <= MSIXLAB_CRASH_MAX_DELAY_MS */
};

/*
 * MSIXLAB_IOC_FAIL_REQUEST_IRQ: arm a fault for the next MSIXLAB_IOC_ALLOC_GROUP
 * on this device: request_irq() of its nth vector (1 = the first) fails with
 * ENOMEM, after pci_msix_alloc_irq_at() gave that vector its index and IRQ,
 * so the driver's error path runs.  One-shot: the next allocation takes the
 * fault (whether or not it reaches the nth vector); nth = 0 disarms.  Allowed
 * only with fault_injection=1 (EACCES otherwise); nth above
 * MSIXLAB_MAX_VECTORS or a non-zero pad is EINVAL.
 */
struct msixlab_irq_fault {
	__u32 nth;		/* in: the vector of the next group that fails */
	__u32 pad;
};

/*
 * MSIXLAB_IOC_TOTALS: every index's interrupt count in one call, and
 * optionally a bounded wait for counts to reach given values.  totals is
 * the user address of __u64[count]; the driver writes there, for each index
 * below table_size, the vector's total (0 for an index not allocated).  With
 * want != 0 (the address of __u64[count]) it first waits, interruptibly and
 * bounded by timeout_ms (<= MSIXLAB_RAISE_MAX_MS), until every allocated
 * index i has a total >= want[i] (an index not allocated is never waited
 * for); a wait that runs out is not an error: short counts the allocated
 * indices still below want when the counts were read.  count must be at
 * least table_size (EOVERFLOW) and at most MSIXLAB_MAX_VECTORS (EINVAL).
 */
struct msixlab_totals {
	__u32 count;		/* in: entries at totals (and want) */
	__u32 timeout_ms;	/* in: the wait's bound (with want) */
	__u64 totals;		/* in: address of __u64[count] (out there) */
	__u64 want;		/* in: address of __u64[count], or 0: no wait */
	__u32 short_count;	/* out: allocated indices below want */
	__u32 pad;
};

/*
 * MSIXLAB_IOC_PM: how often each power management callback of the driver ran
 * since probe (system: suspend and resume, also for hibernation's freeze,
 * thaw, poweroff and restore; runtime: runtime_suspend and runtime_resume),
 * and whether the vectors are disabled now (MSIXLAB_PM_IRQS_DISABLED: between
 * a suspend and its resume; an ioctl resumes a runtime-suspended device
 * first, so it reads 0 unless a resume failed to enable them).
 */
struct msixlab_pm {
	__u32 runtime_suspends;
	__u32 runtime_resumes;
	__u32 system_suspends;
	__u32 system_resumes;
	__u32 flags;		/* MSIXLAB_PM_* */
	__u32 pad;
};

#define MSIXLAB_IOC_MAGIC	0xC4

#define MSIXLAB_IOC_INFO	_IOR(MSIXLAB_IOC_MAGIC, 0x00, struct msixlab_info)
#define MSIXLAB_IOC_ALLOC_GROUP	_IOWR(MSIXLAB_IOC_MAGIC, 0x01, struct msixlab_group)
#define MSIXLAB_IOC_FREE_GROUP	_IOWR(MSIXLAB_IOC_MAGIC, 0x02, struct msixlab_free)
#define MSIXLAB_IOC_GET_GROUP	_IOWR(MSIXLAB_IOC_MAGIC, 0x03, struct msixlab_group)
#define MSIXLAB_IOC_VECTOR	_IOWR(MSIXLAB_IOC_MAGIC, 0x04, struct msixlab_vector)
#define MSIXLAB_IOC_RAISE	_IOWR(MSIXLAB_IOC_MAGIC, 0x05, struct msixlab_raise)
#define MSIXLAB_IOC_READ_PBA	_IOR(MSIXLAB_IOC_MAGIC, 0x06, struct msixlab_pba)
#define MSIXLAB_IOC_READ_ENTRY	_IOWR(MSIXLAB_IOC_MAGIC, 0x07, struct msixlab_entry)
#define MSIXLAB_IOC_FUNCTION_MASK _IOWR(MSIXLAB_IOC_MAGIC, 0x08, struct msixlab_function_mask)
#define MSIXLAB_IOC_CRASH	_IOW(MSIXLAB_IOC_MAGIC, 0x09, struct msixlab_crash)
#define MSIXLAB_IOC_TOTALS	_IOWR(MSIXLAB_IOC_MAGIC, 0x0a, struct msixlab_totals)
#define MSIXLAB_IOC_FAIL_REQUEST_IRQ _IOW(MSIXLAB_IOC_MAGIC, 0x0b, struct msixlab_irq_fault)
#define MSIXLAB_IOC_PM		_IOR(MSIXLAB_IOC_MAGIC, 0x0c, struct msixlab_pm)

#endif /* _UAPI_MSIXLAB_H */
