"""Step 2: dialog audio -> timed ASR words and speaker turns (paper Section III-A, Fig. 2).

For every dialog of WORK/labels.json (step 1) this writes, under WORK/<pipe>/, asr/<dialog>.json (WhisperX's
result shape), diarization/<dialog>.rttm (speaker turns, may overlap), diarization_exclusive/<dialog>.rttm (one
speaker at a time) and manifest.json; the files: docs/FORMATS.md. Backends (--backend), one code path for the
real corpus and for the demo (docs/EXPERIMENTS.md, "The pipelines"):
  whisperx   the paper's front end (common/step2_whisperx.py); --vad oracle transcribes the reference
             utterances instead of running the VAD: the paper's VAD-oracle pipeline (Table III).
  oracle     offline and exact: the reference words (.wdseg) and turns (common/step2_oracle.py).
  simulated  offline: the oracle degraded by seeded error processes (SIMULATION below).
Every result is measured against the reference (WER: jiwer; cpWER: meeteval, the words given their speakers
much as step 3 gives them; untimed words; DER: pyannote.metrics, no collar, overlap scored; docs/FORMATS.md).
A dialog done under the same config is skipped; a failed one is recorded, the others run.
Sharding (--shard K/N, torchrun), models, HF_TOKEN, offline copies, --check: docs/REAL_DATA.md. Trust only
the model folders you load (pyannote's checkpoints can run code): docs/TESTING.md, "Security".

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
import fnmatch
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common import checklist, cli, defaults, fileio, formats, intervals, step2_oracle, step2_simulated, step2_whisperx
from common.checklist import CheckItem
from common.cli import PipelineError
from common.fileio import atomic_write_json, read_json
from common.formats import SAMPLE_RATE, load_audio, load_labels, write_rttm
from common.rundirs import code_version

BACKENDS = ("whisperx", "oracle", "simulated")
DIARIZATION_DIRS = {"overlap": "diarization", "exclusive": "diarization_exclusive"}  # the two RTTM folders
PARTS_DIR = "manifest.parts"  # per-shard manifest parts


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__ + step2_simulated.SIMULATION_DOC, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_run_flags(p)
    add_whisperx_flags(p.add_argument_group("whisperx backend"))
    add_simulated_flags(p.add_argument_group("simulated backend (see SIMULATION above)"))
    args = p.parse_args(argv)
    check_args(p, args)
    return args


def add_run_flags(p):
    """Where the step reads and writes, which dialogs, and the modes that only check or download."""
    p.add_argument("--iemocap", default=None, help="corpus root (default: the corpus recorded in labels.json)")
    p.add_argument("--work", default=defaults.WORK_DIR, help="work directory (default: %(default)s)")
    p.add_argument("--backend", choices=BACKENDS, default="whisperx", help="(default: %(default)s)")
    p.add_argument(
        "--vad",
        choices=("auto", "oracle"),
        default="auto",
        help="whisperx only: 'auto' runs WhisperX's VAD; 'oracle' transcribes the reference "
        "utterances instead (the paper's VAD-oracle pipeline; see above)",
    )
    p.add_argument(
        "--name",
        default=None,
        help="output folder WORK/<name> (default: whisperx, whisperx-vadoracle, oracle or simulated)",
    )
    p.add_argument("--dialogs", nargs="+", default=None, help="only these dialogs (names or globs)")
    p.add_argument("--sessions", nargs="+", type=int, default=None, help="only these sessions")
    p.add_argument("--overwrite", action="store_true", help="redo dialogs already done")
    p.add_argument(
        "--shard",
        default=None,
        metavar="K/N",
        help="process every N-th dialog from the K-th (0 <= K < N); default: RANK/WORLD_SIZE "
        "when torchrun sets them, else all dialogs (see Sharding above)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="preflight only: check labels, audio, models (hub access), CUDA and disk, estimate "
        "the time; write nothing; exit status 1 on any problem",
    )
    p.add_argument(
        "--planned",
        action="store_true",
        help="with --check: a labels.json step 1 has not made yet is not a problem; the dialog wavs "
        "of --iemocap stand in for it (what reproduce.py --check passes before a first run)",
    )
    p.add_argument(
        "--download-models",
        metavar="DIR",
        default=None,
        help="copy the models of this run (--asr-model, --align-model, --diar-model and the models "
        "the pipeline names) from the hub into DIR/<org>/<name>, write DIR/models.json, and stop",
    )


def add_whisperx_flags(w):
    """The models of the whisperx backend, where they are read from, and how they run."""
    w.add_argument(
        "--asr-model", default=defaults.ASR_MODEL, help="Whisper name or CTranslate2 folder (default: %(default)s)"
    )
    w.add_argument(
        "--align-model",
        default=None,
        help="wav2vec2 CTC alignment model, name or folder (default: WhisperX's default for --language, "
        "for en the paper's WAV2VEC2_ASR_BASE_960H)",
    )
    w.add_argument(
        "--diar-model",
        default=defaults.DIAR_MODEL,
        help="pyannote pipeline, hub name or folder (default: %(default)s, the paper's; "
        "pyannote/speaker-diarization-community-1 is pyannote 4's). SECURITY: pyannote loads "
        "checkpoints with torch.load(weights_only=False), which can run code: use only "
        "folders from a source you trust",
    )
    w.add_argument(
        "--model-dir",
        default=None,
        help="local mirror of hub repositories, DIR/<org>/<name> (what --download-models DIR writes): "
        "every hub name, also those a pipeline config names, is read from there when present "
        "(and DIR/torchaudio, DIR/nltk_data are used for the default alignment model and NLTK). "
        "SECURITY: the pyannote models in DIR run code when loaded (see --diar-model): only a mirror "
        "you made yourself or trust",
    )
    w.add_argument(
        "--align-model-dir",
        default=None,
        help="whisperx.load_align_model's model_dir: where the alignment model is cached or "
        "downloaded (the torchaudio checkpoint of the default English model, or the hub cache "
        "of a named one; default: torch's and huggingface's own caches)",
    )
    w.add_argument(
        "--cache-only",
        action="store_true",
        help="never download: whisperx.load_model(local_files_only=True), "
        "load_align_model(model_cache_only=True), hub files of the pipeline from the local "
        "cache only; a missing model is an error naming it",
    )
    w.add_argument(
        "--embedding-batch-size",
        type=int,
        default=None,
        help="pyannote speaker-embedding batch size (default: the pipeline config's, 32 for 3.1)",
    )
    w.add_argument(
        "--segmentation-batch-size",
        type=int,
        default=None,
        help="pyannote segmentation batch size (default: the pipeline config's, 32 for 3.1)",
    )
    w.add_argument("--device", default="auto", help="auto (cuda if available), cuda or cpu")
    w.add_argument("--compute-type", default="auto", help="auto: float16 on GPU, float32 on CPU")
    w.add_argument("--batch-size", type=int, default=8, help="ASR batch size (default: %(default)s, as the authors)")
    w.add_argument("--beam-size", type=int, default=5, help="(default: %(default)s, WhisperX's default)")
    w.add_argument("--vad-onset", type=float, default=0.4, help="(default: %(default)s, the authors' value)")
    w.add_argument("--vad-offset", type=float, default=0.363, help="(default: %(default)s, WhisperX's default)")
    step2_whisperx.add_speaker_flags(w, "min = max = 2, the authors' call for IEMOCAP's dyads")
    w.add_argument(
        "--asr-max-length",
        type=int,
        default=None,
        help="cap on decoded tokens per chunk (default: the model's, 448; small for random test models)",
    )
    w.add_argument("--threads", type=int, default=4, help="CPU threads for CTranslate2 (default: %(default)s)")
    w.add_argument(
        "--nltk-data",
        default=None,
        help="extra NLTK data folder holding punkt_tab (whisperx.align downloads it when missing)",
    )
    add_language_flags(w)


def add_language_flags(w):
    """The language of the recordings: Whisper's decoding language and the alignment model WhisperX picks for it."""
    w.add_argument(
        "--language",
        default=defaults.LANGUAGE,
        metavar="CODE",
        help="Whisper language code of the speech (default: %(default)s, the paper's); 'auto' detects the "
        "language of each dialog (Whisper, first 30 s) and records it in asr/<dialog>.json and the manifest. "
        "The alignment model is WhisperX's default for the language unless --align-model is given",
    )


