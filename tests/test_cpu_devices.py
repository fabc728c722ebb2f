"""jaxcnn.cpu_devices: one host device per core, used where the model has work for them."""

import json
import os
import subprocess
import sys
import types

import pytest

from conftest import require_fashion_mnist
from jaxcnn import cpu_devices
from jaxcnn.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENET_FLOPS, CNN_BN_FLOPS = 852_370, 8_104_426  # forward FLOPs per 28x28x1 image (summary)


@pytest.fixture
def fresh(monkeypatch):
    """cpu_devices as in a new process (request() not yet called), on 4 cores."""
    monkeypatch.setattr(cpu_devices, "_requested", False)
    monkeypatch.setattr(cpu_devices, "usable_cores", lambda: 4)


def cpus(n, platform="cpu"):
    return [types.SimpleNamespace(platform=platform, id=i) for i in range(n)]


def test_request_asks_for_one_device_per_core(fresh):
    env = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}
    assert cpu_devices.request(environ=env) == 4
    assert env["XLA_FLAGS"] == ("--xla_cpu_enable_fast_math=false "
                                "--xla_force_host_platform_device_count=4")
    assert cpu_devices.requested()


@pytest.mark.parametrize("env", [
    {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"},  # the user's own count
    {"JAXCNN_CPU_DEVICES": "1"},                                 # turned off
])
def test_request_leaves_the_users_choice(fresh, env):
    before = dict(env)
    assert cpu_devices.request(environ=env) is None
    assert env == before and not cpu_devices.requested()


def test_request_leaves_multi_process_runs_alone(fresh):
    env = {}
    assert cpu_devices.request(multi_process=True, environ=env) is None
    assert env == {} and not cpu_devices.requested()


def test_an_explicit_count_is_used_whole(fresh):
    env = {"JAXCNN_CPU_DEVICES": "3"}
    assert cpu_devices.request(environ=env) == 3
    assert "--xla_force_host_platform_device_count=3" in env["XLA_FLAGS"]
    assert not cpu_devices.requested()  # so choose() uses all of them
    assert len(cpu_devices.choose(cpus(3), 128, LENET_FLOPS)) == 3


@pytest.mark.parametrize("value", ["0", "two", "-2", ""])
def test_a_bad_count_is_refused(fresh, value):
    with pytest.raises(UserError, match="JAXCNN_CPU_DEVICES"):
        cpu_devices.request(environ={"JAXCNN_CPU_DEVICES": value})


def test_choose_splits_only_where_there_is_work(fresh):
    cpu_devices.request(environ={})
    assert len(cpu_devices.choose(cpus(4), 128, LENET_FLOPS)) == 1     # 0.11 GFLOP a step
    assert len(cpu_devices.choose(cpus(4), 1024, LENET_FLOPS)) == 4    # 0.22 GFLOP each on 4
    assert len(cpu_devices.choose(cpus(4), 128, CNN_BN_FLOPS)) == 4
    assert len(cpu_devices.choose(cpus(4), 102, CNN_BN_FLOPS)) == 3    # 102 = 3 x 34, not 4
    assert len(cpu_devices.choose(cpus(4), 127, CNN_BN_FLOPS)) == 1    # odd: one device
    assert len(cpu_devices.choose(cpus(2, "gpu"), 128, LENET_FLOPS)) == 2  # accelerators: all


def test_choose_uses_every_device_the_user_asked_for(fresh):
    assert len(cpu_devices.choose(cpus(8), 128, LENET_FLOPS)) == 8


def launch_devices(tmp_path, experiment, *sets):
    """The device count of a launcher run made without XLA_FLAGS (jaxcnn's own choice)."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAXCNN_CPU_DEVICES")}
    workdir = tmp_path / f"{experiment}-{len(list(tmp_path.iterdir()))}"
    out = subprocess.run(
        [sys.executable, "-m", "jaxcnn.launch", os.path.join(ROOT, "experiments", experiment),
         "--workdir", str(workdir), "--set", "epochs=1", "--set", "data.max_train_examples=512",
         "--set", "data.max_test_examples=128", *sets],
        capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    with open(workdir / "summary.json") as f:
        return json.load(f)["devices"]


def test_the_launcher_splits_the_cnn_and_not_lenet(tmp_path):
    require_fashion_mnist()
    cores = cpu_devices.usable_cores()
    if cores < 2:
        pytest.skip("one core: there is nothing to split")
    expected = max(n for n in range(1, cores + 1) if 128 % n == 0)
    assert launch_devices(tmp_path, "cnn_bn.py", "--set", "batch_size=128") == expected
    assert launch_devices(tmp_path, "lenet_fashion.py", "--set", "batch_size=128") == 1
    # A batch that does not split is not refused: the run takes the devices it divides over.
    assert launch_devices(tmp_path, "cnn_bn.py", "--set", "batch_size=127") == 1


def test_one_core_each_where_there_is_a_cpu_device_per_core(monkeypatch):
    monkeypatch.setattr(cpu_devices, "usable_cores", lambda: 2)
    cpu, gpu = types.SimpleNamespace(platform="cpu"), types.SimpleNamespace(platform="gpu")
    assert cpu_devices.one_core_each([cpu, cpu]) and cpu_devices.one_core_each([cpu] * 4)
    assert not cpu_devices.one_core_each([cpu])
    assert not cpu_devices.one_core_each([gpu, gpu]) and not cpu_devices.one_core_each([])
