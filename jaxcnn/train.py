"""Training and evaluation: the pure train step and the loop around it.

``train_step(state, batch, axis_name)`` is one pure function: forward, loss, gradients, their
mean over the devices of ``axis_name`` and the optimizer update. It runs unchanged under
``jax.shard_map`` (how ``train_and_evaluate`` runs it, over a ``('data',)`` mesh of every device)
and under ``jax.pmap(..., axis_name='data')``, and with ``axis_name=None`` on a single device.

Under shard_map it needs ``check_vma=False``: with the check on, JAX sums the gradient of the
replicated parameters over the axis by itself (pmap never does), and the explicit ``pmean``
below would then see gradients 8 times too large on 8 devices.
"""

import collections
import dataclasses
import functools
import math
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh

from jaxcnn import (checkpoint, console, cpu_devices, datasets, feed, input_pipeline, models, optim,
                    rundir, stream)
from jaxcnn import replicas as replicas_lib
from jaxcnn.checkpoint import Progress
from jaxcnn.errors import RunStopped, UserError
from jaxcnn.models import layers
from jaxcnn.signals import StopSignals
from jaxcnn.summary import Summary, summarize

AXIS = "data"
# Calls the host may queue on several devices before it waits for the oldest one's metrics.
# Unbounded queues of asynchronous steps made XLA:CPU's all-reduce time out with several devices
# on a 2-core host. One device has no all-reduce to wait in: there the queue is left to JAX
# (bounding it cost 3-7% of LeNet-5's images/s on the CPU).
MAX_CALLS_IN_FLIGHT = 2


class TrainState(train_state.TrainState):
    """params, opt_state and step (from flax), plus BatchNorm statistics, the dropout key and
    the moving average of the weights (``ema_params``; {} without ``ema_decay``)."""

    batch_stats: Any
    rng: jax.Array
    ema_params: Any


def model_and_optimizer(config: dict, num_classes: int, steps_per_epoch: int):
    """``config``'s model, the same model as the step runs it (BatchNorm statistics and dropout
    masks over the mesh axis, i.e. the global batch), its learning-rate schedule and optimizer."""
    model = models.from_config(config["model"], num_classes, config["precision"])
    step_model = model.clone(axis_name=AXIS) if hasattr(model, "axis_name") else model
    schedule = optim.make_schedule(config, steps_per_epoch)
    return model, step_model, schedule, optim.make_optimizer(config, schedule)


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, image_shape,
                       seed: int, ema: bool = False) -> TrainState:
    """Initialises ``model`` for images of ``image_shape`` (H, W, C) from ``seed``; ``ema``: with
    a moving average of the weights (it starts at them)."""
    init_key, dropout_key = jax.random.split(jax.random.key(seed))
    variables = jax.jit(model.init, static_argnames="train")(
        init_key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    params = variables["params"]
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                             batch_stats=variables.get("batch_stats", {}), rng=dropout_key,
                             ema_params=jax.tree.map(jnp.copy, params) if ema else {})


def averaged(ema_params, params, step, decay: float):
    """The moving average of the weights after ``step`` steps (step >= 1, ``params`` the weights
    after it): the mean of the weights after each step, step i's weight proportional to
    ``decay ** (step - i)``. The same as an exponential moving average from zero divided by
    ``1 - decay ** step`` (Adam's bias correction), so the first epochs are not pulled towards
    the initial weights."""
    weight = (1 - decay) / (1 - jnp.power(jnp.float32(decay), step.astype(jnp.float32)))
    return jax.tree.map(lambda e, p: e + weight * (p - e), ema_params, params)


