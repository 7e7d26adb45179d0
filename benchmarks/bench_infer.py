"""Inference throughput on the CPU: PyTorch eager vs ONNX Runtime (common/onnxrun.py), the same model and segments.

The model is utils.SERModel (fusion, the paper's gated cross-attention), in eval mode, random-init: the demo's tiny
extractors (default: a CPU check in seconds) or wav2vec2-base- and roberta-base-SIZED ones built in code
(--base-sized: bench_train.build_base_sized, no download). It is exported once with common.onnxrun.export_onnx;
both runtimes then classify the same segments, IEMOCAP-like (log-normal durations, median 4.5 s, clipped to
1-20 s, normalised as SegmentDataset does; ~2.5 words/s of random demo words), in the same length-bucketed batches
(LengthBucketSampler, collated once up front: the timing is the model alone), with the same number of threads
(torch.set_num_threads and onnxruntime's intra-op threads), denormals flushed as predict.py runs PyTorch. Each
runtime passes over all the segments --repeats times after one untimed batch; the fastest pass counts. Prints
segments/s of each, their ratio (onnxruntime / PyTorch) and the largest difference of their probabilities.

    python benchmarks/bench_infer.py                        # tiny models, 64 segments, 2 threads
    python benchmarks/bench_infer.py --base-sized --segments 64
    python benchmarks/bench_infer.py --small                # = --segments 8 --repeats 1 (a smoke test)
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import utils  # noqa: E402
from common import fileio, formats, onnxrun  # noqa: E402
from demo.build_ser_models import WORDS, build  # noqa: E402


def make_segments(n: int, seed: int) -> list[dict]:
    """IEMOCAP-like segments as SegmentDataset items: log-normal durations (median 4.5 s) clipped to 1-20 s."""
    rng = np.random.default_rng(seed)
    secs = np.clip(rng.lognormal(np.log(4.5), 0.6, n), 1.0, 20.0)
    return [
        {
            "index": i,
            "audio": utils.zero_mean_unit_var(
                torch.from_numpy(rng.standard_normal(int(s * formats.SAMPLE_RATE)))
            ).float(),
            "text": " ".join(rng.choice(WORDS, max(1, int(2.5 * s)))),
            "label": 0,
        }
        for i, s in enumerate(secs)
    ]


def timed_passes(model, batches: list[dict], repeats: int) -> tuple[float, torch.Tensor]:
    """(seconds of the fastest of `repeats` passes over the batches, after one untimed batch; the probabilities)."""
    with torch.no_grad():
        model(batches[0])
        best, probs = float("inf"), None
        for _ in range(repeats):
            t0 = time.perf_counter()
            probs = torch.cat([model(b).softmax(-1) for b in batches])
            best = min(best, time.perf_counter() - t0)
    return best, probs


def build_models(args, tmp: Path) -> dict:
    """Paths of the extractors: the demo's tiny ones, or base-sized ones (bench_train.build_base_sized)."""
    if args.base_sized:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_train import build_base_sized

        return build_base_sized(tmp, args.seed)
    return build(tmp, seed=args.seed)


def measure(args) -> dict:
    """The figures: segments/s of PyTorch eager and onnxruntime on the same batches, their ratio, the largest
    difference of their probabilities."""
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)  # restored below: tests run this in their process
    torch.set_flush_denormal(True)  # as predict.py runs the model
    try:
        return figures(args)
    finally:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(False)


def figures(args) -> dict:
    """measure's figures, with the threads set."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="bench-infer-") as tmp:
        paths = build_models(args, Path(tmp))
        torch.manual_seed(args.seed)
        model = utils.SERModel(paths["text_model"], paths["audio_model"], "fusion").eval()
        collator = utils.Collator(AutoTokenizer.from_pretrained(paths["text_model"]))
        segments = make_segments(args.segments, args.seed)
        sampler = utils.LengthBucketSampler([s["audio"].numel() for s in segments], args.batch_size, shuffle=False)
        batches = [collator([segments[i] for i in b]) for b in sampler.batches()]
        t0 = time.perf_counter()
        ort_model = onnxrun.OnnxModel(onnxrun.export_onnx(model, Path(tmp) / "model.onnx"), threads=args.threads)
        export_s = time.perf_counter() - t0
        torch_s, torch_probs = timed_passes(model, batches, args.repeats)
        ort_s, ort_probs = timed_passes(ort_model, batches, args.repeats)
    n, audio_s = len(segments), sum(s["audio"].numel() for s in segments) / formats.SAMPLE_RATE
    return {
        "models": "base-sized" if args.base_sized else "tiny",
        "segments": n,
        "audio_seconds": round(audio_s, 1),
        "batch_size": args.batch_size,
        "threads": args.threads,
        "export_seconds": round(export_s, 2),
        "pytorch_segments_per_s": n / torch_s,
        "onnxruntime_segments_per_s": n / ort_s,
        "ratio_onnxruntime_over_pytorch": torch_s / ort_s,
        "max_prob_difference": float((torch_probs - ort_probs).abs().max()),
        "torch": torch.__version__,
        "onnxruntime": __import__("onnxruntime").__version__,
        "cpu": platform.processor() or platform.machine(),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--segments", type=int, default=64, help="segments per timed pass")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=onnxrun.DEFAULT_THREADS, help="CPU threads of each runtime")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per runtime (the fastest counts)")
    p.add_argument("--base-sized", action="store_true", help="wav2vec2-base / roberta-base-sized random models")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the figures as JSON here")
    p.add_argument("--small", action="store_true", help="a smoke test: --segments 8 --repeats 1")
    args = p.parse_args(argv)
    if args.small:
        args.segments, args.repeats = 8, 1
    r = measure(args)
    print(
        f"{r['segments']} segments ({r['audio_seconds']} s of audio), {r['models']} models, batch {r['batch_size']}, "
        f"{r['threads']} threads (torch {r['torch']}, onnxruntime {r['onnxruntime']}); export {r['export_seconds']} s"
    )
    print(f"pytorch eager: {r['pytorch_segments_per_s']:.2f} segments/s")
    print(f"onnxruntime:   {r['onnxruntime_segments_per_s']:.2f} segments/s")
    print(f"ratio onnxruntime/pytorch: {r['ratio_onnxruntime_over_pytorch']:.2f}x")
    print(f"largest probability difference: {r['max_prob_difference']:.2e}")
    if args.out:
        fileio.atomic_write_json(Path(args.out), r)
    return r


if __name__ == "__main__":
    main()
