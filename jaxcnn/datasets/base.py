"""What every source returns: the in-memory `Dataset` and the random-access `StreamingDataset`,
the checks they pass, and small helpers the sources share."""

from __future__ import annotations

import dataclasses
import gzip
import pathlib
import zlib
from typing import NoReturn, Protocol

import numpy as np

from jaxcnn.errors import UserError


class DatasetError(UserError):
    """A data set is missing, damaged or unreadable; the message says how to fix it."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A whole image-classification data set in memory (compared by identity)."""

    name: str
    train_images: np.ndarray  # uint8 [N, H, W, C]
    train_labels: np.ndarray  # int32 [N]
    test_images: np.ndarray  # uint8 [M, H, W, C]
    test_labels: np.ndarray  # int32 [M]
    num_classes: int
    class_names: tuple[str, ...]
    source: str  # where the data came from, for people
    warning: str | None = None  # set when substitute data was used

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""
        return tuple(self.train_images.shape[1:])

    @property
    def num_train(self) -> int:
        return len(self.train_labels)

    @property
    def num_test(self) -> int:
        return len(self.test_labels)


class RandomAccessSource(Protocol):
    """One split read example by example (grain's RandomAccessDataSource protocol).

    ``source[i]`` is ``(image, label)``: uint8 [H, W, C] (sizes may differ between images) and
    an int. Sources are picklable, so grain's worker processes can read them.
    """

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]: ...


@dataclasses.dataclass(frozen=True, eq=False)
class StreamingDataset:
    """A dataset read example by example while training (jaxcnn.stream), never whole."""

    name: str
    train: RandomAccessSource
    test: RandomAccessSource
    num_classes: int
    class_names: tuple[str, ...]
    channels: int
    source: str  # where the data came from, for people
    image_shape: tuple[int, int, int] | None = None  # (H, W, C) when every image has it
    warning: str | None = None

    @property
    def num_train(self) -> int:
        return len(self.train)

    @property
    def num_test(self) -> int:
        return len(self.test)


class ArraySource:
    """An in-memory split as a RandomAccessSource (how the stream reads the built-in sets)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.images[index], int(self.labels[index])

    def __repr__(self) -> str:
        return f"ArraySource({len(self)} images of {self.images.shape[1:]})"


def as_streaming(data: Dataset) -> StreamingDataset:
    """The in-memory ``data`` read through the streaming interface."""
    return StreamingDataset(
        name=data.name, train=ArraySource(data.train_images, data.train_labels),
        test=ArraySource(data.test_images, data.test_labels), num_classes=data.num_classes,
        class_names=data.class_names, channels=data.image_shape[-1], source=data.source,
        image_shape=data.image_shape, warning=data.warning)



def check_dataset(dataset: Dataset, where: str, fix: str) -> None:
    """Raise DatasetError unless `dataset` is consistent; `where` names the culprit."""

    def fail(problem: str) -> NoReturn:
        raise DatasetError(
            f"{where} for the dataset '{dataset.name}' is not usable: {problem}. {fix}"
        )

    for split in ("train", "test"):
        images = getattr(dataset, f"{split}_images")
        labels = getattr(dataset, f"{split}_labels")
        if images.dtype != np.uint8 or images.ndim != 4:
            fail(
                f"the {split} images are {images.dtype} of shape {images.shape}, "
                "not uint8 [N, H, W, C]"
            )
        if labels.dtype != np.int32:
            fail(f"the {split} labels are {labels.dtype}, not int32")
        if labels.ndim != 1 or len(labels) != len(images):
            fail(f"there are {len(images)} {split} images but {labels.shape} labels")
        if len(images) == 0:
            fail(f"the {split} split is empty")
        if labels.min() < 0 or labels.max() >= dataset.num_classes:
            fail(
                f"the {split} labels range over {labels.min()}..{labels.max()}, "
                f"outside 0..{dataset.num_classes - 1}"
            )
    if dataset.train_images.shape[1:] != dataset.test_images.shape[1:]:
        fail(
            f"train images are {dataset.train_images.shape[1:]} but test images are "
            f"{dataset.test_images.shape[1:]}"
        )
    if len(dataset.class_names) != dataset.num_classes:
        fail(f"there are {len(dataset.class_names)} class names for {dataset.num_classes} classes")


def build(
    name: str,
    splits: dict[str, np.ndarray],
    class_names: tuple[str, ...],
    source: str,
    where: str,
    fix: str,
) -> Dataset:
    """A checked Dataset from raw split arrays (images gain a channel axis if needed)."""
    arrays = {}
    for key, value in splits.items():
        if key.endswith("_images"):
            value = np.ascontiguousarray(value, dtype=np.uint8)
            arrays[key] = value[..., np.newaxis] if value.ndim == 3 else value
        else:
            arrays[key] = np.asarray(value).astype(np.int32)
    dataset = Dataset(
        name=name,
        num_classes=len(class_names),
        class_names=tuple(class_names),
        source=source,
        **arrays,
    )
    check_dataset(dataset, where, fix)
    return dataset


def read_bytes(path: pathlib.Path, fix: str) -> bytes:
    """The contents of `path`, gunzipped when it ends in .gz."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as stream:
                return stream.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        kind = "a readable gzip file" if path.suffix == ".gz" else "readable"
        raise DatasetError(
            f"The file {path} is not {kind} (it is truncated or corrupt: {error}). {fix}"
        ) from None



class Head:
    """The first ``count`` examples of a RandomAccessSource (data.max_train_examples)."""

    def __init__(self, source: RandomAccessSource, count: int):
        self.source, self.count = source, min(count, len(source))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return self.source[index]

    def __repr__(self) -> str:
        return f"the first {self.count} examples of {self.source!r}"
