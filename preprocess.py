"""Step 2: dialog audio -> timed ASR words and speaker turns (paper Section III-A, Fig. 2).

For every dialog of WORK/labels.json (step 1) this writes, under WORK/<pipe>/ (docs/FORMATS.md):
  asr/<dialog>.json          WhisperX's result shape {"segments": [{"start", "end", "text", "words":
                             [{"word", "start"?, "end"?, "score"?}]}], "language"}; no speakers
  diarization/<dialog>.rttm  speaker turns under anonymous labels SPEAKER_00, SPEAKER_01, ... numbered
                             in order of first speech
  manifest.json              the config, each dialog's status (done / failed + error) and statistics,
                             and a summary (words, segments, speakers, durations, measured error rates)

Backends (--backend), one code path for the real corpus and models and for the embedded demo:

  whisperx   The paper's front end. WhisperX ASR (faster-whisper; paper: large-v2, English, the
             authors' VAD onset 0.4, batch 8, float16 on GPU) with the pyannote VAD bundled in
             WhisperX, word timestamps from WhisperX's forced alignment (whisperx.load_align_model +
             whisperx.align), and pyannote speaker diarization (paper: pyannote 3.1, two speakers per
             dialog) through whisperx.diarize.DiarizationPipeline. Each model is a hub name or a local
             directory (--asr-model, --align-model, --diar-model); the hub token is read from the
             HF_TOKEN environment variable only. Each dialog wav is decoded once with soundfile
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

Usage:
  python preprocess.py --backend whisperx                 # WORK/whisperx, the paper's standard pipeline
  python preprocess.py --backend whisperx --vad oracle    # WORK/whisperx-vadoracle
  python preprocess.py --backend oracle | simulated       # offline
"""
from __future__ import annotations

import argparse
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

from iemo_lab_with_timestamps import TRANSCRIPT_RE, parse_wdseg, read_text_lines  # step 1's corpus readers
from utils import (PipelineError, SAMPLE_RATE, atomic_write_json, code_version, load_audio, load_labels,
                   read_json, write_rttm)

BACKENDS = ("whisperx", "oracle", "simulated")
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

    w = p.add_argument_group("whisperx backend")
    w.add_argument("--asr-model", default="large-v2", help="Whisper name or CTranslate2 folder (default: %(default)s)")
    w.add_argument("--align-model", default=None,
                   help="wav2vec2 CTC alignment model, name or folder (default: WhisperX's English default)")
    w.add_argument("--diar-model", default="pyannote/speaker-diarization-3.1",
                   help="pyannote pipeline, name or folder (default: %(default)s)")
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
        if value < 0 or (is_rate and value > 1):
            p.error(f"--sim-{name.replace('_', '-')} must be " + ("in [0, 1]" if is_rate else ">= 0") + f", got {value}")
    if args.vad == "oracle" and args.backend != "whisperx":
        p.error("--vad oracle applies to the whisperx backend only (the oracle backend is oracle throughout)")
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
        device = "cuda" if torch.cuda.is_available() else "cpu"
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
            if m is None or speaker is None or float(m.group(3)) <= float(m.group(2)):
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


def reference_words(corpus: Path, utterances: list[dict]) -> tuple[list[dict], int]:
    """Every utterance's words in dialog time -> ([{word, start, end, speaker, utterance}], utterances without .wdseg).

    A word spans frames SFrm..EFrm of 10 ms from the utterance start, so it starts at
    utt_start + SFrm/100 and ends at utt_start + (EFrm+1)/100. An utterance without a .wdseg file
    gets its transcript words spread uniformly over [start, end].
    """
    words, no_wdseg = [], 0
    for utt in utterances:
        base = {"speaker": utt["speaker"], "utterance": utt["id"]}
        if utt.get("wdseg"):
            for start_frame, end_frame, _, token in parse_wdseg(corpus / utt["wdseg"]):
                if not is_special_token(token):
                    words.append({"word": normalise_token(token), "start": round(utt["start"] + start_frame / 100, 6),
                                  "end": round(utt["start"] + (end_frame + 1) / 100, 6), **base})
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