def add_simulated_flags(s):
    """The seed and one flag per error process of the simulated backend (step2_simulated.SIM_DEFAULTS)."""
    s.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    for flag, (default, help_text) in step2_simulated.SIM_DEFAULTS.items():
        s.add_argument(
            "--sim-" + flag.replace("_", "-"),
            dest="sim_" + flag,
            type=float,
            default=default,
            help=f"{help_text} (default: %(default)s)",
        )


def check_args(p, args):
    """Values argparse cannot refuse by itself -> p.error (exit status 2); sets args.shard_index/shard_count."""
    for name in step2_simulated.SIM_DEFAULTS:
        value, is_rate = getattr(args, "sim_" + name), name in step2_simulated.SIM_RATES
        if not 0 <= value < float("inf") or (is_rate and value > 1):  # NaN fails too
            p.error(
                f"--sim-{name.replace('_', '-')} must be " + ("in [0, 1]" if is_rate else ">= 0") + f", got {value}"
            )
    if args.vad == "oracle" and args.backend != "whisperx":
        p.error("--vad oracle applies to the whisperx backend only (the oracle backend is oracle throughout)")
    check_language_args(p, args)
    for flag in (
        "embedding_batch_size",
        "segmentation_batch_size",
        "batch_size",
        "beam_size",
        "threads",
        "asr_max_length",
    ):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1")
    for flag in ("vad_onset", "vad_offset"):
        if not 0 < getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must lie between 0 and 1, got {getattr(args, flag)}")
    check_speaker_args(p, args)
    try:
        args.shard_index, args.shard_count = checklist.parse_shard(args.shard)
    except PipelineError as e:
        p.error(str(e))


