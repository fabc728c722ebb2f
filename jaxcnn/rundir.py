"""The run directory: claiming it, and writing its files without ever losing an earlier run.

    WORKDIR/config.json        the resolved config
    WORKDIR/run.json           model, parameter count and data (with the normalisation), at start
    WORKDIR/metrics.jsonl      one JSON object per epoch
    WORKDIR/events.out.tfevents.*  the same metrics for TensorBoard, one file per session
    WORKDIR/summary.json       the final summary
    WORKDIR/model_summary.txt  the per-layer table of the model
    WORKDIR/*.png              plots (see jaxcnn.plot)
    WORKDIR/checkpoints/       Orbax checkpoints (see jaxcnn.checkpoint)

and, beside the workdir while a run is going, WORKDIR.lock: the lock that keeps a second run out
(see ``lock``). It is a sibling rather than a file inside, so it neither makes a new workdir
non-empty nor moves with the workdir that --restart renames.
"""

import contextlib
import fcntl
import json
import os
import socket
import time

import jax
import numpy as np

from jaxcnn import events
from jaxcnn.errors import UserError, did_you_mean

# metrics.jsonl keys written to TensorBoard, and their tags there.
TENSORBOARD_TAGS = {
    "train_loss": "loss/train", "test_loss": "loss/test",
    "train_accuracy": "accuracy/train", "test_accuracy": "accuracy/test",
    "test_top5": "accuracy/test_top5", "learning_rate": "learning_rate",
    "images_per_sec": "images_per_sec",
}


