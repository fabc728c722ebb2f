"""Host memory: keep freed memory for reuse, so XLA:CPU steps do not page-fault.

XLA:CPU gives each execution of a compiled step one fresh temporary buffer (76 MB for the CNN
with BatchNorm at batch 128, 0.6 GB at batch 1024). glibc's malloc serves blocks that large with
a new ``mmap`` and returns them with ``munmap``, so every step touches brand-new pages: about
19,500 page faults per step at batch 128, each one a trip into the kernel to map and zero a page.
That was half the step time of that CNN on a 2-core machine (measured: 1.7k -> 3.8k images/s).

``keep_freed_memory()`` tells glibc to serve every block from its one main heap and to keep what
is freed there (``mallopt``: one arena, no mmap, no trimming), so from the second step on each
step reuses the pages of the one before. It must run before JAX starts its CPU backend (before
the first JAX computation): threads that exist already keep the allocator state they have. The
launcher calls it first thing; call it yourself at the top of your own training scripts.

The price is that the process keeps its peak heap until it exits, which a training process
reaches in its first steps anyway. Set ``JAXCNN_KEEP_FREED_MEMORY=0`` to leave malloc alone.
"""

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def keep_freed_memory() -> bool:
    """Makes glibc malloc keep and reuse freed memory; True when applied (Linux with glibc)."""
    if os.environ.get("JAXCNN_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
    return all(mallopt(param, value) == 1 for param, value in settings)
