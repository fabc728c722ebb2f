"""Tests for jaxcnn.datasets.download against an HTTP server of our own on 127.0.0.1.

The server serves small generated IDX and CIFAR files, and the dataset records are patched to
expect their sha256, so nothing here reaches the internet. Every test gets its own empty cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import socket
import tarfile
import threading
import time

import numpy as np
import pytest
from test_datasets import run_bounded, write_cifar10, write_idx_set

from jaxcnn import datasets
from jaxcnn.datasets import DatasetError, download, rawfiles, records, tfds_source

FAST_S = 5  # an offline or broken download must give up well within this


@dataclasses.dataclass
class Server:
    """What the test server serves, by URL path, and how it misbehaves."""

    url: str = ""
    files: dict[str, bytes] = dataclasses.field(default_factory=dict)
    truncated: set[str] = dataclasses.field(default_factory=set)  # half the body, then close
    stalled: set[str] = dataclasses.field(default_factory=set)  # half the body, then silence
    requests: list[str] = dataclasses.field(default_factory=list)
    release: threading.Event = dataclasses.field(default_factory=threading.Event)


@pytest.fixture
def server():
    served = Server()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            served.requests.append(self.path)
            body = served.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            broken = self.path in served.truncated or self.path in served.stalled
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if broken else body)
            self.wfile.flush()
            if self.path in served.stalled:
                served.release.wait(FAST_S * 2)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    served.url = f"http://127.0.0.1:{httpd.server_port}"
    yield served
    served.release.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """An empty cache, downloads on, no proxy, no system copies and no TFDS downloads."""
    monkeypatch.setenv("JAXCNN_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setenv("JAXCNN_DOWNLOAD", "1")
    monkeypatch.delenv("JAXCNN_DOWNLOAD_MIRROR", raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setattr(rawfiles, "SYSTEM_DATA_ROOTS", {})
    monkeypatch.setattr(tfds_source, "tensorflow_available", lambda: False)


def publish(monkeypatch, server: Server, name: str, files: dict[str, bytes]) -> None:
    """Serve `files` as the dataset `name` from the mirror, with their checksums in its record."""
    remote = tuple(records.RemoteFile(file, hashlib.sha256(data).hexdigest(), len(data))
                   for file, data in files.items())
    record = dataclasses.replace(records.BUILTIN[name], files=remote)
    monkeypatch.setitem(records.BUILTIN, name, record)
    server.files.update({f"/{name}/{file}": data for file, data in files.items()})
    monkeypatch.setenv("JAXCNN_DOWNLOAD_MIRROR", server.url)


def idx_gz_files(folder, seed=0) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    """The four gzipped IDX files of a tiny MNIST-like set (by name) and the arrays in them."""
    arrays = write_idx_set(folder, gz=True, seed=seed)
    files = {f"{stem}.gz": (folder / f"{stem}.gz").read_bytes()
             for stem in records.IDX_FILES.values()}
    return files, arrays


def cifar10_archive(folder, extra: tarfile.TarInfo | None = None) -> bytes:
    """A tiny cifar-10-python.tar.gz, optionally with one `extra` member."""
    write_cifar10(folder)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder / records.CIFAR10.archive_folder, arcname=records.CIFAR10.archive_folder)
        if extra is not None:
            data = b"evil" if extra.isfile() else b""
            extra.size = len(data)
            tar.addfile(extra, io.BytesIO(data))
    return buffer.getvalue()


def files_in(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_mnist_is_downloaded_checked_cached_and_reused(tmp_path, monkeypatch, server):
    files, arrays = idx_gz_files(tmp_path / "published")
    publish(monkeypatch, server, "mnist", files)
    ds = run_bounded(lambda: datasets.load("mnist"), FAST_S)
    np.testing.assert_array_equal(ds.train_images[..., 0], arrays["train_images"])
    np.testing.assert_array_equal(ds.test_labels, arrays["test_labels"])
    folder = tmp_path / "cache" / "downloads" / "mnist"
    assert ds.source == f"downloaded from {server.url}/mnist/ into {folder}"
    assert files_in(folder) == sorted(files)  # no temporary files left
    for file, data in files.items():
        assert (folder / file).read_bytes() == data
    assert (tmp_path / "cache" / "mnist.npz").is_file()

    server.files.clear()  # from now on the server has nothing
    assert "jaxcnn cache" in datasets.load("mnist").source
    (tmp_path / "cache" / "mnist.npz").unlink()
    again = datasets.load("mnist")  # from the downloaded files, checked again
    assert again.source == f"downloaded earlier into {folder}"
    np.testing.assert_array_equal(again.test_images[..., 0], arrays["test_images"])
    assert len(server.requests) == len(files)


def test_damaged_download_is_fetched_again(tmp_path, monkeypatch, server):
    files, arrays = idx_gz_files(tmp_path / "published")
    publish(monkeypatch, server, "mnist", files)
    folder = tmp_path / "cache" / "downloads" / "mnist"
    folder.mkdir(parents=True)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"half a file")
    ds = run_bounded(lambda: datasets.load("mnist"), FAST_S)
    np.testing.assert_array_equal(ds.test_labels, arrays["test_labels"])
    assert (folder / "t10k-labels-idx1-ubyte.gz").read_bytes() == files["t10k-labels-idx1-ubyte.gz"]


def test_tampered_file_is_refused_and_deleted(tmp_path, monkeypatch, server):
    files, _ = idx_gz_files(tmp_path / "published")
    publish(monkeypatch, server, "mnist", files)
    first = "train-images-idx3-ubyte.gz"
    tampered = bytearray(files[first])
    tampered[100] ^= 0xFF
    server.files[f"/mnist/{first}"] = bytes(tampered)
    with pytest.raises(DatasetError) as info:
        run_bounded(lambda: datasets.load("mnist"), FAST_S)
    message = str(info.value)
    assert first in message and "checksum" in message
    assert hashlib.sha256(files[first]).hexdigest() in message  # expected
    assert hashlib.sha256(tampered).hexdigest() in message  # got
    assert files_in(tmp_path / "cache") == []


def test_truncated_transfer_leaves_nothing_and_falls_through(tmp_path, monkeypatch, server):
    files, _ = idx_gz_files(tmp_path / "published")
    publish(monkeypatch, server, "fashion_mnist", files)
    server.truncated.add("/fashion_mnist/train-labels-idx1-ubyte.gz")
    start = time.monotonic()
    with pytest.raises(DatasetError) as info:
        run_bounded(lambda: datasets.load("fashion_mnist"), FAST_S * 2)
    assert time.monotonic() - start < FAST_S
    message = str(info.value)
    assert "Could not find the dataset 'fashion_mnist'" in message
    assert "the download of train-labels-idx1-ubyte.gz" in message and "stopped after" in message
    # The file before it was complete and checked, so it is kept; nothing else is.
    assert files_in(tmp_path / "cache" / "downloads") == ["train-images-idx3-ubyte.gz"]


def test_stalled_transfer_times_out(tmp_path, monkeypatch, server):
    files, _ = idx_gz_files(tmp_path / "published")
    publish(monkeypatch, server, "fashion_mnist", files)
    server.stalled.add("/fashion_mnist/train-images-idx3-ubyte.gz")
    monkeypatch.setattr(download, "NETWORK_TIMEOUT_S", 0.5)
    start = time.monotonic()
    with pytest.raises(DatasetError, match="sent nothing for 0.5 s"):
        run_bounded(lambda: datasets.load("fashion_mnist"), FAST_S * 2)
    assert time.monotonic() - start < FAST_S
    assert files_in(tmp_path / "cache" / "downloads") == []


def test_server_gone_falls_through_fast(tmp_path, monkeypatch):
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("JAXCNN_DOWNLOAD_MIRROR", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(DatasetError) as info:
        run_bounded(lambda: datasets.load("cifar10"), FAST_S * 2)
    assert time.monotonic() - start < FAST_S
    message = str(info.value)
    assert "the download of cifar-10-python.tar.gz (from JAXCNN_DOWNLOAD_MIRROR) failed" in message
    assert f"http://127.0.0.1:{port}/cifar10/cifar-10-python.tar.gz could not be reached" in message
    assert files_in(tmp_path / "cache") == []


def test_offline_dns_gives_up_within_seconds(monkeypatch):
    release = threading.Event()

    def hanging_getaddrinfo(*args, **kwargs):
        release.wait(FAST_S * 2)
        raise socket.gaierror("offline")

    monkeypatch.setattr(socket, "getaddrinfo", hanging_getaddrinfo)
    monkeypatch.setattr(download, "DNS_TIMEOUT_S", 0.2)
    notes: list[str] = []
    start = time.monotonic()
    try:
        assert run_bounded(lambda: download.from_download("mnist", None, notes), FAST_S) is None
    finally:
        release.set()
    assert time.monotonic() - start < 2
    assert len(notes) == 1 and "DNS lookup of storage.googleapis.com" in notes[0]
    assert "yann.lecun.com" in notes[0]  # every host was given up on


def test_downloads_can_be_turned_off(monkeypatch, server):
    monkeypatch.setenv("JAXCNN_DOWNLOAD", "0")
    monkeypatch.setenv("JAXCNN_DOWNLOAD_MIRROR", server.url)
    notes: list[str] = []
    assert download.from_download("cifar100", None, notes) is None
    assert notes == ["downloads are turned off (JAXCNN_DOWNLOAD=0)"]
    assert server.requests == []
    assert download.how_to_download(records.CIFAR100).startswith("unset JAXCNN_DOWNLOAD")


def test_how_to_download_names_files_host_and_mirror():
    phrase = download.how_to_download(records.MNIST)
    assert "run once with network access" in phrase and records.MNIST.hosts[0] in phrase
    assert "t10k-labels-idx1-ubyte.gz" in phrase and "JAXCNN_DOWNLOAD_MIRROR=URL" in phrase
    assert "TensorFlow" not in phrase


def test_mirror_must_be_a_url(monkeypatch):
    monkeypatch.setenv("JAXCNN_DOWNLOAD_MIRROR", "127.0.0.1:8000")
    with pytest.raises(DatasetError, match="not an http"):
        datasets.load("cifar10")


def test_cifar10_archive_is_downloaded_and_extracted(tmp_path, monkeypatch, server):
    archive = cifar10_archive(tmp_path / "published")
    publish(monkeypatch, server, "cifar10", {"cifar-10-python.tar.gz": archive})
    ds = run_bounded(lambda: datasets.load("cifar10"), FAST_S)
    expected = rawfiles.load_cifar("cifar10", tmp_path / "published" / "cifar-10-batches-py")
    np.testing.assert_array_equal(ds.train_images, expected.train_images)
    np.testing.assert_array_equal(ds.test_labels, expected.test_labels)
    assert ds.class_names == records.CIFAR10.class_names
    folder = tmp_path / "cache" / "downloads" / "cifar10"
    assert ds.source == f"downloaded from {server.url}/cifar10/ into {folder}"
    assert sorted(p.name for p in folder.iterdir()) == ["cifar-10-batches-py",
                                                         "cifar-10-python.tar.gz"]
    (tmp_path / "cache" / "cifar10.npz").unlink()
    assert datasets.load("cifar10").source == f"downloaded earlier into {folder}"
    assert len(server.requests) == 1


def link_member(name: str) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return member


def device_member(name: str) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = tarfile.CHRTYPE
    return member


@pytest.mark.parametrize("member, problem", [
    (tarfile.TarInfo("../evil"), "'..'"),
    (tarfile.TarInfo("cifar-10-batches-py/../../evil"), "'..'"),
    (tarfile.TarInfo("/tmp/jaxcnn-test-evil"), "absolute path"),
    (link_member("cifar-10-batches-py/passwd"), "link or a device"),
    (device_member("cifar-10-batches-py/tty"), "link or a device"),
    (tarfile.TarInfo("elsewhere.txt"), "outside cifar-10-batches-py/"),
])
def test_unsafe_archive_members_are_refused(tmp_path, monkeypatch, server, member, problem):
    archive = cifar10_archive(tmp_path / "published", extra=member)
    publish(monkeypatch, server, "cifar10", {"cifar-10-python.tar.gz": archive})
    with pytest.raises(DatasetError, match="refused to extract") as info:
        run_bounded(lambda: datasets.load("cifar10"), FAST_S)
    assert member.name in str(info.value) and problem in str(info.value)
    folder = tmp_path / "cache" / "downloads" / "cifar10"
    assert [p.name for p in folder.iterdir()] == ["cifar-10-python.tar.gz"]  # checked, kept
    assert not (tmp_path / "evil").exists() and not (tmp_path / "cache" / "evil").exists()
