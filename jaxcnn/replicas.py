"""Process replicas on a CPU: one single-core process per core, their gradients summed in shared
memory, in place of one XLA device per core.

XLA:CPU runs a step's kernels one after another, each split over the process's thread pool, and
two devices of one process share that pool: LeNet-5 at batch 128 gains 1.30x from a second core
where PyTorch gains 1.66x. Two processes, each pinned to its own core (one XLA thread), run their
halves of the batch side by side; XLA's own collectives between processes (gloo) take 4-6 ms an
all-reduce here, so the replicas add their vectors through a file in /dev/shm instead (0.1 ms).

A run with replicas (``Trainer(..., replicas=N)``; the launcher's count comes from ``plan``,
before JAX starts, confirmed by ``count_for``): this process is replica 0 and keeps every file
of the run; it starts N - 1 follower processes, pins itself and each follower to one core and
hands them the data, the settings and, whenever it changes, the training state. Every step each
replica gathers, normalises and augments its rows of the global batch (the rows a device of the
same index would have) and computes the gradient of their share of the batch's mean loss; the
replicas add the gradients (and the loss and accuracy sums) in the same order, so each applies
the same update and holds the same weights bit for bit. Inside the step the model runs over a
``jaxcnn.models.layers.ProcessAxis``: BatchNorm averages its batch statistics (and, going back,
their gradients) over the replicas through the same shared memory (``process_mean``), dropout
keeps the global batch's masks of its rows. Evaluation splits each test batch the same way. The
results are those of one device up to the order of floating-point sums (tested), and resume
stays exact.

Runs of the memory pipeline with the step loop in a single process qualify.
"""

import functools
import multiprocessing
import os
import sys
import tempfile
import time

import jax
import jax.experimental
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxcnn import cpu_devices, input_pipeline, models
from jaxcnn.errors import RunStopped, UserError
from jaxcnn.models import layers

ENV = "JAXCNN_CPU_REPLICAS"
# A run trains at least this many images before replicas pay for starting theirs (~2 s of
# start-up against ~1.9e-5 s saved an image: LeNet-5 at 15k against 21k images/s).
MIN_IMAGES = 200_000
WAIT_S = 600  # the longest a replica waits for the others at one step (the first includes compiling)


def _requested_count(environ=os.environ) -> int | None:
    """$JAXCNN_CPU_REPLICAS: None for 'auto' (the default), else the count asked for."""
    value = environ.get(ENV, "auto").strip().lower()
    if value == "auto":
        return None
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise UserError(f"{ENV}={environ[ENV]!r} is not a replica count: set it to a positive integer "
                    "(1 turns the replicas off) or to 'auto' (the default: one process per core "
                    "for runs in memory on a CPU).")


def why_not(mesh, pipeline: str, epoch_loop: str) -> str | None:
    """Why a run over ``mesh`` with this pipeline and epoch loop cannot train with process
    replicas, or None if it can."""
    if pipeline != "memory" or epoch_loop != "step":
        return "replicas need the memory pipeline and the step loop"
    if jax.process_count() > 1 or mesh.size > 1:
        return "the run already spans several devices or processes"
    if mesh.devices.flat[0].platform != "cpu":
        return "replicas are for CPUs"
    if not sys.platform.startswith("linux"):
        return "replicas pin processes to cores, which only Linux lets them do here"
    return None


_planned = 1  # the count ``plan`` set this process up for


