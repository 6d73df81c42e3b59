"""The code-execution sandbox (``eval/tasks/sandbox.py``): one test per escape.

Each escape is tried against the full sandbox and, where this machine has the layer, against
single layers on their own (network namespace, Landlock, audit hook), so a layer that stops
working is noticed even while another still covers for it."""

from __future__ import annotations

import os
import socket
import sys
import time

import pytest

from nexus_optim.eval.tasks import code, sandbox

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox targets Linux")

MARGIN = sandbox.KILL_MARGIN + 1.0  # kill + reap, plus interpreter start-up on a loaded machine


@pytest.fixture(scope="module")
def layers():
    r = sandbox.run_python("pass", timeout=10.0)
    assert r.status == "exited" and r.returncode == 0, r.stderr
    return r.layers


FULL = {}
HOOK_ONLY = {"namespaces": False, "landlock": False}
LANDLOCK_ONLY = {"namespaces": False, "audit_hook": False}
NAMESPACES_ONLY = {"landlock": False, "audit_hook": False}


def _config(name, layers):
    cfg = {"full": FULL, "hook": HOOK_ONLY, "landlock": LANDLOCK_ONLY, "namespaces": NAMESPACES_ONLY}[name]
    if name == "landlock" and not layers.get("landlock"):
        pytest.skip("Landlock is not available on this kernel")
    if name == "namespaces" and not sandbox.namespace_prefix():
        pytest.skip("unshare (user/net/pid namespaces) does not work here")
    return cfg


def test_full_sandbox_reports_its_layers(layers):
    assert layers["audit_hook"] is True
    assert layers["rlimits"]["RLIMIT_NPROC"] == 0 and layers["rlimits"]["RLIMIT_CORE"] == 0
    assert {"RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_NOFILE"} <= set(layers["rlimits"])
    if sandbox.namespace_prefix():
        assert "--net" in layers["namespaces"] and "--pid" in layers["namespaces"] and layers["pid"] == 1


