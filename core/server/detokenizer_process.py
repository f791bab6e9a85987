"""The detokenizer subprocess: token ids in, text deltas out, one RequestText per request.

It learns each request's stop strings and text options from the `RegisterReq` the scheduler
process pushes ahead of the request's first output (see messages.py), fills `ReqOutput.text` with
the new text (stop strings held back while they may still match, trimmed once they do), and
forwards every other message (StatsOut, FlushCacheOut, ControlFailed) unchanged.
"""
from __future__ import annotations

import logging
import sys

import zmq

from jackfield.config import Settings
from jackfield.io_struct import BatchOutput
from jackfield.server.gc_freeze import freeze_startup_objects
from jackfield.server.ipc import PortArgs, exit_child, pull_socket, push_socket, setup_child
from jackfield.server.messages import RegisterReq, StartupError
from jackfield.tokenizer.request_text import RequestText

log = logging.getLogger(__name__)


class DetokenizerManager:
    """Per-request text state; `handle` returns the message to forward, or None."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.states: dict[str, RequestText] = {}

    def handle(self, msg):
        if isinstance(msg, RegisterReq):
            if self.tokenizer is not None:
                self.states[msg.rid] = RequestText(self.tokenizer, msg.sampling_params)
            return None
        if isinstance(msg, BatchOutput):
            for out in msg.outputs:
                out.text = self._feed(out)
                if out.finished is not None:
                    self.states.pop(out.rid, None)
        return msg

    def _feed(self, out) -> str:
        state = self.states.get(out.rid)
        if state is None:
            return ""
        try:
            return state.feed(out.new_token_ids, out.finished)
        except Exception:  # one request's bad ids must not stop the others' text
            log.exception("detokenizing request %s failed", out.rid)
            return ""


def run_detokenizer_process(settings: Settings, ports: PortArgs, conn) -> None:
    """Process entry point. Receives the tokenizer path over `conn`, answers "ready" or StartupError."""
    setup_child("detokenizer", settings.log_level)
    import transformers  # noqa: F401  (slow import, done while the scheduler loads the model)

    tokenizer_path = conn.recv()
    try:
        from jackfield.tokenizer.tokenizer import Tokenizer

        tokenizer = Tokenizer.load(tokenizer_path) if tokenizer_path else None
    except Exception as exc:
        conn.send(StartupError(f"cannot load the tokenizer: {type(exc).__name__}: {exc}"))
        sys.exit(1)
    ctx = zmq.Context()
    recv, send = pull_socket(ctx, ports.detokenizer), push_socket(ctx, ports.tokenizer)
    manager = DetokenizerManager(tokenizer)
    freeze_startup_objects("detokenizer")
    conn.send("ready")
    conn.close()
    try:
        while True:
            out = manager.handle(recv.recv_pyobj())
            if out is not None:
                send.send_pyobj(out)
    except SystemExit:  # SIGTERM
        exit_child(ctx, recv, send)
