"""Print a short table of benchmark JSON reports (jackfield bench … --output-file)."""
import json
import sys


def row(path: str) -> str:
    with open(path) as f:
        rep = json.load(f)
    m = rep.get("metrics", rep)
    name = path.rsplit("/", 1)[-1].rsplit("-", 2)[0]
    if "results" in m and m["results"] and "jackfield" in m["results"][0]:
        parts = []
        for r in m["results"]:
            j = r["jackfield"]
            s = f"bs{j['batch_size']} decode {j['decode_tok_per_s']:.1f} tok/s prefill {j['prefill_s'] * 1e3:.0f} ms"
            if "transformers" in r:
                s += f" | HF {r['transformers']['decode_tok_per_s']:.1f} tok/s (x{r['speedup_decode']:.2f})"
            parts.append(s)
        return f"{name:28s} {m.get('attention_backend', '')}: " + "; ".join(parts)
    if "output_tok_per_s" in m and "num_prompts" in m and "radix_on" not in m:
        line = (f"{name:28s} {m['output_tok_per_s']:.0f} output tok/s, {m['total_s']:.2f} s "
                f"(prefill {m.get('prefill_steps_s', 0):.2f} s, decode {m.get('decode_only_steps_s', 0):.2f} s)")
        hf = m.get("transformers")
        if hf:
            line += (f" | HF {hf['output_tok_per_s']:.0f} tok/s (x{m['speedup_output_tok_per_s']:.1f})"
                     if "output_tok_per_s" in hf else f" | HF failed: {hf.get('error', '')[:80]}")
        return line
    if m.get("results") and "speedup" in m["results"][0]:  # bench spec, spec_oracle.py
        return f"{name:28s} " + "; ".join(
            f"bs{r['batch_size']}{' a=%s' % r['accept_length_drafted'] if 'accept_length_drafted' in r else ''} "
            f"x{r['speedup']:.2f} (accept {r['accept_length'] or 0:.2f}, differ {r['outputs_differing']}"
            + (f", beyond ties {r['diverged_beyond_margin']}" if "diverged_beyond_margin" in r else "") + ")"
            for r in m["results"])
    if m.get("results") and "ratio" in m["results"][0]:  # spec_verify_cost.py
        return f"{name:28s} verify/decode " + "; ".join(
            f"bs{r['batch_size']} n{r['tokens_per_request']} {r['verify_ms']:.2f}/{r['decode_ms']:.2f} ms x{r['ratio']:.2f}"
            for r in m["results"])
    if "radix_on" in m:
        return (f"{name:28s} radix on {m['radix_on']['total_s']:.2f} s / off {m['radix_off']['total_s']:.2f} s "
                f"(x{m['speedup_total_time']:.2f}), prefill tokens x{m['prefill_token_ratio']:.1f}")
    if "median_ttft_ms" in m:
        return (f"{name:28s} out {m['output_throughput']:.0f} tok/s TTFT p50 {m['median_ttft_ms']:.0f} "
                f"p99 {m['p99_ttft_ms']:.0f} ms ITL p50 {m['median_itl_ms']:.1f} p99 {m['p99_itl_ms']:.1f} ms")
    return f"{name:28s} " + ", ".join(f"{k}={v}" for k, v in list(m.items())[:6])


if __name__ == "__main__":
    for p in sys.argv[1:]:
        try:
            print(row(p))
        except Exception as exc:
            print(f"{p}: unreadable ({exc})")
