"""Host-side image transforms (NumPy and Pillow), for decoding workers and image folders.

Every function takes and returns uint8 [H, W, C] (C = 1 or 3). Random ones take a
``numpy.random.Generator``; `example_rng` makes one that is a pure function of
(seed, epoch, position), which keeps a streamed run independent of the worker count.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

# The ImageNet evaluation convention: resize the shorter side to size / 0.875 (256 for 224),
# then take the centre size x size crop.
EVAL_CROP_FRACTION = 0.875


def example_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
    """The random numbers of one example: Philox keyed by (seed, epoch, global position)."""
    key = (int(seed) & 0xFFFFFFFF) | ((int(epoch) & 0xFFFFFFFF) << 32)
    return np.random.Generator(np.random.Philox(key=[key, int(position) & 0xFFFFFFFFFFFFFFFF]))


def channel_statistics(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation (at least 1e-3) of uint8 images ``[..., C]``, in
    [0, 1] units: exact, from integer sums of the pixels and their squares.

    The pixels are summed a million at a time, so no temporary array is larger than a few MB,
    and each chunk as rows of ``_SUM_WIDTH`` pixels, so NumPy adds long rows (down a
    ``[pixels, 3]`` array it adds three numbers at a time): Fashion-MNIST's 47 million training
    pixels in 0.04 s at a launch (0.28 s with one squared copy of all of them, whose fresh pages
    cost most of it), 50,000 RGB images of 32x32 in 0.1 s (1.3-2.2 s)."""
    channels = images.shape[-1]
    flat = np.ascontiguousarray(images).reshape(-1)
    n = flat.size // channels
    sums = np.zeros(channels, np.uint64)
    squares = np.zeros(channels, np.uint64)
    chunk = _SUM_CHUNK * channels
    for start in range(0, flat.size, chunk):
        pixels = flat[start:start + chunk]
        whole_rows = pixels.size - pixels.size % (_SUM_WIDTH * channels)
        for part, width in ((pixels[:whole_rows], _SUM_WIDTH), (pixels[whole_rows:], 1)):
            if part.size:
                rows = part.reshape(-1, width * channels)
                sums += rows.sum(axis=0, dtype=np.uint64).reshape(width, channels).sum(axis=0)
                squares += (np.square(rows, dtype=np.uint16).sum(axis=0, dtype=np.uint64)
                            .reshape(width, channels).sum(axis=0))
    means, stds = [], []
    for s1, s2 in zip(sums.tolist(), squares.tolist()):  # Python integers: exact
        means.append(s1 / n / 255.0)
        stds.append(max(math.sqrt(n * s2 - s1 * s1) / n / 255.0, 1e-3))
    return tuple(means), tuple(stds)


_SUM_CHUNK = 1 << 20  # pixels per chunk of channel_statistics
_SUM_WIDTH = 1024  # pixels per row of a chunk


def _to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _from_pil(picture: Image.Image, channels: int) -> np.ndarray:
    array = np.asarray(picture, dtype=np.uint8)
    return array[..., np.newaxis] if channels == 1 else array


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``image`` resized to exactly (height, width), bilinear with antialiasing."""
    if image.shape[:2] == (height, width):
        return image
    picture = _to_pil(image).resize((width, height), Image.BILINEAR)
    return _from_pil(picture, image.shape[-1])


def resize_shorter_center_crop(image: np.ndarray, size: int, resize_to: int | None = None):
    """Shorter side resized to ``resize_to`` (default ``size``), then the centre size x size."""
    resize_to = resize_to or size
    h, w = image.shape[:2]
    scale = resize_to / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    image = resize(image, new_h, new_w)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return image[top:top + size, left:left + size]


def eval_transform(image: np.ndarray, size: int, imagenet: bool) -> np.ndarray:
    """Evaluation view: centre crop after resizing the shorter side to size (or size / 0.875)."""
    resize_to = round(size / EVAL_CROP_FRACTION) if imagenet else size
    return resize_shorter_center_crop(image, size, resize_to)


def random_resized_crop(image: np.ndarray, size: int, rng: np.random.Generator,
                        scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:
    """A random crop of 8-100% of the area and aspect 3/4-4/3, resized to size x size
    (Szegedy et al. 2015, as torchvision's RandomResizedCrop: 10 tries, then the centre)."""
    h, w = image.shape[:2]
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw = round(math.sqrt(target_area * aspect))
        ch = round(math.sqrt(target_area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            return resize(image[top:top + ch, left:left + cw], size, size)
    in_ratio = w / h  # fall back to the largest centre crop within the ratio range
    if in_ratio < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif in_ratio > ratio[1]:
        ch, cw = h, round(h * ratio[1])
    else:
        cw, ch = w, h
    top, left = (h - ch) // 2, (w - cw) // 2
    return resize(image[top:top + ch, left:left + cw], size, size)


def pad_crop(image: np.ndarray, padding: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-pad by ``padding`` pixels on each side, then crop back to the original size."""
    if not padding:
        return image
    h, w = image.shape[:2]
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    dy, dx = rng.integers(0, 2 * padding + 1, size=2)
    return padded[dy:dy + h, dx:dx + w]


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mirror left-right with probability 1/2."""
    return image[:, ::-1] if rng.random() < 0.5 else image
