"""Runs an experiment: ``python -m jaxcnn.launch EXPERIMENT.py [--workdir DIR] [--set k=v ...]``.

Loads the experiment file's ``config``, applies ``--set`` overrides, checks everything that can
be checked without data (settings, model, dataset name, data_dir, batch size over the devices)
before it touches the workdir, prints the settings that differ from the defaults and calls
``jaxcnn.train.train_and_evaluate(config, workdir)``, holding the workdir's lock (a second launch
into a workdir in use is refused). A workdir that holds the finished run of the same config is
left as it is: the launcher says so and exits 0. Mistakes in the input end with one paragraph on
stderr and exit status 2 (add ``--debug`` for the traceback).
"""

import argparse
import contextlib
import json
import os
import sys
import textwrap

from jaxcnn import cpu_devices, hostmem, native_stderr
from jaxcnn.errors import EXIT_USER_ERROR, RunStopped, UserError, print_paragraph, report


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m jaxcnn.launch",
        description="Train the experiment defined by a Python file's `config` dict.")
    parser.add_argument("experiment", help="path of the experiment file, e.g. experiments/lenet.py")
    parser.add_argument("--workdir", help="run directory (default: runs/<experiment name>)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set optimizer.learning_rate=0.01 or "
                             "--set data.data_dir=~/mnist (VALUE is a Python literal; other text, "
                             "such as a word or a path, is taken as a string); repeatable")
    parser.add_argument("--restart", action="store_true",
                        help="if the workdir holds an earlier run, move it aside to WORKDIR.old-N "
                             "(it is never deleted) and start afresh; without it, a run of the "
                             "same config is resumed (or, if finished, left as it is), one with "
                             "only more epochs is trained on, and one of another config is "
                             "refused")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    multi = parser.add_argument_group(
        "multi-host (jax.distributed): start one process per host, all with the same arguments "
        "except --process-id")
    multi.add_argument("--coordinator", metavar="HOST:PORT",
                       help="address of process 0, which coordinates the others")
    multi.add_argument("--num-processes", type=int, metavar="N", help="number of processes")
    multi.add_argument("--process-id", type=int, metavar="I", help="this process's rank, 0..N-1")
    multi.add_argument("--auto-distributed", action="store_true",
                       help="let JAX detect the cluster itself (Cloud TPU pods, SLURM)")
    multi.add_argument("--init-timeout", type=int, default=300, metavar="SECONDS",
                       help="how long to wait for every process to join (default 300)")
    return parser.parse_args(argv)


