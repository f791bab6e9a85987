"""CUTLASS Hopper GEMMs, y = x W^T in bf16 on sm_90: the experiment behind docs/benchmarks.md's
"CUTLASS sm90 GEMMs" section (seventh session). The engine does not use them: no configuration
beat cuBLAS by more than a few percent at the 8B shapes, decode (64-512 rows) or prefill (16K rows).

`cutlass_gemm.cu` (beside this file) instantiates a table of CUTLASS 3 warp-specialized kernels
(TMA loads, wgmma, cooperative kernels under a stream-K/split-K/data-parallel tile scheduler,
ping-pong kernels under a persistent one); the tile schedule (mode, swizzle, raster order) is a
run-time argument. It is compiled with nvcc against CUTLASS's headers and loaded with ctypes (no
PyTorch C++ extension, so the library does not depend on the torch build). It needs:
- nvcc (CUDA 12.3+): `$JACKFIELD_NVCC`, `$CUDA_HOME/bin/nvcc`, `nvcc` on PATH, or the
  `nvidia-cuda-nvcc` wheel;
- CUTLASS 3.5+ headers: `$JACKFIELD_CUTLASS_DIR`, or the copy the `flashinfer-python` wheel ships;
- a compute capability 9.0 GPU to run.
`library()` raises `CutlassUnavailable` naming what is missing. `$JACKFIELD_CUTLASS_LIB` names a
library built elsewhere (same source; nvcc needs no GPU, so it can be built on a CPU machine) and
skips the build. Otherwise the build goes to `$JACKFIELD_CACHE_DIR/cutlass/<hash>/` (default
`~/.cache/jackfield`), keyed by the source, the flags, the CUTLASS version and nvcc's, and takes
1-2 minutes.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cutlass_gemm.cu")
FLAGS = ["-std=c++17", "-O3", "-DNDEBUG", "--expt-relaxed-constexpr", "-gencode=arch=compute_90a,code=sm_90a",
         "-shared", "-Xcompiler", "-fPIC", "-diag-suppress=20012,20013,20014,20015"]
MODES = {"heuristic": 0, "data_parallel": 1, "split_k": 2, "stream_k": 3}
RASTERS = {"heuristic": 0, "along_m": 1, "along_n": 2}


def schedule(mode: str = "heuristic", splits: int = 1, swizzle: int = 1, raster: str = "heuristic") -> int:
    """The packed tile-schedule word of `cutlass_gemm.cu` (mode, split-K ways, swizzle, raster order)."""
    return MODES[mode] | splits << 4 | swizzle << 12 | RASTERS[raster] << 20


class CutlassUnavailable(RuntimeError):
    """The CUTLASS GEMMs cannot run here; the message says why."""


def _find_nvcc() -> str:
    candidates = [os.environ.get("JACKFIELD_NVCC")]
    if os.environ.get("CUDA_HOME"):
        candidates.append(os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc"))
    candidates.append(shutil.which("nvcc"))
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        candidates += [str(p) for p in sorted(Path(root).glob("cu*/bin/nvcc"))] + [os.path.join(root, "cuda_nvcc", "bin", "nvcc")]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise CutlassUnavailable("nvcc not found (set JACKFIELD_NVCC or CUDA_HOME, or install nvidia-cuda-nvcc)")


def _find_cutlass() -> Path:
    roots = [os.environ.get("JACKFIELD_CUTLASS_DIR")]
    spec = importlib.util.find_spec("flashinfer")  # locates the package without importing it
    if spec and spec.origin:
        roots.append(str(Path(spec.origin).parent / "data" / "cutlass"))
    for root in roots:
        if root and (Path(root) / "include" / "cutlass" / "gemm" / "kernel" / "sm90_tile_scheduler_stream_k.hpp").exists():
            return Path(root)
    raise CutlassUnavailable("CUTLASS 3 headers not found (set JACKFIELD_CUTLASS_DIR or install flashinfer-python)")


def _nvcc_version(nvcc: str) -> str:
    try:
        return subprocess.run([nvcc, "--version"], check=False, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise CutlassUnavailable(f"{nvcc} --version failed: {exc}") from exc


def build(cache_dir: Path | None = None) -> Path:
    """Compile the library unless this source/flags/nvcc combination is cached; returns the .so path."""
    nvcc, cutlass = _find_nvcc(), _find_cutlass()
    includes = [f"-I{cutlass / 'include'}", f"-I{cutlass / 'tools' / 'util' / 'include'}"]
    version = (cutlass / "include" / "cutlass" / "version.h").read_bytes()
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + version + _nvcc_version(nvcc).encode())
    root = cache_dir or Path(os.environ.get("JACKFIELD_CACHE_DIR", Path.home() / ".cache" / "jackfield"))
    out = root / "cutlass" / key.hexdigest()[:16] / "libjfgemm.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    log.info("compiling the CUTLASS GEMMs with %s (once per machine, 1-2 minutes)", nvcc)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")  # per process: concurrent builds do not collide
    proc = subprocess.run([nvcc, *FLAGS, *includes, "-o", str(tmp), str(SOURCE)], check=False,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise CutlassUnavailable(f"nvcc failed ({proc.returncode}): {proc.stderr[-2000:]}")
    os.replace(tmp, out)  # atomic: a concurrent build of the same key writes the same file
    return out


class Library:
    """The loaded shared library: its configuration names, and a GEMM call per configuration."""

    def __init__(self, path: Path):
        lib = ctypes.CDLL(str(path))
        lib.jf_gemm_config_name.restype = ctypes.c_char_p
        size_t_p = ctypes.POINTER(ctypes.c_size_t)
        lib.jf_gemm_workspace.argtypes = [ctypes.c_int] * 6 + [size_t_p]
        lib.jf_gemm_run.argtypes = ([ctypes.c_int] + [ctypes.c_void_p] * 3 + [ctypes.c_int] * 5
                                    + [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p])
        self._lib = lib
        self.configs = [lib.jf_gemm_config_name(i).decode() for i in range(lib.jf_gemm_num_configs())]
        self._workspace: dict[tuple, int] = {}

    def workspace_bytes(self, cfg: int, m: int, n: int, k: int, sched: int, sms: int) -> int | None:
        """Workspace the call needs, or None where the configuration cannot run this problem."""
        key = (cfg, m, n, k, sched, sms)
        if key not in self._workspace:
            size = ctypes.c_size_t(0)
            ok = self._lib.jf_gemm_workspace(cfg, m, n, k, sched, sms, ctypes.byref(size)) == 0
            self._workspace[key] = size.value if ok else -1
        return None if self._workspace[key] < 0 else self._workspace[key]

    def gemm(self, x: torch.Tensor, weight: torch.Tensor, cfg: int, sched: int = 0,
             out: torch.Tensor | None = None) -> torch.Tensor:
        """x [M, K] @ weight[N, K]^T on the current stream (capturable in a CUDA graph)."""
        (m, k), n = x.shape, weight.shape[0]
        sms = _sm_count(x.device.index if x.device.index is not None else torch.cuda.current_device())
        ws_bytes = self.workspace_bytes(cfg, m, n, k, sched, sms)
        if ws_bytes is None:
            raise ValueError(f"CUTLASS config {self.configs[cfg]!r} cannot run M={m} N={n} K={k}")
        out = torch.empty((m, n), dtype=x.dtype, device=x.device) if out is None else out
        ws = torch.empty(max(ws_bytes, 1), dtype=torch.uint8, device=x.device)
        stream = torch.cuda.current_stream(x.device).cuda_stream
        rc = self._lib.jf_gemm_run(cfg, x.data_ptr(), weight.data_ptr(), out.data_ptr(), m, n, k, sched, sms,
                                   ws.data_ptr(), ws_bytes, stream)
        if rc != 0:
            raise RuntimeError(f"CUTLASS GEMM {self.configs[cfg]!r} failed with code {rc} (M={m} N={n} K={k})")
        return out


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def supports(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """The shapes and layouts the library handles: 2-D bf16 row-major operands, 16-byte aligned rows."""
    return (x.dim() == 2 and x.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16 and x.is_contiguous()
            and weight.is_contiguous() and x.shape[1] == weight.shape[1] and x.shape[1] % 8 == 0
            and weight.shape[0] % 8 == 0 and x.data_ptr() % 16 == 0 and weight.data_ptr() % 16 == 0)


@functools.cache
def library() -> Library:
    """The compiled library, built on first use; raises CutlassUnavailable with the reason."""
    if not torch.cuda.is_available():
        raise CutlassUnavailable("no CUDA device")
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) != (9, 0):
        raise CutlassUnavailable(f"the kernels are built for sm_90a (Hopper); this GPU is sm_{major}{minor}")
    prebuilt = os.environ.get("JACKFIELD_CUTLASS_LIB")
    return Library(Path(prebuilt) if prebuilt else build())
