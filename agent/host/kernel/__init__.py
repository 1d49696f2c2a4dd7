"""The kernel under test, and the kernel trees msixlab builds, boots and bisects.

Modules (each small, one concept):
- ``fragment.config``: every kernel option the rig needs (a kconfig fragment).
- ``config``: reading a ``.config`` and checking it against the fragment (sans-I/O).
- ``errors``: the kernel side of the exception tree (tree, build and bisect errors).
- ``under_test``: ``KernelUnderTest``, the one description of the kernel a run boots
  (an image flavor, a kernel tree, or a prebuilt bzImage with its build tree).
- ``build``: configuring and building a tree (bzImage and modules) with progress.
- ``source``: Debian's ``linux-source`` package fetched through a private apt
  configuration, extracted and built once in the msixlab cache (for tests and benches).
- ``git``, ``bisect``: ``msixlab bisect``, a ``git bisect run`` of the main job.
"""
