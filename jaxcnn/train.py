"""Training and evaluation: the pure train step and the loop around it.

``train_step(state, batch, axis_name)`` is one pure function: forward, loss, gradients, their
mean over the devices of ``axis_name`` and the optimizer update. It runs unchanged under
``jax.shard_map`` (how ``train_and_evaluate`` runs it, over a ``('data',)`` mesh of every device)
and under ``jax.pmap(..., axis_name='data')``, and with ``axis_name=None`` on a single device.

Under shard_map it needs ``check_vma=False``: with the check on, JAX sums the gradient of the
replicated parameters over the axis by itself (pmap never does), and the explicit ``pmean``
below would then see gradients 8 times too large on 8 devices.
"""

import dataclasses
import functools
import math
import os
import signal
import sys
import threading
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxcnn import checkpoint, datasets, input_pipeline, models, optim, rundir
from jaxcnn.summary import summary_table
from jaxcnn.errors import RunStopped, UserError

AXIS = "data"


class TrainState(train_state.TrainState):
    """params, opt_state and step (from flax), plus BatchNorm statistics and the dropout key."""

    batch_stats: Any
    rng: jax.Array


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, image_shape,
                       seed: int) -> TrainState:
    """Initialises ``model`` for images of ``image_shape`` (H, W, C) from ``seed``."""
    init_key, dropout_key = jax.random.split(jax.random.key(seed))
    variables = jax.jit(model.init, static_argnames="train")(
        init_key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    params = variables["params"]
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                             batch_stats=variables.get("batch_stats", {}), rng=dropout_key)


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
    """Per-example softmax cross-entropy with optional label smoothing: [B, K], [B] -> [B]."""
    targets = jax.nn.one_hot(labels, logits.shape[-1])
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def train_step(state: TrainState, batch, axis_name: str | None = None,
               label_smoothing: float = 0.0, aux_loss_weight: float = 0.3):
    """One optimizer step on ``batch`` = {'image': float [B, H, W, C], 'label': int [B]}.

    Under ``axis_name`` each device holds its part of the global batch: gradients are averaged
    over the axis (BatchNorm averages its statistics there itself when built with the same
    axis_name). Returns the new state and summed metrics {'loss', 'correct', 'count'}.

    A model with auxiliary classifiers (GoogLeNet) returns ``(logits, [aux_logits, ...])`` when
    training; each auxiliary loss is added with weight ``aux_loss_weight``. The reported loss and
    accuracy are those of the main classifier.
    """
    # The same key on every device: dropout layers draw the global batch's masks from it and
    # keep their own rows (jaxcnn.models.layers.Dropout), whatever the device count.
    key = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        out, updates = state.apply_fn(variables, batch["image"], train=True,
                                      rngs={"dropout": key}, mutable=["batch_stats"])
        logits, aux_logits = out if isinstance(out, tuple) else (out, ())
        loss = cross_entropy(logits, batch["label"], label_smoothing).mean()
        total = loss + sum(aux_loss_weight * cross_entropy(a, batch["label"], label_smoothing).mean()
                           for a in aux_logits)
        return total, (loss, logits, updates.get("batch_stats", {}))

    (_, (loss, logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = {
        "loss": loss * batch["label"].shape[0],
        "correct": jnp.sum(jnp.argmax(logits, -1) == batch["label"]),
        "count": jnp.asarray(batch["label"].shape[0], jnp.int32),
    }
    if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)
        batch_stats = jax.lax.pmean(batch_stats, axis_name)
        metrics = jax.lax.psum(metrics, axis_name)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    return state, metrics


def eval_step(state: TrainState, batch, axis_name: str | None = None):
    """Summed test metrics of ``batch`` (with 'mask': bool [B], False for padding examples)."""
    logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                            batch["image"], train=False)
    mask = batch["mask"]
    labels = batch["label"]
    metrics = {
        "loss": jnp.sum(jnp.where(mask, cross_entropy(logits, labels), 0.0)),
        "correct": jnp.sum(mask & (jnp.argmax(logits, -1) == labels)),
        "count": jnp.sum(mask.astype(jnp.int32)),
    }
    if logits.shape[-1] > 5:
        top5 = jax.lax.top_k(logits, 5)[1]
        metrics["correct_top5"] = jnp.sum(mask & jnp.any(top5 == labels[:, None], axis=-1))
    if axis_name is not None:
        metrics = jax.lax.psum(metrics, axis_name)
    return metrics


