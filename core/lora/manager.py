"""LoRAManager: one engine's LoRA state: the wrapped layers, the adapters in host memory, the device
pool and the selected backend.

While the model is built, every SDK `Linear` whose checkpoint modules are enabled targets asks
`wrap` for a LoRALayer (the layer then adds the backend's update after its base GEMM; a model
built without a manager has none and pays nothing). `finish_build` then sizes the pool. Per forward
`prepare(fb)` turns the ForwardBatch's per-request slots into the backend's LoRABatch; a forward
whose requests all run the base model skips every LoRA kernel.
"""
from __future__ import annotations

import itertools
import logging
from pathlib import Path

import torch

from jackfield.lora.adapter import AdapterError, LayerSpec, LoRAAdapter, read_adapter
from jackfield.lora.pool import AdapterPool
from jackfield.sdk.forward_batch import ForwardBatch
from jackfield.sdk.lora import LoRABackend, LoRARuntime, LoRAWeights, lora_batch
from jackfield.sdk.lora_graph import LoRAGraphSlots

log = logging.getLogger(__name__)
# The checkpoint modules LoRA can target, by the SDK layer that holds them.
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALayer:
    """Attached to a wrapped Linear: adds the backend's update to the layer's base output."""

    def __init__(self, manager: "LoRAManager", weights: LoRAWeights):
        self.manager, self.weights = manager, weights

    def apply(self, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        if not self.manager.active:
            return base_out
        return self.manager.backend.apply(self.weights, x, base_out)

    def fuses_prologue(self) -> bool:
        """True when the layer may run its base GEMV with the fused norm / activation and pass the raw
        input to `apply_normed` / `apply_silu_mul`: no adapter in this forward, or a backend that
        computes the input inside its kernels."""
        return not self.manager.active or self.manager.backend.fuses_prologue()

    def apply_normed(self, h: torch.Tensor, norm, base_out: torch.Tensor) -> torch.Tensor:
        """The update on the input RMSNorm(h) (`norm`: the SDK RMSNorm the base layer applied)."""
        if not self.manager.active:
            return base_out
        return self.manager.backend.apply_normed(self.weights, h, norm.weight, norm.eps, base_out)

    def apply_silu_mul(self, gate_up: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        """The update on the input silu(gate) * up."""
        if not self.manager.active:
            return base_out
        return self.manager.backend.apply_silu_mul(self.weights, gate_up, base_out)


class LoRAManager:
    def __init__(self, runtime: LoRARuntime, backend_cls: type[LoRABackend], stacked_params, targets: tuple[str, ...]):
        self.runtime = runtime
        self.backend = backend_cls(runtime)
        self.targets = targets
        # fused layer name -> {shard id: checkpoint module}, from the architecture's stacked_params
        self.fused: dict[str, dict] = {}
        for ckpt, fused, shard in stacked_params:
            self.fused.setdefault(fused, {})[shard] = ckpt
        self.layers: dict[str, LoRAWeights] = {}
        self.specs: dict[str, LayerSpec] = {}
        self.module_map: dict[str, str] = {}  # checkpoint module -> wrapped layer name
        self.adapters: dict[str, LoRAAdapter] = {}
        self.pool: AdapterPool | None = None
        self.active = False
        self._uids = itertools.count(1)
        self._graph: LoRAGraphSlots | None = None

    # ---- model build ----------------------------------------------------------------------------
    def wrap(self, prefix: str, in_features: int, shards: dict) -> LoRALayer | None:
        """Called by every SDK Linear at construction; `shards`: shard id -> (offset, size), in order.
        Returns the layer's LoRALayer, or None when none of its modules is a LoRA target."""
        last = prefix.rpartition(".")[2]
        names = self.fused.get(last, {None: last})
        modules = [names.get(sid, last if sid is None else None) for sid in shards]
        if None in modules or not any(m in self.targets for m in modules):
            return None
        rt = self.runtime
        slices = tuple((off, size) for off, size in shards.values())
        out_features = sum(size for _, size in slices)
        n, r, s = len(slices), rt.max_rank, rt.max_loras
        weights = LoRAWeights(
            a=torch.zeros(s, n * r, in_features, dtype=rt.dtype, device=rt.device),
            b=torch.zeros(s, out_features, r, dtype=rt.dtype, device=rt.device),
            ranks=torch.zeros(s, n, dtype=torch.int32, device=rt.device), slices=slices, max_rank=r, name=prefix)
        self.layers[prefix] = weights
        self.specs[prefix] = LayerSpec(in_features, tuple((m, off, size) for m, (off, size) in zip(modules, slices)))
        for m in modules:
            if m in self.targets:
                self.module_map[m] = last
        return LoRALayer(self, weights)

    def finish_build(self) -> None:
        if not self.layers:
            raise ValueError(f"LoRA is on but the model has no linear layer among the targets {list(self.targets)}")
        # a target module only some layers have still resolves; one no layer has stays unknown
        self.pool = AdapterPool(self.layers, self.runtime.max_loras, self.runtime.device)
        size = sum(w.a.numel() * w.a.element_size() + w.b.numel() * w.b.element_size() for w in self.layers.values())
        log.info("LoRA: %d wrapped layers, %d slots of rank %d: %.1f MiB of adapter pool", len(self.layers),
                 self.runtime.max_loras, self.runtime.max_rank, size / 2**20)

    # ---- adapters --------------------------------------------------------------------------------
    def load(self, name: str, path: str | Path) -> LoRAAdapter:
        """Read an adapter into host memory under `name` (AdapterError says why it cannot be)."""
        if name in self.adapters:
            raise AdapterError(f"a LoRA adapter named '{name}' is already loaded (from {self.adapters[name].path})",
                               param="lora_name")
        rt = self.runtime
        adapter = read_adapter(name, path, next(self._uids), self.specs, self.module_map, rt.max_rank, rt.dtype,
                               pin=rt.device.type == "cuda")
        self.adapters[name] = adapter
        log.info("LoRA adapter '%s' loaded from %s (rank %d, targets %s)", name, path, adapter.rank,
                 ",".join(adapter.targets))
        return adapter

    def unload(self, name: str) -> LoRAAdapter:
        """Forget an adapter; the caller made sure no request or running forward uses it."""
        adapter = self.adapters.pop(name)
        self.pool.drop(adapter)
        return adapter

    def describe(self) -> list[dict]:
        return [a.describe() for a in self.adapters.values()]

    # ---- per forward -----------------------------------------------------------------------------
    def prepare(self, fb: ForwardBatch) -> None:
        """Before an eager forward: the backend's LoRABatch from the batch's slots (none: base only)."""
        slots = fb.lora_slots
        self.active = any(s >= 0 for s in slots)
        if not self.active:
            return
        if fb.mode.is_decode():
            batch = lora_batch([1] * fb.batch_size, slots, self.pool.scalings, decode=True,
                               tile=self.backend.decode_tile(fb.batch_size))
        else:
            batch = lora_batch(list(fb.extend_seq_lens_cpu), slots, self.pool.scalings)
        self.backend.prepare(batch)

    def init_cuda_graph_state(self, max_bs: int) -> None:
        self._graph = LoRAGraphSlots(self.backend, max_bs, self.runtime.max_loras_per_batch, self.pool.scalings)

    def prepare_capture(self, bs: int) -> None:
        """Before capturing the decode graph of batch size bs: LoRA kernels are captured over the
        static slot (and tile) buffer, which `prepare_replay` rewrites."""
        self.active = True
        self.backend.prepare(self._graph.batch(bs))

    def prepare_replay(self, fb: ForwardBatch, bs: int) -> None:
        self._graph.write(fb.lora_slots or (-1,) * fb.batch_size, bs)
