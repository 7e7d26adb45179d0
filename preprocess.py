"""Step 2: dialog audio -> timed ASR words and speaker turns (paper Section III-A, Fig. 2).

For every dialog of WORK/labels.json (step 1) this writes, under WORK/<pipe>/ (docs/FORMATS.md):
  asr/<dialog>.json          WhisperX's result shape {"segments": [{"start", "end", "text", "words":
                             [{"word", "start"?, "end"?, "score"?}]}], "language"}; no speakers
  diarization/<dialog>.rttm  speaker turns under anonymous labels SPEAKER_00, SPEAKER_01, ... numbered
                             in order of first speech; turns of different speakers may overlap
  diarization_exclusive/<dialog>.rttm  the same turns without overlap (one speaker at a time, same
                             labels): pyannote 4's "exclusive" diarization, made for attributing ASR
                             words; the offline backends derive it (see exclusive_turns). align.py
                             --diarization {overlap,exclusive} picks which one step 3 uses.
  manifest.json              the config, each dialog's status (done / failed + error) and statistics,
                             and a summary (words, segments, speakers, durations, measured error rates)

Backends (--backend), one code path for the real corpus and models and for the embedded demo:

  whisperx   The paper's front end. WhisperX ASR (faster-whisper; paper: large-v2, English, the
             authors' VAD onset 0.4, batch 8, float16 on GPU) with the pyannote VAD bundled in
             WhisperX, word timestamps from WhisperX's forced alignment (whisperx.load_align_model +
             whisperx.align), and pyannote speaker diarization (paper: pyannote 3.1, two speakers per
             dialog), called as whisperx.diarize.DiarizationPipeline calls it, keeping also the
             exclusive diarization pyannote 4 returns. Each model is a hub name or a local directory
             (--asr-model, --align-model, --diar-model; --model-dir DIR reads hub names from a local
             mirror DIR/<org>/<name>, what --download-models DIR writes); the hub token is read from
             the HF_TOKEN environment variable only. The pyannote pipeline is built from its
             config.yaml by load_diarization_pipeline, which loads exactly the models the config
             names (for pyannote/speaker-diarization-3.1: segmentation-3.0 and
             wespeaker-voxceleb-resnet34-LM) and a PLDA only for VBx clustering: pyannote.audio 4's
             own loader also fetches the PLDA of pyannote/speaker-diarization-community-1 for every
             pipeline, 3.1 included. Each dialog wav is decoded once with soundfile
             (utils.load_audio mixes IEMOCAP's two stereo channels down to mono, so both actors are
             heard) and handed to WhisperX and pyannote as an array: no ffmpeg program is needed.
             Models are loaded once per run.
  --vad oracle  (whisperx only) The paper's VAD-oracle pipeline (Table III). What is oracle: the
             speech regions and their cuts. WhisperX's VAD is not run; instead each reference
             utterance (every utterance of the dialog: those of labels.json, whatever their emotion,
             and the transcribed but unevaluated XX ones, see dialog_utterances) is cut out of
             the dialog audio (pieces of at most 30 s), transcribed by Whisper on its own and aligned
             by the alignment model on its own, and its word times are in dialog time because the
             alignment works on [utterance start, utterance end] of the dialog audio. What is NOT
             oracle: the words (Whisper), the word times inside an utterance (alignment model), and
             the speaker turns (pyannote runs on the whole dialog exactly as in the standard pipeline;
             no reference speaker or boundary is given to it). whisperx.load_model always builds
             its VAD model; in this mode it is loaded but never called.
  oracle     Offline and exact, the upper bound: perfect ASR, VAD and diarization. Words and times
             come from the ForcedAlignment .wdseg files (100 frames per second from the utterance
             start, shifted by the utterance's start in the dialog; <s>, </s>, <sil> and ++NOISE++
             tokens dropped; variants such as WHAT(2) -> "what"; lower case), one ASR segment per
             reference utterance (unevaluated XX utterances included: they are speech too). Turns are
             the reference utterances (speaker F/M) under anonymous
             labels, so the speaker mapping of later steps is exercised. Utterances without a .wdseg
             file get their transcript words spread uniformly over the utterance (counted, reported).
  simulated  Offline and controlled: the oracle words and turns degraded by seeded error processes
             whose rates are flags (see SIMULATION below). The demo's stand-in for the standard
             pipeline, and a tool for the paper's open question of how VAD and ASR errors limit the
             alignment.

Every backend's output is measured against the reference: WER of the words against the oracle
words (word edit distance over the dialog, case and punctuation ignored), the rate of words without
timestamps, and the diarization error rate of the turns against the reference utterances
(pyannote.metrics DiarizationErrorRate, no collar, overlap scored, scored over the extent of the
reference). Per-dialog numbers go into the manifest, corpus totals are printed.

Resume: a dialog whose outputs exist and whose manifest entry says "done" with the same config is
skipped (--overwrite redoes it). Outputs and manifest are written atomically, the manifest after
every dialog. A dialog that fails is recorded with its error in the manifest, listed at the end,
and makes the exit status 1; the other dialogs still run.

Sharding: --shard K/N processes every N-th dialog (sorted by name) from the K-th, so N processes,
GPUs or nodes share the step (torchrun sets RANK and WORLD_SIZE, which pick the shard when --shard
is not given; with several GPUs each process uses cuda:LOCAL_RANK). Each shard writes its own
manifest part, manifest.parts/shard-K-of-N.json, after every dialog and merges all parts into
manifest.json under a file lock when it ends, so shards never clobber each other; outputs per
dialog do not depend on the sharding. An unsharded run merges the parts and removes them.

Before hours of compute: --check runs the preflight (labels and audio, the models of the backend
with their hub access, CUDA, disk, a time estimate) writing nothing, one line per item, exit
status 1 on any problem. --download-models DIR copies exactly the models the run needs into DIR
(huggingface_hub.snapshot_download, file patterns limited to what loads) for a machine without
internet, and writes DIR/models.json; then pass --model-dir DIR.

Security: pyannote loads its checkpoints with torch.load(weights_only=False), which can run code
stored in the file. A local --diar-model folder (and a --model-dir mirror) must come from a source
you trust, as much as a program you run.

Usage:
  python preprocess.py --backend whisperx                 # WORK/whisperx, the paper's standard pipeline
  python preprocess.py --backend whisperx --vad oracle    # WORK/whisperx-vadoracle
  python preprocess.py --backend oracle | simulated       # offline
  python preprocess.py --check                            # preflight of the run above, writes nothing
  python preprocess.py --download-models models/          # then: --model-dir models/ on the offline node
  torchrun --nproc_per_node 4 preprocess.py --backend whisperx   # 4 GPUs, one shard each
"""
from __future__ import annotations

import argparse
import contextlib
import fnmatch
import hashlib
import json
import os
import re
import sys
import time
import zlib
from pathlib import Path

import numpy as np
from tqdm import tqdm

from utils import TRANSCRIPT_RE, parse_wdseg, read_text_lines  # IEMOCAP text readers, shared with step 1
import utils
from utils import (CheckItem, PipelineError, SAMPLE_RATE, atomic_write_json, code_version, load_audio, load_labels,
                   read_json, write_rttm)