def _add(a, b):
    return jax.tree.map(jnp.add, a, b)


def _zeros(metrics_shape):
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), metrics_shape)


class Trainer:
    """Compiles and runs the train and eval loops of one config over a ``('data',)`` mesh.

    The dataset lives on every device (replicated uint8); each device gathers, normalises and
    augments its own part of every global batch, then runs ``train_step`` under shard_map.
    """

    def __init__(self, config: dict, data: datasets.Dataset, mesh: Mesh):
        self.config, self.data, self.mesh = config, data, mesh
        self.num_devices = mesh.size
        bs, ebs = config["batch_size"], config["eval_batch_size"]
        if bs % self.num_devices:
            raise UserError(
                f"batch_size {bs} does not divide over the {self.num_devices} devices. Use a "
                f"multiple of {self.num_devices}, e.g. --set batch_size="
                f"{max(1, round(bs / self.num_devices)) * self.num_devices}.")
        self.eval_batch_size = math.ceil(ebs / self.num_devices) * self.num_devices
        self.num_train = len(data.train_labels)
        self.num_test = len(data.test_labels)
        self.steps_per_epoch = self.num_train // bs
        if self.steps_per_epoch == 0:
            raise UserError(
                f"batch_size {bs} is larger than the {self.num_train} training examples: "
                "lower batch_size.")
        self.eval_steps = math.ceil(self.num_test / self.eval_batch_size)
        loop = config["epoch_loop"]
        if loop == "auto":
            loop = "step" if jax.default_backend() == "cpu" else "scan"
        self.epoch_loop = loop
        self.normalize = input_pipeline.Normalization.of(data.train_images)

        model_config = dict(config["model"])
        name = model_config.pop("name")
        self.model = models.create_model(name, data.num_classes, **model_config)
        # Inside the step BatchNorm averages its statistics over the mesh axis (the global batch).
        step_model = self.model.clone(axis_name=AXIS) if hasattr(self.model, "axis_name") else self.model
        self.schedule = optim.make_schedule(config, self.steps_per_epoch)
        tx = optim.make_optimizer(config, self.schedule)
        state = create_train_state(self.model, tx, data.train_images.shape[1:], config["seed"])
        state = state.replace(apply_fn=step_model.apply)

        self.state = self.replicate(state)
        put = self.replicate
        self.train_images, self.train_labels = put(data.train_images), put(data.train_labels)
        self.test_images, self.test_labels = put(data.test_images), put(data.test_labels)
        self.param_count = sum(x.size for x in jax.tree.leaves(state.params))
        self.compile_seconds = 0.0
        self._compile()

    def replicate(self, tree):
        """A copy of ``tree`` on every device of the mesh, across all processes.

        Every process holds the same values (same data, same seed); each one fills only its own
        devices, which is also how a multi-host run feeds them.
        """
        sharding = NamedSharding(self.mesh, P())

        def put(x):
            if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
                return jax.random.wrap_key_data(put(jax.random.key_data(x)))
            x = np.asarray(x)
            return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

        return jax.tree.map(put, tree)

    # -- the functions each device runs ----------------------------------------------------

    def _device_train(self, state, metrics, images, labels, perm, epoch, first_step, num_steps):
        """Runs ``num_steps`` steps from ``first_step`` of ``epoch`` on this device's share.

        NaN guard: once a step's loss is not finite, it and every later step leave the state as
        it was (the last good one), and ``metrics['first_bad_step']`` records the global step.
        """
        c = self.config
        local = c["batch_size"] // self.num_devices
        device = jax.lax.axis_index(AXIS)
        positions = device * local + jnp.arange(local, dtype=jnp.int32)
        epoch_key = jax.random.fold_in(jax.random.key(c["seed"]), epoch)

        def one_step(carry, step):
            state, metrics = carry
            indices = jax.lax.dynamic_slice(perm, (step * c["batch_size"] + device * local,), (local,))
            batch = input_pipeline.make_batch(
                images, labels, indices, positions, normalize=self.normalize,
                augment_key=jax.random.fold_in(epoch_key, step),
                crop_padding=c["data"]["crop_padding"], flip=c["data"]["flip"])
            new_state, step_metrics = train_step(state, batch, AXIS, c["label_smoothing"],
                                                 c["aux_loss_weight"])
            healthy = metrics["first_bad_step"] < 0
            finite = jnp.isfinite(step_metrics["loss"])
            keep = healthy & finite
            state = new_state.replace(**{
                field: jax.tree.map(lambda new, old: jnp.where(keep, new, old),
                                    getattr(new_state, field), getattr(state, field))
                for field in ("step", "params", "opt_state", "batch_stats")})
            metrics = {
                "loss": metrics["loss"] + jnp.where(keep, step_metrics["loss"], 0.0),
                "correct": metrics["correct"] + jnp.where(keep, step_metrics["correct"], 0),
                "count": metrics["count"] + jnp.where(keep, step_metrics["count"], 0),
                "first_bad_step": jnp.where(healthy & ~finite, state.step + 1, metrics["first_bad_step"]),
            }
            return (state, metrics), None

        steps = first_step + jnp.arange(num_steps, dtype=jnp.int32)
        if num_steps == 1:
            return one_step((state, metrics), steps[0])[0]
        return jax.lax.scan(one_step, (state, metrics), steps)[0]

    def _device_eval(self, state, metrics, images, labels, first_step, num_steps):
        local = self.eval_batch_size // self.num_devices
        device = jax.lax.axis_index(AXIS)

        def one_step(metrics, step):
            rows = step * self.eval_batch_size + device * local + jnp.arange(local, dtype=jnp.int32)
            mask = rows < self.num_test
            batch = input_pipeline.make_batch(images, labels, jnp.where(mask, rows, 0), rows,
                                              normalize=self.normalize)
            batch["mask"] = mask
            return _add(metrics, eval_step(state, batch, AXIS)), None

        steps = first_step + jnp.arange(num_steps, dtype=jnp.int32)
        if num_steps == 1:
            return one_step(metrics, steps[0])[0]
        return jax.lax.scan(one_step, metrics, steps)[0]

    # -- compilation -----------------------------------------------------------------------

    def _compile(self):
        mesh, rep = self.mesh, P()
        scan = self.epoch_loop == "scan"
        train_steps = self.steps_per_epoch if scan else 1
        eval_steps = self.eval_steps if scan else 1

        def sharded(fn, n_in):
            return jax.shard_map(fn, mesh=mesh, in_specs=(rep,) * n_in, out_specs=rep,
                                 check_vma=False)

        train = functools.partial(self._device_train, num_steps=train_steps)
        evaluate = functools.partial(self._device_eval, num_steps=eval_steps)
        train_fn = jax.jit(sharded(train, 7), donate_argnums=(0, 1))
        eval_fn = jax.jit(sharded(evaluate, 5), donate_argnums=(1,))

        # Metric accumulators start at zero; their structure comes from tracing the steps.
        self._train_metrics0 = {"loss": np.float32(0), "correct": np.int32(0),
                                "count": np.int32(0), "first_bad_step": np.int32(-1)}
        self._eval_metrics0 = _zeros(jax.eval_shape(
            lambda: eval_step(self.state, self._dummy_eval_batch())))

        perm = self.permutation(0)
        start = time.perf_counter()
        self._train = train_fn.lower(self.state, self.zero_train_metrics(), self.train_images,
                                     self.train_labels, perm, 0, 0).compile()
        self._eval = eval_fn.lower(self.state, self.replicate(self._eval_metrics0),
                                   self.test_images, self.test_labels, 0).compile()
        self.compile_seconds = time.perf_counter() - start


    def _dummy_eval_batch(self):
        h, w, ch = self.data.test_images.shape[1:]
        n = self.eval_batch_size
        return {"image": jnp.zeros((n, h, w, ch)), "label": jnp.zeros((n,), jnp.int32),
                "mask": jnp.zeros((n,), bool)}

    @functools.cached_property
    def _permute(self):
        return jax.jit(input_pipeline.epoch_permutation, static_argnums=(0, 2),
                       out_shardings=NamedSharding(self.mesh, P()))

    def permutation(self, epoch: int):
        """The order of the training examples in ``epoch`` (on the devices)."""
        return self._permute(self.config["seed"], epoch, self.num_train)

    # -- running ---------------------------------------------------------------------------

    @property
    def steps_per_call(self) -> int:
        """Steps that one ``train_call`` runs: 1, or a whole epoch with the scan loop."""
        return self.steps_per_epoch if self.epoch_loop == "scan" else 1

    def zero_train_metrics(self, sums: dict | None = None):
        """Fresh metric sums of an epoch (or ``sums`` restored from a checkpoint), on the devices."""
        zeros = self._train_metrics0
        if sums is not None:
            zeros = {k: np.asarray(sums[k], v.dtype) for k, v in zeros.items()}
        return self.replicate(zeros)

    def train_call(self, epoch: int, perm, metrics, step: int):
        """Runs ``steps_per_call`` steps from ``step`` of ``epoch``; updates the state and
        returns the metric sums (asynchronously: nothing waits for the devices here)."""
        self.state, metrics = self._train(self.state, metrics, self.train_images,
                                          self.train_labels, perm, epoch, step)
        return metrics

    @staticmethod
    def epoch_means(metrics) -> dict:
        m = jax.device_get(metrics)
        count = max(int(m["count"]), 1)
        return {"train_loss": float(m["loss"] / count), "train_accuracy": float(m["correct"] / count)}

    def train_epoch(self, epoch: int) -> dict:
        """Trains one whole epoch; returns its mean train loss and accuracy."""
        perm, metrics = self.permutation(epoch), self.zero_train_metrics()
        for step in range(0, self.steps_per_epoch, self.steps_per_call):
            metrics = self.train_call(epoch, perm, metrics, step)
        return self.epoch_means(metrics)

    def evaluate(self) -> dict:
        """Loss, top-1 (and top-5) accuracy over every test example exactly once."""
        metrics = self.replicate(self._eval_metrics0)
        if self.epoch_loop == "scan":
            metrics = self._eval(self.state, metrics, self.test_images, self.test_labels, 0)
        else:
            for step in range(self.eval_steps):
                metrics = self._eval(self.state, metrics, self.test_images, self.test_labels, step)
        m = jax.device_get(metrics)
        out = {"test_loss": float(m["loss"] / m["count"]),
               "test_accuracy": float(m["correct"] / m["count"]),
               "test_count": int(m["count"])}
        if "correct_top5" in m:
            out["test_top5"] = float(m["correct_top5"] / m["count"])
        return out

    def variables(self) -> dict:
        """The model's variables, for ``model.apply(variables, x, train=False)``."""
        variables = {"params": self.state.params}
        if self.state.batch_stats:
            variables["batch_stats"] = self.state.batch_stats
        return jax.device_get(variables)


