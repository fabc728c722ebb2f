"""Values computed once (jaxcnn.models.layers.stored) and the ResNets' "stored" lowering: the same
function and gradients as plain XLA, and a compiled CPU step that really keeps the barrier."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn.models import create_model
from jaxcnn.models.layers import stored


def test_stored_returns_every_float_unchanged_and_passes_gradients_through():
    x = jnp.asarray([1.5, -0.0, 0.0, jnp.inf, -jnp.inf, 3e-39, -7.0], jnp.float32)
    got = jax.jit(stored)(x)
    np.testing.assert_array_equal(np.asarray(got).view(np.uint32), np.asarray(x).view(np.uint32))
    nan_first = jnp.asarray([jnp.nan, -0.0, 2.0], jnp.float32)  # takes the other branch
    np.testing.assert_array_equal(np.asarray(jax.jit(stored)(nan_first)).view(np.uint32),
                                  np.asarray(nan_first).view(np.uint32))
    g = jax.grad(lambda v: (stored(v * v) * jnp.arange(7.0)).sum())(jnp.ones(7))
    np.testing.assert_array_equal(g, 2 * jnp.arange(7.0))
    assert jax.jit(stored)(jnp.ones((2, 3), jnp.bfloat16)).dtype == jnp.bfloat16


@pytest.mark.parametrize("name, options, shape", [  # narrow and small: the same code paths, faster
    ("resnet20", {"widths": (4, 8, 16)}, (4, 16, 16, 3)),
    ("resnet18", {"small_input": True, "num_filters": 8}, (2, 16, 16, 3)),
])
def test_stored_and_xla_lowerings_are_the_same_resnet(name, options, shape):
    kept = create_model(name, 10, lowering="stored", **options)
    plain = create_model(name, 10, lowering="xla", **options)
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape).astype(np.float32))
    labels = jnp.arange(shape[0]) % 10
    variables = kept.init(jax.random.key(0), x)
    same = jax.tree.map(lambda a, b: bool((a == b).all()), variables, plain.init(jax.random.key(0), x))
    assert all(jax.tree.leaves(same))  # same names, shapes and initial values

    def outputs(model):  # evaluation logits, training logits, gradients
        def train_loss(params):
            logits, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                                    train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits
        (_, train_logits), grads = jax.value_and_grad(train_loss, has_aux=True)(variables["params"])
        return model.apply(variables, x), train_logits, grads

    got, want = jax.jit(outputs, static_argnums=0)(kept), jax.jit(outputs, static_argnums=0)(plain)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_resnet_auto_lowering_keeps_block_outputs_in_the_compiled_cpu_step():
    """XLA:CPU removes optimisation barriers; the conditionals must survive to the compiled step,
    one per block in the forward pass and one in the backward pass."""
    assert jax.default_backend() == "cpu"
    x = jnp.zeros((2, 16, 16, 3))
    labels = jnp.zeros(2, jnp.int32)

    def compiled_conditionals(model):
        variables = model.init(jax.random.key(0), x)

        def train_loss(params):
            logits, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                                    train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        step = jax.jit(jax.grad(train_loss)).lower(variables["params"]).compile()
        return step.as_text().count(" conditional(")

    narrow = {"widths": (4, 8, 16)}
    assert compiled_conditionals(create_model("resnet20", 10, **narrow)) == 2 * 9
    assert compiled_conditionals(create_model("resnet20", 10, lowering="xla", **narrow)) == 0
