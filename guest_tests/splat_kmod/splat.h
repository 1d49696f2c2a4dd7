/* SPDX-License-Identifier: GPL-2.0 */
#ifndef MSIXLAB_SPLAT_H
#define MSIXLAB_SPLAT_H

#define SPLAT_NAME "msixlab-splat"

#endif
