"""Source 5, TensorFlow Datasets: a dataset prepared in ``$TFDS_DATA_DIR`` (or
~/tensorflow_datasets) is read without TensorFlow when it was prepared as array_record, and
through TensorFlow otherwise. Downloading and preparing needs TensorFlow; without it this source
is skipped, and with it an offline machine is detected by a bounded DNS lookup of the download
host, so the attempt fails in seconds instead of hanging.

`open_data_sources` gives the random-access splits of an array_record dataset for streaming.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pathlib
import re
import socket
import threading
import urllib.parse
from collections.abc import Iterator

import numpy as np

from jaxcnn.datasets.base import Dataset, DatasetError, StreamingDataset, build
from jaxcnn.datasets.records import BUILTIN

# How long the "are we online?" DNS lookup may take before TFDS downloads.
DNS_TIMEOUT_S = 5.0
# Host to resolve when a TFDS builder does not say where it downloads from.
DEFAULT_DOWNLOAD_HOST = "storage.googleapis.com"


def tfds_data_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()


def tensorflow_available() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def _host_resolves(host: str, timeout_s: float) -> bool:
    """Whether DNS resolves `host` within `timeout_s` (lookup in a daemon thread)."""
    done = threading.Event()
    answer = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, 443)
            answer.append(True)
        except (OSError, UnicodeError):
            answer.append(False)
        finally:
            done.set()

    threading.Thread(target=lookup, name=f"dns-{host}", daemon=True).start()
    return done.wait(timeout_s) and answer[0]


@contextlib.contextmanager
def _tfds_offline_lookup() -> Iterator[None]:
    """Keep TFDS local and quiet while we only ask whether a dataset is prepared.

    `DatasetBuilder.__init__` calls `info.initialize_from_bucket()` when no prepared copy
    exists, which looks up gs://tfds-data unless `gcs_utils._is_gcs_disabled` is set (it
    is by default in TFDS 4.9.x; older releases left it off and could stall offline).
    `is_prepared()` also logs a warning for every version folder that is not there.
    """
    absl_logger = logging.getLogger("absl")
    saved_level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    gcs_utils = None
    with contextlib.suppress(ImportError):
        from tensorflow_datasets.core.utils import gcs_utils
    saved_gcs = getattr(gcs_utils, "_is_gcs_disabled", None)
    if saved_gcs is not None:
        gcs_utils._is_gcs_disabled = True
    try:
        yield
    finally:
        absl_logger.setLevel(saved_level)
        if saved_gcs is not None:
            gcs_utils._is_gcs_disabled = saved_gcs


def from_tfds(name: str, data_dir: pathlib.Path | None, notes: list[str]) -> Dataset | None:
    tfds_dir = tfds_data_dir()
    if re.match(r"^\w+:[A-Za-z_]", name):
        notes.append(
            f"TFDS was not asked, since '{name}' names a community dataset (namespace:name), "
            "which jaxcnn does not fetch"
        )
        return None
    if importlib.util.find_spec("tensorflow_datasets") is None:
        notes.append("TFDS is not installed (pip install tensorflow-datasets)")
        return None
    import tensorflow_datasets as tfds

    with _tfds_offline_lookup():
        try:
            builder = tfds.builder(name, data_dir=os.fspath(tfds_dir))
        except tfds.core.registered.DatasetNotFoundError:
            notes.append(
                f"TFDS knows no dataset called '{name}' and has none prepared in {tfds_dir}"
            )
            return None
        except Exception as error:  # TFDS raises many kinds for odd names and configs
            notes.append(
                f"TFDS could not open '{name}' in {tfds_dir} ({type(error).__name__}: {error})"
            )
            return None
        if builder.is_prepared():
            return _read_tfds(name, builder, tfds, f"TFDS {builder.data_dir}")

    if not tensorflow_available():
        notes.append(
            f"TFDS has not prepared '{name}' in {tfds_dir} ($TFDS_DATA_DIR or "
            "~/tensorflow_datasets), and TFDS needs TensorFlow to download and prepare it, "
            "which is not installed (pip install tensorflow-cpu)"
        )
        return None
    host = _download_host(builder)
    if not _host_resolves(host, DNS_TIMEOUT_S):
        notes.append(
            f"TFDS has not prepared '{name}' in {tfds_dir}, and this machine looks offline "
            f"(a DNS lookup of the download host {host} failed or took over "
            f"{DNS_TIMEOUT_S:g} s), so no download was tried"
        )
        return None
    try:
        builder.download_and_prepare()
    except Exception as error:  # network, disk and TFDS errors alike end up here
        raise DatasetError(
            f"TFDS could not download and prepare the dataset '{name}' into {tfds_dir}: "
            f"{type(error).__name__}: {error}. Check the network connection and the free "
            "disk space and try again; for mnist, fashion_mnist, cifar10 and cifar100 you can "
            "instead pass the raw files as data_dir."
        ) from None
    return _read_tfds(name, builder, tfds, f"TFDS {builder.data_dir} (downloaded now)")


def _download_host(builder) -> str:
    """The host of the builder's first download URL, or the TFDS storage host."""
    try:
        urls = sorted(builder.url_infos or ())
    except Exception:  # older builders or missing optional packages: use the default
        urls = []
    hosts = [urllib.parse.urlsplit(url).hostname for url in urls]
    return next((host for host in hosts if host), DEFAULT_DOWNLOAD_HOST)


