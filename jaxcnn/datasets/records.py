"""One record per built-in dataset: its files, checksums, shape, class names and where it lives.

Every source reads these records: the raw-file readers (file names, layout), the downloader
(hosts, sha256), the system-copy finder (Debian's folders), `jaxcnn.plan` (image shape without
the data) and the error messages (how to get the data).
"""

from __future__ import annotations

import dataclasses
import pathlib


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """One file as its publisher serves it (the compressed file itself)."""

    name: str
    sha256: str
    size: int  # bytes


@dataclasses.dataclass(frozen=True)
class DatasetRecord:
    """What jaxcnn knows about a built-in dataset before it has any of its files."""

    name: str
    title: str
    layout: str  # "idx": four MNIST-style IDX files; "cifar10" / "cifar100": the python pickles
    image_shape: tuple[int, int, int]  # (H, W, C)
    num_train: int
    num_test: int
    num_classes: int
    files: tuple[RemoteFile, ...]  # what a download fetches (checked by sha256 before use)
    hosts: tuple[str, ...]  # base URLs; a file's URL is host + file name, tried in order
    class_names: tuple[str, ...] | None = None  # None: read from the dataset's own files
    system_roots: tuple[pathlib.Path, ...] = ()  # folders a system package installs it into
    archive_folder: str | None = None  # the folder a .tar.gz unpacks to (CIFAR)


# The names of the four IDX files (each plain or .gz), by split and kind.
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
CIFAR100_FILES = ("train", "test", "meta")

MNIST = DatasetRecord(
    name="mnist",
    title="MNIST",
    layout="idx",
    image_shape=(28, 28, 1),
    num_train=60000,
    num_test=10000,
    num_classes=10,
    class_names=tuple(str(digit) for digit in range(10)),
    files=(
        RemoteFile("train-images-idx3-ubyte.gz",
                   "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422),
        RemoteFile("train-labels-idx1-ubyte.gz",
                   "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881),
        RemoteFile("t10k-images-idx3-ubyte.gz",
                   "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877),
        RemoteFile("t10k-labels-idx1-ubyte.gz",
                   "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542),
    ),
    hosts=(
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
)

FASHION_MNIST = DatasetRecord(
    name="fashion_mnist",
    title="Fashion-MNIST",
    layout="idx",
    image_shape=(28, 28, 1),
    num_train=60000,
    num_test=10000,
    num_classes=10,
    class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    files=(
        RemoteFile("train-images-idx3-ubyte.gz",
                   "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84", 26421880),
        RemoteFile("train-labels-idx1-ubyte.gz",
                   "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845", 29515),
        RemoteFile("t10k-images-idx3-ubyte.gz",
                   "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073", 4422102),
        RemoteFile("t10k-labels-idx1-ubyte.gz",
                   "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5", 5148),
    ),
    hosts=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    # Debian's `apt-get install dataset-fashion-mnist`.
    system_roots=(pathlib.Path("/usr/share/datasets/fashion-mnist"),),
)

CIFAR10 = DatasetRecord(
    name="cifar10",
    title="CIFAR-10",
    layout="cifar10",
    image_shape=(32, 32, 3),
    num_train=50000,
    num_test=10000,
    num_classes=10,
    class_names=("airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck"),
    files=(
        RemoteFile("cifar-10-python.tar.gz",
                   "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce", 170498071),
    ),
    hosts=(
        "https://www.cs.toronto.edu/~kriz/",
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
    ),
    archive_folder="cifar-10-batches-py",
)

CIFAR100 = DatasetRecord(
    name="cifar100",
    title="CIFAR-100",
    layout="cifar100",
    image_shape=(32, 32, 3),
    num_train=50000,
    num_test=10000,
    num_classes=100,
    class_names=None,  # the 100 fine label names, read from the archive's `meta` file
    files=(
        RemoteFile("cifar-100-python.tar.gz",
                   "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7", 169001437),
    ),
    hosts=("https://www.cs.toronto.edu/~kriz/",),
    archive_folder="cifar-100-python",
)

BUILTIN: dict[str, DatasetRecord] = {r.name: r for r in (MNIST, FASHION_MNIST, CIFAR10, CIFAR100)}
BUILTIN_NAMES = tuple(BUILTIN)