BACKENDS = ("whisperx", "oracle", "simulated")
DIARIZATION_DIRS = {"overlap": "diarization", "exclusive": "diarization_exclusive"}  # the two RTTM folders
PARTS_DIR = "manifest.parts"  # per-shard manifest parts
MAX_CHUNK_S = 30.0  # Whisper's input window: longer reference utterances are cut into pieces


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__ + SIMULATION_DOC,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iemocap", default=None, help="corpus root (default: the corpus recorded in labels.json)")
    p.add_argument("--work", default="preprocessed_iemocap", help="work directory (default: %(default)s)")
    p.add_argument("--backend", choices=BACKENDS, default="whisperx", help="(default: %(default)s)")
    p.add_argument("--vad", choices=("auto", "oracle"), default="auto",
                   help="whisperx only: 'auto' runs WhisperX's VAD; 'oracle' transcribes the reference "
                        "utterances instead (the paper's VAD-oracle pipeline; see above)")
    p.add_argument("--name", default=None, help="output folder WORK/<name> (default: whisperx, "
                   "whisperx-vadoracle, oracle or simulated)")
    p.add_argument("--dialogs", nargs="+", default=None, help="only these dialogs (names or globs)")
    p.add_argument("--sessions", nargs="+", type=int, default=None, help="only these sessions")
    p.add_argument("--overwrite", action="store_true", help="redo dialogs already done")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="process every N-th dialog from the K-th (0 <= K < N); default: RANK/WORLD_SIZE "
                        "when torchrun sets them, else all dialogs (see Sharding above)")
    p.add_argument("--check", action="store_true",
                   help="preflight only: check labels, audio, models (hub access), CUDA and disk, estimate "
                        "the time; write nothing; exit status 1 on any problem")
    p.add_argument("--planned", action="store_true",
                   help="with --check: a labels.json step 1 has not made yet is not a problem; the dialog wavs "
                        "of --iemocap stand in for it (what reproduce.py --check passes before a first run)")
    p.add_argument("--download-models", metavar="DIR", default=None,
                   help="copy the models of this run (--asr-model, --align-model, --diar-model and the models "
                        "the pipeline names) from the hub into DIR/<org>/<name>, write DIR/models.json, and stop")

    w = p.add_argument_group("whisperx backend")
    w.add_argument("--asr-model", default="large-v2", help="Whisper name or CTranslate2 folder (default: %(default)s)")
    w.add_argument("--align-model", default=None,
                   help="wav2vec2 CTC alignment model, name or folder (default: WhisperX's English default)")
    w.add_argument("--diar-model", default="pyannote/speaker-diarization-3.1",
                   help="pyannote pipeline, hub name or folder (default: %(default)s, the paper's; "
                        "pyannote/speaker-diarization-community-1 is pyannote 4's). SECURITY: pyannote loads "
                        "checkpoints with torch.load(weights_only=False), which can run code: use only "
                        "folders from a source you trust")
    w.add_argument("--model-dir", default=None,
                   help="local mirror of hub repositories, DIR/<org>/<name> (what --download-models DIR writes): "
                        "every hub name, also those a pipeline config names, is read from there when present "
                        "(and DIR/torchaudio, DIR/nltk_data are used for the default alignment model and NLTK). "
                        "SECURITY: the pyannote models in DIR run code when loaded (see --diar-model): only a mirror "
                        "you made yourself or trust")
    w.add_argument("--align-model-dir", default=None,
                   help="whisperx.load_align_model's model_dir: where the alignment model is cached or "
                        "downloaded (the torchaudio checkpoint of the default English model, or the hub cache "
                        "of a named one; default: torch's and huggingface's own caches)")
    w.add_argument("--cache-only", action="store_true",
                   help="never download: whisperx.load_model(local_files_only=True), "
                        "load_align_model(model_cache_only=True), hub files of the pipeline from the local "
                        "cache only; a missing model is an error naming it")
    w.add_argument("--embedding-batch-size", type=int, default=None,
                   help="pyannote speaker-embedding batch size (default: the pipeline config's, 32 for 3.1)")
    w.add_argument("--segmentation-batch-size", type=int, default=None,
                   help="pyannote segmentation batch size (default: the pipeline config's, 32 for 3.1)")
    w.add_argument("--device", default="auto", help="auto (cuda if available), cuda or cpu")
    w.add_argument("--compute-type", default="auto", help="auto: float16 on GPU, float32 on CPU")
    w.add_argument("--batch-size", type=int, default=8, help="ASR batch size (default: %(default)s, as the authors)")
    w.add_argument("--beam-size", type=int, default=5, help="(default: %(default)s, WhisperX's default)")
    w.add_argument("--vad-onset", type=float, default=0.4, help="(default: %(default)s, the authors' value)")
    w.add_argument("--vad-offset", type=float, default=0.363, help="(default: %(default)s, WhisperX's default)")
    w.add_argument("--num-speakers", type=int, default=2, help="speakers per dialog (default: %(default)s)")
    w.add_argument("--asr-max-length", type=int, default=None,
                   help="cap on decoded tokens per chunk (default: the model's, 448; small for random test models)")
    w.add_argument("--threads", type=int, default=4, help="CPU threads for CTranslate2 (default: %(default)s)")
    w.add_argument("--nltk-data", default=None,
                   help="extra NLTK data folder holding punkt_tab (whisperx.align downloads it when missing)")

    s = p.add_argument_group("simulated backend (see SIMULATION above)")
    s.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    for flag, (default, help_text) in SIM_DEFAULTS.items():
        s.add_argument("--sim-" + flag.replace("_", "-"), dest="sim_" + flag, type=float, default=default,
                       help=f"{help_text} (default: %(default)s)")
    args = p.parse_args(argv)
    for name in SIM_DEFAULTS:
        value, is_rate = getattr(args, "sim_" + name), name in SIM_RATES
        if not 0 <= value < float("inf") or (is_rate and value > 1):  # NaN fails too
            p.error(f"--sim-{name.replace('_', '-')} must be " + ("in [0, 1]" if is_rate else ">= 0") + f", got {value}")
    if args.vad == "oracle" and args.backend != "whisperx":
        p.error("--vad oracle applies to the whisperx backend only (the oracle backend is oracle throughout)")
    for flag in ("embedding_batch_size", "segmentation_batch_size", "batch_size", "beam_size", "num_speakers",
                 "threads", "asr_max_length"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1")
    for flag in ("vad_onset", "vad_offset"):
        if not 0 < getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must lie between 0 and 1, got {getattr(args, flag)}")
    try:
        args.shard_index, args.shard_count = utils.parse_shard(args.shard)
    except PipelineError as e:
        p.error(str(e))
    return args


def pipe_name(args) -> str:
    if args.name:
        return args.name
    return "whisperx-vadoracle" if args.backend == "whisperx" and args.vad == "oracle" else args.backend


def device_and_compute_type(args) -> tuple[str, str]:
    """--device auto -> cuda if available, else cpu; --compute-type auto -> float16 on GPU, float32 on CPU."""
    device = args.device
    if device == "auto":
        import torch
        device = "cpu"
        if torch.cuda.is_available():  # under torchrun, one GPU per process
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
    compute_type = args.compute_type
    if compute_type == "auto":
        compute_type = "float16" if device.startswith("cuda") else "float32"
    return device, compute_type


def run_config(args) -> dict:
    """The settings that determine the outputs: a dialog done under another config is redone."""
    config = {"backend": args.backend}
    if args.backend == "whisperx":
        device, compute_type = device_and_compute_type(args)
        config.update(vad=args.vad, asr_model=args.asr_model, align_model=args.align_model,
                      diar_model=args.diar_model, device=device.split(":")[0], compute_type=compute_type,
                      batch_size=args.batch_size,
                      beam_size=args.beam_size, num_speakers=args.num_speakers, asr_max_length=args.asr_max_length)
        if args.vad == "auto":
            config.update(vad_onset=args.vad_onset, vad_offset=args.vad_offset)
        for flag in ("embedding_batch_size", "segmentation_batch_size"):  # recorded only when changed
            if getattr(args, flag) is not None:
                config[flag] = getattr(args, flag)
    if args.backend == "simulated":
        config["seed"] = args.seed
        config["sim"] = {k: getattr(args, "sim_" + k) for k in SIM_DEFAULTS}
    return config


def config_key(config: dict) -> str:
    return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def select_dialogs(labels: dict, patterns, sessions) -> list[str]:
    names = sorted(labels["dialogs"])
    if sessions:
        names = [d for d in names if labels["dialogs"][d].get("session") in set(sessions)]
    if patterns:
        unmatched = [pat for pat in patterns if not any(fnmatch.fnmatchcase(d, pat) for d in names)]
        if unmatched:
            raise PipelineError(f"--dialogs: no dialog of labels.json matches {unmatched}")
        names = [d for d in names if any(fnmatch.fnmatchcase(d, pat) for pat in patterns)]
    return names


# ---------------------------------------------------------------------------------------------
# The reference: words from the .wdseg forced alignments, turns from the utterances
# ---------------------------------------------------------------------------------------------

VARIANT_RE = re.compile(r"\(\d+\)$")          # WHAT(2) -> WHAT
MARKER_RE = re.compile(r"\[[^\]]*\]")         # [LAUGHTER], [BREATHING] in transcripts
NON_WORD_RE = re.compile(r"[^\w']+")          # punctuation, for comparing words


def is_special_token(token: str) -> bool:
    """Sphinx's sentence/silence tokens <s> </s> <sil> and noise tokens ++LAUGHTER++ carry no word."""
    return (token.startswith("<") and token.endswith(">")) or (token.startswith("++") and token.endswith("++"))


def normalise_token(token: str) -> str:
    return VARIANT_RE.sub("", token).lower()


def normalise_for_wer(word: str) -> str:
    return NON_WORD_RE.sub("", word.lower())


def transcript_words(text: str) -> list[str]:
    """Transcript line -> lower-case words without inline markers and punctuation."""
    words = (normalise_for_wer(w) for w in MARKER_RE.sub(" ", text).split())
    return [w for w in words if w]


SPEAKER_RE = re.compile(r"_([FM])(?:\d+|XX\d*)$")  # Ses01F_impro01_M000 and Ses03F_impro06_FXX0


def dialog_utterances(corpus: Path, dialog: str, entry: dict) -> tuple[list[dict], dict]:
    """All spoken reference utterances of a dialog, in time order -> (utterances, counts).

    labels.json lists the utterances that have an EmoEvaluation entry. The transcription file also
    holds utterances that were spoken but never evaluated (XX ids such as Ses03F_impro06_FXX0): they
    are speech all the same, so a perfect VAD, ASR and diarization would find them. They are added
    from the transcription lines (times, text) with their .wdseg file when the corpus has one.
    Transcription lines that are not utterances (not starting with "Ses") are ignored; an extra
    utterance line that does not parse is counted and skipped (step 1 does not validate them either).
    """
    utterances = [dict(u) for u in entry["utterances"]]
    known = {u["id"] for u in utterances}
    session_dir = Path(entry["wav"]).parts[0]
    transcript = corpus / session_dir / "dialog" / "transcriptions" / f"{dialog}.txt"
    counts = {"unevaluated_utterances": 0, "unparsed_transcript_lines": 0}
    if transcript.is_file():
        for line in read_text_lines(transcript):
            if not line.startswith("Ses") or line.split()[0].rstrip(":") in known:
                continue
            m, speaker = TRANSCRIPT_RE.match(line.rstrip()), SPEAKER_RE.search(line.split()[0].rstrip(":"))
            if (m is None or speaker is None or not np.isfinite(float(m.group(3)))
                    or float(m.group(3)) <= float(m.group(2))):
                counts["unparsed_transcript_lines"] += 1
                continue
            utt_id = m.group(1)
            wdseg = f"{session_dir}/sentences/ForcedAlignment/{dialog}/{utt_id}.wdseg"
            utterances.append({"id": utt_id, "start": float(m.group(2)), "end": float(m.group(3)),
                               "speaker": speaker.group(1), "text": m.group(4).strip(),
                               "wdseg": wdseg if (corpus / wdseg).is_file() else None})
            known.add(utt_id)
            counts["unevaluated_utterances"] += 1
    utterances.sort(key=lambda u: (u["start"], u["id"]))
    return utterances, counts


def reference_words(corpus: Path, utterances: list[dict], duration: float | None = None,
                    counts: dict | None = None) -> tuple[list[dict], int]:
    """Every utterance's words in dialog time -> ([{word, start, end, speaker, utterance}], utterances without .wdseg).

    A word spans frames SFrm..EFrm of 10 ms from the utterance start, so it starts at
    utt_start + SFrm/100 and ends at utt_start + (EFrm+1)/100. An utterance without a .wdseg file
    gets its transcript words spread uniformly over [start, end]. duration (seconds of the dialog
    audio): a word ending later than duration + utils.TIME_TOLERANCE_S is an error naming the .wdseg
    file. A token that normalises to nothing (e.g. "(2)") is dropped and counted in
    counts["empty_wdseg_tokens"]: an empty word would vanish in step 3 and break words in = words out.
    """
    words, no_wdseg = [], 0
    for utt in utterances:
        base = {"speaker": utt["speaker"], "utterance": utt["id"]}
        if utt.get("wdseg"):
            path = corpus / utt["wdseg"]
            for row, (start_frame, end_frame, _, token) in enumerate(parse_wdseg(path, utt["end"] - utt["start"]), 1):
                end = utt["start"] + (end_frame + 1) / 100
                utils.check_in_audio(end, duration, f"{path}: word row {row}",
                                     f"{token!r:.40} (frames {start_frame}-{end_frame} from the utterance start "
                                     f"{utt['start']:.3f} s)")
                if is_special_token(token):
                    continue
                if not normalise_token(token):
                    if counts is not None:
                        counts["empty_wdseg_tokens"] = counts.get("empty_wdseg_tokens", 0) + 1
                    continue
                words.append({"word": normalise_token(token), "start": round(utt["start"] + start_frame / 100, 6),
                              "end": round(end, 6), **base})
        else:
            no_wdseg += 1
            tokens = transcript_words(utt.get("text") or "")
            step = (utt["end"] - utt["start"]) / max(len(tokens), 1)
            for i, token in enumerate(tokens):
                words.append({"word": token, "start": round(utt["start"] + i * step, 6),
                              "end": round(utt["start"] + (i + 1) * step, 6), **base})
    return words, no_wdseg


def reference_turns(utterances: list[dict]) -> list[tuple[float, float, str]]:
    return [(u["start"], u["end"], u["speaker"]) for u in utterances if u["end"] > u["start"]]


def anonymise(turns, names: dict | None = None) -> list[tuple[float, float, str]]:
    """Relabel speakers SPEAKER_00, SPEAKER_01, ... in order of first speech (labels carry no identity).

    `names` (filled in place) maps original labels to anonymous ones: pass the dict used for the
    overlapping turns when relabelling the exclusive turns of the same dialog, so both agree.
    """
    names = {} if names is None else names
    for _, _, spk in sorted(turns):
        names.setdefault(spk, f"SPEAKER_{len(names):02d}")
    return sorted((s, e, names[spk]) for s, e, spk in turns)


def exclusive_turns(turns) -> list[tuple[float, float, str]]:
    """Turns that may overlap -> turns that do not (one speaker at any instant), for the backends
    whose diarization has no exclusive version of its own (oracle, simulated).

    pyannote 4 makes its exclusive diarization by keeping, in each frame, the most active speaker.
    Without activations the rule here is: every instant covered by several turns goes to the turn
    that started last (the newest speaker holds the floor; ties: the shorter turn, then the label),
    and the turn it interrupted resumes after it if it lasts longer. Pieces of one turn that touch
    are joined. Speech time is kept (the union of the turns does not change) and turns that do not
    overlap come out unchanged.
    """
    turns = sorted(turns)
    bounds = sorted({t for s, e, _ in turns for t in (s, e)})
    pieces = []  # [start, end, turn index]
    for a, b in zip(bounds, bounds[1:]):
        active = [i for i, (s, e, _) in enumerate(turns) if s <= a and e >= b]
        if not active:
            continue
        i = min(active, key=lambda j: (-turns[j][0], turns[j][1] - turns[j][0], turns[j][2]))
        if pieces and pieces[-1][2] == i and pieces[-1][1] == a:
            pieces[-1][1] = b
        else:
            pieces.append([a, b, i])
    return [(s, e, turns[i][2]) for s, e, i in pieces]


def asr_result(dialog: str, backend: str, segments: list[dict]) -> dict:
    return {"segments": segments, "language": "en", "backend": backend, "dialog": dialog}


def segment_of(words: list[dict], start=None, end=None) -> dict:
    """An ASR segment in WhisperX's shape from words (bounds default to the timed words' extent)."""
    timed = [w for w in words if "start" in w]
    out_words = [{k: w[k] for k in ("word", "start", "end", "score") if k in w} for w in words]
    return {"start": start if start is not None else timed[0]["start"],
            "end": end if end is not None else max(w["end"] for w in timed),
            "text": " ".join(w["word"] for w in words), "words": out_words}


def oracle_backend(dialog, utterances, ref_words):
    """Perfect ASR, VAD and diarization: one segment per reference utterance, the reference turns."""
    by_utt = {}
    for w in ref_words:
        by_utt.setdefault(w["utterance"], []).append(w)
    segments = [segment_of(by_utt[u["id"]], u["start"], u["end"]) for u in utterances if u["id"] in by_utt]
    stats = {"utterances_without_words": len(utterances) - len(by_utt)}
    return asr_result(dialog, "oracle", segments), anonymise(reference_turns(utterances)), stats


# ---------------------------------------------------------------------------------------------
# SIMULATION: the oracle degraded by seeded error processes
# ---------------------------------------------------------------------------------------------

SIMULATION_DOC = """
SIMULATION (--backend simulated). Each process starts from the oracle words/turns of one dialog,
with a random generator seeded by (--seed, the dialog name), so a dialog's output does not depend on
which other dialogs run or in which order. Counts are exact (k = round(rate * n) items drawn without
replacement), so the realised rates equal the requested ones up to rounding per dialog.
  ASR words (rates relative to the oracle words of the dialog):
    vad_miss     a VAD misses short isolated words (shorter than short_word s, with at least
                 0.2 s of silence on both sides: backchannels like "yeah", "okay"); this fraction of them
                 is dropped.
    wer          then this fraction of the oracle words becomes an ASR error: a deletion (share
                 del_share) or a substitution by another word of the dialog (Whisper rarely inserts
                 words, so no insertions). Realised WER = (vad misses + wer errors) / oracle words.
    jitter       word start/end shifted by Gaussian noise of this s.d. in s (alignment/VAD jitter).
    untimed      this fraction of output words loses its timestamps (as WhisperX leaves numerals).
    seg_pause, seg_max  ASR segments are cut at pauses >= seg_pause s and before exceeding seg_max s,
                 never at speaker changes (as WhisperX's VAD chunks and sentence splits): a segment can
                 hold the end of one speaker's turn and the start of the next one's.
  Diarization (rates relative to the reference turns; errors concentrate on short turns and on
  speaker changes, where pyannote errs most):
    boundary     turn boundaries at a speaker change move by Gaussian noise of this s.d. (s); other
                 boundaries by half of it.
    spurious     at this fraction of speaker changes a short turn (0.2-0.6 s) of the previous speaker
                 is inserted just after the change (the embedding window lags the change).
    miss_short   this fraction of turns shorter than short_turn s is dropped (missed speech).
    confusion    this fraction of turns gets the other speaker's label; turns are drawn with
                 probability proportional to 1/duration, so short turns are confused most.
Why these defaults: WhisperX large-v2 on IEMOCAP has a WER of roughly 10-20 % and pyannote 3.1 a
DER of roughly 10-20 % on two-speaker conversation. On the default demo corpus (make_corpus, sessions
1-2) the defaults gave a WER of about 14 % and a DER of about 14 % (both are measured and printed on
every run). The gap between the
paper's standard and VAD-oracle pipelines (TEER 89 % vs 54 %) says the real VAD and segmentation are
worse than the averages suggest, which is why segments straddle speaker changes by default.
"""

SIM_DEFAULTS = {  # name: (default, help)
    "wer": (0.13, "ASR word error rate from substitutions and deletions"),
    "del_share": (0.5, "share of the ASR errors that are deletions"),
    "vad_miss": (0.3, "fraction of short isolated words missed by the VAD"),
    "short_word": (0.3, "a word shorter than this (s) counts as short"),
    "jitter": (0.03, "s.d. of word time jitter (s)"),
    "untimed": (0.01, "fraction of words left without timestamps"),
    "seg_pause": (0.7, "ASR segments are cut at pauses of at least this (s)"),
    "seg_max": (15.0, "ASR segments are at most this long (s)"),
    "boundary": (0.2, "s.d. of turn boundary shifts at speaker changes (s)"),
    "spurious": (0.3, "fraction of speaker changes given a short spurious turn"),
    "miss_short": (0.2, "fraction of short turns missed"),
    "short_turn": (1.0, "a turn shorter than this (s) counts as short"),
    "confusion": (0.08, "fraction of turns given the other speaker's label"),
}


SIM_RATES = ("wer", "del_share", "vad_miss", "untimed", "spurious", "miss_short", "confusion")  # fractions


def dialog_rng(seed: int, dialog: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(dialog.encode())])


