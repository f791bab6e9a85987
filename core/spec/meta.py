"""The per-request speculative-decoding numbers reported in meta info (native API, offline Engine)."""
from __future__ import annotations


def spec_meta(spec: dict) -> dict:
    """From a ReqOutput's `spec` counters: verify forwards, tokens gained per verify forward
    (accepted drafts + the target's own), and the share of proposed draft tokens accepted."""
    return {"spec_verify_ct": spec["verify_ct"], "spec_accept_length": spec["emitted"] / spec["verify_ct"],
            "spec_accept_rate": spec["accepted"] / spec["proposed"] if spec["proposed"] else 0.0,
            "spec_draft_tokens": spec["proposed"], "spec_accepted_tokens": spec["accepted"]}