def check_speaker_args(p, args) -> None:
    """The speaker-count flags: for the whisperx backend only (the others take the reference's speakers),
    and not contradicting each other -> p.error."""
    given = [k for k in step2_whisperx.SPEAKER_FLAGS if getattr(args, k) is not None]
    if given and args.backend != "whisperx":
        p.error(f"--{given[0].replace('_', '-')} applies to the whisperx backend only (pyannote's speaker count)")
    try:
        step2_whisperx.speaker_kwargs(args, step2_whisperx.IEMOCAP_SPEAKERS)
    except ValueError as e:
        p.error(str(e))


def check_language_args(p, args):
    """--language: a Whisper code or auto; not with an English-only Whisper (*.en); only for whisperx."""
    if args.language == defaults.LANGUAGE:
        return
    if args.backend != "whisperx":
        p.error(
            f"--language {args.language}: applies to the whisperx backend only (oracle and simulated "
            "transcripts are the corpus's own words, in whatever language they are)"
        )
    error = step2_whisperx.check_language(args.language)
    if error:
        p.error(error)
    if args.asr_model.endswith(".en"):
        p.error(f"--language {args.language}: --asr-model {args.asr_model} is English-only")
    if args.align_model is None and args.language != "auto":
        try:
            step2_whisperx.default_align_model(args.language)
        except PipelineError as e:
            p.error(str(e))


def pipe_name(args) -> str:
    if args.name:
        return args.name
    return "whisperx-vadoracle" if args.backend == "whisperx" and args.vad == "oracle" else args.backend


def run_config(args) -> dict:
    """The settings that determine the outputs: a dialog done under another config is redone."""
    config = {"backend": args.backend}
    if args.backend == "whisperx":
        device, compute_type = step2_whisperx.device_and_compute_type(args)
        config.update(
            vad=args.vad,
            asr_model=args.asr_model,
            align_model=args.align_model,
            diar_model=args.diar_model,
            device=device.split(":")[0],
            compute_type=compute_type,
            batch_size=args.batch_size,
            beam_size=args.beam_size,
            **step2_whisperx.speaker_config(step2_whisperx.speaker_kwargs(args, step2_whisperx.IEMOCAP_SPEAKERS)),
            asr_max_length=args.asr_max_length,
        )
        if args.vad == "auto":
            config.update(vad_onset=args.vad_onset, vad_offset=args.vad_offset)
        if args.language != defaults.LANGUAGE:  # recorded only when changed: en runs keep their key
            config["language"] = args.language
        for flag in ("embedding_batch_size", "segmentation_batch_size"):  # recorded only when changed
            if getattr(args, flag) is not None:
                config[flag] = getattr(args, flag)
    if args.backend == "simulated":
        config["seed"] = args.seed
        config["sim"] = {k: getattr(args, "sim_" + k) for k in step2_simulated.SIM_DEFAULTS}
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
# Measuring a result against the reference
# ---------------------------------------------------------------------------------------------


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance (substitutions + deletions + insertions) of two word lists, by jiwer.

    Each word must be non-empty and free of whitespace (normalise_for_wer's words are): jiwer splits a text
    at whitespace, so such a word would be scored as several or none; it is refused with a ValueError.
    """
    import jiwer

    bad = [w for w in ref + hyp if not w or w != "".join(w.split())]
    if bad:
        raise ValueError(f"edit_distance: words must be non-empty and free of whitespace, got {bad[0]!r}")
    if not ref and not hyp:
        return 0
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    return out.substitutions + out.deletions + out.insertions


# The hypothesis speaker of the words of a dialog whose diarization has no turns at all (cpWER).
NO_TURN_SPEAKER = "<no turn>"
# Overlaps within this many seconds of each other are tied (float noise of the interval sums, as step 3's align.EPS).
OVERLAP_TIE_S = 1e-7


def speaker_overlaps(spans: np.ndarray, turns) -> tuple[list[str], np.ndarray]:
    """Seconds each span [start, end] shares with each speaker's turns -> (labels in string order,
    overlap[span, speaker]); a speaker's own overlapping turns are merged first, so no second counts twice."""
    names = sorted({spk for _, _, spk in turns})
    overlap = np.zeros((len(spans), len(names)))
    for k, name in enumerate(names):
        merged = intervals.merge_intervals([(s, e) for s, e, spk in turns if spk == name])
        inter = np.minimum(spans[:, 1:2], merged[:, 1]) - np.maximum(spans[:, 0:1], merged[:, 0])
        overlap[:, k] = np.clip(inter, 0.0, None).sum(axis=1)
    return names, overlap


def pick_speakers(spans: np.ndarray, turns, prefer=None) -> tuple[list[str], np.ndarray]:
    """Each span's diarization speaker -> (speakers, nearest). The largest overlap wins; a tie goes to
    prefer[i] when it is among the tied, else to the first label in string order. A span overlapping no
    turn (nearest[i] True) gets the speaker of the turn with the smallest gap (a tie: the earlier turn)."""
    names, overlap = speaker_overlaps(spans, turns)
    most = overlap.max(axis=1)
    tied = overlap >= most[:, None] - OVERLAP_TIE_S
    best = np.argmax(tied, axis=1)
    if prefer is not None:
        wanted = np.array([names.index(p) for p in prefer], dtype=np.int64)
        best = np.where(tied[np.arange(len(spans)), wanted], wanted, best)
    speakers, nearest = [names[k] for k in best], most <= OVERLAP_TIE_S
    for i in np.flatnonzero(nearest):
        s, e = spans[i]
        speakers[i] = min(turns, key=lambda t: (max(t[0] - e, s - t[1], 0.0), t[0], t[2]))[2]
    return speakers, nearest


