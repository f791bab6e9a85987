"""The real HTTP app over a scripted engine: every generation answers with a given text, in pieces.

For the API layer's own behaviour (tool-call and reasoning parsing, streamed deltas, prompts with
tools) on any chat template, without a model: `ScriptedServer(template).client()` is an official
`openai` client (or `anthropic_client()`) talking to the app in-process; `script` is the text the
next generations produce, `pieces` how it is cut into streamed outputs; `submitted` records every
request's prompt text and SamplingParams.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from jackfield.config import Settings
from jackfield.engine_loop import EngineInfo
from jackfield.io_struct import FinishReason, ReqOutput
from jackfield.plugins import load_plugins
from jackfield.registry import build_registry
from jackfield.server.app import ServerState, build_app
from jackfield.server.metrics import ServerMetrics
from jackfield.server.parsers import select_parsers
from jackfield.tokenizer.chat import render_chat


class TemplateTokenizer:
    """A tokenizer stand-in: one token per character, and a chat template; remembers the last prompt."""

    def __init__(self, chat_template: str):
        self.chat_template = chat_template
        self.last_prompt = ""

    def apply_chat_template(self, messages, add_generation_prompt=True, tools=None, **kwargs) -> str:
        self.last_prompt = render_chat(self.chat_template, messages, add_generation_prompt, tools=tools, **kwargs)
        return self.last_prompt

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [1 + ord(c) % 1000 for c in text]


@dataclass
class ScriptedManager:
    """A TokenizerManager stand-in answering each request with `script`, cut every `piece` characters."""

    tokenizer: TemplateTokenizer
    script: str = ""
    piece: int = 3
    finish: str = "stop"
    context_len: int = 1 << 20
    vocab_size: int = 1001
    max_prompt_chars: int = 1 << 30
    default_timeout: float | None = None
    max_in_flight: int | None = None
    submitted: list = field(default_factory=list)
    num_in_flight: int = 0

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text)

    def submit(self, input_ids, params, queue, logprob_start_len=-1, priority=0, lora=None) -> str:
        rid = uuid.uuid4().hex
        self.submitted.append((self.tokenizer.last_prompt, params))
        chunks = [self.script[i:i + self.piece] for i in range(0, len(self.script), self.piece)] or [""]
        for k, text in enumerate(chunks):
            last = k == len(chunks) - 1
            finished = FinishReason(self.finish, matched=0 if self.finish == "stop" else None) if last else None
            queue.put_nowait(ReqOutput(rid, [1], finished, len(input_ids), k + 1, 0, text=text))
        return rid

    def admit(self, count: int) -> None:
        pass

    def abort(self, rid: str) -> None:
        pass


class ScriptedServer:
    """The app with a scripted engine and the parsers `select_parsers` picks for `chat_template`."""

    def __init__(self, chat_template: str, **settings):
        settings = Settings(served_model_name="scripted", warmup=False, **settings)
        self.manager = ScriptedManager(TemplateTokenizer(chat_template))
        pm, records = load_plugins()
        self.parsers = select_parsers(build_registry(pm, records), settings, chat_template)
        info = EngineInfo(settings, None, "/scripted", "cpu", "float32", {}, 1 << 20, 8, 1 << 20)
        self.state = ServerState(settings, info, self.manager, ServerMetrics(), pm, records, parsers=self.parsers,
                                 ready=True)
        self.app = build_app(self.state)

    def say(self, text: str, piece: int = 3, finish: str = "stop") -> ScriptedServer:
        self.manager.script, self.manager.piece, self.manager.finish = text, piece, finish
        return self

    @property
    def prompt(self) -> str:
        return self.manager.submitted[-1][0]

    @property
    def params(self):
        return self.manager.submitted[-1][1]

    def http(self):
        from fastapi.testclient import TestClient

        return TestClient(self.app)

    def client(self):
        from openai import OpenAI

        return OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=self.http(), max_retries=0)

    def anthropic_client(self):
        from anthropic import Anthropic

        return Anthropic(base_url="http://testserver", api_key="unused", http_client=self.http(), max_retries=0)
