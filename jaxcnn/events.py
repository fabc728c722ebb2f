"""TensorBoard event files, written with tensorboardX (no TensorFlow): the scalars of every epoch.

Each session of a run writes a file of its own that starts with a SessionLog START at the step
it resumes from: TensorBoard then hides the events of earlier files at that step and later ones
(written after the checkpoint the run resumed from), so a resumed run never shows a step twice.
"""

import os
import socket
import sys
import time


def _import_tensorboardx() -> None:
    """Imports tensorboardX (on first use) without torch.

    tensorboardX imports torch where torch is installed, for its optional torch.Tensor support:
    1-2 s and 190 MB more in every run (0.1 s and 11 MB without). A ``None`` in ``sys.modules``
    makes that ``import torch`` fail, as if torch were absent, while tensorboardX is imported.
    """
    if "tensorboardX" in sys.modules:
        return
    block = "torch" not in sys.modules
    if block:
        sys.modules["torch"] = None
    try:
        import tensorboardX  # noqa: F401
    finally:
        if block and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]


class EventFile:
    """One session's event file in ``directory``: ``events.out.tfevents.<time>.<host>``.

    ``start_step`` is the first step this session writes: events of earlier sessions from that
    step on are hidden by TensorBoard. Each event is flushed to the file as it is written.
    """

    def __init__(self, directory: str, start_step: int):
        _import_tensorboardx()
        from tensorboardX import RecordWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog

        now = time.time()
        name = f"events.out.tfevents.{now:.6f}.{socket.gethostname()}"
        self.path = os.path.join(directory, name)
        self._writer = RecordWriter(self.path)
        self._write(Event(wall_time=now, step=start_step, file_version="brain.Event:2"))
        self._write(Event(wall_time=now, step=start_step,
                          session_log=SessionLog(status=SessionLog.START)))

    def add_scalars(self, step: int, scalars: dict[str, float]) -> None:
        """Appends one event holding ``scalars`` ({tag: value}) at ``step``."""
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=tag, simple_value=value) for tag, value in scalars.items()]
        self._write(Event(wall_time=time.time(), step=step, summary=Summary(value=values)))

    def _write(self, event) -> None:
        self._writer.write(event.SerializeToString())
        self._writer.flush()  # and fsyncs, from tensorboardX 2.6.5 on