def speaker_streams(asr: dict, turns) -> tuple[dict, int]:
    """The ASR words by diarization speaker -> ({speaker: its words normalised for WER, in reading order (segments
    by start, as WER reads them)}, words that overlap no turn and got the nearest turn's speaker; with no turns
    at all, every word, under NO_TURN_SPEAKER).

    A timed word gets the speaker its turns overlap most, a tie the speaker of its ASR segment if tied (as step
    3's align.attribute_words; step 3 then takes the earliest-starting turn, here the first label); an untimed
    word its ASR segment's speaker (step 3 re-times it between its neighbours first)."""
    segments = sorted(asr["segments"], key=lambda seg: seg["start"])
    words = [(n, w) for n, seg in enumerate(segments) for w in seg["words"]]
    if not turns:
        speakers, nearest = [NO_TURN_SPEAKER] * len(words), np.ones(len(words), dtype=bool)
    elif words:
        spans = np.array([[seg["start"], seg.get("end", seg["start"])] for seg in segments], dtype=np.float64)
        seg_speakers, seg_nearest = pick_speakers(spans, turns)
        speakers, nearest = [seg_speakers[n] for n, _ in words], seg_nearest[[n for n, _ in words]]
        timed = [i for i, (_, w) in enumerate(words) if w.get("start") is not None and w.get("end") is not None]
        if timed:
            spans = np.array([[words[i][1]["start"], words[i][1]["end"]] for i in timed], dtype=np.float64)
            picked, near = pick_speakers(spans, turns, prefer=[seg_speakers[words[i][0]] for i in timed])
            for j, i in enumerate(timed):
                speakers[i], nearest[i] = picked[j], near[j]
    else:
        speakers, nearest = [], np.zeros(0, dtype=bool)
    streams = {}
    for (_, w), speaker in zip(words, speakers):
        token = step2_oracle.normalise_for_wer(w["word"])
        if token:
            streams.setdefault(speaker, []).append(token)
    return streams, int(np.sum(nearest))


def cp_word_errors(ref_streams: dict, hyp_streams: dict) -> dict:
    """cpWER's counts by meeteval (cp_word_error_rate: each stream is one speaker's words concatenated in
    order; the one-to-one speaker assignment with the fewest errors, Hungarian; an unassigned reference
    speaker's words count as deletions, an unassigned hypothesis speaker's as insertions; a speaker without
    words takes no part) -> {cp_word_errors, cp_missed_speakers, cp_false_alarm_speakers, cp_assignment}."""
    from meeteval.wer import cp_word_error_rate

    er = cp_word_error_rate(ref_streams, hyp_streams, reference_sort=False, hypothesis_sort=False)
    return {
        "cp_word_errors": int(er.errors),
        "cp_missed_speakers": int(er.missed_speaker),
        "cp_false_alarm_speakers": int(er.falarm_speaker),
        "cp_assignment": [[r, h] for r, h in er.assignment],
    }


