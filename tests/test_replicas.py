"""Process replicas (jaxcnn/replicas.py): one single-core process per core train like one device,
resume exactly, stop with a message when one dies, and are chosen only where they qualify."""

import json
import os
import subprocess
import sys
import tempfile

import jax
import numpy as np
import pytest

from conftest import require_fashion_mnist
from jaxcnn import config as config_lib, cpu_devices, datasets, replicas, train
from jaxcnn.errors import RunStopped, UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (640, 28, 28, 1), dtype=np.uint8)
    labels = (images.reshape(640, -1).mean(1) > 127.5).astype(np.int32) + 2 * (np.arange(640) % 2)
    return datasets.Dataset("synthetic", images, labels, images[:130], labels[:130], 4,
                            ("a", "b", "c", "d"), "generated")


def config(**overrides):
    return config_lib.resolve({"model": {"name": "lenet5"}, "batch_size": 64, "eval_batch_size": 50,
                               "epochs": 2, "data": {"flip": True, "crop_padding": 2},
                               "eval_flip": True, "label_smoothing": 0.1, "ema_decay": 0.99,
                               **overrides})


def weights(trainer):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(trainer.state.params))])


def run(cfg, data, devices, count, epochs=(0, 1), state=None):
    trainer = train.Trainer(cfg, data, train.make_mesh(devices[:1]), replicas=count)
    try:
        if state is not None:  # as a checkpoint restores it: the arrays in this trainer's state
            trainer.state = jax.tree.unflatten(jax.tree.structure(trainer.state),
                                               jax.tree.leaves(state))
        means = [trainer.train_epoch(e) for e in epochs]
        return means, trainer.evaluate(), weights(trainer), trainer.state
    finally:
        trainer.close()


