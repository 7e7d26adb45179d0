"""Step 4: train the gated cross-attention fusion classifier (paper Section III-B, Fig. 1).

Reads the step-3 segment caches WORK/<pipe>/<variant>/cache/<dialog>.pt and WORK/labels.json, trains
utils.SERModel and writes WORK/runs/<run>/ (config.json, log.jsonl, checkpoint_last.pt, checkpoint_best.pt);
--mode frozen also caches embeddings in WORK/features/<extractor-key>/<pipe>/<variant>/ (docs/FORMATS.md).

The defaults are the authors' training recipe (the paper gives none). Where they depart from the authors'
code (validation dialogs held out of the training sessions; padding-exact audio embeddings), a flag restores
theirs: docs/DEPARTURES.md. The splits (--folds session, loso, speaker-script), sweeps (several values of
--variant, --modality, --fusion or --seed: one run per combination, each variant's data read once), the
speed options and DistributedDataParallel under torchrun: docs/REAL_DATA.md. --check is the preflight,
--download-models makes offline copies of the extractors (docs/REAL_DATA.md).

    python train.py --work preprocessed_iemocap --pipe whisperx --variant aligned-p1.5
    python train.py --variant aligned-p1 aligned-p2 --seed 0 1 2 --run 'pause-{variant}-s{seed}'
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
from common import checklist, cli, defaults, fileio, formats, huberrors, modelhub, rundirs
from common.cli import PipelineError
from common.formats import LABELS

# Flags that may change between an interrupted run and its resumption without changing results.
RESUME_FREE_KEYS = ("code_version", "device", "num_workers", "resume", "run_dir")
# What the run read, checked on its own when resuming (resume_data_check).
DATA_KEYS = ("data", "data_changed_on_resume", "allow_changed_data")
MODEL = utils.ModelConfig()  # the defaults of the model's flags (one place: utils.ModelConfig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for add_flags in (
        add_data_flags,
        add_model_flags,
        add_recipe_flags,
        add_split_flags,
        add_runtime_flags,
        add_resume_flags,
        add_preflight_flags,
    ):
        add_flags(p)
    return p.parse_args(argv)


def add_data_flags(p: argparse.ArgumentParser) -> None:
    """Where the run reads: the work directory, the corpus (--check --planned only), step 2's run, step 3's variants."""
    p.add_argument("--work", default=defaults.WORK_DIR, help="work directory of the pipeline")
    p.add_argument(
        "--iemocap",
        default=None,
        help="training reads the corpus recorded in labels.json; this is read only by --check --planned "
        "(estimates before step 1 has run)",
    )
    p.add_argument("--pipe", default=defaults.PIPE, help="step-2 run name (WORK/<pipe>/)")
    p.add_argument(
        "--variant",
        nargs="+",
        default=["aligned-p1.5"],
        help="step-3 variant(s): aligned-p<max pause>, e.g. aligned-p1.5, or baseline, with a suffix per "
        "other step-3 setting (docs/FORMATS.md, Variant names); several: a sweep (docs/REAL_DATA.md, Sweeps)",
    )


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """What is trained: mode, modality, fusion, the two extractors, and the run's name."""
    p.add_argument(
        "--mode",
        choices=["finetune", "frozen"],
        default="finetune",
        help="finetune: extractors train with --lr-extractor; frozen: cached embeddings, head only",
    )
    p.add_argument(
        "--modality",
        nargs="+",
        choices=list(utils.MODALITIES),
        default=[MODEL.modality],
        help="fusion (both extractors), text or audio only; several: a sweep",
    )
    p.add_argument(
        "--fusion",
        nargs="+",
        choices=list(utils.FUSIONS),
        default=[MODEL.fusion],
        help="how the two embeddings are fused (utils.SERModel): the paper's gated cross-attention, "
        "or the ablations xattn (no forget gates), concat (MLP), late (mean of the single-modality "
        "heads' logits); applies to --modality fusion (a single-modality run records the first)",
    )
    p.add_argument("--text-model", default=MODEL.text_model, help="hub name or local dir (AutoModel/AutoTokenizer)")
    p.add_argument(
        "--audio-model", default=MODEL.audio_model, help="hub name or local dir (AutoModel/AutoFeatureExtractor)"
    )
    p.add_argument(
        "--run",
        "--run-name",
        dest="run",
        nargs="+",
        default=None,
        help="run name under WORK/runs/ (default: <pipe>-<variant>-<mode>-<modality>[-<fusion>][-s<seed>]); "
        "for a sweep, a template with {variant} {modality} {fusion} {seed} or one name per run in "
        "sweep order; under torchrun spell it --run-name (torchrun takes --run for its own --run-path)",
    )


def add_recipe_flags(p: argparse.ArgumentParser) -> None:
    """The training recipe (the authors' values by default): optimiser, head size, schedule, early stopping."""
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr-extractor", type=float, default=2e-5)
    p.add_argument("--lr-head", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--dropout", type=float, default=MODEL.dropout)
    p.add_argument("--heads", type=int, default=MODEL.heads, help="attention heads of cross-attention and fusion layer")
    p.add_argument(
        "--fusion-layers", type=int, default=MODEL.fusion_layers, help="Transformer encoder layers of the fusion layer"
    )
    p.add_argument("--ffn-dim", type=int, default=MODEL.ffn_dim, help="feed-forward size of the fusion layer")
    p.add_argument("--plateau-factor", type=float, default=0.5)
    p.add_argument("--plateau-patience", type=int, default=2)
    p.add_argument(
        "--early-stop", type=int, default=5, help="stop after this many epochs without validation improvement"
    )
    p.add_argument(
        "--schedule-on",
        choices=["loss", "acc"],
        default="loss",
        help="validation quantity the ReduceLROnPlateau schedule follows (the authors': loss)",
    )
    p.add_argument(
        "--select-on",
        choices=["acc", "loss"],
        default="acc",
        help="validation quantity for the kept checkpoint and early stopping (the authors': accuracy; "
        "a strict improvement is needed, so the earliest epoch wins ties)",
    )


def add_split_flags(p: argparse.ArgumentParser) -> None:
    """The splits (docs/REAL_DATA.md, Splits and folds) and the seeds."""
    p.add_argument(
        "--validation",
        choices=["held-out", "test"],
        default="held-out",
        help="held-out: validation dialogs drawn from the training sessions (ours); "
        "test: validate and select on the test split, as the authors did",
    )
    p.add_argument("--folds", choices=["session", "loso", "speaker-script"], default="session")
    p.add_argument("--test-session", type=int, default=5, help="with --folds session")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.15,
        help="share of each training session's dialogs held out for validation",
    )
    p.add_argument(
        "--seed",
        type=int,
        nargs="+",
        default=[0],
        help="seed(s) of initialisation and data order; several seeds train one run each (a sweep)",
    )
    p.add_argument(
        "--split-seed",
        type=int,
        default=0,
        help="seed of the validation-dialog draw, kept apart from --seed so that seeds share one split",
    )


def add_runtime_flags(p: argparse.ArgumentParser) -> None:
    """Device, the extractors' input (crop, padding, truncation) and speed."""
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1")
    p.add_argument(
        "--max-audio-seconds",
        type=float,
        default=MODEL.max_audio_seconds,
        help="centre-crop longer segments to this many seconds, for small GPUs (default 0 = no crop, as the authors)",
    )
    p.add_argument(
        "--audio-padding",
        choices=["exact", "authors"],
        default=MODEL.audio_padding,
        help="exact: padding in a batch does not change a segment's audio embedding (ours); "
        "authors: each padded row normalised over its padded length, no attention mask, "
        "mean over every frame of the padded batch",
    )
    p.add_argument("--max-text-tokens", type=int, default=MODEL.max_text_tokens)
    p.add_argument(
        "--bf16", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast (default: on with CUDA)"
    )
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument(
        "--freeze-feature-encoder", action="store_true", help="fine-tuned mode: keep the audio model's CNN fixed"
    )
    p.add_argument("--gradient-checkpointing", action="store_true")