def eval_variables(state: TrainState) -> dict:
    """The variables the model is evaluated with: the averaged weights where there are some
    (any object with ``params`` and ``batch_stats`` will do, e.g. flax's ``TrainState``)."""
    return {"params": getattr(state, "ema_params", None) or state.params,
            "batch_stats": state.batch_stats}


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
    """Per-example softmax cross-entropy with optional label smoothing: [B, K], [B] -> [B]."""
    targets = jax.nn.one_hot(labels, logits.shape[-1])
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def train_step(state: TrainState, batch, axis_name: str | None = None,
               label_smoothing: float = 0.0, aux_loss_weight: float = 0.3,
               ema_decay: float | None = None):
    """One optimizer step on ``batch`` = {'image': float [B, H, W, C], 'label': int [B]}.

    Under ``axis_name`` each device holds its part of the global batch: gradients are averaged
    over the axis (BatchNorm averages its statistics there itself when built with the same
    axis_name). Returns the new state and summed metrics {'loss', 'correct', 'count'}.

    A model with auxiliary classifiers (GoogLeNet) returns ``(logits, [aux_logits, ...])`` when
    training; each auxiliary loss is added with weight ``aux_loss_weight``. The reported loss and
    accuracy are those of the main classifier.

    With ``ema_decay`` the state's ``ema_params`` follow the new weights (``averaged``).
    """
    grads, batch_stats, metrics = gradients_and_metrics(state, batch, label_smoothing,
                                                        aux_loss_weight)
    if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)
        batch_stats = jax.lax.pmean(batch_stats, axis_name)
        metrics = jax.lax.psum(metrics, axis_name)
    return apply_step(state, grads, batch_stats, ema_decay), metrics


def gradients_and_metrics(state: TrainState, batch, label_smoothing: float = 0.0,
                          aux_loss_weight: float = 0.3):
    """``train_step``'s forward and backward pass on this device's ``batch``: (the gradient of
    its mean loss, its new BatchNorm statistics, its summed metrics)."""
    # The same key on every device: dropout layers draw the global batch's masks from it and
    # keep their own rows (jaxcnn.models.layers.Dropout), whatever the device count.
    key = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        out, updates = state.apply_fn(variables, batch["image"], train=True,
                                      rngs={"dropout": key}, mutable=["batch_stats"])
        logits, aux_logits = out if isinstance(out, tuple) else (out, ())
        # The loss in float32 whatever the compute dtype (precision: bfloat16).
        logits = logits.astype(jnp.float32)
        aux_logits = [a.astype(jnp.float32) for a in aux_logits]
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
    return grads, batch_stats, metrics


def apply_step(state: TrainState, grads, batch_stats, ema_decay: float | None = None) -> TrainState:
    """``train_step``'s update: the optimizer step with ``grads``, the new BatchNorm statistics
    and, with ``ema_decay``, the moving average of the weights."""
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    if ema_decay:
        state = state.replace(ema_params=averaged(state.ema_params, state.params, state.step,
                                                  ema_decay))
    return state


def eval_step(state: TrainState, batch, axis_name: str | None = None, flip: bool = False):
    """Summed test metrics of ``batch`` (with 'mask': bool [B], False for padding examples);
    ``flip``: classify by the mean logits of each image and its mirror (``models.eval_logits``)."""
    logits = models.eval_logits(state.apply_fn, eval_variables(state), batch["image"], flip)
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


# -- what each device runs (under shard_map, axis AXIS) ------------------------------------------

@dataclasses.dataclass(frozen=True)
class StepSettings:
    """The static settings of the per-device functions (hashable: they are compiled in)."""

    seed: int
    batch_size: int  # global
    eval_batch_size: int  # global, a multiple of the device count
    num_devices: int
    steps_per_epoch: int
    eval_steps: int
    epochs: int
    num_test: int
    image_shape: tuple[int, int, int]
    normalize: input_pipeline.Normalization
    label_smoothing: float = 0.0
    aux_loss_weight: float = 0.3
    crop_padding: int = 0  # on-device augmentation of the memory feed
    flip: bool = False
    eval_flip: bool = False  # test-time augmentation (models.eval_logits)
    ema_decay: float | None = None  # the moving average of the weights (train_step)

    @classmethod
    def of(cls, config: dict, *, num_train: int, num_test: int, num_devices: int,
           image_shape, normalize: input_pipeline.Normalization, streaming: bool) -> "StepSettings":
        """The settings of ``config`` for a dataset of these sizes on ``num_devices`` devices
        (the evaluation batch rounded up to a multiple of the device count)."""
        batch_size, d = config["batch_size"], config["data"]
        eval_batch_size = math.ceil(config["eval_batch_size"] / num_devices) * num_devices
        return cls(
            seed=config["seed"], batch_size=batch_size, eval_batch_size=eval_batch_size,
            num_devices=num_devices, steps_per_epoch=num_train // batch_size,
            eval_steps=math.ceil(num_test / eval_batch_size), epochs=config["epochs"],
            num_test=num_test, image_shape=tuple(image_shape), normalize=normalize,
            label_smoothing=config["label_smoothing"], aux_loss_weight=config["aux_loss_weight"],
            crop_padding=0 if streaming else d["crop_padding"],
            flip=False if streaming else d["flip"], eval_flip=config["eval_flip"],
            ema_decay=config["ema_decay"])


