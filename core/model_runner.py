"""ModelRunner: owns the model, the KV pool and the attention backend; runs one forward per batch."""
from __future__ import annotations

import logging
import time

import torch

from jackfield.embedding import headless_weights
from jackfield.hybrid_attention import build_attention_backend
from jackfield.loader.weights import init_dummy_weights, iter_safetensors
from jackfield.loader.compact import compact_cuda_weights
from jackfield.decode_compile import CompiledDecode, compile_reason
from jackfield.lora.setup import build_lora_manager, load_startup_adapters
from jackfield.mem.allocator import TokenAllocator
from jackfield.mem.req_to_token import ReqToTokenPool
from jackfield.runtime_setup import RuntimeSetup
from jackfield.sampling.sampler import Sampler
from jackfield.scheduler.prompt_readout import PromptReadout, PromptResult, read_prompt
from jackfield.sdk.attention import AttentionRuntime
from jackfield.sdk.forward_batch import ForwardBatch
from jackfield.sdk.gguf import GGUF_FORMAT
from jackfield.sdk.kv_cache import KV_CACHE_DTYPES, KVPool
from jackfield.sdk.model import ModelBuildContext
from jackfield.sdk.parallel import SINGLE
from jackfield.sdk.quant import QuantOptions
from jackfield.distributed.group import RankGroup
from jackfield.distributed.lockstep import BatchBroadcaster, rank_kv_layout

log = logging.getLogger(__name__)
CPU_DEFAULT_KV_BYTES = 1 << 30


