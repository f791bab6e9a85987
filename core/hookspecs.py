"""The jackfield hook specifications: the interface between the core and every plugin.

A plugin is a module (or object) registered under the ``jackfield`` entry-point group. It implements
any of the hooks below, each marked with ``@jackfield.hookimpl``. Built-in components are plugins of
exactly this kind: ``pyproject.toml`` lists them under the same group.

Three rules shape every hook:

* **Hooks register factories; they never run on the hot path.** The ``register`` hooks are called
  once, when the plugin manager is built, and hand the core *classes*. The core constructs the one
  component it selected per kind and calls it through the plain base classes of ``jackfield.sdk``:
  no pluggy dispatch happens per batch, per layer or per token.
* **Discovery is cheap.** A ``register`` hook must not import heavy packages (triton, flashinfer,
  xgrammar…). The class it registers declares ``requires_packages`` and an ``availability()`` check;
  the heavy import happens in the component's constructor, once it has been chosen.
* **Every hook is called with keyword arguments** (pluggy's rule), so an implementation may accept
  only the arguments it needs.

Call order during one server's life::

    discovery:   jackfield_register_*(register)           once per plugin, at plugin-manager build
    CLI:         jackfield_add_cli_commands(subparsers)   when `jackfield` parses its command line
    startup:     (selection of one component per kind; model load; KV cache; CUDA graphs)
                 jackfield_engine_started(engine)         after warm-up, before the first request
    HTTP:        jackfield_add_http_routes(app, server)   when the FastAPI app is built
    shutdown:    jackfield_engine_stopping(engine)        before the scheduler and workers stop
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    import argparse

    from jackfield.sdk.attention import AttentionBackend
    from jackfield.sdk.grammar import GrammarBackend
    from jackfield.sdk.lora import LoRABackend
    from jackfield.sdk.model import CausalLM
    from jackfield.sdk.moe import MoEDispatcher
    from jackfield.sdk.quant import QuantizationMethod
    from jackfield.sdk.reasoning_parser import ReasoningParser
    from jackfield.sdk.spec import SpeculativeDecoder
    from jackfield.sdk.tool_parser import ToolCallParser

PROJECT = "jackfield"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --------------------------------------------------------------------------------------------------
# Registration: one hook per component kind. Called once per plugin when the plugin manager is
# built. `register(cls)` records the class together with the plugin and distribution that provided
# it; the return value is ignored. Registering a class that is not a subclass of the kind's base
# class raises TypeError naming the plugin.
# --------------------------------------------------------------------------------------------------


@hookspec
def jackfield_register_attention_backends(register: Callable[[type[AttentionBackend]], None]) -> None:
    """Register attention backends (subclasses of ``jackfield.sdk.AttentionBackend``).

    Selected by ``attention_backend`` (``auto`` picks the highest-priority available backend that
    supports the device, dtype and the model's required features such as ``sliding_window``).
    The chosen class is constructed once per engine with an ``AttentionRuntime`` (KV pool,
    request-to-token table, head geometry). Per batch the model runner calls
    ``init_forward_metadata(forward_batch)`` once, then every attention layer calls
    ``forward(q, k, v, layer, forward_batch)``; the backend writes the new K/V into the pool itself.
    Backends that set ``supports_cuda_graph`` also implement ``init_cuda_graph_state``,
    ``init_forward_metadata_capture`` and ``init_forward_metadata_replay`` (docs/plugins.md).
    """


@hookspec
def jackfield_register_quantization_methods(register: Callable[[type[QuantizationMethod]], None]) -> None:
    """Register quantization methods (subclasses of ``jackfield.sdk.QuantizationMethod``).

    Selected by ``quantization`` (``auto`` picks the method whose ``checkpoint_formats`` names the
    checkpoint's own quantization, ``None`` for plain weights). The chosen class is constructed
    once with the ``ModelConfig``; every linear layer of the model asks it for a ``LinearMethod``
    (``linear_method(prefix)``) that creates, loads, post-processes and applies that layer's
    weights. Model files never mention a quantization format.
    """


@hookspec
def jackfield_register_moe_dispatchers(register: Callable[[type[MoEDispatcher]], None]) -> None:
    """Register mixture-of-experts dispatchers (subclasses of ``jackfield.sdk.MoEDispatcher``).

    Selected by ``moe_backend``; used only by architectures with expert layers. Constructed once
    with an ``MoEConfig``; each MoE layer calls ``forward(hidden, router_logits, w13, w2)`` which
    routes the top-k experts per token and returns the combined expert output.
    """


@hookspec
def jackfield_register_speculative_decoders(register: Callable[[type[SpeculativeDecoder]], None]) -> None:
    """Register speculative decoders (subclasses of ``jackfield.sdk.SpeculativeDecoder``).

    Selected by ``speculative_algorithm`` (no default: speculative decoding is off unless named).
    Constructed once with a ``SpecRuntime``. Each decode step the scheduler asks
    ``propose(spec_input)`` for draft tokens (a chain or a tree); the core verifies them with one
    target forward in verify mode and reports the accepted lengths back through ``on_verified``.
    Greedy output must equal plain greedy decoding token for token.
    """


@hookspec
def jackfield_register_grammar_backends(register: Callable[[type[GrammarBackend]], None]) -> None:
    """Register constrained-decoding grammar backends (subclasses of ``jackfield.sdk.GrammarBackend``).

    ``grammar_backend`` names the default (``auto``: the highest-priority available backend); a
    request may name any other available one in its own ``grammar_backend``. Each backend used is
    constructed once per engine with a ``GrammarVocab`` (token bytes, logits width, EOS ids) on a
    grammar compile thread. For each constraint the core calls ``compile(spec)`` (JSON schema,
    regex, EBNF) on that thread, caches the result, and gives each request a ``copy()``: a
    ``Grammar`` that fills its row of the shared token bitmask before each sampling step and
    accepts the sampled token after it.
    """


@hookspec
def jackfield_register_model_architectures(register: Callable[[type[CausalLM]], None]) -> None:
    """Register model architectures (subclasses of ``jackfield.sdk.CausalLM``).

    An architecture is matched by the Hugging Face ``architectures`` names it lists (for example
    ``LlamaForCausalLM``); when several match, the highest priority wins. It is constructed once
    with a ``ModelConfig`` and a ``ModelBuildContext`` (quantization method, dtype, device) and must
    load weights from ``(name, tensor)`` pairs in Hugging Face naming.
    """


@hookspec
def jackfield_register_lora_backends(register: Callable[[type[LoRABackend]], None]) -> None:
    """Register LoRA backends (subclasses of ``jackfield.sdk.LoRABackend``).

    Selected by ``lora_backend`` (``auto``: the highest-priority available backend) when LoRA is
    on (``lora_paths``, ``lora_dir`` or ``enable_lora``). Constructed once with a ``LoRARuntime``.
    The core reads adapters and keeps them in a pool of device slots whose per-layer views
    (``LoRAWeights``) it passes in; per forward that uses an adapter it calls
    ``prepare(LoRABatch)`` (each token's slot, as segments), then every LoRA-wrapped linear layer
    calls ``apply(weights, x, base_out)``, which returns base_out plus the low-rank updates.
    """


@hookspec
def jackfield_register_tool_parsers(register: Callable[[type[ToolCallParser]], None]) -> None:
    """Register tool-call parsers (subclasses of ``jackfield.sdk.ToolCallParser``).

    Selected once by the server, after the tokenizer is loaded, by ``tool_call_parser``: ``auto``
    takes the parser whose ``template_score`` of the model's chat template is highest (ties and a
    template no parser knows go to the highest ``priority``). Never on the hot path: the API layer
    constructs the chosen class per chat request that has ``tools``, with the request's ``Tool``
    list, and feeds it the detokenized text (``stream().feed``) or the finished text (``parse``).
    """


@hookspec
def jackfield_register_reasoning_parsers(register: Callable[[type[ReasoningParser]], None]) -> None:
    """Register reasoning parsers (subclasses of ``jackfield.sdk.ReasoningParser``).

    Selected once by the server by ``reasoning_parser``: ``auto`` takes the parser whose
    ``template_score`` of the chat template is highest, and separates reasoning by default only
    when that score is above 0. The API layer constructs the class per generation that separates
    reasoning (``in_reasoning`` from ``starts_in_reasoning(prompt)``) and feeds it the text.
    """


# --------------------------------------------------------------------------------------------------
# Extension points of the command line and the HTTP server.
# --------------------------------------------------------------------------------------------------


@hookspec
def jackfield_add_cli_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add subcommands to the ``jackfield`` command line.

    Called once while ``jackfield`` builds its argument parser, with the ``subparsers`` object of
    the top-level parser. Add a parser with ``subparsers.add_parser(name, help=...)`` and set
    ``parser.set_defaults(func=callable)``; the callable receives the parsed ``argparse.Namespace``
    and returns the process exit code (``int``) or ``None`` for 0. Return value ignored.
    """


@hookspec
def jackfield_add_http_routes(app: Any, server: Any) -> None:
    """Add routes to the HTTP server.

    Called once while the FastAPI ``app`` is built, before it starts serving. ``server`` is the
    ``jackfield.server.app.ServerState``: it exposes ``settings``, the ``tokenizer_manager``
    (``generate`` / ``abort``) and the component ``selection``. Return value ignored.
    """


# --------------------------------------------------------------------------------------------------
# Lifecycle.
# --------------------------------------------------------------------------------------------------


@hookspec
def jackfield_engine_started(engine: Any) -> None:
    """Called once the model is loaded and warmed up, before the first request is admitted.

    ``engine`` is an ``EngineInfo`` (settings, model config, the selected component per kind and
    the KV-cache capacity). Exceptions are logged and ignored. Return value ignored.
    """


@hookspec
def jackfield_engine_stopping(engine: Any) -> None:
    """Called once when the engine or server begins to shut down, before its workers stop.

    Receives the same ``EngineInfo`` as ``jackfield_engine_started``. Keep it short: shutdown
    waits for it. Exceptions are logged and ignored. Return value ignored.
    """
