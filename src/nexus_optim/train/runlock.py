"""The exclusive lock on a run directory, ``OUT/.nexus-train.lock`` (``train/rundir.py``
takes it first): ``fcntl.flock`` on an open file, so the kernel drops it when the process
dies, however it dies; the file records the holder's pid and host for the error message.
Where the file system has no flock, a live holder recorded on this host is refused."""

from __future__ import annotations

import os
import socket
from pathlib import Path

LOCK_NAME = ".nexus-train.lock"


class RunLock:
    """An exclusive lock on a run directory, held until ``release()`` or process exit."""

    def __init__(self, out_dir: str | Path):
        self.out = Path(out_dir)
        self.path = self.out / LOCK_NAME
        self.fd: int | None = None
        self.owner: int | None = None  # the pid that took it (a forked child only closes its copy)

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self) -> "RunLock":
        import fcntl

        if self.fd is not None:
            return self
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as e:
            raise ValueError(f"train.out_dir: cannot create the run lock {str(self.path)!r} "
                             f"({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise ValueError(
                f"train.out_dir {str(self.out)!r} is in use by another nexus train "
                f"({holder}); wait for it to finish or choose another train.out_dir") from None
        except OSError:  # no flock on this file system: fall back to the recorded pid
            holder = _read_holder(fd)
            pid, host = _parse_holder(holder)
            if pid and host == socket.gethostname() and pid != os.getpid() and _alive(pid):
                os.close(fd)
                raise ValueError(
                    f"train.out_dir {str(self.out)!r} is in use by another nexus train "
                    f"({holder}); wait for it to finish or choose another train.out_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self.fd, self.owner = fd, os.getpid()
        return self

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            if self.owner == os.getpid():
                try:
                    os.ftruncate(fd, 0)
                except OSError:
                    pass
            os.close(fd)  # drops the flock (in a forked child: only the child's copy)

    def __del__(self):  # a Trainer that is never closed: the lock goes with it
        try:
            self.release()
        except Exception:
            pass


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "pid unknown"


def _parse_holder(text: str) -> tuple[int | None, str | None]:
    parts = text.split()
    try:
        return int(parts[1]), parts[3]
    except (IndexError, ValueError):
        return None, None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