def anonymise(turns) -> list[tuple[float, float, str]]:
    """Relabel speakers SPEAKER_00, SPEAKER_01, ... in order of first speech (labels carry no identity)."""
    names = {}
    for _, _, spk in sorted(turns):
        names.setdefault(spk, f"SPEAKER_{len(names):02d}")
    return sorted((s, e, names[spk]) for s, e, spk in turns)


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

class WhisperX:
    """WhisperX ASR + alignment + pyannote diarization, models loaded once."""

    def __init__(self, args):
        import whisperx
        from whisperx.diarize import DiarizationPipeline

        if args.nltk_data:  # whisperx.align loads NLTK's punkt_tab; a local copy avoids the download
            import nltk
            nltk.data.path.insert(0, str(Path(args.nltk_data).resolve()))
        self.whisperx = whisperx
        self.device, self.compute_type = device_and_compute_type(args)
        self.vad, self.batch_size, self.num_speakers = args.vad, args.batch_size, args.num_speakers
        token = os.environ.get("HF_TOKEN") or None  # never printed
        print(f"loading models on {self.device} ({self.compute_type}): ASR {args.asr_model}, "
              f"alignment {args.align_model or 'WhisperX default (en)'}, diarization {args.diar_model}")
        self.asr = whisperx.load_model(
            args.asr_model, self.device, compute_type=self.compute_type, language="en", vad_method="pyannote",
            vad_options={"vad_onset": args.vad_onset, "vad_offset": args.vad_offset},
            asr_options={"beam_size": args.beam_size}, threads=args.threads, use_auth_token=token)
        if args.asr_max_length:
            self.asr.model.max_length = args.asr_max_length
        self.align_model, self.align_meta = whisperx.load_align_model(
            language_code="en", device=self.device, model_name=args.align_model)
        self.diarizer = DiarizationPipeline(model_name=args.diar_model, token=token, device=self.device)

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
        segments = self.transcribe(audio, utterances)
        aligned = self.whisperx.align(segments, self.align_model, self.align_meta, audio, self.device,
                                      return_char_alignments=False)
        diarization = self.diarizer(audio, num_speakers=self.num_speakers)
        # pyannote's last sliding window is padded, so a turn can end after the audio does: clip.
        duration = len(audio) / SAMPLE_RATE
        turns = [(max(float(r.start), 0.0), min(float(r.end), duration), str(r.speaker))
                 for r in diarization.itertuples()]
        turns = [t for t in turns if t[1] > t[0]]
        out = [clean_segment(s) for s in aligned["segments"]]
        # A segment with no time at all (nothing aligned, no timed word) cannot be placed: dropped, counted.
        untimed = [s for s in out if s["start"] is None]
        out = [s for s in out if s["start"] is not None]
        stats = {"unaligned_segments": len(segments), "empty_segments": sum(1 for s in out if not s["words"]),
                 "dropped_untimed_segments": len(untimed),
                 "dropped_untimed_words": sum(len(s["words"]) for s in untimed)}
        return asr_result(dialog, "whisperx" if self.vad == "auto" else "whisperx-vadoracle", out), \
            anonymise(turns), stats


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
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    # Both sides in reading order: reference words utterance by utterance (utterances in time order),
    # hypothesis words segment by segment (segments in time order). The oracle then scores exactly 0.
    hyp_words = [w for seg in sorted(asr["segments"], key=lambda seg: seg["start"]) for w in seg["words"]]
    ref = [t for t in (normalise_for_wer(w["word"]) for w in ref_words) if t]
    hyp = [t for t in (normalise_for_wer(w["word"]) for w in hyp_words) if t]
    stats = {"ref_words": len(ref), "hyp_words": len(hyp_words), "word_errors": edit_distance(ref, hyp),
             "untimed_words": sum(1 for w in hyp_words if "start" not in w or "end" not in w)}
    reference, hypothesis = Annotation(), Annotation()
    for i, (s, e, spk) in enumerate(ref_turns):
        reference[Segment(s, e), i] = spk
    for i, (s, e, spk) in enumerate(turns):
        hypothesis[Segment(s, e), i] = spk
    if ref_turns:
        uem = Timeline([Segment(min(t[0] for t in ref_turns), max(t[1] for t in ref_turns))])
        parts = DiarizationErrorRate(collar=0.0, skip_overlap=False)(reference, hypothesis, uem=uem, detailed=True)
        stats["der"] = {k: round(float(parts[k]), 4) for k in ("total", "missed detection", "false alarm", "confusion")}
    return stats


