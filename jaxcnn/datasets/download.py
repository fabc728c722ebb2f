"""Source 4: the canonical files of mnist, fashion_mnist, cifar10 and cifar100, downloaded with
the standard library (no TensorFlow) into ``cache_dir()/downloads/<name>/``.

- Files come from the record's hosts, tried in order, or only from
  ``$JAXCNN_DOWNLOAD_MIRROR/<name>/<file>`` when that is set. ``JAXCNN_DOWNLOAD=0`` turns
  downloads off (files already downloaded are still used).
- Each file is streamed into a temporary file beside its final place, checked against its
  published sha256 and only then renamed into place. A mismatch is an error naming both
  checksums; a failed, truncated or interrupted transfer leaves nothing behind.
- An offline machine is detected in seconds: the hosts' names are looked up at once with a
  bounded wait, and connecting and every read time out after NETWORK_TIMEOUT_S. A host that
  fails is not asked again for the other files; when no host delivers a file, a note says why
  and `load` goes on to the next source.
- Files already downloaded are reused once their size and sha256 check out again (hashing is
  cheap next to reading the data: milliseconds for MNIST, under a second for a CIFAR archive);
  one that fails the check is downloaded again.
- A CIFAR archive is extracted after its check: only plain files and folders inside its
  `archive_folder` are accepted (no absolute paths, '..', links or devices), into a temporary
  folder that is then renamed into place. The extracted folder is reused as it is.
"""

from __future__ import annotations

import dataclasses
import email.message
import hashlib
import http.client
import logging
import os
import pathlib
import shutil
import socket
import ssl
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from typing import BinaryIO

from tqdm import tqdm

from jaxcnn.datasets import rawfiles
from jaxcnn.datasets.base import Dataset, DatasetError
from jaxcnn.datasets.cache import cache_dir
from jaxcnn.datasets.records import BUILTIN, DatasetRecord, RemoteFile

log = logging.getLogger(__name__)

DOWNLOAD_ENV = "JAXCNN_DOWNLOAD"  # 0, false, no or off: never download
MIRROR_ENV = "JAXCNN_DOWNLOAD_MIRROR"  # fetch $JAXCNN_DOWNLOAD_MIRROR/<name>/<file> instead
DNS_TIMEOUT_S = 3.0  # the longest wait for the hosts' names to resolve
NETWORK_TIMEOUT_S = 10.0  # the longest wait to connect, and for each read of a transfer
CHUNK_BYTES = 1 << 20

_OFF_VALUES = frozenset({"0", "false", "no", "off"})
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                   TimeoutError, ssl.SSLError)


class _TransferFailed(Exception):
    """A host did not deliver a file; the message says why (it ends up in a note)."""


def downloads_dir(name: str) -> pathlib.Path:
    """Where the downloaded files of the dataset `name` are kept."""
    return cache_dir() / "downloads" / name


def downloads_enabled() -> bool:
    """False when $JAXCNN_DOWNLOAD is 0, false, no or off."""
    return os.environ.get(DOWNLOAD_ENV, "").strip().lower() not in _OFF_VALUES


def from_download(name: str, data_dir: pathlib.Path | None, notes: list[str]) -> Dataset | None:
    """The built-in dataset `name` from its downloaded files, fetching those not yet here."""
    record = BUILTIN.get(name)
    if record is None:
        return None
    folder = downloads_dir(name)
    if record.archive_folder is not None and (folder / record.archive_folder).is_dir():
        return _read_downloaded(record, folder, f"downloaded earlier into {folder}")

    hosts: _Hosts | None = None  # made when the first file is missing
    used: list[str] = []
    for remote in record.files:
        if _is_intact(folder / remote.name, remote):
            continue
        if not downloads_enabled():
            notes.append(f"downloads are turned off ({DOWNLOAD_ENV}={os.environ[DOWNLOAD_ENV]})")
            return None
        hosts = hosts or _Hosts(_base_urls(record))
        base = _fetch(name, remote, folder / remote.name, hosts)
        if base is None:
            notes.append(hosts.failure_note(remote))
            return None
        if base not in used:
            used.append(base)

    source = (f"downloaded from {' and '.join(used)} into {folder}" if used
              else f"downloaded earlier into {folder}")
    if record.archive_folder is not None:
        _extract(folder / record.files[0].name, record.archive_folder, folder)
    return _read_downloaded(record, folder, source)


def how_to_download(record: DatasetRecord) -> str:
    """How to get `record`'s files by download, as a phrase that follows "To fix this, ...; or"."""
    files = ", ".join(f.name for f in record.files)
    megabytes = sum(f.size for f in record.files) / 1e6
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        phrase = (f"make the mirror {mirror} ({MIRROR_ENV}) reachable so that jaxcnn downloads "
                  f"{files} ({megabytes:.0f} MB) from {_mirror_base(mirror, record.name)} into "
                  f"{downloads_dir(record.name)}")
    else:
        phrase = (f"run once with network access so that jaxcnn downloads {files} "
                  f"({megabytes:.0f} MB) from {record.hosts[0]} into "
                  f"{downloads_dir(record.name)} (or set {MIRROR_ENV}=URL to fetch "
                  f"URL/{record.name}/<file name> from a mirror of your own)")
    if not downloads_enabled():
        phrase = (f"unset {DOWNLOAD_ENV} (it is {os.environ[DOWNLOAD_ENV]}, which turns "
                  f"downloads off) and {phrase}")
    return phrase


