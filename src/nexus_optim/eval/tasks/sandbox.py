"""Run an untrusted Python program in a throw-away, limited child process.

Used by the code-execution task (``code.py``). The layers, outermost first; each is applied
where the machine allows it and the next ones still hold where it does not:

1. **Namespaces** (``unshare``, probed once): a new user namespace (so the child holds no
   capabilities outside it, and ``RLIMIT_NPROC`` is enforced even when the evaluator is root),
   a new network namespace (no interfaces up, not even loopback: nothing to connect to) and a
   new PID namespace whose init is the candidate, so when it exits or is killed the kernel
   kills every process it left behind, whatever session or process group they moved to.
2. **Landlock** (Linux >= 5.13, applied by the child to itself before the program runs):
   filesystem writes (create, write, truncate, remove, rename, link, mknod) are allowed only
   beneath the private working directory (and ``/dev/null``); with Landlock ABI >= 4 TCP
   ``bind``/``connect`` are denied; with ABI >= 6 signals and abstract unix sockets cannot
   reach processes outside the sandbox.
3. **Resource limits** (``setrlimit`` in the child, soft = hard so they cannot be raised):
   CPU seconds, address space, file size, open files, no core dumps, and ``RLIMIT_NPROC = 0``
   (no new process or thread; the kernel does not enforce it for real root, hence layer 4).
4. **An audit hook** (``sys.addaudithook``, installed last, before the program runs) refusing
   sockets, fork / exec / spawn / ``subprocess`` / ``os.system``, ``ctypes`` and
   ``_posixsubprocess``, extension modules the bootstrap did not preload, signals to other
   processes, raising resource limits, tracing (``sys.settrace`` / ``setprofile``), rebinding
   any function's ``__code__`` / ``__defaults__`` / ``__kwdefaults__``, and opening for
   writing / removing / renaming / linking any path outside the private directory. Its
   decisions use only constants, immutable defaults (C builtins) and C-level reads of the
   event's arguments, so a program that reaches it (through ``gc``) cannot change them.
5. **The evaluator side**: a fresh private directory as cwd, ``HOME`` and ``TMPDIR``; the
   program's stdout / stderr go to files (never pipes, so nothing a survivor holds can block
   the evaluator), read after the run and capped; the child starts in its own session and on
   timeout (and after every run) its whole process group is SIGKILLed while the group leader
   is still an unreaped zombie (so the group id cannot have been reused).

It is not a security boundary against a determined attacker (kernel exploits, or escaping the
in-process audit hook where layers 1-2 are unavailable): see docs/reliability.md.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

#: ``unshare`` flags, most isolating first; the first that works here is used.
_UNSHARE_FLAGS = (
    ("--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child"),
    ("--net", "--pid", "--fork", "--kill-child"),  # root without user namespaces
)
OUTPUT_CAP = 64 * 1024  # bytes kept of each of stdout / stderr (the end)
KILL_MARGIN = 1.0       # seconds: the most a run takes beyond its timeout (kill and reap)


@dataclass
class RunResult:
    status: str                 # "exited" | "timeout"
    returncode: int | None      # None on timeout; negative = killed by that signal
    stdout: str
    stderr: str
    elapsed: float
    layers: dict = field(default_factory=dict)  # what the child reported it applied


@functools.lru_cache(maxsize=None)
def namespace_prefix() -> tuple[str, ...]:
    """The ``unshare`` command prefix that works on this machine as this user, or ``()``.

    Probed once per process by running ``python -c pass`` under it. Set
    ``NEXUS_SANDBOX_NO_NAMESPACES=1`` to skip (the other layers still apply)."""
    if os.environ.get("NEXUS_SANDBOX_NO_NAMESPACES") or not sys.platform.startswith("linux"):
        return ()
    exe = shutil.which("unshare")
    if exe is None:
        return ()
    for flags in _UNSHARE_FLAGS:
        prefix = (exe, *flags)
        try:
            r = subprocess.run([*prefix, sys.executable, "-I", "-S", "-c", "pass"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=20)
        except (OSError, subprocess.SubprocessError):
            continue
        if r.returncode == 0:
            return prefix
    return ()


# The child's bootstrap, run with ``python -I -B -c``; ``{cfg}`` is a dict literal. It is applied
# in order: chdir, landlock, rlimits, preloaded extension modules, audit hook, then the program.
# The hook's constants are literals in its code or its (immutable) defaults, not closure cells
# or globals a program could rebind.
_BOOT = r'''
import os, sys
CFG = {cfg}
os.chdir(CFG["work"])
_layers = {{"namespaces": list(CFG["ns"]), "pid": os.getpid()}}
_report = open(CFG["report"], "w")

def _landlock(work):
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        sc = libc.syscall
        sc.restype = ctypes.c_long
        u32, sz = ctypes.c_uint32, ctypes.c_size_t
        abi = sc(444, None, sz(0), u32(1))  # landlock_create_ruleset(NULL, 0, VERSION)
        if abi < 1:
            return 0
        fs = (1 << 1) | sum(1 << i for i in range(4, 13))  # WRITE_FILE, REMOVE_*, MAKE_*
        if abi >= 2:
            fs |= 1 << 13  # REFER
        if abi >= 3:
            fs |= 1 << 14  # TRUNCATE
        net = 3 if abi >= 4 else 0      # BIND_TCP | CONNECT_TCP, no rule allows any port
        scoped = 3 if abi >= 6 else 0   # ABSTRACT_UNIX_SOCKET | SIGNAL
        class Attr(ctypes.Structure):
            _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]
        class Beneath(ctypes.Structure):
            _pack_ = 1
            _fields_ = [("allowed", ctypes.c_uint64), ("fd", ctypes.c_int32)]
        attr = Attr(fs, net, scoped)
        size = 24 if abi >= 6 else 16 if abi >= 4 else 8
        rs = sc(444, ctypes.byref(attr), sz(size), u32(0))
        if rs < 0:
            return 0
        for path, allowed in ((work, fs), ("/dev/null", (1 << 1) | (fs & (1 << 14)))):
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            rule = Beneath(allowed, fd)
            ok = sc(445, ctypes.c_int(rs), ctypes.c_int(1), ctypes.byref(rule), u32(0))
            os.close(fd)
            if ok != 0:
                os.close(rs)
                return 0
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
        ok = sc(446, ctypes.c_int(rs), u32(0))
        os.close(rs)
        return int(abi) if ok == 0 else 0
    except Exception:
        return 0
    finally:
        for m in [m for m in sys.modules if m == "ctypes" or m.startswith(("ctypes.", "_ctypes"))]:
            del sys.modules[m]

_layers["landlock"] = _landlock(CFG["work"]) if CFG["landlock"] else 0

import resource
_rl = {{}}
for _name, _v in CFG["rlimits"].items():
    try:
        resource.setrlimit(getattr(resource, _name), (_v, _v))
        _rl[_name] = _v
    except (ValueError, OSError, AttributeError):
        pass
_layers["rlimits"] = _rl

import runpy, json
if CFG["hook"]:
    for _m in CFG["preload"]:
        try:
            __import__(_m)
        except ImportError:
            pass
{hook}
    for _m in ("_posixsubprocess", "ctypes", "_ctypes"):
        sys.modules.pop(_m, None)
    sys.addaudithook(_sandbox_hook)
    del _sandbox_hook  # reachable now only from the interpreter's hook list (and gc: immutable)
_layers["audit_hook"] = bool(CFG["hook"])
_report.write(json.dumps(_layers))
_report.close()
del _report, _rl, _layers, CFG, _landlock
sys.argv = ["program.py"]
runpy.run_path("program.py", run_name="__main__")
'''

#: Extension modules (``.so``) loaded by the bootstrap before the hook is installed: a program
#: can import them (cached in ``sys.modules``); any other extension module is refused once the
#: hook is in (its loader, ``_imp.create_dynamic``, takes the module's name and path from an
#: object the program controls, so a check by name could be lied to). Pure-Python modules and
#: the interpreter's built-in modules import as usual.
PRELOADED_EXTENSIONS = (
    "math", "cmath", "_heapq", "_bisect", "_random", "_json", "_datetime", "_decimal", "array",
    "_struct", "binascii", "_statistics", "_contextvars", "_csv", "_pickle", "zlib", "unicodedata",
    "_opcode", "_queue", "_md5", "_sha1", "_sha256", "_sha512", "_sha3", "_blake2", "_typing",
    "_zoneinfo", "_bz2", "_lzma", "_multibytecodec", "_asyncio", "_socket", "select",
    "_elementtree", "pyexpat", "_uuid", "grp",
)  # not fcntl / termios / mmap / _posixshmem: nothing a code task needs, more surface

# Indented one level (inside ``if CFG["hook"]:``); ``__W__`` is replaced by the private dir.
# Every decision uses only constants in this code, the defaults (C builtins, immutable values)
# and C-level conversions of the event's arguments: no Python helper a program could rebind
# (os.path.realpath's module globals), no method of an argument (a str subclass's __str__).
# Rebinding a function's __code__ / __defaults__ / __kwdefaults__ (this one's, reached through
# gc) and tracing (a trace function can rewrite the hook's locals) are refused.
_HOOK = r"""
def _sandbox_hook(event, args, _W=__W__, _readlink=os.readlink, _getcwd=os.getcwd, _pid=os.getpid,
                  _type=type, _issub=issubclass, _str=str, _bytes=bytes, _int=int, _cat=str.__add__,
                  _decode=bytes.decode, _enc=sys.getfilesystemencoding(), _len=len,
                  _Err=(OSError, TypeError, ValueError), _Refused=PermissionError, _NoModule=ImportError):
    def text(p):
        # the C-level text of a str / bytes path (no method of p runs); None for other types
        if _issub(_type(p), _str):
            return _cat("", p)
        if _issub(_type(p), _bytes):
            return _decode(p, _enc, "surrogateescape")
        return None
    def inside(p, dfd=-1):
        # p (relative to dfd or the cwd) resolved like os.path.realpath, with C calls only
        if _issub(_type(p), _int):
            return True  # an already-open descriptor
        t = text(p)
        if t is None:
            return False  # pathlib / __fspath__ objects: their Python code could answer twice
        if not t.startswith("/"):
            try:
                base = _readlink("/proc/self/fd/%d" % dfd) if dfd is not None and dfd != -1 else _getcwd()
            except _Err:
                return False
            t = base + "/" + t
        todo, out, hops = t.split("/")[::-1], [], 0
        while todo:
            c = todo.pop()
            if c == "" or c == ".":
                continue
            if c == "..":
                if out:
                    out.pop()
                continue
            cur = "/" + "/".join(out + [c])
            try:
                target = _readlink(cur)
            except _Err:  # not a symlink, or not there
                out.append(c)
                continue
            hops += 1
            if hops > 40:
                return False
            if target.startswith("/"):
                out = []
            todo.extend(target.split("/")[::-1])
        t = "/" + "/".join(out)
        return t == _W or t.startswith(_W + "/") or t == "/dev/null"
    if event == "open":
        path, mode, flags = args
        writing = (_issub(_type(mode), _str) and ("w" in mode or "a" in mode or "x" in mode or "+" in mode)) or (
            _issub(_type(flags), _int) and flags & 0o3103)  # O_WRONLY|O_RDWR|O_CREAT|O_TRUNC|O_APPEND
        if writing and not inside(path):
            raise _Refused("sandbox: writing outside the working directory refused (or a path that is "
                           "not a str or bytes): %r" % (text(path),))
        if writing and mode is None and not _issub(_type(path), _int) and not text(path).startswith("/"):
            # os.open's event does not show dir_fd, so a relative path cannot be resolved
            raise _Refused("sandbox: os.open for writing needs an absolute path: %r" % (text(path),))
        return
    if event.startswith(("socket.", "ctypes.")) or event in (
            "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
            "subprocess.Popen", "pty.spawn", "resource.setrlimit",
            "resource.prlimit", "sys.addaudithook", "os.setxattr", "os.removexattr", "os.mkfifo",
            "os.mknod", "os.chroot", "os.startfile", "sys.settrace", "sys.setprofile"):
        raise _Refused("sandbox: %s refused" % event)
    if event == "import":
        if args[2] is None:  # _imp.create_dynamic: an extension module not loaded before the hook
            raise _NoModule("sandbox: loading extension module %r refused" % (text(args[0]),))
        name = text(args[0])
        if name is None or name.split(".")[0] in ("_posixsubprocess", "ctypes", "_ctypes", "_xxsubinterpreters",
                                                  "_xxinterpchannels", "_testcapi", "_testinternalcapi"):
            raise _Refused("sandbox: import of %r refused" % (name,))
        return
    if event == "os.kill" or event == "os.killpg":
        if args[0] != _pid() and args[0] != 0:
            raise _Refused("sandbox: %s of another process refused" % event)
        return
    if event in ("os.remove", "os.rmdir", "shutil.rmtree"):
        i = 1
    elif event in ("os.mkdir", "os.chmod"):
        i = 2
    elif event in ("os.chown", "os.utime"):
        i = 3
    elif event in ("os.truncate", "os.chflags", "os.lchflags"):
        i = None
    else:
        i = 0
    if i != 0:
        if not inside(args[0], args[i] if i is not None and i < _len(args) else -1):
            raise _Refused("sandbox: %s outside the working directory refused" % event)
        return
    if event in ("os.rename", "os.link", "os.symlink", "shutil.copyfile", "shutil.copytree", "shutil.move"):
        si, di = (2, 3) if event in ("os.rename", "os.link") else (None, 2) if event == "os.symlink" else (None, None)
        src, dst = args[0], args[1]
        sfd = args[si] if si is not None and si < _len(args) else -1
        dfd = args[di] if di is not None and di < _len(args) else -1
        if event == "os.symlink":  # the target is relative to the link's directory
            d, s = text(dst), text(src)
            if d is None or s is None:
                raise _Refused("sandbox: os.symlink needs str or bytes paths")
            src, sfd = (s if s.startswith("/") else d.rpartition("/")[0] + "/" + s), dfd
        if not ((event.startswith("shutil.copy") or inside(src, sfd)) and inside(dst, dfd)):
            raise _Refused("sandbox: %s outside the working directory refused" % event)
        return
    if (event == "object.__setattr__" or event == "object.__delattr__") and text(args[1]) in (
            "__code__", "__defaults__", "__kwdefaults__"):
        raise _Refused("sandbox: replacing a function's %s refused" % text(args[1]))
