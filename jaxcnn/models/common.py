"""Building blocks shared by the model zoo: pooling with PyTorch's exact semantics, local
response normalisation, and the weight initialisations of the reference implementations.

Pooling layers are Modules (not functions) so that they have a name and show up as rows of
``jaxcnn.summary``; they own no variables.

Output sizes (per spatial dimension, input H, kernel K, stride S, padding P on both sides):

    floor mode (the default everywhere):  floor((H + 2P - K) / S) + 1
    ceil mode (GoogLeNet's max-pools):    ceil((H + 2P - K) / S) + 1, minus one if the last
                                          window would start in the right padding (PyTorch's rule)
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.errors import UserError
from jaxcnn.models.layers import max_pool

ModuleDef = Any

# He et al. 2015 initialisation as torchvision's VGG and ResNet use it:
# kaiming_normal_(mode='fan_out', nonlinearity='relu'), an untruncated normal.
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# PyTorch's default for Conv2d and Linear weights: kaiming_uniform_(a=sqrt(5)), i.e.
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = in_channels / groups * kh * kw.
torch_default_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias(fan_in: int):
    """PyTorch's default bias initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def pool_output_size(size: int, window: int, stride: int, padding: int = 0,
                     ceil_mode: bool = False) -> int:
    """Output length of a pooling window over ``size`` positions, as PyTorch computes it."""
    span = size + 2 * padding - window
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1  # the last window may not start inside the right padding
    return out


def pool_padding(size: int, window: int, stride: int, padding: int = 0,
                 ceil_mode: bool = False) -> tuple[int, int]:
    """(low, high) padding that makes a VALID pooling produce ``pool_output_size`` outputs."""
    out = pool_output_size(size, window, stride, padding, ceil_mode)
    high = max((out - 1) * stride + window - size - padding, padding)
    return padding, high


def check_spatial(x, out_h: int, out_w: int, layer: str) -> None:
    """A UserError when a layer would turn ``x``'s maps into empty ones (the input is too small)."""
    if out_h < 1 or out_w < 1 or x.shape[1] < 1 or x.shape[2] < 1:
        raise UserError(
            f"The images are too small for this model: {layer} gets {x.shape[1]}x{x.shape[2]} maps "
            f"and would give {max(out_h, 0)}x{max(out_w, 0)}. Use larger images, or the model's "
            "small-input option (--set model.small_input=True) where it has one.")


class GroupedConv(nn.Module):
    """A convolution with ``groups`` groups, laid out as ``nn.Conv(feature_group_count=groups)``
    (kernel [kh, kw, in/groups, out], output channel o in group o // (out/groups)) but computed
    as one dense convolution per group: XLA:CPU runs grouped convolutions 5-10x slower.
    """

    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int] = (1, 1)
    padding: Any = "VALID"
    groups: int = 1
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c_in, g = x.shape[-1], self.groups
        kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, c_in // g, self.features))
        bias = self.param("bias", self.bias_init, (self.features,))
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        i, o = c_in // g, self.features // g
        outs = [jax.lax.conv_general_dilated(x[..., j * i:(j + 1) * i], kernel[..., j * o:(j + 1) * o],
                                             tuple(self.strides), self.padding,
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
                for j in range(g)]
        return jnp.concatenate(outs, axis=-1) + bias.astype(self.dtype)


class MaxPool(nn.Module):
    """Max-pooling over ``window`` x ``window`` windows (NHWC); padding counts as -inf.

    With stride == window and no padding it runs as ``layers.max_pool`` (faster on XLA:CPU, same
    values and gradients).
    """

    window: int
    stride: int | None = None  # None: the window size
    padding: int = 0
    ceil_mode: bool = False

    @nn.compact
    def __call__(self, x):
        k, s = self.window, self.stride or self.window
        check_spatial(x, *(pool_output_size(d, k, s, self.padding, self.ceil_mode) for d in x.shape[1:3]),
                      f"max-pool {self.name}")
        if s == k and self.padding == 0 and not self.ceil_mode:
            return max_pool(x, k)
        pads = [pool_padding(d, k, s, self.padding, self.ceil_mode) for d in x.shape[1:3]]
        return nn.max_pool(x, (k, k), (s, s), padding=pads)


def _adaptive_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] averaging weights of PyTorch's adaptive pooling along one dimension:
    output i averages inputs floor(i * n_in / n_out) .. ceil((i + 1) * n_in / n_out) - 1."""
    m = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -((-(i + 1) * n_in) // n_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


class AdaptiveAvgPool(nn.Module):
    """PyTorch's ``AdaptiveAvgPool2d``: average-pools any H x W to ``output_size`` (NHWC).

    Windows may overlap or repeat (a 1x1 map pooled to 7x7 is copied 49 times), exactly as in
    PyTorch, so torchvision weights give the same outputs at every input size. When the output
    size divides the input size it is a plain reshape and mean.
    """

    output_size: int | Sequence[int]

    @nn.compact
    def __call__(self, x):
        oh, ow = ((self.output_size,) * 2 if isinstance(self.output_size, int)
                  else tuple(self.output_size))
        n, h, w, c = x.shape
        check_spatial(x, h, w, f"adaptive average pool {self.name}")
        if h % oh == 0 and w % ow == 0:
            return jnp.mean(x.reshape(n, oh, h // oh, ow, w // ow, c), axis=(2, 4))
        mh = jnp.asarray(_adaptive_matrix(h, oh), x.dtype)
        mw = jnp.asarray(_adaptive_matrix(w, ow), x.dtype)
        return jnp.einsum("ih,jw,nhwc->nijc", mh, mw, x, precision=jax.lax.Precision.HIGHEST)


class LocalResponseNorm(nn.Module):
    """Local response normalisation across channels (Krizhevsky et al. 2012, section 3.3):

        b_c = a_c / (k + alpha * sum_{c' = c - size//2 .. c + size//2} a_{c'}^2) ** beta

    with the paper's k=2, size=5, alpha=1e-4, beta=0.75. Note that PyTorch's
    ``nn.LocalResponseNorm(size, alpha, beta, k)`` divides alpha by size (it averages the
    squares): the paper's layer is ``nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2)``.
    """

    size: int = 5
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 2.0

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        lo = self.size // 2
        squares = jnp.pad(jnp.square(x), [(0, 0)] * (x.ndim - 1) + [(lo, self.size - 1 - lo)])
        window_sum = sum(squares[..., i:i + channels] for i in range(self.size))
        return x / (self.k + self.alpha * window_sum) ** self.beta


def flatten(x):
    """[N, ...] -> [N, prod(...)] in NHWC order (H, then W, then C)."""
    return x.reshape((x.shape[0], -1))