def add_resume_flags(p: argparse.ArgumentParser) -> None:
    """Resuming an interrupted run."""
    p.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="resume from checkpoint_last.pt when the run dir has one with the same config",
    )
    p.add_argument(
        rundirs.ALLOW_CHANGED_DATA,
        action="store_true",
        help="resume even when labels.json, the step-3 config or cache files changed since the checkpoint "
        "(refused otherwise); what changed is recorded in config.json data_changed_on_resume",
    )


def add_preflight_flags(p: argparse.ArgumentParser) -> None:
    """--check (preflight()) and --download-models (download_models()): neither trains."""
    c = p.add_argument_group("preflight and offline models (see preflight() and download_models())")
    c.add_argument(
        "--check",
        action="store_true",
        help="preflight only: labels and step-3 cache (splits and segment counts), extractors resolvable "
        "(local folder, or hub access with HF_TOKEN), CUDA and GPU memory, disk, a time estimate; "
        "writes nothing; exit status 1 on any problem",
    )
    c.add_argument(
        "--planned",
        action="store_true",
        help="with --check: outputs of earlier steps that do not exist yet (labels.json, the step-3 "
        "cache) are reported as to be made, not as problems, and the estimates use the corpus "
        "(--iemocap) instead; what reproduce.py --check passes before a first run",
    )
    c.add_argument(
        "--check-runs",
        type=int,
        default=None,
        metavar="N",
        help="with --check: estimate disk and time for N trainings like this one, each with every fold "
        "(default: the number of --seed values; reproduce.py passes the runs it plans)",
    )
    c.add_argument(
        "--download-models",
        metavar="DIR",
        default=None,
        help="copy --text-model and --audio-model from the hub into DIR/<org>/<name> (the files that "
        "load: config, tokenizer or feature extractor, one weights file), write DIR/models.json, "
        "print the paths to pass back as --text-model/--audio-model, and stop",
    )


# ---- splits -----------------------------------------------------------------------------------


def split_val(train_dialogs: list[str], fraction: float, seed: int, session_of=None) -> tuple[list[str], list[str]]:
    """Hold out a seeded share of each training session's dialogs (at least one) for validation.
    session_of(dialog) -> its session (default: from an IEMOCAP name; make_folds passes labels.json's)."""
    session_of = session_of or formats.session_of
    rng = random.Random(seed)
    train, val = [], []
    for ses in sorted({session_of(d) for d in train_dialogs}):
        ds = sorted(d for d in train_dialogs if session_of(d) == ses)
        rng.shuffle(ds)
        k = min(len(ds) - 1, max(1, round(fraction * len(ds)))) if fraction > 0 else 0
        val += ds[:k]
        train += ds[k:]
    return sorted(train), sorted(val)


def speaker_identity(dialog: str, session, name: str) -> str:
    """Who a labels.json speaker is, for speaker-disjoint folds (docs/REAL_DATA.md): IEMOCAP's F and M in an
    IEMOCAP-named dialog are the actors of that session ('Session 3 F'); any other name is one person across the
    whole corpus (a CSV corpus names its speakers; 'Ross' in two sessions is one speaker)."""
    if name in ("F", "M") and formats.iemocap_dialog_meta(dialog) is not None:
        return f"Session {session} {name}"
    return name


def fold_meta(dialog: str, info: dict) -> dict:
    """What make_folds reads of one labels.json dialog: session, kind, script and its speakers' identities."""
    return {
        "session": info.get("session"),
        "kind": info.get("kind"),
        "script": info.get("script"),
        "speakers": sorted({speaker_identity(dialog, info.get("session"), u["speaker"]) for u in info["utterances"]}),
    }


def exclude_test_speakers(meta: dict, test: list[str], train_pool: list[str]) -> tuple[list[str], list[str]]:
    """(training dialogs, dialogs left out): the training dialogs in which a speaker of a test dialog speaks are
    left out, so that no test speaker is heard in training. meta[d]["speakers"]: the dialog's speaker
    identities (speaker_identity); a dialog without the key shares nobody."""
    heard = set().union(*(meta[d].get("speakers", ()) for d in test))
    shared = [d for d in train_pool if heard & set(meta[d].get("speakers", ()))]
    return [d for d in train_pool if d not in shared], shared


def make_folds(
    meta: dict, scheme: str, test_session: int, val_fraction: float, seed: int, validation: str = "held-out"
) -> list[dict]:
    """meta: {dialog: {"session", "kind", "script", "speakers"}} of the dialogs that have a segment cache.
    -> [{"name", "train", "val", "test", "unused"}] (the schemes: docs/REAL_DATA.md). validation "test"
    (the authors'): no held-out dialogs, the test dialogs are the validation set. loso and speaker-script are
    speaker-disjoint: a training dialog in which a test speaker speaks is unused (listed in
    "unused_for_test_speakers"; never on IEMOCAP, whose actors are each in one session)."""
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
        train_pool, shared = exclude_test_speakers(meta, test, train_pool) if scheme != "session" else (train_pool, [])
        unused += shared
        if not test or not train_pool:
            raise PipelineError(
                f"fold testing session {k}: {len(test)} test and {len(train_pool)} training dialogs; "
                f"sessions with caches: {sessions}"
                + (
                    f"; {len(shared)} dialogs of other sessions were left out of training because a test "
                    "speaker speaks in them (speakers are corpus-wide names: docs/REAL_DATA.md)"
                    if shared
                    else ""
                )
            )
        train, val = (
            split_val(train_pool, val_fraction, seed, lambda d: meta[d]["session"])
            if validation == "held-out"
            else (sorted(train_pool), sorted(test))
        )
        name = "main" if scheme == "session" else f"fold{k}"
        folds.append(
            {
                "name": name,
                "test_session": k,
                "train": train,
                "val": val,
                "test": sorted(test),
                "unused": sorted(unused),
                **({"held_script": held_script} if scheme == "speaker-script" else {}),
                **({"unused_for_test_speakers": sorted(shared)} if shared else {}),
            }
        )
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
            audio_s += float(batch["lengths"].sum()) / formats.SAMPLE_RATE
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


def embedding_batches(
    feats: dict, labels: torch.Tensor, batch_size: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1
) -> list[dict]:
    """Batches of cached embeddings; shuffled with seed (= run seed + epoch) when training."""
    n = len(labels)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if world_size > 1:  # every rank must run the same number of steps (as LengthBucketSampler)
        batches = (batches + batches[: (-len(batches)) % world_size])[rank::world_size]
    return [
        {
            "z_t": feats["text"][b] if feats["text"] is not None else None,
            "z_a": feats["audio"][b] if feats["audio"] is not None else None,
            "labels": labels[b],
        }
        for b in batches
    ]


# ---- checkpoints ----------------------------------------------------------------------------------


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
    }
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
    return {
        k: v.detach().cpu().clone()
        for k, v in (model.state_dict() if mode == "finetune" else model.head_state_dict()).items()
    }


# ---- one run --------------------------------------------------------------------------------


def resume_data_check(old: dict, config: dict, run_dir: Path, allow: bool) -> None:
    """Resume only on the data the checkpoint was trained on (config "data", common.rundirs.run_data_identity):
    else a one-line refusal, or with --allow-changed-data config["data_changed_on_resume"] lists it."""
    changes = rundirs.data_changes(old["data"], config["data"]) if isinstance(old.get("data"), dict) else []
    if changes and not allow:
        raise rundirs.changed_data_error(run_dir, changes, "start over with --no-resume (or another --run)")
    earlier = old.get("data_changed_on_resume") or []
    if earlier or changes:
        config["data_changed_on_resume"] = earlier + changes


