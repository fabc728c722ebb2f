"""Keeping libtpu's start-up messages from users of machines that have no TPU.

libtpu (installed for ``jaxcnn.plan``'s TPU targets: ``pip install -e ".[tpu]"``) writes warnings
about a TPU VM's environment variables straight to the process's stderr (file descriptor 2) when
JAX starts its backends or compiles for a TPU, where there is no TPU to configure:

    Failed to find host bounds for accelerator type: WARNING: could not determine TPU ...
    E0000 ... common_lib.cc:554] INVALID_ARGUMENT: Error: unexpected worker hostname ...

``captured()`` diverts descriptor 2 for a block (Python's own ``sys.stderr`` still reaches the
terminal); ``start_backends()`` starts JAX's backends inside it and shows what was caught only on a
machine where a TPU came up (or when starting failed).
"""

import contextlib
import importlib.util
import os
import sys
import tempfile


class Caught:
    """What native code wrote to descriptor 2 inside ``captured()``: ``text``, once it ended."""

    text = ""


@contextlib.contextmanager
def captured():
    """Diverts what native libraries write to the process's stderr into ``Caught.text``."""
    sys.stderr.flush()
    caught = Caught()
    saved = os.dup(2)
    python_stderr = sys.stderr
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        # Python's messages (JAX's logging, warnings) keep going where they went before.
        sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1)
        try:
            yield caught
        finally:
            sys.stderr.close()
            sys.stderr = python_stderr
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            caught.text = sink.read().decode(errors="replace")


def libtpu_installed() -> bool:
    """Whether libtpu (the ``tpu`` extra) can be imported, without importing it."""
    return importlib.util.find_spec("libtpu") is not None


def start_backends() -> None:
    """Starts JAX's backends (``jax.devices()``); with libtpu installed, what it prints is shown
    only where a TPU was found or starting failed."""
    import jax

    if not libtpu_installed():
        jax.devices()
        return
    try:
        with captured() as caught:
            jax.devices()
    except BaseException:
        sys.stderr.write(caught.text)
        raise
    if jax.default_backend() == "tpu":
        sys.stderr.write(caught.text)
