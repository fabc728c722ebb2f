"""The input pipeline that runs on the device, inside jitted code.

The whole dataset sits on the device(s) as uint8 ``[N, H, W, C]``. Everything per step is a pure
function of (seed, epoch, position in the epoch), so the host only launches steps:

- ``seed_key_data``: the raw data of the seed's key, passed to the jitted programs as an
  argument, so that no program depends on the seed (another seed reuses the compiled programs).
- ``epoch_permutation``: the order of the training examples in an epoch.
- ``make_batch``: gathers a batch, converts it to float, normalises it and augments it
  (pad-and-random-crop, horizontal flip). Each example's augmentation key is derived from its
  position in the global batch, so it does not depend on how the batch is split over devices.

A dataset too large for device memory would replace ``make_batch``'s gather by batches streamed
from the host (e.g. a TFDS ``data_source`` read by grain); the train step does not change.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import transforms


class Normalization(NamedTuple):
    """Per-channel mean and standard deviation of the training images, in [0, 1] units."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, images: np.ndarray) -> "Normalization":
        """The statistics of uint8 images ``[..., C]`` (``transforms.channel_statistics``)."""
        return cls(*transforms.channel_statistics(images))

    def __call__(self, images: jax.Array) -> jax.Array:
        """uint8 [..., C] -> normalised float32 [..., C]."""
        x = images.astype(jnp.float32) / 255.0
        return (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)


def seed_key_data(seed: int) -> np.ndarray:
    """The raw data of ``jax.random.key(seed)``: uint32 [2] for the default PRNG."""
    return np.asarray(jax.random.key_data(jax.random.key(seed)))


def epoch_permutation(seed_key: jax.Array, epoch: int | jax.Array, num_examples: int) -> jax.Array:
    """The shuffled order of ``num_examples`` training examples in ``epoch``: int32 [num_examples].
    ``seed_key``: ``seed_key_data(seed)``."""
    key = jax.random.fold_in(jax.random.wrap_key_data(seed_key), epoch)
    key = jax.random.fold_in(key, 0x5EED)  # keep shuffling apart from every other use of the seed
    return jax.random.permutation(key, num_examples).astype(jnp.int32)


def augment(images: jax.Array, keys: jax.Array, crop_padding: int, flip: bool) -> jax.Array:
    """Random crop after zero padding, then random horizontal flip; one key per image.

    images: float [B, H, W, C]; keys: [B] PRNG keys. Returns float [B, H, W, C].
    """
    if crop_padding == 0 and not flip:
        return images

    def one(image, key):
        crop_key, flip_key = jax.random.split(key)
        h, w, _ = image.shape
        if crop_padding:
            p = crop_padding
            padded = jnp.pad(image, ((p, p), (p, p), (0, 0)))
            dy, dx = jax.random.randint(crop_key, (2,), 0, 2 * p + 1)
            image = jax.lax.dynamic_slice(padded, (dy, dx, 0), image.shape)
        if flip:
            image = jnp.where(jax.random.bernoulli(flip_key), image[:, ::-1, :], image)
        return image

    return jax.vmap(one)(images, keys)


def make_batch(images, labels, indices, positions, *, normalize: Normalization,
               augment_key: jax.Array | None = None, crop_padding: int = 0, flip: bool = False):
    """Gathers and prepares one batch (or one device's part of it).

    images: uint8 [N, H, W, C]; labels: int32 [N]; indices: int32 [B] rows to take;
    positions: int32 [B] each example's position in the global batch (the augmentation key).
    Returns {'image': float32 [B, H, W, C], 'label': int32 [B]}.
    """
    x = normalize(jnp.take(images, indices, axis=0))
    if augment_key is not None and (crop_padding or flip):
        keys = jax.vmap(lambda p: jax.random.fold_in(augment_key, p))(positions)
        x = augment(x, keys, crop_padding, flip)
    return {"image": x, "label": jnp.take(labels, indices, axis=0)}
