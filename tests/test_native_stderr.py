"""libtpu's start-up messages are kept from users of machines without a TPU (jaxcnn.native_stderr)."""

import os
import sys

import pytest

from jaxcnn import native_stderr



def test_captured_takes_native_writes_and_lets_python_messages_through(capfd):
    with native_stderr.captured() as caught:
        os.write(2, b"from native code\n")
        print("from Python", file=sys.stderr)
    assert caught.text == "from native code\n"
    err = capfd.readouterr().err
    assert "from Python" in err and "from native code" not in err
    os.write(2, b"after\n")  # descriptor 2 is back
    assert capfd.readouterr().err == "after\n"


def noisy_start(backend, fail=False):
    """A stand-in for jax.devices() that writes to descriptor 2 as libtpu does."""
    def devices():
        os.write(2, b"E0000 common_lib.cc:554] unexpected worker hostname in TPU_WORKER_HOSTNAMES\n")
        if fail:
            raise RuntimeError("no backend")
    return devices, lambda: backend


@pytest.mark.parametrize("backend, shown", [("cpu", False), ("gpu", False), ("tpu", True)])
def test_libtpu_messages_are_shown_only_where_a_tpu_came_up(monkeypatch, capfd, backend, shown):
    import jax

    devices, default_backend = noisy_start(backend)
    monkeypatch.setattr(jax, "devices", devices)
    monkeypatch.setattr(jax, "default_backend", default_backend)
    monkeypatch.setattr(native_stderr, "libtpu_installed", lambda: True)
    native_stderr.start_backends()
    assert ("TPU_WORKER_HOSTNAMES" in capfd.readouterr().err) == shown


def test_libtpu_messages_are_shown_when_starting_fails(monkeypatch, capfd):
    import jax

    devices, default_backend = noisy_start("cpu", fail=True)
    monkeypatch.setattr(jax, "devices", devices)
    monkeypatch.setattr(native_stderr, "libtpu_installed", lambda: True)
    with pytest.raises(RuntimeError, match="no backend"):
        native_stderr.start_backends()
    assert "TPU_WORKER_HOSTNAMES" in capfd.readouterr().err


def test_without_libtpu_nothing_is_diverted(monkeypatch, capfd):
    import jax

    devices, default_backend = noisy_start("cpu")
    monkeypatch.setattr(jax, "devices", devices)
    monkeypatch.setattr(native_stderr, "libtpu_installed", lambda: False)
    native_stderr.start_backends()
    assert "TPU_WORKER_HOSTNAMES" in capfd.readouterr().err
