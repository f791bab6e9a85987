"""Plot the benchmark reports in benchmarks/results/*.json as PNG charts.

Usage:
    python3 benchmarks/plot.py [--results benchmarks/results] [--out docs/img] [--stamp STAMP]

Writes gpu-batch1-decode.png, gpu-offline.png, gpu-serving-latency.png, gpu-prefix-overlap.png
and cpu-batch1-decode.png into --out. Reports are named NAME-STAMP.json (STAMP is
YYYYMMDD-HHMM) and "latest" means the highest STAMP; --stamp STAMP ignores reports
newer than STAMP. A plot whose inputs are missing is skipped with a note.
Needs matplotlib (pip install matplotlib).
"""
import argparse
import glob
import json
import os
import re
import sys

BANDWIDTH_CEILING = 188  # tok/s, Llama-3.1-8B bf16 batch 1 on H100: weight bytes / HBM bandwidth
GOAL = 165  # tok/s
OFFLINE_GOAL = 10_000  # output tok/s
BLUE, GRAY = "tab:blue", "tab:gray"


def dig(d, *keys):
    """d[k1][k2]..., or None as soon as a level is missing."""
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def load_reports(results, max_stamp):
    """[(name, stamp, report)] for each readable NAME-STAMP.json, oldest stamp first."""
    reports = []
    for path in glob.glob(os.path.join(results, "*.json")):
        m = re.fullmatch(r"(.+)-(\d{8}-\d{4})\.json", os.path.basename(path))
        if not m or (max_stamp and m.group(2) > max_stamp):
            continue
        try:
            with open(path) as f:
                rep = json.load(f)
        except (OSError, ValueError) as exc:
            print(f"note: skipping unreadable {path} ({exc})")
            continue
        if isinstance(rep, dict):
            reports.append((m.group(1), m.group(2), rep))
    return sorted(reports, key=lambda t: t[1])


def latest(reports, pattern):
    """{first regex group, or the name: (stamp, report)}: the newest report whose name matches."""
    out = {}
    for name, stamp, rep in reports:  # oldest first, so newer ones overwrite
        m = re.fullmatch(pattern, name)
        if m:
            out[m.group(1) if m.groups() else name] = (stamp, rep)
    return out


def entry(rep, bs, engine="jackfield"):
    """The `engine` dict of a latency report's batch-size-bs row ({} if absent)."""
    for r in dig(rep, "metrics", "results") or []:
        if dig(r, "jackfield", "batch_size") == bs and isinstance(r.get(engine), dict):
            return r[engine]
    return {}


def decode(rep, bs, engine="jackfield"):
    return entry(rep, bs, engine).get("decode_tok_per_s")


def subtitle(used):
    """'<first date> to <last date> UTC · <device>' from the (stamp, report) pairs plotted."""
    dates = sorted({str(r["date"])[:16].replace("T", " ") for _, r in used if r.get("date")})
    if not dates:
        when = "run " + ", ".join(sorted({s for s, _ in used}))
    else:
        when = (dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}") + " UTC"
    devices = []
    for _, r in used:
        m = r.get("machine") or {}
        dev = m.get("gpu") or (f"CPU, {m['cpu_count']} cores, torch {m.get('torch')}" if "cpu_count" in m else None)
        if dev and dev not in devices:
            devices.append(dev)
    return " · ".join([when] + devices)


def bars(ax, labels, values, colors, notes=None, inside=False):
    if not values:
        return ax.text(0.5, 0.5, "no report", ha="center", transform=ax.transAxes)
    rects = ax.bar(labels, values, color=colors[:len(values)])
    ax.bar_label(rects, notes or [f"{v:,.0f}" for v in values], fontsize=8,
                 padding=-12 if inside else 3, color="white" if inside else "black")
    ax.margins(y=0.15)


def save(plt, fig, title, used, out, filename):
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.suptitle(title, fontsize=11, y=0.98)
    fig.text(0.5, 0.91, subtitle(used), ha="center", fontsize=7, color="dimgray")
    fig.savefig(os.path.join(out, filename), dpi=100)
    plt.close(fig)
    print(f"wrote {os.path.join(out, filename)}")


