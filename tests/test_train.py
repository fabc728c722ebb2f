"""The pure train step, its data-parallel forms, the on-device input pipeline and the Trainer."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from jaxcnn import config as config_lib
from jaxcnn import datasets, input_pipeline, optim
from jaxcnn.models import create_model
from jaxcnn.train import AXIS, Trainer, create_train_state, cross_entropy, train_step


def random_batch(n=64, seed=0, classes=10):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"image": jax.random.normal(k1, (n, 28, 28, 1)),
            "label": jax.random.randint(k2, (n,), 0, classes)}


def new_state(model_name="lenet5", seed=0, lr=0.05, **model_args):
    model = create_model(model_name, 10, **model_args)
    return create_train_state(model, optax.sgd(lr, momentum=0.9), (28, 28, 1), seed), model


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y),
                                                         rtol=rtol, atol=atol), a, b)


def test_train_step_lowers_the_loss_on_a_fixed_batch():
    state = create_train_state(create_model("lenet5", 10), optax.adam(3e-3), (28, 28, 1), 0)
    batch = random_batch()
    step = jax.jit(train_step)
    losses = []
    for _ in range(30):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"] / metrics["count"]))
    assert losses[-1] < 0.5 * losses[0]
    assert int(state.step) == 30


def test_same_seed_gives_identical_parameters_and_another_seed_different_ones():
    batch = random_batch()
    runs = {}
    model = create_model("cnn", 10, cdims=(8, 16), hdims=(16,), dropout=0.3)
    step = jax.jit(train_step)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        state = create_train_state(model, optax.sgd(0.05, momentum=0.9), (28, 28, 1), seed)
        for _ in range(3):
            state, _ = step(state, batch)
        runs[name] = jax.device_get(state.params)
    jax.tree.map(np.testing.assert_array_equal, runs["a"], runs["b"])
    differs = jax.tree.leaves(jax.tree.map(lambda x, y: not np.array_equal(x, y), runs["a"], runs["c"]))
    assert all(differs)


@pytest.mark.parametrize("model_args", [
    {"model_name": "lenet5"},
    {"model_name": "cnn", "cdims": (8, 16), "hdims": (16,), "batch_norm": True, "dropout": 0.0},
])
def test_step_on_8_devices_equals_the_step_on_1_under_shard_map_and_pmap(devices, model_args):
    state, model = new_state(**model_args)
    batch = random_batch(64)
    single = jax.jit(train_step)
    # Data-parallel forms: each device gets 8 of the 64 examples; BatchNorm averages over the axis.
    parallel_state = state.replace(
        apply_fn=model.clone(axis_name=AXIS).apply if hasattr(model, "axis_name") else model.apply)
    mesh = Mesh(np.array(devices), (AXIS,))
    sharded = jax.jit(jax.shard_map(functools.partial(train_step, axis_name=AXIS), mesh=mesh,
                                    in_specs=(P(), P(AXIS)), out_specs=(P(), P()),
                                    check_vma=False))
    pmapped = jax.pmap(functools.partial(train_step, axis_name=AXIS), axis_name=AXIS,
                       in_axes=(None, 0))
    per_device = jax.tree.map(lambda x: x.reshape(8, 8, *x.shape[1:]), batch)

    s1, s8, sp = state, parallel_state, parallel_state
    for _ in range(3):
        s1, m1 = single(s1, batch)
        s8, m8 = sharded(s8, batch)
        sp, mp = pmapped(sp, per_device)
        sp, mp = jax.tree.map(lambda x: x[0], (sp, mp))  # replicas are identical; keep one
        for m in (m8, mp):
            assert int(m["count"]) == 64 and int(m["correct"]) == int(m1["correct"])
            np.testing.assert_allclose(m["loss"], m1["loss"], rtol=1e-5)
    for other in (s8, sp):
        assert_trees_close(other.params, s1.params)
        assert_trees_close(other.batch_stats, s1.batch_stats)
        assert_trees_close(other.opt_state, s1.opt_state)


def test_epoch_permutation_is_a_pure_function_of_seed_and_epoch():
    seed = input_pipeline.seed_key_data
    a = np.asarray(input_pipeline.epoch_permutation(seed(0), 3, 1000))
    assert sorted(a.tolist()) == list(range(1000))
    np.testing.assert_array_equal(a, input_pipeline.epoch_permutation(seed(0), 3, 1000))
    assert not np.array_equal(a, input_pipeline.epoch_permutation(seed(0), 4, 1000))
    assert not np.array_equal(a, input_pipeline.epoch_permutation(seed(1), 3, 1000))


def test_augmentation_crops_and_flips_and_is_keyed_per_example():
    images = jnp.arange(2 * 6 * 6, dtype=jnp.float32).reshape(2, 6, 6, 1)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(2))
    out = input_pipeline.augment(images, keys, crop_padding=2, flip=True)
    assert out.shape == images.shape
    # Every output image is a shifted (and perhaps mirrored) window of its zero-padded input.
    for i in range(2):
        padded = np.pad(np.asarray(images[i]), ((2, 2), (2, 2), (0, 0)))
        windows = [padded[y:y + 6, x:x + 6] for y in range(5) for x in range(5)]
        windows += [w[:, ::-1] for w in windows]
        assert any(np.array_equal(np.asarray(out[i]), w) for w in windows)
    # The same key gives the same augmentation, whatever else is in the batch.
    alone = input_pipeline.augment(images[1:], keys[1:], crop_padding=2, flip=True)
    np.testing.assert_array_equal(alone[0], out[1])


def test_cross_entropy_with_label_smoothing_matches_the_formula():
    logits = jnp.array([[2.0, 0.5, -1.0]])
    logp = jax.nn.log_softmax(logits)[0]
    want = -(0.9 * logp[1] + 0.1 / 3 * logp.sum())
    np.testing.assert_allclose(cross_entropy(logits, jnp.array([1]), 0.1)[0], want, rtol=1e-6)


def synthetic_dataset(n_train=256, n_test=100, seed=0):
    """Learnable fake data: class c brightens the c-th of four horizontal bands (flip-invariant)."""
    rng = np.random.default_rng(seed)

    def make(n):
        labels = rng.integers(0, 4, n).astype(np.int32)
        images = rng.integers(0, 60, (n, 28, 28, 1)).astype(np.uint8)
        for i, y in enumerate(labels):
            images[i, 7 * y:7 * (y + 1)] += 150
        return images, labels

    (tri, trl), (tei, tel) = make(n_train), make(n_test)
    return datasets.Dataset("synthetic", tri, trl, tei, tel, 4, ("a", "b", "c", "d"), "generated")


def trainer_config(**overrides):
    base = {"model": {"name": "lenet5"}, "epochs": 2, "batch_size": 32, "eval_batch_size": 24,
            "optimizer": {"name": "momentum", "learning_rate": 0.02},
            "data": {"crop_padding": 2, "flip": True}}
    return config_lib.resolve(config_lib.merge(base, overrides))


def run_trainer(config, devices, data=None):
    trainer = Trainer(config, data or synthetic_dataset(), Mesh(np.array(devices), (AXIS,)))
    history = []
    for epoch in range(config["epochs"]):
        history.append({**trainer.train_epoch(epoch), **trainer.evaluate()})
    return trainer, history


@pytest.mark.parametrize("model", [
    {"name": "lenet5"},
    {"name": "cnn", "cdims": [8, 16], "hdims": [16], "batch_norm": True, "dropout": 0.3},
])
def test_trainer_on_8_devices_matches_1_device_with_augmentation(devices, model):
    # Augmentation, dropout masks and BatchNorm statistics all follow the global batch.
    config = trainer_config(model=model)
    t1, h1 = run_trainer(config, devices[:1])
    t8, h8 = run_trainer(config, devices)
    for a, b in zip(h1, h8):
        assert a["test_count"] == b["test_count"] == 100
        for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5)
    assert_trees_close(t1.variables(), t8.variables(), rtol=1e-5, atol=1e-6)


def test_the_seed_is_not_compiled_into_the_memory_feeds_programs(devices):
    # Another seed reuses the compiled programs (and their compilation-cache entries).
    mesh = Mesh(np.array(devices[:1]), (AXIS,))
    feeds = [Trainer(trainer_config(seed=seed), synthetic_dataset(), mesh).feed for seed in (0, 1)]
    assert feeds[0]._train.as_text() == feeds[1]._train.as_text()
    permutations = [f._permute.lower(f.seed_key, 0, f.num_train).as_text() for f in feeds]
    assert permutations[0] == permutations[1]


def test_scan_epoch_loop_equals_the_step_loop(devices):
    t_step, h_step = run_trainer(trainer_config(epoch_loop="step"), devices[:2])
    t_scan, h_scan = run_trainer(trainer_config(epoch_loop="scan"), devices[:2])
    assert t_scan.epoch_loop == "scan"
    for a, b in zip(h_step, h_scan):
        np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-5)
        assert a["test_count"] == b["test_count"]
    assert_trees_close(t_step.variables(), t_scan.variables(), rtol=1e-4, atol=1e-5)


def test_evaluation_covers_every_test_example_once_and_equals_model_apply(devices):
    data = synthetic_dataset(n_test=101)  # 101 = 4 batches of 24 and a padded fifth
    trainer, history = run_trainer(trainer_config(epochs=1), devices, data)
    assert history[0]["test_count"] == 101
    x = trainer.normalize(jnp.asarray(data.test_images))
    logits = trainer.model.apply(trainer.variables(), x, train=False)
    accuracy = float(jnp.mean(jnp.argmax(logits, -1) == data.test_labels))
    loss = float(jnp.mean(cross_entropy(logits, jnp.asarray(data.test_labels))))
    assert round(history[0]["test_accuracy"] * 101) == round(accuracy * 101)
    assert history[0]["test_loss"] == pytest.approx(loss, rel=1e-5)


def test_trainer_learns_the_synthetic_task(devices):
    _, history = run_trainer(trainer_config(epochs=3), devices[:1])
    assert history[-1]["test_accuracy"] >= 0.9
    assert history[-1]["train_loss"] < history[0]["train_loss"]


@pytest.mark.parametrize("optimizer", config_lib.OPTIMIZERS)
def test_every_optimizer_takes_finite_steps(optimizer):
    config = trainer_config(optimizer={"name": optimizer, "weight_decay": 1e-4, "grad_clip_norm": 1.0})
    tx = optim.make_optimizer(config, optim.make_schedule(config, 10))
    state = create_train_state(create_model("lenet5", 10), tx, (28, 28, 1), 0)
    state, metrics = jax.jit(train_step)(state, random_batch(16))
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(state.params))


def test_schedules_have_their_shapes():
    def lr(schedule, step, **s):
        config = trainer_config(epochs=10, schedule={"name": schedule, **s},
                                optimizer={"learning_rate": 0.1})
        return float(optim.make_schedule(config, 100)(step))

    assert lr("constant", 999) == pytest.approx(0.1)
    assert lr("cosine", 0) == pytest.approx(0.1) and lr("cosine", 1000) == pytest.approx(0.0, abs=1e-7)
    assert lr("cosine", 1000, final_factor=0.1) == pytest.approx(0.01)
    assert lr("warmup_cosine", 0, warmup_epochs=2) == 0.0
    assert lr("warmup_cosine", 200, warmup_epochs=2) == pytest.approx(0.1)
    assert lr("step", 299, boundaries=[3, 6]) == pytest.approx(0.1)
    assert lr("step", 300, boundaries=[3, 6]) == pytest.approx(0.01)
    assert lr("step", 600, boundaries=[3, 6]) == pytest.approx(0.001)
    assert lr("onecycle", 300) == pytest.approx(0.1, rel=1e-3)  # peak at 30% by default
    assert lr("onecycle", 0) < 0.01 and lr("onecycle", 1000) < 1e-4


def test_weight_decay_skips_biases():
    config = trainer_config(optimizer={"name": "sgd", "learning_rate": 1.0, "weight_decay": 0.5})
    tx = optim.make_optimizer(config, optim.make_schedule(config, 10))
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.5)
    np.testing.assert_allclose(updates["bias"], 0.0)