def jsonable(config: dict) -> dict:
    """``config`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(config, default=_default))


@contextlib.contextmanager
def lock(workdir: str):
    """Holds WORKDIR.lock, an OS file lock (``flock``), for the ``with`` block: a second run in
    the same workdir is refused with a UserError naming the process that holds it.

    The kernel releases the lock when its process ends, however it ends (even ``kill -9``), so
    a lock file left by a killed run blocks nothing; the pid, host and start time written in it
    are only for the message.
    """
    path = os.path.abspath(workdir) + ".lock"
    while True:
        f = _open_lock_file(path, workdir)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = _holder(f.read())
            f.close()
            raise UserError(
                f"The workdir {workdir!r} is in use by another run: {holder} holds its lock "
                f"{path}. Wait for that run to end (or stop it), or choose another "
                "--workdir.") from None
        except OSError as e:  # a filesystem without locks
            print(f"WARNING: cannot lock {path} ({e.strerror}): nothing keeps a second run out "
                  f"of {workdir}.")
            break
        if _same_file(f, path):
            break
        f.close()  # its holder removed it on finishing, between our open and flock: again
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                        "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}) + "\n")
    f.flush()
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)  # before unlocking: a launcher that opened it sees that, and retries
        f.close()


def _open_lock_file(path: str, workdir: str):
    try:
        try:
            return open(path, "a+")  # "a+": never truncates what its holder wrote
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            return open(path, "a+")
    except OSError as e:
        raise UserError(f"Cannot write to the workdir {workdir!r}: its lock file {path} cannot be "
                        f"created beside it ({e.strerror}). Choose a --workdir in a writable "
                        "folder.") from None


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"process {info['pid']} on {info['host']}, started {info['started']},"
    except (ValueError, TypeError, KeyError):
        return "another process (starting up)"


def _same_file(f, path: str) -> bool:
    try:
        return os.path.samestat(os.fstat(f.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


def claim(workdir: str, config: dict, restart: bool) -> bool:
    """Makes ``workdir`` ready for ``config``; True when it holds this config's run to resume.

    A workdir holding a run of another config (or other files) is refused; ``restart`` moves it
    aside to WORKDIR.old-N first. Nothing is ever deleted.
    """
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir {workdir!r} is a file, not a directory: choose another path.")
    if os.path.isdir(workdir) and os.listdir(workdir):
        if restart:
            n = 1
            while os.path.exists(f"{workdir}.old-{n}"):
                n += 1
            os.rename(workdir, f"{workdir}.old-{n}")
            print(f"moved the earlier run in {workdir} to {workdir}.old-{n}")
        else:
            old = saved_config(workdir)
            if old is None:
                raise UserError(
                    f"The workdir {workdir!r} is not empty but holds no readable config.json of a "
                    "jaxcnn run. Choose another --workdir, or pass --restart to move its contents "
                    f"aside (to {workdir}.old-N; nothing is deleted).")
            differences = _differences(old, jsonable(config))
            if differences:
                shown = "; ".join(differences[:8]) + ("; ..." if len(differences) > 8 else "")
                raise UserError(
                    f"The workdir {workdir!r} holds a run of a different config ({shown}). "
                    "Choose another --workdir, or pass --restart to move the old run aside (to "
                    f"{workdir}.old-N; nothing is deleted).")
            _check_writable(workdir)
            return True
    _check_writable(workdir)
    return False


def saved_config(workdir: str):
    """The config.json of the run in ``workdir`` as JSON reads it back, with the settings added
    to DEFAULTS since it was written at their defaults (``config.with_later_defaults``: what that
    run trained with); None where there is no readable one."""
    from jaxcnn.config import with_later_defaults

    try:
        with open(os.path.join(workdir, "config.json")) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    return jsonable(with_later_defaults(saved))


def _differences(old, new, prefix="") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key, "<unset>"), new.get(key, "<unset>"), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix[:-1]}: {old!r} there, {new!r} now"]


def _check_writable(workdir: str) -> None:
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, ".write-test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise UserError(
            f"Cannot write to the workdir {workdir!r} ({e.strerror}). Choose a writable "
            "--workdir.") from None


def read_run(workdir: str) -> tuple[dict, dict | None]:
    """(config.json, run.json) of a run directory.

    run.json ({'model', 'param_count', 'data'}) is written when a run starts; for runs made before
    it existed, summary.json stands in once the run has finished, and otherwise it is None.
    """
    if not os.path.isfile(os.path.join(workdir, "config.json")):
        what = ("does not exist" if not os.path.exists(workdir)
                else "is not a jaxcnn run directory (it has no config.json)")
        parent = os.path.dirname(os.path.normpath(workdir)) or "."
        runs = [d for d in (os.listdir(parent) if os.path.isdir(parent) else [])
                if os.path.isfile(os.path.join(parent, d, "config.json"))]  # runs beside it
        raise UserError(f"{workdir!r} {what}. Give the --workdir of a jaxcnn run, e.g. runs/lenet."
                        + did_you_mean(os.path.basename(os.path.normpath(workdir)), runs))
    config = read_json(os.path.join(workdir, "config.json"))
    for name in ("run.json", "summary.json"):
        if os.path.isfile(os.path.join(workdir, name)):
            info = read_json(os.path.join(workdir, name))
            return config, {key: info[key] for key in ("model", "param_count", "data")}
    return config, None


def read_metrics(workdir: str) -> list[dict]:
    """The records of metrics.jsonl (none if it is missing), up to a line cut short by a crash."""
    records = []
    try:
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except ValueError:
                    break
    except FileNotFoundError:
        pass
    return records


def read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"Cannot read {path} ({e}).") from None


class RunWriter:
    """Writes the files of a run directory (on process 0 only); each file is replaced atomically."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.workdir, self.enabled = workdir, enabled
        self._events = None
        self._first_step = 1  # of this session, for TensorBoard (see truncate_metrics)

    def path(self, name: str) -> str:
        return os.path.join(self.workdir, name)

    def write_text(self, name: str, text: str) -> None:
        if not self.enabled:
            return
        os.makedirs(self.workdir, exist_ok=True)
        tmp = self.path(name + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.path(name))

    def write_json(self, name: str, obj) -> None:
        self.write_text(name, json.dumps(obj, indent=2, default=_default) + "\n")

    def append_jsonl(self, name: str, obj) -> None:
        if not self.enabled:
            return
        with open(self.path(name), "a") as f:
            f.write(json.dumps(obj, default=_default) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def append_metrics(self, record: dict) -> None:
        """Appends an epoch's record to metrics.jsonl and its scalars to this session's
        TensorBoard event file."""
        self.append_jsonl("metrics.jsonl", record)
        if not self.enabled:
            return
        if self._events is None:
            self._events = events.EventFile(self.workdir, self._first_step)
        scalars = {tag: float(record[key]) for key, tag in TENSORBOARD_TAGS.items() if key in record}
        self._events.add_scalars(record["step"], scalars)

    def truncate_metrics(self, last_step: int) -> None:
        """Drops metrics.jsonl lines after ``last_step`` (written after the checkpoint a run
        resumes from) and any line cut short by a crash; TensorBoard hides them too, from the
        next event file on."""
        self._first_step = last_step + 1
        if not self.enabled or not os.path.exists(self.path("metrics.jsonl")):
            return
        kept = []
        with open(self.path("metrics.jsonl")) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    break
                if record.get("step", 0) > last_step:
                    break
                kept.append(line if line.endswith("\n") else line + "\n")
        self.write_text("metrics.jsonl", "".join(kept))


def _default(x):
    if isinstance(x, (np.generic, jax.Array)):
        return np.asarray(x).tolist()
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
