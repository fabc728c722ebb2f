"""A trained model back from its run directory: ``jaxcnn.restore(RUN_DIR)``.

    from jaxcnn import restore

    run = restore("runs/lenet_fashion")        # the best checkpoint; which="latest" for the newest
    x = run.preprocess(images)                 # uint8 [N, H, W, C] -> normalised as in training
    logits = run.apply_fn(run.variables, x)    # the model's pure apply, evaluation mode
    run.class_names[int(logits[0].argmax())]

``preprocess`` is the trainer's own ``input_pipeline.Normalization`` with the constants the run
recorded in ``run.json``; ``run.logits(images)`` does both steps for many images at once (and
averages each image's logits with its mirror's where the run was evaluated so, ``eval_flip``). Only
the model variables are read from the checkpoint (not the optimizer state), and nothing in the
run directory is changed, so a run still in progress can be restored.

Images, for ``preprocess`` and ``logits``: raw pixels as the data set stores them, of the trained
shape ``run.image_shape`` (H, W, C):

- uint8 (or any integer type) ``[N, H, W, C]``, values 0-255, as training read them;
- float ``[N, H, W, C]`` with values in [0, 1] (e.g. ``images / 255``): the same pixels on a
  0-1 scale, normalised with the same constants (the logits equal those of the uint8 images);
- ``[N, H, W]`` for a one-channel (greyscale) model: the channel axis is added.

Anything else is refused with a UserError saying what is expected: floats outside [0, 1]
(0-255 floats: pass ``images.astype(np.uint8)``; already normalised inputs go to ``apply_fn``
directly), NaNs, another image size or channel count (named against the trained shape), channels
first ``[N, C, H, W]``, or a single image without the batch axis (``image[None]``).
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
        """Images -> the float model inputs [N, H, W, C], normalised as in training. ``images``:
        uint8 [N, H, W, C] (0-255), or float in [0, 1], or [N, H, W] for a one-channel model
        (module docstring); anything else is a UserError saying what is expected."""
        return self._normalize(jnp.asarray(check_images(images, self.image_shape)))

    def logits(self, images, batch_size: int | None = None, flip: bool | None = None) -> np.ndarray:
        """Logits [N, K] of images as ``preprocess`` takes them (uint8 [N, H, W, C], or float in
        [0, 1]), computed ``batch_size`` at a time (default: the run's eval_batch_size). ``flip``
        (default: the run's ``eval_flip``): the mean of each image's and its mirror's logits, as
        the run's test metrics were computed."""
        images = np.asarray(check_images(images, self.image_shape))
        size = max(1, min(batch_size or self.config["eval_batch_size"], len(images)))
        flip = self.config.get("eval_flip", False) if flip is None else bool(flip)
        forward = jax.jit(lambda v, x: models.eval_logits(self.apply_fn, v, self._normalize(x), flip))
        out = [np.zeros((0, self.info["data"]["num_classes"]), np.float32)]
        for start in range(0, len(images), size):
            batch = images[start:start + size]
            pad = np.zeros((size - len(batch), *batch.shape[1:]), batch.dtype)  # one compilation
            logits = forward(self.variables, np.concatenate([batch, pad]))
            out.append(np.asarray(logits)[:len(batch)])
        return np.concatenate(out)

    def _normalize(self, x) -> jax.Array:
        """Checked images (uint8 0-255, or float32 in [0, 1]) -> normalised float32."""
        if x.dtype == jnp.uint8:
            return self.normalize(x)  # exactly what training does
        n = self.normalize
        return (x - jnp.asarray(n.mean, jnp.float32)) / jnp.asarray(n.std, jnp.float32)


def _shape_text(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def check_images(images, image_shape):
    """``images`` as the model takes them, checked against the trained ``image_shape`` (H, W, C):
    uint8 [N, H, W, C] for integer pixels 0-255, float32 [N, H, W, C] in [0, 1] for floats (a
    jax array stays one). A UserError says what is wrong and what is expected."""
    h, w, c = (int(d) for d in image_shape)
    expected = (f"Expected uint8 images [N, {h}, {w}, {c}] with values 0-255 (or floats in "
                f"[0, 1]), the {h}x{w}x{c} images the model was trained on")
    if not isinstance(images, jax.Array):  # a jax array (or tracer) stays on its device
        try:
            images = np.asarray(images)
        except ValueError as e:  # a ragged list of images of different sizes
            raise UserError(f"The images are not one array ({e}). {expected}.") from None
    dtype, shape = images.dtype, tuple(images.shape)
    is_float = jnp.issubdtype(dtype, jnp.floating)
    if dtype == bool:
        raise UserError(f"The images are booleans. {expected}: for black and white images pass "
                        "images.astype(np.uint8) * 255.")
    if not (is_float or jnp.issubdtype(dtype, jnp.integer)):
        raise UserError(f"The images have dtype {dtype}. {expected}.")
    if len(shape) == 3 and c == 1 and shape[1:] == (h, w):
        images, shape = images[..., None], shape + (1,)  # greyscale [N, H, W]: add the channel
    if len(shape) != 4 or shape[1:] != (h, w, c):
        raise UserError(f"The images have shape {_shape_text(shape)}. {expected}"
                        + _shape_hint(shape, (h, w, c)))
    if dtype != jnp.uint8 and shape[0] and not isinstance(images, jax.core.Tracer):  # the values
        lo, hi = float(images.min()), float(images.max())
        if is_float:
            if lo != lo or hi != hi:
                raise UserError(f"The images contain NaN. {expected}.")
            if lo < 0:
                raise UserError(
                    f"The images are floats from {lo:.3g} to {hi:.3g}: they look normalised "
                    "already. preprocess and logits take raw pixels (uint8 0-255, or floats in "
                    "[0, 1]) and normalise them with the run's mean and std; inputs normalised "
                    "that way go to run.apply_fn(run.variables, x, train=False) directly.")
            if hi > 1:
                raise UserError(
                    f"The images are floats from {lo:.3g} to {hi:.3g}: floats must be in "
                    "[0, 1] (pixels / 255). For pixel values 0-255 pass uint8 images "
                    "(images.astype(np.uint8)), or divide them by 255.")
        elif lo < 0 or hi > 255:
            raise UserError(f"The images have {dtype} values from {lo:g} to {hi:g}, outside "
                            f"0-255. {expected}.")
    if is_float:
        return images.astype(jnp.float32)
    return images if dtype == jnp.uint8 else images.astype(jnp.uint8)


def _shape_hint(shape, trained) -> str:
    """The likely fix for images of ``shape`` given to a model trained on ``trained`` (H, W, C)."""
    h, w, c = trained
    if shape == trained or (c == 1 and shape == (h, w)):
        return (". This is one image: give a batch of one, image[None]"
                + (" (or image[None, ..., None])." if c == 1 and shape == (h, w) else "."))
    if len(shape) == 4 and shape[1] == c and shape[2:] == (h, w) and c != shape[3]:
        return (". These look channels-first [N, C, H, W]: use np.moveaxis(images, 1, -1) "
                "(or images.transpose(0, 2, 3, 1)).")
    if len(shape) == 3 and c != 1 and shape[1:] == (h, w):
        return (". Images without a channel axis are taken only by one-channel models; this one "
                f"has {c}.")
    if len(shape) in (3, 4) and shape[1:3] != (h, w):
        return (f". Resize them to {h}x{w} (python -m jaxcnn.predict does so for image files), "
                "or train a model on images of this size.")
    if len(shape) == 4 and shape[3] != c:
        fix = ("convert them to greyscale" if c == 1 else
               "convert them to RGB" if c == 3 else f"give {c} channels")
        return f". They have {shape[3]} channels, the model takes {c}: {fix}."
    return "."


def make_model(config: dict, info: dict):
    """The run's model (a flax Module), as the trainer built it, except that it computes in
    float32 whatever the run's ``precision`` (its variables are float32 either way)."""
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
        # The weights the run was evaluated with: their moving average where it kept one.
        weights = "ema_params" if config.get("ema_decay") is not None else "params"
        target = {weights: shapes["params"], "batch_stats": shapes.get("batch_stats", {})}
        restored = ckpts.restore_variables(step, target)
        variables = {"params": restored[weights], "batch_stats": restored["batch_stats"]}
    finally:
        ckpts.close()
    variables = {k: v for k, v in variables.items() if v}  # as Trainer.variables(): none empty
    return Restored(model.apply, variables, config, info, int(step))
