"""Linear layers whose weights are owned by the selected quantization method.

One class covers plain and fused projections: `shards` names the checkpoint tensors packed into
this layer's output rows, in order (q/k/v for qkv_proj, 0/1 for gate_up_proj).

When the engine serves LoRA adapters (`ctx.lora` set) a layer whose modules are LoRA targets gets a
LoRALayer that adds each token's adapter update to the base output. The fused norm / activation
paths stay fused when the LoRA backend computes the layer's input inside its own kernels (decode on
the `triton` backend) or no adapter runs in the forward; otherwise they run unfused, since the
adapter needs the layer's input. Without LoRA `self.lora` is None and the layer runs as before.

Tensor parallelism (`parallel`, see jackfield.sdk.parallel): a "column" layer holds this rank's
slice of every fused shard's output rows (`shard_slices` overrides the even split, for replicated
KV heads), a "row" layer this rank's slice of the input columns and all-reduces its output. The
layer cuts each checkpoint tensor before the quantization method sees it, along the dims the
method's `shard_dims` names, so every method gets tensor parallelism without code of its own.
`in_features` / `out_features` are this rank's sizes.
"""
from __future__ import annotations

import torch
from torch import nn

from jackfield.sdk.layers.activation import silu_and_mul
from jackfield.sdk.model import ModelBuildContext
from jackfield.sdk.parallel import SINGLE


class Linear(nn.Module):
    def __init__(self, in_features: int, out_sizes: tuple[int, ...], ctx: ModelBuildContext, prefix: str,
                 bias: bool = False, shard_ids: tuple = (None,), parallel: str | None = None,
                 shard_slices: tuple[tuple[int, int], ...] | None = None):
        super().__init__()
        assert len(out_sizes) == len(shard_ids) and parallel in (None, "column", "row")
        self.tp = ctx.tp if parallel and ctx.tp.enabled else SINGLE
        self.parallel = parallel if self.tp.enabled else None
        self.prefix = prefix
        if self.parallel == "column":  # (start, rows) of each shard's checkpoint tensor this rank holds
            slices = shard_slices or tuple(self.tp.split(n, f"output features of {prefix}") for n in out_sizes)
        else:
            slices = tuple((0, n) for n in out_sizes)
        self.in_start, local_in = (self.tp.split(in_features, f"input features of {prefix}")
                                   if self.parallel == "row" else (0, in_features))
        local_sizes = tuple(n for _, n in slices)
        self.full_in_features = in_features
        self.in_features, self.out_features = local_in, sum(local_sizes)
        offsets = [sum(local_sizes[:i]) for i in range(len(local_sizes))]
        self.shards = {sid: (off, size) for sid, off, size in zip(shard_ids, offsets, local_sizes)}
        self.tp_rows = {sid: (full, start) for sid, full, (start, _) in zip(shard_ids, out_sizes, slices)}
        self.method = ctx.quant.linear_method(prefix)
        self.method.create_weights(self, local_in, self.out_features, bias, ctx.dtype, ctx.device)
        self.lora = ctx.lora.wrap(prefix, local_in, self.shards) if ctx.lora is not None else None

    def weight_loader(self, param_name: str, tensor: torch.Tensor, shard_id=None) -> None:
        if shard_id not in self.shards:
            raise ValueError(f"{self.prefix}: unexpected shard {shard_id!r} (have {list(self.shards)})")
        offset, size = self.shards[shard_id]
        if self.parallel is not None:
            tensor = self.rank_part(param_name, tensor, shard_id)
        self.method.load(self, param_name, tensor, offset, size)

    def rank_part(self, param_name: str, tensor: torch.Tensor, shard_id=None) -> torch.Tensor:
        """This rank's part of checkpoint tensor `param_name` of shard `shard_id` (whole-layer
        sizes), cut along the dims the method's `shard_dims` names."""
        out_dim, in_dim = self.method.shard_dims(param_name, tensor)
        what = f"{self.prefix}.{param_name}"
        if self.parallel == "column" and out_dim is not None:
            full, start = self.tp_rows[shard_id]
            tensor = narrow_features(tensor, out_dim, full, start, self.shards[shard_id][1], what)
        elif self.parallel == "row":
            if in_dim is not None:
                tensor = narrow_features(tensor, in_dim, self.full_in_features, self.in_start, self.in_features, what)
            elif param_name == "bias" and self.tp.rank:
                tensor = torch.zeros_like(tensor)  # the summed partial outputs get the bias once
        return tensor

    def dummy_part(self, param_name: str, full: torch.Tensor) -> torch.Tensor:
        """This rank's rows and columns of a float weight of the whole layer [sum(out_sizes), in]
        (random weights of `--load-format dummy`, drawn alike on every rank)."""
        if self.parallel == "row":
            return full[:, self.in_start:self.in_start + self.in_features]
        if self.parallel != "column":
            return full
        parts, base = [], 0
        for sid, (full_rows, start) in self.tp_rows.items():
            parts.append(full[base + start:base + start + self.shards[sid][1]])
            base += full_rows
        return torch.cat(parts)

    @property
    def full_out_features(self) -> int:
        return sum(full for full, _ in self.tp_rows.values())

    def process_weights_after_loading(self) -> None:
        self.method.process_weights_after_loading(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.method.apply(self, x)
        out = out if self.lora is None else self.lora.apply(x, out)
        return self.tp.all_reduce(out) if self.parallel == "row" else out

    def forward_normed(self, x: torch.Tensor, residual: torch.Tensor | None, norm: nn.Module):
        """This layer on norm(x + residual); returns (output, x + residual). See LinearMethod.apply_normed."""
        lora = self.lora
        if lora is None or lora.fuses_prologue():
            out, residual = self.method.apply_normed(self, x, residual, norm)
            out = out if lora is None else lora.apply_normed(residual, norm, out)
            return (self.tp.all_reduce(out) if self.parallel == "row" else out), residual
        h, residual = (norm(x), x) if residual is None else norm(x, residual)
        return self.forward(h), residual

    def forward_silu_mul(self, x: torch.Tensor) -> torch.Tensor:
        """This layer on silu(gate) * up for x = [gate | up]. See LinearMethod.apply_silu_mul."""
        lora = self.lora
        if lora is None or lora.fuses_prologue():
            out = self.method.apply_silu_mul(self, x)
            out = out if lora is None else lora.apply_silu_mul(x, out)
            return self.tp.all_reduce(out) if self.parallel == "row" else out
        return self.forward(silu_and_mul(x))


def narrow_features(tensor: torch.Tensor, dim: int, full: int, start: int, size: int, what: str) -> torch.Tensor:
    """Rows [start, start + size) of `full` along `dim` of a tensor that spans them in proportion
    (packed codes, block scales: `full` / tensor.shape[dim] features per entry); an extent of 1 is
    one value for every feature and is kept whole."""
    extent = tensor.shape[dim]
    if extent == 1 and full > 1:
        return tensor
    if (start * extent) % full or (size * extent) % full:
        raise ValueError(f"{what}: {extent} entries for {full} features cannot be cut at feature {start} "
                         f"into {size} for tensor parallelism (the slice does not fall on whole entries)")
    return tensor.narrow(dim, start * extent // full, size * extent // full)
