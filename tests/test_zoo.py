"""The model zoo: pinned parameter counts, small-input options, train/eval behaviour and the
layers with PyTorch semantics (adaptive and ceil-mode pooling, LRN, LeNet-5's sparse C3).

Reference counts (1000 classes, 224x224x3 unless said otherwise):
- torchvision 0.28.0's own counts, measured with torch 2.13 (sum of ``p.numel()`` over
  ``model.parameters()``); tests/test_torchvision.py re-measures them where torch is installed;
- arithmetic for the models torchvision lacks (the formulas are in the models' docstrings).
Counts come from ``jax.eval_shape`` (no weights are created).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.errors import UserError
from jaxcnn.models import MODELS, create_model, model_options, native_input
from jaxcnn.models.layers import AdaptiveAvgPool, Dropout, LocalResponseNorm, MaxPool, pool_output_size
from jaxcnn.models.lenet_classic import C3_TABLE, SparseConv
from jaxcnn.models.resnet_cifar import CifarBlock

TORCHVISION_COUNTS = {
    "alexnet": 61_100_840,
    "vgg11": 132_863_336, "vgg11_bn": 132_868_840,
    "vgg13": 133_047_848, "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544, "vgg16_bn": 138_365_992,
    "vgg19": 143_667_240, "vgg19_bn": 143_678_248,
    "googlenet": 13_004_888,  # with both auxiliary heads (aux_logits=True)
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808,
}
GOOGLENET_WITHOUT_AUX = 6_624_904  # torchvision: googlenet(aux_logits=False)

# BatchNorm running means and variances (torchvision's buffers less num_batches_tracked).
TORCHVISION_RUNNING_STATS = {"vgg11_bn": 5_504, "vgg19_bn": 11_008, "googlenet": 15_072,
                             "resnet18": 9_600, "resnet50": 53_120, "resnet152": 151_424}

# CIFAR ResNets, 10 classes, 32x32x3, option A: 97,216 n - 21,926 (see resnet_cifar.py).
CIFAR_COUNTS = {"resnet20": 269_722, "resnet32": 464_154, "resnet44": 658_586,
                "resnet56": 853_018, "resnet110": 1_727_962}


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def abstract_variables(model, shape):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def params_of(name, shape=(1, 224, 224, 3), num_classes=1000, **kwargs):
    return count(abstract_variables(create_model(name, num_classes, **kwargs), shape)["params"])


@pytest.mark.parametrize("name", sorted(TORCHVISION_COUNTS))
def test_parameter_count_equals_torchvision(name):
    assert params_of(name) == TORCHVISION_COUNTS[name]


def test_googlenet_without_auxiliary_heads_equals_torchvision():
    assert params_of("googlenet", aux_logits=False) == GOOGLENET_WITHOUT_AUX


def test_googlenet_paper_5x5_branch_adds_16_weights_per_5x5_connection():
    # 5x5 instead of 3x3: 25 - 9 = 16 more weights for each (reduce channel, output channel) pair.
    from jaxcnn.models.googlenet import INCEPTION

    extra = 16 * sum(w[3] * w[4] for w in INCEPTION.values())
    assert extra == 380_928
    assert params_of("googlenet", branch3_kernel=5) == 13_385_816 == TORCHVISION_COUNTS["googlenet"] + extra
    assert params_of("googlenet", branch3_kernel=5, aux_logits=False) == 7_005_832


@pytest.mark.parametrize("name", sorted(TORCHVISION_RUNNING_STATS))
def test_batchnorm_running_statistics_are_state_not_parameters(name):
    variables = abstract_variables(create_model(name, 1000), (1, 224, 224, 3))
    assert count(variables["batch_stats"]) == TORCHVISION_RUNNING_STATS[name]


def test_alexnet_original_equals_the_papers_arithmetic():
    convs = [11 * 11 * 3 * 96 + 96,           # conv1
             5 * 5 * 48 * 256 + 256,          # conv2, 2 groups: each map sees 48 of the 96 maps
             3 * 3 * 256 * 384 + 384,         # conv3, across the towers
             3 * 3 * 192 * 384 + 384,         # conv4, 2 groups
             3 * 3 * 192 * 256 + 256]         # conv5, 2 groups
    dense = [9216 * 4096 + 4096, 4096 * 4096 + 4096, 4096 * 1000 + 1000]
    assert sum(convs) + sum(dense) == 60_965_224
    variables = abstract_variables(create_model("alexnet_original", 1000), (1, 224, 224, 3))
    assert count(variables["params"]) == 60_965_224
    assert variables["params"]["conv2"]["kernel"].shape == (5, 5, 48, 256)
    assert variables["params"]["conv4"]["kernel"].shape == (3, 3, 192, 384)


@pytest.mark.parametrize("name", sorted(CIFAR_COUNTS))
def test_cifar_resnets_equal_the_option_a_arithmetic(name):
    n = (int(name[len("resnet"):]) - 2) // 6
    assert CIFAR_COUNTS[name] == 97_216 * n - 21_926
    assert params_of(name, (1, 32, 32, 3), 10) == CIFAR_COUNTS[name]


def test_projection_shortcuts_and_the_tutorial_resnet14():
    projections = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)  # 1x1 conv + BN, stages 2 and 3
    assert params_of("resnet20", (1, 32, 32, 3), 10, shortcut="projection") == 269_722 + projections
    assert model_options("resnet14")["shortcut"] == "projection"
    assert model_options("resnet20")["shortcut"] == "A"
    assert params_of("resnet14", (1, 32, 32, 3), 10) == 175_258 == 97_216 * 2 - 21_926 + projections
    assert params_of("resnet14", (1, 32, 32, 3), 10, shortcut="A") == 172_506
    with pytest.raises(UserError, match="model.shortcut"):
        create_model("resnet20", 10, shortcut="B")


def test_lenet5_classic_has_the_papers_60000_trainable_parameters():
    model = create_model("lenet5_classic", 10)
    variables = abstract_variables(model, (1, 32, 32, 1))
    per_layer = {k: count(v) for k, v in variables["params"].items()}
    assert per_layer == {"C1": 156, "S2": 12, "C3": 1_516, "S4": 32, "C5": 48_120, "F6": 10_164}
    assert sum(per_layer.values()) == 60_000
    assert count(variables["constants"]) == 840  # fixed RBF prototypes: not trainable
    assert set(variables) == {"params", "constants"}
    # 28x28 images with a padded C1: the same parameters.
    assert params_of("lenet5_classic", (1, 28, 28, 1), 10, conv1_padding=2) == 60_000


def test_lenet5_classic_c3_follows_the_connection_table():
    layer = SparseConv()
    x = jax.random.normal(jax.random.key(0), (1, 14, 14, 6))
    variables = jax.jit(layer.init)(jax.random.key(1), x)
    # Which input maps each output map depends on: the Jacobian's sparsity.
    jac = jax.jit(jax.jacobian(lambda x: layer.apply(variables, x)[0, 5, 5]))(x)  # [16, 1, 14, 14, 6]
    depends = np.abs(np.asarray(jac)).sum(axis=(1, 2, 3)) > 0  # [16 outputs, 6 inputs]
    want = np.zeros((16, 6), bool)
    for j, inputs in enumerate(C3_TABLE):
        want[j, list(inputs)] = True
    np.testing.assert_array_equal(depends, want)
    assert want.sum() == 60 and sum(len(t) for t in C3_TABLE) * 25 + 16 == 1_516


def test_lenet5_classic_returns_negative_distances_to_fixed_prototypes():
    model = create_model("lenet5_classic", 10)
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 1))
    variables = jax.jit(model.init)(jax.random.key(1), x)
    apply = jax.jit(model.apply)
    logits = apply(variables, x)
    assert logits.shape == (4, 10) and bool(jnp.all(logits <= 0))
    # The trainer keeps only params: the layer rebuilds the same fixed prototypes.
    np.testing.assert_array_equal(apply({"params": variables["params"]}, x), logits)
    # (tests/test_zoo_experiments.py trains it through jaxcnn.train.train_step.)


IMAGENET_SMALL = ["alexnet", "alexnet_original", "vgg11", "vgg16_bn", "googlenet", "resnet18", "resnet50"]


@pytest.mark.parametrize("name", IMAGENET_SMALL)
@pytest.mark.parametrize("shape", [(2, 28, 28, 1), (2, 32, 32, 3)])
def test_imagenet_architectures_take_small_images_with_small_input(name, shape):
    model = create_model(name, 10, small_input=True)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    out = jax.eval_shape(lambda x: model.apply(model.init(jax.random.key(0), x), x), x)
    assert out.shape == (2, 10)


@pytest.mark.parametrize("name,conv1_224,conv1_small", [
    ("alexnet", 11 * 11 * 3 * 64 + 64, 3 * 3 * 3 * 64 + 64),
    ("alexnet_original", 11 * 11 * 3 * 96 + 96, 3 * 3 * 3 * 96 + 96),
    ("vgg16", 0, 0),
    ("googlenet", 7 * 7 * 3 * 64, 3 * 3 * 3 * 64),
    ("resnet50", 7 * 7 * 3 * 64, 3 * 3 * 3 * 64),
])
def test_small_input_changes_only_the_first_convolution(name, conv1_224, conv1_small):
    default, small = params_of(name), params_of(name, small_input=True)
    assert default == params_of(name, small_input=False)
    assert small - default == conv1_small - conv1_224


def test_without_small_input_too_small_images_are_a_clear_error():
    for name in ("alexnet", "vgg11"):
        with pytest.raises(UserError, match="small_input=True"):
            abstract_variables(create_model(name, 10), (1, 28, 28, 1))
    # 32x32 passes VGG's five pools (down to 1x1) and ResNet's stem without the option.
    assert abstract_variables(create_model("vgg11", 10), (1, 32, 32, 3))
    assert abstract_variables(create_model("resnet18", 10), (1, 28, 28, 1))


def test_googlenet_returns_aux_logits_only_when_training():
    model = create_model("googlenet", 10, small_input=True)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    variables = abstract_variables(model, x.shape)  # an eval-mode init
    assert {"aux1", "aux2"} <= set(variables["params"])  # the heads exist all the same
    apply = lambda train: jax.eval_shape(  # noqa: E731
        lambda v, x: model.apply(v, x, train=train, rngs={"dropout": jax.random.key(2)},
                                 mutable=["batch_stats"] if train else False), variables, x)
    logits = apply(False)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    (main, aux), _ = apply(True)
    assert main.shape == (2, 10) and [(a.shape, a.dtype) for a in aux] == [((2, 10), jnp.float32)] * 2
    plain = create_model("googlenet", 10, small_input=True, aux_logits=False)
    v = abstract_variables(plain, x.shape)
    assert "aux1" not in v["params"]
    out, _ = jax.eval_shape(lambda v, x: plain.apply(v, x, train=True, rngs={"dropout": jax.random.key(2)},
                                                     mutable=["batch_stats"]), v, x)
    assert out.shape == (2, 10)
    with pytest.raises(UserError, match="branch3_kernel"):
        create_model("googlenet", 10, branch3_kernel=4)


def test_cifar_option_a_shortcut_subsamples_and_zero_pads():
    norm = functools.partial(nn.BatchNorm, use_running_average=True)
    block = CifarBlock(8, 2, "A", functools.partial(nn.Conv, use_bias=False), norm)
    x = jax.random.normal(jax.random.key(0), (1, 6, 6, 4))
    variables = jax.jit(block.init)(jax.random.key(1), x)
    zero = jax.tree.map(jnp.zeros_like, variables)  # convs and BN biases 0: the block is its shortcut
    zero["batch_stats"] = variables["batch_stats"]
    out = jax.jit(block.apply)(zero, x)
    want = np.concatenate([np.maximum(np.asarray(x)[:, ::2, ::2], 0), np.zeros((1, 3, 3, 4))], axis=-1)
    np.testing.assert_allclose(out, want, atol=1e-6)
    assert "shortcut_conv" not in variables["params"]


def test_bfloat16_models_return_float32_logits():
    for name in ("resnet20", "lenet5_classic", "googlenet"):
        extra = {"small_input": True} if name == "googlenet" else {}
        model = create_model(name, 10, dtype=jnp.bfloat16, **extra)
        x = jax.ShapeDtypeStruct((2, 32, 32, 3 if name != "lenet5_classic" else 1), jnp.float32)
        out = jax.eval_shape(lambda x: model.apply(model.init(jax.random.key(0), x), x), x)
        assert out.dtype == jnp.float32


def _cheap(name):
    """A small configuration of model ``name`` and an input shape for it (ImageNet nets:
    ``small_input`` at 32x32, narrow fc layers), so that tracing it is fast."""
    options = model_options(name)
    kwargs = {key: value for key, value in (("small_input", True), ("fc_width", 16)) if key in options}
    (h, w, c), _ = native_input(name)
    return create_model(name, 10, **kwargs), (1, 32, 32, 3) if "small_input" in options else (1, h, w, c)


def _batch_layers(model, shape) -> dict:
    """{path: axis_name} of every BatchNorm and Dropout layer that ``model.init`` calls (traced
    abstractly): the layers whose result depends on the rest of the batch."""
    found = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, (nn.BatchNorm, Dropout)) and context.method_name == "__call__":
            found["/".join(context.module.path)] = context.module.axis_name
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        abstract_variables(model, shape)
    return found


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_batchnorm_and_dropout_layer_sees_the_device_axis(name):
    # The trainer runs model.clone(axis_name=AXIS) on each device's part of the global batch:
    # BatchNorm must average its statistics and dropout draw its masks over that axis, or 1 and
    # N devices train differently. Models without such layers need no axis_name.
    assert "axis_name" not in model_options(name)  # set by the framework, not by experiments
    model, shape = _cheap(name)
    if not hasattr(model, "axis_name"):
        assert _batch_layers(model, shape) == {}
        return
    layers = _batch_layers(model.clone(axis_name="data"), shape)
    assert layers and set(layers.values()) == {"data"}, layers


def test_the_registry_lists_every_model():
    assert set(MODELS) >= {"lenet5_classic", "alexnet", "alexnet_original", "googlenet", "resnet14",
                           *TORCHVISION_COUNTS, *CIFAR_COUNTS}
    assert native_input("resnet20") == ((32, 32, 3), 10) and native_input("vgg16") == ((224, 224, 3), 1000)


# -- layers with PyTorch semantics -----------------------------------------------------------------

def _torch_adaptive_avg_pool(x, oh, ow):
    n, h, w, c = x.shape
    out = np.zeros((n, oh, ow, c), np.float64)
    for i in range(oh):
        for j in range(ow):
            hs, he = (i * h) // oh, -((-(i + 1) * h) // oh)
            ws, we = (j * w) // ow, -((-(j + 1) * w) // ow)
            out[:, i, j] = x[:, hs:he, ws:we].mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("size,out", [(13, 6), (7, 3), (1, 7), (14, 4), (3, 6), (8, 4), (6, 6)])
def test_adaptive_avg_pool_has_pytorchs_windows(size, out):
    x = np.random.default_rng(0).normal(size=(2, size, size + 1, 3)).astype(np.float32)
    got = AdaptiveAvgPool((out, out)).apply({}, jnp.asarray(x))
    np.testing.assert_allclose(got, _torch_adaptive_avg_pool(x, out, out), rtol=1e-5, atol=1e-6)


def _naive_max_pool(x, k, s, p, ceil):
    n, h, w, c = x.shape
    oh, ow = pool_output_size(h, k, s, p, ceil), pool_output_size(w, k, s, p, ceil)
    padded = np.full((n, h + 2 * p + k, w + 2 * p + k, c), -np.inf, np.float32)
    padded[:, p:p + h, p:p + w] = x
    out = np.empty((n, oh, ow, c), np.float32)
    for i in range(oh):
        for j in range(ow):
            out[:, i, j] = padded[:, i * s:i * s + k, j * s:j * s + k].max(axis=(1, 2))
    return out


@pytest.mark.parametrize("size,k,s,p,ceil,want", [
    (112, 3, 2, 0, True, 56), (56, 3, 2, 0, True, 28), (28, 3, 2, 0, True, 14), (14, 2, 2, 0, True, 7),
    (7, 2, 2, 0, True, 4), (28, 3, 1, 1, True, 28), (55, 3, 2, 0, False, 27), (112, 3, 2, 1, False, 56),
    (8, 3, 2, 1, True, 5), (5, 3, 3, 1, True, 2), (5, 2, 2, 1, True, 3),
])
def test_max_pool_output_sizes_and_values_follow_pytorch(size, k, s, p, ceil, want):
    assert pool_output_size(size, k, s, p, ceil) == want
    x = np.random.default_rng(1).normal(size=(1, size, size, 2)).astype(np.float32)
    got = MaxPool(k, s, padding=p, ceil_mode=ceil).apply({}, jnp.asarray(x))
    assert got.shape == (1, want, want, 2)
    np.testing.assert_array_equal(got, _naive_max_pool(x, k, s, p, ceil))


def test_local_response_norm_is_the_papers_formula():
    x = np.random.default_rng(2).normal(size=(2, 3, 3, 11)).astype(np.float64)
    got = np.asarray(LocalResponseNorm().apply({}, jnp.asarray(x, jnp.float32)))
    want = np.empty_like(x)
    for c in range(11):
        window = x[..., max(0, c - 2):min(11, c + 3)]
        want[..., c] = x[..., c] / (2.0 + 1e-4 * np.sum(window ** 2, axis=-1)) ** 0.75
    np.testing.assert_allclose(got, want, rtol=1e-5)
