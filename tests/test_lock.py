"""The workdir lock, with real launcher processes: a second launch into a workdir in use is
refused at once, and a lock left by a killed run blocks nothing."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import require_fashion_mnist
from jaxcnn import rundir
from jaxcnn.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = os.path.join(ROOT, "experiments", "lenet_fashion.py")
SMALL = ["--set", "epochs=2", "--set", "batch_size=64", "--set", "data.max_train_examples=512",
         "--set", "data.max_test_examples=200"]  # as the tiny_run fixture: its compiled steps
ENV = {**os.environ, "PYTHONPATH": ROOT}


def command(workdir, *extra):
    return [sys.executable, "-m", "jaxcnn.launch", EXPERIMENT, *SMALL, "--workdir", str(workdir),
            *extra]


def start(workdir, log):
    """A launcher process in the background, its output in the file ``log``."""
    with open(log, "w") as f:
        return subprocess.Popen(command(workdir), env=ENV, stdout=f, stderr=subprocess.STDOUT)


def wait_for_lock(workdir, process):
    """Returns once ``process`` holds the lock of ``workdir`` (its pid is in WORKDIR.lock)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, f"process {process.pid} ended"
        try:
            with open(f"{workdir}.lock") as f:
                if json.load(f)["pid"] == process.pid:
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"process {process.pid} did not lock {workdir} within 60 s")


def test_the_lock_lies_beside_the_workdir_and_is_gone_after_the_run(tmp_path):
    workdir = tmp_path / "runs" / "a"
    with rundir.lock(str(workdir)):
        assert json.loads((tmp_path / "runs" / "a.lock").read_text())["pid"] == os.getpid()
        with pytest.raises(UserError, match=f"in use by another run: process {os.getpid()} on "):
            with rundir.lock(str(workdir)):
                pass
        assert not workdir.exists()  # a new workdir stays empty: claim() sees no earlier run
    assert os.listdir(tmp_path / "runs") == []
    with rundir.lock(str(workdir) + "/"):  # free again, under any spelling of the path
        assert os.listdir(tmp_path / "runs") == ["a.lock"]


def test_a_second_launch_into_a_running_workdir_is_refused_at_once(tmp_path):
    require_fashion_mnist()
    workdir = tmp_path / "run"
    first = start(workdir, tmp_path / "first.log")
    try:
        wait_for_lock(workdir, first)
        os.kill(first.pid, signal.SIGSTOP)  # still running (and locking), however fast it trains
        try:
            began = time.monotonic()
            second = subprocess.run(command(workdir, "--restart"), env=ENV, capture_output=True,
                                    text=True, timeout=120)
            took = time.monotonic() - began
        finally:
            os.kill(first.pid, signal.SIGCONT)
        err = " ".join(second.stderr.split())
        assert second.returncode == 2, second.stderr
        assert err.startswith("error: The workdir") and "is in use by another run" in err
        assert f"process {first.pid} on {socket.gethostname()}, started " in err
        assert "Traceback" not in err and len(second.stderr.strip().split("\n\n")) == 1
        assert took < 20, took  # refused before any data is loaded or step compiled
        assert not (tmp_path / "run.old-1").exists()  # --restart did not move the running run

        assert first.wait(timeout=120) == 0, (tmp_path / "first.log").read_text()[-2000:]
        assert not os.path.exists(f"{workdir}.lock")  # removed when the run ended
        assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 2
    finally:
        first.kill()
        first.wait()


def test_a_lock_left_by_a_killed_run_blocks_nothing(tmp_path):
    require_fashion_mnist()
    workdir = tmp_path / "run"
    killed = start(workdir, tmp_path / "killed.log")
    wait_for_lock(workdir, killed)
    killed.kill()  # SIGKILL: no clean-up; the kernel releases the lock, the lock file stays
    killed.wait()
    with open(f"{workdir}.lock") as f:
        assert json.load(f)["pid"] == killed.pid
    again = subprocess.run(command(workdir), env=ENV, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 2
    assert not os.path.exists(f"{workdir}.lock")
