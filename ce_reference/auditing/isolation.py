"""Run an audited function in a separate process that can be abandoned when it hangs.

:class:`Isolated` starts one worker: a fresh interpreter (``sys.executable``
started with :mod:`subprocess` -- never a ``fork`` of a process that has
imported JAX or started threads, and, unlike ``multiprocessing``'s spawn, it
does not re-run the caller's main script).  The worker receives the parent's
``sys.path`` and the functions once (pickled: they must be importable by
name -- defined at module level in a module, not a lambda, a closure or a
function of ``__main__``), then one call per request, over a pipe of its
own (the function may print freely).  A call that does not answer within
``timeout`` seconds raises :class:`CallTimeout`; the worker is killed and a
new one is started for the next call.  An exception raised by the function
comes back as :class:`RemoteError` with its type name and message, and so
does the death of the worker during a call.  Results are converted to
float64 arrays in the worker, so any array type the function returns works.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings
from multiprocessing.connection import Connection

import numpy as np

#: Seconds a new worker may take to start and import the audited function's module.
STARTUP_TIMEOUT = 120.0


class CallTimeout(Exception):
    """The function did not return within the timeout."""


class RemoteError(Exception):
    """The function raised (or its worker died); ``kind`` is the exception's type name."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def check_picklable(fn, what: str) -> None:
    """``TypeError`` with advice when ``fn`` cannot be sent to a worker process."""
    advice = ("timeout= runs it in a separate process, which imports it by name: define it "
              "at module level in a module (not a lambda, a local function, a closure or a "
              "function of __main__), or audit without a timeout")
    if getattr(fn, "__module__", None) == "__main__":
        raise TypeError(f"{what} is defined in __main__, which the worker cannot import; "
                        + advice)
    try:
        pickle.loads(pickle.dumps(fn))
    except Exception as exc:  # pickle raises PicklingError, AttributeError, TypeError, ...
        raise TypeError(f"{what} cannot be pickled ({type(exc).__name__}: {exc}); "
                        + advice) from None


def as_float64(result):
    """A result as float64 array(s): a tuple (the gradients of several arguments) part by
    part, None kept."""
    if isinstance(result, (tuple, list)):
        return tuple(None if r is None else np.asarray(r, dtype=np.float64) for r in result)
    return np.asarray(result, dtype=np.float64)


def _child(read_fd: int, write_fd: int) -> None:  # pragma: no cover - runs in the worker
    """The worker's loop: set ``sys.path``, load the functions, answer calls until EOF."""
    rx, tx = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    try:
        sys.path[:] = rx.recv()
        functions = pickle.loads(rx.recv_bytes())
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        tx.send(("error", type(exc).__name__, str(exc)))
        return
    tx.send(("ready",))
    while True:
        try:
            msg = rx.recv()
        except EOFError:
            return
        if msg is None:
            return
        name, args, kwargs = msg
        try:
            with warnings.catch_warnings():      # judge the numbers, not the warnings
                warnings.simplefilter("ignore")
                out = as_float64(functions[name](*args, **kwargs))
            tx.send(("ok", out))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            tx.send(("raised", type(exc).__name__, str(exc)))


class Isolated:
    """Call ``functions[name](*args, **kwargs)`` in a worker process with a timeout."""

    def __init__(self, functions: dict, timeout: float):
        for name, fn in functions.items():
            check_picklable(fn, name)
        self._payload = pickle.dumps(functions)
        self.timeout = float(timeout)
        self._proc = self._rx = self._tx = None
        self.timeouts = 0

    def _start(self):
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        env = dict(os.environ)
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join([here] + [p for p in
                                                      env.get("PYTHONPATH", "").split(os.pathsep)
                                                      if p])
        code = (f"from ce_reference.auditing.isolation import _child; "
                f"_child({to_child_r}, {from_child_w})")
        try:
            proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.DEVNULL,
                                    pass_fds=(to_child_r, from_child_w), close_fds=True)
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        tx, rx = Connection(to_child_w, readable=False), Connection(from_child_r, writable=False)
        ready = False
        try:
            tx.send([os.path.abspath(p) if p else os.getcwd() for p in sys.path])
            tx.send_bytes(self._payload)
            ready = rx.poll(STARTUP_TIMEOUT)
            msg = rx.recv() if ready else None
        except (EOFError, OSError):
            msg = None
        if msg is None or msg[0] != "ready":
            self._kill(proc, rx, tx)
            why = (f"{msg[1]}: {msg[2]}" if msg else
                   f"no answer within {STARTUP_TIMEOUT:g} s" if not ready else
                   f"it exited with status {proc.returncode}")
            raise RuntimeError(f"the audit worker process could not load the functions ({why})")
        self._proc, self._rx, self._tx = proc, rx, tx

    @staticmethod
    def _kill(proc, rx, tx):
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for conn in (rx, tx):
            try:
                conn.close()
            except OSError:
                pass

    def _drop(self):
        self._kill(self._proc, self._rx, self._tx)
        self._proc = self._rx = self._tx = None

    def call(self, name, args, kwargs):
        """``functions[name](*args, **kwargs)`` in the worker, as float64 (:func:`as_float64`)."""
        if self._proc is None:
            self._start()
        try:
            self._tx.send((name, tuple(args), kwargs))
            if not self._rx.poll(self.timeout):
                self._drop()
                self.timeouts += 1
                raise CallTimeout(f"no result within {self.timeout:g} s (the call was "
                                  "abandoned)")
            msg = self._rx.recv()
        except (EOFError, OSError):
            code = self._proc.poll()
            self._drop()
            raise RemoteError("WorkerDied", f"the worker process died during the call "
                              f"(exit status {code})") from None
        if msg[0] == "ok":
            return msg[1]
        raise RemoteError(msg[1], msg[2])

    def close(self):
        if self._proc is None:
            return
        try:
            self._tx.send(None)
            self._proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self._drop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