def draw(rng, candidates, rate: float, n_ref: int, weights=None) -> set:
    """round(rate * n_ref) distinct items of candidates (fewer if there are not enough)."""
    k = min(int(round(rate * n_ref)), len(candidates))
    if k <= 0:
        return set()
    p = None if weights is None else np.asarray(weights, float) / np.sum(weights)
    return {candidates[i] for i in rng.choice(len(candidates), size=k, replace=False, p=p)}


def simulate_words(words: list[dict], sim: dict, rng, duration: float) -> tuple[list[dict], dict]:
    """Oracle words (time order) -> degraded words, with the counts of each error."""
    n = len(words)
    # 1. VAD misses of short isolated words.
    short = [i for i, w in enumerate(words)
             if w["end"] - w["start"] < sim["short_word"]
             and (i == 0 or w["start"] - words[i - 1]["end"] >= 0.2)
             and (i == n - 1 or words[i + 1]["start"] - w["end"] >= 0.2)]
    missed = draw(rng, short, sim["vad_miss"], len(short))
    # 2. ASR errors among the remaining words: deletions and substitutions.
    kept = [i for i in range(n) if i not in missed]
    errors = sorted(draw(rng, kept, sim["wer"], n))
    n_del = int(round(sim["del_share"] * len(errors)))
    deleted = {errors[i] for i in rng.choice(len(errors), n_del, replace=False)} if n_del else set()
    substituted = set(errors) - deleted
    vocabulary = sorted({w["word"] for w in words})
    out = []
    for i in kept:
        if i in deleted:
            continue
        w = dict(words[i])
        if i in substituted:
            others = [v for v in vocabulary if v != w["word"]] or ["uh"]
            w["word"] = others[rng.integers(len(others))]
        # 3. Time jitter, keeping a word at least 20 ms long and inside the dialog.
        start = min(max(w["start"] + rng.normal(0, sim["jitter"]), 0.0), duration - 0.02)
        end = min(max(w["end"] + rng.normal(0, sim["jitter"]), start + 0.02), duration)
        w["start"], w["end"] = round(start, 3), round(end, 3)
        out.append(w)
    out.sort(key=lambda w: (w["start"], w["end"]))
    # 4. Words left without timestamps (keep their neighbours' order; they cannot start a segment's bounds).
    untimed = draw(rng, list(range(len(out))), sim["untimed"], len(out))
    for i in untimed:
        out[i]["untimed"] = True
    counts = {"oracle_words": n, "vad_missed": len(missed), "deleted": len(deleted),
              "substituted": len(substituted), "untimed": len(untimed)}
    return out, counts


