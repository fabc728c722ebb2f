"""Tests for streaming TFDS datasets prepared as array_record (tfds_source.open_data_sources),
without TensorFlow, on the tiny dataset that test_datasets.py prepares."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from jaxcnn import datasets
from jaxcnn.datasets import tfds_source
from test_datasets import TINY_CLASSES, prepare_tiny_tfds_dataset, run_bounded, tiny_example


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Empty cache and TFDS folders; act as if TensorFlow were not installed."""
    monkeypatch.setenv("JAXCNN_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setattr(tfds_source, "tensorflow_available", lambda: False)


def examples(source) -> dict[bytes, int]:
    return {image.tobytes(): label for image, label in (source[i] for i in range(len(source)))}


def expected(start: int, count: int) -> dict[bytes, int]:
    return {e["image"].tobytes(): e["label"] for e in map(tiny_example, range(start, start + count))}


def test_array_record_dataset_is_streamed(tmp_path):
    prepare_tiny_tfds_dataset(tmp_path / "tfds")
    stream = run_bounded(lambda: datasets.open_streaming("jaxcnn_tiny_images"))
    assert isinstance(stream.train, tfds_source.TfdsSplit)
    assert (stream.num_train, stream.num_test) == (7, 3)
    assert stream.class_names == TINY_CLASSES and stream.num_classes == 3
    assert stream.channels == 3 and stream.image_shape == (8, 8, 3)
    assert stream.source.startswith("TFDS") and "array_record" in stream.source
    image, label = stream.train[0]
    assert image.dtype == np.uint8 and image.shape == (8, 8, 3) and isinstance(label, int)
    # array_record shuffles on write: compare as sets of (image, label) examples.
    assert examples(stream.train) == expected(0, 7)
    assert examples(stream.test) == expected(100, 3)
    assert not (tmp_path / "cache").exists()  # nothing was loaded whole


def test_split_pickles_small_and_reads_in_a_new_process(tmp_path):
    prepare_tiny_tfds_dataset(tmp_path / "tfds")
    stream = run_bounded(lambda: datasets.open_streaming("jaxcnn_tiny_images"))
    blob = pickle.dumps(stream.test)
    assert len(blob) < 1000
    script = ("import pickle, sys; source = pickle.loads(sys.stdin.buffer.read()); "
              "sys.stdout.buffer.write(pickle.dumps([source[i] for i in range(len(source))]))")
    env = {key: value for key, value in os.environ.items() if key != "TFDS_DATA_DIR"}
    done = subprocess.run([sys.executable, "-c", script], input=blob, capture_output=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    read = pickle.loads(done.stdout)
    assert {image.tobytes(): label for image, label in read} == expected(100, 3)


def test_tfds_mock_data_patches_data_sources(tmp_path):
    import tensorflow_datasets as tfds

    prepare_tiny_tfds_dataset(tmp_path / "tfds")
    with tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_FILES,
                                data_dir=str(tmp_path / "tfds")):
        stream = run_bounded(lambda: tfds_source.open_data_sources("jaxcnn_tiny_images"))
        assert (stream.num_train, stream.num_test) == (5, 5)
        for image, label in (stream.train[i] for i in range(5)):
            assert image.dtype == np.uint8 and image.shape == (8, 8, 3) and label in (0, 1, 2)


@pytest.mark.parametrize("name", ["mnist", "no_such_dataset_xyz", "huggingface:mnist"])
def test_unprepared_or_unknown_names_give_none(name):
    assert run_bounded(lambda: tfds_source.open_data_sources(name)) is None
