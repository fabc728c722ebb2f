"""Tests for image folders (jaxcnn.datasets.imagefolder): layout, channels, sizes, unreadable
images, streaming sources, on small folders written here (some from Debian's Fashion-MNIST)."""

from __future__ import annotations

import io
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import require_fashion_mnist
from jaxcnn import datasets, transforms
from jaxcnn.datasets import DatasetError, imagefolder

PER_CLASS = {"train": 50, "test": 20}


def save(path, array, **options):
    """``array`` (uint8 [H, W] or [H, W, C]) saved as an image at ``path`` (folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)
    return path


def random_image(rng, height, width, channels=3):
    shape = (height, width) if channels == 1 else (height, width, channels)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def png_bytes(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def mixed(count):
    """The order an image folder reads a split of ``count`` images in: its i-th example is the
    ``mixed(count)[i]``-th image in (class, path) order."""
    return np.random.default_rng(imagefolder.ORDER_SEED).permutation(count)


def position(count, index):
    """Where the ``index``-th image in (class, path) order of a split of ``count`` is read."""
    return int(np.flatnonzero(mixed(count) == index)[0])


def tiny_folder(root, classes=("cat", "dog"), per_class=2, size=(6, 5), seed=0):
    """root/{train,test}/<class>/<i>.png of random RGB images."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for name in classes:
            for index in range(per_class):
                save(root / split / name / f"{index}.png", random_image(rng, *size))
    return root


@pytest.fixture(scope="module")
def fashion_folder(tmp_path_factory):
    """50 train and 20 test Fashion-MNIST images per class as PNGs, and the arrays written, in
    the order the folder is read: by class, then by file name, then mixed by `mixed`."""
    require_fashion_mnist()
    data = datasets.load("fashion_mnist")
    root = tmp_path_factory.mktemp("fashion")
    expected = {}
    for split, count in PER_CLASS.items():
        images, labels = getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")
        chosen = np.concatenate([np.flatnonzero(labels == c)[:count] for c in range(10)])
        for index in chosen:
            folder = f"{labels[index]}_{data.class_names[labels[index]].replace('/', '-')}"
            save(root / split / folder / f"{index:05d}.png", images[index, ..., 0])
        chosen = chosen[mixed(len(chosen))]
        expected[split] = (images[chosen], labels[chosen])
    return root, expected


def test_fashion_mnist_folder_gives_back_the_same_pixels_and_labels(fashion_folder):
    root, expected = fashion_folder
    ds = datasets.load("imagefolder", root)
    assert ds.class_names == tuple(sorted(ds.class_names)) and ds.num_classes == 10
    assert ds.class_names[0] == "0_T-shirt-top" and ds.image_shape == (28, 28, 1)
    for split in ("train", "test"):
        images, labels = expected[split]
        np.testing.assert_array_equal(getattr(ds, f"{split}_images"), images)
        np.testing.assert_array_equal(getattr(ds, f"{split}_labels"), labels)
        assert getattr(ds, f"{split}_labels").dtype == np.int32
    assert ds.source == f"image folder {root}" and ds.warning is None

    stream = datasets.open_streaming("imagefolder", root)
    assert (stream.num_train, stream.num_test) == (500, 200)
    assert stream.channels == 1 and stream.image_shape == (28, 28, 1)
    assert stream.class_names == ds.class_names and stream.warning is None
    for index in (0, 137, 499):
        image, label = stream.train[index]
        np.testing.assert_array_equal(image, ds.train_images[index])
        assert label == ds.train_labels[index]


def test_first_examples_mix_the_classes_the_same_way_on_every_load(fashion_folder):
    root, _ = fashion_folder
    first = datasets.load("imagefolder", root)
    assert len(np.unique(first.train_labels[:20])) >= 5  # what data.max_train_examples=20 keeps
    again = datasets.load("imagefolder", root)
    stream = datasets.open_streaming("imagefolder", root)
    for split in ("train", "test"):
        labels = getattr(first, f"{split}_labels")
        np.testing.assert_array_equal(getattr(again, f"{split}_labels"), labels)
        np.testing.assert_array_equal(getattr(stream, split).labels, labels)
        np.testing.assert_array_equal(getattr(again, f"{split}_images"),
                                      getattr(first, f"{split}_images"))
    for index in range(20):
        image, label = stream.train[index]
        np.testing.assert_array_equal(image, first.train_images[index])
        assert label == first.train_labels[index]


