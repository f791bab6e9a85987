"""Multi-LoRA serving: adapters read from PEFT directories, a pool of device slots, per-forward
segment info for the selected LoRA backend, and the scheduler's side (which adapters a batch may
use). See docs/architecture.md (LoRA) and docs/plugins.md (LoRABackend)."""