def tensor_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's weights as stored: every parameter (quantized weights at their packed
    size, with their scales) and persistent buffer; caches such as rotary tables are not counted."""
    tensors = {id(p): p for p in model.parameters()}
    for module in model.modules():
        for name, buf in module.named_buffers(recurse=False):
            if buf is not None and name not in module._non_persistent_buffers_set:
                tensors[id(buf)] = buf
    return sum(t.numel() * t.element_size() for t in tensors.values())


def set_kv_scales(pool: KVPool, model: torch.nn.Module) -> None:
    """Give an FP8 pool the checkpoint's per-layer K/V scales (attention layers' `k_scale` /
    `v_scale`); a layer without them gets 1.0, with a warning."""
    missing = []
    for module in model.modules():
        info = getattr(module, "info", None)
        if info is None or not hasattr(module, "k_scale"):
            continue
        k, v = module.k_scale, module.v_scale
        if k is None or v is None:
            missing.append(info.layer_id)
        pool.set_scales(info.layer_id, k or 1.0, v or 1.0)
    if missing:
        log.warning("FP8 KV cache: the checkpoint has no k_scale/v_scale for %d of %d layers; they use 1.0 "
                    "(values beyond +-448 saturate)", len(missing), pool.num_layers)


class ModelRunner:
    def __init__(self, setup: RuntimeSetup, progress: bool = True, draft_memory: tuple[int, int] = (0, 0),
                 ranks: RankGroup | None = None):
        """`draft_memory`: (weight bytes, KV bytes per token) of a speculative draft model that will
        share the KV budget, holding as many tokens as this runner's pool. `ranks`: this rank's
        groups under tensor parallelism (jackfield.distributed); the model and the KV pool then
        hold this rank's heads, and rank 0's runner broadcasts every batch it runs (lockstep.py)."""
        self.setup = setup
        self.ranks = ranks
        self.tp = ranks.tp if ranks is not None else SINGLE
        self.followers = None  # rank 0 on its node: the follower rank processes (jackfield.distributed.ranks)
        self.draft_memory = draft_memory
        s, cfg = setup.settings, setup.model_config
        self.device, self.dtype, self.config = setup.device, setup.dtype, cfg
        self.context_len = setup.context_len
        t0 = time.perf_counter()
        self.lora = build_lora_manager(setup)  # before the model: its Linear layers ask it for LoRA slots
        self.model = self._load_model(progress)
        if self.device.type == "cuda":
            compact_cuda_weights(self.model)  # before the KV budget reads free memory
        if self.lora is not None:
            self.lora.finish_build()
            load_startup_adapters(self.lora, s)
        self.load_seconds = time.perf_counter() - t0
        self.weight_bytes = tensor_bytes(self.model)
        self.kv_dtype = KV_CACHE_DTYPES.get(s.kv_cache_dtype, self.dtype)
        log.info("model weights: %.3f GiB (quantization %s); KV cache dtype %s", self.weight_bytes / 2**30,
                 setup.choices["quantization"].name, str(self.kv_dtype).removeprefix("torch."))
        self.page_size = s.page_size
        self.kv_layout = rank_kv_layout(self.model.kv_layout(cfg), self.tp.size)  # the model says; this rank's heads
        self.max_total_tokens = self._kv_capacity()
        num_pages = self.max_total_tokens // self.page_size
        self.max_total_tokens = num_pages * self.page_size
        self.max_running_requests = s.max_running_requests or max(1, min(256 if self.device.type == "cuda" else 64,
                                                                          self.max_total_tokens // 2))
        self.req_to_token_pool = ReqToTokenPool(self.max_running_requests, self.context_len + 1, self.device)
        layout = self.kv_layout
        self.kv_pool = KVPool(num_pages, self.page_size, cfg.num_layers, layout.num_kv_heads, layout.k_dim, self.kv_dtype,
                              self.device, layout=layout)
        if self.kv_pool.quantized:
            set_kv_scales(self.kv_pool, self.model)
        self.allocator = TokenAllocator(num_pages, self.page_size, self.device)
        runtime = AttentionRuntime(cfg.num_layers, cfg.num_heads // self.tp.size, layout.num_kv_heads, layout.k_dim, self.dtype, self.device,
                                   self.page_size, self.kv_pool, self.req_to_token_pool.req_to_token,
                                   self.max_running_requests, self.context_len + 1)
        self.attn_backend = build_attention_backend(setup.choices, runtime)
        self.broadcaster = (BatchBroadcaster(ranks, self.req_to_token_pool.req_to_token)
                            if ranks is not None and ranks.rank == 0 else None)
        self.sampler = Sampler(cfg.vocab_size, self.max_running_requests + 1, self.device, seed=s.seed)
        self.capture_hidden = False  # speculative decoders that read hidden states (EAGLE) turn it on
        self.verify_graphs = None    # jackfield.spec.verify_graph.VerifyGraphRunner, with a speculative decoder
        self.graph_runner = None
        self.compiled_decode = None  # without CUDA graphs: the model's forward compiled for decode steps
        graphs_ok = self.lora is None or self.lora.backend.supports_cuda_graph
        if self.lora is not None and not graphs_ok:
            log.info("decode CUDA graphs are off: LoRA backend '%s' does not support them", self.lora.backend.name)
        moe = setup.choices.get("moe")
        if cfg.num_experts and moe and moe.info and not moe.info.cls.supports_cuda_graph:
            graphs_ok = False
            log.info("decode CUDA graphs are off: MoE dispatcher '%s' does not support them", moe.info.cls.name)
        if cfg.num_experts and s.ep_size > 1:
            graphs_ok = False
            log.info("decode CUDA graphs are off: expert parallelism reads the all-to-all split sizes on the host")
        if self.device.type == "cuda" and not s.disable_cuda_graph and self.attn_backend.supports_cuda_graph and graphs_ok:
            from jackfield.cuda_graph import CudaGraphRunner

            self.graph_runner = CudaGraphRunner(self, s.cuda_graph_max_bs, compile_model=s.enable_torch_compile)
        else:
            quantized = setup.choices["quantization"].name != "unquantized"
            reason = compile_reason(s, self.device, quantized, cfg.num_experts, self.lora is not None, self.tp.size)
            if reason is None:
                self.compiled_decode = CompiledDecode(self.model)
            log.info("decode step compiled: %s", "yes" if reason is None else f"no, {reason}")

    def _load_model(self, progress: bool) -> torch.nn.Module:
        st, cfg = self.setup, self.config
        options = QuantOptions(gemm_backend=st.settings.quantization_gemm_backend,
                               quantize_lm_head=st.settings.quantize_lm_head)
        quant = st.choices["quantization"].info.cls(cfg, options)
        if options.quantize_lm_head and quant.lm_head_method() is None:
            raise ValueError(f"quantize_lm_head: the quantization method {st.choices['quantization'].name!r} keeps "
                             f"the LM head plain; fp8 and int8_wo quantize it on load")
        moe_choice = st.choices.get("moe")
        ctx = ModelBuildContext(quant=quant, dtype=self.dtype, device=self.device,
                                moe=moe_choice.info.cls if moe_choice and moe_choice.info and cfg.num_experts else None,
                                lora=self.lora, tp=self.tp, ep=self.tp if st.settings.ep_size > 1 else SINGLE)
        model_cls = st.choices["model"].info.cls
        with torch.device(self.device):
            model = model_cls(cfg, ctx, max_positions=self.context_len + 1)
        if st.source.load_format == "dummy":
            init_dummy_weights(model, st.settings.seed)
        else:
            weights = self._weights(quant, progress)
            model.load_weights(headless_weights(weights) if st.embedding.headless else weights)
        return model.eval()

    def _weights(self, quant, progress: bool):
        """The checkpoint's tensors: a GGUF file's own blocks for a method that keeps them, else the
        (converted) safetensors."""
        gguf_file = self.setup.source.gguf_file
        if gguf_file is not None and GGUF_FORMAT in quant.checkpoint_formats:
            from jackfield.loader.gguf_weights import iter_gguf_quantized

            return iter_gguf_quantized(gguf_file, progress=progress)
        return iter_safetensors(self.setup.source.path, progress=progress)

    def _kv_capacity(self) -> int:
        s, cfg = self.setup.settings, self.config
        per_token = self.kv_layout.bytes_per_token(cfg.num_layers, self.kv_dtype)
        per_token += self.draft_memory[1]
        if self.device.type == "cuda" and not s.kv_cache_bytes:
            torch.cuda.empty_cache()  # return load-time temporaries (weight repacking) first
            free, total = torch.cuda.mem_get_info(self.device)
            frac = s.mem_fraction_static or 0.85
            budget = int(total * frac) - (total - free) - self.draft_memory[0]
            if budget <= 0:
                raise ValueError(f"no GPU memory left for the KV cache (mem_fraction_static={frac}); raise it")
        else:  # an explicit budget (on GPU too: independent of what other processes hold)
            budget = s.kv_cache_bytes or CPU_DEFAULT_KV_BYTES
        tokens = budget // per_token
        if s.max_total_tokens:
            tokens = min(tokens, s.max_total_tokens)
        if self.ranks is not None:  # rank 0 hands out the slots: every rank must hold as many
            tokens = self.ranks.min_over_ranks(int(tokens))
        if tokens < self.page_size * 2:
            raise ValueError(f"KV budget of {budget} bytes holds only {tokens} tokens ({per_token} bytes each)")
        return int(tokens)

    @torch.inference_mode()
    def forward(self, fb: ForwardBatch) -> torch.Tensor:
        """Run the model on one batch; returns logits for `fb.logits_indices` (default: last token per request).

        With `capture_hidden` the hidden states of every token (or, for a model with capture layers,
        the concatenated inputs of those layers) are left in `fb.extras["spec_hidden"]`."""
        if self.broadcaster is not None:
            self.broadcaster.send(fb)
        if self.graph_runner is not None and self.graph_runner.can_run(fb):
            return self.graph_runner.replay(fb)
        if self.verify_graphs is not None and self.verify_graphs.can_run(fb):
            return self.verify_graphs.replay(fb)
        return self._logits(self._hidden(fb), fb)

    @torch.inference_mode()
    def forward_reading(self, fb: ForwardBatch, readout: PromptReadout) -> tuple[torch.Tensor, PromptResult]:
        """An extend forward that also reads prompt logprobs / pooled hidden states (`prompt_readout.py`)."""
        if self.broadcaster is not None:
            self.broadcaster.send(fb, readout)
        hidden = self._hidden(fb)
        return self._logits(hidden, fb), read_prompt(self.model, hidden, readout)

    def abandon_ranks(self) -> None:
        """After a failed forward under tensor parallelism (Scheduler.recover): kill node 0's other
        ranks, which may be gone or stuck in a collective (another node's ranks fail in their next
        collective); `close` then only leaves the process groups."""
        if self.broadcaster is not None:
            self.broadcaster.stopped = True
        if self.followers is not None:
            self.followers.kill()
            self.followers = None

    def close(self) -> None:
        """Release the follower ranks (rank 0) and leave the process groups; idempotent."""
        if self.broadcaster is not None:
            self.broadcaster.stop()
        if self.followers is not None:
            self.followers.join()
            self.followers = None
        if self.ranks is not None:
            self.ranks.close()

    def _hidden(self, fb: ForwardBatch) -> torch.Tensor:
        self.attn_backend.init_forward_metadata(fb)
        if self.lora is not None:
            self.lora.prepare(fb)
        # a speculative decoder reading hidden states (EAGLE) toggles the model's layer capture: eager
        if self.compiled_decode is not None and fb.mode.is_decode() and not self.capture_hidden:
            hidden = self.compiled_decode(fb.input_ids, fb.positions, fb)
        else:
            hidden = self.model(fb.input_ids, fb.positions, fb)
        if self.capture_hidden:
            fb.extras["spec_hidden"] = fb.extras.pop("aux_hidden", hidden)
        return hidden

    def _logits(self, hidden: torch.Tensor, fb: ForwardBatch) -> torch.Tensor:
        idx = fb.logits_indices
        if idx is None:
            if not fb.mode.is_decode():
                idx = fb.extend_start_loc.long() + fb.extend_seq_lens.long() - 1
            else:
                idx = torch.arange(fb.batch_size, device=hidden.device)
        return self.model.compute_logits(hidden[idx])