def measure(asr: dict, turns, ref_words: list[dict], ref_turns) -> dict:
    """WER vs the oracle words, untimed words, cpWER's counts (cp_word_errors) vs the reference speakers' words,
    and DER components vs the reference turns."""
    # Both sides in reading order: reference words utterance by utterance (utterances in time order),
    # hypothesis words segment by segment (segments in time order). The oracle then scores exactly 0.
    hyp_words = [w for seg in sorted(asr["segments"], key=lambda seg: seg["start"]) for w in seg["words"]]
    ref = [t for t in (step2_oracle.normalise_for_wer(w["word"]) for w in ref_words) if t]
    hyp = [t for t in (step2_oracle.normalise_for_wer(w["word"]) for w in hyp_words) if t]
    stats = {
        "ref_words": len(ref),
        "hyp_words": len(hyp_words),
        "word_errors": edit_distance(ref, hyp),
        "untimed_words": sum(1 for w in hyp_words if "start" not in w or "end" not in w),
    }
    ref_streams = {}  # the reference speakers' words, utterance by utterance, normalised as for WER
    for w in ref_words:
        token = step2_oracle.normalise_for_wer(w["word"])
        if token:
            ref_streams.setdefault(w["speaker"], []).append(token)
    hyp_streams, stats["cp_nearest_words"] = speaker_streams(asr, turns)
    stats.update(cp_word_errors(ref_streams, hyp_streams))
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
    utterances, counts = step2_oracle.dialog_utterances(corpus, dialog, entry)
    wav = corpus / entry["wav"]
    audio = load_audio(wav) if args.backend == "whisperx" else None  # the only decode of this dialog in this run
    duration = len(audio) / SAMPLE_RATE if audio is not None else formats.wav_seconds(wav)
    for u in utterances:  # labels.json's (and the transcription's unevaluated) utterances
        formats.check_in_audio(u["end"], duration, str(wav), f"utterance {u['id']} ({u['start']:.3f}-{u['end']:.3f} s)")
    counts["empty_wdseg_tokens"] = 0
    # the reference: the offline backends' input, and what every result is measured against
    ref_words, no_wdseg = step2_oracle.reference_words(corpus, utterances, duration, counts)
    exclusive = None
    if args.backend == "whisperx":
        asr, turns, stats, exclusive = backend(dialog, utterances, audio)
    else:
        if args.backend == "oracle":
            asr, turns, stats = step2_oracle.oracle_backend(dialog, utterances, ref_words)
        else:
            sim = {k: getattr(args, "sim_" + k) for k in step2_simulated.SIM_DEFAULTS}
            asr, turns, stats = step2_simulated.simulated_backend(
                dialog, utterances, ref_words, sim, args.seed, duration
            )
    stats["exclusive_from"] = "pyannote" if exclusive is not None else "derived"
    if exclusive is None:  # the offline backends (and legacy pyannote pipelines): derived, see exclusive_turns
        exclusive = step2_oracle.exclusive_turns(turns)
    ref_turns = step2_oracle.reference_turns(utterances)
    stats.update(counts, utterances_without_wdseg=no_wdseg)
    stats.update(measure(asr, turns, ref_words, ref_turns))
    if ref_turns:
        stats["der_exclusive"] = der_parts(exclusive, ref_turns)
    stats.update(
        duration=round(duration, 3),
        segments=len(asr["segments"]),
        turns=len(turns),
        exclusive_turns=len(exclusive),
        speakers=len({t[2] for t in turns}),
        speech=round(sum(e - s for s, e, _ in turns), 3),
    )
    atomic_write_json(out / "asr" / f"{dialog}.json", asr)
    write_rttm(out / DIARIZATION_DIRS["overlap"] / f"{dialog}.rttm", dialog, turns)
    write_rttm(out / DIARIZATION_DIRS["exclusive"] / f"{dialog}.rttm", dialog, exclusive)
    return stats


def output_paths(out: Path, dialog: str) -> list[Path]:
    """The files step 2 writes for one dialog."""
    return [out / "asr" / f"{dialog}.json"] + [out / d / f"{dialog}.rttm" for d in DIARIZATION_DIRS.values()]


def is_done(manifest: dict, dialog: str, key: str, out: Path) -> bool:
    entry = manifest["dialogs"].get(dialog, {})
    return (
        entry.get("status") == "done"
        and entry.get("config") == key
        and all(p.is_file() for p in output_paths(out, dialog))
    )


def summarise(manifest: dict, names: list[str]) -> dict:
    """Corpus totals over the selected dialogs that are done (rates are totals divided once)."""
    done = [manifest["dialogs"][d]["stats"] for d in names if manifest["dialogs"].get(d, {}).get("status") == "done"]
    total = lambda key: sum(s.get(key, 0) for s in done)  # noqa: E731
    summary = {
        "dialogs_done": len(done),
        "dialogs_failed": sum(1 for d in names if manifest["dialogs"].get(d, {}).get("status") == "failed"),
        "words": total("hyp_words"),
        "segments": total("segments"),
        "turns": total("turns"),
        "speakers_per_dialog": sorted({s["speakers"] for s in done}),
        "audio_hours": round(total("duration") / 3600, 4),
        "speech_hours": round(total("speech") / 3600, 4),
        "utterances_without_wdseg": total("utterances_without_wdseg"),
        "unevaluated_utterances": total("unevaluated_utterances"),
        "unparsed_transcript_lines": total("unparsed_transcript_lines"),
        "empty_wdseg_tokens": total("empty_wdseg_tokens"),
    }
    if done:
        summary["wer"] = round(total("word_errors") / max(total("ref_words"), 1), 4)
        summary["untimed_rate"] = round(total("untimed_words") / max(total("hyp_words"), 1), 4)
        if all("cp_word_errors" in s for s in done):  # dialogs done before cpWER was measured have none
            summary["cpwer"] = round(total("cp_word_errors") / max(total("ref_words"), 1), 4)
            for key in ("cp_missed_speakers", "cp_false_alarm_speakers", "cp_nearest_words"):
                summary[key] = total(key)
        for name in ("der", "der_exclusive"):
            ders = [s[name] for s in done if name in s]
            if ders:
                errors = sum(d["missed detection"] + d["false alarm"] + d["confusion"] for d in ders)
                summary[name] = round(errors / max(sum(d["total"] for d in ders), 1e-9), 4)
                summary[name + "_parts"] = {
                    k: round(sum(d[k] for d in ders) / max(sum(d["total"] for d in ders), 1e-9), 4)
                    for k in ("missed detection", "false alarm", "confusion")
                }
    languages = [s["language"] for s in done if "language" in s]  # whisperx: the language of each dialog
    if languages:
        summary["languages"] = {lang: languages.count(lang) for lang in sorted(set(languages))}
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
STEP2_FLOPS_PER_AUDIO_SECOND = {
    "whisper encoder": 9e10,
    "whisper decoder": 3e10,
    "alignment": 1.4e10,
    "segmentation": 7e9,
    "embedding": 1.4e11,
}
OUTPUT_BYTES_PER_AUDIO_SECOND = 1000  # asr json + two RTTMs; measured ~330 B/s on the demo (simulated)
GPU_GIB_NEEDED = 8  # WhisperX README: large-v2 with beam 5 needs under 8 GB of GPU memory; pyannote adds ~1 GB


