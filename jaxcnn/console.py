"""What a run prints and writes at its end: the banner, the progress bar, the epoch lines, the
summary (summary.json) and the plots."""

import os
import sys
import time

import jax
import numpy as np


def banner(text: str) -> str:
    line = "!" * 78
    return f"{line}\nWARNING: {text}\n{line}"


def progress_bar(total: int, initial: int = 0):
    """A tqdm bar of steps on a terminal; None otherwise."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=False)


def log_epoch(r: dict, epochs: int, bar, log) -> None:
    text = (f"epoch {r['epoch']}/{epochs} step {r['step']}: train loss {r['train_loss']:.4f} "
            f"acc {r['train_accuracy']:.4f}")
    if "test_accuracy" in r:
        text += f" | test loss {r['test_loss']:.4f} acc {r['test_accuracy']:.4f}"
        if "test_top5" in r:
            text += f" top5 {r['test_top5']:.4f}"
        text += f" ({r['test_count']} images)"
    text += f" | {r['images_per_sec']:,.0f} img/s, lr {r['learning_rate']:.2e}"
    if "input_wait_share" in r:
        text += f", input wait {100 * r['input_wait_share']:.0f}%"
    if bar is not None:
        bar.write(text)
    else:
        log(text)


def run_summary(config: dict, trainer, progress, info: dict, wall_seconds: float) -> dict:
    """summary.json: the final and best accuracies, times, speed and where the data came from."""
    final = progress.last_record
    epochs, spe = config["epochs"], trainer.steps_per_epoch
    params = jax.device_get(trainer.state.params)
    return {
        "name": config["name"],
        "model": config["model"]["name"],
        "param_count": trainer.param_count,
        "final_test_accuracy": final["test_accuracy"],
        "final_test_loss": final["test_loss"],
        "best_test_accuracy": progress.best_test_accuracy,
        "best_epoch": progress.best_epoch,
        "epochs": epochs,
        "steps": final["step"],
        "wall_seconds": wall_seconds,
        "train_seconds": progress.train_seconds,
        "compile_seconds": trainer.compile_seconds,
        "train_images_per_sec": epochs * spe * config["batch_size"] / max(progress.train_seconds, 1e-9),
        "devices": trainer.num_devices,
        "backend": jax.default_backend(),
        "pipeline": trainer.pipeline,
        "data": info["data"],
        "param_checksum": float(sum(np.abs(np.asarray(x, np.float64)).sum()
                                    for x in jax.tree.leaves(params))),
    }


def log_done(summary: dict, workdir: str, written: bool, log) -> None:
    log(f"parameter checksum (sum of |w|, equal on every process): {summary['param_checksum']!r}")
    log(f"done: final test accuracy {summary['final_test_accuracy']:.4f}, best "
        f"{summary['best_test_accuracy']:.4f} (epoch {summary['best_epoch']}), "
        f"{summary['wall_seconds']:.1f} s wall, {summary['train_images_per_sec']:,.0f} train images/s"
        + (f"; run written to {workdir}" if written else ""))


def write_plots(workdir: str, trainer, config: dict, info: dict, log) -> None:
    """The run's PNGs (jaxcnn.plot) from the final parameters; a failure is only a warning, since
    the run itself is saved."""
    start = time.perf_counter()
    try:
        from jaxcnn import plot
        from jaxcnn.restore import Restored

        model = Restored(trainer.model.apply, trainer.variables(), config, info,
                         int(trainer.state.step))
        written = plot.write_plots(workdir, model=model, data=trainer.test_sample(), log=log)
    except Exception as e:  # noqa: BLE001 - plotting must never lose a finished run
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        log(f"WARNING: could not write the plots ({reason}); the run is saved. Try again with: "
            f"python -m jaxcnn.plot {workdir}")
        return
    names = ", ".join(os.path.basename(p) for p in written)
    log(f"plots: {names} ({time.perf_counter() - start:.1f} s)")
