"""Training and evaluation: the pure train step and the loop around it.

``train_step(state, batch, axis_name)`` is one pure function: forward, loss, gradients, their
mean over the devices of ``axis_name`` and the optimizer update. It runs unchanged under
``jax.shard_map`` (how ``train_and_evaluate`` runs it, over a ``('data',)`` mesh of every device)
and under ``jax.pmap(..., axis_name='data')``, and with ``axis_name=None`` on a single device.

Under shard_map it needs ``check_vma=False``: with the check on, JAX sums the gradient of the
replicated parameters over the axis by itself (pmap never does), and the explicit ``pmean``
below would then see gradients 8 times too large on 8 devices.
"""

import functools
import json
import math
import os
import sys
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxcnn import datasets, input_pipeline, models, optim
from jaxcnn.errors import UserError

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
               label_smoothing: float = 0.0):
    """One optimizer step on ``batch`` = {'image': float [B, H, W, C], 'label': int [B]}.

    Under ``axis_name`` each device holds its part of the global batch: gradients are averaged
    over the axis (BatchNorm averages its statistics there itself when built with the same
    axis_name). Returns the new state and summed metrics {'loss', 'correct', 'count'}.
    """
    key = jax.random.fold_in(state.rng, state.step)
    if axis_name is not None:
        key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        logits, updates = state.apply_fn(variables, batch["image"], train=True,
                                         rngs={"dropout": key}, mutable=["batch_stats"])
        loss = cross_entropy(logits, batch["label"], label_smoothing).mean()
        return loss, (logits, updates.get("batch_stats", {}))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
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

        replicated = NamedSharding(mesh, P())
        self.state = jax.device_put(state, replicated)
        put = lambda x: jax.device_put(x, replicated)  # noqa: E731
        self.train_images, self.train_labels = put(data.train_images), put(data.train_labels)
        self.test_images, self.test_labels = put(data.test_images), put(data.test_labels)
        self.param_count = sum(x.size for x in jax.tree.leaves(state.params))
        self.compile_seconds = 0.0
        self._compile()

    # -- the functions each device runs ----------------------------------------------------

    def _device_train(self, state, metrics, images, labels, perm, epoch, first_step, num_steps):
        """Runs ``num_steps`` steps from ``first_step`` of ``epoch`` on this device's share."""
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
            state, step_metrics = train_step(state, batch, AXIS, c["label_smoothing"])
            return (state, _add(metrics, step_metrics)), None

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
                                "count": np.int32(0)}
        self._eval_metrics0 = _zeros(jax.eval_shape(
            lambda: eval_step(self.state, self._dummy_eval_batch())))

        perm = self._permutation(0)
        start = time.perf_counter()
        self._train = train_fn.lower(self.state, self._zero_metrics(train=True), self.train_images,
                                     self.train_labels, perm, 0, 0).compile()
        self._eval = eval_fn.lower(self.state, self._zero_metrics(train=False), self.test_images,
                                   self.test_labels, 0).compile()
        self.compile_seconds = time.perf_counter() - start

    def _zero_metrics(self, train: bool):
        zeros = self._train_metrics0 if train else self._eval_metrics0
        return jax.device_put(zeros, NamedSharding(self.mesh, P()))

    def _dummy_eval_batch(self):
        h, w, ch = self.data.test_images.shape[1:]
        n = self.eval_batch_size
        return {"image": jnp.zeros((n, h, w, ch)), "label": jnp.zeros((n,), jnp.int32),
                "mask": jnp.zeros((n,), bool)}

    @functools.cached_property
    def _permute(self):
        return jax.jit(input_pipeline.epoch_permutation, static_argnums=(0, 2),
                       out_shardings=NamedSharding(self.mesh, P()))

    def _permutation(self, epoch: int):
        return self._permute(self.config["seed"], epoch, self.num_train)

    # -- running ---------------------------------------------------------------------------

    def train_epoch(self, epoch: int, progress=None) -> dict:
        """Trains one epoch; returns its mean train loss and accuracy."""
        perm = self._permutation(epoch)
        metrics = self._zero_metrics(train=True)
        if self.epoch_loop == "scan":
            self.state, metrics = self._train(self.state, metrics, self.train_images,
                                              self.train_labels, perm, epoch, 0)
            if progress is not None:
                progress.update(self.steps_per_epoch)
        else:
            for step in range(self.steps_per_epoch):
                self.state, metrics = self._train(self.state, metrics, self.train_images,
                                                  self.train_labels, perm, epoch, step)
                if progress is not None:
                    progress.update(1)
        m = jax.device_get(metrics)
        return {"train_loss": float(m["loss"] / m["count"]),
                "train_accuracy": float(m["correct"] / m["count"])}

    def evaluate(self) -> dict:
        """Loss, top-1 (and top-5) accuracy over every test example exactly once."""
        metrics = self._zero_metrics(train=False)
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

    Returns the summary (also written to ``workdir/summary.json``).
    """
    wall_start = time.perf_counter()
    data = datasets.load(config["data"]["dataset"], config["data"]["data_dir"])
    if data.warning:
        log(_banner(data.warning))
    data = _limit(data, config["data"])
    writer = RunWriter(workdir) if jax.process_index() == 0 else None

    trainer = Trainer(config, data, make_mesh())
    if writer:
        writer.write_json("config.json", config)
        writer.write_text("model_summary.txt", model_summary(trainer.model, data.train_images.shape[1:]))
    log(f"data: {data.name} from {data.source}: {trainer.num_train} train / {trainer.num_test} test "
        f"images {data.train_images.shape[1:]}, {data.num_classes} classes")
    log(f"model: {config['model']['name']}, {trainer.param_count:,} parameters; "
        f"{trainer.num_devices} device(s) ({jax.default_backend()}), epoch loop '{trainer.epoch_loop}', "
        f"compiled in {trainer.compile_seconds:.1f} s")

    history, best = [], None
    train_seconds = 0.0
    progress = _progress_bar(config["epochs"] * trainer.steps_per_epoch)
    for epoch in range(config["epochs"]):
        start = time.perf_counter()
        record = trainer.train_epoch(epoch, progress)
        seconds = time.perf_counter() - start
        train_seconds += seconds
        step = (epoch + 1) * trainer.steps_per_epoch
        record = {"step": step, "epoch": epoch + 1, **record,
                  "learning_rate": float(trainer.schedule(step - 1)),
                  "images_per_sec": trainer.steps_per_epoch * config["batch_size"] / seconds,
                  "epoch_seconds": seconds}
        if (epoch + 1) % config["eval_every_epochs"] == 0 or epoch + 1 == config["epochs"]:
            record.update(trainer.evaluate())
            if best is None or record["test_accuracy"] > best["test_accuracy"]:
                best = record
        history.append(record)
        if writer:
            writer.append_jsonl("metrics.jsonl", record)
        _log_epoch(record, config["epochs"], progress, log)
    if progress is not None:
        progress.close()

    final = history[-1]
    summary = {
        "name": config["name"],
        "model": config["model"]["name"],
        "param_count": trainer.param_count,
        "final_test_accuracy": final["test_accuracy"],
        "final_test_loss": final["test_loss"],
        "best_test_accuracy": best["test_accuracy"],
        "best_epoch": best["epoch"],
        "epochs": config["epochs"],
        "steps": final["step"],
        "wall_seconds": time.perf_counter() - wall_start,
        "train_seconds": train_seconds,
        "compile_seconds": trainer.compile_seconds,
        "train_images_per_sec": trainer.steps_per_epoch * config["batch_size"] * len(history) / train_seconds,
        "devices": trainer.num_devices,
        "backend": jax.default_backend(),
        "data": {"dataset": data.name, "source": data.source, "warning": data.warning,
                 "train_count": trainer.num_train, "test_count": trainer.num_test,
                 "image_shape": list(data.train_images.shape[1:]),
                 "num_classes": data.num_classes, "class_names": list(data.class_names),
                 "normalization": trainer.normalize._asdict()},
    }
    if writer:
        writer.write_json("summary.json", summary)
    log(f"done: final test accuracy {summary['final_test_accuracy']:.4f}, best "
        f"{summary['best_test_accuracy']:.4f} (epoch {summary['best_epoch']}), "
        f"{summary['wall_seconds']:.1f} s wall, {summary['train_images_per_sec']:,.0f} train images/s"
        + (f"; run written to {workdir}" if writer else ""))
    return summary


def model_summary(model: nn.Module, image_shape) -> str:
    """A per-layer table of ``model`` (output shapes and parameter counts)."""
    table = model.tabulate(jax.random.key(0), jnp.zeros((1, *image_shape)), train=False,
                           console_kwargs={"width": 120, "force_terminal": False,
                                           "color_system": None})
    return table


class RunWriter:
    """Writes the files of a run directory; each file is replaced atomically."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)

    def _path(self, name):
        return os.path.join(self.workdir, name)

    def write_text(self, name: str, text: str):
        tmp = self._path(name + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self._path(name))

    def write_json(self, name: str, obj):
        self.write_text(name, json.dumps(obj, indent=2, default=_jsonable) + "\n")

    def append_jsonl(self, name: str, obj):
        with open(self._path(name), "a") as f:
            f.write(json.dumps(obj, default=_jsonable) + "\n")


def _jsonable(x):
    if isinstance(x, (np.generic, jax.Array)):
        return np.asarray(x).tolist()
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _limit(data: datasets.Dataset, data_config: dict) -> datasets.Dataset:
    import dataclasses

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


def _progress_bar(total: int):
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="step", dynamic_ncols=True, leave=False)


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
