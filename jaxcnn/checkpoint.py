"""Checkpoints of a run, with Orbax: ``WORKDIR/checkpoints/<step>/{state,progress}``.

Each checkpoint holds the train state (parameters, BatchNorm statistics, optimizer state, step,
dropout key) and a small JSON ``progress`` record (where in the epoch the run is, the partial
epoch's metric sums, the best test accuracy so far). Orbax writes each one into a temporary
folder and renames it when complete, so a killed process never leaves a half-written checkpoint
under a step's name. The last ``keep`` checkpoints are kept, plus the best by test accuracy.

A training run saves in the background (``asynchronous``): Orbax's ``save`` copies the arrays to
host memory before it returns (so the next step may donate the state's buffers; tested) and
writes them while training goes on; the next ``save``, ``steps``, ``best_step`` and ``close``
wait for that write, so a checkpoint is on disk before anything reads the folder and before the
run ends or stops on a signal.
"""

import contextlib
import dataclasses
import logging
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from jaxcnn.errors import UserError


@dataclasses.dataclass
class Progress:
    """Where a run is, saved with every checkpoint as JSON."""

    epoch: int = 0  # epochs finished
    step_in_epoch: int = 0  # steps done of the next epoch (a checkpoint inside an epoch)
    epoch_metrics: dict | None = None  # that partial epoch's metric sums
    best_test_accuracy: float | None = None
    best_epoch: int | None = None
    last_record: dict | None = None  # the last epoch's metrics.jsonl record
    train_seconds: float = 0.0
    wall_seconds: float = 0.0  # of the sessions before this one
    # The input stream's state. Every example is a pure function of (seed, epoch, position), so
    # the position above is the whole iterator state; these say what it indexes, so a resume on
    # a changed dataset is noticed: {'pipeline', 'num_train', 'global_batch'}.
    data: dict | None = None

    @classmethod
    def from_json(cls, saved: dict) -> "Progress":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in known})


def _to_saveable(state):
    """The state as a pytree of arrays (typed PRNG keys become their raw uint32 data); the
    moving average of the weights only where the run keeps one (``ema_decay``)."""
    saveable = {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
                "opt_state": state.opt_state, "rng": jax.random.key_data(state.rng)}
    if state.ema_params:
        saveable["ema_params"] = state.ema_params
    return saveable


