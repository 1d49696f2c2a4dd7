// SPDX-License-Identifier: GPL-2.0
/*
 * A module that only oopses when it is loaded.  msixlab's own tests load it in a
 * guest (through the agent's documented reload_module command) to prove that a kernel
 * report during a test fails that test.  No run of msixlab ever loads it.  It is
 * called msixlab.ko only because agent/kmod/build.sh builds a module of that name.
 */
#include <linux/bug.h>
#include <linux/init.h>
#include <linux/module.h>

#include "splat.h"

static int __init msixlab_splat_init(void)
{
	pr_info("%s: planting a BUG() for the test\n", SPLAT_NAME);
	BUG();
	return 0;
}
module_init(msixlab_splat_init);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("msixlab test module: BUG() on load");
