"""Optax optimizers and learning-rate schedules, chosen by name from the config."""

import jax
import optax


def make_schedule(config: dict, steps_per_epoch: int) -> optax.Schedule:
    """The learning rate as a function of the step, from ``config['schedule']``.

    constant       learning_rate throughout
    cosine         cosine decay from learning_rate to learning_rate * final_factor
    warmup_cosine  linear warmup from 0 over warmup_epochs, then cosine decay
    step           learning_rate times decay_factor at each epoch in boundaries
    onecycle       cosine one-cycle: up over warmup_epochs (0 -> 30% of training), then down
    """
    s, lr = config["schedule"], config["optimizer"]["learning_rate"]
    total = config["epochs"] * steps_per_epoch
    warmup = int(round(s["warmup_epochs"] * steps_per_epoch))
    if s["name"] == "constant":
        return optax.constant_schedule(lr)
    if s["name"] == "cosine":
        return optax.cosine_decay_schedule(lr, total, alpha=s["final_factor"])
    if s["name"] == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, max(warmup, 1), total, end_value=lr * s["final_factor"])
    if s["name"] == "step":
        return optax.piecewise_constant_schedule(
            lr, {int(round(b * steps_per_epoch)): s["decay_factor"] for b in s["boundaries"]})
    if s["name"] == "onecycle":
        pct_start = warmup / total if warmup else 0.3
        return optax.cosine_onecycle_schedule(total, lr, pct_start=pct_start)
    raise ValueError(s["name"])  # config.validate only lets the names above through


def make_optimizer(config: dict, schedule: optax.Schedule) -> optax.GradientTransformation:
    """The optimizer of ``config['optimizer']``, with gradient clipping and weight decay.

    Weight decay applies to kernels only (parameters of two or more dimensions), not to biases or
    BatchNorm scales: coupled L2 (added to the gradient, as PyTorch's ``weight_decay``) for every
    optimizer except adamw, where it is decoupled (Loshchilov & Hutter 2019).
    """
    o = config["optimizer"]
    kernels_only = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731
    name, wd = o["name"], o["weight_decay"]
    if name == "sgd":
        core = optax.sgd(schedule)
    elif name in ("momentum", "nesterov"):
        core = optax.sgd(schedule, momentum=o["momentum"], nesterov=name == "nesterov")
    elif name == "adam":
        core = optax.adam(schedule, b1=o["b1"], b2=o["b2"])
    elif name == "adamw":
        core = optax.adamw(schedule, b1=o["b1"], b2=o["b2"], weight_decay=wd, mask=kernels_only)
    elif name == "rmsprop":
        core = optax.rmsprop(schedule, momentum=o["momentum"])
    else:
        raise ValueError(name)  # config.validate only lets the names above through
    parts = []
    if o["grad_clip_norm"] is not None:
        parts.append(optax.clip_by_global_norm(o["grad_clip_norm"]))
    if wd and name != "adamw":
        parts.append(optax.add_decayed_weights(wd, mask=kernels_only))
    return optax.chain(*parts, core)
