"""A trained model back from its run directory: ``jaxcnn.restore(RUN_DIR)``.

    from jaxcnn import restore

    run = restore("runs/lenet_fashion")        # the best checkpoint; which="latest" for the newest
    x = run.preprocess(images)                 # uint8 [N, H, W, C] -> normalised as in training
    logits = run.apply_fn(run.variables, x)    # the model's pure apply, evaluation mode
    run.class_names[int(logits[0].argmax())]

``preprocess`` is the trainer's own ``input_pipeline.Normalization`` with the constants the run
recorded in ``run.json``; ``run.logits(images)`` does both steps for many images at once. Only
the model variables are read from the checkpoint (not the optimizer state), and nothing in the
run directory is changed, so a run still in progress can be restored.
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import models, rundir
from jaxcnn.errors import UserError
from jaxcnn.input_pipeline import Normalization


@dataclasses.dataclass(frozen=True)
class Restored:
    """A model and its variables, as ``restore`` returns them. It unpacks as the three things
    most code needs: ``apply_fn, variables, config = jaxcnn.restore(run_dir)``."""

    apply_fn: Callable  # apply_fn(variables, images_float_nhwc, train=False) -> logits [N, K]
    variables: dict     # {'params': ..., 'batch_stats': ... (if the model has BatchNorm)}
    config: dict        # the run's config.json
    info: dict          # run.json: model, param_count, data (shape, class names, normalisation)
    step: int           # the checkpoint's training step

    def __iter__(self):
        return iter((self.apply_fn, self.variables, self.config))

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.info["data"]["class_names"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the images the model was trained on."""
        return tuple(self.info["data"]["image_shape"])

    @property
    def normalize(self) -> Normalization:
        n = self.info["data"]["normalization"]
        return Normalization(tuple(n["mean"]), tuple(n["std"]))

    def preprocess(self, images) -> jax.Array:
        """uint8 images [N, H, W, C] -> the float model inputs, normalised as in training."""
        return self.normalize(jnp.asarray(images))

    def logits(self, images, batch_size: int | None = None) -> np.ndarray:
        """Logits [N, K] of uint8 images [N, H, W, C], computed ``batch_size`` at a time
        (default: the run's eval_batch_size)."""
        images = np.asarray(images)
        size = max(1, min(batch_size or self.config["eval_batch_size"], len(images)))
        forward = jax.jit(lambda v, x: self.apply_fn(v, self.normalize(x), train=False))
        out = [np.zeros((0, self.info["data"]["num_classes"]), np.float32)]
        for start in range(0, len(images), size):
            batch = images[start:start + size]
            pad = np.zeros((size - len(batch), *batch.shape[1:]), batch.dtype)  # one compilation
            logits = forward(self.variables, np.concatenate([batch, pad]))
            out.append(np.asarray(logits)[:len(batch)])
        return np.concatenate(out)


def make_model(config: dict, info: dict):
    """The run's model (a flax Module), as the trainer built it."""
    return models.from_config(config["model"], info["data"]["num_classes"])


def restore(run_dir: str, which: str = "best") -> Restored:
    """The model of run ``run_dir`` at its ``which`` checkpoint: 'best' (highest test accuracy;
    the latest when no checkpoint has one) or 'latest'. UserError when there is none."""
    if which not in ("best", "latest"):
        raise UserError(f"which must be 'best' or 'latest', not {which!r}.")
    config, info = rundir.read_run(run_dir)
    if info is None:
        raise UserError(
            f"The run in {run_dir!r} has no run.json (it was started by an older jaxcnn) and is "
            "not finished, so its data normalisation is unknown. Finish it (run the same command "
            "again) and restore it then.")
    from jaxcnn import checkpoint  # Orbax: imported only when needed

    directory = f"{run_dir}/checkpoints"
    ckpts = checkpoint.Checkpoints(directory, config["checkpoint"]["keep"], read_only=True)
    try:
        steps = ckpts.steps()
        if not steps:
            raise UserError(
                f"The run in {run_dir!r} has no checkpoint yet: the first is saved at the end of "
                "its first epoch (or after checkpoint.every_steps steps).")
        step = ckpts.best_step() if which == "best" else None
        step = steps[-1] if step is None else step
        model = make_model(config, info)
        image = jax.ShapeDtypeStruct((1, *info["data"]["image_shape"]), jnp.float32)
        shapes = jax.eval_shape(model.init, jax.random.key(0), image)
        target = {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}
        variables = ckpts.restore_variables(step, target)
    finally:
        ckpts.close()
    variables = {k: v for k, v in variables.items() if v}  # as Trainer.variables(): none empty
    return Restored(model.apply, variables, config, info, int(step))
