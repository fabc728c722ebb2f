"""What the model families share: initialisers, the BatchNorm settings, checks of the models'
arguments, and layers with PyTorch's exact semantics (pooling, local response normalisation,
grouped convolutions, dropout that does not depend on the device count).

Pooling layers are Modules (not functions) so that they have a name and show up as rows of
``jaxcnn.summary``; they own no variables.

Output sizes (per spatial dimension, input H, kernel K, stride S, padding P on both sides):

    floor mode (the default everywhere):  floor((H + 2P - K) / S) + 1
    ceil mode (GoogLeNet's max-pools):    ceil((H + 2P - K) / S) + 1, minus one if the last
                                          window would start in the right padding (PyTorch's rule)
"""

import contextlib
import contextvars
import dataclasses
import functools
import math
import numbers
import os
import platform
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.errors import UserError

ModuleDef = Any

# -- initialisers ----------------------------------------------------------------------------------

# He et al. 2015 ("Delving deep into rectifiers"): N(0, 2 / fan), untruncated, as PyTorch's
# kaiming_normal_(nonlinearity='relu'). fan_in: the CNN and the CIFAR ResNets (the paper's choice);
# fan_out: torchvision's VGG and ResNet (mode='fan_out').
he_normal_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
he_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# PyTorch's default for Conv2d and Linear weights: kaiming_uniform_(a=sqrt(5)), i.e.
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = in_channels / groups * kh * kw.
torch_default_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias(fan_in: int):
    """PyTorch's default bias initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# -- BatchNorm -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ProcessAxis:
    """A device axis whose members are processes (``jaxcnn.replicas``), for a model's
    ``axis_name``: this process's ``index`` of ``size``, and ``mean(x)``: ``x`` (float32)
    averaged over the processes, differentiable (its gradient is the mean of the cotangents),
    called in the same order in every process."""
    index: int
    size: int
    mean: Callable


def axis_index(axis_name) -> jax.Array | int:
    """This device's index along ``axis_name`` (a named axis or a ``ProcessAxis``)."""
    return axis_name.index if isinstance(axis_name, ProcessAxis) else jax.lax.axis_index(axis_name)


def axis_size(axis_name) -> int:
    """The number of devices along ``axis_name`` (a named axis or a ``ProcessAxis``)."""
    return axis_name.size if isinstance(axis_name, ProcessAxis) else jax.lax.axis_size(axis_name)


def batch_norm(norm: ModuleDef, train: bool, axis_name, dtype: Any = jnp.float32,
               epsilon: float = 1e-5):
    """``norm`` (``nn.BatchNorm``) with every model's settings, as PyTorch's BatchNorm2d: batch
    statistics when training and running ones otherwise, running averages with momentum 0.9
    (PyTorch's 0.1), ``epsilon`` (1e-5; torchvision's GoogLeNet 1e-3), and batch statistics
    averaged over the device axis ``axis_name`` (the global batch); over a ``ProcessAxis``,
    ``ProcessBatchNorm``."""
    if isinstance(axis_name, ProcessAxis):
        if norm is not nn.BatchNorm:
            raise UserError(f"Process replicas average the statistics of nn.BatchNorm only, not of "
                            f"{norm!r}: set JAXCNN_CPU_REPLICAS=1.")
        norm = ProcessBatchNorm
    return functools.partial(norm, use_running_average=not train, momentum=0.9, epsilon=epsilon,
                             axis_name=axis_name, dtype=dtype)


class ProcessBatchNorm(nn.BatchNorm):
    """``nn.BatchNorm`` (features last, fast variance, float32 statistics; the same variables)
    whose batch statistics are averaged over a ``ProcessAxis`` (``axis_name``): the mean and
    the mean square of this process's rows, averaged over the processes in one call."""

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        if mask is not None or self.axis not in (-1, x.ndim - 1):
            raise NotImplementedError("ProcessBatchNorm: features last, no mask")
        use_running_average = nn.merge_param("use_running_average", self.use_running_average,
                                             use_running_average)
        features = (x.shape[-1],)
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), features)
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), features)
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            stats_dtype = jnp.promote_types(self.dtype or x.dtype, jnp.float32)
            xs = x.astype(stats_dtype)
            axes = tuple(range(x.ndim - 1))
            mean, mean_square = xs.mean(axes), jax.lax.square(xs).mean(axes)
            initializing = self.is_initializing()
            if not initializing:  # one exchange for both
                both = self.axis_name.mean(jnp.concatenate([mean, mean_square]))
                mean, mean_square = both[:features[0]], both[features[0]:]
            var = jnp.maximum(0.0, mean_square - jax.lax.square(mean))
            if not initializing:
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        mul = jax.lax.rsqrt(var + self.epsilon)
        args = [x]
        if self.use_scale:
            scale = self.param("scale", self.scale_init, features, self.param_dtype)
            mul, args = mul * scale, args + [scale]
        y = (x - mean) * mul
        if self.use_bias:
            bias = self.param("bias", self.bias_init, features, self.param_dtype)
            y, args = y + bias, args + [bias]
        return jnp.asarray(y, jax.dtypes.canonicalize_dtype(
            self.dtype or jnp.result_type(*args)))