def plot_batch1(plt, reports, out):
    # one bar per backend: its newest plain or PDL-on report (A/B baselines such as -pdloff, -base are left out)
    points = [(k, s, r) for k, (s, r) in sorted(latest(reports, r"latency-8b-([a-z_]+?)(?:-pdlon)?").items())
              if decode(r, 1)]
    if not points:
        return print("note: no batch-1 latency-8b-<backend> report, skipping gpu-batch1-decode.png")
    labels = [f"jackfield\n{k}" for k, _, _ in points]
    values = [decode(r, 1) for _, _, r in points]
    used = [(s, r) for _, s, r in points]
    # transformers: the newest compiled batch-1 figure, else the newest eager one
    hf = [(entry(r, 1, "transformers").get("compiled") is True, s, r)
          for name, s, r in reports if name.startswith("latency-8b-") and decode(r, 1, "transformers")]
    if hf:
        compiled, s, r = max(hf, key=lambda t: t[:2])
        labels.append("transformers\n" + ("torch.compile" if compiled else "eager"))
        values.append(decode(r, 1, "transformers"))
        used.append((s, r))
    fig, ax = plt.subplots(figsize=(7, 4))
    bars(ax, labels, values, [BLUE] * len(points) + [GRAY], inside=True)
    for y, text, color in [(BANDWIDTH_CEILING, "bandwidth ceiling", "tab:red"), (GOAL, "goal", "tab:green")]:
        ax.axhline(y, ls="--", lw=1, color=color)
        ax.text(len(labels) - 0.55, y, f"{text} {y} tok/s", va="bottom", ha="right", fontsize=8, color=color)
    ax.set_ylim(0, BANDWIDTH_CEILING * 1.12)
    ax.set_ylabel("decode throughput (tok/s)")
    save(plt, fig, "Batch-1 decode, Llama-3.1-8B shape (bf16)", used, out, "gpu-batch1-decode.png")