def guarded_train_step(state: TrainState, sums: dict, batch, settings: StepSettings):
    """``train_step`` on this device's rows, its metrics added to ``sums``, and a NaN guard
    (``guard``)."""
    new_state, step_metrics = train_step(state, batch, AXIS, settings.label_smoothing,
                                         settings.aux_loss_weight, settings.ema_decay)
    return guard(state, new_state, sums, step_metrics)


def guard(state: TrainState, new_state: TrainState, sums: dict, step_metrics: dict):
    """(the state, ``sums`` + the step's metrics) after a step from ``state`` to ``new_state``,
    with a NaN guard: once a step's loss is not finite, it and every later step leave the state
    as it was (the last good one), and ``sums['first_bad_step']`` records the global step."""
    healthy = sums["first_bad_step"] < 0
    finite = jnp.isfinite(step_metrics["loss"])
    keep = healthy & finite
    state = new_state.replace(**{
        field: jax.tree.map(lambda new, old: jnp.where(keep, new, old),
                            getattr(new_state, field), getattr(state, field))
        for field in ("step", "params", "opt_state", "batch_stats", "ema_params")})
    sums = {
        "loss": sums["loss"] + jnp.where(keep, step_metrics["loss"], 0.0),
        "correct": sums["correct"] + jnp.where(keep, step_metrics["correct"], 0),
        "count": sums["count"] + jnp.where(keep, step_metrics["count"], 0),
        "first_bad_step": jnp.where(healthy & ~finite, state.step + 1, sums["first_bad_step"]),
    }
    return state, sums


def _device_rows(batch_size: int, num_devices: int):
    """(rows per device, this device's first row) of a global batch."""
    local = batch_size // num_devices
    return local, jax.lax.axis_index(AXIS) * local


def memory_train_batch(images, labels, perm, seed_key, epoch, step, first_row, local: int,
                       settings: StepSettings) -> dict:
    """Rows ``first_row`` .. + ``local`` of step ``step`` of ``epoch``'s global batch (the
    epoch's order ``perm``), gathered, normalised and augmented, keyed by (seed, epoch, step,
    global position)."""
    indices = jax.lax.dynamic_slice(perm, (step * settings.batch_size + first_row,), (local,))
    epoch_key = jax.random.fold_in(jax.random.wrap_key_data(seed_key), epoch)
    return input_pipeline.make_batch(
        images, labels, indices, first_row + jnp.arange(local, dtype=jnp.int32),
        normalize=settings.normalize, augment_key=jax.random.fold_in(epoch_key, step),
        crop_padding=settings.crop_padding, flip=settings.flip)


def memory_eval_batch(images, labels, step, first_row, local: int, settings: StepSettings) -> dict:
    """Rows ``first_row`` .. + ``local`` of evaluation batch ``step``, normalised, with 'mask'
    False for rows past the last test example (so every example counts exactly once)."""
    rows = step * settings.eval_batch_size + first_row + jnp.arange(local, dtype=jnp.int32)
    mask = rows < settings.num_test
    batch = input_pipeline.make_batch(images, labels, jnp.where(mask, rows, 0), rows,
                                      normalize=settings.normalize)
    batch["mask"] = mask
    return batch