# -- checks of the models' arguments (called in their __post_init__) -------------------------------

def check_rate(value, setting: str) -> None:
    """A UserError unless ``value`` (of ``model.<setting>``, a dropout rate) is in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise UserError(f"model.{setting} must be a number in [0, 1), got {value!r}.")


def _is_int(value, minimum: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Integral) and value >= minimum


def check_int(value, setting: str, allow_zero: bool = False) -> None:
    """A UserError unless ``value`` (of ``model.<setting>``) is a positive (or with ``allow_zero``
    a non-negative) integer."""
    if not _is_int(value, 0 if allow_zero else 1):
        what = "a non-negative integer" if allow_zero else "a positive integer"
        raise UserError(f"model.{setting} must be {what}, got {value!r}.")


def check_widths(value, setting: str, allow_empty: bool = True) -> None:
    """A UserError unless ``value`` (of ``model.<setting>``) is a list of positive integers."""
    if (isinstance(value, (str, bytes)) or not isinstance(value, Sequence)
            or not all(_is_int(v, 1) for v in value) or not (value or allow_empty)):
        what = "a list of positive integers" + ("" if allow_empty else ", not empty")
        raise UserError(f"model.{setting} must be {what}, e.g. [32, 64]; got {value!r}.")


def check_lowering(value, choices: Sequence[str]) -> None:
    """A UserError unless ``value`` (of ``model.lowering``) is one of ``choices``."""
    if value not in choices:
        raise UserError(f"model.lowering must be one of {', '.join(map(repr, choices))}, got {value!r}.")


# -- how a model is computed on a CPU --------------------------------------------------------------

_TARGET_PLATFORM = contextvars.ContextVar("jaxcnn_target_platform", default=None)


def target_platform() -> str:
    """The platform the model is traced for: ``jax.default_backend()`` ("cpu", "gpu", "tpu"),
    unless a ``compiling_for`` block says otherwise."""
    return _TARGET_PLATFORM.get() or jax.default_backend()


@contextlib.contextmanager
def compiling_for(platform: str):
    """Trace models for ``platform`` inside this block, whatever this host's backend is
    (``jaxcnn.plan`` compiles TPU programs on a CPU host)."""
    token = _TARGET_PLATFORM.set(platform)
    try:
        yield
    finally:
        _TARGET_PLATFORM.reset(token)


def resolve_lowering(lowering: str, on_cpu: str) -> str:
    """``lowering`` with ``"auto"`` resolved by the platform the model is traced for: ``on_cpu``
    on a CPU, ``"xla"`` (the plain layers, XLA deciding the rest) elsewhere."""
    if lowering != "auto":
        return lowering
    return on_cpu if target_platform() == "cpu" else "xla"


# model.lowering of the models that keep values with ``stored`` on a CPU (the ResNets, the CNN).
STORED_LOWERINGS = ("auto", "stored", "xla")


def stored(x: jax.Array) -> jax.Array:
    """``x`` unchanged, computed once and kept in memory instead of recomputed by its readers.

    XLA fuses a cheap elementwise result into every operation that reads it and recomputes it
    there. Down a ResNet's blocks that compounds: a block's output, relu(bn(conv) + the previous
    block's output), is recomputed from the first block of the stage on inside each later reader
    (on XLA:CPU, ResNet-20's training step spent 40% of its time in such transposes). Even one
    layer deep it costs: the transpose that feeds a convolution's weight gradient recomputed the
    BatchNorm and ReLU (and pooling and dropout) that made the convolution's input.
    ``jax.lax.optimization_barrier`` does not stop it (XLA:CPU drops barriers before it fuses); a
    conditional does, as XLA never fuses across one. Both branches return ``x``, the second as
    ``x + (-0.0)`` (the same value for every float, signed zeros and NaN included) so that XLA
    cannot see that they are equal and remove the conditional. Gradients pass through unchanged.
    For XLA:CPU: on a GPU a conditional costs a round trip to the host.
    """
    first = x.reshape(-1)[0]
    return jax.lax.cond(first == first, lambda v: v, lambda v: v + (-0.0), x)


NHWC = ("NHWC", "HWIO", "NHWC")
WEIGHT_GRADIENT_CHUNK = 16  # examples; $JAXCNN_WEIGHT_GRADIENT_CHUNK overrides it, 0 turns it off


def weight_gradient_chunk() -> int:
    """Examples per chunk of a convolution's weight gradient on a CPU (0: no chunks)."""
    text = os.environ.get("JAXCNN_WEIGHT_GRADIENT_CHUNK", str(WEIGHT_GRADIENT_CHUNK)).strip()
    if not text.isdigit():
        raise UserError(f"JAXCNN_WEIGHT_GRADIENT_CHUNK must be a whole number of examples (0 turns "
                        f"the chunks off), got {text!r}: unset it for the default, "
                        f"{WEIGHT_GRADIENT_CHUNK}.")
    return int(text)


# XLA:CPU hands a convolution to YNNPACK only where input x output channels exceed this; narrower
# ones run on XLA's own kernel.
YNNPACK_MIN_CHANNEL_PRODUCT = 257
# The most extra output channels a widened convolution may compute, as a share of its own.
WIDEN_MAX_EXTRA = 1 / 8

_ONE_CORE_PER_DEVICE = contextvars.ContextVar("jaxcnn_one_core_per_device", default=False)


@contextlib.contextmanager
def one_core_per_device(value: bool = True):
    """Trace models inside this block for CPU devices with at most one core each (the launcher's
    one device per core, ``jaxcnn.cpu_devices``): then narrow convolutions are widened (see
    ``conv_general_dilated``). ``Trainer`` traces its steps in one where that holds."""
    token = _ONE_CORE_PER_DEVICE.set(bool(value))
    try:
        yield
    finally:
        _ONE_CORE_PER_DEVICE.reset(token)


def widen_narrow_convolutions() -> bool:
    """Whether narrow convolutions may be widened ($JAXCNN_WIDEN_CONVOLUTIONS, default 1; 0: no)."""
    text = os.environ.get("JAXCNN_WIDEN_CONVOLUTIONS", "1").strip()
    if text not in ("0", "1"):
        raise UserError(f"JAXCNN_WIDEN_CONVOLUTIONS must be 1 (widen the narrow convolutions on a "
                        f"CPU, the default) or 0 (leave them to XLA), got {text!r}.")
    return text == "1"


def _widened_width(inputs: int, outputs: int) -> int | None:
    """The output channels to compute for an ``inputs`` -> ``outputs`` convolution so that
    XLA:CPU gives it to YNNPACK, or None where it already does or where that costs more than
    ``WIDEN_MAX_EXTRA`` extra outputs."""
    if inputs * outputs >= YNNPACK_MIN_CHANNEL_PRODUCT:
        return None
    width = -(-YNNPACK_MIN_CHANNEL_PRODUCT // inputs)
    return width if width <= outputs * (1 + WIDEN_MAX_EXTRA) else None


def _widening(lhs, rhs, spec, window_strides, padding, lhs_dilation, rhs_dilation,
              feature_group_count, batch_group_count, precision, preferred_element_type):
    """For a convolution to widen on this CPU: (forward width or None, input-gradient width or
    None, padding as (low, high) pairs); None where it is left to XLA."""
    if not (_ONE_CORE_PER_DEVICE.get() and platform.machine().lower() in ("x86_64", "amd64")
            and widen_narrow_convolutions()):
        return None
    simple = (spec == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
              and lhs.ndim == 4 and lhs.dtype == rhs.dtype == jnp.float32
              and feature_group_count == batch_group_count == 1
              and precision is None and preferred_element_type is None
              and all(s == 1 for s in window_strides)
              and all(d == 1 for d in (lhs_dilation or ()) + (rhs_dilation or ()))
              and max(rhs.shape[:2]) > 1)  # 1x1 convolutions are matrix products to XLA
    if not simple:
        return None
    kernel = rhs.shape[:2]
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(lhs.shape[1:3], kernel, window_strides, padding)
    padding = tuple(tuple(p) for p in padding)
    if not all(0 <= p <= k - 1 for (low, high), k in zip(padding, kernel) for p in (low, high)):
        return None
    inputs, outputs = rhs.shape[2:]
    forward, backward = _widened_width(inputs, outputs), _widened_width(outputs, inputs)
    return None if forward is None and backward is None else (forward, backward, padding)


def _widened_conv(x, kernel, padding, width):
    """A stride-1 NHWC/HWIO convolution computed with ``width`` output channels (zero kernels
    beyond the real ones), of which the real ones are returned."""
    outputs = kernel.shape[3]
    kernel = jnp.pad(kernel, ((0, 0), (0, 0), (0, 0), (0, width - outputs)))
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=NHWC)[..., :outputs]


def _input_gradient(dy, kernel, padding, width):
    """The input gradient of a stride-1 NHWC/HWIO convolution as a forward convolution of ``dy``
    (the flipped kernel, its inputs and outputs swapped), widened to ``width`` outputs."""
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    pads = tuple((k - 1 - low, k - 1 - high) for (low, high), k in zip(padding, kernel.shape[:2]))
    return _widened_conv(dy, flipped, pads, width)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
    """``jax.lax.conv_general_dilated`` with two CPU forms (the same values up to the order of the
    sums):

    - the weight gradient summed over chunks of ``weight_gradient_chunk()`` examples: XLA:CPU's
      weight-gradient kernel slows down per image as the batch grows (the CNN's second
      convolution at 512 images: 265 ms, 14 GFLOP/s, against 12.5 ms for 128; on one Intel
      core, 64 images: 11.9 ms whole, 7.1 ms in chunks of 32, 4.8 ms in chunks of 16), the
      chunks keep it at its small-batch speed;
    - narrow convolutions widened where each device has one core (inside
      ``one_core_per_device``, x86-64): XLA:CPU gives a convolution to YNNPACK only where input
      x output channels exceed 256, and runs the narrower ones on its own kernel, slower on one
      core (ResNet-20's 16 -> 16 at 32x32, 64 images: 6.0 ms forward against 4.7 ms as 16 -> 17).
      So the forward pass and the input gradient compute one or a few zero output channels more
      (at most ``WIDEN_MAX_EXTRA``) and drop them; stride 1, float32, NHWC/HWIO only.

    Otherwise, and on a GPU or TPU, XLA's own. For ``nn.Conv(conv_general_dilated=...)``: see
    ``Conv``.
    """
    conv = functools.partial(jax.lax.conv_general_dilated, window_strides=window_strides,
                             padding=padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                             dimension_numbers=dimension_numbers,
                             feature_group_count=feature_group_count,
                             batch_group_count=batch_group_count, precision=precision,
                             preferred_element_type=preferred_element_type)
    spec = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    in_axis, out_axis = spec.lhs_spec[0], spec.out_spec[0]  # the batch axes
    n = lhs.shape[in_axis]
    on_cpu = target_platform() == "cpu"
    size = weight_gradient_chunk() if on_cpu else 0
    chunks = 0 < size < n and batch_group_count == 1
    widening = _widening(lhs, rhs, spec, window_strides, padding, lhs_dilation, rhs_dilation,
                         feature_group_count, batch_group_count, precision,
                         preferred_element_type) if on_cpu else None
    if not chunks and not widening:
        return conv(lhs, rhs)
    forward_width, backward_width, pads = widening or (None, None, None)

    def forward_conv(lhs, rhs):
        return _widened_conv(lhs, rhs, pads, forward_width) if forward_width else conv(lhs, rhs)

    @jax.custom_vjp
    def cpu_conv(lhs, rhs):
        return forward_conv(lhs, rhs)

    def forward(lhs, rhs):
        return forward_conv(lhs, rhs), (lhs, rhs)

    def backward(saved, dy):
        lhs, rhs = saved
        if backward_width:
            d_lhs = _input_gradient(dy, rhs, pads, backward_width)
        else:
            d_lhs = jax.vjp(lambda x: conv(x, rhs), lhs)[1](dy)[0]
        step = size if chunks else n
        d_rhs = 0
        for start in range(0, n, step):
            stop = min(start + step, n)
            x, dy_piece = (jax.lax.slice_in_dim(a, start, stop, axis=axis)
                           for a, axis in ((lhs, in_axis), (dy, out_axis)))
            d_rhs = d_rhs + jax.vjp(functools.partial(conv, x), rhs)[1](dy_piece)[0]
        return d_lhs, d_rhs

    cpu_conv.defvjp(forward, backward)
    return cpu_conv(lhs, rhs)


# ``nn.Conv`` computing through ``conv_general_dilated`` above: the same parameters and function.
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)


# -- pooling ---------------------------------------------------------------------------------------

def max_pool(x: jax.Array, size: int) -> jax.Array:
    """Non-overlapping ``size`` x ``size`` max-pooling of NHWC ``x`` (stride = size, no padding).

    Equals ``nn.max_pool(x, (size, size), (size, size))`` in value and gradient (rows and columns
    that do not fill a whole window are dropped, as with VALID padding): each window's gradient
    goes to its first maximum in row-major order, as also in PyTorch's ``max_pool2d``. Written
    as a reshape with a one-pass max that records where the maximum is, which XLA:CPU runs much
    faster than ``reduce_window`` and its backward pass (and faster than differentiating a
    plain ``jnp.max``, whose rule shares the gradient among tied maxima). Reverse mode only: a
    ``custom_vjp``, so ``jax.jvp`` through it is not defined.
    """
    n, h, w, c = x.shape
    ho, wo = h // size, w // size
    x = x[:, : ho * size, : wo * size, :]
    return _window_max(x.reshape(n, ho, size, wo, size, c), size, (2, 4))


def max_pool_rows(x: jax.Array, size: int) -> jax.Array:
    """``max_pool`` for a row-major batch ``x`` [H, N, W, C] (``jaxcnn.models.rows``): the same
    values and gradients, laid out [H // size, N, W // size, C]."""
    h, n, w, c = x.shape
    ho, wo = h // size, w // size
    x = x[: ho * size, :, : wo * size, :]
    return _window_max(x.reshape(ho, size, n, wo, size, c), size, (1, 4))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _window_max(windows: jax.Array, size: int, axes: tuple[int, int]) -> jax.Array:
    """The max of each ``size`` x ``size`` window of ``windows``, whose window axes are ``axes``
    (a < b): [N, HO, S, WO, S, C] with axes (2, 4) -> [N, HO, WO, C]."""
    return jnp.max(windows, axis=axes)


def _window_position(windows, size, axes, k):
    """Window position k (row-major in S x S) of every window: ``windows`` without ``axes``."""
    index = [slice(None)] * windows.ndim
    index[axes[0]], index[axes[1]] = k // size, k % size
    return windows[tuple(index)]


def _window_max_fwd(windows, size, axes):
    # One pass over the window: the running max and the window position where it was first
    # reached; the backward pass needs only that position.
    index_type = jnp.int8 if size * size <= 127 else jnp.int32
    best = _window_position(windows, size, axes, 0)
    where = jnp.zeros(best.shape, index_type)
    for k in range(1, size * size):
        value = _window_position(windows, size, axes, k)
        where = jnp.where(value > best, index_type(k), where)
        best = jnp.maximum(best, value)
    return best, where


def _window_max_bwd(size, axes, where, g):
    zero = jnp.zeros_like(g)
    # Rebuild the windows from g: positions j along axes[1] (axes[0] is not there yet), then
    # positions i along axes[0].
    rows = [jnp.stack([jnp.where(where == i * size + j, g, zero) for j in range(size)], axis=axes[1] - 1)
            for i in range(size)]
    return (jnp.stack(rows, axis=axes[0]),)


_window_max.defvjp(_window_max_fwd, _window_max_bwd)


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


class MaxPool(nn.Module):
    """Max-pooling over ``window`` x ``window`` windows (NHWC); padding counts as -inf.

    With stride == window and no padding it runs as ``max_pool`` (faster on XLA:CPU, same
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


def flatten(x):
    """[N, ...] -> [N, prod(...)] in NHWC order (H, then W, then C)."""
    return x.reshape((x.shape[0], -1))


# -- other layers ----------------------------------------------------------------------------------

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


class Dropout(nn.Module):
    """Dropout whose masks do not depend on how the batch is split over devices.

    Under a named device axis (``axis_name``, inside shard_map/pmap) every device draws the mask
    of the whole global batch from the same key and keeps its own rows, so 1 device and N devices
    drop exactly the same units. ``broadcast_dims`` share one draw along those axes (``(1, 2)``
    on NHWC maps is spatial dropout: whole channels). Deterministic when ``deterministic``. On a
    CPU the mask is ``stored`` (computed once) before it is applied.
    """

    rate: float
    broadcast_dims: tuple[int, ...] = ()
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, deterministic: bool):
        if deterministic or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        shape = [1 if i in self.broadcast_dims else d for i, d in enumerate(x.shape)]
        key = self.make_rng("dropout")
        if self.axis_name is None:
            keep = jax.random.bernoulli(key, 1.0 - self.rate, shape)
        else:
            local = shape[0]
            shape[0] = local * axis_size(self.axis_name)
            keep = jax.random.bernoulli(key, 1.0 - self.rate, shape)
            start = axis_index(self.axis_name) * local
            keep = jax.lax.dynamic_slice_in_dim(keep, start, local, axis=0)
        if target_platform() == "cpu":
            # Drawn once: XLA:CPU fused the draw (threefry) into each reader of the output and
            # redid it per element (the CNN with spatial dropout 0.1: 1.1-1.3x faster stored).
            keep = stored(keep.astype(x.dtype)) > 0
        return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x))