def make_mesh() -> Mesh:
    """A one-axis ('data') mesh of every device of every process."""
    return Mesh(np.array(jax.devices()), (AXIS,))


def train_and_evaluate(config: dict, workdir: str, *, log=print) -> dict:
    """Trains ``config`` (a resolved config, see jaxcnn.config) and writes the run to ``workdir``.

    Resumes from the newest readable checkpoint in ``workdir/checkpoints`` if there is one: the
    resumed run is bit-identical on CPU to one never interrupted, since the data order,
    augmentation and dropout are pure functions of (seed, epoch, step). SIGTERM/SIGINT finish
    the current step, save and raise RunStopped; so does a loss that turns NaN/inf (without
    saving: the last good checkpoint stays the newest). At the end, process 0 writes the run's
    PNGs (jaxcnn.plot) from the final parameters; a failure there is only a warning. Returns the
    summary (summary.json).
    """
    session_start = time.perf_counter()
    data = datasets.load(config["data"]["dataset"], config["data"]["data_dir"])
    if data.warning:
        log(_banner(data.warning))
    data = _limit(data, config["data"])
    trainer = Trainer(config, data, make_mesh())
    spe, epochs = trainer.steps_per_epoch, config["epochs"]
    every_steps = config["checkpoint"]["every_steps"]
    if every_steps and trainer.epoch_loop == "scan":
        raise UserError(
            "checkpoint.every_steps needs epoch_loop 'step': the scan loop runs a whole epoch in "
            "one call, so it can only save at epoch ends. Set --set epoch_loop=step or drop "
            "checkpoint.every_steps.")
    writer = rundir.RunWriter(workdir, enabled=jax.process_index() == 0)
    ckpts = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints"), config["checkpoint"]["keep"])

    progress = {"epoch": 0, "step_in_epoch": 0, "epoch_metrics": None, "best_test_accuracy": None,
                "best_epoch": None, "last_record": None, "train_seconds": 0.0,
                "wall_seconds": 0.0}
    info = {"model": config["model"]["name"], "param_count": trainer.param_count,
            "data": {"dataset": data.name, "source": data.source, "warning": data.warning,
                     "train_count": trainer.num_train, "test_count": trainer.num_test,
                     "image_shape": list(data.train_images.shape[1:]),
                     "num_classes": data.num_classes, "class_names": list(data.class_names),
                     "normalization": trainer.normalize._asdict()}}
    restored = ckpts.restore_latest(trainer.state)
    if restored:
        trainer.state, progress = restored
        log(f"resumed from the checkpoint at step {int(trainer.state.step)} (epoch "
            f"{progress['epoch'] + 1}, {progress['step_in_epoch']}/{spe} steps into it)")
    else:
        writer.write_json("config.json", config)
        writer.write_text("model_summary.txt", summary_table(trainer.model, data.train_images.shape[1:]))
    writer.write_json("run.json", info)  # what restore, plot and compare need, from the start
    writer.truncate_metrics(int(trainer.state.step))
    log(f"data: {data.name} from {data.source}: {trainer.num_train} train / {trainer.num_test} test "
        f"images {data.train_images.shape[1:]}, {data.num_classes} classes")
    log(f"model: {config['model']['name']}, {trainer.param_count:,} parameters; "
        f"{trainer.num_devices} device(s) ({jax.default_backend()}), epoch loop '{trainer.epoch_loop}', "
        f"compiled in {trainer.compile_seconds:.1f} s")

    wall_before = progress["wall_seconds"]  # of earlier sessions of this run

    def save(test_accuracy=None):
        progress["wall_seconds"] = wall_before + time.perf_counter() - session_start
        ckpts.save(trainer.state, progress, test_accuracy)

    def check_finite(metrics):
        bad = int(jax.device_get(metrics["first_bad_step"]))
        if bad >= 0:
            raise _diverged(bad, trainer, ckpts)

    bar = _progress_bar(epochs * spe, initial=int(trainer.state.step))
    try:
        with _StopSignals() as stop:
            for epoch in range(progress["epoch"], epochs):
                first = progress["step_in_epoch"]
                metrics = trainer.zero_train_metrics(progress["epoch_metrics"] if first else None)
                perm = trainer.permutation(epoch)
                start = time.perf_counter()
                for step in range(first, spe, trainer.steps_per_call):
                    metrics = trainer.train_call(epoch, perm, metrics, step)
                    done = step + trainer.steps_per_call
                    if bar is not None:
                        bar.update(trainer.steps_per_call)
                    global_step = epoch * spe + done
                    if done < spe and (stop.signal or (every_steps and global_step % every_steps == 0)):
                        check_finite(metrics)
                        progress.update(step_in_epoch=done, epoch_metrics=_sums(metrics),
                                        train_seconds=progress["train_seconds"] + time.perf_counter() - start)
                        start = time.perf_counter()
                        save()
                        if stop.signal:
                            raise stop.stopped(global_step, workdir)
                check_finite(metrics)
                seconds = time.perf_counter() - start
                record = {"step": (epoch + 1) * spe, "epoch": epoch + 1, **trainer.epoch_means(metrics),
                          "learning_rate": float(trainer.schedule((epoch + 1) * spe - 1)),
                          "images_per_sec": (spe - first) * config["batch_size"] / seconds,
                          "epoch_seconds": seconds}
                if (epoch + 1) % config["eval_every_epochs"] == 0 or epoch + 1 == epochs:
                    record.update(trainer.evaluate())
                    best = progress["best_test_accuracy"]
                    if best is None or record["test_accuracy"] > best:
                        progress.update(best_test_accuracy=record["test_accuracy"], best_epoch=epoch + 1)
                writer.append_metrics(record)
                _log_epoch(record, epochs, bar, log)
                progress.update(epoch=epoch + 1, step_in_epoch=0, epoch_metrics=None, last_record=record,
                                train_seconds=progress["train_seconds"] + seconds)
                if ((epoch + 1) % config["checkpoint"]["every_epochs"] == 0 or epoch + 1 == epochs
                        or stop.signal):
                    save(record.get("test_accuracy"))
                if stop.signal and epoch + 1 < epochs:
                    raise stop.stopped(record["step"], workdir)
    finally:
        ckpts.close()
        if bar is not None:
            bar.close()

    final = progress["last_record"]
    summary = {
        "name": config["name"],
        "model": config["model"]["name"],
        "param_count": trainer.param_count,
        "final_test_accuracy": final["test_accuracy"],
        "final_test_loss": final["test_loss"],
        "best_test_accuracy": progress["best_test_accuracy"],
        "best_epoch": progress["best_epoch"],
        "epochs": epochs,
        "steps": final["step"],
        "wall_seconds": wall_before + time.perf_counter() - session_start,
        "train_seconds": progress["train_seconds"],
        "compile_seconds": trainer.compile_seconds,
        "train_images_per_sec": epochs * spe * config["batch_size"] / max(progress["train_seconds"], 1e-9),
        "devices": trainer.num_devices,
        "backend": jax.default_backend(),
        "data": info["data"],
    }
    summary["param_checksum"] = float(sum(np.abs(np.asarray(x, np.float64)).sum()
                                          for x in jax.tree.leaves(jax.device_get(trainer.state.params))))
    writer.write_json("summary.json", summary)
    log(f"parameter checksum (sum of |w|, equal on every process): {summary['param_checksum']!r}")
    log(f"done: final test accuracy {summary['final_test_accuracy']:.4f}, best "
        f"{summary['best_test_accuracy']:.4f} (epoch {summary['best_epoch']}), "
        f"{summary['wall_seconds']:.1f} s wall, {summary['train_images_per_sec']:,.0f} train images/s"
        + (f"; run written to {workdir}" if writer.enabled else ""))
    if writer.enabled:
        _write_plots(workdir, trainer, config, info, data, log)
    return summary


