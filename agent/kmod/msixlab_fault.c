// SPDX-License-Identifier: GPL-2.0
/*
 * msixlab: failures on demand, for testing the rig's own verdict.
 *
 * Concepts:
 *  - The module parameter fault_injection (bool, 0444: read-only once the
 *    module is loaded, shown in /sys/module/msixlab/parameters/) gates
 *    MSIXLAB_IOC_CRASH.  Without it the ioctl fails with EACCES, so a
 *    driver loaded by hand can never be crashed by accident.
 *  - WARN: a WARN() in msixlab_crash_warn(), the ioctl returns 0 and the
 *    kernel goes on (tainted W).
 *  - OOPS: a write through a NULL pointer in msixlab_crash_oops(); the
 *    kernel kills the calling task.  It runs without ml->lock, so the
 *    device stays usable by other tasks afterwards.
 *  - PANIC: panic() at once in the ioctl, or after delay_ms from a delayed
 *    work item, so the caller can report back before the guest stops.
 *    Unbinding cancels a pending delayed panic.
 */
#include <linux/compiler.h>
#include <linux/jiffies.h>
#include <linux/module.h>
#include <linux/panic.h>

#include "msixlab.h"

static bool fault_injection;
module_param(fault_injection, bool, 0444);
MODULE_PARM_DESC(fault_injection,
		 "allow MSIXLAB_IOC_CRASH to WARN, oops or panic on demand (default: off)");

bool msixlab_fault_injection(void)
{
	return fault_injection;
}

static noinline void msixlab_crash_warn(struct msixlab_dev *ml)
{
	WARN(1, "%s: WARN requested through MSIXLAB_IOC_CRASH\n", ml->name);
}

static noinline void msixlab_crash_oops(struct msixlab_dev *ml)
{
	int *null = NULL;

	pr_crit("%s: oops requested through MSIXLAB_IOC_CRASH\n", ml->name);
	OPTIMIZER_HIDE_VAR(null);
	WRITE_ONCE(*null, 1);
}

static noinline void msixlab_crash_panic(struct msixlab_dev *ml)
{
	panic("%s: panic requested through MSIXLAB_IOC_CRASH\n", ml->name);
}

static void msixlab_crash_work(struct work_struct *work)
{
	struct msixlab_dev *ml = container_of(to_delayed_work(work),
					      struct msixlab_dev, crash_work);

	msixlab_crash_panic(ml);
}

void msixlab_crash_init(struct msixlab_dev *ml)
{
	INIT_DELAYED_WORK(&ml->crash_work, msixlab_crash_work);
}

void msixlab_crash_cancel(struct msixlab_dev *ml)
{
	cancel_delayed_work_sync(&ml->crash_work);
}

/* A delayed panic is scheduled under ml->lock, so unbind can cancel it. */
static int msixlab_crash_later(struct msixlab_dev *ml, u32 delay_ms)
{
	int ret = -ENODEV;

	mutex_lock(&ml->lock);
	if (!ml->gone) {
		pr_crit("%s: panic in %u ms, requested through MSIXLAB_IOC_CRASH\n",
			ml->name, delay_ms);
		schedule_delayed_work(&ml->crash_work,
				      msecs_to_jiffies(delay_ms));
		ret = 0;
	}
	mutex_unlock(&ml->lock);
	return ret;
}

/* MSIXLAB_IOC_CRASH; runs without ml->lock (an oops must not hold it). */
int msixlab_crash(struct msixlab_dev *ml, struct msixlab_crash *c)
{
	if (c->delay_ms > MSIXLAB_CRASH_MAX_DELAY_MS ||
	    (c->delay_ms && c->kind != MSIXLAB_CRASH_PANIC))
		return -EINVAL;
	if (c->kind < MSIXLAB_CRASH_WARN || c->kind > MSIXLAB_CRASH_PANIC)
		return -EINVAL;
	if (!fault_injection)
		return -EACCES;
	if (READ_ONCE(ml->gone))
		return -ENODEV;

	switch (c->kind) {
	case MSIXLAB_CRASH_WARN:
		msixlab_crash_warn(ml);
		break;
	case MSIXLAB_CRASH_OOPS:
		msixlab_crash_oops(ml);
		break;
	case MSIXLAB_CRASH_PANIC:
		if (c->delay_ms)
			return msixlab_crash_later(ml, c->delay_ms);
		msixlab_crash_panic(ml);
		break;
	}
	return 0;
}

/*
 * MSIXLAB_IOC_FAIL_REQUEST_IRQ, under ml->lock: arm a one-shot fault the next
 * group allocation takes (msixlab_grp_alloc()): request_irq() of its nth
 * vector fails (msixlab_vec_attach()), so the all-or-nothing unwinding runs.
 */
int msixlab_arm_irq_fault(struct msixlab_dev *ml, struct msixlab_irq_fault *f)
{
	if (f->pad || f->nth > MSIXLAB_MAX_VECTORS)
		return -EINVAL;
	if (!fault_injection)
		return -EACCES;
	ml->fail_irq_next = f->nth;
	return 0;
}
