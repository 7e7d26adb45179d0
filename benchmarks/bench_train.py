"""Training throughput of train.py's loop vs an authors-style loop, in the same run.

Both loops train the same model (utils.SERModel, fusion, fine-tuned extractors, AdamW with the
two learning rates) for one pass over the same utterances, with IEMOCAP-like durations
(log-normal around 4.5 s, clipped to 1-20 s) and random audio and text:

  ours     audio normalised once up front (as SegmentDataset does), length-bucketed batches
           (LengthBucketSampler), tokenising in DataLoader workers (Collator), bf16 autocast on
           CUDA, padding-exact masked pooling.
  authors  fp32, batch 8 in random order, every batch tokenised and run through
           Wav2Vec2FeatureExtractor (normalisation, padding) on the fly from the raw arrays,
           wav2vec2 run on the padded batch, mean pooled over all frames.

Models are random-init and wav2vec2-base / roberta-base SIZED (Wav2Vec2Config() and
RobertaConfig(vocab_size=50265) defaults), built in code: no download. --tiny uses the demo's
tiny models instead (a CPU smoke test). Reports audio seconds/s, samples/s, peak GPU memory and
the ratio ours / authors.

    python benchmarks/bench_train.py                   # GPU, base-sized models
    python benchmarks/bench_train.py --tiny --device cpu --utterances 32
    python benchmarks/bench_train.py --small           # = --tiny --device cpu --utterances 8 --warmup 1
                                                       #   --num-workers 0 (a smoke test in seconds)
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
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import utils  # noqa: E402
from common import fileio, formats  # noqa: E402
from demo.build_ser_models import WORDS, build, build_tokenizer  # noqa: E402


def build_base_sized(out: Path, seed: int) -> dict:
    """Random-init wav2vec2-base- and roberta-base-sized models saved like hub models."""
    from transformers import RobertaConfig, RobertaModel, Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(seed)
    paths = {"audio_model": str(out / "wav2vec2-base-sized"), "text_model": str(out / "roberta-base-sized")}
    Wav2Vec2Model(Wav2Vec2Config()).save_pretrained(paths["audio_model"])
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False).save_pretrained(paths["audio_model"])
    build_tokenizer(Path(paths["text_model"]))  # byte-level BPE; ids stay within the 50265 rows
    RobertaModel(RobertaConfig(vocab_size=50265), add_pooling_layer=False).save_pretrained(paths["text_model"])
    return paths


def make_utterances(n: int, seed: int) -> list[dict]:
    """IEMOCAP-like utterances: log-normal durations (median 4.5 s) clipped to 1-20 s, ~2.5 words/s."""
    rng = np.random.default_rng(seed)
    secs = np.clip(rng.lognormal(np.log(4.5), 0.6, n), 1.0, 20.0)
    return [
        {
            "audio": (rng.standard_normal(int(s * formats.SAMPLE_RATE)) * 0.1).astype(np.float32),
            "text": " ".join(rng.choice(WORDS, max(1, int(2.5 * s)))),
            "label": int(rng.integers(4)),
        }
        for s in secs
    ]


def make_model(paths, device, lrs=(2e-5, 1e-4)):
    torch.manual_seed(0)
    model = utils.SERModel(paths["text_model"], paths["audio_model"], "fusion").to(device)
    opt = torch.optim.AdamW(
        [{"params": model.extractor_parameters(), "lr": lrs[0]}, {"params": model.head_parameters(), "lr": lrs[1]}],
        weight_decay=0.01,
    )
    return model, opt


def step(model, opt, logits, labels):
    loss = F.cross_entropy(logits.float(), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def timed(device, fn):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    n_samples, audio_s = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {
        "seconds": dt,
        "samples": n_samples,
        "audio_seconds": audio_s,
        "samples_per_s": n_samples / dt,
        "audio_s_per_s": audio_s / dt,
        "peak_gpu_gib": peak,
    }


def ours(paths, utts, args, device):
    from transformers import AutoTokenizer

    model, opt = make_model(paths, device)
    model.train()
    items = [
        {
            "index": i,
            "audio": utils.zero_mean_unit_var(torch.from_numpy(u["audio"])),
            "text": u["text"],
            "label": u["label"],
        }
        for i, u in enumerate(utts)
    ]  # normalised once, as SegmentDataset does
    lengths = [it["audio"].numel() for it in items]
    collate = utils.Collator(AutoTokenizer.from_pretrained(paths["text_model"]))
    bf16 = device.type == "cuda" and not args.no_bf16

    def loader(subset):
        sampler = utils.LengthBucketSampler([lengths[i] for i in subset], args.batch_size, shuffle=True, seed=0)
        return torch.utils.data.DataLoader(
            torch.utils.data.Subset(items, subset),
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=args.num_workers,
            pin_memory=device.type == "cuda",
        )

    def run(batches):
        n, sec = 0, 0.0
        for batch in batches:
            batch = utils.to_device(batch, device)
            with utils.autocast(device, bf16):
                logits = model(batch)
            step(model, opt, logits, batch["labels"])
            n += len(batch["labels"])
            sec += float(batch["lengths"].sum()) / formats.SAMPLE_RATE
        return n, sec

    run(loader(list(range(args.warmup * args.batch_size))))
    return timed(device, lambda: run(loader(list(range(len(items))))))


def authors(paths, utts, args, device):
    from transformers import AutoFeatureExtractor, AutoTokenizer

    model, opt = make_model(paths, device)
    model.train()
    tok = AutoTokenizer.from_pretrained(paths["text_model"])
    fe = AutoFeatureExtractor.from_pretrained(paths["audio_model"])

    def run(order):
        n, sec = 0, 0.0
        for b in range(0, len(order), args.batch_size):
            chosen = [utts[i] for i in order[b : b + args.batch_size]]
            t = tok([u["text"] for u in chosen], padding=True, truncation=True, max_length=512, return_tensors="pt").to(
                device
            )
            a = fe([u["audio"] for u in chosen], sampling_rate=16000, padding=True, return_tensors="pt").to(device)
            z_t = model.text.model(**t).last_hidden_state.mean(1)
            z_a = model.audio.model(a["input_values"]).last_hidden_state.mean(1)
            labels = torch.tensor([u["label"] for u in chosen], device=device)
            step(model, opt, model.classify(z_t, z_a), labels)
            n += len(chosen)
            sec += sum(len(u["audio"]) for u in chosen) / formats.SAMPLE_RATE
        return n, sec

    rng = np.random.default_rng(1)
    run(list(range(args.warmup * args.batch_size)))
    return timed(device, lambda: run(rng.permutation(len(utts)).tolist()))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--utterances", type=int, default=480, help="utterances per timed pass (60 batches of 8)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up batches per loop")
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--tiny", action="store_true", help="the demo's tiny models instead of base-sized ones")
    p.add_argument("--no-bf16", action="store_true", help="ours without bf16 autocast (isolates bucketing)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the figures as JSON here")
    p.add_argument(
        "--small",
        action="store_true",
        help="a smoke test in seconds: --tiny --device cpu --utterances 8 --warmup 1 --num-workers 0",
    )
    args = p.parse_args(argv)
    if args.small:
        args.tiny, args.device, args.utterances, args.warmup, args.num_workers = True, "cpu", 8, 1, 0
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    with tempfile.TemporaryDirectory() as tmp:
        paths = build(Path(tmp), args.seed) if args.tiny else build_base_sized(Path(tmp), args.seed)
        utts = make_utterances(args.utterances, args.seed)
        print(
            f"{len(utts)} utterances, {sum(len(u['audio']) for u in utts) / 16000 / 60:.1f} min of audio; "
            f"models {'tiny' if args.tiny else 'base-sized'}; device {device}"
        )
        results = {"authors": authors(paths, utts, args, device), "ours": ours(paths, utts, args, device)}
    results["ratio_audio_s_per_s"] = results["ours"]["audio_s_per_s"] / results["authors"]["audio_s_per_s"]
    results["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    results["settings"] = vars(args)
    for name in ("authors", "ours"):
        r = results[name]
        mem = f"{r['peak_gpu_gib']:.2f} GiB" if r["peak_gpu_gib"] is not None else "n/a (CPU)"
        print(
            f"{name:8s} {r['audio_s_per_s']:8.1f} audio s/s  {r['samples_per_s']:7.2f} samples/s  peak memory {mem}  "
            f"({r['samples']} samples in {r['seconds']:.1f} s)"
        )
    print(f"ratio ours/authors: {results['ratio_audio_s_per_s']:.2f}x  on {results['device']}")
    if args.out:
        fileio.atomic_write_json(args.out, results)
        print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
