"""nn.Conv is a cross-correlation; its output size is floor((H + 2P - K) / S) + 1."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest


def numpy_cross_correlation(x, w, b, stride, pad):
    """x [N, H, W, C], w [K, K, C, O], b [O] -> [N, OH, OW, O], written as the textbook sum."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    n, h, wd, _ = x.shape
    k = w.shape[0]
    oh, ow = (h - k) // stride + 1, (wd - k) // stride + 1
    out = np.zeros((n, oh, ow, w.shape[3]))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
            out[:, i, j, :] = np.einsum("nhwc,hwco->no", patch, w) + b
    return out


def output_size(h, k, p, s):
    return (h + 2 * p - k) // s + 1


@pytest.mark.parametrize("h,k,s,p", [(7, 3, 1, 0), (7, 3, 1, 1), (8, 3, 2, 1), (28, 5, 1, 2),
                                     (9, 4, 3, 2), (32, 5, 1, 0)])
def test_conv_is_cross_correlation_with_stride_and_padding(h, k, s, p):
    rng = np.random.default_rng(h * 100 + k * 10 + s + p)
    x = rng.normal(size=(2, h, h, 3)).astype(np.float32)
    conv = nn.Conv(4, (k, k), strides=(s, s), padding=((p, p), (p, p)))
    variables = conv.init(jax.random.key(0), jnp.asarray(x))
    w = np.asarray(variables["params"]["kernel"])
    b = rng.normal(size=4).astype(np.float32)
    variables = {"params": {"kernel": w, "bias": b}}
    got = np.asarray(conv.apply(variables, x))
    want = numpy_cross_correlation(x, w, b, s, p)
    assert got.shape == (2, output_size(h, k, p, s), output_size(h, k, p, s), 4)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_conv_does_not_flip_the_kernel():
    # A kernel with a single 1 at its top-left corner picks the pixel up-left of the centre:
    # true convolution would pick the one down-right.
    x = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    w = np.zeros((3, 3, 1, 1), np.float32)
    w[0, 0, 0, 0] = 1
    conv = nn.Conv(1, (3, 3), padding="VALID")
    out = np.asarray(conv.apply({"params": {"kernel": w, "bias": np.zeros(1, np.float32)}}, x))
    np.testing.assert_array_equal(out[0, :, :, 0], x[0, :3, :3, 0])


def test_output_size_formula_examples_of_the_study_notes():
    assert output_size(28, 5, 2, 1) == 28  # LeNet-5 C1 on MNIST
    assert output_size(32, 5, 0, 1) == 28  # LeNet-5 C1 on the paper's 32x32
    assert output_size(227, 11, 0, 4) == 55  # AlexNet conv1
    assert output_size(224, 7, 3, 2) == 112  # ResNet stem
