"""Speculative decoding inside the engine: draft trees, verification, load policy, draft runners."""