def cut_segments(words: list[dict], sim: dict) -> tuple[list[dict], int]:
    """Cut the word stream at pauses and length limits (not at speaker changes) -> (segments, straddling)."""
    groups, current = [], []
    for w in words:
        if current and (w["start"] - current[-1]["end"] >= sim["seg_pause"]
                        or w["end"] - current[0]["start"] > sim["seg_max"]):
            groups.append(current)
            current = []
        current.append(w)
    if current:
        groups.append(current)
    segments, straddling = [], 0
    for group in groups:
        straddling += len({w["speaker"] for w in group}) > 1
        timed = [{k: v for k, v in w.items() if k in ("word", "start", "end")} if not w.get("untimed")
                 else {"word": w["word"]} for w in group]
        segments.append(segment_of(timed, group[0]["start"], max(w["end"] for w in group)))
    return segments, straddling


def simulate_turns(turns, sim: dict, rng, duration: float) -> tuple[list, dict]:
    """Reference turns (F/M) -> degraded turns, with the counts of each error."""
    turns = sorted(turns)
    other = {s: o for s, o in zip("FM", "MF")}
    changes = [i for i in range(1, len(turns)) if turns[i][2] != turns[i - 1][2]]
    # 1. Boundary shifts, larger at speaker changes.
    at_change = set(changes) | {i - 1 for i in changes}
    shifted = []
    for i, (s, e, spk) in enumerate(turns):
        sd = sim["boundary"] if i in at_change else sim["boundary"] / 2
        s2 = min(max(s + rng.normal(0, sd), 0.0), duration)
        e2 = min(max(e + rng.normal(0, sd), 0.0), duration)
        shifted.append([s2, e2, spk])
    # 2. Missed short turns.
    short = [i for i, (s, e, _) in enumerate(turns) if e - s < sim["short_turn"]]
    missed = draw(rng, short, sim["miss_short"], len(short))
    # 3. Speaker confusion, drawn with weight 1/duration.
    candidates = [i for i in range(len(turns)) if i not in missed]
    weights = [1.0 / max(turns[i][1] - turns[i][0], 0.1) for i in candidates]
    confused = draw(rng, candidates, sim["confusion"], len(turns), weights)
    out = []
    for i, (s, e, spk) in enumerate(shifted):
        if i not in missed:
            out.append((s, e, other.get(spk, spk) if i in confused else spk))
    # 4. Spurious short turns of the previous speaker just after a speaker change.
    spurious = draw(rng, changes, sim["spurious"], len(changes))
    for i in sorted(spurious):
        start = turns[i][0]
        out.append((start, min(start + rng.uniform(0.2, 0.6), duration), turns[i - 1][2]))
    out = [(round(s, 3), round(e, 3), spk) for s, e, spk in out if e - s >= 0.05]
    counts = {"reference_turns": len(turns), "speaker_changes": len(changes), "missed_turns": len(missed),
              "confused_turns": len(confused), "spurious_turns": len(spurious)}
    return out, counts


def simulated_backend(dialog, utterances, ref_words, sim: dict, seed: int, duration: float):
    words = sorted(ref_words, key=lambda w: (w["start"], w["end"]))
    rng = dialog_rng(seed, dialog)
    degraded, word_counts = simulate_words(words, sim, rng, duration)
    segments, straddling = cut_segments(degraded, sim)
    turns, turn_counts = simulate_turns(reference_turns(utterances), sim, rng, duration)
    stats = {"simulated": {**word_counts, **turn_counts, "straddling_segments": straddling}}
    return asr_result(dialog, "simulated", segments), anonymise(turns), stats


# ---------------------------------------------------------------------------------------------
# The real front end: WhisperX + pyannote
# ---------------------------------------------------------------------------------------------

# The paper's models and what their loaders open. A size such as "large-v2" is faster-whisper's
# name for a hub repository of a CTranslate2 model (faster_whisper.utils._MODELS); WhisperX's
# default English alignment model is a torchaudio bundle, fetched from download.pytorch.org into
# torch's hub cache (whisperx.alignment.DEFAULT_ALIGN_MODELS_TORCH["en"]; a test checks both).
DEFAULT_ALIGN_MODEL = "WAV2VEC2_ASR_BASE_960H"
WHISPER_REPOS = {"large-v2": "Systran/faster-whisper-large-v2"}  # used when faster_whisper is absent
WHISPER_FILES = ("config.json", "preprocessor_config.json", "model.bin", "tokenizer.json", "vocabulary.*")
WHISPER_REQUIRED = ("model.bin", "config.json", "tokenizer.json")  # without tokenizer.json faster-whisper goes online
ALIGN_REQUIRED = ("config.json", "preprocessor_config.json", "vocab.json", "|".join(utils.TRANSFORMERS_WEIGHTS))
PLDA_FILES = ("xvec_transform.npz", "plda.npz")
# The models a hub pipeline's config names, for the preflight, which does not download the config.
KNOWN_PIPELINE_MODELS = {
    "pyannote/speaker-diarization-3.1": {"segmentation": "pyannote/segmentation-3.0",
                                         "embedding": "pyannote/wespeaker-voxceleb-resnet34-LM"},
    "pyannote/speaker-diarization-community-1": {},  # segmentation, embedding, plda are its own subfolders
}


def whisper_repo(name: str) -> str | None:
    """A faster-whisper size ('large-v2') or a hub id -> the hub repository of the CTranslate2 model."""
    try:
        from faster_whisper.utils import _MODELS
    except ImportError:
        _MODELS = WHISPER_REPOS
    return _MODELS.get(name) or (name if utils.HUB_NAME_RE.fullmatch(name) else None)


def asr_source(args) -> tuple[Path | None, str | None]:
    """--asr-model -> (local folder, None) or (None, hub repository). A name that is neither an
    existing folder, a mirrored repository nor a hub name comes back as a (missing) folder."""
    local = utils.local_model_path(args.asr_model, args.model_dir)
    if local is not None:
        return local, None
    repo = whisper_repo(args.asr_model)
    if repo is None:
        return Path(args.asr_model), None
    mirrored = utils.local_model_path(repo, args.model_dir)
    return (mirrored, None) if mirrored is not None else (None, repo)


def torchaudio_checkpoint(bundle: str) -> tuple[str, str] | None:
    """A torchaudio pipeline name -> (checkpoint file name, download URL), else None."""
    import torchaudio

    obj = getattr(torchaudio.pipelines, bundle, None) if bundle.isupper() else None
    path = getattr(obj, "_path", None)
    if not path:
        return None
    return Path(path).name, path if path.startswith("https") else f"https://download.pytorch.org/torchaudio/models/{path}"


def align_source(args) -> dict:
    """--align-model / --align-model-dir / --model-dir -> how whisperx.load_align_model gets it:
    {"kind": "torchaudio" | "local" | "hub", "name": what to pass as model_name, "model_dir": its
    model_dir, "file": the torchaudio checkpoint path (torchaudio only)}."""
    name = args.align_model or DEFAULT_ALIGN_MODEL
    checkpoint = torchaudio_checkpoint(name)
    if checkpoint is not None:
        model_dir = args.align_model_dir
        if model_dir is None and args.model_dir and (Path(args.model_dir) / "torchaudio").is_dir():
            model_dir = str(Path(args.model_dir) / "torchaudio")
        if model_dir is None:
            import torch
            folder = Path(torch.hub.get_dir()) / "checkpoints"
        else:
            folder = Path(model_dir)
        return {"kind": "torchaudio", "name": name, "model_dir": model_dir, "file": folder / checkpoint[0],
                "url": checkpoint[1]}
    local = utils.local_model_path(name, args.model_dir)
    if local is not None or not utils.is_hub_name(name):
        return {"kind": "local", "name": str(local or name), "model_dir": None}
    return {"kind": "hub", "name": name, "model_dir": args.align_model_dir}


def token_kwargs(function, token) -> dict:
    """The hub token under the keyword `function` takes: whisperx 3.8 calls it `token` in
    DiarizationPipeline and the VAD, but still `use_auth_token` in whisperx.asr.load_model. Give
    the function itself: whisperx.load_model is a lazy (*args, **kwargs) wrapper of it."""
    import inspect

    parameters = inspect.signature(function).parameters
    return next(({key: token} for key in ("token", "use_auth_token") if key in parameters), {})


def _pipeline_file(ref: str, filename: str, subfolder, *, model_dir, token, cache_only, cache_dir, loaded) -> Path:
    """One file a diarization pipeline needs: from a local folder (or the --model-dir mirror) when
    `ref` is one, else from the hub (or its local cache) with huggingface_hub.hf_hub_download."""
    rel = f"{subfolder}/{filename}" if subfolder else filename
    local = utils.local_model_path(ref, model_dir)
    if local is not None:
        path = local / rel if local.is_dir() else local
        if not path.is_file():
            raise PipelineError(f"{path}: not found (the diarization pipeline needs {rel} of {ref})")
        loaded.append(str(path))
        return path
    if not utils.is_hub_name(ref):
        raise PipelineError(f"{ref}: no such folder (diarization pipeline), and not a hub name org/name")
    import huggingface_hub

    try:
        path = huggingface_hub.hf_hub_download(ref, filename, subfolder=subfolder or None, token=token,
                                               local_files_only=cache_only, cache_dir=cache_dir,
                                               library_name="pyannote")
    except Exception as e:
        raise PipelineError(f"{ref}: {rel}: {utils.hub_error_message(ref, e, token)}") from e
    loaded.append(f"{ref}/{rel}")
    return Path(path)


def _model_reference(params: dict, key: str, pipeline: str, config_path) -> tuple[str, str | None]:
    """pipeline.params[key] of a pyannote config -> (repository or folder, subfolder or None)."""
    ref = params.get(key)
    if ref is None:  # pyannote would silently fall back on community-1's model
        raise PipelineError(f"{config_path}: pipeline.params.{key} is missing")
    if not isinstance(ref, str):
        raise PipelineError(f"{config_path}: pipeline.params.{key}: expected a name, a path or $model/<subfolder>, "
                            f"got {utils.quote(ref)}")
    if ref.startswith("$model/"):
        sub = ref[len("$model/"):]
        if "@" in sub:
            raise PipelineError(f"{config_path}: pipeline.params.{key}: revisions ({ref}) are not supported")
        return pipeline, sub
    return ref, None


