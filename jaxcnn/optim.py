"""Optax optimizers and learning-rate schedules, chosen by name from the config.

``OPTIMIZERS`` and ``SCHEDULES`` are the registries: each maps a name to its builder, and
config validation accepts exactly their names.
"""

import jax
import optax

# name -> f(peak learning rate, config["schedule"], total steps, warmup steps, steps per epoch)
SCHEDULES = {
    # learning_rate throughout
    "constant": lambda lr, s, total, warmup, epoch: optax.constant_schedule(lr),
    # cosine decay from learning_rate to learning_rate * final_factor
    "cosine": lambda lr, s, total, warmup, epoch: optax.cosine_decay_schedule(
        lr, total, alpha=s["final_factor"]),
    # linear warmup from 0 over warmup_epochs, then cosine decay
    "warmup_cosine": lambda lr, s, total, warmup, epoch: optax.warmup_cosine_decay_schedule(
        0.0, lr, max(warmup, 1), total, end_value=lr * s["final_factor"]),
    # learning_rate times decay_factor at each epoch in boundaries
    "step": lambda lr, s, total, warmup, epoch: optax.piecewise_constant_schedule(
        lr, {int(round(b * epoch)): s["decay_factor"] for b in s["boundaries"]}),
    # cosine one-cycle: up over warmup_epochs (0 -> 30% of training), then down
    "onecycle": lambda lr, s, total, warmup, epoch: optax.cosine_onecycle_schedule(
        total, lr, pct_start=warmup / total if warmup else 0.3),
}

# name -> f(schedule, config["optimizer"], weight decay mask)
OPTIMIZERS = {
    "sgd": lambda lr, o, mask: optax.sgd(lr),
    "momentum": lambda lr, o, mask: optax.sgd(lr, momentum=o["momentum"]),
    "nesterov": lambda lr, o, mask: optax.sgd(lr, momentum=o["momentum"], nesterov=True),
    "adam": lambda lr, o, mask: optax.adam(lr, b1=o["b1"], b2=o["b2"]),
    "adamw": lambda lr, o, mask: optax.adamw(
        lr, b1=o["b1"], b2=o["b2"], weight_decay=o["weight_decay"], mask=mask),
    "rmsprop": lambda lr, o, mask: optax.rmsprop(lr, momentum=o["momentum"]),
}
DECOUPLED_WEIGHT_DECAY = ("adamw",)  # optimizers that apply weight_decay themselves


def make_schedule(config: dict, steps_per_epoch: int) -> optax.Schedule:
    """The learning rate as a function of the step, from ``config['schedule']`` (see SCHEDULES)."""
    s = config["schedule"]
    total = config["epochs"] * steps_per_epoch
    warmup = int(round(s["warmup_epochs"] * steps_per_epoch))
    return SCHEDULES[s["name"]](config["optimizer"]["learning_rate"], s, total, warmup,
                                steps_per_epoch)


def make_optimizer(config: dict, schedule: optax.Schedule) -> optax.GradientTransformation:
    """The optimizer of ``config['optimizer']``, with gradient clipping and weight decay.

    Weight decay applies to kernels only (parameters of two or more dimensions), not to biases or
    BatchNorm scales: coupled L2 (added to the gradient, as PyTorch's ``weight_decay``) for every
    optimizer except adamw, where it is decoupled (Loshchilov & Hutter 2019).
    """
    o = config["optimizer"]
    kernels_only = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731
    parts = []
    if o["grad_clip_norm"] is not None:
        parts.append(optax.clip_by_global_norm(o["grad_clip_norm"]))
    if o["weight_decay"] and o["name"] not in DECOUPLED_WEIGHT_DECAY:
        parts.append(optax.add_decayed_weights(o["weight_decay"], mask=kernels_only))
    return optax.chain(*parts, OPTIMIZERS[o["name"]](schedule, o, kernels_only))
