"""The streaming input pipeline: examples read, decoded and augmented on the host by grain.

For datasets that do not fit in memory (or that come as files of different sizes), each process
reads only the examples of its own rows of every global batch, in worker processes, and hands
uint8 batches to the devices. What an example at global position ``g`` of ``epoch`` is (which
image, which crop, which flip) is a pure function of (seed, epoch, g):

- order: ``grain.experimental.index_shuffle`` (a keyed bijection of 0..N-1, no array kept);
- augmentation: a Philox generator keyed by (seed, epoch, g) (`transforms.example_rng`).

So the stream is the same for any number of worker processes, any number of processes, and
after a resume from any step. This module imports no JAX: grain's workers unpickle it.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np

from jaxcnn import transforms
from jaxcnn.datasets.base import DatasetError, RandomAccessSource

_SHUFFLE_ROUNDS = 4


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """How a training image becomes a fixed-size uint8 [size, size, C] (or stays as it is)."""

    image_size: int | None = None  # None: keep the stored size (every image must have it)
    random_resized_crop: bool = False  # ImageNet recipe (needs image_size); else resize + crop
    crop_padding: int = 0  # small-image recipe: pad, then crop back at random
    flip: bool = False

    def train(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.image_size and self.random_resized_crop:
            image = transforms.random_resized_crop(image, self.image_size, rng)
        elif self.image_size:
            image = transforms.eval_transform(image, self.image_size, imagenet=False)
        image = transforms.pad_crop(image, self.crop_padding, rng)
        return transforms.random_flip(image, rng) if self.flip else image

    def evaluate(self, image: np.ndarray) -> np.ndarray:
        if not self.image_size:
            return image
        return transforms.eval_transform(image, self.image_size, self.random_resized_crop)


def shuffle_seed(seed: int, epoch: int) -> int:
    """The index_shuffle key of ``epoch``: apart from every other use of the seed."""
    return (int(seed) * 0x9E3779B1 + int(epoch) * 0x85EBCA77 + 0x5EED) & 0x7FFFFFFF


def example_index(seed: int, epoch: int, position: int, num_examples: int) -> int:
    """Which training example sits at global ``position`` of ``epoch``."""
    from grain.experimental import index_shuffle

    return index_shuffle(position, max_index=num_examples - 1, seed=shuffle_seed(seed, epoch),
                         rounds=_SHUFFLE_ROUNDS)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where this process's rows sit in the run: row ``i`` of its stream is global step
    ``i // local_batch``, row ``i % local_batch`` of this process's part of that step."""

    global_batch: int
    steps_per_epoch: int
    process_index: int = 0
    process_count: int = 1

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.process_count

    def locate(self, row: int) -> tuple[int, int]:
        """(epoch, global position within the epoch) of this process's ``row``."""
        step, j = divmod(row, self.local_batch)
        epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
        return epoch, step_in_epoch * self.global_batch + self.process_index * self.local_batch + j


class _TrainExample:
    """Row of this process's stream -> {'image': uint8 [h, w, c], 'label': int32}."""

    def __init__(self, source: RandomAccessSource, seed: int, layout: Layout,
                 augmentation: Augmentation):
        self.source, self.seed, self.layout, self.augmentation = source, seed, layout, augmentation
        self.num_examples = len(source)

    def __call__(self, row: int) -> dict:
        epoch, position = self.layout.locate(row)
        index = example_index(self.seed, epoch, position, self.num_examples)
        image, label = _read(self.source, index)
        rng = transforms.example_rng(self.seed, epoch, position)
        return {"image": np.ascontiguousarray(self.augmentation.train(image, rng)),
                "label": np.int32(label)}


class _EvalExample:
    """Row of this process's evaluation stream -> image, label and mask (False for padding)."""

    def __init__(self, source: RandomAccessSource, layout: Layout, augmentation: Augmentation):
        self.source, self.layout, self.augmentation = source, layout, augmentation

    def __call__(self, row: int) -> dict:
        _, position = self.layout.locate(row)
        valid = position < len(self.source)
        image, label = _read(self.source, position if valid else 0)
        return {"image": np.ascontiguousarray(self.augmentation.evaluate(image)),
                "label": np.int32(label), "mask": np.bool_(valid)}


def _read(source: RandomAccessSource, index: int) -> tuple[np.ndarray, int]:
    try:
        return source[index]
    except DatasetError:
        raise
    except Exception as error:  # noqa: BLE001 - a source's own failure, named for the user
        raise DatasetError(
            f"Could not read example {index} of {source!r} ({type(error).__name__}: {error}). "
            "Fix or remove it and run the same command again: the run resumes from its last "
            "checkpoint.") from None


def _stack(rows: list[dict]) -> dict:
    first = rows[0]
    shapes = {row["image"].shape for row in rows}
    if len(shapes) > 1:
        raise DatasetError(
            f"The images of one batch have different sizes ({', '.join(map(str, sorted(shapes)))}"
            "). Set data.image_size to resize every image to one size, e.g. --set "
            "data.image_size=224.")
    return {key: np.stack([row[key] for row in rows]) for key in first}


def default_num_workers() -> int:
    """Decoding worker processes when data.num_workers is None: one per spare core, up to 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def _die_with_parent(worker_index: int, worker_count: int) -> None:
    """Grain worker start-up: on Linux, end this worker when the training process dies, even
    by SIGKILL (else an orphaned worker would wait forever)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent is already gone
            os._exit(1)


def _iterate(dataset, num_workers: int):
    import grain
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain reads its absl flags; jaxcnn has none of its own
        flags.FLAGS.mark_as_parsed()

    iter_dataset = dataset.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2))
    if num_workers > 0:
        iter_dataset = iter_dataset.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=2),
            worker_init_fn=_die_with_parent)
    return iter(iter_dataset)


def train_batches(source: RandomAccessSource, *, seed: int, layout: Layout, start_step: int,
                  num_steps: int, augmentation: Augmentation, num_workers: int):
    """This process's part of global steps ``start_step .. start_step + num_steps - 1``: an
    iterator of {'image': uint8 [local_batch, H, W, C], 'label': int32 [local_batch]}.

    Close it (``.close()``) when done: it owns worker processes.
    """
    import grain

    b = layout.local_batch
    rows = grain.MapDataset.range(start_step * b, (start_step + num_steps) * b)
    dataset = rows.map(_TrainExample(source, seed, layout, augmentation))
    return _iterate(dataset.batch(b, batch_fn=_stack), num_workers)


def eval_batches(source: RandomAccessSource, *, layout: Layout, augmentation: Augmentation,
                 num_workers: int = 0):
    """This process's part of every evaluation batch: each test example exactly once, the last
    batch padded (mask False). {'image', 'label', 'mask'} per batch; ``layout.steps_per_epoch``
    is the number of evaluation batches."""
    import grain

    b = layout.local_batch
    rows = grain.MapDataset.range(layout.steps_per_epoch * b)
    dataset = rows.map(_EvalExample(source, layout, augmentation))
    return _iterate(dataset.batch(b, batch_fn=_stack), num_workers)


def sample_normalization(source: RandomAccessSource, augmentation: Augmentation,
                         max_images: int = 5000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units, exact for in-memory data, else estimated from
    ``max_images`` training images spread evenly over the set (at their evaluation view)."""
    images = getattr(source, "images", None)
    if images is None:
        count = len(source)
        picks = np.linspace(0, count - 1, min(count, max_images)).round().astype(int)
        images = [augmentation.evaluate(source[int(i)][0]) for i in np.unique(picks)]
        images = np.concatenate([im.reshape(-1, im.shape[-1]) for im in images])
    return transforms.channel_statistics(images)
