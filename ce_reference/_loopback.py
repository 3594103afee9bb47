"""Evidence that the sockets of a multi-process run stay on loopback.

Multi-process runs (``jax.distributed`` with gloo CPU collectives, ``torch.distributed``
with gloo) open TCP sockets: a coordinator, the collectives' pairs, stores.  They
are configured to bind to 127.0.0.1 only (``coordinator_bind_address``, gloo's
``hostname``/``GLOO_SOCKET_IFNAME=lo``, a file store instead of TCPStore);
:class:`LoopbackMonitor` *checks* it while the run is going on: a background
thread samples ``ss -H -tuanp`` (every TCP/UDP socket, listening or connected, with
its process) every ``interval`` seconds, keeps the sockets that belong to the
watched processes (the monitoring process's descendants, plus any registered
pid), and records a violation for

* a listening socket whose local address is not 127.0.0.0/8 or ::1
  (``0.0.0.0``, ``*``, ``::`` and every external address are violations), and
* a connected socket whose local or peer address is not loopback.

``with LoopbackMonitor() as mon: ...`` runs it; ``mon.violations`` and
``mon.sockets`` (every distinct socket seen, as ``ss`` printed it) are the
evidence; :meth:`LoopbackMonitor.check` raises if there is a violation.  The
caller can also ``mon.stop_now`` a run from a callback (``on_violation``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import threading
import time

__all__ = ["LoopbackMonitor", "LoopbackViolation", "is_loopback", "parse_ss_line", "descendants",
           "ss_available", "free_loopback_port"]


class LoopbackViolation(AssertionError):
    """A watched process had a socket outside the loopback interface."""


def ss_available() -> bool:
    return shutil.which("ss") is not None


def is_loopback(addr: str) -> bool:
    """Whether an ``ss`` address (``127.0.0.1``, ``[::1]``, ``[::ffff:127.0.0.1]``, ``*``) is loopback."""
    host = addr.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host.split("%", 1)[0]
    if host in ("*", "", "0.0.0.0", "::"):
        return False
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _split_hostport(s: str):
    host, _, port = s.rpartition(":")
    return host, port


def descendants(root: int) -> set:
    """``root`` and every process below it (from ``/proc/*/stat``)."""
    children: dict = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may contain spaces and parentheses
        rest = stat.rsplit(")", 1)[-1].split()
        if len(rest) >= 2:
            children.setdefault(int(rest[1]), []).append(int(d))
    out, todo = set(), [root]
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out.add(p)
        todo.extend(children.get(p, ()))
    return out


_PID = re.compile(r"pid=(\d+)")


def parse_ss_line(line: str):
    """``(key, pids, bad)`` of one ``ss -H -tuanp`` line, or None if it is not a socket line.

    ``bad``: a listening (or unconnected UDP) socket whose local address is not
    loopback, or a connected one whose local or peer address is not loopback.
    """
    parts = line.split()
    if len(parts) < 6:
        return None
    netid, state, local, peer = parts[0], parts[1], parts[4], parts[5]
    pids = {int(p) for p in _PID.findall(line)}
    lhost, _ = _split_hostport(local)
    phost, pport = _split_hostport(peer)
    bad = not is_loopback(lhost)
    if state not in ("LISTEN", "UNCONN") and pport != "*":
        bad = bad or not is_loopback(phost)
    return (netid, state, local, peer), pids, bad


class LoopbackMonitor:
    """Sample ``ss`` while a multi-process run goes on; see the module docstring.

    Parameters
    ----------
    root : int, optional
        Watch this process and its descendants (default: the current process).
    pids : iterable of int, optional
        Further processes to watch (e.g. started outside the tree).
    interval : float
        Seconds between samples.
    on_violation : callable, optional
        Called once with the offending ``ss`` line as soon as one is seen (to stop
        the run early).
    """

    def __init__(self, root=None, pids=(), interval=0.05, on_violation=None):
        if not ss_available():
            raise RuntimeError("the loopback check needs `ss` (iproute2); it is not installed")
        self.root = os.getpid() if root is None else int(root)
        self.extra = set(int(p) for p in pids)
        self.interval = float(interval)
        self.on_violation = on_violation
        self.sockets: dict = {}           # key -> ss line (first seen)
        self.violations: list = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = None

    # -- sampling ---------------------------------------------------------------------------
    def add_pid(self, pid: int) -> None:
        self.extra.add(int(pid))

    def sample(self) -> None:
        """Take one sample now (also called by the background thread)."""
        watched = descendants(self.root) | self.extra
        out = subprocess.run(["ss", "-H", "-tuanp"], capture_output=True, text=True,
                             check=False).stdout
        self.samples += 1
        for line in out.splitlines():
            parsed = parse_ss_line(line)
            if parsed is None or not parsed[1] & watched:
                continue
            key, _, bad = parsed
            if key not in self.sockets:
                self.sockets[key] = line.strip()
            if bad and line.strip() not in self.violations:
                self.violations.append(line.strip())
                if self.on_violation is not None:
                    try:
                        self.on_violation(line.strip())
                    except Exception:  # noqa: BLE001 -- never kill the sampler
                        pass

    def _run(self):
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception:  # noqa: BLE001 -- /proc races; try again next tick
                pass
            self._stop.wait(self.interval)

    def start(self):
        self._thread = threading.Thread(target=self._run, name="loopback-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.sample()          # a last look
        except Exception:  # noqa: BLE001
            pass
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    # -- results ----------------------------------------------------------------------------
    @property
    def listeners(self) -> list:
        return [v for k, v in self.sockets.items() if k[1] == "LISTEN"]

    @property
    def ok(self) -> bool:
        return not self.violations

    def check(self) -> None:
        """Raise :class:`LoopbackViolation` listing every non-loopback socket seen."""
        if self.violations:
            raise LoopbackViolation("sockets outside loopback:\n  " + "\n  ".join(self.violations))

    def summary(self) -> str:
        lines = [f"loopback monitor: {self.samples} samples of `ss -H -tuanp`, "
                 f"{len(self.sockets)} distinct sockets of the watched processes, "
                 f"{len(self.listeners)} listening, {len(self.violations)} violations"]
        lines += [f"  {s}" for s in self.sockets.values()]
        if self.violations:
            lines.append("VIOLATIONS:")
            lines += [f"  {v}" for v in self.violations]
        return "\n".join(lines)


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 right now (bind port 0 on loopback, read it, close)."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout, interval=0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())
