"""Worker processes that end with their parent: a ``nnunet-hpn`` run that is killed (SIGKILL, out of memory) leaves
no worker behind, blocked on a pipe nobody reads."""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

#: ``prctl`` option of Linux: the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1
#: Seconds between a worker's checks that its parent still runs (where the kernel cannot be asked to tell it).
PARENT_POLL_SECONDS = 0.5


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)


def end_with_parent(parent_pid: int) -> None:
    """Initializer of a worker process: on Linux the kernel sends it SIGKILL when its parent dies (even while it
    runs native code); elsewhere a daemon thread ends it once its parent is gone."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before the signal was set up
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()


def worker_pool(n_processes: int) -> ProcessPoolExecutor:
    """``n_processes`` spawned worker processes (no fork of a process holding models and threads) that end with
    this process (:func:`end_with_parent`)."""
    return ProcessPoolExecutor(n_processes, mp_context=multiprocessing.get_context("spawn"),
                               initializer=end_with_parent, initargs=(os.getpid(),))
