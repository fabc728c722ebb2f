"""The streaming pipeline: a pure function of (seed, epoch, position) whatever the worker count,
process count or resume point; evaluation covers every test example once; training on the
stream matches training in memory where it should."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from conftest import require_fashion_mnist
from jaxcnn import config as config_lib
from jaxcnn import datasets, stream, transforms
from jaxcnn.feed import limit
from jaxcnn.train import AXIS, Trainer
from test_train import synthetic_dataset as synthetic

AUGMENT = stream.Augmentation(crop_padding=2, flip=True)


def small_source(n=50, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 6, 6, 1), dtype=np.uint8)
    return datasets.ArraySource(images, np.arange(n, dtype=np.int32))


def collect(batches):
    try:
        return [{k: np.array(v) for k, v in b.items()} for b in batches]
    finally:
        batches.close()


def train_stream(source, layout, start_step=0, num_steps=None, workers=0, augmentation=AUGMENT):
    total = 2 * layout.steps_per_epoch
    return collect(stream.train_batches(
        source, seed=3, layout=layout, start_step=start_step,
        num_steps=(num_steps or total - start_step), augmentation=augmentation,
        num_workers=workers))


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_each_epoch_visits_distinct_examples_in_a_new_order():
    layout = stream.Layout(global_batch=8, steps_per_epoch=6)
    batches = train_stream(small_source(), layout, augmentation=stream.Augmentation())
    labels = np.concatenate([b["label"] for b in batches])
    first, second = labels[:48], labels[48:]
    assert len(set(first)) == 48 and len(set(second)) == 48  # no example twice in an epoch
    assert not np.array_equal(first, second)
    assert batches[0]["image"].shape == (8, 6, 6, 1) and batches[0]["image"].dtype == np.uint8


def test_the_stream_is_the_same_with_0_1_and_2_workers():
    layout = stream.Layout(global_batch=8, steps_per_epoch=6)
    source = small_source()
    inline = train_stream(source, layout, workers=0)
    assert_same_batches(inline, train_stream(source, layout, workers=1))
    assert_same_batches(inline, train_stream(source, layout, workers=2))


def test_processes_read_their_own_rows_of_the_same_global_batches():
    source = small_source()
    whole = train_stream(source, stream.Layout(8, 6))
    parts = [train_stream(source, stream.Layout(8, 6, process_index=p, process_count=2))
             for p in range(2)]
    joined = [{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(*parts)]
    assert_same_batches(whole, joined)


def test_a_stream_started_at_any_step_continues_the_same_stream():
    source, layout = small_source(), stream.Layout(8, 6)
    whole = train_stream(source, layout)
    for start in (1, 6, 7):
        assert_same_batches(whole[start:], train_stream(source, layout, start_step=start))


def test_augmentation_is_pad_crop_and_flip_of_the_original():
    source, layout = small_source(), stream.Layout(8, 6)
    plain = train_stream(source, layout, augmentation=stream.Augmentation())
    augmented = train_stream(source, layout)
    changed = 0
    for p, a in zip(plain, augmented):
        np.testing.assert_array_equal(p["label"], a["label"])
        for original, image in zip(p["image"], a["image"]):
            padded = np.pad(original, ((2, 2), (2, 2), (0, 0)))
            windows = [padded[y:y + 6, x:x + 6] for y in range(5) for x in range(5)]
            windows += [w[:, ::-1] for w in windows]
            assert any(np.array_equal(image, w) for w in windows)
            changed += not np.array_equal(image, original)
    assert changed > 50


def test_evaluation_covers_every_test_example_once():
    source = small_source(n=23)
    for process_count in (1, 2):
        rows = []
        for p in range(process_count):
            layout = stream.Layout(8, 3, process_index=p, process_count=process_count)
            rows.append(collect(stream.eval_batches(source, layout=layout,
                                                    augmentation=stream.Augmentation())))
        labels = np.concatenate([np.concatenate([b["label"] for b in step]) for step in zip(*rows)])
        masks = np.concatenate([np.concatenate([b["mask"] for b in step]) for step in zip(*rows)])
        assert len(labels) == 24 and masks.sum() == 23
        np.testing.assert_array_equal(labels[masks], np.arange(23))


def test_images_of_different_sizes_need_image_size():
    class Mixed:
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return np.zeros((5 + i, 7, 3), np.uint8), i

    with pytest.raises(datasets.DatasetError, match="data.image_size"):
        train_stream(Mixed(), stream.Layout(2, 2), augmentation=stream.Augmentation())
    resized = train_stream(Mixed(), stream.Layout(2, 2),
                           augmentation=stream.Augmentation(image_size=4, random_resized_crop=True))
    assert resized[0]["image"].shape == (2, 4, 4, 3)


# -- the Trainer on a stream --------------------------------------------------------------------

def run(config, data, devices):
    trainer = Trainer(config, data, Mesh(np.array(devices), (AXIS,)))
    try:
        history = [{**trainer.train_epoch(e), **trainer.evaluate()} for e in range(config["epochs"])]
        return trainer.variables(), history
    finally:
        trainer.close()


def test_streamed_training_on_8_devices_equals_1_device(devices):
    config = config_lib.resolve({
        "model": {"name": "cnn", "cdims": [8, 16], "hdims": [16], "batch_norm": True,
                  "dropout": 0.3},
        "epochs": 2, "batch_size": 32, "eval_batch_size": 24,
        "optimizer": {"name": "momentum", "learning_rate": 0.02},
        "data": {"crop_padding": 2, "flip": True, "num_workers": 0}})
    streaming = datasets.as_streaming(synthetic(n_test=101))
    v1, h1 = run(config, streaming, devices[:1])
    v8, h8 = run(config, streaming, devices)
    for a, b in zip(h1, h8):
        assert a["test_count"] == b["test_count"] == 101
        for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), v1, v8)
    assert h1[-1]["test_accuracy"] >= 0.9


def test_channel_statistics_are_the_float64_mean_and_std():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 9, 7, 3), dtype=np.uint8)
    mean, std = transforms.channel_statistics(images)
    pixels = images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, pixels.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, pixels.std(axis=0), rtol=1e-12)
    # A constant channel: the std floor, never a division by zero.
    assert transforms.channel_statistics(np.full((4, 2, 2, 1), 7, np.uint8)) == ((7 / 255,), (1e-3,))


@pytest.mark.parametrize("channels", [1, 3])
def test_channel_statistics_in_chunks_equal_one_pass(monkeypatch, channels):
    # Chunks and rows that do not divide the pixels: the sums still cover each pixel once.
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (37, 11, 13, channels), dtype=np.uint8)
    whole = transforms.channel_statistics(images)
    monkeypatch.setattr(transforms, "_SUM_CHUNK", 1000)
    monkeypatch.setattr(transforms, "_SUM_WIDTH", 64)
    assert transforms.channel_statistics(images) == whole
    pixels = images.reshape(-1, channels).astype(np.float64) / 255.0
    np.testing.assert_allclose(whole[0], pixels.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(whole[1], pixels.std(axis=0), rtol=1e-12)


def test_streamed_and_in_memory_evaluation_agree(devices):
    config = config_lib.resolve({"epochs": 1, "batch_size": 32, "eval_batch_size": 24,
                                 "data": {"num_workers": 0}})
    data = synthetic(n_test=101)
    memory = Trainer(config, data, Mesh(np.array(devices[:2]), (AXIS,)))
    streamed = Trainer(config, datasets.as_streaming(data), Mesh(np.array(devices[:2]), (AXIS,)))
    assert memory.normalize == streamed.normalize  # exact for in-memory data
    # Both start from the same seed: the same parameters.
    a, b = memory.evaluate(), streamed.evaluate()
    streamed.close()
    assert a["test_count"] == b["test_count"] == 101
    assert a["test_accuracy"] == b["test_accuracy"]
    np.testing.assert_allclose(a["test_loss"], b["test_loss"], rtol=1e-6)


def test_lenet5_learns_streamed_fashion_mnist_as_well_as_in_memory():
    """The same 200 Adam steps as tests/test_learning.py, read through grain with one worker."""
    require_fashion_mnist()
    config = config_lib.resolve({"data": {"dataset": "fashion_mnist", "max_train_examples": 12_800,
                                          "pipeline": "stream", "num_workers": 1},
                                 "epochs": 2, "batch_size": 128})
    data = limit(datasets.open_streaming("fashion_mnist"), 12_800, None)
    _, history = run(config, data, jax.devices()[:1])
    assert history[-1]["test_count"] == 10_000
    assert history[-1]["test_accuracy"] >= 0.78
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_launcher_streams_an_image_folder_with_the_imagenet_views(tmp_path, capsys):
    """The launcher on a folder of real Fashion-MNIST PNGs, streamed with one worker process:
    random-resized crops for training, resize + centre crop for testing."""
    require_fashion_mnist()
    import json
    import os

    from PIL import Image

    from jaxcnn.launch import main

    fashion = datasets.load("fashion_mnist")
    root = tmp_path / "photos"
    for split, images, labels, per_class in (("train", fashion.train_images, fashion.train_labels, 20),
                                             ("val", fashion.test_images, fashion.test_labels, 5)):
        for c, name in enumerate(fashion.class_names[:4]):
            folder = root / split / name.replace("/", "-")
            folder.mkdir(parents=True)
            for i in np.flatnonzero(labels == c)[:per_class]:
                Image.fromarray(images[i, :, :, 0]).save(folder / f"{i}.png")
    experiment = os.path.join(os.path.dirname(__file__), "..", "experiments", "resnet18_imagefolder.py")
    code = main([experiment, "--workdir", str(tmp_path / "run"),
                 "--set", f"data.data_dir='{root}'", "--set", "data.image_size=16",
                 "--set", "data.num_workers=1", "--set", "epochs=1", "--set", "batch_size=16",
                 "--set", "schedule.warmup_epochs=0.5",
                 "--set", "model={'name': 'cnn', 'cdims': [4], 'hdims': []}"])
    out, err = capsys.readouterr()
    assert code == 0, err
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["data"]["pipeline"] == "stream" and info["data"]["image_shape"] == [16, 16, 1]
    assert info["data"]["class_names"] == ["Dress", "Pullover", "T-shirt-top", "Trouser"]
    assert info["data"]["train_count"] == 80 and info["data"]["test_count"] == 20
    assert "stream pipeline" in out and "(20 images)" in out