def train_steps_from_memory(state, sums, images, labels, perm, seed_key, epoch, first_step, *,
                            settings: StepSettings, num_steps: int):
    """``num_steps`` steps from ``first_step`` of ``epoch`` with the dataset on the device:
    images uint8 [N, H, W, C], labels int32 [N], perm int32 [N] (the epoch's order), seed_key
    ``input_pipeline.seed_key_data(seed)`` (an argument, so the program does not depend on the
    seed). Each device gathers, normalises and augments its own rows; augmentation is keyed by
    (seed, epoch, step, global position)."""
    local, first_row = _device_rows(settings.batch_size, settings.num_devices)

    def one_step(carry, step):
        state, sums = carry
        batch = memory_train_batch(images, labels, perm, seed_key, epoch, step, first_row, local,
                                   settings)
        return guarded_train_step(state, sums, batch, settings), None

    steps = first_step + jnp.arange(num_steps, dtype=jnp.int32)
    if num_steps == 1:
        return one_step((state, sums), steps[0])[0]
    return jax.lax.scan(one_step, (state, sums), steps)[0]


def train_step_from_stream(state, sums, batch, *, settings: StepSettings):
    """One step on this device's rows of a streamed batch {'image': uint8, 'label': int32}
    (decoded and augmented on the host)."""
    batch = {"image": settings.normalize(batch["image"]), "label": batch["label"]}
    return guarded_train_step(state, sums, batch, settings)


def eval_steps_from_memory(state, sums, images, labels, first_step, *, settings: StepSettings,
                           num_steps: int):
    """Adds the test metrics of ``num_steps`` evaluation batches to ``sums``; rows past the last
    test example are masked out, so every example counts exactly once."""
    local, first_row = _device_rows(settings.eval_batch_size, settings.num_devices)

    def one_step(sums, step):
        batch = memory_eval_batch(images, labels, step, first_row, local, settings)
        return _add(sums, eval_step(state, batch, AXIS, settings.eval_flip)), None

    steps = first_step + jnp.arange(num_steps, dtype=jnp.int32)
    if num_steps == 1:
        return one_step(sums, steps[0])[0]
    return jax.lax.scan(one_step, sums, steps)[0]


def eval_step_from_stream(state, sums, batch, *, settings: StepSettings):
    """Adds the test metrics of this device's rows of a streamed batch (with its 'mask')."""
    batch = {"image": settings.normalize(batch["image"]), "label": batch["label"],
             "mask": batch["mask"]}
    return _add(sums, eval_step(state, batch, AXIS, settings.eval_flip))


def _add(a, b):
    return jax.tree.map(jnp.add, a, b)


def check_batch_size(batch_size: int, num_devices: int, where: str = "") -> None:
    """UserError unless the global ``batch_size`` splits evenly over ``num_devices``."""
    if batch_size % num_devices:
        raise UserError(
            f"batch_size {batch_size} does not divide over the {num_devices} devices{where}. "
            f"Use a multiple of {num_devices}, e.g. --set batch_size="
            f"{max(1, round(batch_size / num_devices)) * num_devices}.")


def zero_sums(state: TrainState, eval_batch_size: int, image_shape) -> tuple[dict, dict]:
    """The metric sums a train epoch and an evaluation start from (NumPy zeros; the eval sums'
    structure, with or without top-5, comes from tracing ``eval_step``)."""
    train_zero = {"loss": np.float32(0), "correct": np.int32(0), "count": np.int32(0),
                  "first_bad_step": np.int32(-1)}
    batch = {"image": jax.ShapeDtypeStruct((eval_batch_size, *image_shape), jnp.float32),
             "label": jax.ShapeDtypeStruct((eval_batch_size,), jnp.int32),
             "mask": jax.ShapeDtypeStruct((eval_batch_size,), jnp.bool_)}
    eval_zero = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                             jax.eval_shape(eval_step, state, batch))
    return train_zero, eval_zero


# -- the Trainer -------------------------------------------------------------------------------