# ---------------------------------------------------------------------------------------------
# One dialog, and the run over all dialogs with its manifest
# ---------------------------------------------------------------------------------------------

def audio_duration(path: Path) -> float:
    """Duration of a wav from its header (validates that it decodes)."""
    import soundfile as sf

    if not path.is_file():
        raise PipelineError(f"{path}: dialog audio file not found")
    try:
        info = sf.info(str(path))
    except Exception as e:
        raise PipelineError(f"{path}: cannot decode audio: {e}") from e
    if info.samplerate != SAMPLE_RATE or info.frames == 0:
        raise PipelineError(f"{path}: expected 16 kHz audio with samples, got {info.samplerate} Hz, {info.frames} frames")
    return info.frames / info.samplerate


def run_dialog(dialog: str, entry: dict, corpus: Path, out: Path, args, backend) -> dict:
    """Process one dialog: write asr/<dialog>.json and diarization/<dialog>.rttm -> statistics."""
    utterances, counts = dialog_utterances(corpus, dialog, entry)
    ref_words, no_wdseg = reference_words(corpus, utterances)  # for the offline backends and for measuring
    wav = corpus / entry["wav"]
    if args.backend == "whisperx":
        audio = load_audio(wav)  # the only decode of this dialog in this run
        duration = len(audio) / SAMPLE_RATE
        asr, turns, stats = backend(dialog, utterances, audio)
    else:
        duration = audio_duration(wav)
        if args.backend == "oracle":
            asr, turns, stats = oracle_backend(dialog, utterances, ref_words)
        else:
            sim = {k: getattr(args, "sim_" + k) for k in SIM_DEFAULTS}
            asr, turns, stats = simulated_backend(dialog, utterances, ref_words, sim, args.seed, duration)
    stats.update(counts, utterances_without_wdseg=no_wdseg)
    stats.update(measure(asr, turns, ref_words, reference_turns(utterances)))
    stats.update(duration=round(duration, 3), segments=len(asr["segments"]), turns=len(turns),
                 speakers=len({t[2] for t in turns}), speech=round(sum(e - s for s, e, _ in turns), 3))
    atomic_write_json(out / "asr" / f"{dialog}.json", asr)
    write_rttm(out / "diarization" / f"{dialog}.rttm", dialog, turns)
    return stats


def is_done(manifest: dict, dialog: str, key: str, out: Path) -> bool:
    entry = manifest["dialogs"].get(dialog, {})
    return (entry.get("status") == "done" and entry.get("config") == key
            and (out / "asr" / f"{dialog}.json").is_file() and (out / "diarization" / f"{dialog}.rttm").is_file())


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
               "unparsed_transcript_lines": total("unparsed_transcript_lines")}
    if done:
        summary["wer"] = round(total("word_errors") / max(total("ref_words"), 1), 4)
        summary["untimed_rate"] = round(total("untimed_words") / max(total("hyp_words"), 1), 4)
        ders = [s["der"] for s in done if "der" in s]
        if ders:
            errors = sum(d["missed detection"] + d["false alarm"] + d["confusion"] for d in ders)
            summary["der"] = round(errors / max(sum(d["total"] for d in ders), 1e-9), 4)
            summary["der_parts"] = {k: round(sum(d[k] for d in ders) / max(sum(d["total"] for d in ders), 1e-9), 4)
                                    for k in ("missed detection", "false alarm", "confusion")}
    sims = [s["simulated"] for s in done if "simulated" in s]
    if sims:
        summary["simulated"] = {k: sum(s[k] for s in sims) for k in sims[0]}
    return summary


