"""Restoring a run (jaxcnn.restore), classifying image files with it (jaxcnn.predict), and
comparing runs (jaxcnn.compare)."""

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
    assert "does not exist" in capsys.readouterr().err
