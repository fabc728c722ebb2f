"""Sources 2 and 3: raw files in ``data_dir`` and system copies (Debian's Fashion-MNIST).

- MNIST and Fashion-MNIST: the four IDX files (`records.IDX_FILES`), each plain or gzipped,
  in ``data_dir`` or ``data_dir/<name>``.
- CIFAR-10: ``data_dir/cifar-10-batches-py/`` (data_batch_1..5, test_batch, batches.meta);
  CIFAR-100: ``data_dir/cifar-100-python/`` (train, test, meta; the 100 fine labels). These are
  pickles, read with an unpickler that only allows NumPy's array reconstruction.
"""

from __future__ import annotations

import contextlib
import importlib
import pathlib
import pickle
from collections.abc import Callable

import numpy as np

from jaxcnn.datasets import records
from jaxcnn.datasets.base import Dataset, DatasetError, build, read_bytes
from jaxcnn.datasets.records import BUILTIN, BUILTIN_NAMES, CIFAR10_FILES, CIFAR100_FILES, IDX_FILES

# Folders a system package may have installed a dataset into, by name (from the records).
SYSTEM_DATA_ROOTS: dict[str, tuple[pathlib.Path, ...]] = {
    r.name: r.system_roots for r in BUILTIN.values() if r.system_roots}

_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_CIFAR_ROW_BYTES = 3 * 32 * 32


def from_data_dir(name: str, data_dir: pathlib.Path | None, notes: list[str]) -> Dataset | None:
    """The built-in dataset `name` from the raw files in ``data_dir``. A data_dir the user named
    must hold them: one that does not is a DatasetError naming the folder and the files expected
    (never a silent fall back to another source)."""
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
    check_data_dir(name, data_dir)
    if BUILTIN[name].layout == "idx":
        folders = (data_dir, data_dir / name)
        dataset = first_idx_folder(name, folders, "IDX files in")
    elif name == "cifar10":
        dataset = load_cifar(name, data_dir / records.CIFAR10.archive_folder)
    else:
        dataset = load_cifar(name, data_dir / records.CIFAR100.archive_folder)
    if dataset is None:  # check_data_dir saw the files; they went between the two looks
        raise _no_dataset_error(name, data_dir)
    return dataset


def check_data_dir(name: str, data_dir: pathlib.Path) -> None:
    """Without reading any data: DatasetError unless ``data_dir`` is a folder that holds files
    of the built-in dataset `name` (whether they are complete and sound is checked on loading)."""
    if not data_dir.is_dir():
        raise DatasetError(
            f"The data_dir {data_dir} given for the dataset '{name}' is not a directory. "
            "Pass the folder that holds the raw dataset files, or leave data_dir unset."
        )
    if BUILTIN[name].layout == "idx":
        present = any(_find_idx_file(folder, stem) is not None
                      for folder in (data_dir, data_dir / name) for stem in IDX_FILES.values())
    else:
        present = (data_dir / BUILTIN[name].archive_folder).is_dir()
    if not present:
        raise _no_dataset_error(name, data_dir)


def _no_dataset_error(name: str, data_dir: pathlib.Path) -> DatasetError:
    record = BUILTIN[name]
    if record.layout == "idx":
        expected = (f"the four IDX files {', '.join(IDX_FILES.values())} (each plain or .gz), "
                    f"in it or in {data_dir / name}")
    else:
        needed = CIFAR10_FILES if name == "cifar10" else CIFAR100_FILES
        expected = (f"the folder {record.archive_folder}/ (extracted from {record.files[0].name}) "
                    f"with {', '.join(needed)}")
    return DatasetError(
        f"The data_dir {data_dir} given for the dataset '{name}' holds none of its files: "
        f"jaxcnn expected {expected}. Pass the folder that holds them, or leave data_dir unset "
        "to let jaxcnn find the dataset itself (its cache, a system copy, a download)."
    )


def from_system_copy(name: str, data_dir: pathlib.Path | None, notes: list[str]) -> Dataset | None:
    roots = SYSTEM_DATA_ROOTS.get(name, ())
    if not roots:
        return None
    dataset = first_idx_folder(name, roots, "system copy")
    if dataset is None:
        notes.append(f"there is no system copy in {', '.join(str(r) for r in roots)}")
    return dataset


def first_idx_folder(
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
    class_names = BUILTIN[name].class_names
    fix = "Replace the IDX files with the original ones."
    return build(name, splits, class_names, source, f"The IDX files of {source}", fix)


def _read_idx(path: pathlib.Path, magic: int) -> np.ndarray:
    """One IDX file of unsigned bytes (labels: [N], images: [N, H, W])."""
    fix = "Download the file again (or restore the original) and retry."
    raw = read_bytes(path, fix)
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


def load_cifar(name: str, folder: pathlib.Path) -> Dataset | None:
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
    return build(name, splits, class_names, source, f"The {source}", fix)


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

