"""Speculative decoders: propose draft tokens that the target model verifies in one forward.

Life of a decoder (one per engine, built with a SpecRuntime when `speculative_algorithm` names it):

* every speculative step, `propose(SpecInput)` returns a DraftProposal: per request a chain or a
  tree of draft tokens hanging below the request's last token (the *root*: sampled by the target,
  its KV not computed yet). The engine verifies every request's tree in one target forward
  (ForwardMode.TARGET_VERIFY), keeps the longest path the target agrees with, and appends it plus
  one token of the target's own (the next root);
* `on_verified(req_ids, accepted)` then says how many draft tokens of each request were kept;
* `observe(TargetStates)` (only for decoders with `needs_hidden_states`, i.e. EAGLE) hands over the
  target's hidden states of every position whose KV the target committed, after every forward
  (prefill chunks, plain decode steps and verify steps alike), in position order per request;
* `release(req_id)` when a request leaves (finished, aborted or retracted: a retracted request
  comes back later as a new prefill).

Why the interface has these parts (EAGLE's needs): a draft head reads the target's hidden states
(observe), keeps a KV cache of its own per request that must follow the accepted tokens (the token
histories in SpecInput, on_verified, release), and builds trees whose shape differs per request
(per-request parents and counts in DraftProposal). Everything a built-in decoder needs from the
engine comes through the SpecRuntime: the target model (EAGLE shares its embedding and LM head),
`load_model` (a draft checkpoint on the engine's device and dtype) and `make_draft_runner` (a
DraftRunner: a draft model's own KV pool and attention backend, run through the same machinery).
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import torch

from jackfield.mem.device_copy import host_tensor
from jackfield.sdk.component import Component


@dataclass(frozen=True)
class SpecRuntime:
    """What a decoder gets at construction: settings, the target's geometry and model, and the
    factories for draft models. `num_draft_tokens` counts the tokens per request of one verify
    forward, the root included (SGLang's convention), so a proposal has at most
    `num_draft_tokens - 1` nodes per request."""

    settings: Any
    model_config: Any                  # the target's ModelConfig
    device: torch.device
    dtype: torch.dtype
    num_draft_tokens: int = 8
    num_steps: int = 5                 # draft-model / EAGLE: depth of the draft tree
    eagle_topk: int = 4                # draft-model / EAGLE: branching of the draft tree
    draft_model_path: str | None = None
    max_running_requests: int = 1
    context_len: int = 0
    target: Any = None                 # the target CausalLM
    load_model: Callable[[str], tuple[Any, Any]] | None = None
    """load_model(path) -> (CausalLM, ModelConfig): a checkpoint built and loaded like the target."""
    make_draft_runner: Callable[..., Any] | None = None
    """make_draft_runner(model, config) -> DraftRunner (jackfield.sdk.DraftRunner)."""

    @property
    def max_drafts(self) -> int:
        return max(self.num_draft_tokens - 1, 0)


@dataclass(frozen=True)
class SpecInput:
    """One speculative step: every running request's known tokens (prompt + output; the last one
    is the root) and how many draft nodes it may get (0: no speculation for it this step)."""

    req_ids: tuple[str, ...]
    token_ids: tuple[Sequence[int], ...]
    max_drafts: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.req_ids)


@dataclass(frozen=True)
class DraftProposal:
    """Draft nodes per request, row i for request i.

    `tokens[i, :counts[i]]` are request i's nodes, in an order where every node comes after its
    parent; `parents[i, j]` is the index of node j's parent among them, -1 for a child of the root.
    `parents` None means every row is a chain (node j's parent is j - 1); `counts` None means every
    row uses all its columns. Columns past counts[i] are padding and are ignored.
    """

    tokens: torch.Tensor                 # [bs, n] int64
    parents: torch.Tensor | None = None  # [bs, n] int64
    counts: tuple[int, ...] | None = None

    @classmethod
    def empty(cls, batch_size: int) -> "DraftProposal":
        return cls(torch.zeros(batch_size, 0, dtype=torch.int64), None, (0,) * batch_size)

    @classmethod
    def from_lists(cls, tokens: list[list[int]], parents: list[list[int]] | None = None) -> "DraftProposal":
        """Build from per-request Python lists of different lengths (padded here)."""
        counts = tuple(map(len, tokens))
        width = max(counts, default=0)
        tok = host_tensor([list(row) + [0] * (width - len(row)) for row in tokens], torch.int64)
        par = None if parents is None else host_tensor(
            [list(row) + [-1] * (width - len(row)) for row in parents], torch.int64)
        shape = (len(tokens), width)  # kept when every row is empty
        tok, par = tok.view(shape), None if par is None else par.view(shape)
        return cls(tok, par, counts)


@dataclass(frozen=True)
class TargetStates:
    """Hidden states the target computed for positions whose KV it committed: request i's rows
    `hidden[offsets[i]:offsets[i] + lengths[i]]` are positions start[i], start[i] + 1, ..."""

    req_ids: tuple[str, ...]
    starts: tuple[int, ...]
    lengths: tuple[int, ...]
    hidden: torch.Tensor  # [sum(lengths), H] (EAGLE-3: [.., len(aux layers) * H])

    def rows(self, i: int) -> torch.Tensor:
        off = sum(self.lengths[:i])
        return self.hidden[off:off + self.lengths[i]]


class SpeculativeDecoder(Component):
    kind: ClassVar[str] = "speculative"
    needs_hidden_states: ClassVar[bool] = False
    """Whether `observe` must receive the target's hidden states (costs a copy per forward)."""

    def __init__(self, runtime: SpecRuntime):
        self.runtime = runtime
        self.aux_hidden_layers: tuple[int, ...] = ()
        """With needs_hidden_states: () for the target's final (normed) hidden state, else the
        target layers whose inputs are captured and concatenated (EAGLE-3's low/mid/high)."""

    @classmethod
    def kit_settings(cls, model_dir: str, workdir: str) -> dict:
        """Settings this decoder needs to run on the conformance kit's tiny random target at
        `model_dir` (e.g. a draft checkpoint written under `workdir`); {} when it needs none."""
        return {}

    @abstractmethod
    def propose(self, spec_input: SpecInput) -> DraftProposal:
        """Draft nodes for every request of the step (at most max_drafts[i] for request i)."""

    def on_verified(self, req_ids: tuple[str, ...], accepted: tuple[int, ...]) -> None:
        """How many draft nodes of each request's last proposal the target accepted."""

    def observe(self, states: TargetStates) -> None:
        """The target's hidden states of newly committed positions (needs_hidden_states only)."""

    def release(self, req_id: str) -> None:
        """The request left the running batch: drop whatever is kept for it."""
