"""Step 4: train the gated cross-attention fusion classifier (paper Section III-B, Fig. 1).

Reads the step-3 segment caches WORK/<pipe>/<variant>/cache/<dialog>.pt and WORK/labels.json,
trains utils.SERModel and writes WORK/runs/<run>/ (config.json, log.jsonl, checkpoint_last.pt,
checkpoint_best.pt). Frozen mode also writes WORK/features/<extractor-key>/<pipe>/<variant>/.

Training recipe: the paper gives none, so the defaults are the authors' code (M4RC034/SER-Align
train.py): AdamW, extractors lr 2e-5 and everything else 1e-4 (fine-tuned mode), weight decay 0.01,
dropout 0.2, cross-entropy, batch 8, 20 epochs, shuffled; ReduceLROnPlateau (mode min, factor 0.5,
patience 2) stepped on the validation LOSS (--schedule-on); the kept checkpoint and early stopping
(patience 5) on the validation ACCURACY (--select-on; a strict improvement, so the earliest epoch
wins ties); RoBERTa input truncated at 512 tokens; no audio crop (segments padded to the longest in
the batch, which length bucketing keeps cheap; --max-audio-seconds crops for small GPUs and the
number cropped is reported).

Departures from the authors' code (README, "Departures"), each a flag with their value reachable:
  --validation held-out   the validation set is drawn from the TRAINING sessions (--val-fraction of
                          each session's dialogs, seeded; their speakers also occur in training, as
                          IEMOCAP has two per session), so the test split is never loaded here.
                          The authors validated, selected and early-stopped on the test session:
                          --validation test.
  --audio-padding exact   a segment's audio embedding does not depend on the other segments of its
                          batch (utils.AudioEmbedder). The authors' wav2vec2-base gets the zero-padded
                          batch without an attention mask and its mean counts the padded frames:
                          --audio-padding authors.
  step 3's --channel      stereo dialog channels averaged (align.py --channel mean); theirs: channel 0.

Splits (--folds):
  session         test = Session --test-session (the paper's: 5), train/val = the other sessions.
  loso            leave-one-session-out: 5 runs, fold k tests Session k (runs/<run>/fold<k>/).
  speaker-script  speaker- AND script-disjoint 5 folds. IEMOCAP's two actors of a session appear
                  only in that session, so testing on Session k is speaker-disjoint; but the three
                  scripts (script01-03) are performed in every session, so a text model would see
                  the test lines in training. Fold k therefore tests on Session k's improvised
                  dialogs plus its dialogs of ONE script family s_k = script0{(k-1) % 3 + 1};
                  training uses the other sessions' improvised dialogs and their scripted dialogs
                  of the OTHER two families. Session k's dialogs of the other two families and the
                  other sessions' s_k dialogs are used by neither side ("unused" in config.json).

Speed: batches of similar audio length (utils.LengthBucketSampler), audio normalised once when
the cache is read, tokenising in DataLoader workers (--num-workers), bf16 autocast on CUDA,
optionally --freeze-feature-encoder (wav2vec2's CNN) and --gradient-checkpointing. With
--max-audio-seconds S, segments longer than S are centre-cropped: aligned turns can merge several
utterances and one long turn sets the padded size and memory of its whole batch. Under
torchrun every rank trains on its share of the batches and validates on the whole validation
set; rank 0 writes the files.

    python train.py --work preprocessed_iemocap --pipe whisperx --variant aligned-p1.5
    torchrun --nproc_per_node 4 train.py --run-name NAME ...   (DistributedDataParallel, one GPU per rank)
"""
from __future__ import annotations

import argparse
import builtins
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import utils
from utils import LABELS, PipelineError

