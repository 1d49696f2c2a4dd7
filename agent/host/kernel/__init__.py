"""The kernel under test, and the kernel trees msixlab builds, boots and bisects.

Modules (each small, one concept):
- ``fragment.config``: the kernel options the rig needs (a kconfig fragment).
- ``config``: reading a ``.config`` and checking it against the fragment (sans-I/O).
- ``errors``: the kernel side of the exception tree (tree, build, source, bisect errors).
- ``under_test``: ``KernelUnderTest``, the one description of the kernel a run boots
  (an image flavor, a kernel tree, or a prebuilt bzImage with its build tree).
- ``build``: configuring and building a tree (``bzImage`` and ``modules``).
- ``options``: the ``--kernel-tree/--build/--kernel/--kdir/--qemu`` options of run, shell
  and boot; ``progress`` and ``commands``: the CLI layer (``kernel config|build``,
  ``bisect``).
- ``git``, ``bisect``: ``msixlab bisect``, a git bisection that runs the main job per step.
- ``source``, ``testtrees``: Debian's ``linux-source`` package fetched through a private
  apt configuration, built once in the msixlab cache, and the throwaway git repository
  with planted bugs that the bisect tests search.
- ``checkpatch``, ``lint``: the guest driver's style and warning checks: the kernel's
  ``checkpatch.pl`` from that package, the warnings of a ``W=1`` build, and the short
  lists of accepted findings they are judged against.
"""
