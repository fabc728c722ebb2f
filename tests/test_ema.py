"""The moving average of the weights (``ema_decay``): its arithmetic, a run evaluated with it and
restored with it, and the settings refused. (Its exact resume: tests/test_checkpoint.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn
from jaxcnn import checkpoint, config as config_lib, rundir
from jaxcnn.errors import UserError
from jaxcnn.train import averaged, cross_entropy

from conftest import require_fashion_mnist


def test_the_average_weights_each_step_by_decay_to_its_age_from_the_first_step_on():
    decay = 0.9
    rng = np.random.default_rng(0)
    weights = [{"w": rng.normal(size=3).astype(np.float32)} for _ in range(6)]
    ema = jax.tree.map(jnp.asarray, weights[0])  # as create_train_state: the initial weights
    for step, params in enumerate(weights[1:], start=1):
        ema = averaged(ema, params, jnp.asarray(step), decay)
        ages = decay ** np.arange(step - 1, -1, -1)  # steps 1..step, the newest weighing 1
        want = sum(a * p["w"] for a, p in zip(ages, weights[1:step + 1])) / ages.sum()
        np.testing.assert_allclose(ema["w"], want, rtol=1e-5, atol=1e-6)
    # After the first step it is that step's weights: nothing of the initial ones is left.
    first = averaged(weights[0], weights[1], jnp.asarray(1), decay)
    np.testing.assert_allclose(first["w"], weights[1]["w"], rtol=1e-6)


def test_a_run_with_an_average_is_evaluated_and_restored_with_it(tmp_path, devices):
    require_fashion_mnist()
    from jaxcnn.launch import main

    workdir = tmp_path / "run"
    assert main(["experiments/lenet_fashion.py", "--workdir", str(workdir),
                 "--set", "epochs=1", "--set", "batch_size=64", "--set", "ema_decay=0.95",
                 "--set", "data.max_train_examples=512", "--set", "data.max_test_examples=200"]) == 0
    record = [r for r in rundir.read_metrics(workdir) if "test_accuracy" in r][-1]

    data = jaxcnn.datasets.load("fashion_mnist")
    images, labels = data.test_images[:200], data.test_labels[:200]
    run = jaxcnn.restore(str(workdir), "latest")
    logits = run.logits(images, batch_size=64)
    assert int(np.sum(np.argmax(logits, -1) == labels)) == round(
        record["test_accuracy"] * record["test_count"])
    loss = float(jnp.mean(cross_entropy(jnp.asarray(logits), jnp.asarray(labels))))
    assert loss == pytest.approx(record["test_loss"], rel=1e-5)

    # The restored weights are the average, not the last step's weights.
    ckpts = checkpoint.Checkpoints(str(workdir / "checkpoints"), 3, read_only=True)
    try:
        saved = ckpts.restore_variables(ckpts.steps()[-1], {"params": run.variables["params"],
                                                            "ema_params": run.variables["params"]})
    finally:
        ckpts.close()
    jax.tree.map(np.testing.assert_array_equal, run.variables["params"], saved["ema_params"])
    differences = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()),
                                               saved["params"], saved["ema_params"]))
    assert max(differences) > 1e-3


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.1, float("nan"), True, "0.99"])
def test_an_ema_decay_outside_0_to_1_is_refused(value):
    with pytest.raises(UserError, match="ema_decay must be"):
        config_lib.resolve({"ema_decay": value})
    assert config_lib.resolve({"ema_decay": 0.998})["ema_decay"] == 0.998
