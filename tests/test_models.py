"""Shapes, parameter counts and train/eval behaviour of the models."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.errors import UserError
from jaxcnn.models import MODELS, check_config, create_model, from_config, model_options
from jaxcnn.models.layers import Dropout, max_pool


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def abstract_variables(model, shape):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))


def test_lenet5_has_61706_parameters_and_the_textbook_shapes():
    model = create_model("lenet5", 10)
    variables = abstract_variables(model, (1, 28, 28, 1))
    assert count(variables["params"]) == 61_706
    assert set(variables) == {"params"}
    shapes = {k: v["kernel"].shape for k, v in variables["params"].items()}
    assert shapes == {"conv1": (5, 5, 1, 6), "conv2": (5, 5, 6, 16), "fc1": (400, 120),
                      "fc2": (120, 84), "classifier": (84, 10)}
    logits = model.apply(model.init(jax.random.key(0), jnp.zeros((3, 28, 28, 1))),
                         jnp.ones((3, 28, 28, 1)), train=False)
    assert logits.shape == (3, 10) and logits.dtype == jnp.float32


def test_lenet5_on_32x32_without_padding_has_the_same_count():
    model = create_model("lenet5", 10, conv1_padding=0)
    assert count(abstract_variables(model, (1, 32, 32, 1))["params"]) == 61_706


@pytest.mark.parametrize("lowering", ["rows", "xla"])
def test_lenet5_refuses_images_too_small_for_its_layers(lowering):
    model = create_model("lenet5", 10, lowering=lowering)
    with pytest.raises(UserError, match="conv2 gets 4x4 maps and would give 0x0"):
        abstract_variables(model, (1, 8, 8, 1))
    assert count(abstract_variables(model, (1, 12, 12, 1))["params"]) == 16 * 120 + 120 + 2416 + 156 + 10164 + 850


def test_cnn_of_the_study_notes_has_119530_parameters():
    model = create_model("cnn", 10, cdims=(32, 64), hdims=(32,), ksize=3)
    variables = abstract_variables(model, (1, 28, 28, 1))
    assert count(variables["params"]) == 119_530
    assert variables["params"]["fc1"]["kernel"].shape == (7 * 7 * 64, 32)


def test_cnn_with_batchnorm_adds_scale_bias_and_running_statistics():
    model = create_model("cnn", 10, cdims=(32, 64), hdims=(32,), batch_norm=True)
    variables = abstract_variables(model, (1, 28, 28, 1))
    assert count(variables["params"]) == 119_530 + 2 * (32 + 64)
    assert count(variables["batch_stats"]) == 2 * (32 + 64)  # mean and var: not parameters


@pytest.mark.parametrize("cdims,hdims,ksize,size", [((8,), (), 5, 28), ((4, 8, 16), (20, 10), 3, 32)])
def test_cnn_output_shape_for_other_configurations(cdims, hdims, ksize, size):
    model = create_model("cnn", 7, cdims=cdims, hdims=hdims, ksize=ksize)
    x = jnp.zeros((2, size, size, 3))
    out = jax.eval_shape(lambda: model.apply(model.init(jax.random.key(0), x), x))
    assert out.shape == (2, 7)


def test_cnn_kaiming_normal_init_and_zero_biases():
    model = create_model("cnn", 10, cdims=(64,), hdims=(256,))
    params = model.init(jax.random.key(1), jnp.zeros((1, 28, 28, 1)))["params"]
    kernel = np.asarray(params["fc1"]["kernel"])  # fan-in 14*14*64
    assert np.std(kernel) == pytest.approx(np.sqrt(2.0 / kernel.shape[0]), rel=0.02)
    # Untruncated normal: values beyond 2 standard deviations exist (about 4.6% of them).
    assert np.mean(np.abs(kernel) > 2 * np.sqrt(2.0 / kernel.shape[0])) > 0.03
    for layer in params.values():
        assert not np.any(np.asarray(layer["bias"]))


def test_batchnorm_uses_batch_statistics_in_training_and_running_ones_in_evaluation():
    model = create_model("cnn", 10, cdims=(8,), hdims=(), batch_norm=True, dropout=0.0)
    x = jax.random.normal(jax.random.key(0), (16, 28, 28, 1)) * 3 + 5
    variables = model.init(jax.random.key(1), x)
    out_train, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    # Training moves the running statistics towards the batch's; evaluation leaves them alone.
    new_mean = updates["batch_stats"]["bn1"]["mean"]
    assert not np.allclose(new_mean, variables["batch_stats"]["bn1"]["mean"])
    out_eval = model.apply(variables, x, train=False)
    assert not np.allclose(out_train, out_eval)
    # Batch statistics couple the examples of a batch in training, never in evaluation.
    single_eval = model.apply(variables, x[:1], train=False)
    np.testing.assert_allclose(single_eval, out_eval[:1], rtol=1e-5, atol=1e-5)
    single_train, _ = model.apply(variables, x[:1], train=True, mutable=["batch_stats"])
    assert not np.allclose(single_train, out_train[:1], atol=1e-4)


def test_dropout_only_in_training_and_whole_channels_at_a_time():
    model = create_model("cnn", 10, cdims=(16,), hdims=(), dropout=0.5)
    x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
    variables = model.init(jax.random.key(1), x)
    a = model.apply(variables, x, train=False)
    b = model.apply(variables, x, train=False)
    np.testing.assert_array_equal(a, b)
    c = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    d = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(3)})
    assert not np.allclose(c, d)
    # Spatial dropout: capture the dropped feature map and check each channel is all-or-nothing.
    _, state = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)},
                           capture_intermediates=lambda m, name: isinstance(m, Dropout))
    dropped = np.asarray(jax.tree.leaves(state["intermediates"])[0])  # [4, 14, 14, 16]
    zero_channels = np.all(dropped == 0, axis=(1, 2))
    nonzero_somewhere = np.any(dropped != 0, axis=(1, 2))
    assert np.all(zero_channels | nonzero_somewhere)
    assert 0.2 < zero_channels.mean() < 0.8


def test_max_pool_equals_flax_max_pool():
    x = jax.random.normal(jax.random.key(0), (2, 11, 10, 3))
    np.testing.assert_array_equal(max_pool(x, 2), nn.max_pool(x, (2, 2), (2, 2)))


def _first_max_gradient(x, size, g):
    """numpy: each window's gradient goes to its first maximum (row-major), as in PyTorch."""
    dx = np.zeros_like(x)
    n, h, w, c = x.shape
    for b, i, j, ch in np.ndindex(n, h // size, w // size, c):
        window = x[b, i * size:(i + 1) * size, j * size:(j + 1) * size, ch]
        r, q = divmod(int(np.argmax(window)), size)  # argmax: the first occurrence
        dx[b, i * size + r, j * size + q, ch] = g[b, i, j, ch]
    return dx


@pytest.mark.parametrize("size,shape", [(2, (2, 11, 10, 3)), (3, (2, 9, 8, 2)), (2, (1, 28, 28, 6))])
def test_max_pool_gradient_goes_to_the_first_maximum(size, shape):
    rng = np.random.default_rng(size)
    ties = rng.integers(0, 3, shape).astype(np.float32)  # most windows have tied maxima
    unique = rng.normal(size=shape).astype(np.float32)
    g = rng.normal(size=(shape[0], shape[1] // size, shape[2] // size, shape[3])).astype(np.float32)
    for x in (ties, unique):
        y, vjp = jax.vjp(lambda x: max_pool(x, size), jnp.asarray(x))
        flax_y, flax_vjp = jax.vjp(lambda x: nn.max_pool(x, (size, size), (size, size)), jnp.asarray(x))
        dx = vjp(jnp.asarray(g))[0]
        np.testing.assert_array_equal(y, flax_y)
        np.testing.assert_array_equal(dx, _first_max_gradient(x, size, g))
        np.testing.assert_array_equal(dx, flax_vjp(jnp.asarray(g))[0])


def test_max_pool_gradient_equals_pytorch_with_ties():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).integers(0, 3, (2, 12, 10, 4)).astype(np.float32)
    g = np.random.default_rng(1).normal(size=(2, 6, 5, 4)).astype(np.float32)
    _, vjp = jax.vjp(lambda x: max_pool(x, 2), jnp.asarray(x))
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    torch.nn.functional.max_pool2d(xt, 2).backward(torch.tensor(g.transpose(0, 3, 1, 2)))
    np.testing.assert_array_equal(vjp(jnp.asarray(g))[0], xt.grad.numpy().transpose(0, 2, 3, 1))


def test_unknown_model_and_unknown_argument_are_user_errors():
    with pytest.raises(UserError, match="Valid models: .*lenet5") as e:
        create_model("lenet", 10)
    assert "Did you mean 'lenet5'" in str(e.value)
    with pytest.raises(UserError, match="model.cdim.*Did you mean 'cdims'"):
        create_model("cnn", 10, cdim=(32,))
    assert set(MODELS) >= {"lenet5", "cnn"}


def test_from_config_builds_the_experiments_model_and_leaves_the_config_alone():
    model_config = {"name": "cnn", "cdims": [8], "dropout": 0.1}
    model = from_config(model_config, 7)
    assert (type(model).__name__, model.num_classes, list(model.cdims), model.dropout) == ("CNN", 7, [8], 0.1)
    assert model_config == {"name": "cnn", "cdims": [8], "dropout": 0.1}
    with pytest.raises(UserError, match="model.name must be a string"):
        from_config({"cdims": [8]}, 10)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_check_config_accepts_every_model_with_its_defaults(name):
    check_config({"name": name, **model_options(name)})


BAD_MODEL_SETTINGS = [
    ({"name": "lenet"}, "Unknown model 'lenet'.*Did you mean 'lenet5'"),
    ({"name": "cnn", "cdim": [8]}, "Unknown setting model.cdim .*Did you mean 'cdims'"),
    ({"name": "cnn", "dropout": 1.0}, r"^model.dropout must be a number in \[0, 1\), got 1.0.$"),
    ({"name": "cnn", "cdims": [32, 0]}, r"model.cdims must be a list of positive integers.*got \[32, 0\]"),
    ({"name": "cnn", "cdims": 32}, r"model.cdims must be a list of positive integers.*got 32"),
    ({"name": "cnn", "hdims": [1.5]}, r"model.hdims must be a list of positive integers"),
    ({"name": "cnn", "ksize": 0}, r"^model.ksize must be a positive integer, got 0.$"),
    ({"name": "lenet5", "conv1_padding": -1}, r"model.conv1_padding must be a non-negative integer, got -1"),
    ({"name": "lenet5", "lowering": "fast"}, r"model.lowering must be one of 'auto', 'rows', 'xla', got 'fast'"),
    ({"name": "lenet5_classic", "conv1_padding": 1.5}, r"model.conv1_padding must be a non-negative integer"),
    ({"name": "vgg11", "fc_width": 0}, r"model.fc_width must be a positive integer, got 0"),
    ({"name": "alexnet_original", "fc_width": True}, r"model.fc_width must be a positive integer, got True"),
    ({"name": "googlenet", "dropout_aux": 1}, r"model.dropout_aux must be a number in \[0, 1\), got 1"),
    ({"name": "googlenet", "branch3_kernel": 4}, r"model.branch3_kernel must be 3 .* or 5"),
    ({"name": "resnet18", "num_filters": 0}, r"model.num_filters must be a positive integer, got 0"),
    ({"name": "resnet20", "shortcut": "B"}, r"model.shortcut must be one of 'A', 'projection', got 'B'"),
    ({"name": "resnet20", "widths": []}, r"model.widths must be a list of positive integers, not empty"),
    ({"name": "resnet20", "lowering": "rows"}, r"model.lowering must be one of 'auto', 'stored', 'xla', got 'rows'"),
    ({"name": "resnet50", "lowering": None}, r"model.lowering must be one of 'auto', 'stored', 'xla', got None"),
    ({"name": "cnn", "lowering": "rows"}, r"model.lowering must be one of 'auto', 'stored', 'xla', got 'rows'"),
]


@pytest.mark.parametrize("model_config,message", BAD_MODEL_SETTINGS)
def test_check_config_refuses_bad_settings_without_data(model_config, message):
    with pytest.raises(UserError, match=message):
        check_config(model_config)


@pytest.mark.parametrize("name", [name for name in sorted(MODELS) if "dropout" in model_options(name)])
def test_every_model_with_dropout_checks_the_rate(name):
    for bad in (1.0, 1, -0.1, float("nan"), "0.5", True, None):
        with pytest.raises(UserError, match=r"^model.dropout must be a number in \[0, 1\), got "):
            check_config({"name": name, "dropout": bad})
    check_config({"name": name, "dropout": 0})