def _preflight_labels(args, work: Path) -> tuple[dict | None, list, list[CheckItem]]:
    """The "labels" item: labels.json and the dialogs selected (and sharded) -> (labels, names, items);
    labels is None when there is nothing to check the audio of."""
    items, names = [], []
    try:
        labels = load_labels(work, require=("wav",))
        names = select_dialogs(labels, args.dialogs, args.sessions)[args.shard_index :: args.shard_count]
        shard = f", shard {args.shard_index}/{args.shard_count}" if args.shard_count > 1 else ""
        items.append(
            CheckItem(
                "labels",
                True,
                f"{work / 'labels.json'}: {len(labels['dialogs'])} dialogs, {len(names)} selected{shard}",
            )
        )
    except PipelineError as e:
        labels = None
        if not (args.planned and not (work / "labels.json").exists()):
            items.append(CheckItem("labels", False, str(e)))
        elif not args.iemocap:
            items.append(
                CheckItem(
                    "labels", True, f"{work / 'labels.json'} will be made by step 1 (no --iemocap: audio not checked)"
                )
            )
        else:
            labels, names, item = _planned_labels(args, work)
            items.append(item)
    return labels, names, items


def _planned_labels(args, work: Path) -> tuple[dict, list, CheckItem]:
    """--planned (reproduce.py --check before a first run): the corpus's dialog wavs stand in for
    labels.json -> (labels, names, the "labels" item)."""
    wavs = sorted(p for p in Path(args.iemocap).glob("Session*/dialog/wav/Ses*.wav") if p.stem[3:5].isdigit())
    labels = {
        "corpus": args.iemocap,
        "dialogs": {
            p.stem: {"session": formats.session_of(p.stem), "wav": str(p.relative_to(args.iemocap))} for p in wavs
        },
    }
    names = select_dialogs(labels, args.dialogs, args.sessions)[args.shard_index :: args.shard_count]
    item = CheckItem(
        "labels",
        bool(names),
        f"{work / 'labels.json'} will be made by step 1; "
        f"{len(wavs)} dialog wavs in {args.iemocap}/Session*/dialog/wav stand in, "
        f"{len(names)} selected" + ("" if names else ": none; check --iemocap"),
    )
    return labels, names, item


def _preflight_audio(args, labels: dict, names: list) -> tuple[float, CheckItem]:
    """The "corpus audio" item: every selected dialog wav readable -> (seconds of audio, item)."""
    corpus, problems, audio_seconds = Path(args.iemocap or labels.get("corpus") or "."), [], 0.0
    for d in names:
        try:
            audio_seconds += formats.wav_seconds(corpus / labels["dialogs"][d]["wav"])
        except PipelineError as e:
            problems.append(str(e))
    item = CheckItem(
        "corpus audio",
        not problems,
        (
            f"{len(names)} dialog wavs under {corpus}, {audio_seconds / 3600:.2f} h"
            if not problems
            else f"{len(problems)} of {len(names)} dialog wavs unusable, e.g. {problems[0]}; check --iemocap"
        ),
    )
    return audio_seconds, item


def _preflight_time(args, audio_seconds: float) -> CheckItem:
    """The "time (estimate)" item: the paper's models' FLOPs over the selected audio."""
    if args.backend != "whisperx":
        return CheckItem("time (estimate)", True, f"seconds: the {args.backend} backend runs no neural model")
    flops = audio_seconds * sum(STEP2_FLOPS_PER_AUDIO_SECOND.values())
    paper = args.asr_model == defaults.ASR_MODEL and args.align_model is None and "3.1" in args.diar_model
    paper = paper and args.language == defaults.LANGUAGE
    return checklist.estimate_time(
        "time (estimate)",
        flops,
        device=args.device,
        detail=(
            f"{audio_seconds / 3600:.2f} h of audio x "
            f"{sum(STEP2_FLOPS_PER_AUDIO_SECOND.values()):.2g} FLOP per s "
            "of the paper's large-v2 + wav2vec2-base + pyannote 3.1, preprocess.STEP2_FLOPS_PER_AUDIO_SECOND"
            + ("" if paper else "; other models than the paper's: scale by their size")
        ),
    )


