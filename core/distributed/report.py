"""The startup layout report: one line per rank saying what it holds."""
from __future__ import annotations


def describe_ranks(ranks: tuple) -> list[str]:
    """Lines for the ranks' `describe_rank` dicts (none on one rank)."""
    lines = []
    for r in ranks:
        parts = [f"rank {r['rank']} on {r['device']}: heads {r['heads'][0]}..{r['heads'][1] - 1}",
                 f"KV heads {r['kv_heads'][0]}..{r['kv_heads'][1] - 1}"]
        if "experts" in r:
            parts.append(f"experts {r['experts'][0]}..{r['experts'][1] - 1}")
        parts.append(f"KV cache {r['kv_tokens']} tokens ({r['kv_bytes'] / 2**20:.1f} MiB), "
                     f"weights {r['weight_bytes'] / 2**20:.1f} MiB")
        lines.append(", ".join(parts))
    return lines