def load_diarization_pipeline(name: str, *, model_dir=None, token=None, cache_only: bool = False, cache_dir=None,
                              embedding_batch_size=None, segmentation_batch_size=None, device=None):
    """A pyannote SpeakerDiarization pipeline, loading exactly the files its config names -> (pipeline, files).

    name: a hub pipeline (pyannote/speaker-diarization-3.1, ...-community-1) or a local folder with
    its config.yaml; hub names are read from the model_dir mirror when there. The config's
    segmentation and embedding are hub names (3.1: pyannote/segmentation-3.0,
    pyannote/wespeaker-voxceleb-resnet34-LM) or $model/<subfolder> of the pipeline itself
    (community-1); each is resolved here to a local file, then the pipeline is built from the
    config by pyannote (Pipeline.from_pretrained of the resolved config dict), so pyannote itself
    never touches the hub. Why not Pipeline.from_pretrained(name): pyannote.audio 4.0's
    SpeakerDiarization.__init__ always loads a PLDA, by default community-1's, also for a pipeline
    whose clustering needs none (3.1: AgglomerativeClustering); here the PLDA is loaded only for
    VBxClustering (from the config's plda entry), and other clusterings get a stand-in that is
    never called. files: what was read (local paths, or repo/file for the hub).
    SECURITY: pyannote loads checkpoints with torch.load(weights_only=False): trust the source.
    """
    import yaml
    from pyannote.audio import Pipeline
    from pyannote.audio.core.plda import PLDA

    class NoPLDA(PLDA):
        """Stands in for the PLDA of a pipeline whose clustering uses none."""

        def __init__(self, clustering):
            self.clustering, self.lda_dimension = clustering, 0

        def __call__(self, embeddings):
            raise RuntimeError(f"{self.clustering} uses no PLDA")

    if Path(name).is_file():  # a config.yaml given directly: its folder is the pipeline
        name = str(Path(name).parent)
    loaded = []
    where = dict(model_dir=model_dir, token=token, cache_only=cache_only, cache_dir=cache_dir, loaded=loaded)
    config_path = _pipeline_file(name, "config.yaml", None, **where)
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        params = config["pipeline"].setdefault("params", {})
        config["pipeline"]["name"]
    except (yaml.YAMLError, KeyError, TypeError, AttributeError) as e:
        raise PipelineError(f"{config_path}: not a pyannote pipeline config ({type(e).__name__}: {e})") from e
    for key in ("segmentation", "embedding"):
        ref, sub = _model_reference(params, key, name, config_path)
        params[key] = {"checkpoint": str(_pipeline_file(ref, "pytorch_model.bin", sub, **where))}
    clustering = params.get("clustering", "VBxClustering")
    if clustering == "VBxClustering":
        ref, sub = _model_reference(params, "plda", name, config_path)
        params["plda"] = PLDA(*(_pipeline_file(ref, f, sub, **where) for f in PLDA_FILES))
    else:
        params["plda"] = NoPLDA(clustering)
    if embedding_batch_size:
        params["embedding_batch_size"] = embedding_batch_size
    if segmentation_batch_size:
        params["segmentation_batch_size"] = segmentation_batch_size
    params["token"], params["cache_dir"] = None, None  # every file is local by now
    left = [k for k, v in params.items() if isinstance(v, str) and v.startswith("$model/")]
    if left:
        raise PipelineError(f"{config_path}: pipeline.params {left}: $model/ references are supported for "
                            "segmentation, embedding and plda only")
    pipeline = Pipeline.from_pretrained(config)
    if device is not None:
        import torch
        pipeline.to(torch.device(device))
    return pipeline, loaded


@contextlib.contextmanager
def loading(what: str, name):
    """A model loader's own errors (CTranslate2's RuntimeError for a folder without model.bin,
    whisperx's ValueError for an unknown alignment model) -> a PipelineError naming the model. Hub
    errors (not found, gated, offline) and other OSErrors pass on: utils.run_main explains them."""
    try:
        yield
    except (RuntimeError, ValueError, KeyError) as e:
        if isinstance(e, OSError):
            raise
        raise PipelineError(f"{name}: cannot load the {what}: {type(e).__name__}: {utils.one_line(str(e))[:300]}") from e


def annotation_turns(annotation, duration: float) -> list[tuple[float, float, str]]:
    """pyannote Annotation -> [(start, end, label)], clipped to the audio: pyannote's last sliding
    window is padded, so a turn can end after the audio does."""
    turns = [(max(float(seg.start), 0.0), min(float(seg.end), duration), str(label))
             for seg, _, label in annotation.itertracks(yield_label=True)]
    return [t for t in turns if t[1] > t[0]]


class WhisperX:
    """WhisperX ASR + alignment + pyannote diarization, models loaded once."""

    def __init__(self, args):
        import whisperx

        nltk_data = args.nltk_data
        if nltk_data is None and args.model_dir and (Path(args.model_dir) / "nltk_data").is_dir():
            nltk_data = Path(args.model_dir) / "nltk_data"
        if nltk_data:  # whisperx.align loads NLTK's punkt_tab; a local copy avoids the download
            import nltk
            nltk.data.path.insert(0, str(Path(nltk_data).resolve()))
        self.whisperx = whisperx
        self.device, self.compute_type = device_and_compute_type(args)
        self.vad, self.batch_size, self.num_speakers = args.vad, args.batch_size, args.num_speakers
        token = utils.hub_token()  # never printed
        asr_path, asr_repo = asr_source(args)
        align = align_source(args)
        print(f"loading models on {self.device} ({self.compute_type}): ASR {asr_path or asr_repo}, "
              f"alignment {align['name']}, diarization {args.diar_model}"
              + (" (cache only)" if args.cache_only else ""))
        device_type, _, index = self.device.partition(":")  # ctranslate2 takes the GPU index apart
        from whisperx.asr import load_model  # what whisperx.load_model calls
        with loading("ASR model (--asr-model)", asr_path or args.asr_model):
            self.asr = load_model(
                str(asr_path) if asr_path else args.asr_model, device_type, device_index=int(index or 0),
                compute_type=self.compute_type, language="en", vad_method="pyannote",
                vad_options={"vad_onset": args.vad_onset, "vad_offset": args.vad_offset},
                asr_options={"beam_size": args.beam_size}, threads=args.threads, local_files_only=args.cache_only,
                **token_kwargs(load_model, token))
        if args.asr_max_length:
            self.asr.model.max_length = args.asr_max_length
        if align["kind"] == "torchaudio" and args.cache_only and not align["file"].is_file():
            raise PipelineError(f"{align['file']}: the alignment model {align['name']} is not there and --cache-only "
                                f"forbids downloading it; copy it with --download-models DIR and pass --model-dir DIR")
        with loading("alignment model (--align-model)", align["name"]):
            self.align_model, self.align_meta = whisperx.load_align_model(
                language_code="en", device=self.device, model_name=align["name"], model_dir=align["model_dir"],
                model_cache_only=args.cache_only)
        with loading("diarization pipeline (--diar-model)", args.diar_model):
            self.diarizer, files = load_diarization_pipeline(
                args.diar_model, model_dir=args.model_dir, token=token, cache_only=args.cache_only,
                embedding_batch_size=args.embedding_batch_size, segmentation_batch_size=args.segmentation_batch_size,
                device=self.device)
        print(f"diarization pipeline read {len(files)} files: " + ", ".join(files))

    def transcribe(self, audio: np.ndarray, utterances: list[dict]) -> list[dict]:
        """Unaligned segments [{"start", "end", "text"}], from WhisperX's VAD or the reference utterances."""
        if self.vad == "auto":
            try:
                return self.asr.transcribe(audio, batch_size=self.batch_size, language="en")["segments"]
            except IndexError as e:  # whisperx's merge_chunks indexes the first VAD region
                raise PipelineError(f"the VAD found no speech in the dialog ({e})") from e
        # VAD oracle: the reference utterances are the speech regions; each is decoded on its own,
        # through the same batched Whisper pipeline that FasterWhisperPipeline.transcribe runs on VAD chunks.
        chunks = []
        for u in sorted(utterances, key=lambda u: (u["start"], u["end"])):
            start, end = max(u["start"], 0.0), min(u["end"], len(audio) / SAMPLE_RATE)
            while end - start > 0.01:
                chunks.append((start, min(end, start + MAX_CHUNK_S)))
                start += MAX_CHUNK_S
        inputs = ({"inputs": audio[int(s * SAMPLE_RATE):int(e * SAMPLE_RATE)]} for s, e in chunks)
        segments = []
        for (start, end), out in zip(chunks, self.asr(inputs, batch_size=self.batch_size, num_workers=0)):
            text = out["text"][0] if isinstance(out["text"], list) else out["text"]
            segments.append({"text": text, "start": round(start, 3), "end": round(end, 3)})
        return segments

    def __call__(self, dialog, utterances, audio):
        import torch

        segments = self.transcribe(audio, utterances)
        aligned = self.whisperx.align(segments, self.align_model, self.align_meta, audio, self.device,
                                      return_char_alignments=False)
        # The pipeline is called as whisperx.diarize.DiarizationPipeline calls it, keeping both outputs.
        output = self.diarizer({"waveform": torch.from_numpy(audio[None, :]), "sample_rate": SAMPLE_RATE},
                               num_speakers=self.num_speakers)
        duration = len(audio) / SAMPLE_RATE
        names = {}  # one anonymous labelling for both versions
        turns = anonymise(annotation_turns(getattr(output, "speaker_diarization", output), duration), names)
        exclusive = getattr(output, "exclusive_speaker_diarization", None)  # absent for legacy pipelines
        exclusive = anonymise(annotation_turns(exclusive, duration), names) if exclusive is not None else None
        out = [clean_segment(s) for s in aligned["segments"]]
        # A segment with no time at all (nothing aligned, no timed word) cannot be placed: dropped, counted.
        untimed = [s for s in out if s["start"] is None]
        out = [s for s in out if s["start"] is not None]
        stats = {"unaligned_segments": len(segments), "empty_segments": sum(1 for s in out if not s["words"]),
                 "dropped_untimed_segments": len(untimed),
                 "dropped_untimed_words": sum(len(s["words"]) for s in untimed)}
        return asr_result(dialog, "whisperx" if self.vad == "auto" else "whisperx-vadoracle", out), \
            turns, stats, exclusive


def _number(x):
    """numpy/pandas scalar -> float, NaN -> None (JSON has no NaN)."""
    x = float(x)
    return None if x != x else round(x, 3)


def clean_segment(seg: dict) -> dict:
    """WhisperX aligned segment -> plain JSON (floats, no NaN); a word keeps only the times it has."""
    words = []
    for w in seg.get("words", []):
        word = {"word": str(w["word"])}
        for key in ("start", "end", "score"):
            if key in w and w[key] is not None and _number(w[key]) is not None:
                word[key] = _number(w[key])
        words.append(word)
    out = {"start": _number(seg["start"]), "end": _number(seg["end"]), "text": str(seg["text"]), "words": words}
    if out["start"] is None or out["end"] is None:  # no timed character: fall back on its words
        timed = [w for w in words if "start" in w]
        out["start"] = timed[0]["start"] if timed else None
        out["end"] = max(w["end"] for w in timed) if timed else None
    return out


