"""Pictures of what a network learned, written into its run directory.

    python -m jaxcnn.plot RUN_DIR [RUN_DIR ...] [--checkpoint latest|best]

    curves.png            loss and accuracy (train: the mean over each epoch's steps; test: at
                          the epoch's end) and the learning rate, against the epoch (bottom
                          axis) and the step (top axis); test top-5 accuracy on a panel of its
                          own for data sets of more than 10 classes (--top5: for any run that
                          recorded it). The title names the data: "MNIST subset, 4,000 training
                          images", "Fashion-MNIST, first 512 of 60,000 training images".
    filters.png           the first convolution's kernels, one tile per filter (the study notes'
                          filter_show), at least 120 pixels a tile and 1,000 pixels wide; colour
                          tiles for RGB input, grey for one channel
    feature_maps.png      one test image and the output of each spatial-resolution stage
    confusion_matrix.png  over the whole test set, with the class names

The trainer writes them at the end of every run, with its final parameters (the latest
checkpoint, which is also this command's default). It works on runs still in progress: the plots
that need a checkpoint or the data set are skipped with a one-line note.

Feature maps, for any model: one forward pass records the output of every Flax module call. The
modules that own a ``kernel`` and give [N, H, W, C] maps are the convolutions; a stage is a
convolution or a module holding some (a ResNet block, an Inception module). For each spatial
resolution the figure shows the last stage output at that resolution (LeNet-5: conv1 and conv2;
a ResNet: the stem and the last block of each group), its first 16 channels, each scaled to its
own range.

Figures are drawn with matplotlib's ``Figure`` directly (no pyplot, no display): it works
headless and leaves the caller's matplotlib backend alone.
"""

import argparse
import os
import sys

import flax.linen as nn
import jax
import numpy as np
from matplotlib.figure import Figure

from jaxcnn import optim, rundir
from jaxcnn.errors import UserError, report
from jaxcnn.models import layer_view

DPI = 100
MAX_MAPS = 16  # feature maps shown per stage
FILTER_TILE = (1.4, 2.5)  # inches (at DPI) of one filter tile in filters.png: least, most
FILTERS_WIDTH = 10.0  # inches filters.png grows to (its tiles up to FILTER_TILE[1]) for few filters


# -- arrays to pictures -----------------------------------------------------------------------

def scale01(x: np.ndarray) -> np.ndarray:
    """``x`` linearly mapped to [0, 1] (0.5 where it is constant)."""
    x = np.asarray(x, np.float32)
    lo, hi = float(x.min()), float(x.max())
    return np.full_like(x, 0.5) if hi <= lo else (x - lo) / (hi - lo)


def tile(images: np.ndarray, cols: int, pad: int = 1, fill: float = np.nan) -> np.ndarray:
    """One mosaic of ``images`` [n, h, w, c], row by row, ``cols`` per row, with ``pad`` pixels
    of ``fill`` (NaN: transparent) between them: [rows*(h+pad) - pad, cols*(w+pad) - pad, c]."""
    n, h, w, c = images.shape
    rows = -(-n // cols)
    out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, c), fill, np.float32)
    for i, image in enumerate(images):
        y, x = divmod(i, cols)
        out[y * (h + pad):y * (h + pad) + h, x * (w + pad):x * (w + pad) + w] = image
    return out


def filter_tiles(kernel: np.ndarray) -> np.ndarray:
    """A convolution kernel [kh, kw, in, out] as ``out`` tiles [out, kh, kw, 3 or 1] in [0, 1]:
    RGB for 3 input channels, else the mean over them; each filter scaled to its own range."""
    kernel = np.asarray(kernel, np.float32)
    tiles = np.moveaxis(kernel, -1, 0)
    if tiles.shape[-1] != 3:
        tiles = tiles.mean(axis=-1, keepdims=True)
    return np.stack([scale01(t) for t in tiles])