def _base_urls(record: DatasetRecord) -> tuple[str, ...]:
    """The base URLs to fetch `record`'s files from: the mirror if one is set, else its hosts."""
    mirror = os.environ.get(MIRROR_ENV)
    if not mirror:
        return record.hosts
    if urllib.parse.urlsplit(mirror).scheme not in ("http", "https", "file"):
        raise DatasetError(
            f"{MIRROR_ENV}={mirror} is not an http://, https:// or file:// URL. Set it to the "
            f"URL that serves URL/{record.name}/{record.files[0].name}, or unset it to download "
            f"from {record.hosts[0]}."
        )
    return (_mirror_base(mirror, record.name),)


def _mirror_base(mirror: str, name: str) -> str:
    return f"{mirror.rstrip('/')}/{name}/"


@dataclasses.dataclass
class _Hosts:
    """The base URLs to try, in order, and why those that failed were dropped."""

    bases: tuple[str, ...]
    failed: dict[str, str] = dataclasses.field(default_factory=dict)
    looked_up: bool = False

    def alive(self) -> list[str]:
        """The bases not yet failed; the first call drops those whose names do not resolve."""
        if not self.looked_up:
            self.looked_up = True
            hosts = {base: _host_to_resolve(base) for base in self.bases}
            unresolved = _unresolved_hosts({h for h in hosts.values() if h}, DNS_TIMEOUT_S)
            for base, host in hosts.items():
                if host in unresolved:
                    self.failed[base] = (f"the DNS lookup of {host} failed or took over "
                                         f"{DNS_TIMEOUT_S:g} s (offline?)")
        return [base for base in self.bases if base not in self.failed]

    def failure_note(self, remote: RemoteFile) -> str:
        reasons = ", and ".join(self.failed[base] for base in self.bases if base in self.failed)
        via = f" (from {MIRROR_ENV})" if os.environ.get(MIRROR_ENV) else ""
        return f"the download of {remote.name}{via} failed: {reasons}"


def _host_to_resolve(base: str) -> str | None:
    """The host name to look up before fetching from `base`; None for files and proxies."""
    parts = urllib.parse.urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    if urllib.request.getproxies().get(parts.scheme) and not urllib.request.proxy_bypass(
            parts.hostname):
        return None  # the proxy resolves it
    return parts.hostname


def _unresolved_hosts(hosts: set[str], timeout_s: float) -> set[str]:
    """The names in `hosts` that DNS did not resolve within `timeout_s` (looked up at once)."""
    resolved: set[str] = set()

    def look_up(host: str) -> None:
        try:
            socket.getaddrinfo(host, None)
            resolved.add(host)
        except (OSError, UnicodeError):
            pass

    threads = [threading.Thread(target=look_up, args=(host,), name=f"dns-{host}", daemon=True)
               for host in hosts]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return hosts - set(resolved)


def _fetch(name: str, remote: RemoteFile, dest: pathlib.Path, hosts: _Hosts) -> str | None:
    """Download `remote` into `dest` from the first host that delivers it: its base URL, or
    None when none does (`hosts` records why)."""
    for base in hosts.alive():
        try:
            _download(name, base + remote.name, remote, dest)
        except _TransferFailed as failure:
            hosts.failed[base] = str(failure)
            continue
        return base
    return None


def _download(name: str, url: str, remote: RemoteFile, dest: pathlib.Path) -> None:
    """Stream `url` into a temporary file beside `dest`, check its sha256, rename it to `dest`."""
    log.info("Downloading %s from %s", remote.name, url)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.",
                                            suffix=".part")
    except OSError as error:
        raise _unwritable(dest, error) from None
    tmp = pathlib.Path(tmp_name)
    try:
        with os.fdopen(handle, "wb") as out:
            size, sha256 = _stream(url, remote, out)
        if sha256 != remote.sha256:
            raise DatasetError(
                f"The file {remote.name} of the dataset '{name}' downloaded from {url} does not "
                f"match its published checksum: expected sha256 {remote.sha256} "
                f"({remote.size} bytes), got sha256 {sha256} ({size} bytes). It was deleted. "
                "The server, or a proxy on the way, sent a different file: try again later, "
                f"set {MIRROR_ENV} to a mirror you trust, or get the files another way "
                "and pass their folder as data_dir."
            )
        os.chmod(tmp, 0o644)  # mkstemp makes it private to us
        os.replace(tmp, dest)
    except OSError as error:
        raise _unwritable(dest, error) from None
    finally:
        tmp.unlink(missing_ok=True)


