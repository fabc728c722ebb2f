"""Checkpoints: exact resume after SIGKILL and SIGTERM, fallback past a corrupted checkpoint,
the NaN guard, and refusing a checkpoint of another model."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from conftest import require_fashion_mnist
from jaxcnn import checkpoint
from jaxcnn.errors import UserError
from jaxcnn.launch import main
from jaxcnn.models import create_model
from jaxcnn.train import create_train_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = os.path.join(ROOT, "experiments", "lenet_fashion.py")
# 2 epochs of 16 steps, a checkpoint every 4 steps; the cnn has BatchNorm and dropout, and the run
# keeps a moving average of the weights, so their statistics, keys and average must come back
# right too.
ARGS = ["--set", "epochs=2", "--set", "batch_size=64", "--set", "ema_decay=0.9",
        "--set", "data.max_train_examples=1024",
        "--set", "data.max_test_examples=512", "--set", "checkpoint.every_steps=4",
        "--set", "epoch_loop='step'", "--set", "model={'name': 'cnn', 'cdims': [8, 16], "
        "'hdims': [16], 'batch_norm': True, 'dropout': 0.2}"]
TIMING_KEYS = {"images_per_sec", "epoch_seconds", "input_wait_share"}
# The streaming pipeline with a decoding worker process and host-side augmentation.
STREAM = ["--set", "data.pipeline=stream", "--set", "data.num_workers=1",
          "--set", "data.crop_padding=2", "--set", "data.flip=True"]


def launch(workdir, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "jaxcnn.launch", EXPERIMENT, *ARGS, *extra, "--workdir", str(workdir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1",
             "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})


def finish(proc, timeout=240):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def steps(workdir):
    folder = os.path.join(workdir, "checkpoints")
    return sorted(int(d) for d in os.listdir(folder) if d.isdigit()) if os.path.isdir(folder) else []


def final_state(workdir):
    return ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(steps(workdir)[-1]), "state"))


def metrics_lines(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in f]


def wait_for_checkpoint(proc, workdir, at_least, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(steps(workdir)) >= at_least:
            return
        if proc.poll() is not None:
            pytest.fail(f"training ended before its checkpoints: {proc.communicate()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no checkpoint appeared")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run."""
    require_fashion_mnist()
    workdir = tmp_path_factory.mktemp("reference") / "run"
    code, out, err = finish(launch(workdir))
    assert code == 0, err
    return workdir


def assert_same_run(workdir, reference):
    assert steps(workdir)[-1] == steps(reference)[-1] == 32
    assert "ema_params" in final_state(reference)
    jax.tree.map(np.testing.assert_array_equal, final_state(workdir), final_state(reference))
    assert metrics_lines(workdir) == metrics_lines(reference)


def test_resume_after_sigkill_is_bit_identical(tmp_path, reference):
    workdir = tmp_path / "run"
    proc = launch(workdir)
    wait_for_checkpoint(proc, workdir, at_least=2)  # somewhere in the first or second epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = steps(workdir)[-1]
    assert killed_at < 32
    code, out, err = finish(launch(workdir))
    assert code == 0, err
    assert "resuming the run" in out and f"resumed from the checkpoint at step {killed_at}" in out
    assert_same_run(workdir, reference)


@pytest.fixture(scope="module")
def stream_reference(tmp_path_factory):
    """An uninterrupted run on the streaming pipeline."""
    require_fashion_mnist()
    workdir = tmp_path_factory.mktemp("stream_reference") / "run"
    code, out, err = finish(launch(workdir, *STREAM))
    assert code == 0, err
    return workdir


def test_streamed_resume_after_sigkill_is_bit_identical(tmp_path, stream_reference):
    workdir = tmp_path / "run"
    proc = launch(workdir, *STREAM)
    wait_for_checkpoint(proc, workdir, at_least=2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = steps(workdir)[-1]
    assert killed_at < 32
    code, out, err = finish(launch(workdir, *STREAM))
    assert code == 0, err
    assert f"resumed from the checkpoint at step {killed_at}" in out and "stream pipeline" in out
    assert_same_run(workdir, stream_reference)


def test_sigterm_saves_and_exits_nonzero_and_resume_is_bit_identical(tmp_path, reference):
    workdir = tmp_path / "run"
    proc = launch(workdir)
    wait_for_checkpoint(proc, workdir, at_least=1)
    proc.send_signal(signal.SIGTERM)
    code, out, err = finish(proc)
    err = " ".join(err.split())
    assert code == 128 + signal.SIGTERM, err
    assert "Stopped by SIGTERM" in err and "Run the same command again to resume" in err
    assert "Traceback" not in err
    stopped_at = steps(workdir)[-1]
    assert f"after step {stopped_at}" in err
    code, out, err = finish(launch(workdir))
    assert code == 0, err
    assert_same_run(workdir, reference)


def test_corrupted_latest_checkpoint_falls_back_to_the_one_before(tmp_path, reference):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    # As if killed after its last checkpoint, before its summary (a finished run, with its
    # summary.json, is left as it is when launched again).
    (workdir / "summary.json").unlink()
    latest = steps(workdir)[-1]
    state_dir = os.path.join(workdir, "checkpoints", str(latest), "state")
    for folder, _, files in os.walk(state_dir):  # truncate every data file of the newest checkpoint
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 3)
    code, out, err = finish(launch(workdir))
    assert code == 0, err
    assert f"checkpoint {os.path.join(os.path.abspath(workdir), 'checkpoints')}/{latest} cannot be read" in out
    assert os.path.isdir(os.path.join(workdir, "checkpoints.unreadable", str(latest)))  # kept aside
    assert_same_run(workdir, reference)