def plan(config: dict, multi_process: bool = False, environ=os.environ) -> int:
    """Before JAX starts its backends: the replicas a launch of ``config`` will train with (1:
    none), and this process set up for them (``NPROC=1``: XLA's thread pool gets one thread, as
    each follower's; replica 0 then trains on one core like them). 'auto' chooses one per usable
    core where the run qualifies (``why_not``, as far as the config tells: a built-in dataset in
    memory with the step loop), the user chose no CPU devices
    (``jaxcnn.cpu_devices``) and the run trains at least ``MIN_IMAGES`` images (not for a model with
    BatchNorm or dropout: those only when asked, or where each core gets at least the batch the
    model names as ``cpu_replicas_min_local_batch``), as many as divide the batch. ``count_for``
    confirms the count once the devices and the data are known."""
    global _planned
    from jaxcnn import datasets, feed

    asked = _requested_count(environ)
    if asked == 1 or multi_process or not sys.platform.startswith("linux"):
        return 1
    if asked is None and (cpu_devices.XLA_COUNT_FLAG in environ.get("XLA_FLAGS", "")
                          or environ.get(cpu_devices.ENV, "auto").strip().lower() != "auto"):
        return 1
    d = config["data"]
    if (config["epoch_loop"] == "scan"
            or feed.planned_pipeline(d) != "memory" or d["dataset"] not in datasets.BUILTIN_NAMES):
        return 1
    train_images = datasets.BUILTIN[d["dataset"]].num_train
    if d["max_train_examples"]:
        train_images = min(train_images, d["max_train_examples"])
    if asked is None and config["epochs"] * train_images < MIN_IMAGES:
        return 1
    cores = cpu_devices.usable_cores()
    count = asked or max(n for n in range(1, cores + 1) if config["batch_size"] % n == 0)
    # A model that shares BatchNorm statistics or dropout masks over the batch exchanges them
    # inside the step, each replica waiting for the others at every BatchNorm layer: the CNN with
    # BatchNorm loses at every batch (3,387 / 2,869 against 3,727 / 3,376 images/s at 128 / 1024
    # on two devices in one process, benchmarks/cpu_levers.py). So such a model trains on replicas
    # only when asked, or from the images a core on that the model names where it measured faster
    # on them (``cpu_replicas_min_local_batch``: the CIFAR ResNets, whose class holds the numbers).
    if asked is None:
        model = models.from_config(config["model"], 10, config["precision"])
        if (hasattr(model, "axis_name") and config["batch_size"] // count
                < getattr(model, "cpu_replicas_min_local_batch", float("inf"))):
            return 1
    if count > 1:
        environ["NPROC"] = "1"
        _planned = count
    return count


def count_for(config: dict, mesh, pipeline: str, epoch_loop: str,
              environ=os.environ) -> int:
    """How many replica processes a run of ``config`` trains with (1: none), now that its
    devices and data are known: what ``plan`` set up where the run qualifies (``why_not``); an
    explicit ``$JAXCNN_CPU_REPLICAS`` count where it qualifies, else refused."""
    asked = _requested_count(environ)
    if asked == 1:
        return 1
    reason = why_not(mesh, pipeline, epoch_loop)
    batch_size = config["batch_size"]
    if asked is None:
        return _planned if not reason and batch_size % _planned == 0 else 1
    if reason:
        raise UserError(f"{ENV}={asked}: this run cannot train with process replicas: "
                        f"{reason}. Unset {ENV} (or set it to 1).")
    if batch_size % asked:
        raise UserError(f"{ENV}={asked} does not divide batch_size {batch_size}: choose a "
                        "replica count that divides the batch, or another batch_size.")
    return asked


# -- the mean over the replicas inside a step (BatchNorm's statistics) ------------------------------

_exchange = None  # this process's Exchange, which ``process_mean`` adds through
_callback_error = None  # what stopped the run inside a step's ``process_mean``, raised after it


def _host_sum(x):
    global _callback_error
    try:
        return _exchange.sum(np.asarray(x, np.float32).ravel()).reshape(x.shape)
    except BaseException as e:  # XLA reports it as its own error: the feed raises this one
        _callback_error = e
        raise


def _summed(x):
    return jax.experimental.io_callback(_host_sum, jax.ShapeDtypeStruct(x.shape, jnp.float32),
                                        x.astype(jnp.float32), ordered=True)


@jax.custom_vjp
def _mean(x, world):
    return _summed(x) / world


def _mean_fwd(x, world):
    return _mean(x, world), world


def _mean_bwd(world, cotangent):  # as pmean's: the mean of the replicas' cotangents
    return _summed(cotangent) / world, None


_mean.defvjp(_mean_fwd, _mean_bwd)


def process_mean(x, world: int):
    """``x`` averaged over the ``world`` replicas (each step's calls come in the same order in
    every replica: an ordered callback to this process's ``Exchange``)."""
    return _mean(x, float(world))


