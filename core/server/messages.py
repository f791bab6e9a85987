"""Messages the server's processes exchange on top of jackfield.io_struct.

How the detokenizer learns each request's sampling parameters: the scheduler process, on taking a
TokenizedGenerateReq, first pushes a `RegisterReq(rid, sampling_params)` down its one socket to the
detokenizer, then hands the request to the scheduler. Every output of that request travels the same
PUSH socket later, so ZMQ's per-socket ordering guarantees the detokenizer sees the registration
before the first tokens, and no second channel from the tokenizer manager is needed.
"""
from __future__ import annotations

from dataclasses import dataclass

from jackfield.engine_loop import EngineInfo
from jackfield.sampling.params import SamplingParams


@dataclass
class RegisterReq:
    """Scheduler process -> detokenizer: a new request and the parameters that shape its text."""

    rid: str
    sampling_params: SamplingParams


@dataclass
class ReadyInfo:
    """Scheduler process -> parent over the readiness pipe, once the model and KV pool are built."""

    info: EngineInfo
    tokenizer_path: str | None   # directory (or file) the tokenizer loads from; None: the model has none
    load_seconds: float


@dataclass
class StartupError:
    """A child process -> parent over the readiness pipe: loading failed, with the reason."""

    message: str


@dataclass
class ControlFailed:
    """Scheduler process -> tokenizer manager: a control request (stats, flush) raised; it gets this reply instead."""

    request: str    # the request's class name, e.g. "GetStatsReq"
    message: str