class Trainer:
    """Compiles one config's model and steps over a ``('data',)`` mesh, and runs them.

    ``data`` is an in-memory ``Dataset`` (the memory feed: the data on every device) or a
    ``StreamingDataset`` (the streaming feed: grain reads it on the host); see jaxcnn.feed.
    """

    def __init__(self, config: dict, data: datasets.Dataset | datasets.StreamingDataset,
                 mesh: Mesh, replicas: int = 1):
        self.config, self.data, self.mesh = config, data, mesh
        self.num_devices, self.replicas = mesh.size, replicas
        batch_size = config["batch_size"]
        check_batch_size(batch_size, self.num_devices * replicas)
        self.num_train, self.num_test = data.num_train, data.num_test
        self.steps_per_epoch = self.num_train // batch_size
        if self.steps_per_epoch == 0:
            raise UserError(
                f"batch_size {batch_size} is larger than the {self.num_train} training examples: "
                "lower batch_size.")
        self.streaming = isinstance(data, datasets.StreamingDataset)
        self.pipeline = "stream" if self.streaming else "memory"
        self.epoch_loop = feed.choose_epoch_loop(config["epoch_loop"], self.pipeline)
        feed.check_combinations(config, self.pipeline, self.epoch_loop)
        d = config["data"]
        augmentation = feed.augmentation_of(d)
        image_shape = image_shape_of(data, d["image_size"])
        if self.streaming:
            mean, std = stream.sample_normalization(data.train, augmentation)
            self.normalize = input_pipeline.Normalization(mean, std)
        else:
            self.normalize = input_pipeline.Normalization.of(data.train_images)
        # With process replicas each replica takes the rows a device of its index would.
        self.settings = StepSettings.of(
            config, num_train=self.num_train, num_test=self.num_test,
            num_devices=self.num_devices * replicas,
            image_shape=image_shape, normalize=self.normalize, streaming=self.streaming)
        eval_batch_size = self.settings.eval_batch_size

        self.model, step_model, self.schedule, tx = model_and_optimizer(
            config, data.num_classes, self.steps_per_epoch)
        state = create_train_state(self.model, tx, image_shape, config["seed"],
                                   ema=config["ema_decay"] is not None)
        self.state = feed.replicated(mesh, state.replace(apply_fn=step_model.apply))
        self.param_count = sum(x.size for x in jax.tree.leaves(state.params))

        if self.streaming:
            workers = d["num_workers"] if d["num_workers"] is not None else stream.default_num_workers()
            self.feed = feed.StreamFeed(data, mesh, self.settings, augmentation, workers)
        elif replicas > 1:
            if self.epoch_loop != "step":
                raise UserError("Process replicas run the step loop: set epoch_loop to 'step' or "
                                f"unset {replicas_lib.ENV}.")
            self.feed = replicas_lib.ReplicaFeed(data, mesh, self.settings, replicas, config,
                                                 step_model)
        else:
            self.feed = feed.MemoryFeed(data, mesh, self.settings, self.epoch_loop)
        self._train_sums0, self._eval_sums0 = zero_sums(state, eval_batch_size, image_shape)
        start = time.perf_counter()
        with layers.one_core_per_device(cpu_devices.one_core_each(mesh.local_devices)):
            self.feed.compile(self.state, self.zero_sums(), feed.replicated(mesh, self._eval_sums0))
        self.compile_seconds = time.perf_counter() - start

    # -- running ---------------------------------------------------------------------------

    def zero_sums(self, saved: dict | None = None):
        """Fresh metric sums of an epoch (or ``saved`` ones from a checkpoint), on the devices."""
        zeros = self._train_sums0
        if saved is not None:
            zeros = {k: np.asarray(saved[k], v.dtype) for k, v in zeros.items()}
        return feed.replicated(self.mesh, zeros)

    def run_train_steps(self, epoch: int, first_step: int = 0, saved_sums: dict | None = None):
        """Trains ``epoch`` from ``first_step``: yields (steps done in the epoch, metric sums)
        after every call. On several devices at most MAX_CALLS_IN_FLIGHT calls are queued: the
        host waits for the oldest call's sums before it launches another."""
        sums = self.zero_sums(saved_sums)
        in_flight = collections.deque()
        depth = MAX_CALLS_IN_FLIGHT if self.num_devices > 1 else math.inf
        for step in range(first_step, self.steps_per_epoch, self.feed.steps_per_call):
            while len(in_flight) >= depth:
                jax.block_until_ready(in_flight.popleft())
            self.state, sums = self.feed.train(self.state, sums, epoch, step)
            if depth < math.inf:
                in_flight.append(sums)
            yield step + self.feed.steps_per_call, sums

    def train_epoch(self, epoch: int) -> dict:
        """Trains one whole epoch; returns its mean train loss and accuracy."""
        sums = None
        for _, sums in self.run_train_steps(epoch):
            pass
        return epoch_means(sums)

    def evaluate(self) -> dict:
        """Loss, top-1 (and top-5) accuracy over every test example exactly once."""
        m = jax.device_get(self.feed.evaluate(self.state, feed.replicated(self.mesh, self._eval_sums0)))
        out = {"test_loss": float(m["loss"] / m["count"]),
               "test_accuracy": float(m["correct"] / m["count"]),
               "test_count": int(m["count"])}
        if "correct_top5" in m:
            out["test_top5"] = float(m["correct_top5"] / m["count"])
        return out

    def variables(self) -> dict:
        """The model's variables, for ``model.apply(variables, x, train=False)``: the weights it
        is evaluated with (their moving average with ``ema_decay``)."""
        return jax.device_get({k: v for k, v in eval_variables(self.state).items() if v})

    def test_sample(self) -> datasets.Dataset:
        """The test images as an in-memory Dataset, for the plots (see feed.test_sample)."""
        augmentation = self.feed.augmentation if self.streaming else None
        return feed.test_sample(self.data, augmentation)

    def close(self) -> None:
        self.feed.close()