def _stream(url: str, remote: RemoteFile, out: BinaryIO) -> tuple[int, str]:
    """Write the body of `url` to `out`: (bytes written, sha256 hex). _TransferFailed when the
    host cannot be reached, answers with an error, stalls or stops early."""
    digest = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=NETWORK_TIMEOUT_S) as response:
            length = _content_length(response.headers)
            with _progress_bar(remote.name, length or remote.size) as bar:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as error:
        raise _TransferFailed(f"{url} answered HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise _TransferFailed(f"{url} could not be reached ({error.reason})") from None
    except TimeoutError:
        raise _TransferFailed(
            f"{url} sent nothing for {NETWORK_TIMEOUT_S:g} s after {received} bytes") from None
    except _NETWORK_ERRORS as error:
        raise _TransferFailed(f"the transfer from {url} broke off after {received} bytes "
                              f"({type(error).__name__}: {error})") from None
    if length is not None and received < length:
        raise _TransferFailed(
            f"the transfer from {url} stopped after {received} of {length} bytes")
    return received, digest.hexdigest()


def _content_length(headers: email.message.Message) -> int | None:
    try:
        return int(headers["Content-Length"])
    except (TypeError, ValueError):  # missing (None) or not a number
        return None


def _progress_bar(label: str, total: int) -> tqdm:
    """A byte counter on a terminal's stderr; silent when stderr is not a terminal."""
    stderr = sys.stderr
    on_terminal = stderr is not None and stderr.isatty()
    return tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
                file=stderr, disable=not on_terminal)


def _unwritable(path: pathlib.Path, error: OSError) -> DatasetError:
    return DatasetError(
        f"Could not write {path} ({error}). Free some disk space or make "
        f"{path.parent} writable, or set JAXCNN_DATA_DIR to a folder that is."
    )


def _is_intact(path: pathlib.Path, remote: RemoteFile) -> bool:
    """Whether `path` holds `remote` as published (same size and sha256)."""
    if not path.is_file():
        return False
    try:
        intact = path.stat().st_size == remote.size and _sha256(path) == remote.sha256
    except OSError as error:
        raise DatasetError(
            f"Could not read the downloaded file {path} ({error}). Delete it, or make it "
            "readable, and load again."
        ) from None
    if not intact:
        log.warning("The downloaded file %s differs from the published %s: it will be "
                    "downloaded again.", path, remote.name)
    return intact


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _extract(archive: pathlib.Path, folder_name: str, into: pathlib.Path) -> pathlib.Path:
    """Extract `folder_name/` of the checked tar.gz `archive` into `into`, atomically."""
    target = into / folder_name
    try:
        staging = pathlib.Path(tempfile.mkdtemp(dir=into, prefix=f".{folder_name}.",
                                                suffix=".part"))
    except OSError as error:
        raise _unwritable(target, error) from None
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                path = staging.joinpath(*_member_parts(member, folder_name, archive))
                if member.isdir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # a regular file
                with source, open(path, "wb") as out:
                    shutil.copyfileobj(source, out, CHUNK_BYTES)
        extracted = staging / folder_name
        if not extracted.is_dir():
            raise DatasetError(
                f"The archive {archive} holds no folder {folder_name}/. Delete it and load "
                "again to download it anew."
            )
        try:
            os.rename(extracted, target)
        except OSError:
            if not target.is_dir():  # else another process extracted it first
                raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise DatasetError(
            f"Could not extract {archive} into {into} ({error}). Check the free disk space; "
            f"if the archive is damaged, delete it and load again to download it anew."
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _member_parts(member: tarfile.TarInfo, folder_name: str,
                  archive: pathlib.Path) -> tuple[str, ...]:
    """The path parts of an archive member that is safe to extract; DatasetError otherwise."""
    path = pathlib.PurePosixPath(member.name)
    if path.is_absolute() or member.name.startswith("\\"):
        problem = "is an absolute path"
    elif ".." in path.parts:
        problem = "climbs out of its folder with '..'"
    elif not (member.isfile() or member.isdir()):
        problem = "is a link or a device, not a plain file or folder"
    elif path.parts[:1] != (folder_name,):
        problem = f"lies outside {folder_name}/"
    else:
        return path.parts
    raise DatasetError(
        f"The archive {archive} holds the member '{member.name}', which {problem}, so jaxcnn "
        f"refused to extract it. The published archive, whose checksum this one has, holds "
        f"only plain files inside {folder_name}/: please report this to the jaxcnn "
        f"maintainers. Meanwhile, delete {archive} and pass a folder that holds the official "
        f"{folder_name}/ as data_dir."
    )


def _read_downloaded(record: DatasetRecord, folder: pathlib.Path, source: str) -> Dataset:
    """The dataset from its downloaded (and, for CIFAR, extracted) files in `folder`."""
    if record.archive_folder is None:
        dataset = rawfiles.first_idx_folder(record.name, (folder,), "downloaded files in")
    else:
        dataset = rawfiles.load_cifar(record.name, folder / record.archive_folder)
    if dataset is None:  # unreachable: every file was checked just before
        raise DatasetError(f"The downloads folder {folder} lost its files while being read. "
                           "Load again.")
    return dataclasses.replace(dataset, source=source)