def _write_plots(workdir: str, trainer: Trainer, config: dict, info: dict, data, log) -> None:
    """The run's PNGs (jaxcnn.plot) from the final parameters; a failure is only a warning, since
    the run itself is saved."""
    start = time.perf_counter()
    try:
        from jaxcnn import plot
        from jaxcnn.restore import Restored

        model = Restored(trainer.model.apply, trainer.variables(), config, info,
                         int(trainer.state.step))
        written = plot.write_plots(workdir, model=model, data=data, log=log)
    except Exception as e:  # noqa: BLE001 - plotting must never lose a finished run
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        log(f"WARNING: could not write the plots ({reason}); the run is saved. Try again with: "
            f"python -m jaxcnn.plot {workdir}")
        return
    names = ", ".join(os.path.basename(p) for p in written)
    log(f"plots: {names} ({time.perf_counter() - start:.1f} s)")


class _StopSignals:
    """Turns SIGTERM and SIGINT into a flag the training loop checks after every step.

    The loop then saves a checkpoint and stops. A second signal stops at once.
    """

    def __enter__(self):
        self.signal = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        print(f"\n{signal.Signals(signum).name}: finishing the current step and saving a "
              "checkpoint (send it again to stop at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def stopped(self, step: int, workdir: str) -> RunStopped:
        name = signal.Signals(self.signal).name
        return RunStopped(
            f"Stopped by {name} after step {step}; saved a checkpoint in "
            f"{os.path.join(workdir, 'checkpoints')}. Run the same command again to resume.",
            128 + self.signal)


def _diverged(bad_step: int, trainer: Trainer, ckpts: checkpoint.Checkpoints) -> RunStopped:
    steps = ckpts.steps()
    kept = (f"The last good checkpoint, at step {steps[-1]}, is kept in {ckpts.directory}"
            if steps else "No checkpoint had been saved yet")
    lr = float(trainer.schedule(bad_step - 1))
    return RunStopped(
        f"The training loss became NaN or infinite at step {bad_step} (epoch "
        f"{(bad_step - 1) // trainer.steps_per_epoch + 1}), learning rate {lr:.3g}. Training "
        f"stopped without saving the diverged weights. {kept}. Try a lower "
        "optimizer.learning_rate, gradient clipping (optimizer.grad_clip_norm=1.0) or a warmup "
        "(schedule.name=warmup_cosine).", 3)


def _sums(metrics) -> dict:
    return {k: np.asarray(v).item() for k, v in jax.device_get(metrics).items()}


def _limit(data: datasets.Dataset, data_config: dict) -> datasets.Dataset:
    n_train, n_test = data_config["max_train_examples"], data_config["max_test_examples"]
    changes = {}
    if n_train is not None:
        changes.update(train_images=data.train_images[:n_train], train_labels=data.train_labels[:n_train])
    if n_test is not None:
        changes.update(test_images=data.test_images[:n_test], test_labels=data.test_labels[:n_test])
    return dataclasses.replace(data, **changes) if changes else data


def _banner(text: str) -> str:
    line = "!" * 78
    return f"{line}\nWARNING: {text}\n{line}"


def _progress_bar(total: int, initial: int = 0):
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=False)


def _log_epoch(r: dict, epochs: int, progress, log):
    text = (f"epoch {r['epoch']}/{epochs} step {r['step']}: train loss {r['train_loss']:.4f} "
            f"acc {r['train_accuracy']:.4f}")
    if "test_accuracy" in r:
        text += f" | test loss {r['test_loss']:.4f} acc {r['test_accuracy']:.4f}"
        if "test_top5" in r:
            text += f" top5 {r['test_top5']:.4f}"
        text += f" ({r['test_count']} images)"
    text += f" | {r['images_per_sec']:,.0f} img/s, lr {r['learning_rate']:.2e}"
    if progress is not None:
        progress.write(text)
    else:
        log(text)
