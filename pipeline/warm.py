"""Warm starts: stage processes forked from a server that has already imported torch, gm and
the pipeline, so that each saves its interpreter start and imports (~1 s of CPU).

The command stays ``python -m pipeline.<stage> ...``, the same line in Snakefile and dvc.yaml.
When ``GM_WARM`` names the socket of a live server (the Snakefile starts one for a local run),
the process hands its arguments, working directory, environment and standard streams to the
server and waits; the server forks a child that runs the stage as the process would have, and
the process exits with the child's status.  Signals the process receives go to the child; a
process killed outright takes the child with it (the child watches it), and so does a killed
server.  No server, a refused connection, a source file changed since the server imported it,
a stage file other than the server's (another copy of the project), or an environment variable
read at import time (IMPORT_ENV) that differs from the server's: the process runs the stage
itself, as before.  Standard library only on the client side.

    python -m pipeline.warm --socket PATH --parent PID     # the server (the Snakefile's)
"""
from __future__ import annotations

import os
import signal
import socket
import struct
import sys

CHILD = "GM_WARM_CHILD"     # set in a forked child: it runs the stage itself
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)
# imported by the server; the report and tune stages import the rest (pandas, matplotlib,
# optuna) after the fork, keeping the server free of their threads (pyarrow's jemalloc)
PRELOADED = ("pipeline.train", "pipeline.evaluate", "pipeline.classifier", "pipeline.prepare",
             "pipeline.fetch")
# Variables that modules read when imported (gm/linalg.py, pipeline/tracking.py, torch and its
# OpenMP/MKL/oneDNN runtimes) or that the interpreter fixes at start: a job whose values differ
# from the server's starting environment runs cold, as a forked child would keep the server's.
# Not the *_NUM_THREADS that Snakemake sets per job: every stage sets torch's thread count
# itself (pipeline/common.py run_stage, from GM_TORCH_THREADS), which overrides them.
IMPORT_ENV = ("GM_ONEDNN", "GM_MLFLOW_RETRIES", "GM_MLFLOW_FLUSH_SECONDS", "GM_MLFLOW_DEFER_SECONDS",
              "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT", "PYTHONHASHSEED",
              "PYTHONPATH")
IMPORT_ENV_PREFIXES = ("OMP_", "MKL_", "KMP_", "DNNL_", "ONEDNN_", "TORCH_", "PYTORCH_")


def import_env(env) -> dict[str, str]:
    """The part of ``env`` that imported modules have already read (IMPORT_ENV)."""
    return {k: v for k, v in env.items() if k in IMPORT_ENV
            or (k.startswith(IMPORT_ENV_PREFIXES) and not k.endswith("_NUM_THREADS"))}


def delegate(module: str) -> None:
    """Run ``module`` in a child of the warm server and exit with its status; return at once
    (the caller runs the stage) when there is no server to use."""
    path = os.environ.get("GM_WARM")
    if not path or path == "0" or os.environ.get(CHILD):
        return
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        request = repr({"module": module, "argv": sys.argv[1:], "cwd": os.getcwd(),
                        "env": dict(os.environ), "pid": os.getpid(),
                        "file": os.path.realpath(sys.modules["__main__"].__file__),
                        "ignored": [int(sig) for sig in FORWARDED
                                    if signal.getsignal(sig) == signal.SIG_IGN]}).encode()
        socket.send_fds(sock, [struct.pack("!Q", len(request)) + request], [0, 1, 2])
        reply = _line(sock)
    except OSError:
        sock.close()
        return
    if not reply.startswith("pid "):          # "cold": see serve()
        sock.close()
        return
    child = int(reply.split()[1])
    for sig in FORWARDED:    # a signal this process ignores (nohup, `cmd &`), its child does
        if signal.getsignal(sig) != signal.SIG_IGN:
            signal.signal(sig, lambda s, _f: os.kill(child, s))
    status = _line(sock)
    if status.startswith("exit "):
        os._exit(int(status.split()[1]))
    if status.startswith("signal "):
        sig = int(status.split()[1])
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    print(f"error: the warm-start server ended while running {module} "
          f"(rerun, or set GM_WARM=0 to start stages cold)", file=sys.stderr)
    os._exit(1)