def init_distributed(args) -> None:
    """Joins the processes of a multi-host run (before any other JAX call), if asked to."""
    explicit = (args.coordinator, args.num_processes, args.process_id)
    if not args.auto_distributed and all(v is None for v in explicit):
        return
    if not args.auto_distributed and any(v is None for v in explicit):
        raise UserError(
            "A multi-host run needs all of --coordinator HOST:PORT, --num-processes N and "
            "--process-id I (or --auto-distributed on Cloud TPU pods and SLURM).")
    if not args.auto_distributed and not 0 <= args.process_id < args.num_processes:
        raise UserError(
            f"--process-id {args.process_id} must be in 0..{args.num_processes - 1} "
            f"(--num-processes {args.num_processes}).")
    import threading

    import jax

    where = "the cluster" if args.auto_distributed else f"the coordinator at {args.coordinator}"
    advice = ("Start every process with the same --coordinator and --num-processes and its own "
              "--process-id, and check that process 0 is running and reachable.")

    # JAX's runtime aborts the whole process (in C++) when peers do not come in time, so a
    # watchdog says why first and exits cleanly.
    def give_up():
        print_paragraph(f"error: Could not join {where}: not every one of the processes came "
                        f"within {args.init_timeout} s (--init-timeout). {advice}")
        os._exit(EXIT_USER_ERROR)

    watchdog = threading.Timer(args.init_timeout, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        timeout = args.init_timeout + 30  # JAX's own limit comes after the watchdog's
        if args.auto_distributed:
            jax.distributed.initialize(initialization_timeout=timeout)
        else:
            jax.distributed.initialize(
                coordinator_address=args.coordinator, num_processes=args.num_processes,
                process_id=args.process_id, initialization_timeout=timeout)
    except Exception as e:  # noqa: BLE001 - JAX raises several kinds; all mean: could not join
        reason = " ".join(str(e).split())[:300]
        raise UserError(f"Could not join {where} ({type(e).__name__}: {reason}). {advice}") from None
    finally:
        watchdog.cancel()


def prepare(args) -> tuple[dict, str]:
    """The resolved config and the workdir for the parsed command line."""
    from jaxcnn import config as config_lib

    config = config_lib.resolve(config_lib.load_experiment(args.experiment), args.sets)
    if config["name"] is None:
        config["name"] = os.path.splitext(os.path.basename(args.experiment))[0]
    workdir = args.workdir or os.path.join("runs", config["name"])
    return config, workdir


def use_compilation_cache() -> str | None:
    """Keeps compiled steps on disk, so a repeated run skips XLA compilation (LeNet-5: 4.0 ->
    0.7 s). ``$JAXCNN_COMPILATION_CACHE`` (``0`` turns it off), else
    ``$XDG_CACHE_HOME/jaxcnn/compilation`` or ``~/.cache/jaxcnn/compilation``; a cache the user
    already gave JAX (``JAX_COMPILATION_CACHE_DIR``) is left as it is. Returns the folder."""
    import jax

    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    path = os.environ.get("JAXCNN_COMPILATION_CACHE")
    if path == "0":
        return None
    if not path:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = os.path.join(base, "jaxcnn", "compilation")
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path


def check_before_workdir(config: dict) -> None:
    """What can be checked without reading any data, before the workdir is touched (so that
    --restart never moves a run aside for a command that cannot run): the dataset name and
    data_dir, and the settings that only fail once training starts. The experiment's settings,
    model, optimizer and schedule were checked when the config was resolved."""
    import jax

    from jaxcnn import datasets

    d = config["data"]
    datasets.check_name(d["dataset"], d["data_dir"])
    from jaxcnn import feed, train

    # With jaxcnn's own host devices the run uses as many as divide the batch (jaxcnn.cpu_devices).
    train.check_batch_size(config["batch_size"], 1 if cpu_devices.requested() else jax.device_count())

    pipeline = feed.planned_pipeline(d)
    feed.check_combinations(config, pipeline, feed.choose_epoch_loop(config["epoch_loop"], pipeline))


def _read_object(workdir: str, name: str) -> dict | None:
    """The JSON object in ``workdir/name`` (config.json, summary.json); None where there is no
    readable one."""
    try:
        with open(os.path.join(workdir, name)) as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def finished_run(workdir: str, config: dict) -> dict | None:
    """The summary.json of the run in ``workdir`` when it is the finished run of ``config``
    (same settings, all its epochs trained); None otherwise. Reads, never writes."""
    from jaxcnn import rundir

    if rundir.saved_config(workdir) != rundir.jsonable(config):
        return None
    # No summary: not finished (or killed before its summary), and resuming finishes it.
    summary = _read_object(workdir, "summary.json")
    return summary if summary is not None and summary.get("epochs") == config["epochs"] else None


def more_epochs_of(workdir: str, config: dict) -> dict | None:
    """The saved config of the run in ``workdir`` when ``config`` is that config with more
    epochs (training it longer resumes it); None otherwise."""
    from jaxcnn import rundir

    saved = rundir.saved_config(workdir)
    new = rundir.jsonable(config)
    if not isinstance(saved, dict) or not isinstance(saved.get("epochs"), int):
        return None
    same_otherwise = {**saved, "epochs": None} == {**new, "epochs": None}
    return saved if same_otherwise and new["epochs"] > saved["epochs"] else None


def complete_message(workdir: str, summary: dict) -> str:
    from jaxcnn import console

    text = console.complete_message(workdir, summary)
    if not os.path.isfile(os.path.join(workdir, "curves.png")):
        text += f" Its plots are missing: python -m jaxcnn.plot {workdir} draws them."
    return text


def claim_and_train(config: dict, workdir: str, restart: bool) -> None:
    """Claims the workdir and trains; a workdir this made and left empty is removed on error."""
    import jax

    from jaxcnn import rundir
    from jaxcnn.train import train_and_evaluate

    created = not os.path.exists(workdir)
    try:
        if jax.process_index() == 0:
            earlier = None if restart else more_epochs_of(workdir, config)
            if earlier is not None:
                # The run's own config passes the check; train_and_evaluate writes the new one.
                rundir.claim(workdir, earlier, restart)
                note = ("" if config["schedule"]["name"] == "constant" else
                        f"; the {config['schedule']['name']} learning-rate schedule now spans "
                        f"{config['epochs']} epochs, from the step it resumes at")
                print(f"training the run in {workdir} on from {earlier['epochs']} to "
                      f"{config['epochs']} epochs{note}")
            elif rundir.claim(workdir, config, restart):
                print(f"resuming the run in {workdir}")
        train_and_evaluate(config, workdir)
    except UserError:
        if created and os.path.isdir(workdir) and not os.listdir(workdir):
            os.rmdir(workdir)  # made by this command and still empty: leave no trace
        raise


def main(argv=None) -> int:
    hostmem.keep_freed_memory()  # before JAX starts its CPU backend; see jaxcnn/hostmem.py
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config, workdir = prepare(args)
        # Before anything starts JAX's backends: one single-core process per core for small
        # models (jaxcnn/replicas.py), else one host device per core where the model has work
        # for them (jaxcnn/cpu_devices.py).
        multi_process = args.auto_distributed or args.coordinator is not None
        from jaxcnn import replicas

        if replicas.plan(config, multi_process) == 1:
            cpu_devices.request(multi_process=multi_process)
        init_distributed(args)
        use_compilation_cache()
        native_stderr.start_backends()  # keeps libtpu's messages from machines without a TPU
        import jax

        from jaxcnn import rundir

        check_before_workdir(config)

        # Process 0 holds the workdir's lock for the whole run, from before it claims the workdir
        # (so --restart never moves a running run aside): a second launch is refused at once.
        with rundir.lock(workdir) if jax.process_index() == 0 else contextlib.nullcontext():
            summary = None if args.restart else finished_run(workdir, config)
            if jax.process_count() > 1:  # process 0 decides for all, whatever the others see
                import numpy as np
                from jax.experimental import multihost_utils

                complete = multihost_utils.broadcast_one_to_all(np.int32(summary is not None))
                summary = (summary or {}) if int(complete) else None
            if summary is not None:
                if jax.process_index() == 0:
                    print(textwrap.fill(complete_message(workdir, summary), width=100,
                                        break_on_hyphens=False, break_long_words=False))
                return 0
            if jax.process_index() == 0:
                from jaxcnn import console
                from jaxcnn.config import DEFAULTS

                for line in console.config_lines(config, DEFAULTS,
                                                 os.path.join(workdir, "config.json")):
                    print(line)
            claim_and_train(config, workdir, args.restart)
    except UserError as e:
        return report(e, args.debug)
    except RunStopped as e:
        print_paragraph(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