def _read_tfds(name: str, builder, tfds, source: str) -> Dataset:
    """The train and test splits of a prepared TFDS builder as a Dataset."""
    where = f"The TFDS copy in {builder.data_dir}"
    fix = (
        f"jaxcnn needs an image-classification dataset with 'train' and 'test' splits; if the "
        f"copy is damaged, delete {builder.data_dir} and prepare it again."
    )
    info = builder.info
    image_key, label_key = info.supervised_keys or ("image", "label")
    splits = list(info.splits)
    test_split = next((s for s in ("test", "validation") if s in splits), None)
    if "train" not in splits or test_split is None or label_key not in info.features:
        raise DatasetError(f"{where} for the dataset '{name}' has the splits {splits}. {fix}")
    label_feature = info.features[label_key]
    names = getattr(label_feature, "names", None)
    if not names:
        raise DatasetError(
            f"{where} for the dataset '{name}': its '{label_key}' feature is not a class "
            f"label. {fix}"
        )
    record = BUILTIN.get(name)
    class_names = record.class_names if record and record.class_names else tuple(names)
    if len(class_names) != len(names):
        class_names = tuple(names)

    file_format = getattr(info.file_format, "value", str(info.file_format))
    if file_format != "array_record" and not tensorflow_available():
        raise DatasetError(
            f"{where} for the dataset '{name}' is in the {file_format} format, which only "
            "TensorFlow can read, and TensorFlow is not installed. Install it (pip install "
            "tensorflow-cpu), or prepare the dataset again with file_format='array_record'."
        )

    def read_split(split: str) -> tuple[np.ndarray, np.ndarray]:
        if file_format == "array_record":
            return _read_data_source(builder.as_data_source(split=split), image_key, label_key)
        return _read_tf_dataset(builder, tfds, split, image_key, label_key)

    try:
        train_images, train_labels = read_split("train")
        test_images, test_labels = read_split(test_split)
    except DatasetError:
        raise
    except Exception as error:  # decoding errors from TFDS or TensorFlow
        raise DatasetError(
            f"{where} for the dataset '{name}' could not be read "
            f"({type(error).__name__}: {error}). {fix}"
        ) from None
    splits_arrays = {
        "train_images": train_images,
        "train_labels": train_labels,
        "test_images": test_images,
        "test_labels": test_labels,
    }
    return build(name, splits_arrays, class_names, source, where, fix)


def _as_image(value, where: str) -> np.ndarray:
    image = np.asarray(value)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise DatasetError(
            f"{where} has images of dtype {image.dtype} and shape {image.shape}; jaxcnn needs "
            "uint8 images of shape [H, W] or [H, W, C]."
        )
    return image if image.ndim == 3 else image[..., np.newaxis]


