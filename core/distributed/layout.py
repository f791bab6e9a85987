"""The parallel layout of an engine: sizes, which ranks run on this node, and the startup checks.

Rank r runs on node r // ranks_per_node, on that node's device r % ranks_per_node. Rank 0 (node 0)
runs the scheduler; the others follow it (lockstep.py). Every check here runs on every node before
any process group is joined, on the same settings and model config, so a bad size fails every rank
alike with the same message and no rank is left waiting for the others.
"""
from __future__ import annotations

from dataclasses import dataclass

from jackfield.config import Settings
from jackfield.sdk.model_config import ModelConfig


class LayoutError(ValueError):
    """The parallel sizes do not fit the model, the devices or each other; the message names them."""


@dataclass(frozen=True)
class ParallelLayout:
    tp_size: int = 1
    ep_size: int = 1
    nnodes: int = 1
    node_rank: int = 0
    dist_init_addr: str | None = None
    timeout_s: float = 120.0

    @classmethod
    def of(cls, settings: Settings) -> "ParallelLayout":
        return cls(settings.tp_size, settings.ep_size, settings.nnodes, settings.node_rank, settings.dist_init_addr,
                   settings.dist_timeout)

    @property
    def enabled(self) -> bool:
        return self.tp_size > 1

    @property
    def ranks_per_node(self) -> int:
        return self.tp_size // self.nnodes

    @property
    def node_ranks(self) -> range:
        """The global ranks this node runs."""
        return range(self.node_rank * self.ranks_per_node, (self.node_rank + 1) * self.ranks_per_node)

    def local_index(self, rank: int) -> int:
        """The CUDA device index of `rank` on its node."""
        return rank % self.ranks_per_node

    def check(self, visible_devices: int | None) -> None:
        """The sizes against each other and the node's devices (None: CPU, any number of ranks)."""
        if self.ep_size not in (1, self.tp_size):
            raise LayoutError(f"ep_size {self.ep_size} must be 1 or equal to tp_size {self.tp_size} (experts are "
                              f"spread over the tensor-parallel ranks)")
        if self.node_rank >= self.nnodes:
            raise LayoutError(f"node_rank {self.node_rank} must be below nnodes {self.nnodes}")
        if self.tp_size % self.nnodes:
            raise LayoutError(f"tp_size {self.tp_size} is not a multiple of nnodes {self.nnodes}: every node runs "
                              f"the same number of ranks")
        if self.nnodes > 1 and not self.dist_init_addr:
            raise LayoutError(f"nnodes {self.nnodes} needs --dist-init-addr host:port (node 0's address, the same "
                              f"on every node)")
        if self.dist_init_addr:
            split_addr(self.dist_init_addr)
        if visible_devices is not None and self.ranks_per_node > visible_devices:
            raise LayoutError(f"{self.ranks_per_node} ranks per node (tp_size {self.tp_size} / nnodes {self.nnodes}) "
                              f"but only {visible_devices} CUDA device(s) are visible on node {self.node_rank}")

    def check_model(self, config: ModelConfig, latent_kv: bool, settings: Settings) -> None:
        """The tensor-parallel size against the model's heads and what TP supports."""
        tp = self.tp_size
        if tp == 1:
            if self.ep_size > 1:
                raise LayoutError("ep_size > 1 needs tp_size > 1 (experts are spread over the tensor-parallel ranks)")
            return
        if config.num_heads % tp:
            raise LayoutError(f"tp_size {tp} does not divide the model's {config.num_heads} attention heads")
        kv = config.num_kv_heads
        if not latent_kv and kv % tp and tp % kv:
            raise LayoutError(f"tp_size {tp} does not divide the model's {kv} KV heads, nor is it a multiple of them "
                              f"(so they cannot be replicated evenly)")
        if latent_kv:
            raise LayoutError(f"tensor parallelism (tp_size {tp}) is not implemented for models with a latent (MLA) "
                              f"KV cache ({', '.join(config.architectures)})")
        if config.num_experts and self.ep_size != tp:
            raise LayoutError(f"an MoE model at tp_size {tp} needs --ep-size {tp}: its experts are spread over the "
                              f"ranks (ep_size {self.ep_size})")
        if config.num_experts and config.num_experts % tp:
            raise LayoutError(f"ep_size {tp} does not divide the model's {config.num_experts} experts")
        if settings.speculative_algorithm not in (None, "", "none"):
            raise LayoutError(f"speculative decoding ({settings.speculative_algorithm}) is not supported with "
                              f"tp_size {tp}")
        if settings.enable_lora or settings.lora_paths or settings.lora_dir:
            raise LayoutError(f"LoRA adapters are not supported with tp_size {tp}")


def split_addr(addr: str) -> tuple[str, int]:
    """'host:port' -> (host, port); LayoutError naming the value otherwise."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise LayoutError(f"dist_init_addr {addr!r} must be host:port (e.g. 10.0.0.1:5000)")
    return host.strip("[]"), int(port)