def test_rgb_jpegs_of_various_sizes_need_image_size(tmp_path):
    rng = np.random.default_rng(1)
    sizes = [(40, 30), (64, 64), (30, 50)]
    for split in ("train", "test"):
        for name, ext in (("ant", ".JPG"), ("bee", ".jpeg"), ("cow", ".Png")):
            for i, (h, w) in enumerate(sizes):
                save(tmp_path / split / name / f"{i}{ext}", random_image(rng, h, w), quality=95)
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    save(tmp_path / "train" / "ant" / ".hidden.png", random_image(rng, 9, 9))

    # The train images in (class, path) order, and their (height, width), then as read.
    files = [tmp_path / "train" / name / f"{i}{ext}"
             for name, ext in (("ant", ".JPG"), ("bee", ".jpeg"), ("cow", ".Png"))
             for i in range(len(sizes))]
    order = mixed(len(files))
    files, hw = [files[k] for k in order], [sizes[k % len(sizes)] for k in order]

    ds = datasets.load("imagefolder", tmp_path, image_size=16)
    assert ds.train_images.shape == (9, 16, 16, 3) and ds.test_images.shape == (9, 16, 16, 3)
    assert ds.class_names == ("ant", "bee", "cow")
    assert ds.train_labels.tolist() == np.repeat([0, 1, 2], 3)[order].tolist()
    for image, path in zip(ds.train_images, files):
        np.testing.assert_array_equal(
            image, transforms.resize_shorter_center_crop(np.asarray(Image.open(path)), 16))

    # The error names the first image read and the first one read after it of another size.
    other = next(i for i in range(1, len(hw)) if hw[i] != hw[0])
    said = [re.escape(f"{files[i].parent.name}/{files[i].name} is {hw[i][1]}x{hw[i][0]}")
            for i in (0, other)]
    with pytest.raises(DatasetError, match=rf"{said[0]}.*{said[1]}.*data\.image_size"):
        datasets.load("imagefolder", tmp_path)

    stream = datasets.open_streaming("imagefolder", tmp_path)
    assert stream.image_shape is None and stream.channels == 3 and stream.num_train == 9
    assert [stream.train[i][0].shape for i in range(9)] == [(h, w, 3) for h, w in hw]


def test_channels_one_only_when_every_image_is_greyscale(tmp_path):
    rng = np.random.default_rng(2)
    grey = random_image(rng, 8, 8, channels=1)
    root = tiny_folder(tmp_path / "mixed", size=(8, 8))
    save(root / "train" / "cat" / "grey.png", grey)
    rgba = save(root / "test" / "dog" / "rgba.png", random_image(rng, 8, 8, channels=4))
    Image.fromarray(random_image(rng, 8, 8)).convert("P").save(root / "test" / "dog" / "p.png")
    ds = datasets.load("imagefolder", root)
    assert ds.image_shape == (8, 8, 3)
    # train: cat/0, cat/1, cat/grey, dog/0, dog/1; test: cat/0, cat/1, dog/0, dog/1, p, rgba
    np.testing.assert_array_equal(ds.train_images[position(5, 2)],
                                  np.repeat(grey[..., None], 3, axis=-1))
    np.testing.assert_array_equal(ds.test_images[position(6, 5)],
                                  np.asarray(Image.open(rgba))[..., :3])
    assert datasets.open_streaming("imagefolder", root).channels == 3

    for split in ("train", "test"):  # greyscale, greyscale with alpha, 16-bit and 1-bit
        folder = tmp_path / "grey" / split
        save(folder / "a" / "l.png", grey)
        Image.fromarray(grey).convert("LA").save(folder / "a" / "la.png")
        save(folder / "b" / "i16.png", grey.astype(np.uint16) * 257)
        Image.fromarray(grey).convert("1").save(folder / "b" / "1.png")
    ds = datasets.load("imagefolder", tmp_path / "grey")
    assert ds.image_shape == (8, 8, 1)
    # a/l.png, a/la.png, b/1.png, b/i16.png (16-bit: its high byte is read)
    np.testing.assert_array_equal(ds.train_images[position(4, 0), ..., 0], grey)  # a/l.png
    np.testing.assert_array_equal(ds.train_images[position(4, 3), ..., 0], grey)  # b/i16.png
    stream = datasets.open_streaming("imagefolder", tmp_path / "grey")
    assert stream.channels == 1 and stream.image_shape == (8, 8, 1)
    assert stream.train[position(4, 3)][0].shape == (8, 8, 1)