def replica_model(model, rank: int, world: int):
    """``model`` as replica ``rank`` of ``world`` runs it: BatchNorm statistics averaged over the
    replicas, dropout masks of the global batch's rows a device of index ``rank`` gets."""
    if not hasattr(model, "axis_name"):
        return model
    return model.clone(axis_name=layers.ProcessAxis(
        rank, world, functools.partial(process_mean, world=world)))


# -- what each replica runs ------------------------------------------------------------------------

def gradients(state, images, labels, perm, seed_key, epoch, step, *, settings, model,
              rank: int, world: int):
    """Replica ``rank``'s part of step ``step`` of ``epoch``: float32 [P + 3], its rows' share of
    the global batch's mean-loss gradient (P: the parameter count; the replicas' shares add up to
    the mean ``train_step`` takes over ``world`` devices), then the rows' loss sum, correct
    predictions and count; and the new BatchNorm statistics (the same in every replica). Its
    rows: those a device of index ``rank`` of ``world`` gets (``jaxcnn.train.memory_train_batch``);
    ``model``: ``replica_model``'s."""
    from jaxcnn import train

    local = settings.batch_size // world
    batch = train.memory_train_batch(images, labels, perm, seed_key, epoch, step, rank * local,
                                     local, settings)
    grads, batch_stats, metrics = train.gradients_and_metrics(
        state.replace(apply_fn=model.apply), batch, settings.label_smoothing,
        settings.aux_loss_weight)
    return jnp.concatenate([ravel_pytree(grads)[0].astype(jnp.float32) / world,
                            jnp.stack([metrics[k] for k in METRICS]).astype(jnp.float32)]), batch_stats


METRICS = ("loss", "correct", "count")  # after the gradient in ``gradients``' vector


def update(state, sums, summed, batch_stats, *, settings):
    """The optimizer step with ``summed`` (every replica's ``gradients`` added) and the step's
    ``batch_stats``: the new state and metric sums, with ``jaxcnn.train``'s NaN guard."""
    from jaxcnn import train

    _, unravel = ravel_pytree(state.params)
    size = summed.shape[0] - len(METRICS)
    new_state = train.apply_step(state, unravel(summed[:size]), batch_stats, settings.ema_decay)
    metrics = {k: summed[size + i] for i, k in enumerate(METRICS)}
    metrics["correct"], metrics["count"] = (metrics[k].astype(jnp.int32) for k in ("correct", "count"))
    return train.guard(state, new_state, sums, metrics)


def evaluation(state, sums, images, labels, step, *, settings, rank: int, world: int):
    """Adds the test metrics of replica ``rank``'s rows of evaluation batch ``step`` to ``sums``."""
    from jaxcnn import train

    local = settings.eval_batch_size // world
    batch = train.memory_eval_batch(images, labels, step, rank * local, local, settings)
    return jax.tree.map(jnp.add, sums, train.eval_step(state, batch, None, settings.eval_flip))


class Programs:
    """One replica's compiled programs and its copy of the data."""

    def __init__(self, data_arrays, settings, model, rank: int, world: int):
        self.settings = settings
        self.train_images, self.train_labels, self.test_images, self.test_labels = (
            jnp.asarray(a) for a in data_arrays)
        self.seed_key = jnp.asarray(input_pipeline.seed_key_data(settings.seed))
        self._permute = jax.jit(input_pipeline.epoch_permutation, static_argnums=(2,))
        self._perm_epoch, self._perm = None, None
        where = dict(settings=settings, rank=rank, world=world)
        self.gradients = jax.jit(functools.partial(
            gradients, model=replica_model(model, rank, world), **where))
        self.update = jax.jit(functools.partial(update, settings=settings), donate_argnums=(0,))
        self.evaluation = jax.jit(functools.partial(evaluation, **where), donate_argnums=(1,))

    def compile(self, state, train_sums, eval_sums, size: int) -> None:
        """Compiles the three programs for these arguments (``size``: the exchanged vector's),
        traced for one core (``jaxcnn.models.layers.one_core_per_device``)."""
        perm = self.permutation(0)
        with layers.one_core_per_device(True):
            self.gradients = self.gradients.lower(state, self.train_images, self.train_labels,
                                                  perm, self.seed_key, 0, 0).compile()
            summed = jax.ShapeDtypeStruct((size,), jnp.float32)
            self.update = self.update.lower(state, train_sums, summed, state.batch_stats).compile()
            self.evaluation = self.evaluation.lower(state, eval_sums, self.test_images,
                                                    self.test_labels, 0).compile()

    def permutation(self, epoch: int):
        if self._perm_epoch != epoch:
            self._perm = self._permute(self.seed_key, epoch, self.train_images.shape[0])
            self._perm_epoch = epoch
        return self._perm

    def step_gradients(self, state, epoch: int, step: int):
        """(``gradients``' vector as numpy, the new BatchNorm statistics)."""
        global _callback_error
        try:
            vector, batch_stats = self.gradients(state, self.train_images, self.train_labels,
                                                 self.permutation(epoch), self.seed_key, epoch, step)
            return np.asarray(vector), batch_stats
        except Exception:
            error, _callback_error = _callback_error, None
            if error is not None:  # raised in the exchange (a replica gone): that, not XLA's
                raise error from None
            raise

    def evaluate(self, state, zero_sums) -> dict:
        sums = jax.tree.map(jnp.asarray, zero_sums)
        for step in range(self.settings.eval_steps):
            sums = self.evaluation(state, sums, self.test_images, self.test_labels, step)
        return jax.device_get(sums)