def main(argv=None) -> dict:
    args = parse_args(argv)

    work = Path(args.work)
    labels = load_labels(work)
    corpus = Path(args.iemocap or labels["corpus"])
    names = select_dialogs(labels, args.dialogs, args.sessions)
    pipe = pipe_name(args)
    out = work / pipe
    config = run_config(args)
    key = config_key(config)
    manifest_path = out / "manifest.json"
    manifest = read_json(manifest_path, "step-2 manifest") if manifest_path.is_file() else {"dialogs": {}}
    manifest.update(step="preprocess", pipe=pipe, config=config, config_key=key, code=code_version())
    print(f"step 2: {len(names)} dialogs of {work / 'labels.json'} (corpus {corpus}), backend {args.backend}"
          + (f", VAD {args.vad}" if args.backend == "whisperx" else "") + f" -> {out}")

    todo = [d for d in names if args.overwrite or not is_done(manifest, d, key, out)]
    stale = sum(1 for d in todo if manifest["dialogs"].get(d, {}).get("status") == "done"
                and manifest["dialogs"][d].get("config") != key)
    print(f"skipping {len(names) - len(todo)} dialogs already done with this config"
          + (f"; redoing {stale} done with another config" if stale else "")
          + (" (--overwrite)" if args.overwrite else ""))
    backend = WhisperX(args) if args.backend == "whisperx" and todo else None

    started = time.time()
    for dialog in tqdm(todo, desc=f"step 2 ({pipe})", unit="dialog", file=sys.stdout):
        try:
            stats = run_dialog(dialog, labels["dialogs"][dialog], corpus, out, args, backend)
            manifest["dialogs"][dialog] = {"status": "done", "config": key, "stats": stats}
        except Exception as e:  # recorded and reported; KeyboardInterrupt still stops the run
            manifest["dialogs"][dialog] = {"status": "failed", "config": key, "error": f"{type(e).__name__}: {e}"}
            tqdm.write(f"FAILED {dialog}: {type(e).__name__}: {e}")
        atomic_write_json(manifest_path, manifest)
    manifest["summary"] = summary = summarise(manifest, names)
    atomic_write_json(manifest_path, manifest)

    print(f"wrote {out / 'asr'}/*.json, {out / 'diarization'}/*.rttm and {manifest_path} "
          f"({len(todo)} dialogs processed in {time.time() - started:.1f} s)")
    print(f"dialogs: {summary['dialogs_done']} done, {summary['dialogs_failed']} failed; words {summary['words']}, "
          f"segments {summary['segments']}, turns {summary['turns']}, speakers per dialog "
          f"{summary['speakers_per_dialog']}, audio {summary['audio_hours'] * 60:.1f} min, "
          f"speech {summary['speech_hours'] * 60:.1f} min")
    print(f"reference: {summary['unevaluated_utterances']} unevaluated (XX) utterances added from the transcriptions"
          + (f", {summary['unparsed_transcript_lines']} transcript lines not parsed (skipped)"
             if summary["unparsed_transcript_lines"] else ""))
    if summary["utterances_without_wdseg"]:
        print(f"reference: {summary['utterances_without_wdseg']} utterances have no .wdseg; their transcript "
              f"words were spread uniformly over the utterance")
    if "wer" in summary:
        print(f"measured against the reference: WER {100 * summary['wer']:.2f} %, words without timestamps "
              f"{100 * summary['untimed_rate']:.2f} %"
              + (f", DER {100 * summary['der']:.2f} % (missed {100 * summary['der_parts']['missed detection']:.2f}, "
                 f"false alarm {100 * summary['der_parts']['false alarm']:.2f}, confusion "
                 f"{100 * summary['der_parts']['confusion']:.2f})" if "der" in summary else ""))
    if "simulated" in summary:
        print("simulated errors (counts): " + ", ".join(f"{k} {v}" for k, v in summary["simulated"].items()))
    failed = {d: manifest["dialogs"][d]["error"] for d in names if manifest["dialogs"].get(d, {}).get("status") == "failed"}
    if failed:
        for d, error in failed.items():
            print(f"FAILED {d}: {error}")
        raise SystemExit(f"step 2: {len(failed)} of {len(names)} dialogs failed (listed above and in {manifest_path})")
    return manifest


if __name__ == "__main__":
    main()