def epoch_means(sums) -> dict:
    """Mean train loss and accuracy from an epoch's metric sums."""
    m = jax.device_get(sums)
    count = max(int(m["count"]), 1)
    return {"train_loss": float(m["loss"] / count), "train_accuracy": float(m["correct"] / count)}


def make_mesh(devices=None) -> Mesh:
    """A one-axis ('data') mesh of ``devices`` (default: every device of every process)."""
    return Mesh(np.array(jax.devices() if devices is None else devices), (AXIS,))


def image_shape_of(data: datasets.Dataset | datasets.StreamingDataset,
                   image_size: int | None) -> tuple[int, int, int]:
    """(H, W, C) of the model's input: the data's images, or ``image_size`` squares of them."""
    if isinstance(data, datasets.Dataset):
        return data.image_shape
    if image_size:
        return (image_size, image_size, data.channels)
    if data.image_shape is None:
        raise UserError(
            f"The images of the dataset '{data.name}' ({data.source}) do not all have one "
            "size, so the model's input size is not known. Set data.image_size, e.g. --set "
            "data.image_size=224, to resize them.")
    return tuple(data.image_shape)


def model_summary(config: dict, data: datasets.Dataset | datasets.StreamingDataset) -> Summary:
    """The per-layer summary of the run's model on its images (one abstract trace)."""
    model = models.from_config(config["model"], data.num_classes, config["precision"])
    return summarize(model, image_shape_of(data, config["data"]["image_size"]))


def mesh_for(config: dict, data: datasets.Dataset | datasets.StreamingDataset,
             summary=None) -> Mesh:
    """The mesh a run of ``config`` on ``data`` trains on: every device, except that the host
    devices jaxcnn made itself (one per core, see jaxcnn.cpu_devices) are used only as far as
    the model has work for them (its FLOPs from ``summary()``, default ``model_summary``)."""
    flops = None
    if cpu_devices.requested():
        flops = (summary or functools.partial(model_summary, config, data))().total_flops
    return make_mesh(cpu_devices.choose(jax.devices(), config["batch_size"], flops))


def replicas_for(config: dict, data: datasets.Dataset | datasets.StreamingDataset, mesh: Mesh) -> int:
    """The process replicas a run of ``config`` on ``data`` over ``mesh`` trains with (1: none;
    see jaxcnn.replicas)."""
    pipeline = "stream" if isinstance(data, datasets.StreamingDataset) else "memory"
    return replicas_lib.count_for(config, mesh, pipeline,
                                  feed.choose_epoch_loop(config["epoch_loop"], pipeline))


