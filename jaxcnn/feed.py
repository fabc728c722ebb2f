"""How batches reach the devices: the in-memory feed and the streaming feed, and which one a run
uses (``data.pipeline``: "memory", "stream" or "auto").

- `MemoryFeed`: the whole dataset sits on every device as uint8; each device gathers, normalises
  and augments its own rows of every global batch inside the jitted step (input_pipeline).
- `StreamFeed`: grain reads, decodes and augments the examples on the host, in worker processes
  (jaxcnn.stream); each process reads only its own rows, which become one global batch
  (``jax.make_array_from_process_local_data``), put on the devices ahead of the step by a
  prefetch thread.

Both call the pure per-device functions of jaxcnn.train under ``jax.shard_map`` and give the
Trainer the same three calls: ``train(state, sums, epoch, step)``, ``evaluate(state, sums)``
and ``close()``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import queue
import threading
import time

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxcnn import datasets, input_pipeline, stream
from jaxcnn.datasets import Dataset, StreamingDataset
from jaxcnn.errors import UserError

PREFETCH_BATCHES = 2  # global batches the stream keeps ready on the devices


def memory_budget_bytes(data_config: dict) -> int:
    """data.memory_budget_gb, else a quarter of this machine's memory."""
    if data_config["memory_budget_gb"] is not None:
        return int(data_config["memory_budget_gb"] * 2**30)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def planned_pipeline(data_config: dict) -> str:
    """The pipeline ``data_config`` will use, as far as it is known without data: 'memory',
    'stream', or 'auto' where only the dataset's size decides."""
    pipeline = data_config["pipeline"]
    if pipeline != "auto":
        return pipeline
    if data_config["random_resized_crop"]:
        return "stream"
    return "memory" if data_config["dataset"] in datasets.BUILTIN_NAMES else "auto"


def choose_epoch_loop(requested: str, pipeline: str) -> str:
    """'step' or 'scan' for ``pipeline`` ('memory', 'stream', or 'auto' while unknown):
    'auto' means 'step' on CPU (faster there) and with the stream, 'scan' elsewhere in memory."""
    import jax

    if pipeline == "stream":
        if requested == "scan":
            raise UserError(
                "epoch_loop 'scan' runs a whole epoch in one call over data on the devices; the "
                "streaming pipeline feeds one batch per step. Use --set epoch_loop=step (or "
                "auto), or data.pipeline=memory.")
        return "step"
    if requested == "auto":
        return "scan" if pipeline == "memory" and jax.default_backend() != "cpu" else "step"
    return requested


def check_combinations(config: dict, pipeline: str, epoch_loop: str) -> None:
    """Refuses settings that cannot go together with ``pipeline`` and ``epoch_loop`` (as
    planned before the data is read, or as chosen once it is)."""
    if config["data"]["random_resized_crop"] and pipeline == "memory":
        raise UserError(
            "data.random_resized_crop crops each image anew from its full-size original, which "
            "the memory pipeline does not keep: use --set data.pipeline=stream (or auto).")
    if config["checkpoint"]["every_steps"] and epoch_loop == "scan":
        raise UserError(
            "checkpoint.every_steps needs epoch_loop 'step': the scan loop runs a whole epoch in "
            "one call, so it can only save at epoch ends. Set --set epoch_loop=step or drop "
            "checkpoint.every_steps.")


def open_data(data_config: dict) -> Dataset | StreamingDataset:
    """The run's data: whole in memory or as a stream, by ``data.pipeline`` (limited by
    max_train_examples / max_test_examples)."""
    name, data_dir, size = data_config["dataset"], data_config["data_dir"], data_config["image_size"]
    pipeline, streaming = planned_pipeline(data_config), None
    if pipeline == "auto":
        streaming = datasets.open_streaming(name, data_dir, image_size=size)
        pipeline = _memory_or_stream(data_config, streaming)
    if pipeline == "memory":
        data = datasets.load(name, data_dir, image_size=size)
    else:
        data = streaming or datasets.open_streaming(name, data_dir, image_size=size)
    return limit(data, data_config["max_train_examples"], data_config["max_test_examples"])


def _memory_or_stream(data_config: dict, streaming: StreamingDataset) -> str:
    """'memory' when ``streaming`` fits the memory budget at the run's image size."""
    if isinstance(streaming.train, datasets.ArraySource):
        return "memory"
    size = data_config["image_size"]
    shape = (size, size, streaming.channels) if size else streaming.image_shape
    if shape is None:
        return "stream"  # images of several sizes: only the stream resizes them on the fly
    count = data_config["max_train_examples"] or streaming.num_train
    total = (count + streaming.num_test) * math.prod(shape)
    return "memory" if total <= memory_budget_bytes(data_config) else "stream"