def run_fold(args, split: dict, run_dir: Path, meta_info: dict, dist_info: tuple, shared: dict) -> Path:
    """Train one seed on one split. `shared` carries what does not depend on the seed (the datasets,
    frozen embeddings) from one seed of the same split to the next, so it is read once."""
    rank, world_size, device = dist_info
    say = print if rank == 0 else (lambda *a, **k: None)
    bf16 = (device.type == "cuda") if args.bf16 is None else (args.bf16 and device.type == "cuda")
    config = fold_config(args, split, run_dir, meta_info, world_size, bf16, shared)
    resume_state = resume_checkpoint(args, config, run_dir, say)
    if rank == 0:
        prepare_run_dir(run_dir, config, resume_state, say)

    rundirs.seed_everything(args.seed)
    model, collator, norm_segment = fold_model(args, config, device, say)
    datasets = fold_datasets(args, split, shared, config, norm_segment, say)
    if args.mode == "frozen":
        net, groups, batches_for = frozen_stage(args, model, datasets, collator, config, shared, dist_info, bf16, say)
    else:
        net, groups = finetune_stage(args, model, datasets, device, say)
    net, optimizer, scheduler = fold_optimiser(args, net, groups, device, world_size)
    if args.mode == "finetune":
        batches_for = fold_loaders(args, datasets, collator, dist_info)
    progress = restore_progress(args, resume_state, model, optimizer, scheduler)
    fit(args, model, net, optimizer, scheduler, batches_for, progress, run_dir, dist_info, bf16, say)
    return run_dir


def uses(args) -> tuple[bool, bool]:
    """(text used, audio used) by --modality."""
    return args.modality in ("fusion", "text"), args.modality in ("fusion", "audio")


def fold_config(args, split: dict, run_dir: Path, meta_info: dict, world_size: int, bf16: bool, shared: dict) -> dict:
    """The run's config.json: the flags, the extractors' identity, the frozen feature caches, the split and
    the identity of the data it reads (hashed once per split for all its seeds, in shared["data"])."""
    from transformers import AutoFeatureExtractor

    work = Path(args.work).resolve()
    use_text, use_audio = uses(args)
    extractors = {
        "text": modelhub.extractor_identity(args.text_model) if use_text else None,
        "audio": modelhub.extractor_identity(args.audio_model) if use_audio else None,
    }
    do_norm = (
        bool(getattr(AutoFeatureExtractor.from_pretrained(args.audio_model), "do_normalize", True))
        if use_audio
        else True
    )
    feature_dirs = {}
    if args.mode == "frozen":
        # everything that changes an embedding besides the extractor and the code (utils.feature_key)
        settings = {
            "text": {
                "max_text_tokens": args.max_text_tokens,
                "bf16": bf16,
                "tokenizer_sha256": modelhub.tokenizer_digest(args.text_model) if use_text else None,
            },
            "audio": {"max_audio_seconds": args.max_audio_seconds, "do_normalize": do_norm, "bf16": bf16},
        }
        feature_dirs = {
            k: str(work / "features" / utils.feature_key(k, extractors[k], settings[k]) / args.pipe / args.variant)
            for k in ("text", "audio")
            if extractors[k] is not None
        }
    model = utils.ModelConfig.from_dict({f: getattr(args, f) for f in utils.ModelConfig.field_names()})
    config = {k: v for k, v in vars(args).items() if k not in ("run", "folds", *utils.ModelConfig.field_names())}
    config.update(
        {
            "model": model.to_dict(),
            "work": str(work),
            "run": run_dir.name,
            "folds_scheme": args.folds,
            "bf16": bf16,
            "do_normalize": do_norm,
            "extractors": extractors,
            "feature_dirs": feature_dirs,
            "split": split,
            "labels": meta_info.get("labels", list(LABELS)),
            "corpus": meta_info["corpus"],
            "code_version": rundirs.code_version(),
            "world_size": world_size,
        }
    )
    if "data" not in shared:  # what the run reads: hashed once per split for all its seeds
        shared["data"] = rundirs.run_data_identity(
            work, args.pipe, args.variant, [d for part in ("train", "val", "test") for d in split[part]]
        )
    config["data"] = shared["data"]
    return config


def resume_checkpoint(args, config: dict, run_dir: Path, say) -> dict | None:
    """The last checkpoint to resume from (None: start afresh); refused when the run dir's config differs
    in a key that changes results, or its data changed (resume_data_check)."""
    ckpt_last = run_dir / "checkpoint_last.pt"
    if not (ckpt_last.is_file() and args.resume):
        return None
    old = fileio.read_json(run_dir / "config.json", "run config")
    resume_data_check(old, config, run_dir, args.allow_changed_data)
    differ = sorted(
        k
        for k in set(old) | set(config)
        if k not in RESUME_FREE_KEYS + DATA_KEYS and old.get(k) != json.loads(json.dumps(config.get(k)))
    )
    if differ:
        raise PipelineError(
            f"{run_dir}: has a checkpoint from a different configuration (differs in {differ}); "
            f"use another --run or --no-resume to start over"
        )
    resume_state = fileio.load_pt(ckpt_last, "last checkpoint")
    say(f"resuming {run_dir} after epoch {resume_state['epoch']}")
    return resume_state


def prepare_run_dir(run_dir: Path, config: dict, resume_state: dict | None, say) -> None:
    """Rank 0: the run dir made, temporary files of a killed write removed, the log started afresh or cut
    back to the resumed epoch, config.json written."""
    feature_dirs = config["feature_dirs"]
    run_dir.mkdir(parents=True, exist_ok=True)
    # left by a write that a kill interrupted (common.fileio.atomic_write_bytes), in the run dir and its feature caches
    stale_tmp = fileio.remove_stale_temp(run_dir, recursive=False) + fileio.remove_stale_temp(*feature_dirs.values())
    if stale_tmp:
        say(
            f"removed {stale_tmp} unfinished temporary file(s) of an interrupted run from {run_dir}"
            + (" and its feature caches" if feature_dirs else "")
        )
    log_path = run_dir / "log.jsonl"
    if resume_state is None and log_path.exists():
        log_path.unlink()
    elif resume_state is not None and log_path.exists():  # a kill after the log line but before the checkpoint
        kept = [
            line
            for line in log_path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line)["epoch"] <= resume_state["epoch"]
        ]
        fileio.atomic_write_text(log_path, "".join(line + "\n" for line in kept))
    fileio.atomic_write_json(run_dir / "config.json", config)


def fold_model(args, config: dict, device, say) -> tuple:
    """(model on the device, collator, where a segment's audio is normalised) of the run config."""
    from transformers import AutoTokenizer

    model = utils.build_model(config).to(device)
    say(
        f"model: {args.modality}"
        + (f" ({args.fusion} fusion)" if args.modality == "fusion" else "")
        + f", mode {args.mode}, hidden {model.dim}, "
        f"{sum(p.numel() for p in model.extractor_parameters()) / 1e6:.2f} M extractor + "
        f"{sum(p.numel() for p in model.head_parameters()) / 1e6:.2f} M head parameters"
    )
    tokenizer = AutoTokenizer.from_pretrained(args.text_model) if uses(args)[0] else None
    norm_segment, norm_row = utils.normalisation_places(args.audio_padding, config["do_normalize"])
    collator = utils.Collator(tokenizer, args.max_text_tokens, normalize_rows=norm_row)
    return model, collator, norm_segment


def fold_datasets(args, split: dict, shared: dict, config: dict, norm_segment: bool, say) -> dict:
    """{"train", "val"}: utils.SegmentDataset of the split's labelled segments, read once into `shared`."""
    cache_dir = Path(config["work"]) / args.pipe / args.variant / "cache"
    use_audio = uses(args)[1]
    # Keyed by what changes their audio (each arm of a modality sweep prepares it as its own model's config
    # says); a text-only model reads no audio, so any arm's datasets serve it.
    dkey = ("datasets", args.max_audio_seconds, config["do_normalize"] if use_audio else None)
    if not use_audio:
        dkey = next((k for k in shared if isinstance(k, tuple) and k[0] == "datasets"), dkey)
    datasets = shared.setdefault(dkey, {})
    for part in ("train", "val"):
        if part in datasets:
            continue
        datasets[part] = utils.SegmentDataset(
            [cache_dir / f"{d}.pt" for d in split[part]],
            labelled_only=True,
            max_audio_seconds=args.max_audio_seconds,
            do_normalize=norm_segment,
            labels=config["labels"],
        )
        c = datasets[part].counts
        say(
            f"read {part}: {c['dialogs']} dialogs, {c['segments']} labelled segments "
            f"(skipped {c['unlabelled_skipped']} without a {len(config['labels'])}-class label; "
            + (f"cropped {c['cropped']} > {args.max_audio_seconds:g} s; " if args.max_audio_seconds else "no crop; ")
            + f"padded {c['padded_short']} < 25 ms)"
        )
        if not len(datasets[part]):
            raise PipelineError(f"{cache_dir}: no labelled segments in the {part} dialogs {split[part][:5]}...")
    return datasets