# -- the run ------------------------------------------------------------------------------------

def train_and_evaluate(config: dict, workdir: str, *, log=print) -> dict:
    """Trains ``config`` (a resolved config, see jaxcnn.config) and writes the run to ``workdir``.

    Resumes from the newest readable checkpoint in ``workdir/checkpoints`` if there is one: the
    resumed run is bit-identical on CPU to one never interrupted, since the data order,
    augmentation and dropout are pure functions of (seed, epoch, step), in memory and streamed.
    SIGTERM/SIGINT finish the current step, save and raise RunStopped; so does a loss that turns
    NaN/inf (without saving: the last good checkpoint stays the newest). At the end, process 0
    writes the run's PNGs (jaxcnn.plot) from the final parameters; a failure there is only a
    warning. Returns the summary (summary.json).
    """
    session_start = time.perf_counter()
    data = feed.open_data(config["data"])
    if data.warning:
        console.warn(console.banner(data.warning))
    # Traced once at most: for the device count and for model_summary.txt of a new run.
    summary = functools.cache(functools.partial(model_summary, config, data))
    mesh = mesh_for(config, data, summary)
    trainer = Trainer(config, data, mesh, replicas_for(config, data, mesh))
    try:
        return _run(config, workdir, trainer, session_start, log, summary)
    finally:
        trainer.close()