# ---------------------------------------------------------------------------------------------
# Measuring a result against the reference
# ---------------------------------------------------------------------------------------------

def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance (substitutions + deletions + insertions), one numpy row at a time."""
    if not ref or not hyp:
        return max(len(ref), len(hyp))
    vocab = {w: i for i, w in enumerate(set(ref) | set(hyp))}
    hyp_ids = np.array([vocab[w] for w in hyp])
    cols = np.arange(len(hyp) + 1)
    row = cols.copy()
    for i, w in enumerate(ref, 1):
        # diagonal/up moves first; the left moves (insertions) resolve as a running minimum.
        best = np.empty_like(row)
        best[0] = i
        best[1:] = np.minimum(row[1:] + 1, row[:-1] + (hyp_ids != vocab[w]))
        row = np.minimum.accumulate(best - cols) + cols
    return int(row[-1])


def measure(asr: dict, turns, ref_words: list[dict], ref_turns) -> dict:
    """WER vs the oracle words, untimed words, and DER components vs the reference turns."""
    # Both sides in reading order: reference words utterance by utterance (utterances in time order),
    # hypothesis words segment by segment (segments in time order). The oracle then scores exactly 0.
    hyp_words = [w for seg in sorted(asr["segments"], key=lambda seg: seg["start"]) for w in seg["words"]]
    ref = [t for t in (normalise_for_wer(w["word"]) for w in ref_words) if t]
    hyp = [t for t in (normalise_for_wer(w["word"]) for w in hyp_words) if t]
    stats = {"ref_words": len(ref), "hyp_words": len(hyp_words), "word_errors": edit_distance(ref, hyp),
             "untimed_words": sum(1 for w in hyp_words if "start" not in w or "end" not in w)}
    if ref_turns:
        stats["der"] = der_parts(turns, ref_turns)
    return stats


def der_parts(turns, ref_turns) -> dict:
    """DER components (seconds) of turns vs the reference turns: no collar, overlap scored, over the
    extent of the reference."""
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    reference, hypothesis = Annotation(), Annotation()
    for i, (s, e, spk) in enumerate(ref_turns):
        reference[Segment(s, e), i] = spk
    for i, (s, e, spk) in enumerate(turns):
        hypothesis[Segment(s, e), i] = spk
    uem = Timeline([Segment(min(t[0] for t in ref_turns), max(t[1] for t in ref_turns))])
    parts = DiarizationErrorRate(collar=0.0, skip_overlap=False)(reference, hypothesis, uem=uem, detailed=True)
    return {k: round(float(parts[k]), 4) for k in ("total", "missed detection", "false alarm", "confusion")}


# ---------------------------------------------------------------------------------------------
# One dialog, and the run over all dialogs with its manifest
# ---------------------------------------------------------------------------------------------

def run_dialog(dialog: str, entry: dict, corpus: Path, out: Path, args, backend) -> dict:
    """Process one dialog: write asr/<dialog>.json and diarization/<dialog>.rttm -> statistics."""
    utterances, counts = dialog_utterances(corpus, dialog, entry)
    wav = corpus / entry["wav"]
    audio = load_audio(wav) if args.backend == "whisperx" else None  # the only decode of this dialog in this run
    duration = len(audio) / SAMPLE_RATE if audio is not None else utils.wav_seconds(wav)
    for u in utterances:  # labels.json's (and the transcription's unevaluated) utterances
        utils.check_in_audio(u["end"], duration, str(wav), f"utterance {u['id']} ({u['start']:.3f}-{u['end']:.3f} s)")
    counts["empty_wdseg_tokens"] = 0
    ref_words, no_wdseg = reference_words(corpus, utterances, duration, counts)  # offline backends, measuring
    exclusive = None
    if args.backend == "whisperx":
        asr, turns, stats, exclusive = backend(dialog, utterances, audio)
    else:
        if args.backend == "oracle":
            asr, turns, stats = oracle_backend(dialog, utterances, ref_words)
        else:
            sim = {k: getattr(args, "sim_" + k) for k in SIM_DEFAULTS}
            asr, turns, stats = simulated_backend(dialog, utterances, ref_words, sim, args.seed, duration)
    stats["exclusive_from"] = "pyannote" if exclusive is not None else "derived"
    if exclusive is None:  # the offline backends (and legacy pyannote pipelines): derived, see exclusive_turns
        exclusive = exclusive_turns(turns)
    ref_turns = reference_turns(utterances)
    stats.update(counts, utterances_without_wdseg=no_wdseg)
    stats.update(measure(asr, turns, ref_words, ref_turns))
    if ref_turns:
        stats["der_exclusive"] = der_parts(exclusive, ref_turns)
    stats.update(duration=round(duration, 3), segments=len(asr["segments"]), turns=len(turns),
                 exclusive_turns=len(exclusive), speakers=len({t[2] for t in turns}),
                 speech=round(sum(e - s for s, e, _ in turns), 3))
    atomic_write_json(out / "asr" / f"{dialog}.json", asr)
    write_rttm(out / DIARIZATION_DIRS["overlap"] / f"{dialog}.rttm", dialog, turns)
    write_rttm(out / DIARIZATION_DIRS["exclusive"] / f"{dialog}.rttm", dialog, exclusive)
    return stats


def output_paths(out: Path, dialog: str) -> list[Path]:
    """The files step 2 writes for one dialog."""
    return [out / "asr" / f"{dialog}.json"] + [out / d / f"{dialog}.rttm" for d in DIARIZATION_DIRS.values()]


def is_done(manifest: dict, dialog: str, key: str, out: Path) -> bool:
    entry = manifest["dialogs"].get(dialog, {})
    return (entry.get("status") == "done" and entry.get("config") == key
            and all(p.is_file() for p in output_paths(out, dialog)))


def summarise(manifest: dict, names: list[str]) -> dict:
    """Corpus totals over the selected dialogs that are done (rates are totals divided once)."""
    done = [manifest["dialogs"][d]["stats"] for d in names if manifest["dialogs"].get(d, {}).get("status") == "done"]
    total = lambda key: sum(s.get(key, 0) for s in done)  # noqa: E731
    summary = {"dialogs_done": len(done),
               "dialogs_failed": sum(1 for d in names if manifest["dialogs"].get(d, {}).get("status") == "failed"),
               "words": total("hyp_words"), "segments": total("segments"), "turns": total("turns"),
               "speakers_per_dialog": sorted({s["speakers"] for s in done}),
               "audio_hours": round(total("duration") / 3600, 4), "speech_hours": round(total("speech") / 3600, 4),
               "utterances_without_wdseg": total("utterances_without_wdseg"),
               "unevaluated_utterances": total("unevaluated_utterances"),
               "unparsed_transcript_lines": total("unparsed_transcript_lines"),
               "empty_wdseg_tokens": total("empty_wdseg_tokens")}
    if done:
        summary["wer"] = round(total("word_errors") / max(total("ref_words"), 1), 4)
        summary["untimed_rate"] = round(total("untimed_words") / max(total("hyp_words"), 1), 4)
        for name in ("der", "der_exclusive"):
            ders = [s[name] for s in done if name in s]
            if ders:
                errors = sum(d["missed detection"] + d["false alarm"] + d["confusion"] for d in ders)
                summary[name] = round(errors / max(sum(d["total"] for d in ders), 1e-9), 4)
                summary[name + "_parts"] = {
                    k: round(sum(d[k] for d in ders) / max(sum(d["total"] for d in ders), 1e-9), 4)
                    for k in ("missed detection", "false alarm", "confusion")}
    sims = [s["simulated"] for s in done if "simulated" in s]
    if sims:
        summary["simulated"] = {k: sum(s[k] for s in sims) for k in sims[0]}
    return summary


# ---------------------------------------------------------------------------------------------
# Preflight (--check) and offline model copies (--download-models)
# ---------------------------------------------------------------------------------------------

# FLOPs per second of dialog audio of the paper's models (an ESTIMATE, for the time estimate):
#   Whisper large-v2 encoder: 2 x 0.64e9 parameters x 1500 frames per 30 s window, plus attention,
#     ~2.3e12 per window; VAD chunks hold ~25 s of audio each -> ~9e10 per s.
#   Whisper large-v2 decoder: 2 x 0.9e9 parameters per token x beam 5 x ~3.5 tokens per s -> ~3e10.
#   wav2vec2-base alignment: 2 x 95e6 parameters x 50 frames per s + ~4e9 convolutional front end.
#   pyannote segmentation-3.0: SincNet front end and LSTMs over 10 s windows at a 1 s step -> ~7e9.
#   pyannote WeSpeaker ResNet34 embeddings: ~4.7e9 per embedded second (80 fbank bins, 100 frames
#     per s), every second embedded 10 times (windows) for each of 3 local speakers -> ~1.4e11.
STEP2_FLOPS_PER_AUDIO_SECOND = {"whisper encoder": 9e10, "whisper decoder": 3e10, "alignment": 1.4e10,
                                "segmentation": 7e9, "embedding": 1.4e11}
OUTPUT_BYTES_PER_AUDIO_SECOND = 1000  # asr json + two RTTMs; measured ~330 B/s on the demo (simulated)
GPU_GIB_NEEDED = 8  # WhisperX README: large-v2 with beam 5 needs under 8 GB of GPU memory; pyannote adds ~1 GB
MODEL_BYTES = {  # download sizes, approximate, for the disk check
    "Systran/faster-whisper-large-v2": 3.1e9, DEFAULT_ALIGN_MODEL: 3.8e8, "pyannote/segmentation-3.0": 6e6,
    "pyannote/wespeaker-voxceleb-resnet34-LM": 2.7e7, "pyannote/speaker-diarization-community-1": 3.5e7}


def read_pipeline_config(path) -> dict:
    import yaml

    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        config["pipeline"]["name"]
        config["pipeline"].setdefault("params", {})
        return config
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise PipelineError(f"{path}: not a pyannote pipeline config ({type(e).__name__}: {e})") from e


def pipeline_model_refs(config: dict, name: str, config_path) -> dict:
    """{"segmentation" | "embedding" | "plda": (repository or folder, subfolder or None, files)} of a
    pipeline config: what load_diarization_pipeline will read (plda only for VBx clustering)."""
    params = config["pipeline"]["params"]
    refs = {key: (*_model_reference(params, key, name, config_path), ("pytorch_model.bin",))
            for key in ("segmentation", "embedding")}
    if params.get("clustering", "VBxClustering") == "VBxClustering":
        refs["plda"] = (*_model_reference(params, "plda", name, config_path), PLDA_FILES)
    return refs


def diarization_checks(args, token, offline: bool) -> list[CheckItem]:
    """The pipeline (config.yaml) and every model its config names, local or on the hub."""
    name, items = args.diar_model, []
    local = utils.local_model_path(name, args.model_dir)
    if local is None and not utils.is_hub_name(name):
        return [CheckItem("diarization pipeline", False, f"{name}: not found; copy the pipeline folder there, "
                          "or give its hub name (pyannote/speaker-diarization-3.1)")]
    config = config_path = None
    if local is not None:
        items.append(utils.check_local_model("diarization pipeline", local, ["config.yaml"]))
        config_path = local / "config.yaml"
    else:
        items.append(utils.check_hub_model("diarization pipeline", name, ["config.yaml"], token, offline=offline))
        if offline:
            from huggingface_hub import try_to_load_from_cache
            cached = try_to_load_from_cache(name, "config.yaml")
            config_path = Path(cached) if isinstance(cached, str) else None
    if config_path is not None and config_path.is_file():
        try:
            config = read_pipeline_config(config_path)
            refs = pipeline_model_refs(config, name, config_path)
        except PipelineError as e:
            return items + [CheckItem("diarization config", False, str(e))]
    elif local is None:  # online: the config is not downloaded by a check; the known pipelines' models
        known = KNOWN_PIPELINE_MODELS.get(name)
        if known is None:
            return items + [CheckItem("diarization models", True, f"{name} is not a pipeline this check knows: "
                                      "the models its config names are checked when it loads")]
        refs = {key: (repo, None, ("pytorch_model.bin",)) for key, repo in known.items()}
    else:
        return items
    for key, (ref, sub, files) in refs.items():
        label = f"diarization {key}"
        if ref == name and sub is not None:  # a subfolder of the pipeline itself
            if local is not None:
                items.append(utils.check_local_model(label, local / sub, files))
            elif offline:
                items.append(utils.check_hub_model(label, name, [f"{sub}/{f}" for f in files], token, offline=True))
            continue  # online: the pipeline's own access covers it
        where = utils.local_model_path(ref, args.model_dir)
        if where is not None:
            items.append(utils.check_local_model(label, where, files if where.is_dir() else ()))
        elif utils.is_hub_name(ref):
            items.append(utils.check_hub_model(label, ref, files, token, offline=offline))
        else:
            items.append(CheckItem(label, False, f"{ref}: not found (named by the diarization pipeline's config)"))
    return items


def nltk_check(args, offline: bool) -> CheckItem:
    """whisperx.align splits sentences with NLTK's punkt_tab and downloads it when it is missing.
    Looked up where nltk.data.path looks (NLTK_DATA, then nltk's default folders), without
    importing nltk (seconds of scipy imports)."""
    folders = [d for d in (args.nltk_data, args.model_dir and Path(args.model_dir) / "nltk_data") if d]
    folders += [d for d in os.environ.get("NLTK_DATA", "").split(os.pathsep) if d]
    folders += [Path.home() / "nltk_data"] + [Path(sys.prefix) / d for d in ("nltk_data", "share/nltk_data",
                                                                           "lib/nltk_data")]
    folders += ["/usr/share/nltk_data", "/usr/local/share/nltk_data", "/usr/lib/nltk_data", "/usr/local/lib/nltk_data"]
    found = next((Path(d) / "tokenizers" / "punkt_tab" / "english" for d in folders
                  if (Path(d) / "tokenizers" / "punkt_tab" / "english").is_dir()), None)
    if found is not None:
        return CheckItem("NLTK punkt_tab", True, str(found))
    if offline:
        return CheckItem("NLTK punkt_tab", False, "not found and offline: whisperx.align needs it; pass "
                         "--nltk-data DIR (--download-models DIR writes DIR/nltk_data)")
    return CheckItem("NLTK punkt_tab", True, "not found; whisperx downloads it at first use (~40 MB)")


def model_checks(args) -> list[CheckItem]:
    """Each model of the whisperx backend: local folder complete, or hub access (gated: token)."""
    token, offline = utils.hub_token(), utils.hub_offline() or args.cache_only
    path, repo = asr_source(args)
    items = [utils.check_local_model("ASR model", path, WHISPER_REQUIRED) if path is not None
             else utils.check_hub_model("ASR model", repo, ["model.bin"], token, offline=offline)]
    align = align_source(args)
    if align["kind"] == "torchaudio":
        if align["file"].is_file():
            items.append(CheckItem("alignment model", True, f"{align['file']} ({align['name']}, local)"))
        elif offline:
            items.append(CheckItem("alignment model", False, f"{align['file']}: not found and offline; copy it with "
                                   "--download-models DIR and pass --model-dir DIR (or --align-model-dir)"))
        else:
            items.append(CheckItem("alignment model", True, f"{align['name']} not cached; torchaudio downloads it "
                                   f"at first use from {align['url']} into {align['file'].parent}"))
    elif align["kind"] == "local":
        items.append(utils.check_local_model("alignment model", align["name"], ALIGN_REQUIRED))
    else:
        items.append(utils.check_hub_model("alignment model", align["name"], ["config.json"], token,
                                           cache_dir=align["model_dir"], offline=offline))
    items += diarization_checks(args, token, offline)
    items.append(nltk_check(args, offline))
    return items


def planned_download_bytes(args) -> float:
    """Approximate bytes the whisperx backend downloads at first use (models not on disk)."""
    if args.backend != "whisperx" or utils.hub_offline() or args.cache_only:
        return 0.0
    total = 0.0
    _, repo = asr_source(args)
    total += MODEL_BYTES.get(repo, 0.0) if repo else 0.0
    align = align_source(args)
    if align["kind"] == "torchaudio" and not align["file"].is_file():
        total += MODEL_BYTES.get(align["name"], 0.0)
    if utils.local_model_path(args.diar_model, args.model_dir) is None:
        total += MODEL_BYTES.get(args.diar_model, 0.0) + sum(
            MODEL_BYTES.get(r, 0.0) for r in KNOWN_PIPELINE_MODELS.get(args.diar_model, {}).values())
    return total


def preflight(args) -> list[CheckItem]:
    """What step 2 needs, checked in seconds and writing nothing -> one CheckItem per item."""
    work, items, audio_seconds = Path(args.work), [], 0.0
    try:
        labels = load_labels(work, require=("wav",))
        names = select_dialogs(labels, args.dialogs, args.sessions)[args.shard_index::args.shard_count]
        shard = f", shard {args.shard_index}/{args.shard_count}" if args.shard_count > 1 else ""
        items.append(CheckItem("labels", True, f"{work / 'labels.json'}: {len(labels['dialogs'])} dialogs, "
                               f"{len(names)} selected{shard}"))
    except PipelineError as e:
        labels = None
        if not (args.planned and not (work / "labels.json").exists()):
            items.append(CheckItem("labels", False, str(e)))
        elif not args.iemocap:
            items.append(CheckItem("labels", True, f"{work / 'labels.json'} will be made by step 1 (no --iemocap: "
                                   "audio not checked)"))
        else:  # --planned (reproduce.py --check before a first run): the corpus's dialog wavs stand in
            wavs = sorted(p for p in Path(args.iemocap).glob("Session*/dialog/wav/Ses*.wav") if p.stem[3:5].isdigit())
            labels = {"corpus": args.iemocap, "dialogs": {p.stem: {"session": utils.session_of(p.stem),
                                                                   "wav": str(p.relative_to(args.iemocap))} for p in wavs}}
            names = select_dialogs(labels, args.dialogs, args.sessions)[args.shard_index::args.shard_count]
            items.append(CheckItem("labels", bool(names), f"{work / 'labels.json'} will be made by step 1; "
                                   f"{len(wavs)} dialog wavs in {args.iemocap}/Session*/dialog/wav stand in, "
                                   f"{len(names)} selected" + ("" if names else ": none; check --iemocap")))
    if labels is not None:
        corpus, problems = Path(args.iemocap or labels.get("corpus") or "."), []
        for d in names:
            try:
                audio_seconds += utils.wav_seconds(corpus / labels["dialogs"][d]["wav"])
            except PipelineError as e:
                problems.append(str(e))
        items.append(CheckItem("corpus audio", not problems, (
            f"{len(names)} dialog wavs under {corpus}, {audio_seconds / 3600:.2f} h" if not problems else
            f"{len(problems)} of {len(names)} dialog wavs unusable, e.g. {problems[0]}; check --iemocap")))
    if args.backend == "whisperx":
        items += model_checks(args)
        items.append(utils.check_cuda(required=args.device.startswith("cuda"), min_free_gib=GPU_GIB_NEEDED,
                                      purpose="WhisperX large-v2, beam 5, and pyannote"))
    downloads = planned_download_bytes(args)
    items.append(utils.check_disk(work, audio_seconds * OUTPUT_BYTES_PER_AUDIO_SECOND + downloads,
                                  "step-2 outputs" + (" and model downloads" if downloads else "")))
    if args.backend == "whisperx":
        flops = audio_seconds * sum(STEP2_FLOPS_PER_AUDIO_SECOND.values())
        paper = args.asr_model == "large-v2" and args.align_model is None and "3.1" in args.diar_model
        items.append(utils.estimate_time("time (estimate)", flops, device=args.device, detail=(
            f"{audio_seconds / 3600:.2f} h of audio x {sum(STEP2_FLOPS_PER_AUDIO_SECOND.values()):.2g} FLOP per s "
            "of the paper's large-v2 + wav2vec2-base + pyannote 3.1, preprocess.STEP2_FLOPS_PER_AUDIO_SECOND"
            + ("" if paper else "; other models than the paper's: scale by their size"))))
    else:
        items.append(CheckItem("time (estimate)", True, f"seconds: the {args.backend} backend runs no neural model"))
    return items


def download_models(args) -> dict:
    """Copy the models of a whisperx run into DIR (--download-models DIR) -> the manifest written to
    DIR/models.json. Exactly what loads: the CTranslate2 files of the Whisper repository, the
    alignment model (the torchaudio checkpoint of the default English model, or a hub model's
    config, vocabulary and weights), the pipeline's config.yaml and then only the files it names
    (3.1: pytorch_model.bin of segmentation-3.0 and wespeaker-voxceleb-resnet34-LM; community-1:
    its segmentation/, embedding/ and plda/ files), and NLTK's punkt_tab."""
    dest, token = Path(args.download_models), utils.hub_token()
    if args.backend != "whisperx":
        print(f"--download-models: the {args.backend} backend uses no model; nothing to download")
        return {}
    if utils.hub_offline():
        raise PipelineError("--download-models needs the hub, but HF_HUB_OFFLINE is set: run it with HF_HUB_OFFLINE=0 "
                            "on a machine with internet")
    repos, files = {}, {}

    def fetch(repo, patterns) -> Path:
        print(f"downloading {repo}: {', '.join(patterns)}")
        path = utils.snapshot_repo(repo, dest, patterns, token)
        entry = repos.setdefault(repo, {"path": str(path), "allow_patterns": []})
        entry["allow_patterns"] += list(patterns)
        return path

    path, repo = asr_source(args)
    if repo:
        files["asr"] = str(fetch(repo, WHISPER_FILES))
    else:
        print(f"ASR model {path}: on disk, not downloaded")
    align = align_source(args)
    if align["kind"] == "torchaudio":
        target = dest / "torchaudio" / align["file"].name
        if not target.is_file():
            import torch
            print(f"downloading {align['url']}")
            target.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(align["url"], str(target))
        files["align"] = str(target)
    elif align["kind"] == "hub":
        print(f"downloading {align['name']}: config, vocabulary and weights")
        local = utils.snapshot_transformers_model(align["name"], dest, token)
        repos[align["name"]] = {"path": str(local), "allow_patterns": "utils.TRANSFORMERS_FILES and weights"}
        files["align"] = str(local)
    name = args.diar_model
    local = utils.local_model_path(name, args.model_dir)
    if local is None and not utils.is_hub_name(name):
        raise PipelineError(f"--diar-model {name}: no such folder, and not a hub name")
    config_path = (local or fetch(name, ["config.yaml"])) / "config.yaml"
    own = []
    for key, (ref, sub, needed) in pipeline_model_refs(read_pipeline_config(config_path), name, config_path).items():
        if ref == name and sub is not None:
            own += [f"{sub}/{f}" for f in needed]
        elif utils.local_model_path(ref, args.model_dir) is None and utils.is_hub_name(ref):
            fetch(ref, list(needed))
    if own and local is None:
        fetch(name, own)
    files["diarization"] = str(local or dest / name)
    import nltk
    if not nltk.download("punkt_tab", download_dir=str(dest / "nltk_data"), quiet=True, raise_on_error=True):
        raise PipelineError("NLTK punkt_tab: download failed")
    files["nltk_data"] = str(dest / "nltk_data")
    manifest = {"written_by": "preprocess.py --download-models", "repositories": repos, "files": files,
                "flags": ["--model-dir", str(dest)]}
    atomic_write_json(dest / "models.json", manifest)
    print(f"wrote {dest / 'models.json'}; on the machine without internet run:\n"
          f"  HF_HUB_OFFLINE=1 python preprocess.py --backend whisperx --model-dir {dest} --cache-only"
          + (f" --diar-model {name}" if name != "pyannote/speaker-diarization-3.1" else ""))
    return manifest


# ---------------------------------------------------------------------------------------------
# main: select (and shard) the dialogs, skip what is done, run, merge the manifest
# ---------------------------------------------------------------------------------------------

def read_manifest(out: Path) -> dict:
    """WORK/<pipe>/manifest.json with the shard parts merged in, oldest part first, so the entry a
    shard wrote last for a dialog wins."""
    path = out / "manifest.json"
    manifest = read_json(path, "step-2 manifest") if path.is_file() else {"dialogs": {}}
    parts = sorted((out / PARTS_DIR).glob("shard-*.json"), key=lambda q: (q.stat().st_mtime_ns, q.name))
    for part in parts:
        manifest["dialogs"].update(read_json(part, "step-2 manifest part")["dialogs"])
    return manifest


def check(argv=None) -> list[CheckItem]:
    """The step-2 preflight for the run these arguments describe (same flags as a run) -> its
    items, printing nothing (reproduce.py --check and train.py print them with utils.report_checks)."""
    return preflight(parse_args(argv))


def main(argv=None):
    args = parse_args(argv)
    if args.download_models:
        return download_models(args)
    if args.check:
        items = preflight(args)
        if not utils.report_checks(items, "step 2 preflight"):
            raise SystemExit(1)
        return items

    work = Path(args.work)
    labels = load_labels(work, require=("wav",))
    if not (args.iemocap or labels.get("corpus")):
        raise PipelineError(f"{work / 'labels.json'}: no 'corpus' recorded; pass the corpus root with --iemocap DIR")
    corpus = Path(args.iemocap or labels["corpus"])
    all_names = select_dialogs(labels, args.dialogs, args.sessions)
    k, n = args.shard_index, args.shard_count
    names = all_names[k::n]
    pipe = pipe_name(args)
    out = work / pipe
    utils.remove_stale_temp(out)  # temporary files of a killed run
    config = run_config(args)
    key = config_key(config)
    manifest_path = out / "manifest.json"
    part_path = out / PARTS_DIR / f"shard-{k}-of-{n}.json" if n > 1 else None
    manifest = read_manifest(out)
    meta = dict(step="preprocess", pipe=pipe, config=config, config_key=key, code=code_version())
    manifest.update(meta)
    print(f"step 2: {len(names)} dialogs of {work / 'labels.json'} (corpus {corpus}), backend {args.backend}"
          + (f", VAD {args.vad}" if args.backend == "whisperx" else "")
          + (f", shard {k}/{n} of {len(all_names)} dialogs" if n > 1 else "") + f" -> {out}")

    todo = [d for d in names if args.overwrite or not is_done(manifest, d, key, out)]
    stale = sum(1 for d in todo if manifest["dialogs"].get(d, {}).get("status") == "done"
                and manifest["dialogs"][d].get("config") != key)
    print(f"skipping {len(names) - len(todo)} dialogs already done with this config"
          + (f"; redoing {stale} done with another config" if stale else "")
          + (" (--overwrite)" if args.overwrite else ""))
    backend = WhisperX(args) if args.backend == "whisperx" and todo else None

    def save():  # after every dialog: the whole manifest, or this shard's part of it
        if part_path is None:
            atomic_write_json(manifest_path, manifest)
        else:
            atomic_write_json(part_path, {"shard": f"{k}/{n}", "config_key": key, "dialogs": {
                d: manifest["dialogs"][d] for d in names if d in manifest["dialogs"]}})

    started = time.time()
    for dialog in tqdm(todo, desc=f"step 2 ({pipe})", unit="dialog", file=sys.stdout):
        try:
            stats = run_dialog(dialog, labels["dialogs"][dialog], corpus, out, args, backend)
            manifest["dialogs"][dialog] = {"status": "done", "config": key, "stats": stats}
        except Exception as e:  # recorded and reported; KeyboardInterrupt still stops the run
            manifest["dialogs"][dialog] = {"status": "failed", "config": key, "error": f"{type(e).__name__}: {e}"}
            tqdm.write(f"FAILED {dialog}: {type(e).__name__}: {e}")
        save()
    save()
    # Merge under a lock: the last shard to finish sees every other shard's final part.
    with utils.file_lock(out / "manifest.lock"):
        if part_path is not None:
            manifest = read_manifest(out)
            manifest.update(meta)
        manifest["dialogs"] = dict(sorted(manifest["dialogs"].items()))
        manifest["summary"] = summary = summarise(manifest, all_names)
        atomic_write_json(manifest_path, manifest)
        if part_path is None and (out / PARTS_DIR).is_dir():  # merged above: an unsharded run retires them
            for part in (out / PARTS_DIR).glob("shard-*.json"):
                part.unlink()
            (out / PARTS_DIR).rmdir()

    print(f"wrote {out / 'asr'}/*.json, {out}/{{{','.join(DIARIZATION_DIRS.values())}}}/*.rttm and {manifest_path} "
          f"({len(todo)} dialogs processed in {time.time() - started:.1f} s"
          + (f"; summary over the {summary['dialogs_done']} dialogs all shards have done so far)" if n > 1 else ")"))
    print(f"dialogs: {summary['dialogs_done']} done, {summary['dialogs_failed']} failed; words {summary['words']}, "
          f"segments {summary['segments']}, turns {summary['turns']}, speakers per dialog "
          f"{summary['speakers_per_dialog']}, audio {summary['audio_hours'] * 60:.1f} min, "
          f"speech {summary['speech_hours'] * 60:.1f} min")
    print(f"reference: {summary['unevaluated_utterances']} unevaluated (XX) utterances added from the transcriptions"
          + (f", {summary['unparsed_transcript_lines']} transcript lines not parsed (skipped)"
             if summary["unparsed_transcript_lines"] else ""))
    if summary["empty_wdseg_tokens"]:
        print(f"reference: {summary['empty_wdseg_tokens']} .wdseg tokens that normalise to nothing (e.g. '(2)') dropped")
    if summary["utterances_without_wdseg"]:
        print(f"reference: {summary['utterances_without_wdseg']} utterances have no .wdseg; their transcript "
              f"words were spread uniformly over the utterance")
    if "wer" in summary:
        print(f"measured against the reference: WER {100 * summary['wer']:.2f} %, words without timestamps "
              f"{100 * summary['untimed_rate']:.2f} %"
              + (f", DER {100 * summary['der']:.2f} % (missed {100 * summary['der_parts']['missed detection']:.2f}, "
                 f"false alarm {100 * summary['der_parts']['false alarm']:.2f}, confusion "
                 f"{100 * summary['der_parts']['confusion']:.2f})" if "der" in summary else "")
              + (f"; exclusive turns: DER {100 * summary['der_exclusive']:.2f} %" if "der_exclusive" in summary else ""))
    if "simulated" in summary:
        print("simulated errors (counts): " + ", ".join(f"{name} {v}" for name, v in summary["simulated"].items()))
    failed = {d: manifest["dialogs"][d]["error"] for d in names if manifest["dialogs"].get(d, {}).get("status") == "failed"}
    if failed:
        for d, error in failed.items():
            print(f"FAILED {d}: {error}")
        raise SystemExit(f"step 2: {len(failed)} of {len(names)} dialogs failed (listed above and in {manifest_path})")
    return manifest


if __name__ == "__main__":
    utils.run_main(main)