def test_unreadable_images_are_skipped_with_a_warning(tmp_path):
    root = tiny_folder(tmp_path, per_class=3, size=(8, 8))
    corrupt = root / "train" / "cat" / "x.png"
    corrupt.write_bytes(np.random.default_rng(3).bytes(300))
    real = png_bytes(np.random.default_rng(4).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    truncated = root / "test" / "dog" / "half.png"
    truncated.write_bytes(real[:len(real) // 2])

    ds = datasets.load("imagefolder", root)
    assert (ds.num_train, ds.num_test) == (6, 6)
    assert "Skipped 2 of 14 images" in ds.warning
    assert str(corrupt) in ds.warning and str(truncated) in ds.warning

    # Streaming reads headers only: the truncated PNG passes, and fails when it is decoded.
    stream = datasets.open_streaming("imagefolder", root)
    assert (stream.num_train, stream.num_test) == (6, 7)
    assert "Skipped 1 of 14 images" in stream.warning and str(corrupt) in stream.warning
    half = position(7, 6)  # test: cat/0, cat/1, cat/2, dog/0, dog/1, dog/2, dog/half
    with pytest.raises(DatasetError, match=r"half\.png.*Delete or fix.*same command again"):
        stream.test[half]
    for index in set(range(7)) - {half}:
        assert stream.test[index][0].shape == (8, 8, 3)


def test_warning_names_at_most_five_files(tmp_path):
    root = tiny_folder(tmp_path, size=(8, 8))
    for index in range(8):
        (root / "train" / "dog" / f"bad{index}.jpg").write_bytes(b"not a jpeg")
    ds = datasets.load("imagefolder", root)
    assert "Skipped 8 of 16 images" in ds.warning and "and 3 more" in ds.warning
    assert ds.warning.count("bad") == 5


def test_a_class_with_only_unreadable_images_is_an_error(tmp_path):
    root = tiny_folder(tmp_path, size=(8, 8))
    for path in (root / "test" / "dog").iterdir():
        path.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"No image of the classes 'dog' in .*test could be"):
        datasets.load("imagefolder", root)


def test_val_is_the_test_split_when_there_is_no_test(tmp_path):
    root = tiny_folder(tmp_path, size=(8, 8))
    (root / "test").rename(root / "val")
    ds = datasets.load("imagefolder", root)
    assert ds.num_test == 4 and ds.source == f"image folder {root}"
    tiny_folder(root, classes=("cat", "dog"), per_class=1, size=(8, 8))  # test/ again
    ds = datasets.load("imagefolder", root)
    assert ds.num_test == 2 and "test/ is used, val/ is not" in ds.source


def rename(root, old, new):
    tiny_folder(root)
    (root / old).rename(root / new)


def add_empty_class(root, split):
    tiny_folder(root)
    (root / split / "emu").mkdir()
    (root / split / "emu" / "readme.txt").write_text("no images here")


@pytest.mark.parametrize("make, message", [
    (lambda root: None, r"does not exist"),
    (lambda root: root.mkdir(), r"is empty"),
    (lambda root: rename(root, "train", "training"),
     r"has no train/ folder \(it holds 'test', 'training'\)"),
    (lambda root: rename(root, "test", "testing"), r"no test/ or val/ folder"),
    (lambda root: add_empty_class(root, "train"), r"class folders 'emu' in .*train hold no images"),
    (lambda root: add_empty_class(root, "test"), r"class folders 'emu' in .*test hold no images"),
    (lambda root: rename(root, "test/dog", "test/cow"),
     r"only train/ has 'dog'; only test/ has 'cow'"),
])
def test_layout_errors_say_what_is_wrong(tmp_path, make, message):
    root = tmp_path / "images"
    make(root)
    for read in (datasets.load, datasets.open_streaming):
        with pytest.raises(DatasetError, match=message):
            read("imagefolder", root)


def test_folder_of_loose_images_asks_for_class_folders(tmp_path):
    root = tiny_folder(tmp_path)
    for split in ("train", "test"):
        for path in (root / split).rglob("*.png"):
            path.rename(root / split / f"{path.parent.name}{path.name}")
        for folder in ("cat", "dog"):
            (root / split / folder).rmdir()
    with pytest.raises(DatasetError, match=r"no class folders"):
        datasets.load("imagefolder", root)


def test_imagefolder_needs_data_dir():
    with pytest.raises(DatasetError, match="needs data.data_dir"):
        datasets.load("imagefolder")


def test_streaming_source_pickles_and_reads_in_a_new_process(tmp_path):
    root = tiny_folder(tmp_path / "naïve folder", per_class=3, size=(7, 9))
    stream = datasets.open_streaming("imagefolder", root)
    assert isinstance(stream.train, imagefolder.ImageFolderSource)
    blob = pickle.dumps(stream.train)
    assert len(blob) < 2000
    script = ("import pickle, sys; source = pickle.loads(sys.stdin.buffer.read()); "
              "sys.stdout.buffer.write(pickle.dumps([source[i] for i in range(len(source))]))")
    done = subprocess.run([sys.executable, "-c", script], input=blob, capture_output=True,
                          check=True, timeout=120)
    examples = pickle.loads(done.stdout)
    order = mixed(6)
    assert [label for _, label in examples] == np.repeat([0, 1], 3)[order].tolist()
    files = [root / "train" / name / f"{i}.png" for name in ("cat", "dog") for i in range(3)]
    files = [files[k] for k in order]
    assert [stream.train.path(i) for i in range(6)] == [str(path) for path in files]
    for index, (image, _) in enumerate(examples):
        np.testing.assert_array_equal(image, np.asarray(Image.open(files[index])))
        np.testing.assert_array_equal(image, stream.train[index][0])
    assert stream.train.path(-1) == str(files[-1])
    with pytest.raises(IndexError):
        stream.train[6]