def _show(ax, mosaic: np.ndarray, cmap: str = "gray") -> None:
    if mosaic.shape[-1] == 1:
        ax.imshow(mosaic[..., 0], cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


# -- what the model computes ------------------------------------------------------------------

def module_outputs(apply_fn, variables, images) -> list[tuple[tuple, bool, np.ndarray]]:
    """(path, owns a 'kernel', output) of every module call of ``apply_fn(variables, images)``
    (evaluation mode) whose output is one array, in the order the calls return. A Module's
    ``apply`` runs as its ``layer_view`` (LeNet-5's NHWC layers, not its row-major form)."""
    module = getattr(apply_fn, "__self__", None)
    if isinstance(module, nn.Module):
        apply_fn = layer_view(module).apply
    found = []

    def forward(variables, images):
        outputs = []

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name == "__call__" and isinstance(out, jax.Array):
                owns_kernel = "kernel" in context.module.variables.get("params", {})
                found.append((tuple(context.module.scope.path), owns_kernel))
                outputs.append(out)
            return out

        with nn.intercept_methods(interceptor):
            apply_fn(variables, images, train=False)
        return outputs

    outputs = jax.jit(forward)(variables, images)  # one compilation, not one per operation
    return [(path, owns_kernel, np.asarray(y)) for (path, owns_kernel), y in zip(found, outputs)]


def _is_map(y) -> bool:
    return y.ndim == 4 and y.shape[1] * y.shape[2] > 1


def first_conv_kernel(calls, variables) -> tuple[str, np.ndarray] | None:
    """(name, kernel [kh, kw, in, out]) of the first convolution called, or None."""
    for path, owns_kernel, y in calls:
        if owns_kernel and _is_map(y):
            params = variables["params"]
            for name in path:
                params = params[name]
            kernel = np.asarray(params["kernel"])
            return ("/".join(path), kernel) if kernel.ndim == 4 else None
    return None


def stage_outputs(calls) -> list[tuple[str, np.ndarray]]:
    """(name, maps [N, H, W, C]) of the last stage output at each spatial resolution, in order."""
    convs = [path for path, owns_kernel, y in calls if owns_kernel and _is_map(y)]
    last = {}
    for path, _, y in calls:
        if path and _is_map(y) and any(c[:len(path)] == path for c in convs):
            last[y.shape[1:3]] = ("/".join(path), y)
    return list(last.values())


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """[true, predicted] counts."""
    pairs = np.asarray(labels) * num_classes + np.asarray(predictions)
    return np.bincount(pairs, minlength=num_classes ** 2).reshape(num_classes, num_classes)


# -- figures ----------------------------------------------------------------------------------

def plot_curves(records: list[dict], config: dict, title: str = "", top5: bool = False) -> Figure:
    """Loss, accuracy and learning rate of a run's metrics.jsonl records; with ``top5``, the test
    top-5 accuracy on a panel of its own (where the records have it). The train curves are the
    mean over each epoch's steps (with dropout and augmentation on), the test curves the
    evaluation at each epoch's end."""
    top5 = top5 and any("test_top5" in r for r in records)
    fig = Figure(figsize=(15 + 5 * top5, 4.2), layout="constrained")
    axes = list(fig.subplots(1, 3 + top5))
    loss_ax, acc_ax, lr_ax = axes[0], axes[1], axes[-1]
    steps_per_epoch = records[0]["step"] // records[0]["epoch"]
    epochs = [r["epoch"] for r in records]

    def series(ax, key, label, **style):
        points = [(r["epoch"], r[key]) for r in records if key in r]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3, label=label, **style)

    series(loss_ax, "train_loss", "train (epoch mean)")
    series(loss_ax, "test_loss", "test")
    series(acc_ax, "train_accuracy", "train (epoch mean)")
    series(acc_ax, "test_accuracy", "test")
    panels = [(loss_ax, "loss"), (acc_ax, "accuracy")]
    if top5:
        series(axes[2], "test_top5", "test top-5", color="C1")
        panels.append((axes[2], "top-5 accuracy"))
    # The learning rate at every step, from the run's own schedule; dots: the recorded values.
    schedule = optim.make_schedule(config, steps_per_epoch)
    steps = np.arange(records[-1]["step"])
    rates = np.asarray(jax.vmap(schedule)(steps))
    lr_ax.plot((steps + 1) / steps_per_epoch, rates, label="schedule")
    series(lr_ax, "learning_rate", "recorded", linestyle="none")
    for ax, name in panels + [(lr_ax, "learning rate")]:
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.set_xlim(0, max(epochs) + 0.2)
        ax.grid(alpha=0.3)
        ax.legend()
        top = ax.secondary_xaxis("top", functions=(lambda e: e * steps_per_epoch,
                                                   lambda s: s / steps_per_epoch))
        top.set_xlabel("step")
    if title:
        fig.suptitle(title)
    return fig