class Checkpoints:
    """Saves and restores the checkpoints of one run directory (only reads with ``read_only``)."""

    def __init__(self, directory: str, keep: int, read_only: bool = False,
                 asynchronous: bool = False):
        self.directory = os.path.abspath(directory)
        self.asynchronous = asynchronous and not read_only
        options = dict(
            enable_async_checkpointing=self.asynchronous,
            read_only=read_only,
            # With best_fn Orbax also writes each checkpoint's test accuracy to disk, so the best
            # one is still known (and kept) after a resume.
            best_fn=lambda m: m["test_accuracy"], best_mode="max",
            preservation_policy=policies.AnyPreservationPolicy([
                policies.LatestN(keep),
                policies.BestN(get_metric_fn=lambda m: m["test_accuracy"], n=1,
                               keep_checkpoints_without_metrics=False),
            ]),
        )
        with _quiet_absl():  # Orbax warns that a read-only manager will not write
            self.manager = ocp.CheckpointManager(
                self.directory, options=ocp.CheckpointManagerOptions(**options))

    def save(self, state, progress: Progress, test_accuracy: float | None = None) -> int:
        step = int(jax.device_get(state.step))
        metrics = None if test_accuracy is None else {"test_accuracy": float(test_accuracy)}
        self.manager.wait_until_finished()  # the save before this one
        with _quiet_absl():  # Orbax warns about every checkpoint saved without a test accuracy
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(_to_saveable(state)),
                progress=ocp.args.JsonSave(dataclasses.asdict(progress))), metrics=metrics, force=True)
        if not self.asynchronous:
            self.manager.wait_until_finished()
        return step

    def close(self) -> None:
        """Waits for a save still being written, then stops Orbax's background work."""
        self.manager.wait_until_finished()
        self.manager.close()

    def steps(self) -> list[int]:
        """The steps of the checkpoints on disk (after any save still being written)."""
        self.manager.wait_until_finished()
        return sorted(self.manager.all_steps())

    def best_step(self) -> int | None:
        """The step of the checkpoint with the highest test accuracy; None when no checkpoint
        has one (only epochs that were evaluated have it)."""
        if not any(self.manager.metrics(step) for step in self.steps()):  # steps() waits
            return None
        return self.manager.best_step()

    def restore_variables(self, step: int, target: dict) -> dict:
        """The model variables ({'params', 'batch_stats'}, or any entries of the saved state
        named in ``target``) of checkpoint ``step``, as numpy arrays.

        ``target`` gives their structure, shapes and dtypes (e.g. from ``jax.eval_shape`` of
        ``model.init``); the optimizer state is not read. Nothing is written or moved.
        """
        as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
        args = ocp.args.PyTreeRestore(item=target, restore_args=as_numpy, partial_restore=True)
        try:
            with _quiet_absl():
                restored = self.manager.restore(step, args=ocp.args.Composite(state=args))
        except Exception as e:  # noqa: BLE001 - any failure to read is the same for the user
            reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
            raise UserError(
                f"Cannot read the checkpoint {self.directory}/{step} ({reason}).") from None
        return dict(restored["state"])

    def restore_latest(self, state):
        """(state, progress) of the newest checkpoint that reads back, or None if there is none.

        ``state`` is the freshly initialised state: it gives the structure, shapes and
        shardings to restore into. A checkpoint that cannot be read is skipped with a warning;
        one that holds a different model is an error.
        """
        steps = self.steps()
        if not steps:
            return None
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_saveable(state))
        problems = []
        for step in reversed(steps):
            self._check_shapes(step, target)
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), progress=ocp.args.JsonRestore()))
            except Exception as e:  # noqa: BLE001 - any failure to read means: try an older one
                reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
                problems.append(f"step {step} ({reason})")
                # Moved aside, never deleted; the step is free to be saved again.
                aside = os.path.join(self.directory + ".unreadable", str(step))
                os.makedirs(os.path.dirname(aside), exist_ok=True)
                os.rename(os.path.join(self.directory, str(step)), aside)
                self.manager.reload()
                print(f"WARNING: checkpoint {self.directory}/{step} cannot be read ({reason}); "
                      f"moved it to {aside} and falling back to the one before it.")
                continue
            saved = restored["state"]
            state = state.replace(step=saved["step"], params=saved["params"],
                                  batch_stats=saved["batch_stats"], opt_state=saved["opt_state"],
                                  rng=jax.random.wrap_key_data(saved["rng"]),
                                  ema_params=saved.get("ema_params", {}))
            return state, Progress.from_json(dict(restored["progress"]))
        raise UserError(
            f"No checkpoint in {self.directory} can be read: {'; '.join(problems)}. Run again "
            "with --restart to move this run aside and start afresh, or restore the folder "
            "from a backup.")

    def _check_shapes(self, step: int, target) -> None:
        """UserError if checkpoint ``step`` holds arrays of other names or shapes than ``target``."""
        try:
            with _quiet_absl():  # Orbax warns about every item it is not asked to restore
                metadata = self.manager.item_metadata(step)["state"]
        except Exception:  # noqa: BLE001 - unreadable metadata: let restore report it
            return
        if metadata is None:
            return
        saved = {_path_name(k): tuple(np.shape(v))
                 for k, v in jax.tree_util.tree_leaves_with_path(metadata)
                 if hasattr(v, "shape")}
        wanted = {_path_name(k): tuple(np.shape(v))
                  for k, v in jax.tree_util.tree_leaves_with_path(target)}
        if not saved or saved == wanted:
            return
        missing = sorted(set(wanted) - set(saved))
        extra = sorted(set(saved) - set(wanted))
        differ = sorted(k for k in set(saved) & set(wanted) if saved[k] != wanted[k])
        details = []
        if differ:
            k = differ[0]
            details.append(f"{k} has shape {saved[k]} there but {wanted[k]} here")
        if missing:
            details.append(f"{missing[0]} is missing there")
        if extra:
            details.append(f"{extra[0]} is there but not in this model")
        raise UserError(
            f"The checkpoint {self.directory}/{step} holds another model or input shape than "
            f"this config: {'; '.join(details)}. Use another --workdir, or --restart to move "
            "the old run aside.")


@contextlib.contextmanager
def _quiet_absl():
    """Hides Orbax's (absl's) warnings, keeping its errors."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl.setLevel(level)


def _path_name(path) -> str:
    """'params/conv1/kernel' for a pytree key path, however its nodes are keyed (dict keys,
    attributes of named tuples, sequence indices), since Orbax's metadata keys them differently."""
    names = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                names.append(str(getattr(entry, attr)))
                break
    return "/".join(names)