def frozen_stage(
    args, model, datasets: dict, collator, config: dict, shared: dict, dist_info: tuple, bf16: bool, say
) -> tuple:
    """Frozen mode: extractors fixed, each segment's embeddings read from (or computed into) the feature
    cache once -> (the module trained, its parameter groups, epoch -> (train batches, val batches))."""
    rank, world_size, device = dist_info
    work, feature_dirs = Path(config["work"]), config["feature_dirs"]
    cache_dir = work / args.pipe / args.variant / "cache"
    for p in model.extractor_parameters():
        p.requires_grad_(False)
    feats = shared.setdefault(("feats", *sorted(feature_dirs.items())), {})  # per feature cache (utils.feature_key)
    for part, ds in datasets.items():
        if part in feats:
            continue
        # Distributed: rank 0 fills the on-disk cache alone; the other ranks then only read it.
        if world_size > 1 and rank != 0:
            torch.distributed.barrier()
        feats[part] = utils.cached_embeddings(
            model, ds, collator, feature_dirs, cache_dir, args.batch_size, device, bf16, args.num_workers
        )
        if world_size > 1 and rank == 0:
            torch.distributed.barrier()
        say(
            f"frozen embeddings for {part} ({len(ds)} segments x {len(feature_dirs)} extractor(s)): "
            f"{feats[part]['reused']} read from the feature cache, {feats[part]['computed']} computed "
            f"(under {work / 'features'})"
        )
        feats[part] = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in feats[part].items()}
    labels = {part: torch.tensor([s["label"] for s in ds.segments], device=device) for part, ds in datasets.items()}

    def batches_for(epoch: int) -> tuple:
        return (
            embedding_batches(
                feats["train"], labels["train"], args.batch_size, True, args.seed + epoch, rank, world_size
            ),
            embedding_batches(feats["val"], labels["val"], args.batch_size, False, 0),
        )

    return HeadOnly(model), [{"params": model.head_parameters(), "lr": args.lr_head}], batches_for


def finetune_stage(args, model, datasets: dict, device, say) -> tuple:
    """Fine-tuned mode: optionally a frozen CNN (its features computed once) and gradient checkpointing
    -> (the module trained, its parameter groups: extractors at --lr-extractor, the head at --lr-head)."""
    if args.freeze_feature_encoder and model.audio is not None:
        model.audio.freeze_feature_encoder()
        if args.audio_padding == "exact":  # a frozen CNN's features are computed once, for every epoch and seed
            n = sum(utils.cache_cnn_features(model.audio, ds, args.batch_size, device) for ds in datasets.values())
            say(
                f"frozen CNN: features of {n} segments computed once and kept in memory"
                + (
                    " (the others were cached by an earlier seed)"
                    if n < sum(len(ds) for ds in datasets.values())
                    else ""
                )
            )
    if args.gradient_checkpointing:
        for m in model.extractors():
            m.gradient_checkpointing_enable()
    return model, [
        {"params": [p for p in model.extractor_parameters() if p.requires_grad], "lr": args.lr_extractor},
        {"params": model.head_parameters(), "lr": args.lr_head},
    ]


def fold_optimiser(args, net, groups: list, device, world_size: int) -> tuple:
    """(net, wrapped in DistributedDataParallel under torchrun; AdamW; ReduceLROnPlateau)."""
    if world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            net, find_unused_parameters=True, device_ids=[device.index] if device.type == "cuda" else None
        )
    # fused: one kernel for all parameters instead of a loop over them (the same update; on CPU, where
    # the tiny demo models make the per-parameter loop a sizeable share of a step, and on CUDA)
    optimizer = torch.optim.AdamW(groups, weight_decay=args.weight_decay, fused=device.type in ("cpu", "cuda"))
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=args.plateau_factor, patience=args.plateau_patience
    )
    return net, optimizer, scheduler


def fold_loaders(args, datasets: dict, collator, dist_info: tuple):
    """Fine-tuned mode: the DataLoaders (length-bucketed batches) -> epoch -> (train batches, val batches)."""
    from tqdm import tqdm

    rank, world_size, device = dist_info
    train_sampler = utils.LengthBucketSampler(
        datasets["train"].lengths, args.batch_size, shuffle=True, seed=args.seed, rank=rank, world_size=world_size
    )
    # The loaders draw their workers' base seed from their own generator, never from the global RNG:
    # with persistent workers that draw happens once, at the first epoch of a process, so drawing it
    # from the global RNG would shift every later dropout mask of a resumed run against an
    # uninterrupted one. (The sampler is seeded by the run's seed and the epoch; the workers only
    # tokenise, which draws nothing.)
    train_loader = torch.utils.data.DataLoader(
        datasets["train"],
        batch_sampler=train_sampler,
        collate_fn=collator,
        num_workers=args.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.num_workers > 0,
        generator=torch.Generator().manual_seed(args.seed),
    )
    val_loader = torch.utils.data.DataLoader(
        datasets["val"],
        collate_fn=collator,
        num_workers=args.num_workers,
        batch_sampler=utils.LengthBucketSampler(datasets["val"].lengths, args.batch_size, shuffle=False),
        generator=torch.Generator().manual_seed(args.seed),
    )

    def batches_for(epoch: int) -> tuple:
        train_sampler.set_epoch(epoch)
        return tqdm(train_loader, desc=f"epoch {epoch}", leave=False, disable=rank != 0), val_loader

    return batches_for


def restore_progress(args, resume_state: dict | None, model, optimizer, scheduler) -> dict:
    """{"epoch" (the next), "best", "best_epoch", "stale"}: afresh, or restored with the model, optimiser,
    schedule and RNG states from the last checkpoint."""
    if resume_state is None:
        return {"epoch": 1, "best": None, "best_epoch": 0, "stale": 0}
    model.load_state_dict(resume_state["model"], strict=args.mode == "finetune")
    optimizer.load_state_dict(resume_state["optimizer"])
    scheduler.load_state_dict(resume_state["scheduler"])
    progress = {
        "epoch": resume_state["epoch"] + 1,
        "best": resume_state["best"],
        "best_epoch": resume_state["best_epoch"],
        "stale": resume_state["stale"],
    }
    set_rng_state(resume_state["rng"])
    return progress


def fit(
    args,
    model,
    net,
    optimizer,
    scheduler,
    batches_for,
    progress: dict,
    run_dir: Path,
    dist_info: tuple,
    bf16: bool,
    say,
) -> None:
    """The epochs: train, validate, step the schedule, keep the best checkpoint, stop early; rank 0 writes
    log.jsonl and the checkpoints after each epoch (save_epoch)."""
    rank, world_size, device = dist_info
    # Both quantities are turned into something to minimise: loss as is, accuracy negated.
    sched_sign = 1.0 if args.schedule_on == "loss" else -1.0
    sign = 1.0 if args.select_on == "loss" else -1.0
    best, best_epoch, stale = progress["best"], progress["best_epoch"], progress["stale"]
    for epoch in range(progress["epoch"], args.epochs + 1):
        if stale >= args.early_stop:
            break
        t0 = time.time()
        batches, val_batches = batches_for(epoch)
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
        record = {
            "epoch": epoch,
            "train_loss": tr["loss"],
            "train_acc": tr["acc"],
            "val_loss": va["loss"],
            "val_acc": va["acc"],
            "lr": lrs,
            "best_epoch": best_epoch,
            "seconds": seconds,
            "samples_per_s": tr["samples"] * world_size / seconds,
            "audio_s_per_s": tr["audio_seconds"] * world_size / seconds,
        }
        say(
            f"epoch {epoch:2d}  train loss {tr['loss']:.4f} acc {tr['acc']:.3f}  "
            f"val loss {va['loss']:.4f} acc {va['acc']:.3f}  "
            f"lr {' '.join(f'{x:.2e}' for x in lrs)}  {seconds:.1f} s{'  *best' if improved else ''}"
        )
        if rank == 0:
            save_epoch(
                args,
                model,
                optimizer,
                scheduler,
                run_dir,
                record,
                va,
                improved,
                {"epoch": epoch, "best": best, "best_epoch": best_epoch, "stale": stale},
            )
    if stale >= args.early_stop:
        say(f"early stopping: no validation improvement for {stale} epochs")
    say(
        f"best validation epoch {best_epoch} ({args.select_on} {sign * best:.4f}); wrote {run_dir}/config.json, "
        f"log.jsonl, checkpoint_best.pt, checkpoint_last.pt"
    )


