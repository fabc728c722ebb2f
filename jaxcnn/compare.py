"""Compare runs: ``python -m jaxcnn.compare RUN_DIR... [--plot curves.png]``.

Prints one row per run: experiment, model, parameters, best test accuracy (and its epoch),
epochs done, wall time and train images/s, from summary.json; for a run still in progress, from
run.json and metrics.jsonl (wall time is then the training time of the finished epochs, marked
``>=``). ``--plot`` draws the loss and accuracy curves of every run on shared axes.
"""

import argparse
import os
import sys

from jaxcnn import rundir
from jaxcnn.errors import UserError, report

COLUMNS = ("experiment", "model", "params", "best test acc", "epochs", "wall time", "images/s",
           "run")


def run_row(run_dir: str) -> dict:
    """The comparison's numbers for one run directory (UserError if it is not one)."""
    config, info = rundir.read_run(run_dir)
    records = rundir.read_metrics(run_dir)
    tested = [r for r in records if "test_accuracy" in r]
    best = max(tested, key=lambda r: r["test_accuracy"], default=None)
    row = {"run": run_dir, "experiment": config["name"], "model": config["model"]["name"],
           "params": info["param_count"] if info else None,
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
        return (r["experiment"], r["model"], "-" if r["params"] is None else f"{r['params']:,}",
                acc, f"{r['epochs_done']}/{r['epochs']}", wall,
                "-" if r["images_per_sec"] is None else f"{r['images_per_sec']:,.0f}", r["run"])

    table = [COLUMNS] + [cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    right = {2, 3, 5, 6}  # numbers
    return "\n".join("  ".join(c.rjust(w) if i in right else c.ljust(w)
                               for i, (c, w) in enumerate(zip(line, widths))).rstrip()
                     for line in table)


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
                    "wall time and train images/s; optionally a plot of their curves.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="run directories (finished or in progress)")
    parser.add_argument("--plot", metavar="OUT.png",
                        help="also write the train loss, test loss and test accuracy curves of "
                             "every run, on shared axes, to this PNG")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        rows = [run_row(run_dir) for run_dir in args.run_dirs]
        print(format_table(rows))
        if args.plot:
            from jaxcnn import plot

            names = [r["experiment"] for r in rows]
            labels = [n if names.count(n) == 1 else r["run"] for n, r in zip(names, rows)]
            try:
                plot.plot_runs(list(zip(labels, (r["records"] for r in rows)))).savefig(
                    args.plot, dpi=plot.DPI)
            except (OSError, ValueError) as e:  # an unwritable path, an unknown file type
                raise UserError(f"Cannot write --plot {args.plot!r} ({e}).") from None
            print(f"wrote {args.plot}")
    except UserError as e:
        return report(e, args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