# -- the shared memory ------------------------------------------------------------------------------

class Exchange:
    """Adds float32 vectors of ``size`` over ``world`` processes through one file in /dev/shm:
    two slots of ``world`` rows (calls alternate between them) and one call counter per process.
    ``alive()`` is asked while waiting; it raises when a peer is gone."""

    def __init__(self, path: str, world: int, size: int, rank: int, alive):
        self.world, self.rank, self.size, self.alive = world, rank, size, alive
        floats = 2 * world * size
        self._map = np.memmap(path, np.uint8, "r+", shape=(4 * floats + 8 * world,))
        self.rows = self._map[:4 * floats].view(np.float32).reshape(2, world, size)
        self.calls_done = self._map[4 * floats:].view(np.int64)
        self.calls = int(self.calls_done[rank])

    @staticmethod
    def create(world: int, size: int) -> str:
        """A fresh zeroed exchange file; its path."""
        folder = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, path = tempfile.mkstemp(prefix="jaxcnn-replicas-", dir=folder)
        os.ftruncate(fd, 4 * 2 * world * size + 8 * world)
        os.close(fd)
        return path

    def sum(self, vector: np.ndarray) -> np.ndarray:
        """The sum of every process's ``vector`` of this call (rank 0's, plus rank 1's, ...)."""
        self.calls += 1
        slot = self.rows[self.calls % 2]
        slot[self.rank, :vector.shape[0]] = vector
        self.calls_done[self.rank] = self.calls
        deadline = time.monotonic() + WAIT_S
        spins = 0
        while int(self.calls_done.min()) < self.calls:
            spins += 1
            if spins % 20_000 == 0:
                self.alive()
                if time.monotonic() > deadline:
                    raise RunStopped(f"A replica process did not reach the same step within "
                                     f"{WAIT_S} s. Run again with {ENV}=1 (no replicas).", 1)
        total = slot[0, :vector.shape[0]].copy()
        for r in range(1, self.world):
            total += slot[r, :vector.shape[0]]
        return total

    def close(self) -> None:
        del self.rows, self.calls_done
        self._map._mmap.close()


# -- the state between processes ------------------------------------------------------------------

def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def state_leaves(state) -> list:
    """The state's arrays as numpy (PRNG keys as their raw data), for another process."""
    return [np.asarray(jax.random.key_data(x) if _is_key(x) else x)
            for x in jax.device_get(jax.tree.leaves(state))]


def with_leaves(template, leaves):
    """``template`` (a state of the same structure) holding ``leaves`` from ``state_leaves``."""
    old, treedef = jax.tree.flatten(template)
    new = [jax.random.wrap_key_data(jnp.asarray(v), impl=jax.random.key_impl(o)) if _is_key(o)
           else jnp.asarray(v) for o, v in zip(old, leaves)]
    return jax.tree.unflatten(treedef, new)


# -- the followers ----------------------------------------------------------------------------------