def save_epoch(
    args, model, optimizer, scheduler, run_dir: Path, record: dict, va: dict, improved: bool, progress: dict
) -> None:
    """After an epoch: checkpoint_best.pt when it improved, its log.jsonl line, then checkpoint_last.pt
    (progress: {"epoch", "best", "best_epoch", "stale"}, with the RNG states, for resuming)."""
    if improved:
        fileio.atomic_torch_save(
            {"model": trained_state(model, args.mode), "epoch": progress["epoch"], "val": va},
            run_dir / "checkpoint_best.pt",
        )
    with open(run_dir / "log.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    fileio.atomic_torch_save(
        {
            "model": trained_state(model, args.mode),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            **progress,
            "rng": rng_state(),
        },
        run_dir / "checkpoint_last.pt",
    )


# ---- preflight (--check) and offline copies of the extractors (--download-models) ------------------

# Constants of the preflight's ESTIMATES (see preflight()).
TOKENS_PER_WORD = 1.3  # byte-level BPE tokens per transcript word of English speech, punctuation included (rough)
TRAIN_EFFICIENCY = 0.3  # share of the GPU's dense bf16 peak a training step sustains (common.checklist.estimate_time)
ACTIVATION_GIB = {"finetune": 4.0, "frozen": 1.0}  # GPU memory beyond weights and optimizer state, batch 8 (rough)
BASE_SIZE = dict(params=1.24e8, dense=0.9e8, hidden=768, layers=12, cnn_flops_per_s=4.9e9, frames_per_s=50.0)
# Extractors by hub name, for when neither a local folder nor the hub cache holds their files: all
# parameters, dense ones (without embedding tables and the CNN), hidden size, layers, CNN FLOPs per s.
# (Counted on the transformers models built from each config, without RoBERTa's unused pooler.)
KNOWN_EXTRACTORS = {
    defaults.TEXT_MODEL: dict(params=1.24e8, dense=0.85e8, hidden=768, layers=12),
    "roberta-large": dict(params=3.54e8, dense=3.02e8, hidden=1024, layers=24),
    defaults.AUDIO_MODEL: dict(params=0.94e8, dense=0.90e8, hidden=768, layers=12, cnn_flops_per_s=4.9e9),
    "facebook/wav2vec2-large-lv60": dict(params=3.15e8, dense=3.11e8, hidden=1024, layers=24, cnn_flops_per_s=4.9e9),
}
KNOWN_EXTRACTORS.update({"FacebookAI/" + k: v for k, v in list(KNOWN_EXTRACTORS.items()) if k.startswith("roberta")})
# Files an extractor folder needs besides config.json and weights ('|' separates alternatives).
EXTRACTOR_FILES = {
    "text": ("tokenizer.json|vocab.json|vocab.txt|spm.model|sentencepiece.bpe.model|tokenizer.model",),
    "audio": ("preprocessor_config.json",),
}
SENTENCEPIECE_FILES = ("spm.model", "sentencepiece.bpe.model", "tokenizer.model")  # DeBERTa v2/v3, XLM-R
NOT_DENSE_RE = (
    r"(word|position|token_type)_embeddings\.|embed_tokens|rel_embeddings"
    r"|feature_extractor\.conv_layers|masked_spec_embed"
)


def hub_like(name: str) -> bool:
    """'roberta-base' or 'org/name' that is not a path on disk: a hub repository id."""
    import re

    return (
        not Path(name).exists()
        and not str(name).startswith((".", "/", "~"))
        and re.fullmatch(r"([\w.-]+/)?[\w.-]+", str(name)) is not None
    )


def cnn_flops_per_second(config: dict) -> float:
    """FLOPs of the wav2vec 2.0-family convolutional front end per second of 16 kHz audio (forward):
    each layer costs 2 x C_in x C_out x kernel per output sample (4.9e9 for wav2vec2-base)."""
    rate, c_in, flops = float(formats.SAMPLE_RATE), 1, 0.0
    for c_out, k, s in zip(config.get("conv_dim", ()), config.get("conv_kernel", ()), config.get("conv_stride", ())):
        rate /= s
        flops += 2.0 * c_in * c_out * k * rate
        c_in = c_out
    return flops


def extractor_facts(name: str) -> dict:
    """What the estimates need of an extractor, read without loading the model -> {"params", "dense",
    "hidden", "layers", "cnn_flops_per_s", "frames_per_s", "source"}: config.json and the weights'
    shapes (safetensors header, or the PyTorch file memory-mapped) from the local folder or the hub
    cache; else KNOWN_EXTRACTORS; else BASE_SIZE. "dense" counts the parameters applied at every
    position: all but embedding tables (looked up, not multiplied) and the CNN (cnn_flops_per_s)."""
    import re

    def find(filename):
        folder = Path(name).expanduser()
        if folder.is_dir():
            return folder / filename if (folder / filename).is_file() else None
        if not hub_like(name):
            return None
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, filename)
        return Path(cached) if isinstance(cached, str) else None

    facts = {
        **BASE_SIZE,
        **KNOWN_EXTRACTORS.get(name, {}),
        "source": f"known size of {name}" if name in KNOWN_EXTRACTORS else "base size assumed (files not found)",
    }
    config_path = find("config.json")
    if config_path is None:
        return facts
    config = json.loads(config_path.read_text(encoding="utf-8"))
    facts.update(
        hidden=config.get("hidden_size", facts["hidden"]),
        layers=config.get("num_hidden_layers", facts["layers"]),
        cnn_flops_per_s=cnn_flops_per_second(config) if "conv_dim" in config else 0.0,
        frames_per_s=formats.SAMPLE_RATE / float(np.prod(config.get("conv_stride", [320]))),
    )
    shapes = None
    try:
        if (weights := find("model.safetensors")) is not None:
            with open(weights, "rb") as f:
                header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
            shapes = {k: v["shape"] for k, v in header.items() if k != "__metadata__"}
        elif (weights := find("pytorch_model.bin")) is not None:
            state = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
            shapes = {k: list(v.shape) for k, v in state.items()}
    except Exception:  # an unreadable weights file: the extractor check reports the folder; sizes stay assumed
        shapes = None
    if shapes:
        facts["params"] = float(sum(np.prod(s) for s in shapes.values()))
        facts["dense"] = float(sum(np.prod(s) for k, s in shapes.items() if not re.search(NOT_DENSE_RE, k)))
        facts["source"] = f"{config_path.parent}"
    return facts