def limit(data, max_train: int | None, max_test: int | None):
    """``data`` with only its first ``max_train`` / ``max_test`` examples."""
    changes = {}
    if isinstance(data, Dataset):
        if max_train is not None:
            changes.update(train_images=data.train_images[:max_train],
                           train_labels=data.train_labels[:max_train])
        if max_test is not None:
            changes.update(test_images=data.test_images[:max_test],
                           test_labels=data.test_labels[:max_test])
        return dataclasses.replace(data, **changes) if changes else data
    if max_train is not None and max_train < data.num_train:
        changes["train"] = datasets.base.Head(data.train, max_train)
    if max_test is not None and max_test < data.num_test:
        changes["test"] = datasets.base.Head(data.test, max_test)
    return dataclasses.replace(data, **changes) if changes else data


def test_sample(data, augmentation: stream.Augmentation | None, max_images: int = 2000) -> Dataset:
    """Test images in memory, for the plots: ``data`` itself when in memory, else its first
    ``max_images`` test examples at their evaluation view."""
    if isinstance(data, Dataset):
        return data
    count = min(data.num_test, max_images)
    pairs = [data.test[i] for i in range(count)]
    images = np.stack([augmentation.evaluate(image) for image, _ in pairs])
    labels = np.array([label for _, label in pairs], np.int32)
    return Dataset(data.name, images[:1], labels[:1], images, labels, data.num_classes,
                   data.class_names, data.source)


def augmentation_of(data_config: dict) -> stream.Augmentation:
    """The streamed views of ``data_config``."""
    return stream.Augmentation(data_config["image_size"], data_config["random_resized_crop"],
                               data_config["crop_padding"], data_config["flip"])


def replicated(mesh: Mesh, tree):
    """A copy of ``tree`` on every device of the mesh, across all processes (each process fills
    its own devices with the same values)."""
    sharding = NamedSharding(mesh, P())

    def put(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(x)))
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)


def _sharded(fn, mesh: Mesh, in_specs, out_specs):
    """``fn`` (a partial of a per-device function of jaxcnn.train) under shard_map, keeping the
    function's name (which names its compiled program and compilation-cache entry)."""
    fn = functools.update_wrapper(fn, fn.func)
    # check_vma=False: see jaxcnn.train's module docstring.
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


def memory_programs(mesh: Mesh, settings, epoch_loop: str):
    """The jitted train and eval programs of the memory feed: (state, sums, images, labels,
    perm, seed_key, epoch, first_step) and (state, sums, images, labels, first_step), all replicated.
    With epoch_loop 'scan' one call runs a whole epoch (or the whole evaluation)."""
    from jaxcnn import train

    scan = epoch_loop == "scan"
    rep = P()
    train_fn = functools.partial(train.train_steps_from_memory, settings=settings,
                                 num_steps=settings.steps_per_epoch if scan else 1)
    eval_fn = functools.partial(train.eval_steps_from_memory, settings=settings,
                                num_steps=settings.eval_steps if scan else 1)
    # The state's buffers are reused; the metric sums are not, so the loop can wait on them.
    return (jax.jit(_sharded(train_fn, mesh, (rep,) * 8, rep), donate_argnums=(0,)),
            jax.jit(_sharded(eval_fn, mesh, (rep,) * 5, rep), donate_argnums=(1,)))


def stream_programs(mesh: Mesh, settings):
    """The jitted train and eval programs of the streaming feed: (state, sums, batch), the batch
    split over the devices along the data axis."""
    from jaxcnn import train

    rep, rows = P(), P(train.AXIS)
    train_fn = functools.partial(train.train_step_from_stream, settings=settings)
    eval_fn = functools.partial(train.eval_step_from_stream, settings=settings)
    return (jax.jit(_sharded(train_fn, mesh, (rep, rep, rows), rep), donate_argnums=(0,)),
            jax.jit(_sharded(eval_fn, mesh, (rep, rep, rows), rep), donate_argnums=(1,)))


class MemoryFeed:
    """The dataset replicated on every device; ``epoch_loop`` 'scan' runs a whole epoch per call."""

    def __init__(self, data: Dataset, mesh: Mesh, settings, epoch_loop: str):
        self.mesh, self.settings, self.epoch_loop = mesh, settings, epoch_loop
        self.num_train, self.num_test = data.num_train, data.num_test
        put = functools.partial(replicated, mesh)
        self.train_images, self.train_labels = put(data.train_images), put(data.train_labels)
        self.test_images, self.test_labels = put(data.test_images), put(data.test_labels)
        self.seed_key = put(input_pipeline.seed_key_data(settings.seed))
        self.steps_per_call = settings.steps_per_epoch if epoch_loop == "scan" else 1
        self._eval_steps_per_call = settings.eval_steps if epoch_loop == "scan" else 1
        self._train_fn, self._eval_fn = memory_programs(mesh, settings, epoch_loop)
        self._permute = jax.jit(input_pipeline.epoch_permutation, static_argnums=(2,),
                                out_shardings=NamedSharding(mesh, P()))
        self._perm_epoch, self._perm = None, None

    def compile(self, state, train_sums, eval_sums) -> None:
        perm = self.permutation(0)
        self._train = self._train_fn.lower(state, train_sums, self.train_images, self.train_labels,
                                           perm, self.seed_key, 0, 0).compile()
        self._eval = self._eval_fn.lower(state, eval_sums, self.test_images, self.test_labels,
                                         0).compile()

    def permutation(self, epoch: int):
        """The order of the training examples in ``epoch`` (on the devices)."""
        if self._perm_epoch != epoch:
            self._perm = self._permute(self.seed_key, epoch, self.num_train)
            self._perm_epoch = epoch
        return self._perm

    def start(self, global_step: int) -> None:
        """Nothing to start: any step can be computed from (seed, epoch, step) alone."""

    def train(self, state, sums, epoch: int, step: int):
        """Runs ``steps_per_call`` steps from ``step`` of ``epoch``: (state, metric sums)."""
        return self._train(state, sums, self.train_images, self.train_labels,
                           self.permutation(epoch), self.seed_key, epoch, step)

    def evaluate(self, state, sums):
        for step in range(0, self.settings.eval_steps, self._eval_steps_per_call):
            sums = self._eval(state, sums, self.test_images, self.test_labels, step)
        return sums

    def close(self) -> None:
        pass