def _pin_all_threads(cores: set) -> None:
    """This process's threads (XLA's pools included) onto ``cores``."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except OSError:  # a thread that ended meanwhile
            pass


def _follower_main(rank: int, world: int, core: int, config: dict, num_classes: int,
                   data_arrays, settings, exchange_path: str, size: int, conn,
                   cache_dir: str | None) -> None:
    """A follower process: builds the model as replica 0 did, then serves its commands."""
    import signal

    # Ctrl-C reaches the whole process group: replica 0 finishes the step, saves and stops them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.sched_setaffinity(0, {core})  # before JAX starts: one XLA thread
    try:
        from jaxcnn import hostmem

        if cache_dir:  # replica 0's compilation cache: a repeated run skips compiling here too
            jax.config.update("jax_compilation_cache_dir", cache_dir)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

        hostmem.keep_freed_memory()
        from jaxcnn import train

        parent = os.getppid()

        def alive():
            if os.getppid() != parent:
                raise SystemExit(0)  # replica 0 is gone

        _, step_model, _, tx = train.model_and_optimizer(config, num_classes, settings.steps_per_epoch)
        state = train.create_train_state(step_model, tx, settings.image_shape, config["seed"],
                                         ema=config["ema_decay"] is not None)
        state = with_leaves(state, state_leaves(state))  # arrays of the dtypes replica 0 sends
        programs = Programs(data_arrays, settings, step_model, rank, world)
        fresh_sums, eval_sums = train.zero_sums(state, settings.eval_batch_size, settings.image_shape)
        programs.compile(state, fresh_sums, eval_sums, _vector_size(state))
        exchange = Exchange(exchange_path, world, size, rank, alive)
        global _exchange
        _exchange = exchange
        sums = None
        while True:
            try:
                # Polling, not blocking: a sleeping process takes longer to wake than a step's
                # 0.1 ms exchange; after 50 ms without a command it sleeps between polls.
                waited = time.monotonic()
                while not conn.poll():
                    if time.monotonic() - waited > 0.05:
                        conn.poll(0.001)
                command, *args = conn.recv()
            except EOFError:
                return
            if command == "state":  # and fresh metric sums: the guard's record starts anew
                state, sums = with_leaves(state, args[0]), jax.tree.map(jnp.asarray, fresh_sums)
            elif command == "train":
                vector, batch_stats = programs.step_gradients(state, *args)
                state, sums = programs.update(state, sums, exchange.sum(vector), batch_stats)
            elif command == "evaluate":
                exchange.sum(_sums_vector(programs.evaluate(state, args[0])))
            elif command == "stop":
                exchange.close()
                return
    except BaseException as e:  # noqa: BLE001 - reported to replica 0, which stops the run
        if not isinstance(e, SystemExit):
            try:
                conn.send(("error", f"{type(e).__name__}: {e}"))
            except OSError:
                pass
        raise


def _vector_size(state) -> int:
    """The length of ``gradients``' vector: the parameters, then the ``METRICS``."""
    return ravel_pytree(state.params)[0].size + len(METRICS)


def _sums_vector(sums: dict) -> np.ndarray:
    return np.asarray([sums[k] for k in sorted(sums)], np.float32)


def _sums_of(vector: np.ndarray, like: dict) -> dict:
    return {k: np.asarray(v, np.asarray(like[k]).dtype) for k, v in zip(sorted(like), vector)}