def test_nan_loss_stops_with_step_and_learning_rate_and_keeps_the_good_checkpoint(tmp_path, capsys):
    require_fashion_mnist()
    workdir = tmp_path / "run"
    code = main([EXPERIMENT, *ARGS, "--set", "optimizer={'name': 'sgd', 'learning_rate': 1e12}",
                 "--workdir", str(workdir)])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 3, err
    assert "became NaN or infinite at step 2 (epoch 1)" in err
    assert "learning rate 9.98e+11" in err  # the cosine schedule of lenet.py at step 2 of 32
    assert "grad_clip_norm" in err
    bad_step = int(err.split("infinite at step ")[1].split()[0])
    assert all(s < bad_step for s in steps(workdir))
    if steps(workdir):  # the kept checkpoint holds finite weights
        leaves = jax.tree.leaves(final_state(workdir)["params"])
        assert all(np.all(np.isfinite(x)) for x in leaves)


def test_checkpoint_of_another_model_is_refused(tmp_path):
    def state(name, **kw):
        return create_train_state(create_model(name, 10, **kw), optax.adam(1e-3), (28, 28, 1), 0)

    ckpts = checkpoint.Checkpoints(str(tmp_path / "checkpoints"), keep=2)
    ckpts.save(state("lenet5"), checkpoint.Progress(epoch=1))
    restored, progress = ckpts.restore_latest(state("lenet5"))
    assert progress == checkpoint.Progress(epoch=1)
    with pytest.raises(UserError, match="holds another model or input shape"):
        ckpts.restore_latest(state("cnn", cdims=(8,), hdims=()))
    ckpts.close()


def test_no_readable_checkpoint_is_an_error(tmp_path):
    ckpts = checkpoint.Checkpoints(str(tmp_path / "checkpoints"), keep=2)
    s = create_train_state(create_model("lenet5", 10), optax.adam(1e-3), (28, 28, 1), 0)
    ckpts.save(s, checkpoint.Progress(epoch=1))
    for folder, _, files in os.walk(tmp_path / "checkpoints"):
        for name in files:
            if "state" in folder:
                open(os.path.join(folder, name), "w").close()
    with pytest.raises(UserError, match="No checkpoint in .* can be read.*--restart"):
        ckpts.restore_latest(s)
    ckpts.close()


def test_the_best_checkpoint_is_kept_and_known_after_a_resume(tmp_path):
    s = create_train_state(create_model("lenet5", 10), optax.adam(1e-3), (28, 28, 1), 0)

    def session(saves):  # one training session: a fresh manager on the same folder
        ckpts = checkpoint.Checkpoints(str(tmp_path / "checkpoints"), keep=2)
        for step, accuracy in saves:
            ckpts.save(s.replace(step=np.int32(step)), checkpoint.Progress(epoch=step), accuracy)
        result = ckpts.steps(), ckpts.best_step()
        ckpts.close()
        return result

    assert session([(1, 0.5), (2, 0.9), (3, 0.6)]) == ([2, 3], 2)
    assert session([(4, 0.1), (5, None), (6, 0.2)]) == ([2, 5, 6], 2)  # 2 stays the best
    reader = checkpoint.Checkpoints(str(tmp_path / "checkpoints"), keep=2, read_only=True)
    variables = reader.restore_variables(2, {"params": jax.eval_shape(lambda: s.params)})
    reader.close()
    jax.tree.map(np.testing.assert_array_equal, variables["params"], jax.device_get(s.params))
    assert reader.steps() == [2, 5, 6]  # reading changed nothing


def test_a_background_save_keeps_the_state_it_was_given(tmp_path):
    """A training run saves asynchronously and the next step donates the state's buffers: the
    checkpoint must still hold the state as it was when ``save`` was called (Orbax copies it to
    host memory before ``save`` returns; this fails if a version of Orbax stops doing that)."""
    s = create_train_state(create_model("lenet5", 10), optax.adam(1e-3), (28, 28, 1), 0)
    expected = jax.device_get(s.params)
    ckpts = checkpoint.Checkpoints(str(tmp_path / "checkpoints"), keep=2, asynchronous=True)
    ckpts.save(s, checkpoint.Progress(epoch=1), 0.5)
    # What the next training step does to the saved state's buffers: donate and overwrite them.
    overwrite = jax.jit(lambda p: jax.tree.map(lambda x: x * 0 - 1, p), donate_argnums=0)
    clobbered = overwrite(s.params)
    assert ckpts.steps() == [0]  # waits for the write
    assert ckpts.best_step() == 0
    ckpts.close()
    reader = checkpoint.Checkpoints(str(tmp_path / "checkpoints"), keep=2, read_only=True)
    variables = reader.restore_variables(0, {"params": jax.eval_shape(lambda: expected)})
    reader.close()
    jax.tree.map(np.testing.assert_array_equal, variables["params"], expected)
    assert all(np.all(np.asarray(x) == -1) for x in jax.tree.leaves(clobbered))