class StreamFeed:
    """Batches streamed from the host by grain (jaxcnn.stream), one global batch per call."""

    def __init__(self, data: StreamingDataset, mesh: Mesh, settings, augmentation,
                 num_workers: int):
        from jaxcnn import train

        self.data, self.mesh, self.settings = data, mesh, settings
        self.augmentation, self.num_workers = augmentation, num_workers
        self.steps_per_call = 1
        self.batch_sharding = NamedSharding(mesh, P(train.AXIS))
        self.layout = stream.Layout(settings.batch_size, settings.steps_per_epoch,
                                    jax.process_index(), jax.process_count())
        self.eval_layout = stream.Layout(settings.eval_batch_size, settings.eval_steps,
                                         jax.process_index(), jax.process_count())
        self._train_fn, self._eval_fn = stream_programs(mesh, settings)
        self._batches = None
        self._next_step = None
        self.wait_seconds = 0.0  # time the loop waited for the host pipeline

    def _batch_spec(self, batch_size: int, with_mask: bool):
        h, w, c = self.settings.image_shape
        spec = {"image": jax.ShapeDtypeStruct((batch_size, h, w, c), np.uint8, sharding=self.batch_sharding),
                "label": jax.ShapeDtypeStruct((batch_size,), np.int32, sharding=self.batch_sharding)}
        if with_mask:
            spec["mask"] = jax.ShapeDtypeStruct((batch_size,), np.bool_, sharding=self.batch_sharding)
        return spec

    def compile(self, state, train_sums, eval_sums) -> None:
        self._train = self._train_fn.lower(
            state, train_sums, self._batch_spec(self.settings.batch_size, False)).compile()
        self._eval = self._eval_fn.lower(
            state, eval_sums, self._batch_spec(self.settings.eval_batch_size, True)).compile()

    def _global(self, local: dict) -> dict:
        return {k: jax.make_array_from_process_local_data(self.batch_sharding, v)
                for k, v in local.items()}

    def start(self, global_step: int) -> None:
        """Starts the stream at ``global_step`` of the run (0, or where a resume continues)."""
        self.close()
        total = self.settings.epochs * self.settings.steps_per_epoch
        batches = stream.train_batches(
            self.data.train, seed=self.settings.seed, layout=self.layout, start_step=global_step,
            num_steps=total - global_step, augmentation=self.augmentation,
            num_workers=self.num_workers)
        self._batches = _DevicePrefetch(batches, self._global, PREFETCH_BATCHES)
        self._next_step = global_step

    def train(self, state, sums, epoch: int, step: int):
        global_step = epoch * self.settings.steps_per_epoch + step
        if self._batches is None or global_step != self._next_step:
            self.start(global_step)
        start = time.perf_counter()
        batch = self._batches.next()
        self.wait_seconds += time.perf_counter() - start
        self._next_step = global_step + 1
        return self._train(state, sums, batch)

    def evaluate(self, state, sums):
        batches = stream.eval_batches(self.data.test, layout=self.eval_layout,
                                      augmentation=self.augmentation)
        try:
            for local in batches:
                sums = self._eval(state, sums, self._global(local))
        finally:
            batches.close()
        return sums

    def close(self) -> None:
        if self._batches is not None:
            self._batches.close()
            self._batches = None


class _DevicePrefetch:
    """Pulls host batches in a thread and puts them on the devices, ``depth`` batches ahead."""

    _DONE = object()

    def __init__(self, batches, to_device, depth: int):
        self._batches, self._to_device = batches, to_device
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jaxcnn-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for local in self._batches:
                item = self._to_device(local)
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put(self._DONE)
        except BaseException as error:  # noqa: BLE001 - handed to the training loop
            self._queue.put(error)

    def next(self):
        item = self._queue.get()
        if item is self._DONE:
            raise RuntimeError("the stream ended before the run did")
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)
        self._batches.close()