def extractor_check(label: str, name: str, required) -> checklist.CheckItem:
    """A local folder with the files that load, or a hub repository: access with the token in HF_TOKEN
    (online), or its files in the hub cache (HF_HUB_OFFLINE=1)."""
    if Path(name).expanduser().exists():
        return modelhub.check_local_model(label, Path(name).expanduser(), required)
    if not hub_like(name):
        return checklist.CheckItem(
            label,
            False,
            f"{name}: no such folder; copy the model there, or give its hub name "
            "(e.g. roberta-base, facebook/wav2vec2-base)",
        )
    from huggingface_hub import try_to_load_from_cache

    def cached(alternatives: str) -> str:  # the alternative the cache holds, else the first
        alts = alternatives.split("|")
        return next((a for a in alts if isinstance(try_to_load_from_cache(name, a), str)), alts[0])

    item = modelhub.check_hub_model(label, name, [cached(r) for r in required], huberrors.hub_token())
    if not item.ok and huberrors.hub_offline():  # say how to copy an extractor (train.py's command, not step 2's)
        item = checklist.CheckItem(
            label,
            False,
            item.message.split(": copy it")[0] + ": copy it with `python train.py "
            f"--download-models DIR --{label.split()[0]}-model {name}` on a machine with internet "
            "and pass the folder it prints, or unset HF_HUB_OFFLINE",
        )
    if not item.ok and Path(name).parent.name and Path(name).parent.is_dir():
        item = checklist.CheckItem(label, False, item.message + f" (or, as a local folder: {name} does not exist)")
    return item


