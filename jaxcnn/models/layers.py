"""Small building blocks shared by the model families."""

import flax.linen as nn
import jax
import jax.numpy as jnp


def max_pool(x: jax.Array, size: int) -> jax.Array:
    """Non-overlapping ``size`` x ``size`` max-pooling of NHWC ``x`` (stride = size, no padding).

    Written as a reshape and a max, which equals ``nn.max_pool(x, (size, size), (size, size))``
    (rows and columns that do not fill a whole window are dropped, as with VALID padding) and
    is faster on XLA:CPU, in the forward and above all in the backward pass.
    """
    n, h, w, c = x.shape
    ho, wo = h // size, w // size
    x = x[:, : ho * size, : wo * size, :]
    return jnp.max(x.reshape(n, ho, size, wo, size, c), axis=(2, 4))


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