def preflight(args) -> list[CheckItem]:
    """What step 2 needs, checked in seconds and writing nothing -> one CheckItem per item."""
    work, audio_seconds = Path(args.work), 0.0
    labels, names, items = _preflight_labels(args, work)
    if labels is not None:
        audio_seconds, item = _preflight_audio(args, labels, names)
        items.append(item)
    if args.backend == "whisperx":
        items += step2_whisperx.model_checks(args)
        items.append(
            checklist.check_cuda(
                required=args.device.startswith("cuda"),
                min_free_gib=GPU_GIB_NEEDED,
                purpose="WhisperX large-v2, beam 5, and pyannote",
            )
        )
    downloads = step2_whisperx.planned_download_bytes(args)
    items.append(
        checklist.check_disk(
            work,
            audio_seconds * OUTPUT_BYTES_PER_AUDIO_SECOND + downloads,
            "step-2 outputs" + (" and model downloads" if downloads else ""),
        )
    )
    items.append(_preflight_time(args, audio_seconds))
    return items


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
    items, printing nothing (reproduce.py --check and train.py print them with common.checklist.report_checks)."""
    return preflight(parse_args(argv))


@dataclass
class Run:
    """One run of step 2 (one shard of it): what it reads, which dialogs, where it writes, under which config."""

    labels: dict
    corpus: Path
    all_names: list  # every selected dialog; this shard's are names
    names: list
    shard: tuple  # (K, N)
    out: Path
    pipe: str
    key: str  # config_key of the config: a dialog done under another is redone
    meta: dict  # what the manifest says about the run
    manifest: dict
    part_path: Path | None  # this shard's manifest part; None when unsharded

    @property
    def manifest_path(self) -> Path:
        return self.out / "manifest.json"


def plan_run(args) -> Run:
    """labels.json, the corpus, the dialogs of this shard, the output folder, the config and the manifest so far."""
    work = Path(args.work)
    labels = load_labels(work, require=("wav",))
    if not (args.iemocap or labels.get("corpus")):
        raise PipelineError(f"{work / 'labels.json'}: no 'corpus' recorded; pass the corpus root with --iemocap DIR")
    corpus = Path(args.iemocap or labels["corpus"])
    all_names = select_dialogs(labels, args.dialogs, args.sessions)
    k, n = args.shard_index, args.shard_count
    pipe = pipe_name(args)
    out = work / pipe
    fileio.remove_stale_temp(out)  # temporary files of a killed run
    config = run_config(args)
    key = config_key(config)
    manifest = read_manifest(out)
    meta = dict(step="preprocess", pipe=pipe, config=config, config_key=key, code=code_version())
    manifest.update(meta)
    run = Run(
        labels=labels,
        corpus=corpus,
        all_names=all_names,
        names=all_names[k::n],
        shard=(k, n),
        out=out,
        pipe=pipe,
        key=key,
        meta=meta,
        manifest=manifest,
        part_path=out / PARTS_DIR / f"shard-{k}-of-{n}.json" if n > 1 else None,
    )
    print(
        f"step 2: {len(run.names)} dialogs of {work / 'labels.json'} (corpus {corpus}), backend {args.backend}"
        + (f", VAD {args.vad}" if args.backend == "whisperx" else "")
        + (f", shard {k}/{n} of {len(all_names)} dialogs" if n > 1 else "")
        + f" -> {out}"
    )
    return run


def dialogs_to_do(run: Run, overwrite: bool) -> list[str]:
    """This shard's dialogs not done under this config (all with --overwrite), saying how many are skipped."""
    manifest, key = run.manifest, run.key
    todo = [d for d in run.names if overwrite or not is_done(manifest, d, key, run.out)]
    stale = sum(
        1
        for d in todo
        if manifest["dialogs"].get(d, {}).get("status") == "done" and manifest["dialogs"][d].get("config") != key
    )
    print(
        f"skipping {len(run.names) - len(todo)} dialogs already done with this config"
        + (f"; redoing {stale} done with another config" if stale else "")
        + (" (--overwrite)" if overwrite else "")
    )
    return todo


def save_manifest(run: Run):
    """After every dialog: the whole manifest, or this shard's part of it."""
    if run.part_path is None:
        atomic_write_json(run.manifest_path, run.manifest)
    else:
        k, n = run.shard
        atomic_write_json(
            run.part_path,
            {
                "shard": f"{k}/{n}",
                "config_key": run.key,
                "dialogs": {d: run.manifest["dialogs"][d] for d in run.names if d in run.manifest["dialogs"]},
            },
        )


def run_dialogs(run: Run, todo: list[str], args, backend):
    """Each dialog in turn; a failure is recorded in the manifest and the run goes on."""
    for dialog in tqdm(todo, desc=f"step 2 ({run.pipe})", unit="dialog", file=sys.stdout):
        try:
            stats = run_dialog(dialog, run.labels["dialogs"][dialog], run.corpus, run.out, args, backend)
            run.manifest["dialogs"][dialog] = {"status": "done", "config": run.key, "stats": stats}
        except Exception as e:  # recorded and reported; KeyboardInterrupt still stops the run
            run.manifest["dialogs"][dialog] = {
                "status": "failed",
                "config": run.key,
                "error": f"{type(e).__name__}: {e}",
            }
            tqdm.write(f"FAILED {dialog}: {type(e).__name__}: {e}")
        save_manifest(run)
    save_manifest(run)