def _line(sock: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(64)
        if not chunk:
            return ""
        data += chunk
    return data.decode().strip()


# --- the server ------------------------------------------------------------------------------

def start(log: str = "logs/warm.log") -> str:
    """Start a server for this process's jobs (it exits when this process does); the socket
    path for ``GM_WARM``.  Jobs that start before it is ready run cold."""
    import subprocess
    import tempfile
    path = os.path.join(tempfile.mkdtemp(prefix="gm-warm-"), "socket")
    os.makedirs(os.path.dirname(log) or ".", exist_ok=True)
    with open(log, "w") as err:
        subprocess.Popen([sys.executable, "-m", "pipeline.warm", "--socket", path,
                          "--parent", str(os.getpid())], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    return path


def serve(path: str, parent: int) -> int:
    """Import the stages, then fork one child per request until ``parent`` (Snakemake) exits
    or a source file changes; children still running are waited for.  A request for a stage
    file other than the server's, or with other import-time variables, is answered "cold".
    The socket is closed and removed as soon as serving stops, so a job that comes while
    children still run starts cold at once (a queued connection is reset) instead of waiting."""
    import ast
    import gc
    import importlib
    import resource
    import select
    import threading
    env = import_env(os.environ)        # before the imports (pipeline/tracking.py sets some)
    for module in PRELOADED:
        importlib.import_module(module)
    if threading.active_count() > 1:   # a Python thread would not survive fork() (torch's own
        print("warm-start server: imports started threads; not serving", file=sys.stderr)
        return 1                       # native thread has fork handlers, as DataLoader relies on)
    sources = _sources()
    gc.freeze()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    watch = os.pidfd_open(parent)
    running: dict[int, socket.socket] = {}
    serving, counts = True, {"forked": 0, "cold": 0}
    while serving or running:
        if not serving and listener is not None:
            listener = _stop_listening(listener, path)
        ready, _, _ = select.select([listener, watch] if serving else [], [], [], 0.02)
        _reap(running)
        if watch in ready:
            serving = False
        if listener in ready:
            conn, _ = listener.accept()
            fds, request = _receive(conn, ast)
            why = _cold_reason(request, env)
            if why is None and _sources() != sources:
                why, serving = "source files changed: jobs run cold from now on", False
            if why is not None:
                print(f"{request['module']} {' '.join(request['argv'])} runs cold: {why}",
                      file=sys.stderr, flush=True)
                for fd in fds:
                    os.close(fd)
                conn.sendall(b"cold\n")
                conn.close()
                counts["cold"] += 1
                continue
            _fork(conn, fds, request, listener, watch, running)
            counts["forked"] += 1
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"served {counts['forked']} jobs warm, {counts['cold']} cold; the warm jobs' CPU: "
          f"{used.ru_utime:.1f} s user, {used.ru_stime:.1f} s system", file=sys.stderr,
          flush=True)
    if listener is not None:
        _stop_listening(listener, path)
    return 0


def _stop_listening(listener: socket.socket, path: str) -> None:
    """Close the listening socket and remove its file (and start()'s directory); None."""
    listener.close()
    os.unlink(path)
    if os.path.basename(os.path.dirname(path)).startswith("gm-warm-"):
        os.rmdir(os.path.dirname(path))
    return None


def _sources() -> dict[str, float]:
    """mtime of every loaded module file of the gm and pipeline packages."""
    out = {}
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in ("gm", "pipeline") and getattr(module, "__file__", None):
            try:
                out[module.__file__] = os.stat(module.__file__).st_mtime_ns
            except OSError:
                out[module.__file__] = -1
    return out


def _receive(conn, ast) -> tuple[list[int], dict]:
    """A client's standard stream fds and its request (pipeline/warm.py delegate)."""
    head, fds, _, _ = socket.recv_fds(conn, 8, 3)
    size = struct.unpack("!Q", head)[0]
    body = b""
    while len(body) < size:
        body += conn.recv(size - len(body))
    return fds, ast.literal_eval(body.decode())


def _cold_reason(request: dict, env: dict) -> str | None:
    """Why the server must not run ``request`` (None: it may)."""
    import importlib.util
    spec = importlib.util.find_spec(request["module"])
    if spec is None or os.path.realpath(spec.origin) != request["file"]:
        return f"its stage file {request['file']} is not the server's"
    theirs = import_env(request["env"])
    if theirs != env:
        keys = sorted(k for k in theirs.keys() | env.keys() if theirs.get(k) != env.get(k))
        return f"{', '.join(keys)} differ from the server's (read at import)"
    return None


def _fork(conn, fds, request, listener, watch, running) -> None:
    """Fork the child for ``request`` with the forwarded signals blocked: one that comes while
    the child sets itself up waits for its stage's dispositions instead of being lost (the
    server's SIG_IGN) or ending the set-up (the server's KeyboardInterrupt)."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    pid = os.fork()
    if pid == 0:
        try:
            listener.close()
            os.close(watch)
            conn.close()
            _child(request, fds, mask)
        finally:
            os._exit(70)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    for fd in fds:
        os.close(fd)
    conn.sendall(f"pid {pid}\n".encode())
    running[pid] = conn
    print(f"forked {request['module']} {' '.join(request['argv'])} as pid {pid}", file=sys.stderr,
          flush=True)


def _reap(running: dict) -> None:
    while running:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        conn = running.pop(pid, None)
        if conn is None:
            continue
        reply = (f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
                 else f"exit {os.WEXITSTATUS(status)}")
        try:
            conn.sendall(reply.encode() + b"\n")
        except OSError:
            pass
        conn.close()


def _child(request: dict, fds: list[int], mask: set) -> None:
    """Become the stage process: its streams, directory, environment and arguments; die with
    the server (PR_SET_PDEATHSIG) or the waiting process (a watcher thread on its pidfd).
    The forwarded signals stay blocked (``mask``: the server's mask before) until the stage
    runs, and SIGINT is ignored once it has ended: a signal ends the child as it would end a
    fresh process at that point, never in this function's own code."""
    import atexit
    import ctypes
    import random
    import runpy
    import threading
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    for sig in FORWARDED:   # the dispositions a fresh `python` started by the client gets
        signal.signal(sig, signal.SIG_IGN if int(sig) in request["ignored"]
                      else signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"], **{CHILD: "1"})
    waiter = os.pidfd_open(request["pid"])

    def watch():
        import select
        select.select([waiter], [], [])
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=watch, daemon=True).start()
    random.seed()                       # a fresh process's entropy, not the server's state
    sys.stdout.reconfigure(line_buffering=os.isatty(1))   # as a fresh process would set it
    # as in a fresh `python -m`: the stage runs as __main__ only, not also under its name
    sys.modules.pop(request["module"], None)
    package, _, name = request["module"].rpartition(".")
    if package in sys.modules:
        vars(sys.modules[package]).pop(name, None)
    sys.argv = [request["module"], *request["argv"]]
    code = 0
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)   # a signal that came meanwhile: now
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if isinstance(exit_.code, int) or exit_.code is None:
            code = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
            code = 1
    except BaseException as err:   # noqa: BLE001 - as an uncaught exception ends a process
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        import traceback
        traceback.print_exc()
        code = 1
        if isinstance(err, KeyboardInterrupt):   # python's own exit: by SIGINT
            atexit._run_exitfuncs()
            sys.stderr.flush()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description="warm-start server for stage processes")
    ap.add_argument("--socket", required=True)
    ap.add_argument("--parent", type=int, required=True)
    args = ap.parse_args(argv)
    return serve(args.socket, args.parent)


if __name__ == "__main__":
    sys.exit(main())