def test_two_replicas_train_like_one_device(data, devices):
    """The same batches, augmentation, optimizer, moving average and test metrics: equal up to
    the order of the sums (the replicas add two halves of each batch)."""
    cfg = config()
    one, two = run(cfg, data, devices, 1), run(cfg, data, devices, 2)
    for a, b in zip(one[0], two[0]):
        np.testing.assert_allclose([a["train_loss"], a["train_accuracy"]],
                                   [b["train_loss"], b["train_accuracy"]], rtol=1e-4)
    assert one[1]["test_count"] == two[1]["test_count"] == 130  # 3 batches of 50, padding masked
    np.testing.assert_allclose(one[1]["test_loss"], two[1]["test_loss"], rtol=1e-4)
    assert abs(one[1]["test_accuracy"] - two[1]["test_accuracy"]) <= 1 / 130
    np.testing.assert_allclose(one[2], two[2], rtol=0, atol=1e-4 * np.abs(one[2]).max())
    assert int(two[3].step) == 2 * (640 // 64)
    folder = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    assert not [f for f in os.listdir(folder) if f.startswith("jaxcnn-replicas-")]  # none left


def test_a_state_handed_in_is_resumed_exactly(data, devices):
    """A restored state (here: after epoch 1 of an earlier trainer) reaches the followers: the
    resumed run equals the uninterrupted one bit for bit."""
    cfg = config()
    whole = run(cfg, data, devices, 2)
    first = run(cfg, data, devices, 2, epochs=(0,))
    resumed = run(cfg, data, devices, 2, epochs=(1,), state=first[3])
    np.testing.assert_array_equal(whole[2], resumed[2])
    assert whole[1] == resumed[1]


def test_a_follower_that_dies_stops_the_run_with_a_message(data, devices):
    trainer = train.Trainer(config(), data, train.make_mesh(devices[:1]), replicas=2)
    try:
        run_steps = trainer.run_train_steps(0)
        next(run_steps)
        trainer.feed._followers[0].kill()
        trainer.feed._followers[0].join()
        with pytest.raises(RunStopped, match="Replica process 1 ended .* JAXCNN_CPU_REPLICAS=1"):
            for _ in run_steps:
                pass
    finally:
        trainer.close()


def test_plan_chooses_replicas_only_for_runs_that_qualify(monkeypatch):
    monkeypatch.setattr(cpu_devices, "usable_cores", lambda: 2)
    monkeypatch.setattr(replicas, "_planned", 1)

    def planned(environ=None, multi_process=False, **overrides):
        cfg = config_lib.resolve({"model": {"name": "lenet5"}, "data": {"dataset": "fashion_mnist"},
                                  **overrides})
        return replicas.plan(cfg, multi_process, {} if environ is None else environ)

    environ = {}
    assert planned(environ) == 2 and environ["NPROC"] == "1"  # 10 epochs of 60,000 images
    assert planned(epochs=3) == 1  # 180,000 images: too few to pay for the start
    assert planned(data={"dataset": "fashion_mnist", "max_train_examples": 5000}) == 1
    assert planned(batch_size=127) == 1  # nothing divides it
    shares = {"name": "cnn", "batch_norm": True, "dropout": 0.2}  # statistics, masks exchanged
    assert planned(model=shares, batch_size=256) == 1  # the exchanges cost what a core saves
    assert planned({"JAXCNN_CPU_REPLICAS": "2"}, model=shares, batch_size=128) == 2  # asked for
    # The CIFAR ResNets pay for their exchanges from 256 images a core on.
    assert planned(model={"name": "resnet20"}, batch_size=512) == 2
    assert planned(model={"name": "resnet20"}, batch_size=1024) == 2
    assert planned(model={"name": "resnet20"}, batch_size=256) == 1
    assert planned(epoch_loop="scan") == 1
    assert planned(data={"dataset": "fashion_mnist", "pipeline": "stream"}) == 1
    assert planned(multi_process=True) == 1
    for chosen in ({"JAXCNN_CPU_DEVICES": "2"}, {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
                   {"JAXCNN_CPU_REPLICAS": "1"}):
        environ = dict(chosen)
        assert planned(environ) == 1 and "NPROC" not in environ
    assert planned({"JAXCNN_CPU_REPLICAS": "2"}, epochs=1) == 2  # asked for: whatever the size
    with pytest.raises(UserError, match="JAXCNN_CPU_REPLICAS='two' is not a replica count"):
        planned({"JAXCNN_CPU_REPLICAS": "two"})


def test_count_for_refuses_replicas_a_run_cannot_use(devices):
    mesh = train.make_mesh(devices[:1])
    lenet = config_lib.resolve({"model": {"name": "lenet5"}, "batch_size": 128})
    with pytest.raises(UserError, match="JAXCNN_CPU_REPLICAS=3 does not divide batch_size 128"):
        replicas.count_for(lenet, mesh, "memory", "step", {"JAXCNN_CPU_REPLICAS": "3"})
    with pytest.raises(UserError, match="replicas need the memory pipeline"):
        replicas.count_for(lenet, mesh, "stream", "step", {"JAXCNN_CPU_REPLICAS": "2"})
    assert replicas.count_for(lenet, mesh, "memory", "step", {"JAXCNN_CPU_REPLICAS": "2"}) == 2
    assert replicas.count_for(lenet, train.make_mesh(devices[:2]), "memory", "step", {}) == 1


def test_replicas_share_batch_norm_statistics_and_dropout_masks(data, devices):
    """BatchNorm over the global batch (statistics and their gradients exchanged) and dropout
    with the global batch's masks: two replicas train like one device (momentum SGD: Adam's
    first steps scale the rounding noise of the biases BatchNorm cancels up to the step size)."""
    cfg = config(model={"name": "cnn", "batch_norm": True, "dropout": 0.2},
                 optimizer={"name": "momentum", "learning_rate": 0.05, "momentum": 0.9})
    one, two = run(cfg, data, devices, 1), run(cfg, data, devices, 2)
    for a, b in zip(one[0], two[0]):
        np.testing.assert_allclose([a["train_loss"], a["train_accuracy"]],
                                   [b["train_loss"], b["train_accuracy"]], rtol=1e-4)
    np.testing.assert_allclose(one[1]["test_loss"], two[1]["test_loss"], rtol=1e-4)
    np.testing.assert_allclose(one[2], two[2], rtol=0, atol=1e-4 * np.abs(one[2]).max())
    for a, b in zip(jax.tree.leaves(jax.device_get(one[3].batch_stats)),
                    jax.tree.leaves(jax.device_get(two[3].batch_stats))):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_process_batch_norm_over_one_process_is_flax_batch_norm():
    """The hand-written BatchNorm of the replicas: flax's outputs, gradients and statistics."""
    import flax.linen as nn
    import jax.numpy as jnp

    from jaxcnn.models import layers

    x = jax.random.normal(jax.random.key(0), (8, 5, 5, 3)) * 2 + 1
    alone = layers.ProcessAxis(0, 1, lambda v: v)
    for train_mode in (True, False):
        ours = layers.batch_norm(nn.BatchNorm, train_mode, alone)()
        flax_bn = layers.batch_norm(nn.BatchNorm, train_mode, None)()
        variables = flax_bn.init(jax.random.key(1), x)
        variables = jax.tree.map(lambda v: v + 0.3, variables)

        def loss(module, variables, x):
            y, new = module.apply(variables, x, mutable=["batch_stats"])
            return (y * jnp.arange(3.0)).sum(), (y, new)

        (l1, (y1, s1)), g1 = jax.value_and_grad(loss, argnums=(1, 2), has_aux=True)(
            ours, variables, x)
        (l2, (y2, s2)), g2 = jax.value_and_grad(loss, argnums=(1, 2), has_aux=True)(
            flax_bn, variables, x)
        np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-5)
        for a, b in zip(jax.tree.leaves((g1, s1)), jax.tree.leaves((g2, s2))):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_replicas_refuse_a_norm_they_cannot_exchange():
    import flax.linen as nn

    from jaxcnn.models import layers

    with pytest.raises(UserError, match="average the statistics of nn.BatchNorm only"):
        layers.batch_norm(nn.GroupNorm, True, layers.ProcessAxis(0, 2, lambda v: v))


def test_the_launcher_trains_with_replicas_and_says_so(tmp_path):
    require_fashion_mnist()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # no devices chosen for it
    env.update(PYTHONPATH=ROOT, JAXCNN_CPU_REPLICAS="2")
    out = subprocess.run(
        [sys.executable, "-m", "jaxcnn.launch", os.path.join(ROOT, "experiments", "lenet_fashion.py"),
         "--set", "epochs=1", "--set", "data.max_train_examples=1024",
         "--set", "data.max_test_examples=200", "--workdir", str(tmp_path / "run")],
        capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "1 device(s) (cpu) in each of 2 processes (one core each)" in out.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["replicas"] == 2 and summary["devices"] == 1
    assert "Traceback" not in out.stderr and "WARNING" not in out.stderr
