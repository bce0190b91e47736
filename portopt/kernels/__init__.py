"""Code generated from a rule's one kernel: the kernel is traced (:mod:`.trace`), and from
the trace come the CPU loops compiled by numba (:mod:`.cpu`) and the CUDA source (:mod:`.cuda`).
The math exists in one place only, the kernel; these modules only translate it."""
