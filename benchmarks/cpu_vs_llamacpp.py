"""jackfield against llama.cpp on the CPU, side by side in one run, on the same GGUF (default: the
embedded SmolLM2 Q4_1).

decode   batch-1 decode: jackfield's `Engine` in its default configuration in this process and
         llama.cpp through llama-cpp-python in a child process, the same prompt tokens, N new
         tokens with EOS ignored, prefill included (no prefix cache: jackfield's is flushed,
         llama.cpp's context reset), the two alternating for --rounds rounds; median tok/s of
         each and the ratio.
serving  `jackfield serve` and llama.cpp's own `llama-server -np 32` (parallel slots, continuous
         batching), one at a time, each measured by `jackfield bench serving` (random 128 in / 32
         out) at concurrency 1, 8 and 32. llama-server is built with cmake from the llama.cpp
         sources that llama-cpp-python's source package vendors, into <jackfield cache>/llama-server
         (built once; `pip download` of the sdist needs the package index).

Needs llama-cpp-python (pip install 'jackfield[gguf]'). Writes one JSON report per part to --out.
Usage: python benchmarks/cpu_vs_llamacpp.py [decode] [serving] [--threads 2] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

PROMPT = "Once upon a time, in a small village nestled between two mountains, there lived an old clockmaker who"
CONCURRENCY = (1, 8, 32)


def llama_cpp_peer(conn, model: str, threads: int) -> None:
    """The llama.cpp side, in its own process: one round (tok/s of `new_tokens` greedy tokens after
    the prompt `ids`, EOS ignored, context reset first) per (ids, new_tokens) received; None ends it."""
    from llama_cpp import Llama

    llm = Llama(model_path=model, n_threads=threads, n_threads_batch=threads, n_ctx=1024, verbose=False)
    while (job := conn.recv()) is not None:
        ids, new_tokens = job
        llm.reset()
        t = time.perf_counter()
        n = sum(1 for _ in zip(range(new_tokens), llm.generate(ids, temp=0.0)))  # EOS does not stop it
        conn.send(n / (time.perf_counter() - t))


def decode(args) -> dict:
    """Rounds alternate between the two. llama.cpp runs in a child process: in this one its OpenMP
    worker team and jackfield's (on the scheduler thread) would share the cores, and libgomp stops
    spin-waiting when it counts more workers than cores, which slows both."""
    import multiprocessing as mp

    from jackfield import Engine

    ctx = mp.get_context("spawn")
    conn, child = ctx.Pipe()
    peer = ctx.Process(target=llama_cpp_peer, args=(child, args.model, args.threads), daemon=True)
    peer.start()
    results = {"jackfield": [], "llama.cpp": []}
    try:
        with Engine(model=args.model) as engine:
            quant = engine.loop.scheduler.runner.setup.choices["quantization"].name
            compiled = engine.loop.scheduler.runner.compiled_decode is not None
            ids = engine.tokenizer.encode(PROMPT)
            params = {"temperature": 0, "max_new_tokens": args.new_tokens, "ignore_eos": True}
            engine.generate(ids, params)  # warm-up: builds the ggml operator, compiles the decode step
            conn.send((ids, 8))
            conn.recv()
            for _ in range(args.rounds):
                engine.flush_cache()
                t = time.perf_counter()
                out = engine.generate(ids, params)
                results["jackfield"].append(len(out["token_ids"]) / (time.perf_counter() - t))
                conn.send((ids, args.new_tokens))
                results["llama.cpp"].append(conn.recv())
    finally:
        try:
            conn.send(None)
        except OSError:  # the peer is gone (it failed): keep the error that brought us here
            pass
        peer.join(30)
    med = {k: statistics.median(v) for k, v in results.items()}
    return {"part": "decode", "prompt_tokens": len(ids), "new_tokens": args.new_tokens, "threads": args.threads,
            "jackfield_quantization": quant, "jackfield_decode_compiled": compiled, "tok_per_s": results,
            "median_tok_per_s": med, "ratio_jackfield_over_llamacpp": med["jackfield"] / med["llama.cpp"]}


def llama_server(cache: Path) -> Path:
    """Build llama-server from llama-cpp-python's vendored llama.cpp (same version as the package)."""
    from importlib.metadata import version

    ver = version("llama-cpp-python")
    root = cache / "llama-server" / ver
    binary = root / "build" / "bin" / "llama-server"
    if binary.is_file():
        return binary
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d", str(root),
                    f"llama-cpp-python=={ver}"], check=True)
    sdist = next(root.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        tar.extractall(root, filter="data")
    src = next(root.glob("llama_cpp_python-*/vendor/llama.cpp"))
    subprocess.run(["cmake", "-S", str(src), "-B", str(root / "build"), "-DCMAKE_BUILD_TYPE=Release",
                    "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                    "-DLLAMA_CURL=OFF", "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=OFF"], check=True)
    subprocess.run(["cmake", "--build", str(root / "build"), "--target", "llama-server", "-j", str(os.cpu_count())],
                   check=True)
    return binary


def wait_ready(url: str, proc: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not ready after {seconds} s")


def bench_server(label: str, cmd: list[str], port: int, args, tokenizer: str) -> list[dict]:
    log = open(Path(args.out) / f"cpu-vs-llamacpp-{label}-server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    rows = []
    try:
        wait_ready(f"http://127.0.0.1:{port}/health", proc)
        for conc in CONCURRENCY:
            out_file = Path(args.out) / f"cpu-vs-llamacpp-serving-{label}-c{conc}.json"
            subprocess.run([sys.executable, "-m", "jackfield.cli", "bench", "serving", "--base-url", f"http://127.0.0.1:{port}",
                            "--backend", "openai", "--dataset", "random", "--random-input-len", "128",
                            "--random-output-len", "32", "--random-range-ratio", "1.0", "--num-prompts",
                            str(max(8, conc * 2)), "--max-concurrency", str(conc), "--tokenizer", tokenizer,
                            "--disable-tqdm", "--output-file", str(out_file)], check=True, stdout=subprocess.DEVNULL)
            metrics = json.loads(out_file.read_text())
            metrics = metrics.get("metrics", metrics)
            rows.append({"server": label, "concurrency": conc, "output_tok_per_s": metrics["output_throughput"],
                         "median_ttft_ms": metrics.get("median_ttft_ms"), "median_itl_ms": metrics.get("median_itl_ms"), "failed": metrics.get("failed")})
            print(rows[-1], flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return rows


def serving(args) -> dict:
    from jackfield.loader.gguf import cache_root, convert_gguf

    tokenizer = str(convert_gguf(args.model))
    binary = llama_server(cache_root())
    slots = max(CONCURRENCY)
    jf = [sys.executable, "-m", "jackfield.cli", "serve", "--model", args.model, "--port", "30101"]
    lc = [str(binary), "-m", args.model, "--host", "127.0.0.1", "--port", "30102", "-np", str(slots),
          "-c", str(slots * 256), "-t", str(args.threads), "-tb", str(args.threads), "--cont-batching"]
    rows = bench_server("jackfield", jf, 30101, args, tokenizer) + bench_server("llama-server", lc, 30102, args, tokenizer)
    ratios = {}
    for conc in CONCURRENCY:
        ours, peer = (next(r["output_tok_per_s"] for r in rows if r["server"] == s and r["concurrency"] == conc)
                      for s in ("jackfield", "llama-server"))
        ratios[f"c{conc}"] = ours / peer
    return {"part": "serving", "threads": args.threads, "rows": rows, "ratio_jackfield_over_llama_server": ratios}


def main() -> None:
    from jackfield.bench.common import git_commit

    from jackfield.loader.default_model import default_model_path

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("parts", nargs="*", choices=["decode", "serving"], default=["decode", "serving"])
    p.add_argument("--model", default=None, help="GGUF file (default: the embedded SmolLM2)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    args.model = args.model or default_model_path()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M", time.gmtime())
    for part in dict.fromkeys(args.parts):
        report = {"decode": decode, "serving": serving}[part](args)
        report.update(command="python " + " ".join(sys.argv), model=args.model, date_utc=stamp,
                      git_commit=git_commit(), machine=os.uname().nodename, cpus=os.cpu_count())
        path = Path(args.out) / f"cpu-vs-llamacpp-{part}-{stamp}.json"
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps({k: v for k, v in report.items() if k not in ("rows", "tok_per_s")}, indent=2))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
