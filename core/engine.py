"""The offline Engine: `Engine(model=None, **settings)`, then generate / chat / generate_stream.

The scheduler runs in a background thread of this process; requests and outputs cross with the
same io_struct messages the server sends over ZMQ.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import fields, replace
from typing import Any, AsyncIterator

from jackfield.config import settings_for
from jackfield.engine_loop import EngineLoop, EngineInfo
from jackfield.embedding import normalized
from jackfield.io_struct import POOLINGS, LoadLoRAReq, TokenizedEmbeddingReq, TokenizedGenerateReq, UnloadLoRAReq
from jackfield.sampling.params import SamplingParams
from jackfield.tokenizer.request_text import RequestText

log = logging.getLogger(__name__)
_ids = itertools.count()
# Sampling parameter names (and the OpenAI spellings of the length limit) that chat() refuses as template kwargs.
_SAMPLING_NAMES = {f.name for f in fields(SamplingParams)} | {"max_tokens", "max_completion_tokens"}


class Engine:
    def __init__(self, model: str | None = None, progress: bool = False, **settings: Any):
        if model is not None:
            settings["model"] = model
        self.settings = settings_for(**settings)
        self.loop = EngineLoop(self.settings, progress=progress)
        self.tokenizer = self.loop.tokenizer
        self.info: EngineInfo = self.loop.info
        self._adapters: list[dict] = list(self.info.lora_adapters)

    # ---- requests ---------------------------------------------------------------------------
    def _params(self, sampling_params: dict | SamplingParams | None) -> SamplingParams:
        if isinstance(sampling_params, SamplingParams):
            return sampling_params
        return SamplingParams.from_dict(sampling_params, vocab_size=self.info.model_config.vocab_size)

    def _encode(self, prompt: str | list[int], add_special_tokens: bool = True) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this model has no tokenizer: pass token ids instead of text")
            return self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
        if not all(isinstance(t, int) for t in prompt):
            raise ValueError("a prompt must be a string or a list of token ids")
        vocab = self.info.model_config.vocab_size
        bad = next((t for t in prompt if not 0 <= t < vocab), None)
        if bad is not None:
            raise ValueError(f"prompt token id {bad} is outside the vocabulary [0, {vocab})")
        return list(prompt)

    def _submit(self, ids: list[int], params: SamplingParams, stream: bool = False, lora: str | None = None,
                logprob_start_len: int = -1) -> str:
        rid = f"engine-{next(_ids)}"
        self.loop.submit(TokenizedGenerateReq(rid, ids, params, stream=stream, lora=lora,
                                              logprob_start_len=logprob_start_len))
        return rid

    def _collect(self, rid: str, params: SamplingParams) -> dict:
        text = RequestText(self.tokenizer, params) if self.tokenizer is not None else None
        tokens, logprobs, input_logprobs = [], [], None
        while True:
            out = self.loop.get(rid)
            tokens += out.new_token_ids
            if out.logprobs:
                logprobs += out.logprobs
            if out.input_logprobs is not None:
                input_logprobs = out.input_logprobs
            if text is not None:
                text.feed(out.new_token_ids, out.finished)
            if out.finished is not None:
                self.loop.forget(rid)
                _raise_if_rejected(out.finished)
                res = _result(text.text if text else "", tokens, out, logprobs if params.logprobs else None)
                if input_logprobs is not None:
                    res["input_logprobs"] = _logprob_dicts(input_logprobs)
                return res

    def generate(self, prompt, sampling_params: dict | SamplingParams | None = None, add_special_tokens: bool = True,
                 lora_path: str | list[str | None] | None = None, logprob_start_len: int = -1):
        """Generate for one prompt (returns a dict) or a list of prompts (returns a list of dicts).

        A prompt is a string or a list of token ids. With n > 1 a prompt's dict holds a list of
        completions under "choices" (each with text, token_ids, finish_reason). `lora_path` names
        the LoRA adapter to run with (SGLang's name for it): one for every prompt, or a list with
        one entry per prompt (None: the base model). An unknown adapter raises ValueError. With
        `logprob_start_len` >= 0 the dict also holds "input_logprobs": one entry per prompt token
        from that position on ({token_id, logprob, top_logprobs}; the first prompt token's logprob
        is None), with `top_logprobs_num` alternatives each; `max_new_tokens` may then be 0.
        """
        params = self._params(sampling_params)
        single = isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], int))
        prompts = [prompt] if single else list(prompt)
        loras = self._loras(lora_path, len(prompts))
        encoded = [self._encode(p, add_special_tokens) for p in prompts]
        if logprob_start_len >= 0 and any(logprob_start_len >= len(ids) for ids in encoded):
            raise ValueError(f"logprob_start_len ({logprob_start_len}) must be below the prompt length "
                             f"({min(len(ids) for ids in encoded)} tokens)")
        sub = replace(params, n=1)
        # choice j of a seeded request uses seed + j, so n > 1 choices differ yet stay reproducible
        choices = [replace(sub, seed=None if params.seed is None else params.seed + j) for j in range(params.n)]
        rids = [[self._submit(ids, c, lora=lora, logprob_start_len=logprob_start_len) for c in choices]
                for ids, lora in zip(encoded, loras)]
        results = []
        try:
            for group in rids:
                outs = [self._collect(rid, sub) for rid in group]
                results.append(outs[0] if params.n == 1 else _merge_choices(outs))
        except Exception:
            for group in rids:  # one request was rejected: stop the others of this call
                for rid in group:
                    self.loop.abort_and_forget(rid)
            raise
        return results[0] if single else results

    def chat(self, messages: list[dict], sampling_params: dict | None = None, lora_path: str | None = None,
             **template_kwargs):
        """Apply the model's chat template to `messages` and generate the assistant reply. Keyword
        arguments go to the chat template (e.g. `enable_thinking`); sampling parameters among them
        are refused, since the template would ignore them."""
        misplaced = sorted(set(template_kwargs) & _SAMPLING_NAMES)
        if misplaced:
            raise TypeError(f"chat() got sampling parameters {misplaced} as keyword arguments, which would go to the "
                            f"chat template; pass them in sampling_params (e.g. {{'max_new_tokens': 16}})")
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer, so it has no chat template")
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, **template_kwargs)
        return self.generate(prompt, sampling_params, add_special_tokens=False, lora_path=lora_path)

    def embed(self, prompt, pooling: str | None = None, normalize: bool | None = None):
        """The pooled final hidden state of one prompt (a list of floats) or of each of a list of
        prompts, computed by a prefill-only request through the scheduler. `pooling`: "last" (the
        last token's state) or "mean"; `normalize` scales each vector to unit L2 norm. Unset, both
        are the model's (`info.embedding`: its sentence-transformers config, else last and True)."""
        pooling = pooling or self.info.embedding.pooling
        normalize = self.info.embedding.normalize if normalize is None else normalize
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        single = isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], int))
        encoded = [self._encode(p) for p in ([prompt] if single else prompt)]
        rids = []
        for ids in encoded:
            rids.append(f"engine-{next(_ids)}")
            self.loop.submit(TokenizedEmbeddingReq(rids[-1], ids, pooling))
        vectors = []
        try:
            for rid in rids:
                out = self.loop.get(rid)
                self.loop.forget(rid)
                _raise_if_rejected(out.finished)
                vectors.append(normalized(out.embedding) if normalize else out.embedding)
        except Exception:
            for rid in rids:
                self.loop.abort_and_forget(rid)
            raise
        return vectors[0] if single else vectors

    async def generate_stream(self, prompt, sampling_params: dict | None = None,
                              lora_path: str | None = None) -> AsyncIterator[dict]:
        """Yield {"text": delta, "token_ids": new ids, "finished", "finish_reason", "usage"} chunks."""
        params = replace(self._params(sampling_params), n=1)
        rid = self._submit(self._encode(prompt), params, stream=True, lora=self._loras(lora_path, 1)[0])
        text = RequestText(self.tokenizer, params) if self.tokenizer is not None else None
        try:
            while True:
                out = await asyncio.to_thread(self.loop.get, rid)
                delta = text.feed(out.new_token_ids, out.finished) if text else ""
                done = out.finished is not None
                if done:
                    _raise_if_rejected(out.finished)
                yield {"text": delta, "token_ids": out.new_token_ids, "finished": done,
                       "finish_reason": out.finished.to_openai() if done else None, "usage": _usage(out)}
                if done:
                    return
        finally:
            self.loop.abort_and_forget(rid)

    # ---- LoRA adapters ------------------------------------------------------------------------
    def _loras(self, lora_path, count: int) -> list[str | None]:
        loras = list(lora_path) if isinstance(lora_path, (list, tuple)) else [lora_path] * count
        if len(loras) != count:
            raise ValueError(f"lora_path has {len(loras)} entries for {count} prompts")
        for name in loras:
            if name is not None and not isinstance(name, str):
                raise ValueError(f"lora_path entries must be adapter names (strings) or None, got {name!r}")
        return loras

    def load_lora_adapter(self, name: str, path: str) -> list[dict]:
        """Read the PEFT adapter at `path` under `name`; returns every loaded adapter. Raises
        ValueError naming the problem (rank above max_lora_rank, a module the model lacks…)."""
        return self._lora_update(LoadLoRAReq(name, str(path), f"engine-lora-{next(_ids)}"))

    def unload_lora_adapter(self, name: str) -> list[dict]:
        """Unload adapter `name` once its running and queued requests have finished (new ones are
        refused at once); returns the adapters still loaded."""
        return self._lora_update(UnloadLoRAReq(name, f"engine-lora-{next(_ids)}"))

    def list_lora_adapters(self) -> list[dict]:
        """The loaded adapters (name, path, rank, lora_alpha, scaling, target_modules, base_model)."""
        return list(self._adapters)

    def _lora_update(self, msg) -> list[dict]:
        out = self.loop.lora_update(msg)
        self._adapters = list(out.adapters)
        if not out.ok:
            raise ValueError(out.message)
        return out.adapters

    # ---- lifecycle --------------------------------------------------------------------------
    def flush_cache(self) -> bool:
        return self.loop.flush_cache()

    def get_stats(self):
        return self.loop.stats()

    def shutdown(self) -> None:
        self.loop.shutdown()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


