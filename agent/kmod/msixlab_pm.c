// SPDX-License-Identifier: GPL-2.0
/*
 * msixlab: power management (runtime PM and system sleep).
 *
 * Concepts:
 *  - Runtime PM: probe gives back the usage count the PCI core took for it
 *    (pm_runtime_put_noidle()) and remove takes it again, and every ioctl
 *    holds a reference while it runs (msixlab_pm_get()/msixlab_pm_put()),
 *    so the BARs are never touched while the function is in D3hot.  The
 *    function suspends only when user space allows it (power/control =
 *    auto: the PCI core forbids runtime PM by default) and nothing used it
 *    for MSIXLAB_AUTOSUSPEND_MS.
 *  - A suspend (runtime or system) quiesces the handlers: every live
 *    vector is disabled (disable_irq(), which also waits for a handler
 *    that is running); the matching resume enables them again.  The
 *    function's MSI-X state is the PCI core's to keep: it saves the config
 *    space before D3hot, and after D3hot -> D0 (which resets the function:
 *    No_Soft_Reset is clear) pci_restore_state() rewrites MSI-X Message
 *    Control and every descriptor's entry, dynamic ones included.
 *  - The callbacks count themselves; MSIXLAB_IOC_PM reports the counts and
 *    whether the vectors are disabled now.
 */
#include <linux/interrupt.h>
#include <linux/pm_runtime.h>

#include "msixlab.h"

/*
 * Disable (or enable again) every live vector's IRQ, once per suspend, and
 * count the callback that asked in *counter.
 */
static void msixlab_quiesce(struct msixlab_dev *ml, bool off, u32 *counter)
{
	u32 i;

	mutex_lock(&ml->lock);
	(*counter)++;
	if (ml->irqs_off != off && !ml->gone) {
		for (i = 0; i < ml->table_size; i++) {
			if (!ml->vecs[i])
				continue;
			if (off)
				disable_irq(ml->vecs[i]->map.virq);
			else
				enable_irq(ml->vecs[i]->map.virq);
		}
		ml->irqs_off = off;
	}
	mutex_unlock(&ml->lock);
}

static int msixlab_suspend(struct device *dev)
{
	struct msixlab_dev *ml = dev_get_drvdata(dev);

	msixlab_quiesce(ml, true, &ml->pm.system_suspends);
	return 0;
}

static int msixlab_resume(struct device *dev)
{
	struct msixlab_dev *ml = dev_get_drvdata(dev);

	msixlab_quiesce(ml, false, &ml->pm.system_resumes);
	return 0;
}

static int msixlab_runtime_suspend(struct device *dev)
{
	struct msixlab_dev *ml = dev_get_drvdata(dev);

	msixlab_quiesce(ml, true, &ml->pm.runtime_suspends);
	return 0;
}

static int msixlab_runtime_resume(struct device *dev)
{
	struct msixlab_dev *ml = dev_get_drvdata(dev);

	msixlab_quiesce(ml, false, &ml->pm.runtime_resumes);
	return 0;
}

const struct dev_pm_ops msixlab_pm_ops = {
	SYSTEM_SLEEP_PM_OPS(msixlab_suspend, msixlab_resume)
	RUNTIME_PM_OPS(msixlab_runtime_suspend, msixlab_runtime_resume, NULL)
};

/* Probe, once the device is set up: runtime PM allowed from now on. */
void msixlab_pm_probe(struct msixlab_dev *ml)
{
	struct device *dev = &ml->pdev->dev;

	pm_runtime_set_autosuspend_delay(dev, MSIXLAB_AUTOSUSPEND_MS);
	pm_runtime_use_autosuspend(dev);
	pm_runtime_put_noidle(dev);
}

/* Remove, before anything is torn down: the PCI core resumed the device. */
void msixlab_pm_remove(struct msixlab_dev *ml)
{
	struct device *dev = &ml->pdev->dev;

	pm_runtime_get_noresume(dev);
	pm_runtime_dont_use_autosuspend(dev);
}

/* Resume the function (if it is suspended) and keep it active until put. */
int msixlab_pm_get(struct msixlab_dev *ml)
{
	int ret = pm_runtime_resume_and_get(&ml->pdev->dev);

	/* an unbound device has runtime PM disabled: say it is gone */
	return ret < 0 && READ_ONCE(ml->gone) ? -ENODEV : ret;
}

void msixlab_pm_put(struct msixlab_dev *ml)
{
	pm_runtime_mark_last_busy(&ml->pdev->dev);
	pm_runtime_put_autosuspend(&ml->pdev->dev);
}

int msixlab_pm_stats(struct msixlab_dev *ml, struct msixlab_pm *p)
{
	p->runtime_suspends = ml->pm.runtime_suspends;
	p->runtime_resumes = ml->pm.runtime_resumes;
	p->system_suspends = ml->pm.system_suspends;
	p->system_resumes = ml->pm.system_resumes;
	p->flags = ml->irqs_off ? MSIXLAB_PM_IRQS_DISABLED : 0;
	return 0;
}