# Flags that may change between an interrupted run and its resumption without changing results.
RESUME_FREE_KEYS = ("code_version", "device", "num_workers", "resume", "run_dir")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="preprocessed_iemocap", help="work directory of the pipeline")
    p.add_argument("--iemocap", default=None, help="unused here (the corpus recorded in labels.json); accepted for a uniform CLI")
    p.add_argument("--pipe", default="whisperx", help="step-2 run name (WORK/<pipe>/)")
    p.add_argument("--variant", default="aligned-p1.5", help="step-3 variant: aligned-p1.5 or baseline")
    p.add_argument("--mode", choices=["finetune", "frozen"], default="finetune",
                   help="finetune: extractors train with --lr-extractor; frozen: cached embeddings, head only")
    p.add_argument("--modality", choices=list(utils.MODALITIES), default="fusion")
    p.add_argument("--fusion", choices=list(utils.FUSIONS), default="gated-xattn",
                   help="how the two embeddings are fused (utils.SERModel): the paper's gated cross-attention, "
                        "or the ablations xattn (no forget gates), concat (MLP), late (mean of the single-modality heads' logits)")
    p.add_argument("--text-model", default="roberta-base", help="hub name or local dir (AutoModel/AutoTokenizer)")
    p.add_argument("--audio-model", default="facebook/wav2vec2-base", help="hub name or local dir (AutoModel/AutoFeatureExtractor)")
    p.add_argument("--run", "--run-name", dest="run", default=None,
                   help="run name under WORK/runs/ (default: <pipe>-<variant>-<mode>-<modality>); "
                        "under torchrun spell it --run-name (torchrun takes --run for its own --run-path)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr-extractor", type=float, default=2e-5)
    p.add_argument("--lr-head", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--heads", type=int, default=8, help="attention heads of cross-attention and fusion layer")
    p.add_argument("--fusion-layers", type=int, default=2, help="Transformer encoder layers of the fusion layer")
    p.add_argument("--ffn-dim", type=int, default=2048, help="feed-forward size of the fusion layer")
    p.add_argument("--plateau-factor", type=float, default=0.5)
    p.add_argument("--plateau-patience", type=int, default=2)
    p.add_argument("--early-stop", type=int, default=5, help="stop after this many epochs without validation improvement")
    p.add_argument("--schedule-on", choices=["loss", "acc"], default="loss",
                   help="validation quantity the ReduceLROnPlateau schedule follows (the authors': loss)")
    p.add_argument("--select-on", choices=["acc", "loss"], default="acc",
                   help="validation quantity for the kept checkpoint and early stopping (the authors': accuracy; "
                        "a strict improvement is needed, so the earliest epoch wins ties)")
    p.add_argument("--validation", choices=["held-out", "test"], default="held-out",
                   help="held-out: validation dialogs drawn from the training sessions (ours); "
                        "test: validate and select on the test split, as the authors did")
    p.add_argument("--folds", choices=["session", "loso", "speaker-script"], default="session")
    p.add_argument("--test-session", type=int, default=5, help="with --folds session")
    p.add_argument("--val-fraction", type=float, default=0.15, help="share of each training session's dialogs held out for validation")
    p.add_argument("--seed", type=int, nargs="+", default=[0],
                   help="seed(s) of initialisation and data order; several seeds train one run each, "
                        "reading the data once (--run must then contain {seed})")
    p.add_argument("--split-seed", type=int, default=0,
                   help="seed of the validation-dialog draw, kept apart from --seed so that seeds share one split")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1")
    p.add_argument("--max-audio-seconds", type=float, default=0.0,
                   help="centre-crop longer segments to this many seconds, for small GPUs (default 0 = no crop, as the authors)")
    p.add_argument("--audio-padding", choices=["exact", "authors"], default="exact",
                   help="exact: padding in a batch does not change a segment's audio embedding (ours); "
                        "authors: no attention mask, mean over every frame of the padded batch")
    p.add_argument("--max-text-tokens", type=int, default=512)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast (default: on with CUDA)")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--freeze-feature-encoder", action="store_true", help="fine-tuned mode: keep the audio model's CNN fixed")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="resume from checkpoint_last.pt when the run dir has one with the same config")
    return p.parse_args(argv)


