"""Your own images: ``root/train/<class>/*`` and ``root/test/<class>/*`` (or ``root/val/``),
held in memory (`load`) or read image by image while training (`open_streaming`).

The rules, for both:

- Images are files ending in .jpg, .jpeg, .png, .bmp or .webp (any case), also in sub-folders of
  a class folder; other files, and hidden files and folders (a leading dot), are ignored.
- Classes are the folder names under train/, sorted; a label is the index of its class. test/
  must have the same class folders. When both test/ and val/ exist, test/ is used (the source
  says so) and val/ is ignored.
- Within a split, images are in one fixed order: sorted by (class, path inside the class
  folder), then mixed by a permutation with seed ORDER_SEED, so that data.max_train_examples
  takes some of every class rather than the first classes.
- Channels: 1 when every image is greyscale, else 3 (greyscale images are made RGB; alpha is
  dropped; palette and CMYK images become RGB).
- Sizes: with ``image_size`` the shorter side is resized to it, then the centre square is taken;
  without it every image must have one size.
- Unreadable images: `load` decodes every image up front and `open_streaming` reads every
  header; images that fail are skipped, with a warning giving their count and the first few
  paths. An image that passes the header check but fails to decode while training stops the
  run with a DatasetError naming the file (fix or delete it, then run the same command again to
  resume).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError, features

from jaxcnn import transforms
from jaxcnn.datasets.base import Dataset, DatasetError, StreamingDataset, build

NAME = "imagefolder"
EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp"}
                       | ({".webp"} if features.check("webp") else set()))
TEST_FOLDERS = ("test", "val")  # the first one present is the test split
MAX_NAMED = 5  # unreadable files named in a warning
ORDER_SEED = 0  # the fixed permutation that mixes the classes of a split
_CHUNK = 256  # images per thread-pool task
_LAYOUT = (
    "An image folder holds train/ and test/ (or val/), each with one sub-folder of images per "
    "class, e.g. ROOT/train/cat/1.jpg and ROOT/test/cat/7.jpg."
)

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class _Failure:
    """An image that could not be read, and why."""

    path: str
    error: Exception

    def describe(self) -> str:
        if isinstance(self.error, UnidentifiedImageError):
            return f"{self.path} (not an image that Pillow can read)"
        return f"{self.path} ({type(self.error).__name__}: {self.error})"


@dataclasses.dataclass
class _Split:
    """The image paths of one split and their labels, in order."""

    folder: pathlib.Path
    paths: list[str]
    labels: np.ndarray  # int32


def _is_grey(mode: str) -> bool:
    return mode in ("1", "L", "LA", "La", "I", "F") or mode.startswith("I;16")


def decode(path: str, channels: int | None = None) -> np.ndarray:
    """The image at ``path`` as uint8 [H, W, channels]; channels None: 1 if greyscale, else 3."""
    with Image.open(path) as picture:
        if picture.mode.startswith("I;16"):  # 16-bit greyscale: keep the high byte
            picture = Image.fromarray((np.asarray(picture) >> 8).astype(np.uint8))
        if channels is None:
            channels = 1 if _is_grey(picture.mode) else 3
        array = np.asarray(picture.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    return array[..., np.newaxis] if channels == 1 else array


def _header(path: str) -> tuple[tuple[int, int], str]:
    """(height, width) and Pillow mode, from the file's header alone."""
    with Image.open(path) as picture:
        return (picture.height, picture.width), picture.mode