def plot_filters(kernel: np.ndarray, title: str = "") -> Figure:
    """The kernels [kh, kw, in, out] of a convolution: one small image (Axes) per filter, as the
    study notes' filter_show draws them."""
    tiles = filter_tiles(kernel)
    cols = min(len(tiles), 8 if len(tiles) <= 32 else 16)
    rows = -(-len(tiles) // cols)
    # Tiles of FILTER_TILE[0] inches or more: a few filters fill FILTERS_WIDTH (LeNet-5's six
    # 5x5 filters: 1,000 pixels, about 150 a tile), 64 make 16 columns of the least size. The
    # figure is never narrower than FILTERS_WIDTH, which leaves room for the title.
    size = min(max(FILTER_TILE[0], FILTERS_WIDTH / cols), FILTER_TILE[1])
    head = 0.25 * (1 + title.count("\n")) + 0.15  # inches for the title
    fig = Figure(figsize=(max(size * cols, FILTERS_WIDTH), size * rows + head))
    for i, t in enumerate(tiles):
        _show(fig.add_subplot(rows, cols, i + 1), t)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - head / (size * rows + head),
                        wspace=0.1, hspace=0.1)
    fig.suptitle(title or f"{len(tiles)} filters")
    return fig


def plot_feature_maps(image: np.ndarray, stages, title: str = "") -> Figure:
    """One input image [H, W, C] (uint8) and its stage outputs [(name, maps [1, H, W, C])]."""
    mosaics = []
    for name, maps in stages:
        maps = maps[0]
        shown = min(maps.shape[-1], MAX_MAPS)
        tiles = np.stack([scale01(maps[..., i]) for i in range(shown)])[..., None]
        which = f"all {shown}" if shown == maps.shape[-1] else f"first {shown} of {maps.shape[-1]}"
        label = f"{name}: {maps.shape[0]}x{maps.shape[1]}x{maps.shape[2]} ({which} maps)"
        mosaics.append((label, tile(tiles, min(shown, 8))))
    ratios = [0.3] + [m.shape[0] / m.shape[1] for _, m in mosaics]
    fig = Figure(figsize=(8, 8 * sum(ratios) + 0.5 * len(ratios)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(ratios), 1, gridspec_kw={"height_ratios": ratios}))
    _show(axes[0], image.astype(np.float32) / 255.0)
    axes[0].set_title("input")
    for ax, (label, mosaic) in zip(axes[1:], mosaics):
        _show(ax, mosaic, cmap="viridis")
        ax.set_title(label, fontsize=10)
    if title:
        fig.suptitle(title)
    return fig


def plot_confusion(matrix: np.ndarray, class_names, title: str = "") -> Figure:
    """A confusion matrix [true, predicted]: colour is the share of each true class."""
    k = len(class_names)
    size = min(max(6.0, 0.55 * k + 2), 16)
    fig = Figure(figsize=(size + 1, size), layout="constrained")
    ax = fig.subplots()
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of the true class")
    if k <= 30:
        ax.set_xticks(range(k), class_names, rotation=45, ha="right")
        ax.set_yticks(range(k), class_names)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if matrix[i, j]:
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set_title((title + "\n" if title else "") + f"test accuracy {accuracy:.4f} "
                 f"({matrix.sum()} images)")
    return fig


def plot_runs(runs: list[tuple[str, list[dict]]], title: str = "") -> Figure:
    """Train loss (epoch mean), test loss and test accuracy of several runs [(label, records)]
    on shared axes, one legend entry per run under the panels."""
    fig = Figure(figsize=(15, 4.6 + 0.25 * len(runs)), layout="constrained")
    axes = fig.subplots(1, 3, sharex=True)
    for i, (label, records) in enumerate(runs):
        for ax, key in zip(axes, ("train_loss", "test_loss", "test_accuracy")):
            points = [(r["epoch"], r[key]) for r in records if key in r]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, color=f"C{i % 10}", label=label)
    for ax, name in zip(axes, ("train loss (epoch mean)", "test loss", "test accuracy")):
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    handles = {}  # one entry per run, from whichever panel has its curve
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center",
                   ncols=1 if len(handles) > 4 else min(len(handles), 2))
    if title:
        fig.suptitle(title)
    return fig


