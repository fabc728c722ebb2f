"""Two jax.distributed processes on 127.0.0.1 train like one process with the same global batch."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import require_fashion_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = os.path.join(ROOT, "experiments", "lenet_fashion.py")
ARGS = ["--set", "epochs=1", "--set", "batch_size=64", "--set", "data.max_train_examples=1024",
        "--set", "data.max_test_examples=500", "--set", "model={'name': 'cnn', 'cdims': [8, 16], "
        "'hdims': [16], 'batch_norm': True, 'dropout': 0.2}"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(workdir, devices, *extra, args=ARGS):
    # No weight-gradient chunks: one device's 64 images would be summed in 4 chunks, each of 4
    # devices' 16 in one, and after 16 Adam steps that other order of the sums alone moves the
    # checksum by ~1e-5 (the chunks' own equality is tested in test_cpu_forms.py).
    env = {**os.environ, "PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1", "JAXCNN_WEIGHT_GRADIENT_CHUNK": "0",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    return subprocess.Popen([sys.executable, "-m", "jaxcnn.launch", EXPERIMENT, *args, *extra,
                             "--workdir", str(workdir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_two_processes_match_one_process(tmp_path):
    require_fashion_mnist()
    port = free_port()
    multi = [start(tmp_path / "multi", 2, "--coordinator", f"127.0.0.1:{port}",
                   "--num-processes", "2", "--process-id", str(i), "--init-timeout", "60")
             for i in range(2)]
    single = start(tmp_path / "single", 1)
    outputs = []
    for proc in [*multi, single]:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        outputs.append(out)
    # Only process 0 writes the run directory's files; the summary sees all 4 devices.
    summary = json.loads((tmp_path / "multi" / "summary.json").read_text())
    assert summary["devices"] == 4 and "run written to" in outputs[0] and "run written to" not in outputs[1]
    # The two processes hold the parameters of one process on one device, to float error
    # (param_checksum: the sum of |w|, from process 0; process 1 writes no summary).
    single_summary = json.loads((tmp_path / "single" / "summary.json").read_text())
    np.testing.assert_allclose(summary["param_checksum"], single_summary["param_checksum"], rtol=1e-5)
    # The loss sums BatchNorm's statistics and the test batches in another order over 4 devices:
    # 1.2e-5 apart on an Intel Xeon (2026-12-04), within 1e-5 on the AMD machines before.
    np.testing.assert_allclose(summary["final_test_loss"], single_summary["final_test_loss"], rtol=5e-5)
    assert "parameter checksum" not in outputs[0] + outputs[1] + outputs[2]


def test_a_process_whose_peer_never_comes_exits_with_a_message(tmp_path):
    require_fashion_mnist()
    proc = start(tmp_path / "alone", 1, "--coordinator", f"127.0.0.1:{free_port()}",
                 "--num-processes", "2", "--process-id", "0", "--init-timeout", "3")
    out, err = proc.communicate(timeout=120)
    err = " ".join(err.split())
    assert proc.returncode == 2
    assert "not every one of the processes came within 3 s" in err and "--process-id" in err


@pytest.mark.slow
def test_two_processes_train_full_fashion_mnist_like_one(tmp_path):
    """All 60,000 images, one epoch, 2 processes x 2 devices against 1 process x 1 device."""
    require_fashion_mnist()
    port = free_port()
    full = ["--set", "epochs=1"]
    multi = [start(tmp_path / "multi", 2, "--coordinator", f"127.0.0.1:{port}",
                   "--num-processes", "2", "--process-id", str(i), "--init-timeout", "60", args=full)
             for i in range(2)]
    single = start(tmp_path / "single", 1, args=full)
    for proc in [*multi, single]:
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err
    a = json.loads((tmp_path / "multi" / "summary.json").read_text())
    b = json.loads((tmp_path / "single" / "summary.json").read_text())
    assert a["devices"] == 4 and a["data"]["train_count"] == 60_000
    np.testing.assert_allclose(a["final_test_loss"], b["final_test_loss"], rtol=2e-2)
    assert abs(a["final_test_accuracy"] - b["final_test_accuracy"]) < 0.01
