"""SIGTERM and SIGINT as a flag the training loop checks after every step, so a stopped run
saves a checkpoint first. A second signal stops at once."""

import os
import signal
import sys
import threading

from jaxcnn.errors import RunStopped


class StopSignals:
    """``with StopSignals() as stop:`` ... ``if stop.signal: raise stop.stopped(step, workdir)``."""

    def __enter__(self):
        self.signal = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        print(f"\n{signal.Signals(signum).name}: finishing the current step and saving a "
              "checkpoint (send it again to stop at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def stopped(self, step: int, workdir: str) -> RunStopped:
        name = signal.Signals(self.signal).name
        return RunStopped(
            f"Stopped by {name} after step {step}; saved a checkpoint in "
            f"{os.path.join(workdir, 'checkpoints')}. Run the same command again to resume.",
            128 + self.signal)