def merge_manifest(run: Run) -> dict:
    """Merge under a lock (the last shard to finish sees every other shard's final part) -> the summary."""
    out = run.out
    with fileio.file_lock(out / "manifest.lock"):
        if run.part_path is not None:
            run.manifest = read_manifest(out)
            run.manifest.update(run.meta)
        run.manifest["dialogs"] = dict(sorted(run.manifest["dialogs"].items()))
        run.manifest["summary"] = summary = summarise(run.manifest, run.all_names)
        atomic_write_json(run.manifest_path, run.manifest)
        if run.part_path is None and (out / PARTS_DIR).is_dir():  # merged above: an unsharded run retires them
            for part in (out / PARTS_DIR).glob("shard-*.json"):
                part.unlink()
            (out / PARTS_DIR).rmdir()
    return summary


def print_summary(run: Run, summary: dict, processed: int, seconds: float):
    """What was written, the corpus totals, the reference's gaps and the error rates measured against it."""
    out, n = run.out, run.shard[1]
    print(
        f"wrote {out / 'asr'}/*.json, {out}/{{{','.join(DIARIZATION_DIRS.values())}}}/*.rttm and "
        f"{run.manifest_path} ({processed} dialogs processed in {seconds:.1f} s"
        + (f"; summary over the {summary['dialogs_done']} dialogs all shards have done so far)" if n > 1 else ")")
    )
    print(
        f"dialogs: {summary['dialogs_done']} done, {summary['dialogs_failed']} failed; words {summary['words']}, "
        f"segments {summary['segments']}, turns {summary['turns']}, speakers per dialog "
        f"{summary['speakers_per_dialog']}, audio {summary['audio_hours'] * 60:.1f} min, "
        f"speech {summary['speech_hours'] * 60:.1f} min"
    )
    print(
        f"reference: {summary['unevaluated_utterances']} unevaluated (XX) utterances added from the transcriptions"
        + (
            f", {summary['unparsed_transcript_lines']} transcript lines not parsed (skipped)"
            if summary["unparsed_transcript_lines"]
            else ""
        )
    )
    if summary["empty_wdseg_tokens"]:
        print(
            f"reference: {summary['empty_wdseg_tokens']} .wdseg tokens that normalise to nothing (e.g. '(2)') dropped"
        )
    if summary["utterances_without_wdseg"]:
        print(
            f"reference: {summary['utterances_without_wdseg']} utterances have no .wdseg; their transcript "
            f"words were spread uniformly over the utterance"
        )
    if "wer" in summary:
        print(
            f"measured against the reference: WER {100 * summary['wer']:.2f} %"
            + (f", cpWER {100 * summary['cpwer']:.2f} %" if "cpwer" in summary else "")
            + f", words without timestamps "
            f"{100 * summary['untimed_rate']:.2f} %"
            + (
                f", DER {100 * summary['der']:.2f} % (missed {100 * summary['der_parts']['missed detection']:.2f}, "
                f"false alarm {100 * summary['der_parts']['false alarm']:.2f}, confusion "
                f"{100 * summary['der_parts']['confusion']:.2f})"
                if "der" in summary
                else ""
            )
            + (f"; exclusive turns: DER {100 * summary['der_exclusive']:.2f} %" if "der_exclusive" in summary else "")
        )
    if "cpwer" in summary:
        print(
            f"cpWER's speakers: {summary['cp_missed_speakers']} reference speakers without a hypothesis speaker, "
            f"{summary['cp_false_alarm_speakers']} hypothesis speakers without a reference one; "
            f"{summary['cp_nearest_words']} words overlap no diarization turn (given the nearest turn's speaker)"
        )
    if "languages" in summary:
        print("languages (dialogs): " + ", ".join(f"{lang} {n}" for lang, n in summary["languages"].items()))
    if "simulated" in summary:
        print("simulated errors (counts): " + ", ".join(f"{name} {v}" for name, v in summary["simulated"].items()))


def main(argv=None):
    args = parse_args(argv)
    if args.download_models:
        return step2_whisperx.download_models(args)
    if args.check:
        items = preflight(args)
        if not checklist.report_checks(items, "step 2 preflight"):
            raise SystemExit(1)
        return items

    run = plan_run(args)
    todo = dialogs_to_do(run, args.overwrite)
    backend = step2_whisperx.WhisperX(args) if args.backend == "whisperx" and todo else None
    started = time.time()
    run_dialogs(run, todo, args, backend)
    summary = merge_manifest(run)
    print_summary(run, summary, len(todo), time.time() - started)
    failed = {
        d: run.manifest["dialogs"][d]["error"]
        for d in run.names
        if run.manifest["dialogs"].get(d, {}).get("status") == "failed"
    }
    if failed:
        for d, error in failed.items():
            print(f"FAILED {d}: {error}")
        raise SystemExit(
            f"step 2: {len(failed)} of {len(run.names)} dialogs failed (listed above and in {run.manifest_path})"
        )
    return run.manifest


if __name__ == "__main__":
    cli.run_main(main)