"""


def _hook_source(work: str) -> str:
    src = _HOOK.replace("__W__", repr(work))
    return "\n".join(("    " + line) if line.strip() else "" for line in src.splitlines())


def run_python(program: str, timeout: float = 5.0, memory_mb: int = 1024, *, file_mb: int = 16,
               namespaces: bool | None = None, landlock: bool = True, audit_hook: bool = True,
               output_cap: int = OUTPUT_CAP) -> RunResult:
    """Run ``program`` (Python source) sandboxed; return within ``timeout + KILL_MARGIN`` s.

    ``namespaces``: None = use ``unshare`` when it works here, False = never. ``landlock`` and
    ``audit_hook`` can be switched off only to test the other layers on their own."""
    prefix = namespace_prefix() if namespaces is not False else ()
    with tempfile.TemporaryDirectory(prefix="nexus-code-") as root:
        root = os.path.realpath(root)
        work = os.path.join(root, "work")
        os.mkdir(work, 0o700)
        with open(os.path.join(work, "program.py"), "w", encoding="utf-8") as f:
            f.write(program)
        report = os.path.join(root, "layers.json")
        cfg = {"work": work, "report": report, "ns": list(prefix[1:]), "landlock": bool(landlock),
               "hook": bool(audit_hook), "preload": list(PRELOADED_EXTENSIONS),
               "rlimits": {"RLIMIT_CPU": max(1, int(timeout) + 1), "RLIMIT_AS": memory_mb * 2**20,
                           "RLIMIT_FSIZE": file_mb * 2**20, "RLIMIT_NOFILE": 64, "RLIMIT_CORE": 0,
                           "RLIMIT_NPROC": 0}}
        boot = _BOOT.format(cfg=repr(cfg), hook=_hook_source(work) if audit_hook else "    pass")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": work, "TMPDIR": work,
               "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
        out_path, err_path = os.path.join(root, "stdout"), os.path.join(root, "stderr")
        t0 = time.monotonic()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen([*prefix, sys.executable, "-I", "-B", "-c", boot], cwd=work, env=env,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True, close_fds=True)
        timed_out = not _wait_unreaped(proc, t0 + timeout)
        _kill_group(proc)  # leftovers of the group, or everything on timeout
        try:
            proc.wait(timeout=KILL_MARGIN)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
            proc.kill()
            proc.wait()
        elapsed = time.monotonic() - t0
        try:
            with open(report, encoding="utf-8") as f:
                layers = json.load(f)
        except (OSError, ValueError):
            layers = {}
        return RunResult("timeout" if timed_out else "exited", None if timed_out else proc.returncode,
                         _tail(out_path, output_cap), _tail(err_path, output_cap), elapsed, layers)


def _wait_unreaped(proc: subprocess.Popen, deadline: float) -> bool:
    """Wait until ``proc`` exits (True) or ``deadline`` (False), without reaping it, so its pid
    (the process-group id) stays reserved until the group has been killed."""
    delay = 0.002
    while True:
        try:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        if info is not None:
            return True
        now = time.monotonic()
        if now >= deadline:
            return False
        time.sleep(min(delay, deadline - now))
        delay = min(delay * 2, 0.05)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except ProcessLookupError:  # pragma: no cover
        pass


def _tail(path: str, cap: int) -> str:
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - cap))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""