class ReplicaFeed:
    """The memory feed of a run with process replicas (the ``MemoryFeed`` interface): this
    process is replica 0; ``world - 1`` followers run on the other cores."""

    def __init__(self, data, mesh, settings, world: int, config: dict, model):
        """``model``: the run's model as its step runs it (``train.model_and_optimizer``)."""
        self.mesh, self.settings, self.world, self.epoch_loop = mesh, settings, world, "step"
        self.num_train, self.num_test = data.num_train, data.num_test
        self.steps_per_call = 1
        arrays = (data.train_images, data.train_labels, data.test_images, data.test_labels)
        self._programs = Programs(arrays, settings, model, 0, world)
        self.train_images, self.train_labels = self._programs.train_images, self._programs.train_labels
        cores = sorted(os.sched_getaffinity(0))
        self._all_cores = set(cores)
        self._size = None
        self._config, self._arrays, self._num_classes = config, arrays, data.num_classes
        self._cores = [cores[r % len(cores)] for r in range(world)]
        self._followers, self._conns, self._exchange, self._path = [], [], None, None
        self._synced = None

    def compile(self, state, train_sums, eval_sums) -> None:
        """Starts the followers (they compile their programs meanwhile) and compiles this one's."""
        self._size = _vector_size(state)
        width = max(self._size, 16)  # an exchange row holds the gradients or the test sums
        self._path = Exchange.create(self.world, width)
        context = multiprocessing.get_context("spawn")
        environ = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": _without_device_count(os.environ.get("XLA_FLAGS", ""))}
        saved = {k: os.environ.get(k) for k in environ}
        os.environ.update(environ)  # what the spawned interpreters start with
        try:
            for rank in range(1, self.world):
                mine, theirs = context.Pipe()
                proc = context.Process(
                    target=_follower_main, daemon=True, name=f"jaxcnn-replica-{rank}",
                    args=(rank, self.world, self._cores[rank], self._config, self._num_classes,
                          self._arrays, self.settings, self._path, width, theirs,
                          jax.config.jax_compilation_cache_dir))
                proc.start()
                theirs.close()
                self._followers.append(proc)
                self._conns.append(mine)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self._arrays = None
        self._exchange = Exchange(self._path, self.world, width, 0, self._check_followers)
        global _exchange
        _exchange = self._exchange
        self._programs.compile(state, train_sums, eval_sums, self._size)
        _pin_all_threads({self._cores[0]})  # after compiling, which uses every core

    def _check_followers(self) -> None:
        for rank, (proc, conn) in enumerate(zip(self._followers, self._conns), start=1):
            try:
                message = conn.recv() if conn.poll() else None
            except (EOFError, OSError):  # its end of the pipe closed: it ended
                message = None
                proc.join(timeout=5)
            if message is not None:
                raise RunStopped(f"Replica process {rank} failed: {message[1]}\nRun again with "
                                 f"{ENV}=1 to train without replicas.", 1)
            if not proc.is_alive():
                raise RunStopped(f"Replica process {rank} ended (exit code {proc.exitcode}) while "
                                 f"training. Run again with {ENV}=1 to train without replicas.", 1)

    def _send(self, *message) -> None:
        for conn in self._conns:
            try:
                conn.send(message)
            except OSError:
                self._check_followers()
                raise

    def _sync(self, state) -> None:
        """Hands the followers ``state`` where it is not the one they hold (start, restore)."""
        if state is not self._synced:
            self._send("state", state_leaves(state))
            self._synced = state

    def permutation(self, epoch: int):
        return self._programs.permutation(epoch)

    def start(self, global_step: int) -> None:
        """Nothing to start: any step can be computed from (seed, epoch, step) alone."""

    def train(self, state, sums, epoch: int, step: int):
        self._sync(state)
        self._send("train", epoch, step)
        vector, batch_stats = self._programs.step_gradients(state, epoch, step)
        summed = self._exchange.sum(vector)
        if self._path:  # every replica has it mapped now: nothing is left behind, whatever ends it
            os.unlink(self._path)
            self._path = None
        state, sums = self._programs.update(state, sums, summed, batch_stats)
        self._synced = state
        return state, sums

    def evaluate(self, state, sums):
        self._sync(state)
        zero = jax.device_get(sums)
        self._send("evaluate", zero)
        mine = self._programs.evaluate(state, zero)
        return _sums_of(self._exchange.sum(_sums_vector(mine)), zero)

    def close(self) -> None:
        try:
            for conn in self._conns:
                try:
                    conn.send(("stop",))
                except OSError:
                    pass
            for proc in self._followers:
                proc.join(timeout=10)
                if proc.is_alive():
                    proc.terminate()
        finally:
            global _exchange
            if self._exchange is not None:
                if _exchange is self._exchange:
                    _exchange = None
                self._exchange.close()
                self._exchange = None
            if self._path and os.path.exists(self._path):
                os.unlink(self._path)
            if self._followers:
                _pin_all_threads(self._all_cores)
            self._followers, self._conns = [], []


def _without_device_count(flags: str) -> str:
    return " ".join(w for w in flags.split() if not w.startswith(cpu_devices.XLA_COUNT_FLAG))
