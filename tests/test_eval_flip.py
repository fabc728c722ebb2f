"""Test-time augmentation (``eval_flip``): each test image classified by the mean of its own and
its mirror image's logits, in the run's test metrics, ``restore`` and ``predict`` alike."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn
from jaxcnn import models, rundir
from jaxcnn.train import cross_entropy

from conftest import require_fashion_mnist


def test_flip_averaged_logits_are_the_mean_over_both_mirrors_and_mirror_invariant():
    model = models.create_model("cnn", 10, cdims=(8,), hdims=(16,), batch_norm=True)
    x = jax.random.normal(jax.random.key(0), (6, 28, 28, 1))
    variables = model.init(jax.random.key(1), x)
    mirrored = x[:, :, ::-1]

    plain = models.eval_logits(model.apply, variables, x)
    np.testing.assert_array_equal(plain, model.apply(variables, x, train=False))
    averaged = models.eval_logits(model.apply, variables, x, flip=True)
    want = (model.apply(variables, x) + model.apply(variables, mirrored)) / 2
    np.testing.assert_allclose(averaged, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(models.eval_logits(model.apply, variables, mirrored, flip=True),
                               averaged, rtol=1e-5, atol=1e-6)
    assert not np.allclose(averaged, plain, atol=1e-3)  # the mirror does change the logits


@pytest.mark.parametrize("pipeline", ["memory", "stream"])
def test_a_run_evaluated_with_mirrors_records_what_restore_computes(
        tmp_path, devices, pipeline):
    require_fashion_mnist()
    from jaxcnn.launch import main

    workdir = tmp_path / "run"
    stream = ["--set", "data.num_workers=0"] if pipeline == "stream" else []
    assert main(["experiments/lenet_fashion.py", "--workdir", str(workdir),
                 "--set", "epochs=1", "--set", "batch_size=64", "--set", "eval_flip=True",
                 "--set", "data.max_train_examples=512", "--set", "data.max_test_examples=200",
                 "--set", f"data.pipeline={pipeline}", *stream]) == 0
    record = [r for r in rundir.read_metrics(workdir) if "test_accuracy" in r][-1]

    data = jaxcnn.datasets.load("fashion_mnist")
    images, labels = data.test_images[:200], data.test_labels[:200]
    run = jaxcnn.restore(str(workdir), "latest")
    averaged = run.logits(images, batch_size=64)  # the run's eval_flip by default
    correct = int(np.sum(np.argmax(averaged, -1) == labels))
    assert correct == round(record["test_accuracy"] * record["test_count"])
    loss = float(jnp.mean(cross_entropy(jnp.asarray(averaged), jnp.asarray(labels))))
    assert loss == pytest.approx(record["test_loss"], rel=1e-5)

    plain = run.logits(images, flip=False)
    np.testing.assert_allclose(plain, run.apply_fn(run.variables, run.preprocess(images)),
                               rtol=1e-5, atol=1e-5)
    mirrored = run.logits(images[:, :, ::-1], flip=False)
    np.testing.assert_allclose(averaged, (plain + mirrored) / 2, rtol=1e-4, atol=1e-4)
    assert float(np.abs(averaged - plain).max()) > 1e-2