def _parallel(function: Callable[[str], T], paths: Sequence[str]) -> list[T | _Failure]:
    """``function(path)`` for every path, in order, on a thread pool (Pillow releases the GIL
    while it reads and decodes); a path that raises gives a `_Failure`."""

    def attempt(chunk: Sequence[str]) -> list[T | _Failure]:
        results: list[T | _Failure] = []
        for path in chunk:
            try:
                results.append(function(path))
            except Exception as error:  # Pillow raises many kinds for damaged files
                results.append(_Failure(path, error))
        return results

    chunks = [paths[i:i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    with concurrent.futures.ThreadPoolExecutor() as pool:
        return [result for results in pool.map(attempt, chunks) for result in results]


class ImageFolderSource:
    """One split of an image folder as a RandomAccessSource: ``source[i]`` is the decoded image
    (uint8 [H, W, channels], at its own size) and its label.

    The paths are kept as one bytes string and an offset array, which pickle fast for grain's
    worker processes and are not Python objects that forked workers would copy page by page.
    """

    def __init__(self, paths: Sequence[str], labels: np.ndarray, channels: int):
        encoded = [os.fsencode(path) for path in paths]
        self._blob = b"".join(encoded)
        self._ends = np.cumsum([len(name) for name in encoded], dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int32)
        self.channels = channels
        if len(self.labels) != len(encoded):
            raise ValueError(f"{len(encoded)} paths but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> str:
        index = range(len(self))[index]
        start = int(self._ends[index - 1]) if index else 0
        return os.fsdecode(self._blob[start:int(self._ends[index])])

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        path = self.path(index)
        try:
            image = decode(path, self.channels)
        except Exception as error:  # Pillow raises many kinds for damaged files
            raise DatasetError(
                f"The image {_Failure(path, error).describe()} could not be decoded while "
                "training, although its header was readable when the image folder was opened. "
                "Delete or fix this file, then run the same command again: the run resumes "
                "from its last checkpoint."
            ) from None
        return image, int(self.labels[index])

    def __repr__(self) -> str:
        return f"ImageFolderSource({len(self)} images, {self.channels} channels)"


def load(root: pathlib.Path, image_size: int | None = None) -> Dataset:
    """The image folder ``root`` decoded whole into memory (rules in the module docstring)."""
    root = pathlib.Path(root)
    splits, class_names, note = _scan(root)
    read = functools.partial(_read, image_size=image_size)
    results = {name: _parallel(read, split.paths) for name, split in splits.items()}
    failures = _drop_failures(splits, results, class_names, "decoded")
    images = {name: [r for r in rs if not isinstance(r, _Failure)] for name, rs in results.items()}
    channels = max(image.shape[-1] for split in images.values() for image in split)
    if image_size is None:
        _check_one_size(splits, {name: [i.shape[:2] for i in split]
                                 for name, split in images.items()})
    arrays: dict[str, np.ndarray] = {}
    for name, split in splits.items():
        stacked = [np.repeat(i, channels, axis=-1) if i.shape[-1] != channels else i
                   for i in images[name]]
        arrays[f"{name}_images"] = np.stack(stacked)
        arrays[f"{name}_labels"] = split.labels
    dataset = build(NAME, arrays, class_names, f"image folder {root}{note}",
                    f"The image folder {root}", _LAYOUT)
    return dataclasses.replace(dataset, warning=_warning(root, failures, splits, "decoded"))


def open_streaming(root: pathlib.Path) -> StreamingDataset:
    """The image folder ``root`` as random-access splits that decode image by image; only the
    headers are read now (rules in the module docstring)."""
    root = pathlib.Path(root)
    splits, class_names, note = _scan(root)
    results = {name: _parallel(_header, split.paths) for name, split in splits.items()}
    failures = _drop_failures(splits, results, class_names, "opened")
    headers = [r for rs in results.values() for r in rs if not isinstance(r, _Failure)]
    channels = 1 if all(_is_grey(mode) for _, mode in headers) else 3
    sizes = {size for size, _ in headers}
    image_shape = (*sizes.pop(), channels) if len(sizes) == 1 else None
    sources = {name: ImageFolderSource(s.paths, s.labels, channels) for name, s in splits.items()}
    return StreamingDataset(
        name=NAME, train=sources["train"], test=sources["test"],
        num_classes=len(class_names), class_names=class_names, channels=channels,
        source=f"image folder {root}{note}", image_shape=image_shape,
        warning=_warning(root, failures, splits, "opened"))


def _read(path: str, image_size: int | None) -> np.ndarray:
    image = decode(path)
    return transforms.resize_shorter_center_crop(image, image_size) if image_size else image


def _scan(root: pathlib.Path) -> tuple[dict[str, _Split], tuple[str, ...], str]:
    """The train and test splits of ``root``, the sorted class names, and a note for the source."""
    if not root.is_dir():
        raise DatasetError(
            f"The image folder {root} (data.data_dir) does not exist or is not a folder. "
            f"Pass the folder that holds train/ and test/. {_LAYOUT}"
        )
    present = sorted(entry.name for entry in os.scandir(root) if not entry.name.startswith("."))
    if not present:
        raise DatasetError(f"The image folder {root} is empty. {_LAYOUT}")
    if not (root / "train").is_dir():
        raise DatasetError(
            f"The image folder {root} has no train/ folder (it holds {_names(present)}). {_LAYOUT}"
        )
    test_name = next((name for name in TEST_FOLDERS if (root / name).is_dir()), None)
    if test_name is None:
        raise DatasetError(
            f"The image folder {root} has train/ but no test/ or val/ folder (it holds "
            f"{_names(present)}). Put some images of every class into test/<class>/, or "
            f"rename your validation folder to test/. {_LAYOUT}"
        )
    both = test_name == "test" and (root / "val").is_dir()
    note = " (test/ is used, val/ is not)" if both else ""
    found = {"train": _class_folders(root / "train"), "test": _class_folders(root / test_name)}
    train_classes, test_classes = set(found["train"]), set(found["test"])
    if train_classes != test_classes:
        only_train = sorted(train_classes - test_classes)
        only_test = sorted(test_classes - train_classes)
        problems = [f"only train/ has {_names(only_train)}"] if only_train else []
        problems += [f"only {test_name}/ has {_names(only_test)}"] if only_test else []
        raise DatasetError(
            f"The image folder {root} has different classes in train/ and {test_name}/: "
            f"{'; '.join(problems)}. Give both splits the same class folders, each with at least "
            "one image."
        )
    class_names = tuple(sorted(train_classes))
    splits = {}
    for split, classes in found.items():
        paths = [path for name in class_names for path in classes[name]]
        labels = np.repeat(np.arange(len(class_names), dtype=np.int32),
                           [len(classes[name]) for name in class_names])
        order = np.random.default_rng(ORDER_SEED).permutation(len(paths))
        paths, labels = [paths[i] for i in order], labels[order]
        splits[split] = _Split(root / (test_name if split == "test" else "train"), paths, labels)
    return splits, class_names, note


def _class_folders(folder: pathlib.Path) -> dict[str, list[str]]:
    """Class name -> its image paths, sorted, for each class folder in ``folder``."""
    classes = {entry.name: _images_under(entry.path) for entry in os.scandir(folder)
               if entry.is_dir() and not entry.name.startswith(".")}
    if not classes:
        raise DatasetError(
            f"The folder {folder} has no class folders: put the images of each class into a "
            f"sub-folder named after the class. {_LAYOUT}"
        )
    empty = sorted(name for name, paths in classes.items() if not paths)
    if empty:
        raise DatasetError(
            f"The class folders {_names(empty)} in {folder} hold no images (files ending in "
            f"{', '.join(sorted(EXTENSIONS))}). Add images to them or remove them, from train/ "
            "and test/ alike."
        )
    return classes


def _images_under(top: str) -> list[str]:
    """The image files under ``top`` (recursively, hidden ones skipped), sorted by path."""
    found = []
    for folder, subfolders, files in os.walk(top, followlinks=True):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        found += [os.path.join(folder, name) for name in files
                  if not name.startswith(".") and os.path.splitext(name)[1].lower() in EXTENSIONS]
    return sorted(found)


def _drop_failures(splits: dict[str, _Split], results: dict[str, list],
                   class_names: tuple[str, ...], how: str) -> list[_Failure]:
    """The `_Failure` results; their images are removed from ``splits``. Raises DatasetError
    when a class is left without images."""
    failures = []
    for name, split in splits.items():
        ok = np.array([not isinstance(r, _Failure) for r in results[name]], dtype=bool)
        bad = [r for r in results[name] if isinstance(r, _Failure)]
        if not bad:
            continue
        failures += bad
        counts = np.bincount(split.labels[ok], minlength=len(class_names))
        lost = [class_names[i] for i in np.flatnonzero(counts == 0)]
        if lost:
            raise DatasetError(
                f"No image of the classes {_names(lost)} in {split.folder} could be {how}: "
                f"{'; '.join(f.describe() for f in bad[:MAX_NAMED])}. Replace or fix these "
                "files."
            )
        split.paths = [p for p, keep in zip(split.paths, ok) if keep]
        split.labels = split.labels[ok]
    return failures


def _check_one_size(splits: dict[str, _Split], sizes: dict[str, list[tuple[int, int]]]) -> None:
    """Raise DatasetError naming two files of different sizes, if there are any."""
    first = None
    for name, split in splits.items():
        for path, size in zip(split.paths, sizes[name]):
            if first is None:
                first = (path, size)
            elif size != first[1]:
                raise DatasetError(
                    f"The images in the image folder are not all one size: {first[0]} is "
                    f"{first[1][1]}x{first[1][0]} (width x height) but {path} is "
                    f"{size[1]}x{size[0]}. Set an image size, e.g. --set data.image_size=224, to "
                    "resize the shorter side and take the centre square."
                )


def _warning(root: pathlib.Path, failures: list[_Failure], splits: dict[str, _Split],
             how: str) -> str | None:
    if not failures:
        return None
    total = len(failures) + sum(len(split.paths) for split in splits.values())
    named = "; ".join(f.describe() for f in failures[:MAX_NAMED])
    more = f"; and {len(failures) - MAX_NAMED} more" if len(failures) > MAX_NAMED else ""
    return (
        f"Skipped {len(failures)} of {total} images in the image folder {root} that could not "
        f"be {how}: {named}{more}. Delete or fix these files to silence this warning."
    )


def _names(names: Sequence[str], limit: int = 10) -> str:
    """'a', 'b' and 3 more."""
    shown = ", ".join(f"'{name}'" for name in names[:limit]) or "nothing"
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
