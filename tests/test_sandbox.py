"""The sandbox against hostile programs: each is contained, reported as a failure, and the harness carries on.

Every test runs real programs in real sandboxes. The machine's best backend (bubblewrap where installed) takes
the whole set; the fallbacks (`unshare`, `plain`), forced through R1LAB_SANDBOX, take the attacks they claim to
stop. Where a fallback cannot stop an attack (no network namespace without bwrap or unshare), the test says so
and skips.
"""

import os
import shutil
import signal
import socket
import time
import uuid
from pathlib import Path

import pytest

from r1lab.eval import sandbox
from r1lab.eval.sandbox import Isolation, Limits, run_python

FAST = Limits(timeout=1.0)


def backend(name: str) -> Isolation:
    """The sandbox that R1LAB_SANDBOX=name would give on this machine (skips the test when it cannot run)."""
    old = os.environ.get("R1LAB_SANDBOX")
    os.environ["R1LAB_SANDBOX"] = name
    try:
        return sandbox._probe_all()
    except sandbox.SandboxError as e:
        pytest.skip(f"the {name} backend does not work here: {e}")
    finally:
        if old is None:
            del os.environ["R1LAB_SANDBOX"]
        else:
            os.environ["R1LAB_SANDBOX"] = old


@pytest.fixture(scope="module", params=["best", "unshare", "plain"])
def iso(request):
    if request.param == "best":
        return sandbox.isolation()
    return backend(request.param)


def leftover_processes() -> list[int]:
    """Live processes started by any sandbox: the bootstrap's JSON argument names `strict_exit`."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes()
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        if b'"strict_exit"' in cmdline and stat[stat.rindex(")") + 2] != "Z":
            found.append(int(entry.name))
    return found


def assert_none_left() -> None:
    deadline = time.monotonic() + 5
    while leftover_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert leftover_processes() == []


def test_best_backend_is_bubblewrap_where_installed():
    if not shutil.which("bwrap"):
        pytest.skip("bubblewrap is not installed")
    chosen = sandbox.isolation()
    assert chosen.backend == "bwrap" and chosen.network_isolated and chosen.filesystem_read_only
    if os.geteuid() == 0:
        assert chosen.own_uid


def test_ordinary_program_runs_in_a_fresh_directory(iso):
    first = run_python("import os\nprint(sorted(os.listdir('.')))\nopen('left.txt', 'w').write('x')", using=iso)
    second = run_python("import os\nprint(sorted(os.listdir('.')))", using=iso)
    assert first.passed and first.stdout == "['main.py']\n"
    assert second.passed and second.stdout == "['main.py']\n"


def test_exit_status_and_exceptions_are_failures(iso):
    assert run_python("raise ValueError('boom')", using=iso).summary == "failed: ValueError: boom"
    assert run_python("import sys; sys.exit(3)", using=iso).returncode == 3
    early = run_python("import sys; sys.exit(0)\nraise AssertionError", using=iso, strict_exit=True)
    assert not early.passed and "sys.exit(0)" in early.stderr


def test_infinite_loop_is_stopped_at_the_timeout(iso):
    out = run_python("while True:\n    pass", FAST, using=iso)
    assert out.status == "timeout" and out.summary == "timed out"
    assert out.seconds < FAST.timeout + 1.5
    assert_none_left()


def test_sleeping_program_is_killed_by_the_wall_clock():
    out = run_python("import time\ntime.sleep(600)", FAST)
    assert out.status == "timeout" and out.seconds < FAST.timeout + 1.5


def test_fork_bomb_is_contained(iso):
    bomb = "import os, time\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        time.sleep(0.01)\n"
    out = run_python(bomb, FAST, using=iso)
    assert out.status == "timeout"
    assert_none_left()
    assert run_python("print('still here')", using=iso).stdout == "still here\n"


def test_memory_hog_fails(iso):
    small = Limits(memory_mb=256)
    at_once = run_python("x = bytearray(8 * 1024**3)", small, using=iso)
    growing = run_python("chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024**2))", small, using=iso)
    assert at_once.summary == "failed: MemoryError" and growing.summary == "failed: MemoryError"


def test_runaway_output_is_capped(iso):
    out = run_python("while True:\n    print('x' * 1000)", FAST, using=iso)
    assert not out.passed and len(out.stdout) == FAST.output_bytes


def test_writing_outside_the_sandbox_fails(iso, tmp_path):
    if iso.backend == "plain" and not iso.own_uid:
        pytest.skip("without bubblewrap or a uid of its own a program may write wherever the harness may")
    targets = [tmp_path / "escaped.txt", Path(__file__).with_name(f"escaped-{uuid.uuid4().hex}.txt")]
    program = ("import sys\nwritten = []\n"
               f"for path in {[str(t) for t in targets]!r}:\n"
               "    try:\n        open(path, 'w').write('pwned')\n        written.append(path)\n"
               "    except OSError as e:\n        print(e, file=sys.stderr)\n"
               "if not written:\n    raise SystemExit('nothing written')\n")
    out = run_python(program, using=iso)
    assert not out.passed
    assert not any(t.exists() for t in targets)


def test_network_is_unreachable(iso):
    if not iso.network_isolated:
        pytest.skip(f"the {iso.backend} backend has no network namespace")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    out = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'hi')",
                     using=iso)
    listener.setblocking(False)  # a connection that got through would be waiting in the backlog by now
    with pytest.raises(BlockingIOError):
        listener.accept()
    listener.close()
    assert not out.passed and ("refused" in out.stderr or "unreachable" in out.stderr)


def test_killing_the_parent_and_the_harness_fails(iso):
    if iso.backend == "plain" and not iso.own_uid:
        pytest.skip("without a PID namespace or a uid of its own a program may signal the harness")
    harness = os.getpid()
    program = ("import os, signal\n"
               f"for pid in (os.getppid(), {harness}):\n"
               "    os.kill(pid, signal.SIGKILL)\n"
               f"os.killpg(os.getpgid({harness}), signal.SIGKILL)\n")
    out = run_python(program, using=iso)
    assert not out.passed
    os.kill(harness, 0)  # we are alive, obviously; and so is the next sandbox
    assert run_python("print(1)", using=iso).passed


def test_a_process_that_leaves_the_group_is_still_killed(iso):
    if iso.backend == "plain" and not iso.own_uid:
        pytest.skip("without a PID namespace or a uid of its own, setsid escapes the process group")
    program = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(600)\n"
    out = run_python(program, FAST, using=iso)
    assert out.passed  # the parent ran to its end; the child must not outlive the sandbox
    assert_none_left()


def test_limits_are_validated():
    with pytest.raises(ValueError, match="timeout"):
        Limits(timeout=0)
    with pytest.raises(ValueError, match="memory_mb"):
        Limits(memory_mb=0)


def test_unknown_forced_backend_is_an_error(monkeypatch):
    monkeypatch.setenv("R1LAB_SANDBOX", "docker")
    with pytest.raises(sandbox.SandboxError, match="docker"):
        sandbox._probe_all()


def test_signal_numbers_are_reported_for_crashes(iso):
    out = run_python(f"import os, signal\nos.kill(os.getpid(), signal.{signal.SIGSEGV.name})", using=iso)
    assert out.status == "failed" and out.returncode != 0
