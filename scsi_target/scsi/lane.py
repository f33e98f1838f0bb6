"""The worker lane of a disk LU over an asynchronous store (an RBD image).

Plain READ/WRITE(10/16) are submitted to the store and complete from its
callbacks (sbc.ASYNC_FAST).  Every other command -- and any READ/WRITE that is
not plain, or arrives while the lane is busy, or is not a SIMPLE task -- runs
the LU's ordinary synchronous path here, on one worker thread per LU, so the
event loop never waits for the store:

* a lane command starts only once no submitted store I/O is in flight
  (``store.drain()``), and no new I/O is submitted while the lane holds a
  command, so each lane command runs alone, exactly as on the loop before
  (COMPARE AND WRITE stays atomic, SYNCHRONIZE CACHE covers every write
  answered before it, ORDERED and HEAD OF QUEUE tasks see all earlier ones done);
* the lane keeps arrival order; its commands complete as Deferreds.
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import TYPE_CHECKING

from .command import Command, Deferred, Response, Status
from . import sense as S

if TYPE_CHECKING:  # pragma: no cover
    from .disk import DiskLU

log = logging.getLogger("scsi_target.scsi")


class WorkerLane:
    def __init__(self, lu: "DiskLU", run) -> None:
        self.lu = lu
        self._run = run                 # the LU's synchronous execute
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._held = 0                  # commands queued or running
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def busy(self) -> bool:
        return self._held > 0

    def submit(self, cmd: Command) -> Deferred:
        deferred = Deferred()
        if not self._enter():
            deferred.complete(_failure(cmd, S.not_ready(S.LUN_NOT_READY_INIT_REQUIRED)))
            return deferred
        self._queue.put((cmd, deferred))
        return deferred

    def _enter(self) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._held += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, daemon=True,
                                                name=f"lu-lane-{id(self.lu):x}")
                self._thread.start()
        return True

    def call(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the lane, alone: after the I/O in flight, before later
        commands (a capacity change)."""
        if self._enter():
            self._queue.put((fn, args))

    def _work(self) -> None:
        store = self.lu.store
        while True:
            item = self._queue.get()
            if item is None:
                return
            cmd, deferred = item
            if callable(cmd):
                try:
                    store.drain()
                    cmd(*deferred)
                except Exception:
                    log.exception("LU maintenance on the lane failed")
                with self._lock:
                    self._held -= 1
                continue
            try:
                store.drain()
                resp = self._run(cmd)
            except Exception:
                log.exception("internal error executing CDB %s on an RBD-backed LU",
                              bytes(cmd.cdb).hex())
                resp = _failure(cmd, S.SenseError(S.SenseKey.HARDWARE_ERROR,
                                                  S.INTERNAL_TARGET_FAILURE))
            with self._lock:
                self._held -= 1
            deferred.complete(resp)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join()


def _failure(cmd: Command, err: S.SenseError) -> Response:
    return Response(Status.CHECK_CONDITION, sense=S.render_sense(err),
                    residual=cmd.expected_length or 0)
