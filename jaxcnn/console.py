"""What a run prints, and what it writes at its end: the settings it runs with, warnings (on
stderr), the progress bar, the epoch lines, the summary (summary.json) and the plots."""

import os
import sys
import time

import jax
import numpy as np


# The settings that differ from the defaults are shown on one line when they are at most
# ONE_LINE_SETTINGS and the line at most ONE_LINE_WIDTH characters; else one setting per line.
ONE_LINE_SETTINGS = 3
ONE_LINE_WIDTH = 160


def banner(text: str) -> str:
    line = "!" * 78
    return f"{line}\nWARNING: {text}\n{line}"


def warn(text: str) -> None:
    """Prints a warning on stderr, where it stands out from the progress lines on stdout."""
    print(text, file=sys.stderr, flush=True)


def changed_settings(config: dict, defaults: dict, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, value) of every setting of ``config`` that differs from ``defaults``, in the
    defaults' order; under ``model`` every argument but an unchanged name counts (``name``, the
    run's name, is left out: it is shown apart)."""
    out = []
    for key, value in config.items():
        path = prefix + str(key)
        if path == "name":
            continue
        default = defaults.get(key, _ABSENT) if isinstance(defaults, dict) else _ABSENT
        if isinstance(value, dict) and isinstance(default, dict):
            out += changed_settings(value, default, path + ".")
        elif default is _ABSENT or _differs(value, default):
            out.append((path, value))
    return out


_ABSENT = object()


def _differs(value, default) -> bool:
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return list(value) != list(default)
    return value != default


def config_lines(config: dict, defaults: dict, config_path: str) -> list[str]:
    """The run's settings for the console: only those that differ from the defaults, as
    ``key = value`` (what --set takes), and where config.json holds all of them."""
    changed = [f"{key} = {value!r}" for key, value in changed_settings(config, defaults)]
    where = f"every setting: {config_path}"
    if not changed:
        return [f"config {config['name']!r}: the defaults ({where})"]
    line = f"config {config['name']!r}: {', '.join(changed)} (the rest default; {where})"
    if len(changed) <= ONE_LINE_SETTINGS and len(line) <= ONE_LINE_WIDTH:
        return [line]
    return [f"config {config['name']!r}, where it differs from the defaults ({where}):",
            *(f"  {item}" for item in changed)]


def progress_bar(total: int, initial: int = 0, desc: str | None = None):
    """A tqdm bar of steps on a terminal, labelled ``desc`` (e.g. 'epoch 3/10'); None otherwise."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                leave=False)


def epoch_label(epoch: int, epochs: int) -> str:
    """The progress bar's label while epoch ``epoch`` (0-based) of ``epochs`` trains."""
    return f"epoch {epoch + 1}/{epochs}"


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
        "replicas": trainer.replicas,
        "backend": jax.default_backend(),
        "pipeline": trainer.pipeline,
        "data": info["data"],
        "param_checksum": float(sum(np.abs(np.asarray(x, np.float64)).sum()
                                    for x in jax.tree.leaves(params))),
    }


def log_done(summary: dict, workdir: str, written: bool, log,
             plots: list[str] | None = None) -> None:
    """The run's last line: its accuracy and speed, and (on the process that writes the run)
    where the run and its plots are."""
    text = (f"done: final test accuracy {summary['final_test_accuracy']:.4f}, best "
            f"{summary['best_test_accuracy']:.4f} (epoch {summary['best_epoch']}), "
            f"{summary['wall_seconds']:.1f} s wall, {summary['train_images_per_sec']:,.0f} train "
            "images/s")
    if written:
        text += f"; run written to {workdir}"
        if plots:
            text += f" (plots: {os.path.join(workdir, '*.png')})"
        else:
            text += f" (no plots: python -m jaxcnn.plot {workdir} draws them)"
    log(text)


def complete_message(workdir: str, summary: dict) -> str:
    """What re-running a finished run says, instead of training it again."""
    accuracy = summary.get("final_test_accuracy")
    shown = f"{accuracy:.4f}" if isinstance(accuracy, (int, float)) else "unknown"
    epochs = summary.get("epochs")
    return (f"The run in {workdir} is already complete ({epochs} epochs, final test accuracy "
            f"{shown}); nothing was changed. Its results: {os.path.join(workdir, 'summary.json')}"
            f", metrics.jsonl and the plots {os.path.join(workdir, '*.png')}. To train again, pass "
            "--restart (the run is moved aside, not deleted) or another --workdir; to train it "
            f"longer, pass --set epochs=N with N above {epochs}, which resumes it.")


def write_plots(workdir: str, trainer, config: dict, info: dict, log) -> list[str] | None:
    """The run's PNGs (jaxcnn.plot) from the final parameters, their paths; a failure is only a
    warning (and None), since the run itself is saved."""
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
        return None
    names = ", ".join(os.path.basename(p) for p in written)
    log(f"plots: {names} ({time.perf_counter() - start:.1f} s)")
    return written