def plot_offline(plt, reports, out):
    points = [(k, s, r) for k, (s, r) in sorted(latest(reports, r"offline-8b-([a-z_]+?)(?:-pdlon)?").items())
              if dig(r, "metrics", "output_tok_per_s")]
    if not points:
        return print("note: no offline-8b-<backend> report, skipping gpu-offline.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    ms = [r["metrics"] for _, _, r in points]
    rects = ax.bar([f"jackfield\n{k}" for k, _, _ in points], [m["output_tok_per_s"] for m in ms], color=BLUE)
    ax.bar_label(rects, [f"{m['output_tok_per_s']:,.0f} tok/s\n\nprefill {m.get('prefill_steps_s', 0):.2f} s\n"
                         f"+ decode {m.get('decode_only_steps_s', 0):.2f} s" for m in ms],
                 label_type="center", fontsize=8, color="white")
    used = [(s, r) for _, s, r in points]
    # transformers: the newest report that ran its continuous batching side by side (--compare-transformers)
    hf = [(s, r) for name, s, r in reports
          if name.startswith("offline-8b-") and dig(r, "metrics", "transformers", "output_tok_per_s")]
    if hf:
        s, r = max(hf, key=lambda t: t[0])
        value = r["metrics"]["transformers"]["output_tok_per_s"]
        ax.bar_label(ax.bar(["transformers\ngenerate_batch"], [value], color=GRAY), [f"{value:,.0f} tok/s"],
                     fontsize=8)
        used.append((s, r))
    ax.axhline(OFFLINE_GOAL, ls="--", lw=1, color="tab:green")
    ax.text(len(used) - 0.55, OFFLINE_GOAL, f"goal {OFFLINE_GOAL:,} tok/s", va="bottom", ha="right", fontsize=8,
            color="tab:green")
    ax.set_ylim(0, OFFLINE_GOAL * 1.3)
    ax.set_ylabel("output tokens / s")
    m = ms[0]
    title = (f"Offline throughput, {m.get('num_prompts')} x ({m.get('input_len')} in, {m.get('output_len')} out), "
             "Llama-3.1-8B shape")
    save(plt, fig, title, used, out, "gpu-offline.png")


def add_tpot(r):
    """TPOT statistics from the per-request arrays, as `jackfield bench serving` computes them now:
    (e2e - ttft) / (output_len - 1) per request."""
    from jackfield.bench.report import stats_ms

    arrays = zip(r.get("e2e_latencies_ms", []), r.get("ttfts_ms", []), r.get("output_lens", []))
    tpot_s = [(e - t) / 1000.0 / (n - 1) for e, t, n in arrays if n > 1]
    if tpot_s:
        r.update({f"{stat}_tpot_ms": value for stat, value in stats_ms(tpot_s).items()})


def plot_serving(plt, reports, out):
    serving = [(int(name[12:]), s, r) for name, s, r in reports if re.fullmatch(r"serving-rate\d+", name)]
    if not serving:
        return print("note: no serving-rate<R> reports, skipping gpu-serving-latency.png")
    runs = sorted(run for run in serving if run[1] == max(s for _, s, _ in serving))
    for _, _, r in runs:
        if "median_tpot_ms" not in r:  # reports from before the bench computed TPOT
            add_tpot(r)
    fig, axes = plt.subplots(1, 2, figsize=(7, 4))
    for ax, metric, label in [(axes[0], "ttft", "time to first token"), (axes[1], "tpot", "time per output token")]:
        for stat, style, name in [("median", "o-", "p50"), ("p99", "s--", "p99")]:
            pts = [(rate, r.get(f"{stat}_{metric}_ms")) for rate, _, r in runs]
            pts = [(x, y) for x, y in pts if isinstance(y, (int, float))]
            ax.plot([x for x, _ in pts], [y for _, y in pts], style, label=name)
            for x, y in pts:
                ax.annotate(f"{y:.0f}", (x, y), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=7)
        ax.set_xticks([rate for rate, _, _ in runs])
        ax.set(xlabel="request rate (req/s)", ylabel=f"{label} (ms)", ylim=(0, ax.get_ylim()[1] * 1.08))
        ax.legend(fontsize=8)
    args = runs[-1][2].get("args") or {}
    title = (f"Online serving latency, {runs[-1][2].get('model', '?')} "
             f"({args.get('random_input_len', '?')} in / {args.get('random_output_len', '?')} out tokens)")
    save(plt, fig, title, [(s, r) for _, s, r in runs], out, "gpu-serving-latency.png")


def plot_prefix_overlap(plt, reports, out):
    prefix = latest(reports, r"prefix-8b").get("prefix-8b")
    metrics = dig(prefix and prefix[1], "metrics") or {}
    radix = [(k, metrics[k]) for k in ("radix_on", "radix_off") if isinstance(dig(metrics, k, "total_s"), (int, float))]
    overlap = latest(reports, r"overlap-(on|off)-1b")
    ovl = [(k, overlap[k]) for k in ("on", "off") if k in overlap and decode(overlap[k][1], 64)]
    if not radix and not ovl:
        return print("note: no prefix-8b or overlap-on/off-1b reports, skipping gpu-prefix-overlap.png")
    fig, (left, right) = plt.subplots(1, 2, figsize=(7, 4))
    tokens = [v.get("prefill_tokens_computed") for _, v in radix]
    notes = [f"{v['total_s']:.2f} s\n{t:,} prefill tok" if isinstance(t, int) else f"{v['total_s']:.2f} s"
             for (_, v), t in zip(radix, tokens)]
    bars(left, [k.replace("_", " ") for k, _ in radix], [v["total_s"] for _, v in radix], [BLUE, GRAY], notes)
    left.set_title(f"{metrics.get('num_prompts', '?')} prompts sharing a "
                   f"{metrics.get('prefix_len', '?')}-token prefix (8B)", fontsize=9)
    left.set_ylabel("total time (s)")
    bars(right, [f"overlap {k}" for k, _ in ovl], [decode(r, 64) for _, (_, r) in ovl], [BLUE, GRAY])
    right.set_title("Decode at batch 64 (1B shape)", fontsize=9)
    right.set_ylabel("decode throughput (tok/s)")
    used = ([prefix] if radix else []) + [sr for _, sr in ovl]
    save(plt, fig, "Radix prefix cache and overlap scheduling", used, out, "gpu-prefix-overlap.png")


def plot_cpu(plt, reports, out):
    kinds = {}
    for name, s, r in reports:  # oldest first, so the newest of each kind wins
        if name.startswith("cpu-latency-smollm2"):
            int4 = "--quantization int4_weight_only" in str(r.get("command", ""))
            kinds["jackfield int4_weight_only" if int4 else "jackfield float32"] = (s, r)
    if not kinds:
        return print("note: no cpu-latency-smollm2*.json reports, skipping cpu-batch1-decode.png")
    groups = sorted(kinds)
    fig, axes = plt.subplots(1, 2, figsize=(7, 4))
    for ax, bs in zip(axes, (1, 16)):
        for i, (engine, color) in enumerate([("jackfield", BLUE), ("transformers", GRAY)]):
            ys = [decode(kinds[g][1], bs, engine) or 0 for g in groups]
            rects = ax.bar([g + (i - 0.5) * 0.38 for g in range(len(groups))], ys, 0.38, color=color, label=engine)
            ax.bar_label(rects, [f"{y:.0f}" if y else "n/a" for y in ys], fontsize=8)
        ax.set_xticks(range(len(groups)), [g.replace(" ", "\n") for g in groups], fontsize=8)
        ax.set_title(f"batch {bs}", fontsize=9)
        ax.set_ylabel("decode throughput (tok/s)")
        ax.margins(y=0.15)
    axes[0].legend(fontsize=8, loc="upper left")
    model = os.path.basename(str(dig(kinds[groups[0]][1], "metrics", "model") or "SmolLM2")).split(".")[0]
    save(plt, fig, f"CPU decode, {model}", list(kinds.values()), out, "cpu-batch1-decode.png")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="benchmarks/results", help="folder of NAME-STAMP.json reports")
    parser.add_argument("--out", default="docs/img", help="folder for the PNGs")
    parser.add_argument("--stamp", help="ignore reports newer than this YYYYMMDD-HHMM stamp")
    args = parser.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("error: matplotlib is not installed; run `pip install matplotlib`")
    reports = load_reports(args.results, args.stamp)
    if not reports:
        sys.exit(f"error: no NAME-STAMP.json reports in {args.results}")
    os.makedirs(args.out, exist_ok=True)
    for plot in (plot_batch1, plot_offline, plot_serving, plot_prefix_overlap, plot_cpu):
        plot(plt, reports, args.out)


if __name__ == "__main__":
    main()
