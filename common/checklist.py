"""Preflight (--check): one line per item, OK or what to do; CUDA, disk, and FLOP-based time
estimates."""

from __future__ import annotations

import os
import re as _re
import shutil as _shutil
from dataclasses import dataclass as _dataclass
from pathlib import Path

from common import cli


@_dataclass(frozen=True)
class CheckItem:
    """One preflight line: what was checked, whether it is fine, what was found or what to do."""

    name: str
    ok: bool
    message: str

    def line(self) -> str:
        return f"{'OK  ' if self.ok else 'FAIL'} {self.name}: {self.message}"


def report_checks(items, title: str = "preflight") -> bool:
    """Print one line per item and a closing line -> True when every item is OK."""
    items = list(items)
    for item in items:
        print(item.line())
    bad = [i.name for i in items if not i.ok]
    print(
        f"{title}: "
        + (f"{len(bad)} of {len(items)} checks failed ({', '.join(bad)})" if bad else f"all {len(items)} checks OK")
    )
    return not bad


def check_cuda(required: bool = False, min_free_gib: float = 0.0, purpose: str = "") -> CheckItem:
    """CUDA devices and their free memory. Without CUDA: FAIL when `required`, else OK (CPU run)."""
    import torch

    if not torch.cuda.is_available():
        return CheckItem(
            "CUDA",
            not required,
            "no CUDA device"
            + (
                ": a GPU is required here (--device cuda)"
                if required
                else "; this run uses the CPU (see the time estimate)"
            ),
        )
    parts, ok = [], True
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        parts.append(f"cuda:{i} {torch.cuda.get_device_name(i)}, {free / 2**30:.1f} of {total / 2**30:.1f} GiB free")
        ok = ok and free >= min_free_gib * 2**30
    need = (
        f"; needs about {min_free_gib:g} GiB free per device" + (f" ({purpose})" if purpose else "")
        if min_free_gib
        else ""
    )
    return CheckItem("CUDA", ok, "; ".join(parts) + need + ("" if ok else ": free GPU memory or lower the batch size"))


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def format_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def check_disk(path, need_bytes: float, what: str = "outputs") -> CheckItem:
    """Free space on the file system that holds `path` (or its nearest existing parent) vs an estimate."""
    p = Path(path).resolve()
    while not p.exists():
        p = p.parent
    free = _shutil.disk_usage(p).free
    ok = free >= need_bytes
    return CheckItem(
        f"disk ({what})",
        ok,
        f"{format_bytes(free)} free at {p}, estimate needed {format_bytes(need_bytes)}"
        + ("" if ok else ": free some space or point the run elsewhere"),
    )


# Dense bf16/fp16 tensor-core peaks (FLOP/s) from the vendors' datasheets, matched against the CUDA
# device name; anything else counts as 100 TFLOP/s.
GPU_PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10": 125e12,
    "L4": 121e12,
    "V100": 125e12,
    "T4": 65e12,
    "4090": 165e12,
    "3090": 71e12,
    "A6000": 155e12,
}
GPU_INFERENCE_EFFICIENCY = 0.03  # share of the peak that batched inference sustains (see estimate_time)
CPU_FLOPS_PER_CORE = 2e10  # sustained fp32 FLOP/s per core (AVX2/AVX-512 FMA in PyTorch/CTranslate2)


def transformer_flops(params: float, tokens: float, training: bool = False) -> float:
    """FLOPs of a dense network over `tokens` positions: 2*N per position forward, 6*N when trained
    (forward + backward), N the parameter count (Kaplan et al. 2020); attention over long contexts
    is not included."""
    return (6.0 if training else 2.0) * params * tokens


def estimate_time(
    name: str, flops: float, device: str = "auto", efficiency: float = GPU_INFERENCE_EFFICIENCY, detail: str = ""
) -> CheckItem:
    """An ESTIMATE of wall time: a FLOP count divided by an assumed sustained throughput.

    GPU: the device's dense bf16/fp16 peak (GPU_PEAK_FLOPS) times `efficiency`. The default 0.03
    for inference is calibrated on WhisperX's published speed (large-v2 about 70x real time on an
    A100: 1 h of audio is ~4.3e14 FLOP of Whisper with preprocess.py's counts, done in ~51 s, i.e.
    ~8.5e12 FLOP/s, about 3 % of 312 TFLOP/s: beam search decodes a token at a time); training
    sustains more (pass about 0.3). CPU: CPU_FLOPS_PER_CORE per core.
    Data loading, decoding and Python overheads are not modelled: read it as an order of magnitude.
    Always OK: it informs, it does not gate.
    """
    import torch

    use_cuda = torch.cuda.is_available() if device == "auto" else str(device).startswith("cuda")
    if use_cuda and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
        peak = next((v for k, v in GPU_PEAK_FLOPS.items() if k in gpu), 100e12)
        rate, where = peak * efficiency, f"{gpu} ({efficiency:.0%} of {peak / 1e12:.0f} TFLOP/s assumed sustained)"
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        rate, where = (
            cores * CPU_FLOPS_PER_CORE,
            f"CPU, {cores} cores ({CPU_FLOPS_PER_CORE / 1e9:.0f} GFLOP/s per core assumed)",
        )
    return CheckItem(
        name,
        True,
        f"estimate {format_seconds(flops / rate)} on {where}: {flops:.2g} FLOP" + (f" ({detail})" if detail else ""),
    )


def parse_shard(spec: str | None, environ=None) -> tuple[int, int]:
    """'K/N' -> (K, N): this process takes every N-th item from the K-th (0 <= K < N). Without a
    spec, torchrun's RANK and WORLD_SIZE are used when set (one shard per process), else (0, 1)."""
    environ = os.environ if environ is None else environ
    if spec is None:
        if "RANK" in environ and "WORLD_SIZE" in environ:
            spec, source = f"{environ['RANK']}/{environ['WORLD_SIZE']}", "RANK/WORLD_SIZE"
        else:
            return 0, 1
    else:
        source = "--shard"
    m = _re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(spec))
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise cli.PipelineError(f"{source}: expected K/N with 0 <= K < N, got {spec!r}")
    return int(m.group(1)), int(m.group(2))