# -- a run's pictures -------------------------------------------------------------------------

def write_plots(run_dir: str, *, which: str = "latest", model=None, data=None,
                log=print, top5: bool | None = None) -> list[str]:
    """Writes the PNGs of the run in ``run_dir`` there; returns their paths.

    ``model`` (a ``jaxcnn.Restored``) and ``data`` (the run's ``datasets.Dataset``, limited as
    in the run) are what the trainer passes at the end of a run; otherwise the ``which``
    checkpoint is restored and the data set loaded. What cannot be drawn yet is skipped with a
    one-line note through ``log``. ``top5``: the test top-5 accuracy in curves.png (None: for
    data sets of more than 10 classes).
    """
    from jaxcnn.compare import data_title
    from jaxcnn.restore import restore

    config, info = rundir.read_run(run_dir)
    written = []

    def save(fig, name):
        path = os.path.join(run_dir, name)
        fig.savefig(path, dpi=DPI)
        written.append(path)

    records = rundir.read_metrics(run_dir)
    heading = (f"{config['name']}: {config['model']['name']} on "
               f"{data_title(info['data'] if info else None, config)}")
    if top5 is None:
        top5 = bool(info) and info["data"].get("num_classes", 0) > 10
    if records:
        save(plot_curves(records, config, heading, top5), "curves.png")
    else:
        log(f"note: no epoch of {run_dir} has finished yet: no curves.png")
    if model is None:
        try:
            model = restore(run_dir, which)
        except UserError as e:
            log(f"note: no filters.png, feature_maps.png or confusion_matrix.png: {e}")
            return written
    heading += f", step {model.step}"
    if data is None:
        try:
            from jaxcnn import feed
            from jaxcnn.config import DEFAULTS

            d = {**DEFAULTS["data"], **config["data"]}  # runs made before a setting existed
            data = feed.test_sample(feed.open_data({**d, "max_train_examples": 1}),
                                    feed.augmentation_of(d))
        except UserError as e:
            log(f"note: no feature_maps.png or confusion_matrix.png: {e}")
    test_images = test_labels = None
    if data is not None:
        n = config["data"]["max_test_examples"]
        test_images, test_labels = data.test_images[:n], data.test_labels[:n]

    image = test_images[0] if data is not None else np.zeros(model.image_shape, np.uint8)
    calls = module_outputs(model.apply_fn, model.variables, model.preprocess(image[None]))
    first = first_conv_kernel(calls, model.variables)
    if first is None:
        log("note: the model has no convolution with a [kh, kw, in, out] kernel: no filters.png")
    else:
        name, kernel = first
        save(plot_filters(kernel, f"{heading}\n{name}: {kernel.shape[-1]} filters "
                                  f"{kernel.shape[0]}x{kernel.shape[1]}x{kernel.shape[2]}"),
             "filters.png")
    if data is None:
        return written
    names = model.class_names
    predictions = np.argmax(model.logits(test_images), axis=-1)
    caption = f"test image 0: {names[test_labels[0]]}, predicted {names[predictions[0]]}"
    save(plot_feature_maps(image, stage_outputs(calls), f"{heading}\n{caption}"),
         "feature_maps.png")
    save(plot_confusion(confusion_matrix(test_labels, predictions, len(names)), names, heading),
         "confusion_matrix.png")
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxcnn.plot",
        description="Write the PNGs of a run into its directory: curves.png, filters.png, "
                    "feature_maps.png, confusion_matrix.png. Works on runs still in progress.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="a run directory (the --workdir of a run)")
    parser.add_argument("--checkpoint", choices=("latest", "best"), default="latest",
                        help="the parameters to show (default: latest, as the trainer does)")
    parser.add_argument("--top5", action="store_true", default=None,
                        help="draw the test top-5 accuracy in curves.png, on a panel of its own "
                             "(default: only for data sets of more than 10 classes)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        for run_dir in args.run_dirs:
            for path in write_plots(run_dir, which=args.checkpoint, top5=args.top5):
                print(f"wrote {path}")
    except UserError as e:
        return report(e, args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