USER_ABORT_MESSAGE = "aborted"  # the scheduler's message for an abort the caller asked for


def _raise_if_rejected(reason) -> None:
    """An abort the caller did not ask for is an error in the offline API: the prompt was too long
    for the context or the KV cache (ValueError), or the forward failed (RuntimeError)."""
    if reason.kind != "abort" or reason.message == USER_ABORT_MESSAGE:
        return
    message = reason.message or "the request was aborted"
    if message.startswith("internal error"):
        raise RuntimeError(message)
    raise ValueError(message)


def _usage(out) -> dict:
    return {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
            "total_tokens": out.prompt_tokens + out.completion_tokens, "cached_tokens": out.cached_tokens}


def _result(text: str, tokens: list[int], out, logprobs) -> dict:
    res = {"text": text, "token_ids": tokens, "finish_reason": out.finished.to_openai(),
           "finish_detail": out.finished.message or out.finished.matched, "usage": _usage(out)}
    if out.spec:
        from jackfield.spec.meta import spec_meta

        res["spec"] = spec_meta(out.spec)
    if logprobs is not None:
        res["logprobs"] = _logprob_dicts(logprobs)
    return res


def _logprob_dicts(logprobs) -> list[dict]:
    return [{"token_id": lp.token_id, "logprob": lp.logprob, "top_logprobs": lp.top} for lp in logprobs]


def _merge_choices(outs: list[dict]) -> dict:
    usage = dict(outs[0]["usage"])
    usage["completion_tokens"] = sum(o["usage"]["completion_tokens"] for o in outs)
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return {"text": outs[0]["text"], "token_ids": outs[0]["token_ids"], "finish_reason": outs[0]["finish_reason"],
            "choices": outs, "usage": usage}