# ---- splits -----------------------------------------------------------------------------------

def split_val(train_dialogs: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Hold out a seeded share of each training session's dialogs (at least one) for validation."""
    rng = random.Random(seed)
    train, val = [], []
    for ses in sorted({utils.session_of(d) for d in train_dialogs}):
        ds = sorted(d for d in train_dialogs if utils.session_of(d) == ses)
        rng.shuffle(ds)
        k = min(len(ds) - 1, max(1, round(fraction * len(ds)))) if fraction > 0 else 0
        val += ds[:k]
        train += ds[k:]
    return sorted(train), sorted(val)


def make_folds(meta: dict, scheme: str, test_session: int, val_fraction: float, seed: int,
               validation: str = "held-out") -> list[dict]:
    """meta: {dialog: {"session", "kind", "script"}} of the dialogs that have a segment cache.
    -> [{"name", "train", "val", "test", "unused"}] (see the module docstring). validation "test"
    (the authors'): no held-out dialogs, the test dialogs are the validation set."""
    sessions = sorted({m["session"] for m in meta.values()})
    if scheme == "session":
        tests = [test_session]
    else:
        tests = sessions
    folds = []
    for k in tests:
        test, train_pool, unused = [], [], []
        held_script = f"script0{(k - 1) % 3 + 1}"
        for d, m in sorted(meta.items()):
            if scheme != "speaker-script" or m["kind"] != "script":
                (test if m["session"] == k else train_pool).append(d)
            elif m["session"] == k:
                (test if m["script"] == held_script else unused).append(d)
            else:
                (unused if m["script"] == held_script else train_pool).append(d)
        if not test or not train_pool:
            raise PipelineError(f"fold testing session {k}: {len(test)} test and {len(train_pool)} training dialogs; "
                                f"sessions with caches: {sessions}")
        train, val = split_val(train_pool, val_fraction, seed) if validation == "held-out" else (sorted(train_pool), sorted(test))
        name = "main" if scheme == "session" else f"fold{k}"
        folds.append({"name": name, "test_session": k, "train": train, "val": val, "test": sorted(test),
                      "unused": sorted(unused), **({"held_script": held_script} if scheme == "speaker-script" else {})})
    return folds


# ---- one epoch ----------------------------------------------------------------------------------

def train_one_epoch(model, batches, optimizer, device, bf16: bool) -> dict:
    """One pass over the training batches -> {"loss", "acc", "samples", "audio_seconds"}."""
    model.train()
    total_loss, correct, n, audio_s = 0.0, 0, 0, 0.0
    for batch in batches:
        batch = utils.to_device(batch, device)
        with utils.autocast(device, bf16):
            logits = model(batch)
        loss = F.cross_entropy(logits.float(), batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        b = len(batch["labels"])
        total_loss += loss.item() * b
        correct += int((logits.argmax(-1) == batch["labels"]).sum())
        n += b
        if "lengths" in batch:
            audio_s += float(batch["lengths"].sum()) / utils.SAMPLE_RATE
    return {"loss": total_loss / max(n, 1), "acc": correct / max(n, 1), "samples": n, "audio_seconds": audio_s}


@torch.no_grad()
def validate(model, batches, device, bf16: bool) -> dict:
    model.eval()
    total_loss, correct, n = 0.0, 0, 0
    for batch in batches:
        batch = utils.to_device(batch, device)
        with utils.autocast(device, bf16):
            logits = model(batch).float()
        total_loss += float(F.cross_entropy(logits, batch["labels"], reduction="sum"))
        correct += int((logits.argmax(-1) == batch["labels"]).sum())
        n += len(batch["labels"])
    return {"loss": total_loss / max(n, 1), "acc": correct / max(n, 1)}


class HeadOnly(torch.nn.Module):
    """Frozen mode: the model applied to a batch of cached embeddings {"z_t", "z_a", "labels"}."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.classify(batch.get("z_t"), batch.get("z_a"))


def embedding_batches(feats: dict, labels: torch.Tensor, batch_size: int, shuffle: bool, seed: int,
                      rank: int = 0, world_size: int = 1) -> list[dict]:
    """Batches of cached embeddings; shuffled with seed (= run seed + epoch) when training."""
    n = len(labels)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if world_size > 1:  # every rank must run the same number of steps (as LengthBucketSampler)
        batches = (batches + batches[:(-len(batches)) % world_size])[rank::world_size]
    return [{"z_t": feats["text"][b] if feats["text"] is not None else None,
             "z_a": feats["audio"][b] if feats["audio"] is not None else None,
             "labels": labels[b]} for b in batches]


# ---- checkpoints ----------------------------------------------------------------------------------

def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in state["python"]))
    torch.set_rng_state(state["torch"])
    s = state["numpy"]
    np.random.set_state((s[0], s[1].numpy(), *s[2:]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trained_state(model, mode: str) -> dict:
    """What a checkpoint keeps: everything when fine-tuning, only the head in frozen mode."""
    return {k: v.detach().cpu().clone() for k, v in
            (model.state_dict() if mode == "finetune" else model.head_state_dict()).items()}


# ---- one run --------------------------------------------------------------------------------

def run_fold(args, split: dict, run_dir: Path, meta_info: dict, dist_info: tuple, shared: dict) -> Path:
    """Train one seed on one split. `shared` carries what does not depend on the seed (the datasets,
    frozen embeddings) from one seed of the same split to the next, so it is read once."""
    from transformers import AutoFeatureExtractor, AutoTokenizer

    rank, world_size, device = dist_info
    main_rank = rank == 0
    say = print if main_rank else (lambda *a, **k: None)
    bf16 = (device.type == "cuda") if args.bf16 is None else (args.bf16 and device.type == "cuda")
    work = Path(args.work).resolve()
    cache_dir = work / args.pipe / args.variant / "cache"
    use_text, use_audio = args.modality in ("fusion", "text"), args.modality in ("fusion", "audio")

    extractors = {"text": utils.extractor_identity(args.text_model) if use_text else None,
                  "audio": utils.extractor_identity(args.audio_model) if use_audio else None}
    do_norm = bool(getattr(AutoFeatureExtractor.from_pretrained(args.audio_model), "do_normalize", True)) if use_audio else True
    feature_dirs = {}
    if args.mode == "frozen":
        settings = {"text": {"max_text_tokens": args.max_text_tokens},
                    "audio": {"max_audio_seconds": args.max_audio_seconds, "do_normalize": do_norm}}
        feature_dirs = {k: str(work / "features" / utils.feature_key(k, extractors[k], settings[k]) / args.pipe / args.variant)
                        for k in ("text", "audio") if extractors[k] is not None}
    config = {k: v for k, v in vars(args).items() if k not in ("run", "folds")}
    config.update({"work": str(work), "run": run_dir.name, "folds_scheme": args.folds, "bf16": bf16,
                   "do_normalize": do_norm, "extractors": extractors, "feature_dirs": feature_dirs,
                   "split": split, "labels": list(LABELS), "corpus": meta_info["corpus"],
                   "code_version": utils.code_version(), "world_size": world_size})

    ckpt_last = run_dir / "checkpoint_last.pt"
    resume_state = None
    if ckpt_last.is_file() and args.resume:
        old = utils.read_json(run_dir / "config.json", "run config")
        differ = sorted(k for k in set(old) | set(config)
                        if k not in RESUME_FREE_KEYS and old.get(k) != json.loads(json.dumps(config.get(k))))
        if differ:
            raise PipelineError(f"{run_dir}: has a checkpoint from a different configuration (differs in {differ}); "
                                f"use another --run or --no-resume to start over")
        resume_state = utils.load_pt(ckpt_last, "last checkpoint")
        say(f"resuming {run_dir} after epoch {resume_state['epoch']}")
    if main_rank:
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume_state is None and (run_dir / "log.jsonl").exists():
            (run_dir / "log.jsonl").unlink()
        utils.atomic_write_json(run_dir / "config.json", config)

    utils.seed_everything(args.seed)
    model = utils.build_model(config).to(device)
    say(f"model: {args.modality}" + (f" ({args.fusion} fusion)" if args.modality == "fusion" else "")
        + f", mode {args.mode}, hidden {model.dim}, "
        f"{sum(p.numel() for p in model.extractor_parameters()) / 1e6:.2f} M extractor + "
        f"{sum(p.numel() for p in model.head_parameters()) / 1e6:.2f} M head parameters")
    tokenizer = AutoTokenizer.from_pretrained(args.text_model) if use_text else None
    collator = utils.Collator(tokenizer, args.max_text_tokens)

    datasets = shared.setdefault("datasets", {})
    for part in ("train", "val"):
        if part in datasets:
            continue
        datasets[part] = utils.SegmentDataset([cache_dir / f"{d}.pt" for d in split[part]], labelled_only=True,
                                              max_audio_seconds=args.max_audio_seconds, do_normalize=do_norm)
        c = datasets[part].counts
        say(f"read {part}: {c['dialogs']} dialogs, {c['segments']} labelled segments "
            f"(skipped {c['unlabelled_skipped']} without a 4-class label; "
            + (f"cropped {c['cropped']} > {args.max_audio_seconds:g} s; " if args.max_audio_seconds else "no crop; ")
            + f"padded {c['padded_short']} < 25 ms)")
        if not len(datasets[part]):
            raise PipelineError(f"{cache_dir}: no labelled segments in the {part} dialogs {split[part][:5]}...")

    if args.mode == "frozen":
        for p in model.extractor_parameters():
            p.requires_grad_(False)
        feats = shared.setdefault("feats", {})
        for part, ds in datasets.items():
            if part in feats:
                continue
            # Distributed: rank 0 fills the on-disk cache alone; the other ranks then only read it.
            if world_size > 1 and not main_rank:
                torch.distributed.barrier()
            feats[part] = utils.cached_embeddings(model, ds, collator, feature_dirs, cache_dir, args.batch_size,
                                                  device, bf16, args.num_workers)
            if world_size > 1 and main_rank:
                torch.distributed.barrier()
            say(f"frozen embeddings for {part} ({len(ds)} segments x {len(feature_dirs)} extractor(s)): "
                f"{feats[part]['reused']} read from the feature cache, {feats[part]['computed']} computed "
                f"(under {work / 'features'})")
            feats[part] = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in feats[part].items()}
        labels = {part: torch.tensor([s["label"] for s in ds.segments], device=device) for part, ds in datasets.items()}
        net = HeadOnly(model)
        groups = [{"params": model.head_parameters(), "lr": args.lr_head}]
    else:
        if args.freeze_feature_encoder and model.audio is not None:
            model.audio.freeze_feature_encoder()
        if args.gradient_checkpointing:
            for m in model.extractors():
                m.gradient_checkpointing_enable()
        net = model
        groups = [{"params": [p for p in model.extractor_parameters() if p.requires_grad], "lr": args.lr_extractor},
                  {"params": model.head_parameters(), "lr": args.lr_head}]
    if world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None,
                                                        find_unused_parameters=True)
    optimizer = torch.optim.AdamW(groups, weight_decay=args.weight_decay)
    # Both quantities are turned into something to minimise: loss as is, accuracy negated.
    sched_sign = 1.0 if args.schedule_on == "loss" else -1.0
    sign = 1.0 if args.select_on == "loss" else -1.0
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=args.plateau_factor,
                                                           patience=args.plateau_patience)

    if args.mode == "finetune":
        train_sampler = utils.LengthBucketSampler(datasets["train"].lengths, args.batch_size, shuffle=True,
                                                  seed=args.seed, rank=rank, world_size=world_size)
        train_loader = torch.utils.data.DataLoader(datasets["train"], batch_sampler=train_sampler, collate_fn=collator,
                                                   num_workers=args.num_workers, pin_memory=device.type == "cuda",
                                                   persistent_workers=args.num_workers > 0)
        val_loader = torch.utils.data.DataLoader(
            datasets["val"], collate_fn=collator, num_workers=args.num_workers,
            batch_sampler=utils.LengthBucketSampler(datasets["val"].lengths, args.batch_size, shuffle=False))

    start_epoch, best, best_epoch, stale = 1, None, 0, 0
    if resume_state is not None:
        model.load_state_dict(resume_state["model"], strict=args.mode == "finetune")
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        start_epoch, best, best_epoch, stale = (resume_state["epoch"] + 1, resume_state["best"],
                                                resume_state["best_epoch"], resume_state["stale"])
        set_rng_state(resume_state["rng"])

    from tqdm import tqdm

    for epoch in range(start_epoch, args.epochs + 1):
        if stale >= args.early_stop:
            break
        t0 = time.time()
        if args.mode == "finetune":
            train_sampler.set_epoch(epoch)
            batches = tqdm(train_loader, desc=f"epoch {epoch}", leave=False, disable=not main_rank)
            val_batches = val_loader
        else:
            batches = embedding_batches(feats["train"], labels["train"], args.batch_size, True, args.seed + epoch, rank, world_size)
            val_batches = embedding_batches(feats["val"], labels["val"], args.batch_size, False, 0)
        tr = train_one_epoch(net, batches, optimizer, device, bf16)
        va = validate(net, val_batches, device, bf16)
        scheduler.step(sched_sign * va[args.schedule_on])
        score = sign * va[args.select_on]
        improved = best is None or score < best
        if improved:
            best, best_epoch, stale = score, epoch, 0
        else:
            stale += 1
        seconds = time.time() - t0
        lrs = [g["lr"] for g in optimizer.param_groups]
        record = {"epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["acc"], "val_loss": va["loss"], "val_acc": va["acc"],
                  "lr": lrs, "best_epoch": best_epoch, "seconds": seconds,
                  "samples_per_s": tr["samples"] * world_size / seconds, "audio_s_per_s": tr["audio_seconds"] * world_size / seconds}
        say(f"epoch {epoch:2d}  train loss {tr['loss']:.4f} acc {tr['acc']:.3f}  val loss {va['loss']:.4f} acc {va['acc']:.3f}  "
            f"lr {' '.join(f'{x:.2e}' for x in lrs)}  {seconds:.1f} s{'  *best' if improved else ''}")
        if main_rank:
            if improved:
                utils.atomic_torch_save({"model": trained_state(model, args.mode), "epoch": epoch, "val": va},
                                        run_dir / "checkpoint_best.pt")
            with open(run_dir / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            utils.atomic_torch_save({"model": trained_state(model, args.mode), "optimizer": optimizer.state_dict(),
                                     "scheduler": scheduler.state_dict(), "epoch": epoch, "best": best,
                                     "best_epoch": best_epoch, "stale": stale, "rng": rng_state()}, ckpt_last)
    if stale >= args.early_stop:
        say(f"early stopping: no validation improvement for {stale} epochs")
    say(f"best validation epoch {best_epoch} ({args.select_on} {sign * best:.4f}); wrote {run_dir}/config.json, log.jsonl, "
        f"checkpoint_best.pt, checkpoint_last.pt")
    return run_dir


def setup_distributed(device_flag: str):
    """(rank, world_size, device); initialises torch.distributed when launched by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            return torch.distributed.get_rank(), world_size, torch.device("cuda", local_rank)
        return torch.distributed.get_rank(), world_size, torch.device("cpu")
    if device_flag == "auto":
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return 0, 1, torch.device(device_flag)


def main(argv=None) -> str:
    args = parse_args(argv)
    if args.mode == "frozen" and args.audio_padding == "authors":
        raise PipelineError("--mode frozen caches one embedding per segment, which needs --audio-padding exact "
                            "(with 'authors' a segment's embedding depends on the rest of its batch)")
    if args.epochs < 1 or args.batch_size < 1:
        raise PipelineError(f"--epochs {args.epochs} and --batch-size {args.batch_size} must be at least 1")
    # Tiny gradients and Adam's squared averages reach the subnormal float range, where x86 CPUs are
    # many times slower; flushing them to zero changes no result above 1e-38 (GPUs flush by default).
    torch.set_flush_denormal(True)
    dist_info = setup_distributed(args.device)
    print = builtins.print if dist_info[0] == 0 else (lambda *a, **k: None)  # noqa: A001 (rank 0 speaks)
    work = Path(args.work)
    labels = utils.load_labels(work)
    cache_dir = work / args.pipe / args.variant / "cache"
    if not cache_dir.is_dir():
        raise PipelineError(f"{cache_dir}: no segment cache; run step 3 first: python align.py --work {work} --pipe {args.pipe}")
    cached = {p.stem for p in cache_dir.glob("*.pt")}
    meta = {}
    for d, info in labels["dialogs"].items():
        if d in cached:
            meta[d] = {"session": info["session"], "kind": info.get("kind"), "script": info.get("script")}
    missing = sorted(set(labels["dialogs"]) - cached)
    extra = sorted(cached - set(labels["dialogs"]))
    print(f"read {work / 'labels.json'}: {len(labels['dialogs'])} dialogs; {len(meta)} have a segment cache in {cache_dir}"
          f" (skipped {len(missing)} without one{': ' + ', '.join(missing[:5]) if missing else ''};"
          f" ignored {len(extra)} caches not in labels.json)")
    folds = make_folds(meta, args.folds, args.test_session, args.val_fraction, args.split_seed, args.validation)
    seeds = list(dict.fromkeys(args.seed))
    template = args.run or (f"{args.pipe}-{args.variant}-{args.mode}-{args.modality}"
                            + (f"-{args.fusion}" if args.fusion != "gated-xattn" else "") + ("-s{seed}" if len(seeds) > 1 else ""))
    if len(seeds) > 1 and "{seed}" not in template:
        raise PipelineError(f"--run {template!r}: with several seeds the run name must contain {{seed}}")
    info = {"corpus": labels.get("corpus")}
    shared = {fold["name"]: {} for fold in folds}  # data read once per split, shared by the seeds
    run_dirs = []
    for seed in seeds:
        run_name = template.replace("{seed}", str(seed))
        run_dir = work / "runs" / run_name
        seed_args = argparse.Namespace(**{**vars(args), "seed": seed})
        for fold in folds:
            fdir = run_dir if fold["name"] == "main" else run_dir / fold["name"]
            print(f"{run_name} (seed {seed}) split {fold['name']}: train {len(fold['train'])} dialogs, val {len(fold['val'])}, "
                  f"test {len(fold['test'])} (session {fold['test_session']}; "
                  + ("never read here" if args.validation == "held-out" else "USED FOR VALIDATION AND SELECTION, --validation test")
                  + f"), unused {len(fold['unused'])}")
            run_fold(seed_args, fold, fdir, info, dist_info, shared[fold["name"]])
        if len(folds) > 1 and dist_info[0] == 0:
            utils.atomic_write_json(run_dir / "config.json", {
                "folds": [f["name"] for f in folds], "folds_scheme": args.folds, "run": run_name,
                "flags": vars(seed_args), "code_version": utils.code_version(),
                "note": "each fold dir is a full run dir; evaluate each fold and aggregate mean and std"})
            print(f"wrote {run_dir / 'config.json'} listing {len(folds)} folds")
        run_dirs.append(str(run_dir))
    if dist_info[1] > 1:
        torch.distributed.destroy_process_group()
    return run_dirs[0] if len(run_dirs) == 1 else run_dirs


if __name__ == "__main__":
    main()
