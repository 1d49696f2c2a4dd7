/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The two declarations of libuuid the VFIO selftests' library uses (a VF token is parsed
 * from its text form), so that the host building them needs libuuid's runtime library
 * only (libuuid.so.1, which every Debian system and the guest image have), not the
 * uuid-dev package.  The selftests link it as -l:libuuid.so.1.
 */
#ifndef MSIXLAB_COMPAT_UUID_H
#define MSIXLAB_COMPAT_UUID_H

typedef unsigned char uuid_t[16];

int uuid_parse(const char *in, uuid_t uu);

#endif /* MSIXLAB_COMPAT_UUID_H */
