"""The models' CPU forms: values computed once (layers.stored, the ResNets' "stored" lowering),
weight gradients in chunks and narrow convolutions widened (layers.conv_general_dilated): the
same function and gradients as plain XLA, really present in what runs on a CPU, and absent when
compiling for a TPU."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn.errors import UserError
from jaxcnn.models import create_model, layers
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


# torchvision's ResNets run "stored" on a CPU in test_torchvision's logit comparisons.
@pytest.mark.parametrize("name, options, shape", [  # narrow and small: the same code paths, faster
    ("resnet20", {"widths": (4, 8, 16)}, (4, 16, 16, 3)),
    ("resnet18", {"num_filters": 4, "small_input": True}, (2, 16, 16, 3)),
    ("resnet50", {"num_filters": 4, "small_input": True}, (2, 16, 16, 3)),
    ("cnn", {"cdims": (4, 8), "hdims": (8,), "batch_norm": True, "dropout": 0.5}, (4, 12, 12, 1)),
])
def test_stored_and_xla_lowerings_are_the_same_model(name, options, shape):
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
                                    train=True, mutable=["batch_stats"],
                                    rngs={"dropout": jax.random.key(1)})
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits
        (_, train_logits), grads = jax.value_and_grad(train_loss, has_aux=True)(variables["params"])
        return model.apply(variables, x), train_logits, grads

    got, want = jax.jit(outputs, static_argnums=0)(kept), jax.jit(outputs, static_argnums=0)(plain)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_resnet_auto_lowering_keeps_what_each_convolution_reads_in_the_compiled_cpu_step():
    """XLA:CPU removes optimisation barriers; the conditionals must survive to the compiled step,
    one per stored value (the stem's output, each block's inner activation and output) in the
    forward pass and one in the backward pass; on a larger batch a device only the block outputs."""
    assert jax.default_backend() == "cpu"

    def compiled_conditionals(model, batch=2):
        x = jnp.zeros((batch, 16, 16, 3))
        labels = jnp.zeros(batch, jnp.int32)
        variables = model.init(jax.random.key(0), x)

        def train_loss(params):
            logits, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                                    train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        step = jax.jit(jax.grad(train_loss)).lower(variables["params"]).compile()
        return step.as_text().count(" conditional(")

    narrow = {"widths": (4, 8, 16)}
    assert compiled_conditionals(create_model("resnet20", 10, **narrow)) == 2 * (1 + 9 * 2)
    assert compiled_conditionals(create_model("resnet20", 10, **narrow), batch=65) == 2 * 9
    assert compiled_conditionals(create_model("resnet20", 10, lowering="xla", **narrow)) == 0


def _lowered(f, *args) -> str:
    return jax.jit(f).lower(*args).as_text()


def _conv_count(f, *args) -> int:
    return _lowered(f, *args).count("stablehlo.convolution")


@pytest.mark.parametrize("dimension_numbers, x_shape, w_shape, strides, padding", [
    (("NHWC", "HWIO", "NHWC"), (10, 9, 9, 3), (3, 3, 3, 5), (1, 1), ((1, 1), (1, 1))),
    (("NCHW", "OIHW", "NCHW"), (10, 4, 12, 12), (6, 4, 5, 5), (2, 2), ((2, 1), (0, 2))),
])
def test_chunked_weight_gradient_is_the_convolution_gradient(monkeypatch, dimension_numbers, x_shape,
                                                             w_shape, strides, padding):
    monkeypatch.setenv("JAXCNN_WEIGHT_GRADIENT_CHUNK", "4")  # 10 examples: chunks of 4, 4 and 2
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=x_shape).astype(np.float32))
    w = jnp.asarray(rng.normal(size=w_shape).astype(np.float32))

    def loss(conv):
        def f(x, w):
            y = conv(x, w, strides, padding, dimension_numbers=dimension_numbers)
            return (jnp.sin(y) * jnp.arange(y.size).reshape(y.shape) / y.size).sum()
        return f

    want = jax.value_and_grad(loss(jax.lax.conv_general_dilated), argnums=(0, 1))(x, w)
    got = jax.jit(jax.value_and_grad(loss(layers.conv_general_dilated), argnums=(0, 1)))(x, w)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
    def conv_count():  # traced afresh: the chunk size is read when the convolution is traced
        return _conv_count(jax.grad(loss(layers.conv_general_dilated), argnums=(0, 1)), x, w)

    assert conv_count() == 2 + 3  # forward + input gradient + three chunks' weight gradients
    monkeypatch.setenv("JAXCNN_WEIGHT_GRADIENT_CHUNK", "0")
    assert conv_count() == 3
    monkeypatch.setenv("JAXCNN_WEIGHT_GRADIENT_CHUNK", "10")  # the whole batch: nothing to split
    assert conv_count() == 3


def test_a_bad_weight_gradient_chunk_is_refused(monkeypatch):
    monkeypatch.setenv("JAXCNN_WEIGHT_GRADIENT_CHUNK", "sixty")
    x, w = jnp.zeros((8, 5, 5, 1)), jnp.zeros((3, 3, 1, 2))
    with pytest.raises(UserError, match="JAXCNN_WEIGHT_GRADIENT_CHUNK must be a whole number of "
                                        "examples .* got 'sixty'"):
        layers.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv_loss(conv, strides, padding):
    def f(x, w):
        y = conv(x, w, strides, padding, dimension_numbers=layers.NHWC)
        return (jnp.sin(y) * jnp.arange(y.size).reshape(y.shape) / y.size).sum()
    return f


@pytest.fixture
def x86(monkeypatch):
    """The widening is for x86-64 (where it was measured): the tests see one on any machine."""
    monkeypatch.setattr(layers.platform, "machine", lambda: "x86_64")


@pytest.mark.parametrize("x_shape, w_shape, padding, widened", [
    # the CIFAR ResNets' first stage (16 -> 16): 17 outputs forward, 17 inputs' gradient
    ((6, 9, 9, 16), (3, 3, 16, 16), ((1, 1), (1, 1)), ("3x3x16x17",)),
    ((6, 9, 9, 16), (3, 3, 16, 16), "SAME", ("3x3x16x17",)),
    ((6, 9, 9, 16), (3, 3, 16, 16), "VALID", ("3x3x16x17",)),
    ((6, 9, 9, 8), (3, 3, 8, 32), ((1, 1), (1, 1)), ("3x3x8x33", "3x3x32x9")),
    ((6, 9, 11, 32), (3, 5, 32, 8), ((0, 2), (1, 3)), ("3x5x32x9", "3x5x8x33")),
])
@pytest.mark.parametrize("chunk", ["4", "0"])  # 6 examples: weight gradients in chunks of 4 and 2
def test_a_widened_convolution_is_the_convolution(monkeypatch, x86, x_shape, w_shape, padding,
                                                  widened, chunk):
    monkeypatch.setenv("JAXCNN_WEIGHT_GRADIENT_CHUNK", chunk)
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=x_shape).astype(np.float32))
    fan_in = np.prod(w_shape[:3])  # outputs of about unit size, as in a network
    w = jnp.asarray(rng.normal(size=w_shape).astype(np.float32) / np.sqrt(fan_in))
    want = jax.value_and_grad(_conv_loss(jax.lax.conv_general_dilated, (1, 1), padding),
                              argnums=(0, 1))(x, w)
    f = jax.value_and_grad(_conv_loss(layers.conv_general_dilated, (1, 1), padding), argnums=(0, 1))
    with layers.one_core_per_device():
        text = _lowered(f, x, w)
        got = jax.jit(f)(x, w)
    for kernel in widened:
        assert f"tensor<{kernel}xf32>" in text
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _widened_kernels(x_shape, w_shape, strides=(1, 1), dtype=jnp.float32) -> int:
    x, w = jnp.zeros(x_shape, dtype), jnp.zeros(w_shape, dtype)
    text = _lowered(jax.grad(_conv_loss(layers.conv_general_dilated, strides, "SAME"), argnums=(0, 1)),
                    x, w)
    shapes = {tuple(map(int, s.split("x"))) for s in re.findall(r"tensor<(\d+x\d+x\d+x\d+)xf32>", text)}
    kernels = {s for s in shapes if s[:2] == w_shape[:2]}
    return len(kernels - {w_shape, (*w_shape[:2], w_shape[3], w_shape[2])})


def test_only_narrow_stride_1_convolutions_are_widened_and_only_where_each_device_has_one_core(
        monkeypatch, x86):
    narrow = (4, 8, 8, 16), (3, 3, 16, 16)
    assert _widened_kernels(*narrow) == 0  # outside one_core_per_device: XLA's own
    with layers.one_core_per_device():
        assert _widened_kernels(*narrow) == 1
        assert _widened_kernels((4, 8, 8, 16), (3, 3, 16, 32)) == 0  # already YNNPACK's
        assert _widened_kernels((4, 8, 8, 8), (3, 3, 8, 8)) == 0  # 33 outputs for 8: too many
        assert _widened_kernels(*narrow, strides=(2, 2)) == 0
        assert _widened_kernels((4, 8, 8, 16), (1, 1, 16, 16)) == 0  # a matrix product to XLA
        assert _widened_kernels(*narrow, dtype=jnp.bfloat16) == 0
        with layers.one_core_per_device(False):
            assert _widened_kernels(*narrow) == 0
        with layers.compiling_for("tpu"):
            assert _widened_kernels(*narrow) == 0
        monkeypatch.setenv("JAXCNN_WIDEN_CONVOLUTIONS", "0")
        assert _widened_kernels(*narrow) == 0
        monkeypatch.setenv("JAXCNN_WIDEN_CONVOLUTIONS", "yes")
        with pytest.raises(UserError, match="JAXCNN_WIDEN_CONVOLUTIONS must be 1 .* or 0 .* got 'yes'"):
            _widened_kernels(*narrow)
        monkeypatch.delenv("JAXCNN_WIDEN_CONVOLUTIONS")
        monkeypatch.setattr(layers.platform, "machine", lambda: "arm64")  # not measured there
        assert _widened_kernels(*narrow) == 0


def test_the_trainer_widens_where_each_device_has_one_core(monkeypatch, x86, devices):
    """Two devices on two cores (the launcher's split): widened; one device: XLA's own; the
    same training either way."""
    from jax.sharding import Mesh

    from jaxcnn import config as config_lib, cpu_devices, datasets
    from jaxcnn.train import AXIS, Trainer

    monkeypatch.setattr(cpu_devices, "usable_cores", lambda: 2)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (64, 8, 8, 1)).astype(np.uint8)
    labels = (np.arange(64) % 4).astype(np.int32)
    data = datasets.Dataset("synthetic", images, labels, images[:16], labels[:16], 4,
                            ("a", "b", "c", "d"), "generated")
    config = config_lib.resolve({"model": {"name": "cnn", "cdims": [16, 16], "hdims": [8]},
                                 "batch_size": 16, "eval_batch_size": 16, "epochs": 1,
                                 "optimizer": {"name": "momentum", "learning_rate": 0.05}})
    results = []
    for count in (1, 2):
        trainer = Trainer(config, data, Mesh(np.array(devices[:count]), (AXIS,)))
        assert ("f32[3,3,16,17]" in trainer.feed._train.as_text()) == (count == 2)
        results.append({**trainer.train_epoch(0), **trainer.evaluate()})
    for key in ("train_loss", "test_loss", "test_accuracy"):
        np.testing.assert_allclose(results[0][key], results[1][key], rtol=1e-5)


def test_compiling_for_a_tpu_leaves_out_the_cpu_forms():
    """jaxcnn.plan traces TPU programs on a CPU host: no conditionals, no chunks there."""
    model = create_model("resnet20", 10, widths=(4, 8, 16))
    x = jnp.zeros((130, 8, 8, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)

    def lowered_grads():  # a new function each time: jit would reuse the first trace
        def grads(params, batch_stats):
            return jax.grad(lambda p: model.apply({"params": p, "batch_stats": batch_stats}, x,
                                                  train=True, mutable=["batch_stats"])[0].sum())(params)
        return _lowered(grads, variables["params"], variables["batch_stats"])

    on_cpu = lowered_grads()
    with layers.compiling_for("tpu"):
        assert layers.target_platform() == "tpu"
        assert layers.resolve_lowering("auto", on_cpu="stored") == "xla"
        on_tpu = lowered_grads()
    assert layers.target_platform() == "cpu"
    # 130 examples: more than STORE_INNER_MAX_BATCH, so only the 9 block outputs are kept on a CPU
    assert on_cpu.count("stablehlo.case") == 2 * 9 and on_tpu.count("stablehlo.case") == 0
    convs = 19 * 3 - 1  # the first convolution has no input gradient
    assert on_tpu.count("stablehlo.convolution") == convs
    chunks = -(-130 // layers.weight_gradient_chunk())  # 130 examples: 9 chunks of 16 by default
    assert chunks > 1
    assert on_cpu.count("stablehlo.convolution") == convs + 19 * (chunks - 1)


def test_dropout_draws_its_mask_once_on_a_cpu_with_the_same_units_dropped():
    """On a CPU the mask is stored (XLA fused the draw into every reader and redid it per
    element); the output is the same as without, and a TPU trace has no conditional."""
    x = jax.random.normal(jax.random.key(1), (6, 5, 5, 4))
    drop = layers.Dropout(0.3, broadcast_dims=(1, 2))

    def traced():  # a new function each time: jit would reuse the first trace
        def apply(x):
            return drop.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(2)})
        return jax.jit(apply).lower(x).as_text(), jax.jit(apply)(x)

    cpu_text, on_cpu = traced()
    with layers.compiling_for("tpu"):
        tpu_text, on_tpu = traced()
    assert cpu_text.count("stablehlo.case") == 1 and tpu_text.count("stablehlo.case") == 0
    np.testing.assert_array_equal(on_cpu, on_tpu)
    dropped = np.asarray(on_cpu == 0).all(axis=(1, 2))  # whole channels
    assert 0 < dropped.sum() < dropped.size
    np.testing.assert_allclose(np.asarray(on_cpu)[~np.asarray(on_cpu == 0)],
                               np.asarray(x / 0.7)[~np.asarray(on_cpu == 0)], rtol=1e-6)
