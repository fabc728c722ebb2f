"""Small building blocks shared by the model families."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp


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
    return _window_max(x.reshape(n, ho, size, wo, size, c), size)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _window_max(windows: jax.Array, size: int) -> jax.Array:
    """[N, HO, S, WO, S, C] -> [N, HO, WO, C]: the max of each S x S window."""
    return jnp.max(windows, axis=(2, 4))


def _window_max_fwd(windows, size):
    # One pass over the window: the running max and the window position where it was first
    # reached; the backward pass needs only that position.
    index_type = jnp.int8 if size * size <= 127 else jnp.int32
    best = windows[:, :, 0, :, 0, :]
    where = jnp.zeros(best.shape, index_type)
    for k in range(1, size * size):
        value = windows[:, :, k // size, :, k % size, :]
        where = jnp.where(value > best, index_type(k), where)
        best = jnp.maximum(best, value)
    return best, where


def _window_max_bwd(size, where, g):
    zero = jnp.zeros_like(g)
    rows = [jnp.stack([jnp.where(where == i * size + j, g, zero) for j in range(size)], axis=3)
            for i in range(size)]  # each [N, HO, WO, S(j), C]
    return (jnp.stack(rows, axis=2),)  # [N, HO, S(i), WO, S(j), C]


_window_max.defvjp(_window_max_fwd, _window_max_bwd)


class Dropout(nn.Module):
    """Dropout whose masks do not depend on how the batch is split over devices.

    Under a named device axis (``axis_name``, inside shard_map/pmap) every device draws the mask
    of the whole global batch from the same key and keeps its own rows, so 1 device and N devices
    drop exactly the same units. ``broadcast_dims`` share one draw along those axes (``(1, 2)``
    on NHWC maps is spatial dropout: whole channels). Deterministic when ``deterministic``.
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
            shape[0] = local * jax.lax.axis_size(self.axis_name)
            keep = jax.random.bernoulli(key, 1.0 - self.rate, shape)
            start = jax.lax.axis_index(self.axis_name) * local
            keep = jax.lax.dynamic_slice_in_dim(keep, start, local, axis=0)
        return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x))
