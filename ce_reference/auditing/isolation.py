"""Run an audited function in a separate process that can be abandoned when it hangs.

:class:`Isolated` starts one worker with the ``spawn`` start method (a fresh
interpreter: never a ``fork`` of a process that has imported JAX or started
threads), sends it the functions once (they must be picklable: a module-level
function, not a lambda or a closure), then one call per request.  A call that
does not answer within ``timeout`` seconds raises :class:`CallTimeout`; the
worker is killed and a new one is started for the next call.  An exception
raised by the function comes back as :class:`RemoteError` with its type name
and message.  Results are converted to float64 arrays in the worker, so any
array type the function returns works.
"""

from __future__ import annotations

import multiprocessing
import pickle
import warnings

import numpy as np

#: Seconds a new worker may take to start and import the audited function's module.
STARTUP_TIMEOUT = 120.0


class CallTimeout(Exception):
    """The function did not return within the timeout."""


class RemoteError(Exception):
    """The function raised; ``kind`` is the exception's type name."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def check_picklable(fn, what: str) -> None:
    """``TypeError`` with advice when ``fn`` cannot be sent to another process."""
    try:
        pickle.dumps(fn)
    except Exception as exc:  # pickle raises PicklingError, AttributeError, TypeError, ...
        raise TypeError(
            f"{what} cannot be pickled ({type(exc).__name__}: {exc}), and timeout= runs it in "
            "a separate process: define it at module level (not a lambda, a local function "
            "or a closure), or audit without a timeout") from None


def _serve(conn):  # pragma: no cover - runs in the worker process
    try:
        functions = pickle.loads(conn.recv_bytes())
    except Exception as exc:
        conn.send(("error", type(exc).__name__, str(exc)))
        return
    conn.send(("ready",))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        name, x, targets, kwargs = msg
        try:
            with warnings.catch_warnings():      # judge the numbers, not the warnings
                warnings.simplefilter("ignore")
                out = np.asarray(functions[name](x, targets, **kwargs), dtype=np.float64)
            conn.send(("ok", out))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            conn.send(("raised", type(exc).__name__, str(exc)))


class Isolated:
    """Call ``functions[name](x, targets, **kwargs)`` in a spawned worker with a timeout."""

    def __init__(self, functions: dict, timeout: float):
        for name, fn in functions.items():
            check_picklable(fn, name)
        self._payload = pickle.dumps(functions)
        self.timeout = float(timeout)
        self._ctx = multiprocessing.get_context("spawn")
        self._proc = None
        self._conn = None
        self.timeouts = 0

    def _start(self):
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_serve, args=(child,), daemon=True,
                                 name="ce_reference audit worker")
        proc.start()
        child.close()
        parent.send_bytes(self._payload)
        if not parent.poll(STARTUP_TIMEOUT):
            self._kill(proc, parent)
            raise RuntimeError(f"the audit worker did not start within {STARTUP_TIMEOUT:g} s")
        msg = parent.recv()
        if msg[0] != "ready":
            self._kill(proc, parent)
            raise RuntimeError(f"the audit worker could not load the function: {msg[1]}: "
                               f"{msg[2]}")
        self._proc, self._conn = proc, parent

    @staticmethod
    def _kill(proc, conn):
        proc.kill()
        proc.join()
        conn.close()

    def call(self, name, x, targets, kwargs):
        if self._proc is None:
            self._start()
        self._conn.send((name, x, targets, kwargs))
        if not self._conn.poll(self.timeout):
            self._kill(self._proc, self._conn)
            self._proc = self._conn = None
            self.timeouts += 1
            raise CallTimeout(f"no result within {self.timeout:g} s (the call was abandoned)")
        msg = self._conn.recv()
        if msg[0] == "ok":
            return msg[1]
        raise RemoteError(msg[1], msg[2])

    def close(self):
        if self._proc is None:
            return
        try:
            self._conn.send(None)
            self._proc.join(5)
        except (OSError, EOFError, BrokenPipeError):
            pass
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._conn.close()
        self._proc = self._conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