# ------------------------------------------------------------------------------- (a) network
@pytest.mark.parametrize("name", ["full", "hook", "landlock", "namespaces"])
def test_cannot_connect_to_a_local_listener(name, layers):
    cfg = _config(name, layers)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as lis:
        lis.bind(("127.0.0.1", 0))
        lis.listen(8)
        port = lis.getsockname()[1]
        prog = ("import socket\n"
                f"s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                "s.sendall(b'escaped')\n")
        r = sandbox.run_python(prog, timeout=3.0, **cfg)
        assert r.status == "exited" and r.returncode != 0, r.stderr
        lis.settimeout(0.2)
        with pytest.raises(TimeoutError):
            lis.accept()


def test_no_network_interface_in_the_namespace(layers):
    _config("namespaces", layers)
    prog = ("import socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "try:\n    s.connect(('127.0.0.1', 9))\nexcept OSError as e:\n    print('unreachable', e.errno)\n")
    r = sandbox.run_python(prog, timeout=3.0, **NAMESPACES_ONLY)
    assert r.returncode == 0 and r.stdout.startswith("unreachable"), r.stderr


# ------------------------------------------------------------------------------- (b) files
@pytest.mark.parametrize("name", ["full", "hook", "landlock"])
@pytest.mark.parametrize("how", ["open", "os.open", "rename", "symlink", "dir_fd", "mkdir"])
def test_cannot_write_outside_the_private_dir(name, how, layers, tmp_path):
    cfg = _config(name, layers)
    target = tmp_path / "escape.txt"
    prog = {
        "open": f"open({str(target)!r}, 'w').write('x')\n",
        "os.open": f"import os\nos.close(os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT))\n",
        "rename": f"import os\nopen('mine', 'w').write('x')\nos.rename('mine', {str(target)!r})\n",
        "symlink": f"import os\nos.symlink({str(target)!r}, 'link')\nopen('link', 'w').write('x')\n",
        "dir_fd": f"import os\nd = os.open({str(tmp_path)!r}, os.O_RDONLY)\n"
                  "os.close(os.open('escape.txt', os.O_WRONLY | os.O_CREAT, dir_fd=d))\n",
        "mkdir": f"import os\nos.mkdir({str(tmp_path / 'escape.txt')!r})\n",
    }[how]
    r = sandbox.run_python(prog, timeout=3.0, **cfg)
    assert r.status == "exited" and r.returncode != 0, r.stderr
    assert "PermissionError" in r.stderr
    assert not target.exists() and not os.path.lexists(target)
    assert list(tmp_path.iterdir()) == []


def test_private_dir_is_cwd_home_and_tmpdir_and_is_writable():
    prog = ("import os, tempfile\n"
            "w = os.getcwd()\n"
            "assert os.environ['HOME'] == w and os.environ['TMPDIR'] == w, os.environ\n"
            "assert tempfile.gettempdir() == w\n"
            "open('a.txt', 'w').write('hi')\n"
            "os.mkdir('d'); os.rename('a.txt', 'd/b.txt'); os.remove('d/b.txt'); os.rmdir('d')\n"
            "fd, p = tempfile.mkstemp(); os.write(fd, b'x'); os.close(fd)\n"
            "assert os.path.dirname(p) == w\n"
            "open('/dev/null', 'w').write('ok')\n"
            "print(w)\n")
    r = sandbox.run_python(prog, timeout=3.0)
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(r.stdout.strip())  # removed after the run


# ------------------------------------------------------------------------------- (c) setsid + double fork
_ESCAPE = """import os, sys, time
marker = {marker!r}
pid = os.fork()
if pid == 0:
    os.setsid()
    if os.fork() == 0:
        open(marker + '.started', 'w').write(str(os.getpid()))
        time.sleep({later})
        open(marker, 'w').write('survived')
        os._exit(0)
    os._exit(0)
time.sleep(60)
"""


@pytest.mark.parametrize("name", ["full", "hook", "namespaces"])
def test_setsid_double_fork_cannot_outlive_the_timeout(name, layers, tmp_path):
    cfg = _config(name, layers)
    if name == "namespaces":
        cfg = {**cfg, "landlock": False}  # let a survivor write its marker into tmp_path
    marker = str(tmp_path / "marker")
    timeout, later = 0.5, 1.0
    t0 = time.monotonic()
    r = sandbox.run_python(_ESCAPE.format(marker=marker, later=later), timeout=timeout, **cfg)
    took = time.monotonic() - t0
    assert took < timeout + MARGIN
    if name == "namespaces":  # the fork worked (root ignores RLIMIT_NPROC) or was refused by it
        assert r.status == "timeout" or r.returncode != 0
    else:  # the audit hook refuses the fork outright
        assert r.status == "exited" and "os.fork refused" in r.stderr
    time.sleep(max(0.0, later + 0.5 - took))
    assert not os.path.exists(marker), "a grandchild survived the sandbox"


def test_evaluator_returns_on_time_even_if_a_survivor_exists(tmp_path):
    """With every layer off (not a supported configuration) a setsid'd grandchild survives, but
    the evaluator still returns on time: output goes to files, so it never waits on a pipe."""
    marker = str(tmp_path / "marker")
    t0 = time.monotonic()
    try:
        r = sandbox.run_python(_ESCAPE.format(marker=marker, later=30), timeout=0.5, namespaces=False,
                               landlock=False, audit_hook=False)
        assert time.monotonic() - t0 < 0.5 + MARGIN
        assert r.status == "timeout" or r.returncode != 0  # non-root: RLIMIT_NPROC refuses the fork
    finally:
        deadline = time.monotonic() + 2
        while not os.path.exists(marker + ".started") and time.monotonic() < deadline:
            time.sleep(0.02)
        if os.path.exists(marker + ".started"):
            try:
                os.kill(int(open(marker + ".started").read()), 9)
            except (ProcessLookupError, ValueError):
                pass


# ------------------------------------------------------------------------------- (d) timeout
def test_long_sleep_hits_the_timeout():
    t0 = time.monotonic()
    r = code.check_program("import time\ntime.sleep(60)\n", timeout=0.5)
    assert r.status == "timeout" and not r.passed and r.returncode is None
    assert time.monotonic() - t0 < 0.5 + MARGIN


def test_busy_loop_hits_the_timeout():
    t0 = time.monotonic()
    r = code.check_program("while True:\n    pass\n", timeout=0.5)
    assert r.status == "timeout" and not r.passed
    assert time.monotonic() - t0 < 0.5 + MARGIN


# ------------------------------------------------------------------------------- (e) the task still works
def test_correct_candidate_passes_and_wrong_one_fails():
    add = next(p for p in code.PROBLEMS if p.name == "add")
    ok, wrong = code.check_completions([add, add], [" a + b\n", " a - b\n"], timeout=3.0)
    assert ok.passed and ok.status == "passed" and ok.returncode == 0, ok.stderr
    assert not wrong.passed and wrong.status == "failed" and "AssertionError" in wrong.stderr


def test_ordinary_stdlib_use_is_allowed():
    prog = ("import collections, dataclasses, functools, itertools, json, math, re, typing\n"
            "P = collections.namedtuple('P', 'x y')\n"
            "@dataclasses.dataclass\nclass C:\n    a: int = 1\n"
            "assert P(1, 2).y == 2 and C().a == 1 and math.isqrt(17) == 4\n"
            "assert json.loads(json.dumps({'a': [1]})) == {'a': [1]}\n"
            "print('ok')\n")
    r = sandbox.run_python(prog, timeout=3.0)
    assert r.returncode == 0 and r.stdout == "ok\n", r.stderr


# ------------------------------------------------------------------------------- new processes
@pytest.mark.parametrize("prog", [
    "import os\nwhile True:\n    os.fork()\n",                                   # fork bomb
    "import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'pass'])\n",
    "import os\nos.system('true')\n",
    "import os\nos.posix_spawn('/bin/true', ['true'], {})\n",
    "import os\nos.execv('/bin/true', ['true'])\n",
    "import multiprocessing as m\np = m.Process(target=print)\np.start()\np.join()\n",
    "import _posixsubprocess\n",
    "import ctypes\nctypes.CDLL(None).fork()\n",
], ids=["fork-bomb", "subprocess", "system", "posix_spawn", "exec", "multiprocessing",
        "_posixsubprocess", "ctypes"])
def test_no_new_processes(prog):
    t0 = time.monotonic()
    r = sandbox.run_python(prog, timeout=2.0)
    assert r.status == "exited" and r.returncode != 0 and "PermissionError" in r.stderr, r.stderr
    assert time.monotonic() - t0 < 2.0


def test_limits_cannot_be_raised_and_signals_stay_inside():
    prog = ("import os, resource\n"
            "try:\n    resource.setrlimit(resource.RLIMIT_CPU, (100, 100))\n"
            "except PermissionError:\n    print('rlimit refused')\n"
            "try:\n    os.kill(os.getpid() + 12345, 0)\n"
            "except PermissionError:\n    print('kill refused')\n")
    r = sandbox.run_python(prog, timeout=3.0)
    assert r.returncode == 0 and r.stdout == "rlimit refused\nkill refused\n", r.stderr


# ------------------------------------------------------------------------------- output
def test_output_goes_to_files_and_is_capped():
    r = sandbox.run_python("import sys\nsys.stdout.write('x' * 1_000_000 + 'END')\n"
                           "sys.stderr.write('e' * 1_000_000 + 'ERR')\n", timeout=3.0)
    assert r.returncode == 0, r.stderr[-300:]
    assert len(r.stdout) == sandbox.OUTPUT_CAP and r.stdout.endswith("END")
    assert len(r.stderr) == sandbox.OUTPUT_CAP and r.stderr.endswith("ERR")


def test_file_size_limit_kills_a_huge_write():
    r = sandbox.run_python("open('big', 'wb').write(b'x' * (20 * 2**20))\n", timeout=3.0, file_mb=4)
    assert r.status == "exited" and r.returncode != 0


# ------------------------------------------------------------------------------- the hook itself
# (issue 21) A program that reaches the audit hook (gc finds every function) must not be able to
# change what it decides: its defaults cannot be replaced, tracing (which can rewrite a running
# frame's locals) is refused, arguments are read at the C level (a str subclass cannot answer
# one name to the hook and another to the import system), extension modules not preloaded by
# the bootstrap cannot be loaded, and no Python helper the hook calls can be rebound. Each
# attack, if it worked, would start /bin/sh (as root RLIMIT_NPROC does not stop it) and create
# MARKER; it is tried with the hook as the only layer, and with the full sandbox.
_SPAWN = '''
import os
def spawn(marker):
    import _posixsubprocess
    r, w = os.pipe()
    pid = _posixsubprocess.fork_exec(
        [b"/bin/sh", b"-c", b"touch " + marker.encode()], [b"/bin/sh"], True, (w,), None, None,
        -1, -1, -1, -1, -1, -1, r, w, True, False, -1, None, None, None, -1, None, False)
    os.waitpid(pid, 0)
    print("spawned")
'''
_HOOK_ATTACKS = {
    "defaults": '''
import gc
hook = [o for o in gc.get_objects() if getattr(o, "__name__", None) == "_sandbox_hook"][0]
print("found the hook")
hook.__defaults__ = tuple((lambda x: "harmless") if v is str else v for v in hook.__defaults__)
spawn(MARKER)
''',
    "kwdefaults-and-code": '''
import gc
hook = [o for o in gc.get_objects() if getattr(o, "__name__", None) == "_sandbox_hook"][0]
try:
    hook.__kwdefaults__ = {}
except PermissionError:
    print("kwdefaults refused")
hook.__code__ = (lambda event, args: None).__code__
spawn(MARKER)
''',
    "delete-defaults": '''
import gc
hook = [o for o in gc.get_objects() if getattr(o, "__name__", None) == "_sandbox_hook"][0]
try:
    hook.__defaults__ = None  # = deleting them: every later event would fail (closed, but broken)
except PermissionError:
    print("set to None refused")
del hook.__defaults__
spawn(MARKER)
''',
    "str-subclass": '''
class S(str):
    def __str__(self):
        return "harmless"
    def split(self, *a):
        return ["harmless"]
import sys
sys.modules["_posixsubprocess"] = __import__(S("_posixsubprocess"))
spawn(MARKER)
''',
    "trace": '''
import gc, sys
hook = [o for o in gc.get_objects() if getattr(o, "__name__", None) == "_sandbox_hook"][0]
hook.__cantrace__ = True
def tracer(frame, event, arg):
    if frame.f_code is hook.__code__ and event == "call":
        frame.f_locals["event"] = "harmless"
sys.settrace(tracer)
spawn(MARKER)
''',
    "extension-loader": '''
import importlib.machinery, importlib.util, os, sys
for d in sys.path:
    for f in (os.listdir(d) if os.path.isdir(d) else []):
        if f.startswith("_posixsubprocess."):
            spec = importlib.util.spec_from_file_location("_posixsubprocess", os.path.join(d, f))
            sys.modules["_posixsubprocess"] = importlib.util.module_from_spec(spec)
spawn(MARKER)
''',
    "rebound-builtins-and-helpers": '''
import builtins, os, posixpath
builtins.len = lambda x: 0
builtins.isinstance = lambda *a: False
posixpath._joinrealpath = lambda *a, **k: (os.getcwd() + "/inside", True)
posixpath.realpath = lambda *a, **k: os.getcwd() + "/inside"
os.fsdecode = lambda p: os.getcwd() + "/inside"
open(MARKER, "w").write("escaped")
''',
}


@pytest.mark.parametrize("name", ["hook", "full"])
@pytest.mark.parametrize("attack", list(_HOOK_ATTACKS))
def test_the_hook_cannot_be_switched_off_from_inside(attack, name, layers, tmp_path):
    cfg = _config(name, layers)
    marker = str(tmp_path / "MARKER")
    prog = _SPAWN + f"MARKER = {marker!r}\n" + _HOOK_ATTACKS[attack]
    r = sandbox.run_python(prog, timeout=5.0, **cfg)
    assert r.status == "exited" and r.returncode != 0, (r.stdout, r.stderr)
    assert "spawned" not in r.stdout and not os.path.exists(marker), r.stdout
    assert "PermissionError: sandbox:" in r.stderr or "ImportError: sandbox:" in r.stderr, r.stderr[-800:]
    if name == "hook":  # the hook itself refused the step that would have switched it off
        expected = {"defaults": "replacing a function's __defaults__ refused",
                    "kwdefaults-and-code": "replacing a function's __code__ refused",
                    "delete-defaults": "replacing a function's __defaults__ refused",
                    "str-subclass": "import of '_posixsubprocess' refused",
                    "trace": "sys.settrace refused",
                    "extension-loader": "loading extension module '_posixsubprocess' refused",
                    "rebound-builtins-and-helpers": "writing outside the working directory refused"}[attack]
        assert expected in r.stderr, r.stderr[-800:]
        if attack == "kwdefaults-and-code":
            assert "kwdefaults refused" in r.stdout
        if attack == "delete-defaults":
            assert "set to None refused" in r.stdout


def test_preloaded_extension_modules_import_and_others_fall_back():
    prog = ("import hashlib, json, heapq, decimal, random, math, datetime, struct, bisect, statistics\n"
            "print(hashlib.sha256(b'x').hexdigest()[:8], json.dumps([1]), math.isqrt(17))\n"
            "try:\n    import _lsprof\nexcept ImportError as e:\n    print('refused:', e)\n")
    r = sandbox.run_python(prog, timeout=5.0)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["2d711642 [1] 4",
                                     "refused: sandbox: loading extension module '_lsprof' refused"]


@pytest.mark.parametrize("name", ["hook", "full"])
def test_a_path_that_answers_twice_cannot_escape(name, layers, tmp_path):
    """An __fspath__ object that names a path outside first (the system call's conversion) and
    the private dir afterwards: the hook sees the converted text, so the write is refused, while
    pathlib paths inside work as usual."""
    cfg = _config(name, layers)
    target = str(tmp_path / "escape.txt")
    prog = ("import os, pathlib\n"
            "pathlib.Path('a.txt').write_text('x')\n"
            "pathlib.Path('a.txt').unlink()\n"
            "class Twice:\n"
            "    n = 0\n"
            "    def __fspath__(self):\n"
            "        Twice.n += 1\n"
            f"        return {target!r} if Twice.n == 1 else os.getcwd() + '/inside.txt'\n"
            "print('inside ok')\n"
            "open(Twice(), 'w').write('escaped')\n")
    r = sandbox.run_python(prog, timeout=5.0, **cfg)
    assert r.stdout == "inside ok\n" and r.returncode != 0 and "PermissionError" in r.stderr, r.stderr
    assert not os.path.exists(target)
