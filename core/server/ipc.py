"""IPC plumbing shared by the server's processes: socket names, ZMQ sockets, child-process setup.

Three PUSH/PULL channels, as in SGLang, each an `ipc://` file in one private temp directory:

    tokenizer manager --scheduler_input--> scheduler --detokenizer--> detokenizer --tokenizer--> manager

The PULL end binds, the PUSH ends connect. Messages are pickled dataclasses (`send_pyobj`).
"""
from __future__ import annotations

import faulthandler
import gc
import logging
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass

import zmq

PARENT_CHECK_SECONDS = 0.5


@dataclass(frozen=True)
class PortArgs:
    """The ipc:// addresses of the three channels."""

    scheduler_input: str   # tokenizer manager -> scheduler
    detokenizer: str       # scheduler -> detokenizer
    tokenizer: str         # detokenizer -> tokenizer manager
    tmp_dir: str

    @classmethod
    def create(cls) -> PortArgs:
        d = tempfile.mkdtemp(prefix="jackfield-ipc-")
        return cls(f"ipc://{d}/scheduler", f"ipc://{d}/detokenizer", f"ipc://{d}/tokenizer", d)

    def cleanup(self) -> None:
        for name in ("scheduler", "detokenizer", "tokenizer"):
            try:
                os.unlink(os.path.join(self.tmp_dir, name))
            except OSError:
                pass
        try:
            os.rmdir(self.tmp_dir)
        except OSError:
            pass


def pull_socket(ctx: zmq.Context, address: str) -> zmq.Socket:
    """A bound PULL socket with no receive limit."""
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(address)
    return sock


def push_socket(ctx: zmq.Context, address: str) -> zmq.Socket:
    """A connected PUSH socket; messages queue (no limit) until the peer binds."""
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    return sock


def exit_child(ctx: zmq.Context, *socks: zmq.Socket) -> None:
    """A child's exit on SIGTERM: close the sockets, then their context (left to the garbage collector
    at shutdown, the context can be terminated under open sockets, which blocks the exit until the
    parent's SIGKILL), and freeze the heap so the interpreter's last collection skips the model's
    objects (seconds otherwise). multiprocessing's finalizers still run."""
    for sock in socks:
        sock.close(linger=0)
    ctx.term()
    gc.freeze()
    raise SystemExit(0)


def setup_child(name: str, log_level: str) -> None:
    """Common start of every child process.

    Ctrl-C reaches the whole process group; children ignore SIGINT and let the parent decide (it
    terminates them). SIGTERM exits through SystemExit, so multiprocessing's finalizers still run
    (no leaked semaphores). SIGUSR1 dumps every thread's stack to stderr, even while the process is
    stuck in native code. A daemon thread ends the child when its parent disappears, so a parent
    killed with SIGKILL leaves no orphan behind.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the watchdog's stack dump (watchdog.py)
    logging.basicConfig(level=log_level.upper(), format=f"%(levelname)s [{name}] %(name)s: %(message)s")
    parent = os.getppid()
    threading.Thread(target=_watch_parent, args=(parent,), name="parent-watch", daemon=True).start()


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(0)


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(PARENT_CHECK_SECONDS)
        if os.getppid() != parent:
            os._exit(0)