def _read_data_source(source, image_key: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """All examples of a TFDS data source (random-access, no TensorFlow needed)."""
    count = len(source)
    labels = np.empty(count, dtype=np.int64)
    images = None
    for index in range(count):
        example = source[index]
        image = _as_image(example[image_key], f"TFDS split {source}")
        if images is None:
            images = np.empty((count,) + image.shape, dtype=np.uint8)
        if image.shape != images.shape[1:]:
            raise DatasetError(
                f"TFDS split {source} has images of different sizes ({image.shape} and "
                f"{images.shape[1:]}); jaxcnn needs one image size. Resize the images first."
            )
        images[index] = image
        labels[index] = example[label_key]
    if images is None:
        images = np.empty((0, 1, 1, 1), dtype=np.uint8)
    return images, labels


def _read_tf_dataset(builder, tfds, split: str, image_key: str, label_key: str):
    """One split read whole through TensorFlow (for TFRecord-prepared data)."""
    batch = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    return np.asarray(batch[image_key]), np.asarray(batch[label_key])


class TfdsSplit:
    """One split of an array_record TFDS dataset as a RandomAccessSource: ``source[i]`` is
    ``(uint8 [H, W, C] image, int label)``, read through ``builder.as_data_source``.

    It pickles as its folder and split name; an unpickled copy (in a grain worker process)
    opens the split again from the folder on first use.
    """

    def __init__(self, data_dir: str, split: str, keys: tuple[str, str], data_source=None):
        self.data_dir, self.split, self.keys = data_dir, split, keys
        self._data_source = data_source
        self._length = len(self._open())
        self._where = f"TFDS split '{split}' in {data_dir}"

    def _open(self):
        if self._data_source is None:
            import tensorflow_datasets as tfds

            builder = tfds.builder_from_directory(self.data_dir)
            self._data_source = builder.as_data_source(split=self.split)
        return self._data_source

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_data_source": None}

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        example = self._open()[index]
        image_key, label_key = self.keys
        return _as_image(example[image_key], self._where), int(example[label_key])

    def __repr__(self) -> str:
        return f"TfdsSplit({self.data_dir!r}, {self.split!r}, {self._length} examples)"


def open_data_sources(name: str) -> StreamingDataset | None:
    """The train and test (else validation) splits of ``name`` read example by example, when
    TFDS has it prepared in `tfds_data_dir()` as array_record; None otherwise (then the caller
    loads it whole, which also reports what is wrong with an unusable copy)."""
    if re.match(r"^\w+:[A-Za-z_]", name) or importlib.util.find_spec("tensorflow_datasets") is None:
        return None
    import tensorflow_datasets as tfds

    with _tfds_offline_lookup():
        try:
            builder = tfds.builder(name, data_dir=os.fspath(tfds_data_dir()))
            if not builder.is_prepared():
                return None
        except Exception:  # unknown names, odd configs: the whole-dataset path explains
            return None
        info = builder.info
        keys = info.supervised_keys or ("image", "label")
        test_split = next((s for s in ("test", "validation") if s in info.splits), None)
        usable = (getattr(info.file_format, "value", str(info.file_format)) == "array_record"
                  and len(keys) == 2 and all(isinstance(key, str) for key in keys)
                  and all(key in info.features for key in keys)
                  and "train" in info.splits and test_split is not None
                  and getattr(info.features[keys[1]], "names", None))
        if not usable:
            return None
        data_dir = os.fspath(builder.data_dir)
        try:
            splits = [TfdsSplit(data_dir, split, tuple(keys), builder.as_data_source(split=split))
                      for split in ("train", test_split)]
        except Exception:  # missing array_record files or package: loading whole explains
            return None
    names = tuple(info.features[keys[1]].names)
    record = BUILTIN.get(name)
    if record and record.class_names and len(record.class_names) == len(names):
        names = record.class_names
    shape = tuple(getattr(info.features[keys[0]], "shape", ()))
    shape = shape + (1,) if len(shape) == 2 else shape
    known = len(shape) == 3 and all(isinstance(size, int) for size in shape)
    return StreamingDataset(
        name=name, train=splits[0], test=splits[1], num_classes=len(names), class_names=names,
        channels=shape[-1] if len(shape) == 3 and isinstance(shape[-1], int) else 3,
        source=f"TFDS {data_dir} (array_record, read while training)",
        image_shape=shape if known else None)