def _run(config: dict, workdir: str, trainer: Trainer, session_start: float, log, summary) -> dict:
    data, steps_per_epoch, epochs = trainer.data, trainer.steps_per_epoch, config["epochs"]
    every_steps = config["checkpoint"]["every_steps"]
    writer = rundir.RunWriter(workdir, enabled=jax.process_index() == 0)
    ckpts = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints"), config["checkpoint"]["keep"],
                                   asynchronous=True)
    image_shape = list(trainer.settings.image_shape)
    info = {"model": config["model"]["name"], "param_count": trainer.param_count,
            "data": {"dataset": data.name, "source": data.source, "warning": data.warning,
                     "pipeline": trainer.pipeline,
                     "train_count": trainer.num_train, "test_count": trainer.num_test,
                     "image_shape": image_shape,
                     "num_classes": data.num_classes, "class_names": list(data.class_names),
                     "normalization": trainer.normalize._asdict()}}
    stream_state = {"pipeline": trainer.pipeline, "num_train": trainer.num_train,
                    "global_batch": config["batch_size"]}
    progress = Progress(data=stream_state)
    restored = ckpts.restore_latest(trainer.state)
    if restored:
        trainer.state, progress = restored
        _check_same_stream(progress.data, stream_state)
        progress.data = stream_state
        if progress.step_in_epoch:
            where = (f"epoch {progress.epoch + 1} of {epochs}, {progress.step_in_epoch}/"
                     f"{steps_per_epoch} steps into it")
        else:
            where = f"the end of epoch {progress.epoch} of {epochs}"
        log(f"resumed from the checkpoint at step {int(trainer.state.step)} ({where})")
        config_file = writer.path("config.json")
        if writer.enabled and (not os.path.isfile(config_file) or
                               rundir.read_json(config_file) != rundir.jsonable(config)):
            writer.write_json("config.json", config)  # e.g. more epochs (--set epochs=N)
    else:
        writer.write_json("config.json", config)
        writer.write_text("model_summary.txt", str(summary()))
    writer.write_json("run.json", info)  # what restore, plot and compare need, from the start
    writer.truncate_metrics(int(trainer.state.step))
    log(f"data: {data.name} from {data.source}: {trainer.num_train} train / {trainer.num_test} test "
        f"images {tuple(image_shape)}, {data.num_classes} classes, {trainer.pipeline} pipeline")
    log(f"model: {config['model']['name']}, {trainer.param_count:,} parameters; "
        f"{trainer.num_devices} device(s) ({jax.default_backend()})"
        f"{f' in each of {trainer.replicas} processes (one core each)' if trainer.replicas > 1 else ''}, "
        f"epoch loop '{trainer.epoch_loop}', "
        f"compiled in {trainer.compile_seconds:.1f} s")

    wall_before = progress.wall_seconds  # of earlier sessions of this run

    def save(test_accuracy=None):
        progress.wall_seconds = wall_before + time.perf_counter() - session_start
        ckpts.save(trainer.state, progress, test_accuracy)

    def check_finite(sums):
        bad = int(jax.device_get(sums["first_bad_step"]))
        if bad >= 0:
            raise _diverged(bad, trainer, ckpts)

    bar = console.progress_bar(epochs * steps_per_epoch, initial=int(trainer.state.step),
                               desc=console.epoch_label(progress.epoch, epochs))
    try:
        with StopSignals() as stop:
            for epoch in range(progress.epoch, epochs):
                first = progress.step_in_epoch
                if bar is not None:
                    bar.set_description(console.epoch_label(epoch, epochs))
                start = time.perf_counter()
                wait_before = getattr(trainer.feed, "wait_seconds", None)
                sums = None
                for done, sums in trainer.run_train_steps(
                        epoch, first, progress.epoch_metrics if first else None):
                    if bar is not None:
                        bar.update(trainer.feed.steps_per_call)
                    global_step = epoch * steps_per_epoch + done
                    if done < steps_per_epoch and (
                            stop.signal or (every_steps and global_step % every_steps == 0)):
                        check_finite(sums)
                        progress.step_in_epoch, progress.epoch_metrics = done, _sums(sums)
                        progress.train_seconds += time.perf_counter() - start
                        start = time.perf_counter()
                        save()
                        if stop.signal:
                            raise stop.stopped(global_step, workdir)
                check_finite(sums)
                seconds = time.perf_counter() - start
                record = {"step": (epoch + 1) * steps_per_epoch, "epoch": epoch + 1,
                          **epoch_means(sums),
                          "learning_rate": float(trainer.schedule((epoch + 1) * steps_per_epoch - 1)),
                          "images_per_sec": (steps_per_epoch - first) * config["batch_size"] / seconds,
                          "epoch_seconds": seconds}
                if wait_before is not None:
                    record["input_wait_share"] = (trainer.feed.wait_seconds - wait_before) / seconds
                if (epoch + 1) % config["eval_every_epochs"] == 0 or epoch + 1 == epochs:
                    record.update(trainer.evaluate())
                    best = progress.best_test_accuracy
                    if best is None or record["test_accuracy"] > best:
                        progress.best_test_accuracy = record["test_accuracy"]
                        progress.best_epoch = epoch + 1
                writer.append_metrics(record)
                console.log_epoch(record, epochs, bar, log)
                progress.epoch, progress.step_in_epoch, progress.epoch_metrics = epoch + 1, 0, None
                progress.last_record = record
                progress.train_seconds += seconds
                if ((epoch + 1) % config["checkpoint"]["every_epochs"] == 0 or epoch + 1 == epochs
                        or stop.signal):
                    save(record.get("test_accuracy"))
                if stop.signal and epoch + 1 < epochs:
                    raise stop.stopped(record["step"], workdir)
    finally:
        ckpts.close()
        if bar is not None:
            bar.close()

    wall = wall_before + time.perf_counter() - session_start
    summary = console.run_summary(config, trainer, progress, info, wall)
    writer.write_json("summary.json", summary)
    plots = console.write_plots(workdir, trainer, config, info, log) if writer.enabled else None
    console.log_done(summary, workdir, writer.enabled, log, plots)
    return summary


def _check_same_stream(saved: dict | None, now: dict) -> None:
    """Warns when a run resumes on data that is not what its checkpoint's stream indexed."""
    if saved is None or saved == now:
        return
    changes = ", ".join(f"{k} {saved.get(k)} -> {now.get(k)}" for k in now if saved.get(k) != now.get(k))
    console.warn(f"WARNING: the data changed since the checkpoint was saved ({changes}); the run "
                 "goes on, but from here on its batches differ from those of an uninterrupted run.")


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


def _sums(sums) -> dict:
    return {k: np.asarray(v).item() for k, v in jax.device_get(sums).items()}