def preflight(args) -> list[checklist.CheckItem]:
    """--check of a sweep: preflight_variant for each --variant (the runs shared out among them); a
    line that is the same for every variant is printed once, the others once per variant."""
    variants = list(dict.fromkeys(args.variant if isinstance(args.variant, list) else [args.variant]))
    modalities = set(args.modality if isinstance(args.modality, list) else [args.modality])
    fusions = args.fusion if isinstance(args.fusion, list) else [args.fusion]
    n_runs = args.check_runs or len(
        sweep_runs(
            argparse.Namespace(
                **{
                    **vars(args),
                    "run": None,
                    "variant": variants,
                    "modality": list(modalities),
                    "fusion": fusions,
                    "seed": args.seed,
                }
            )
        )
    )
    per_variant, checked = [], {}  # checked: extractor checks, made once (a hub request each)
    for variant in variants:
        one = argparse.Namespace(
            **{
                **vars(args),
                "variant": variant,
                "fusion": fusions[0],
                "modality": "fusion" if len(modalities) > 1 else next(iter(modalities)),
                "check_runs": -(-n_runs // len(variants)),
            }
        )
        per_variant.append(preflight_variant(one, checked))
    items = []
    for i, item in enumerate(per_variant[0]):
        same = all(
            len(v) > i and (v[i].name, v[i].ok, v[i].message) == (item.name, item.ok, item.message) for v in per_variant
        )
        if same:
            items.append(item)
        else:
            items += [
                checklist.CheckItem(f"{v[i].name} ({variant})", v[i].ok, v[i].message)
                for variant, v in zip(variants, per_variant)
                if len(v) > i
            ]
    return items


def preflight_variant(args, checked: dict | None = None) -> list[checklist.CheckItem]:
    """--check: what this training needs, checked in seconds, writing nothing -> one CheckItem per line.

    labels        WORK/labels.json (with --planned and none yet: "made by step 1", and the corpus
                  --iemocap is read in memory, as step 1 reads it, for the estimates).
    step-3 cache  WORK/<pipe>/<variant>/cache: the dialogs cached, the splits make_folds builds from
                  them and each split's labelled segments (read memory-mapped, audio not loaded).
                  With --planned and no cache yet: "made by step 3", and the 4-class reference
                  utterances stand in for the segments.
    extractors    each one the modality uses: a local folder with config, weights and tokenizer or
                  feature-extractor files, or a hub repository the token in HF_TOKEN may read
                  (HF_HUB_OFFLINE=1: its files in the hub cache). The token is never printed.
    CUDA          devices and free memory against an estimate: fine-tuned, 16 bytes per parameter
                  (fp32 weights, gradients, AdamW's two moments) + ACTIVATION_GIB; frozen, 4 bytes.
    disk          what the runs write: fine-tuned, checkpoint_best (the model) + checkpoint_last (the
                  model and AdamW's two moments) = 16 bytes per parameter per run and fold; frozen,
                  the same for the head only, plus the feature cache (4 bytes x hidden size per
                  segment and extractor).
    time          an ESTIMATE from FLOPs. Per epoch, for each extractor with N dense parameters
                  (extractor_facts): 6 N per position of the training segments and 2 N per position
                  of the validation segments (common.checklist.transformer_flops; frozen: 2 N, once), positions =
                  audio frames (50 per s) or text tokens (TOKENS_PER_WORD per word + 2, capped at
                  --max-text-tokens); plus self-attention, 4 x layers x hidden x T^2 per segment
                  forward (x3 trained), and the wav2vec2 CNN (cnn_flops_per_second, x3 trained unless
                  --freeze-feature-encoder); times epochs (early stopping only shortens it), folds and
                  runs; at TRAIN_EFFICIENCY of the GPU's peak, or the CPU rate (common.checklist.estimate_time).
                  Data loading is not modelled: read it as an order of magnitude.
    """
    CheckItem = checklist.CheckItem
    work = Path(args.work)
    kinds = [
        k
        for k, used in (("text", args.modality in ("fusion", "text")), ("audio", args.modality in ("fusion", "audio")))
        if used
    ]
    names = {"text": args.text_model, "audio": args.audio_model}

    labels, item = preflight_labels(args, work)
    items = [item]
    # segments[dialog] = [(seconds, words)] of its labelled segments (what training and validation read)
    folds, segments = [], {}
    if labels is not None:
        folds, segments, item = preflight_cache(args, work, labels)
        items.append(item)

    checked = {} if checked is None else checked
    for kind in kinds:
        if (kind, names[kind]) not in checked:
            checked[kind, names[kind]] = extractor_check(
                f"{kind} extractor", names[kind], modelhub.TRANSFORMERS_REQUIRED + EXTRACTOR_FILES[kind]
            )
        items.append(checked[kind, names[kind]])

    facts = {kind: extractor_facts(names[kind]) for kind in kinds}
    ext_params = sum(f["params"] for f in facts.values())
    dim = facts[kinds[0]]["hidden"]  # utils.SERModel: the text hidden size when text is used, else the audio one
    head_params = args.fusion_layers * (4 * dim * dim + 2 * dim * args.ffn_dim) + 12 * dim * dim  # approximately
    trained = ext_params + head_params if args.mode == "finetune" else head_params
    need_gib = (16 * trained + (4 * ext_params if args.mode == "frozen" else 0)) / 2**30 + ACTIVATION_GIB[args.mode]
    items.append(
        checklist.check_cuda(
            required=args.device.startswith("cuda"), min_free_gib=round(need_gib, 1), purpose=f"{args.mode}, estimate"
        )
    )

    runs = args.check_runs or len(set(args.seed))  # each trains every fold
    n_all = sum(len(v) for v in segments.values())
    disk = 16 * trained * runs * max(len(folds), 1)
    if args.mode == "frozen":
        disk += 4 * n_all * sum(f["hidden"] for f in facts.values())
    items.append(
        checklist.check_disk(work, disk, "checkpoints" + (" and feature cache" if args.mode == "frozen" else ""))
    )
    if not folds:
        items.append(CheckItem("time (estimate)", True, "no segments to estimate from yet"))
        return items
    items.append(preflight_time(args, kinds, facts, folds, segments, head_params, runs))
    return items


def preflight_labels(args, work: Path) -> tuple[dict | None, checklist.CheckItem]:
    """(labels or None, the "labels" line): WORK/labels.json; with --planned and none yet, step 1's
    output for --iemocap (planned_labels), or no estimates without --iemocap."""
    CheckItem = checklist.CheckItem
    labels_path = work / "labels.json"
    try:
        labels = formats.load_labels(work)
        return labels, CheckItem("labels", True, f"{labels_path}: {len(labels['dialogs'])} dialogs")
    except PipelineError as e:
        if not (args.planned and not labels_path.exists()):
            return None, CheckItem("labels", False, str(e))
        if not args.iemocap:
            return None, CheckItem("labels", True, f"{labels_path} will be made by step 1 (no --iemocap: no estimates)")
        return planned_labels(args, labels_path)


def planned_labels(args, labels_path: Path) -> tuple[dict | None, checklist.CheckItem]:
    """Step 1 itself on --iemocap, into a temporary folder: nothing is written under --work (and no step
    imports another) -> (its labels or None, the "labels" line)."""
    import subprocess
    import tempfile

    CheckItem = checklist.CheckItem
    with tempfile.TemporaryDirectory() as tmp:
        step1 = cli.start_step(
            "iemo_lab_with_timestamps.py", ["--iemocap", str(args.iemocap), "--work", tmp], stdout=subprocess.PIPE
        )
        output = step1.communicate()[0]
        if step1.returncode == 0:
            labels = formats.load_labels(tmp)
            return labels, CheckItem(
                "labels",
                True,
                f"{labels_path} will be made by step 1; read {args.iemocap} "
                f"for the estimates: {len(labels['dialogs'])} dialogs",
            )
        why = (
            [line for line in output.splitlines() if line.startswith("error: ")][-1:]
            or output.strip().splitlines()[-1:]
            or ["no message"]
        )
        return None, CheckItem("labels", False, f"{labels_path} is to be made by step 1 from --iemocap: {why[0]}")


def preflight_segments(args, work: Path, labels: dict) -> tuple[dict, str | None, str | None]:
    """(segments {dialog: [(seconds, words)]} of the labelled segments, where they come from, a problem or
    None): the step-3 cache read memory-mapped (audio not loaded), or with --planned and no cache yet the
    4-class reference utterances."""
    cache_dir = work / args.pipe / args.variant / "cache"
    cached = [p for p in sorted(cache_dir.glob("*.pt")) if p.stem in labels["dialogs"]] if cache_dir.is_dir() else []
    segments = {}
    if cached:
        for path in cached:
            try:
                cache = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                segments[path.stem] = [
                    (
                        min(s["audio"].numel() / formats.SAMPLE_RATE, args.max_audio_seconds or np.inf),
                        len((s["text"] or "").split()),
                    )
                    for s in cache["segments"]
                    if int(s["label"]) >= 0
                ]
            except Exception as e:
                return (
                    segments,
                    None,
                    (f"{path}: unreadable segment cache ({type(e).__name__}: {e}); rerun step 3 with --overwrite"),
                )
        return segments, f"{cache_dir}: {len(cached)} of {len(labels['dialogs'])} dialogs cached", None
    if args.planned:
        segments = {
            d: [
                (min(u["end"] - u["start"], args.max_audio_seconds or np.inf), len(u["text"].split()))
                for u in info["utterances"]
                if u["label"] is not None
            ]
            for d, info in labels["dialogs"].items()
        }
        return (
            segments,
            (
                f"{cache_dir} will be made by step 3; until then the 4-class reference utterances of "
                f"{len(segments)} dialogs stand in for its segments"
            ),
            None,
        )
    return (
        segments,
        None,
        (f"{cache_dir}: no segment cache; run step 3 first: python align.py --work {work} --pipe {args.pipe}"),
    )


def preflight_cache(args, work: Path, labels: dict) -> tuple[list, dict, checklist.CheckItem]:
    """(folds, segments, the "step-3 cache" line): the segments (preflight_segments), the splits make_folds
    builds from them and each split's labelled segments; no folds when there is a problem."""
    segments, where, problem = preflight_segments(args, work, labels)
    folds = []
    if problem is None:
        meta = {d: fold_meta(d, labels["dialogs"][d]) for d in segments}
        try:
            folds = make_folds(meta, args.folds, args.test_session, args.val_fraction, args.split_seed, args.validation)
        except PipelineError as e:
            problem = str(e)
    if problem is not None:
        return folds, segments, checklist.CheckItem("step-3 cache", False, problem)
    f0 = folds[0]
    count = {part: sum(len(segments[d]) for d in f0[part]) for part in ("train", "val", "test")}
    empty = [part for part in ("train", "val") if not count[part]]
    message = (
        f"{where}; split {f0['name']} (test session {f0['test_session']}): "
        + ", ".join(
            f"{part} {len(f0[part])} dialogs / {count[part]} labelled segments" for part in ("train", "val", "test")
        )
        + (f"; {len(folds)} folds ({args.folds})" if len(folds) > 1 else "")
    )
    if empty:
        problem = f"{message}: no labelled segments in {' and '.join(empty)}, train.py would stop"
        return folds, segments, checklist.CheckItem("step-3 cache", False, problem)
    return folds, segments, checklist.CheckItem("step-3 cache", True, message)


def extractor_flops(args, facts: dict, kind: str, segs, training: bool) -> float:
    """FLOPs of one pass of an extractor over segments [(seconds, words)]."""
    f, total = facts[kind], 0.0
    for seconds, words in segs:
        positions = (
            seconds * f["frames_per_s"] if kind == "audio" else min(words * TOKENS_PER_WORD + 2, args.max_text_tokens)
        )
        total += (
            checklist.transformer_flops(f["dense"], positions, training)
            + (3 if training else 1) * 4 * f["layers"] * f["hidden"] * positions**2
        )
        if kind == "audio":
            cnn_trained = training and not args.freeze_feature_encoder
            total += (3 if cnn_trained else 1) * f["cnn_flops_per_s"] * seconds
    return total


def preflight_time(
    args, kinds: list, facts: dict, folds: list, segments: dict, head_params: float, runs: int
) -> checklist.CheckItem:
    """The "time (estimate)" line: FLOPs of every fold and run (see preflight_variant)."""
    total = 0.0
    for fold in folds:
        train_segs = [s for d in fold["train"] for s in segments[d]]
        val_segs = [s for d in fold["val"] for s in segments[d]]
        head = checklist.transformer_flops(head_params, 2 * len(train_segs), training=True)  # two fused positions
        if args.mode == "finetune":
            per_epoch = (
                sum(
                    extractor_flops(args, facts, k, train_segs, True) + extractor_flops(args, facts, k, val_segs, False)
                    for k in kinds
                )
                + head
            )
            total += runs * args.epochs * per_epoch
        else:  # embeddings once (the feature cache is shared by the runs), then the head
            total += (
                sum(extractor_flops(args, facts, k, train_segs + val_segs, False) for k in kinds)
                + runs * args.epochs * head
            )
    f0 = folds[0]
    train_segs = [s for d in f0["train"] for s in segments[d]]
    detail = (
        f"{runs} run(s)"
        + (f" ({len(folds)} folds each)" if len(folds) > 1 else "")
        + f" x {args.epochs} epochs, {args.mode}; split {f0['name']}: train "
        f"{len(train_segs)} segments, {sum(s for s, _ in train_segs) / 3600:.2f} h of audio, "
        f"~{sum(min(w * TOKENS_PER_WORD + 2, args.max_text_tokens) for _, w in train_segs):.0f} tokens; "
        + "; ".join(f"{k} {facts[k]['dense'] / 1e6:.1f} M dense parameters ({facts[k]['source']})" for k in kinds)
        + "; see train.preflight; early stopping only shortens it"
    )
    return checklist.estimate_time(
        "time (estimate)", total, device=args.device, efficiency=TRAIN_EFFICIENCY, detail=detail
    )


def download_models(args) -> dict:
    """--download-models DIR: --text-model and --audio-model from the hub into DIR/<org>/<name>
    (common.modelhub.snapshot_transformers_model: config, tokenizer or feature-extractor files, one weights
    file; no TF/Flax/ONNX copies), for a machine without internet. Writes DIR/models.json (merged
    with what preprocess.py --download-models wrote there) -> the manifest."""
    dest, token = Path(args.download_models), huberrors.hub_token()
    if huberrors.hub_offline():
        raise PipelineError(
            "--download-models needs the hub, but HF_HUB_OFFLINE is set: run it with HF_HUB_OFFLINE=0 "
            "on a machine with internet"
        )
    repos, flags = {}, []
    for flag, name in (("--text-model", args.text_model), ("--audio-model", args.audio_model)):
        if Path(name).expanduser().exists():
            print(f"{flag} {name}: on disk, not downloaded")
            flags += [flag, str(name)]
            continue
        if not hub_like(name):
            raise PipelineError(f"{flag} {name}: no such folder, and not a hub name")
        print(f"downloading {name}: config, tokenizer / feature extractor and weights")
        path = modelhub.snapshot_transformers_model(name, dest, token)
        patterns = [*modelhub.TRANSFORMERS_FILES, "model.safetensors (else pytorch_model.bin)"]
        if flag == "--text-model" and not any(
            (path / f).is_file() for f in ("tokenizer.json", "vocab.json", "vocab.txt")
        ):
            modelhub.snapshot_repo(name, dest, SENTENCEPIECE_FILES, token)  # a SentencePiece tokenizer (DeBERTa v2/v3)
            patterns += list(SENTENCEPIECE_FILES)
        repos[name] = {"path": str(path), "allow_patterns": patterns}
        flags += [flag, str(path)]
    manifest_path = dest / "models.json"
    manifest = fileio.read_json(manifest_path, "models manifest") if manifest_path.is_file() else {}
    writers = [w for w in str(manifest.get("written_by", "")).split("; ") if w]
    manifest.update(
        written_by="; ".join(dict.fromkeys(writers + ["train.py --download-models"])),
        repositories={**manifest.get("repositories", {}), **repos},
        train_flags=flags,
    )
    fileio.atomic_write_json(manifest_path, manifest)
    print(
        f"wrote {manifest_path}; on the machine without internet pass:\n  {' '.join(flags)}\n"
        f"e.g. HF_HUB_OFFLINE=1 python train.py {' '.join(flags)} ...   (reproduce.py takes the same two flags)"
    )
    return manifest


def sweep_runs(args) -> list[dict]:
    """The runs of an invocation, in sweep order: [{"variant", "modality", "fusion", "seed", "name"}]."""
    variants, seeds = list(dict.fromkeys(args.variant)), list(dict.fromkeys(args.seed))
    modalities, fusions = list(dict.fromkeys(args.modality)), list(dict.fromkeys(args.fusion))
    arms = [(m, f) for m in modalities for f in (fusions if m == "fusion" else fusions[:1])]
    runs = [{"variant": v, "modality": m, "fusion": f, "seed": s} for v in variants for m, f in arms for s in seeds]
    if args.run is not None and len(args.run) > 1:
        if len(args.run) != len(runs):
            raise PipelineError(
                f"--run: {len(args.run)} names for {len(runs)} runs (variants x modality/fusion x seeds); "
                "give one template or one name per run"
            )
        names = list(args.run)
    else:

        def default(r):
            return (
                f"{args.pipe}-{r['variant']}-{args.mode}-{r['modality']}"
                + (f"-{r['fusion']}" if r["modality"] == "fusion" and r["fusion"] != MODEL.fusion else "")
                + (f"-s{r['seed']}" if len(seeds) > 1 else "")
            )

        try:
            names = [
                args.run[0].format_map({k: r[k] for k in ("variant", "modality", "fusion", "seed")})
                if args.run
                else default(r)
                for r in runs
            ]
        except (KeyError, ValueError, IndexError) as e:
            raise PipelineError(
                f"--run {args.run[0]!r}: not a run-name template ({type(e).__name__}: {e}); "
                "placeholders: {variant} {modality} {fusion} {seed}"
            ) from None
    if len(set(names)) != len(names):
        raise PipelineError(
            f"--run {' '.join(args.run or [])!r}: the {len(runs)} runs of this sweep would share names; "
            "the template needs {variant}, {modality}, {fusion} or {seed} wherever the sweep varies"
        )
    for r, name in zip(runs, names):
        r["name"] = name
    return runs


def variant_folds(args, work: Path, labels: dict, variant: str, say) -> list[dict]:
    """The splits of one variant's step-3 cache (every dialog of labels.json that has a cache)."""
    cache_dir = work / args.pipe / variant / "cache"
    if not cache_dir.is_dir():
        raise PipelineError(
            f"{cache_dir}: no segment cache; run step 3 first: python align.py --work {work} --pipe {args.pipe}"
        )
    cached = {p.stem for p in cache_dir.glob("*.pt")}
    meta = {d: fold_meta(d, info) for d, info in labels["dialogs"].items() if d in cached}
    missing = sorted(set(labels["dialogs"]) - cached)
    extra = sorted(cached - set(labels["dialogs"]))
    say(
        f"read {work / 'labels.json'}: {len(labels['dialogs'])} dialogs; "
        f"{len(meta)} have a segment cache in {cache_dir}"
        f" (skipped {len(missing)} without one{': ' + ', '.join(missing[:5]) if missing else ''};"
        f" ignored {len(extra)} caches not in labels.json)"
    )
    return make_folds(meta, args.folds, args.test_session, args.val_fraction, args.split_seed, args.validation)


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
    if args.download_models:
        return download_models(args)
    if args.check:
        raise SystemExit(0 if checklist.report_checks(preflight(args), "step 4 preflight") else 1)
    for flag in ("check", "planned", "check_runs", "download_models"):  # not part of a run's config
        delattr(args, flag)
    if args.mode == "frozen" and args.audio_padding == "authors":
        raise PipelineError(
            "--mode frozen caches one embedding per segment, which needs --audio-padding exact "
            "(with 'authors' a segment's embedding depends on the rest of its batch)"
        )
    if args.epochs < 1 or args.batch_size < 1:
        raise PipelineError(f"--epochs {args.epochs} and --batch-size {args.batch_size} must be at least 1")
    # Tiny gradients and Adam's squared averages reach the subnormal float range, where x86 CPUs are
    # many times slower; flushing them to zero changes no result above 1e-38 (GPUs flush by default).
    torch.set_flush_denormal(True)
    dist_info = setup_distributed(args.device)
    print = builtins.print if dist_info[0] == 0 else (lambda *a, **k: None)  # noqa: A001 (rank 0 speaks)
    work = Path(args.work)
    labels = formats.load_labels(work)
    runs = sweep_runs(args)
    info = {"corpus": labels.get("corpus"), "labels": list(formats.labels_of(labels))}
    shared, run_dirs = {}, []  # shared[(variant, split)]: data read once, for every run of that variant
    folds_of = {v: variant_folds(args, work, labels, v, print) for v in dict.fromkeys(r["variant"] for r in runs)}
    for variant, folds in folds_of.items():  # every variant's cache is checked before any training
        for r in (r for r in runs if r["variant"] == variant):
            run_dir = work / "runs" / r["name"]
            run_args = argparse.Namespace(
                **{
                    **vars(args),
                    "variant": variant,
                    "modality": r["modality"],
                    "fusion": r["fusion"],
                    "seed": r["seed"],
                }
            )
            for fold in folds:
                fdir = run_dir if fold["name"] == "main" else run_dir / fold["name"]
                print(
                    f"{r['name']} (seed {r['seed']}) split {fold['name']}: train {len(fold['train'])} dialogs, "
                    f"val {len(fold['val'])}, test {len(fold['test'])} (session {fold['test_session']}; "
                    + (
                        "never read here"
                        if args.validation == "held-out"
                        else "USED FOR VALIDATION AND SELECTION, --validation test"
                    )
                    + f"), unused {len(fold['unused'])}"
                )
                run_fold(run_args, fold, fdir, info, dist_info, shared.setdefault((variant, fold["name"]), {}))
            if len(folds) > 1 and dist_info[0] == 0:
                fileio.atomic_write_json(
                    run_dir / "config.json",
                    {
                        "folds": [f["name"] for f in folds],
                        "folds_scheme": args.folds,
                        "run": r["name"],
                        "flags": vars(run_args),
                        "code_version": rundirs.code_version(),
                        "note": "each fold dir is a full run dir; evaluate each fold and aggregate mean and std",
                    },
                )
                print(f"wrote {run_dir / 'config.json'} listing {len(folds)} folds")
            run_dirs.append(str(run_dir))
    if dist_info[1] > 1:
        torch.distributed.destroy_process_group()
    return run_dirs[0] if len(run_dirs) == 1 else run_dirs


if __name__ == "__main__":
    cli.run_main(main)
