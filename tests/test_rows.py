"""Banded-matrix convolutions over image rows (jaxcnn.models.rows) and LeNet-5's "rows" lowering:
the same values and gradients as XLA's NHWC convolutions and pooling, the same parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn.models import create_model
from jaxcnn.models.layers import max_pool, max_pool_rows
from jaxcnn.models.rows import RowConv, conv_rows, default_block

TOL = dict(rtol=2e-5, atol=2e-5)


def to_rows(x):  # [N, H, W, C] <-> [H, N, W, C]
    return jnp.transpose(x, (1, 0, 2, 3))


def xla_conv(x, kernel, padding):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize("shape, kernel_shape, padding, block", [
    ((3, 28, 28, 1), (5, 5, 1, 6), ((2, 2), (2, 2)), None),   # LeNet-5's conv1, in blocks of 14
    ((3, 28, 28, 1), (5, 5, 1, 6), ((2, 2), (2, 2)), 7),      # ... of 7
    ((3, 28, 28, 1), (5, 5, 1, 6), ((2, 2), (2, 2)), 28),     # ... and whole rows
    ((3, 14, 14, 6), (5, 5, 6, 16), ((0, 0), (0, 0)), None),  # LeNet-5's conv2: whole rows
    ((2, 9, 11, 3), (3, 5, 3, 4), ((1, 0), (2, 1)), 5),       # uneven kernel and padding
])
def test_conv_rows_equals_xla_convolution_in_value_and_gradients(shape, kernel_shape, padding, block):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape).astype(np.float32))
    kernel = jnp.asarray(rng.normal(size=kernel_shape).astype(np.float32))
    want, want_vjp = jax.vjp(lambda x, k: xla_conv(x, k, padding), x, kernel)
    got, got_vjp = jax.vjp(lambda x, k: to_rows(conv_rows(to_rows(x), k, padding, block)), x, kernel)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, **TOL)
    g = jnp.asarray(rng.normal(size=want.shape).astype(np.float32))
    for a, b in zip(got_vjp(g), want_vjp(g)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_a_block_that_does_not_divide_the_width_is_refused():
    with pytest.raises(ValueError, match="block 3 does not divide the output width 10"):
        conv_rows(jnp.zeros((14, 1, 14, 6)), jnp.zeros((5, 5, 6, 16)), block=3)


def test_default_block_keeps_multi_channel_rows_whole_and_cuts_one_channel_ones():
    assert default_block(28, 1) == 14
    assert default_block(24, 1) == 12
    assert default_block(10, 6) == 10
    assert default_block(8, 1) == 8
    assert default_block(29, 1) == 1  # a prime width: one column per product, still exact


def test_row_conv_pooled_before_its_bias_equals_pooling_after_it():
    # RowConv(pool=2) adds the bias after the max-pool; relu(that) is relu-then-pool of the
    # biased convolution, in value and in the gradients of the input, kernel and bias.
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(14, 3, 14, 6)).astype(np.float32))  # [H, N, W, C]
    conv = RowConv(16, (5, 5))
    params = conv.init(jax.random.key(0), x)["params"]
    params = {**params, "bias": jnp.asarray(rng.normal(size=16).astype(np.float32))}

    def pooled_after(params, x):
        return max_pool_rows(jax.nn.relu(conv.apply({"params": params}, x)), 2)

    def pooled_before(params, x):
        return jax.nn.relu(conv.clone(pool=2).apply({"params": params}, x))

    want, want_vjp = jax.vjp(pooled_after, params, x)
    got, got_vjp = jax.vjp(pooled_before, params, x)
    assert got.shape == want.shape == (5, 3, 5, 16)
    np.testing.assert_array_equal(got, want)
    g = jnp.asarray(rng.normal(size=want.shape).astype(np.float32))
    for a, b in zip(jax.tree.leaves(got_vjp(g)), jax.tree.leaves(want_vjp(g))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_max_pool_rows_equals_max_pool_with_ties():
    x = np.random.default_rng(1).integers(0, 3, size=(2, 9, 8, 3)).astype(np.float32)  # many ties
    x = jnp.asarray(x)
    want, want_vjp = jax.vjp(lambda x: max_pool(x, 2), x)
    got, got_vjp = jax.vjp(lambda x: to_rows(max_pool_rows(to_rows(x), 2)), x)
    np.testing.assert_array_equal(got, want)
    g = jnp.asarray(np.random.default_rng(2).normal(size=want.shape).astype(np.float32))
    np.testing.assert_array_equal(got_vjp(g)[0], want_vjp(g)[0])


@pytest.mark.parametrize("shape, options", [((4, 28, 28, 1), {}),
                                            ((3, 32, 32, 3), {"conv1_padding": 0})])
def test_lenet5_rows_and_xla_lowerings_are_the_same_network(shape, options):
    rows = create_model("lenet5", 10, lowering="rows", **options)
    xla = create_model("lenet5", 10, lowering="xla", **options)
    x = jnp.asarray(np.random.default_rng(3).normal(size=shape).astype(np.float32))
    labels = jnp.arange(shape[0]) % 10
    params = rows.init(jax.random.key(0), x)
    same = jax.tree.map(lambda a, b: bool((a == b).all()), params, xla.init(jax.random.key(0), x))
    assert all(jax.tree.leaves(same))  # same names, shapes and initial values

    def loss(model):
        return lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), labels).mean()

    np.testing.assert_allclose(rows.apply(params, x), xla.apply(params, x), rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(jax.grad(loss(rows))(params)),
                    jax.tree.leaves(jax.grad(loss(xla))(params))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_lenet5_auto_lowering_computes_rows_on_a_cpu():
    model = create_model("lenet5", 10)
    x = jnp.zeros((2, 28, 28, 1))
    ops = str(jax.make_jaxpr(model.apply)(model.init(jax.random.key(0), x), x))
    assert jax.default_backend() == "cpu"
    assert "conv_general_dilated" not in ops and "dot_general" in ops
    xla_ops = str(jax.make_jaxpr(model.clone(lowering="xla").apply)(model.init(jax.random.key(0), x), x))
    assert "conv_general_dilated" in xla_ops
