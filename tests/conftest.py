"""Test set-up: 8 fake CPU devices, so data parallelism is tested on any machine."""

import atexit
import os
import shutil
import tempfile

# Must happen before JAX initialises its backends.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests never write into the user's data cache; launcher runs started by the tests share one
# compilation cache of their own. Both are removed when the test session ends.
for variable, prefix in (("JAXCNN_DATA_DIR", "jaxcnn-test-cache-"),
                         ("JAXCNN_COMPILATION_CACHE", "jaxcnn-test-compilation-")):
    os.environ[variable] = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, os.environ[variable], ignore_errors=True)
# Tests never reach the network: datasets are not downloaded, except in tests/test_download.py,
# which turns downloads back on against a server of its own on 127.0.0.1.
os.environ["JAXCNN_DOWNLOAD"] = "0"

from jaxcnn import hostmem  # noqa: E402

hostmem.keep_freed_memory()  # as the launcher does: steps reuse memory instead of page-faulting

import jax  # noqa: E402
import pytest  # noqa: E402

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="session")
def devices():
    assert len(jax.devices()) == 8, "conftest should have made 8 CPU devices"
    return jax.devices()


def missing(what: str, install: str, required: bool):
    """Ends a test whose prerequisite ``what`` is not here: a skip saying how to ``install`` it,
    or a failure where CI installs it (``required``), so that CI never skips it unseen."""
    if required:
        pytest.fail(f"{what} is missing: .ci/run must {install}")
    pytest.skip(f"{what} is missing ({install})")


def require_fashion_mnist():
    """Skips a test when Debian's Fashion-MNIST is missing, except on CI, where it must be there."""
    if not os.path.isdir(FASHION_DIR):
        missing(FASHION_DIR, "apt-get install dataset-fashion-mnist", bool(os.environ.get("CI")))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, devices):
    """A finished 2-epoch LeNet-5 run on 512 Fashion-MNIST images (200 test images), made by the
    launcher in this process: the run directory, its files and plots (about 10 s)."""
    require_fashion_mnist()
    from jaxcnn.launch import main

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    workdir = tmp_path_factory.mktemp("tiny") / "run"
    code = main([os.path.join(root, "experiments", "lenet_fashion.py"), "--workdir", str(workdir),
                 "--set", "epochs=2", "--set", "batch_size=64", "--set", "data.max_train_examples=512",
                 "--set", "data.max_test_examples=200"])
    assert code == 0
    return workdir
