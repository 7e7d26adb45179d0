"""Emotion-annotated transcript of any recording: steps 2 and 3 of the pipeline, then a trained run.

    python predict.py call.wav [more.flac ...] --run WORK/runs/<run> [--out predictions]
    python predict.py call.wav --run R --asr-json call.json --rttm call.rttm     # bring your own step 2

Each recording (wav, flac or ogg; mono or stereo; any sample rate) becomes a 16 kHz mono dialog of a temporary
corpus without reference labels (read_audio, write_corpus), so nothing is scored. The pipeline's own steps then
run on it as they run in the pipeline: step 2 (`preprocess.py --backend whisperx`, or the given --asr-json and
--rttm in its place), step 3 (`align.py` with the settings the run was trained on, step3_flags, once the run's
training data is checked), and the run's best checkpoint on every segment. Written in --out, per recording:
  <name>.emotions.json  segments in time order: start, end, speaker, text, emotion, probs, step 3's flags;
                        and a summary
  <name>.emotions.rttm  one SPEAKER line per segment, label "<speaker>_<emotion>" (SPEAKER_00_ang)
  <name>.vtt            WebVTT cues "SPEAKER_00 [angry] text" (--srt: <name>.srt instead)
  <name>.timeline.png   one lane per speaker over time, segments coloured by emotion

Details, and the departures worth knowing: docs/PREDICT.md.
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
import tempfile
from pathlib import Path

import numpy as np
import torch

import utils
from common import cli, defaults, fileio, formats, modelhub, onnxrun, rundirs, step2_whisperx
from common.cli import PipelineError
from common.formats import LABELS

HERE = Path(__file__).resolve().parent
PIPE = "input"  # the step-2 folder of the temporary work directory
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
# A word and a colour per class: the paper's four, Wu et al.'s oth and xxx (common.formats.LABEL_SETS); a class of a
# corpus's own set is its own word, and takes a colour of SPARE_COLOURS (emotion_colours).
EMOTION_WORDS = {"hap": "happy", "ang": "angry", "sad": "sad", "neu": "neutral", "oth": "other", "xxx": "no agreement"}
EMOTION_COLOURS = {
    **{"hap": "#f2b134", "ang": "#d1495b", "sad": "#3b6ea5", "neu": "#a0a0a0"},
    **{"oth": "#6a994e", "xxx": "#8d6cab"},
}
SPARE_COLOURS = ("#e07a5f", "#2a9d8f", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#1f77b4", "#ff7f0e")


def emotion_colours(classes) -> dict:
    """{class: colour} for a run's classes: the known colours, then SPARE_COLOURS in turn for the others (cycled
    when a set has more classes than colours)."""
    spare = [c for c in SPARE_COLOURS if c not in EMOTION_COLOURS.values()]
    others = [lab for lab in classes if lab not in EMOTION_COLOURS]
    extra = {lab: spare[i % len(spare)] for i, lab in enumerate(others)}
    return {lab: EMOTION_COLOURS.get(lab) or extra[lab] for lab in classes}


VARIANT_RE = re.compile(r"^(?:aligned-p(?P<pause>[0-9.]+)|(?P<baseline>baseline))(?P<exclusive>-exclusive)?$")


# ---------------------------------------------------------------------------------------------
# Inputs: audio, the run, the optional step-2 files
# ---------------------------------------------------------------------------------------------


def read_audio(path) -> tuple[np.ndarray, dict]:
    """Decode any soundfile format -> (float32 mono [samples] at 16 kHz, facts about the input).

    Channels are averaged (mono stays as it is); a rate other than 16 kHz is resampled once with
    torchaudio.functional.resample (its default windowed-sinc filter)."""
    import soundfile as sf
    import torchaudio

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: audio file not found")
    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)  # [samples, channels]
    except Exception as e:
        raise PipelineError(f"{path}: cannot decode audio (expected wav, flac or ogg): {cli.one_line(str(e))}") from e
    if audio.shape[0] == 0:
        raise PipelineError(f"{path}: audio file has no samples")
    if not np.isfinite(audio).all():
        first = int(np.argmax(~np.isfinite(audio).all(axis=1)))
        raise PipelineError(
            f"{path}: NaN or infinite samples (the first at {first / sr:.3f} s); expected finite samples"
        )
    info = {"sample_rate": int(sr), "channels": int(audio.shape[1]), "seconds": audio.shape[0] / sr}
    mono = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    if sr != formats.SAMPLE_RATE:
        mono = torchaudio.functional.resample(
            torch.from_numpy(np.ascontiguousarray(mono)), sr, formats.SAMPLE_RATE
        ).numpy()
    info["resampled"] = sr != formats.SAMPLE_RATE
    return np.ascontiguousarray(mono, dtype=np.float32), info


def check_run(run_dir) -> Path:
    """The run directory holds config.json and checkpoint_best.pt (a single run, not a fold parent)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PipelineError(f"{run_dir}: run directory not found (expected WORK/runs/<run>/ written by train.py)")
    for name in ("config.json", "checkpoint_best.pt"):
        if not (run_dir / name).is_file():
            raise PipelineError(
                f"{run_dir / name}: not found; expected a run trained by train.py (config.json and "
                "checkpoint_best.pt; for a cross-validation run pass one of its fold<k>/ dirs)"
            )
    return run_dir


def step2_file(option: str, given, audio: Path, n_audio: int, suffix: str) -> Path:
    """The --asr-json / --rttm file of one recording: the file itself (one recording only), or
    DIR/<audio stem><suffix> when a folder is given."""
    given = Path(given)
    if given.is_dir():
        path = given / f"{audio.stem}{suffix}"
    elif n_audio > 1:
        raise PipelineError(
            f"{given}: {option} must be a folder holding <audio name>{suffix} per recording "
            f"when {n_audio} recordings are given"
        )
    else:
        path = given
    if not path.is_file():
        raise PipelineError(f"{path}: {option} file not found (for {audio})")
    return path


def dialog_names(paths) -> list[str]:
    """A dialog name per recording: its file stem in [A-Za-z0-9_.-], unique (a suffix _2, _3 ...)."""
    names, seen = [], set()
    for p in paths:
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(p).stem).lstrip("-.") or "audio"
        name, k = base, 1
        while name in seen:
            k += 1
            name = f"{base}_{k}"
        seen.add(name)
        names.append(name)
    return names


def relabel_rttm(src: Path, dest: Path, dialog: str, stem: str) -> None:
    """Copy an RTTM as step 2 writes it, the file field set to the dialog: the lines of the
    recording named like the audio file if there are such lines, else those of the file's only
    recording; several other recordings are an error."""
    lines = [ln.split() for ln in src.read_text(encoding="utf-8", errors="replace").splitlines()]
    recordings = sorted({f[1] for f in lines if len(f) > 1 and f[0] == "SPEAKER"})
    if stem in recordings:
        turns = formats.read_rttm(src, dialog=stem)
    elif len(recordings) <= 1:
        turns = formats.read_rttm(src)
    else:
        raise PipelineError(
            f"{src}: holds the recordings {recordings[:5]}, none named {stem!r} (the audio file's "
            "name); expected one recording, or one named like the audio file"
        )
    if not turns:
        raise PipelineError(f"{src}: no SPEAKER line; expected the speaker turns of {stem}")
    formats.write_rttm(dest, dialog, turns)


# ---------------------------------------------------------------------------------------------
# Steps 2 and 3 as the pipeline runs them
# ---------------------------------------------------------------------------------------------


def write_corpus(work: Path, recordings: list[dict]) -> None:
    """WORK/labels.json and WORK/corpus/audio/<dialog>.wav (float 16 kHz mono): one dialog per
    recording, session 1 (a file named like an IEMOCAP dialog: its name's session, as labels.json
    requires), no utterances; checked by common.formats.load_labels as steps 2 and 3 read it."""
    import soundfile as sf

    corpus = work / "corpus"
    (corpus / "audio").mkdir(parents=True, exist_ok=True)
    dialogs = {}
    for r in recordings:
        sf.write(str(corpus / "audio" / f"{r['dialog']}.wav"), r["audio"], formats.SAMPLE_RATE, subtype="FLOAT")
        session = formats.session_of(r["dialog"]) if formats.iemocap_dialog_meta(r["dialog"]) else 1
        dialogs[r["dialog"]] = {
            "session": session,
            "kind": "impro",
            "scenario": r["dialog"],
            "script": None,
            "wav": f"audio/{r['dialog']}.wav",
            "utterances": [],
        }
    labels = {
        "corpus": str(corpus.resolve()),
        "labels": list(LABELS),
        "dialogs": dialogs,
        "counts": {},
        "source": {"predict": [str(r["path"]) for r in recordings]},
    }
    fileio.atomic_write_json(work / "labels.json", labels)
    formats.load_labels(work, require=("wav",))


def step3_flags(config: dict, run_dir: Path) -> list[str]:
    """align.py flags that reproduce the run's step-3 variant: every setting of the step-3 config the run
    recorded (config.json data.step3_config, align.variant_config; each key but kind, max_pause,
    sample_rate and diarization is the align.py flag of that name). Runs trained before they recorded it:
    config.json "variant", with the tie break, long-word limit and word policy of that variant's manifest."""
    recorded = (config.get("data") or {}).get("step3_config")
    if isinstance(recorded, dict) and recorded.get("kind") in ("aligned", "baseline"):
        flags = ["--variant", recorded["kind"]]
        flags += ["--max-pause", repr(float(recorded["max_pause"]))] if recorded["kind"] == "aligned" else []
        flags += ["--diarization", str(recorded["diarization"])] if "diarization" in recorded else []
        for key, value in recorded.items():
            if key not in ("kind", "max_pause", "sample_rate", "diarization"):
                flags += ["--" + key.replace("_", "-"), repr(float(value)) if isinstance(value, float) else str(value)]
        return flags
    m = VARIANT_RE.match(str(config.get("variant")))
    if m is None:
        raise PipelineError(
            f"{run_dir / 'config.json'}: variant {config.get('variant')!r}; expected aligned-p<pause> "
            "or baseline (optionally -exclusive), the names align.py gives"
        )
    flags = ["--variant", "baseline"] if m["baseline"] else ["--variant", "aligned", "--max-pause", m["pause"]]
    if m["exclusive"]:
        flags += ["--diarization", "exclusive"]
    manifest = Path(str(config.get("work", ""))) / str(config.get("pipe")) / config["variant"] / "manifest.json"
    step3 = {}
    if manifest.is_file():
        try:
            step3 = fileio.read_json(manifest, "alignment manifest").get("config", {})
        except (PipelineError, AttributeError):
            step3 = {}
    if "tie_break" in step3:
        flags += ["--tie-break", str(step3["tie_break"])]
    if "max_word_seconds" in step3:
        flags += ["--max-word-seconds", repr(float(step3["max_word_seconds"]))]
    if "word_policy" in step3:
        flags += ["--word-policy", str(step3["word_policy"])]
    return flags


def check_run_data(run_dir: Path, config: dict, allow: bool) -> dict | None:
    """The run's data as it was trained on (common.rundirs.check_run_data: refused in one line when it changed, unless
    allow), when its work directory is on this machine; None (said) when not: a run copied elsewhere."""
    work = Path(str((config.get("data") or {}).get("work", "")))
    if config.get("data") and not (work / "labels.json").is_file():
        print(
            f"[predict] the run's training data ({work}) is not on this machine: its step-3 settings are "
            f"taken from {run_dir / 'config.json'} unchecked",
            flush=True,
        )
        return None
    check = rundirs.check_run_data(run_dir, allow=allow)
    if check["changed"]:
        print(
            f"[predict] WARNING {run_dir}: its data changed since training ({rundirs.ALLOW_CHANGED_DATA}): "
            + "; ".join(check["changed"]),
            flush=True,
        )
    return check


def run_step(script: str, args: list[str]) -> int:
    """Run a step script with this Python; its output goes to the terminal. Returns its exit status
    (0 done, 1 some dialogs failed); anything else (bad input, a bug) stops here."""
    print(f"[predict] {' '.join(shlex.quote(c) for c in ['python', script, *args])}", flush=True)
    proc = cli.start_step(script, args)
    try:
        rc = proc.wait()
    except BaseException:  # Ctrl-C: do not leave the step running
        proc.kill()
        raise
    if rc not in (0, 1):
        raise PipelineError(f"{HERE / script}: exited with status {rc} (its error is printed above)")
    return rc


def dialog_errors(manifest: Path) -> dict:
    """{dialog: error} of the dialogs a step manifest lists as failed."""
    if not manifest.is_file():
        return {}
    data = fileio.read_json(manifest, "step manifest")
    return {
        d: e.get("error", "failed")
        for d, e in data.get("dialogs", {}).items()
        if isinstance(e, dict) and e.get("status") == "failed"
    }


# ---------------------------------------------------------------------------------------------
# The model on step 3's segments
# ---------------------------------------------------------------------------------------------


def predict_segments(model, config: dict, cache_paths: list[Path], work: Path, device, batch_size: int) -> list[dict]:
    """Every segment of the step-3 caches -> [{id, dialog, start, end, speaker, text, emotion, probs}].
    The same data path as evaluate.predict_split: SegmentDataset (crop, normalisation), Collator
    with the run's tokenizer, run_dataset (fine-tuned) or cached_embeddings + classify (frozen)."""
    from transformers import AutoFeatureExtractor, AutoTokenizer

    mc = utils.ModelConfig.from_run_config(config)
    classes = formats.labels_of(config)  # the classes the run was trained on
    do_norm = config.get("do_normalize")
    if do_norm is None:
        do_norm = getattr(AutoFeatureExtractor.from_pretrained(mc.audio_model), "do_normalize", True)
    norm_segment, norm_row = utils.normalisation_places(mc.audio_padding, do_norm)
    dataset = utils.SegmentDataset(
        cache_paths, labelled_only=False, max_audio_seconds=mc.max_audio_seconds, do_normalize=norm_segment
    )
    if len(dataset) == 0:
        return []
    tokenizer = AutoTokenizer.from_pretrained(mc.text_model) if model.modality != "audio" else None
    collator = utils.Collator(tokenizer, mc.max_text_tokens, normalize_rows=norm_row)
    bf16 = bool(config.get("bf16")) and torch.device(device).type == "cuda"
    # a run: the pooled embeddings as training computed them, in the temporary work dir (a model folder, or an ONNX
    # graph, runs its extractors in full)
    frozen = config["mode"] == "frozen" and "feature_dirs" in config and not getattr(model, "is_onnx", False)
    if frozen:
        feature_dirs = {k: str(work / "features" / k) for k in config["feature_dirs"]}
        feats = utils.cached_embeddings(
            model, dataset, collator, feature_dirs, cache_paths[0].parent, batch_size, device, bf16
        )
        with torch.no_grad():
            z_t = feats["text"].to(device) if feats["text"] is not None else None
            z_a = feats["audio"].to(device) if feats["audio"] is not None else None
            logits = model.classify(z_t, z_a).float().cpu()
    else:
        logits = utils.run_dataset(model, dataset, collator, batch_size, device, bf16)
    out = []
    for seg, p in zip(dataset.segments, logits.softmax(-1)):
        out.append(
            {
                "id": seg["id"],
                "dialog": seg["dialog"],
                "start": seg["start"],
                "end": seg["end"],
                "speaker": seg["speaker"],
                "text": seg["text"],
                "emotion": classes[int(p.argmax())],
                "probs": {lab: float(v) for lab, v in zip(classes, p)},
            }
        )
    return out


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------


def emotion_shares(segments: list[dict], classes=LABELS) -> dict:
    """{class: share of the segments' total duration} over the run's classes (segments of zero length count one
    sample)."""
    time = {lab: 0.0 for lab in classes}
    for s in segments:
        time[s["emotion"]] += max(s["end"] - s["start"], 1.0 / formats.SAMPLE_RATE)
    total = sum(time.values())
    return {lab: (t / total if total else 0.0) for lab, t in time.items()}


def rttm_text(name: str, segments: list[dict]) -> str:
    """One SPEAKER line per segment, label <speaker>_<emotion>; zero-length segments are left out."""
    return "".join(
        f"SPEAKER {name} 1 {s['start']:.3f} {s['end'] - s['start']:.3f} <NA> <NA> "
        f"{s['speaker']}_{s['emotion']} <NA> <NA>\n"
        for s in segments
        if round(s["end"] - s["start"], 3) > 0
    )


def timestamp(t: float, sep: str = ".") -> str:
    """Seconds -> HH:MM:SS.mmm (WebVTT) or HH:MM:SS,mmm (SRT, sep=",")."""
    ms = int(round(t * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def subtitles(segments: list[dict], srt: bool = False) -> str:
    """WebVTT (or SRT) cues "SPEAKER_00 [angry] text", in time order; a cue lasts at least 1 ms."""
    parts = [] if srt else ["WEBVTT\n\n"]
    for n, s in enumerate(segments, 1):
        start = round(s["start"], 3)
        end = max(round(s["end"], 3), start + 0.001)
        text = " ".join(s["text"].split())
        if not srt:  # WebVTT cue text: &, < and > are markup
            text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        sep = "," if srt else "."
        parts.append(
            f"{n}\n{timestamp(start, sep)} --> {timestamp(end, sep)}\n"
            f"{s['speaker']} [{EMOTION_WORDS.get(s['emotion'], s['emotion'])}] {text}".rstrip()
            + "\n\n"
        )
    return "".join(parts)


def elide(text: str, max_chars: int) -> str:
    """The words that fit in max_chars, then an ellipsis; "" when not even one short word fits."""
    if len(text) <= max_chars:
        return text
    if max_chars < 4:
        return ""
    cut = text[: max_chars - 1]
    cut = cut[: cut.rfind(" ")] if " " in cut else cut
    return cut.rstrip() + "…"


def timeline_lanes(segments: list[dict]) -> list[str]:
    """The timeline's lanes, top to bottom: one per speaker of the segments, any number, in name order."""
    return sorted({s["speaker"] for s in segments}) or ["(no speech)"]


def plot_timeline(segments: list[dict], duration: float, path: Path, title: str, classes=LABELS) -> None:
    """One row per minute of audio (at most 12 rows: longer recordings get longer rows), one lane
    per speaker in each row, each segment a bar coloured by its emotion (opacity: its probability)
    with as many of its words as fit; a legend of the emotions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    speakers = timeline_lanes(segments)
    row_s = (
        60.0 * max(1, math.ceil(duration / 60.0 / 12)) if duration > 60 else max(10.0, math.ceil(duration / 10) * 10)
    )
    n_rows = max(1, math.ceil(duration / row_s))
    width_in, dpi = 16.0, 110
    fig, axes = plt.subplots(
        n_rows, 1, figsize=(width_in, 0.95 + n_rows * (0.35 + 0.45 * len(speakers))), dpi=dpi, squeeze=False
    )
    px_per_s = (width_in * 0.91 * dpi) / row_s
    char_px = 7 * 0.5 * dpi / 72  # a 7-point character is about half an em wide
    lane, colours = {spk: i for i, spk in enumerate(speakers)}, emotion_colours(classes)
    for r, ax in enumerate(axes[:, 0]):
        t0, t1 = r * row_s, (r + 1) * row_s
        for s in segments:
            if s["end"] < t0 or s["start"] > t1:
                continue
            a, b = max(s["start"], t0), min(max(s["end"], s["start"] + 0.02), t1)
            y = len(speakers) - 1 - lane[s["speaker"]]
            ax.barh(
                y,
                b - a,
                left=a,
                height=0.8,
                color=colours[s["emotion"]],
                alpha=0.45 + 0.55 * s["probs"][s["emotion"]],
                edgecolor="white",
                linewidth=0.5,
            )
            label = elide(" ".join(s["text"].split()), int((b - a) * px_per_s / char_px) - 1)
            if label:
                ax.text(a + 0.1 * (b - a > 0.3), y, label, va="center", ha="left", fontsize=7, clip_on=True)
        ax.set_xlim(t0, t1)
        ax.set_ylim(-0.6, len(speakers) - 0.4)
        ax.set_yticks(range(len(speakers)), list(reversed(speakers)), fontsize=8)
        ticks = np.arange(t0, t1 + 1e-9, 10.0 if row_s <= 120 else row_s / 12)
        ax.set_xticks(ticks, [f"{int(t // 60)}:{int(t % 60):02d}" for t in ticks], fontsize=7)
        ax.grid(axis="x", alpha=0.3)
        if t1 > duration:
            ax.axvspan(duration, t1, color="#eeeeee", zorder=0)
    handles = [Patch(color=colours[lab], label=EMOTION_WORDS.get(lab, lab)) for lab in classes]
    fig.legend(handles=handles, loc="upper right", ncol=len(classes), fontsize=8, frameon=False)
    fig.suptitle(title, x=0.01, ha="left", fontsize=9)
    axes[-1, 0].set_xlabel("time (min:s); bar opacity = the class probability", fontsize=8)
    height = fig.get_figheight()
    fig.subplots_adjust(
        left=0.08, right=0.99, top=1 - 0.45 / height, bottom=0.5 / height, hspace=0.35 / (0.45 * len(speakers))
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def write_outputs(rec: dict, segments: list[dict], out: Path, run_dir: Path, config: dict, srt: bool) -> dict:
    """The four files of one recording; returns the JSON written."""
    name, duration = rec["name"], rec["duration"]
    classes = formats.labels_of(config)  # the classes the run was trained on
    shares = emotion_shares(segments, classes)
    speakers = sorted({s["speaker"] for s in segments})
    result = {
        "audio": str(rec["path"]),
        "name": name,
        "duration": round(duration, 3),
        "input": rec["info"],
        "run": str(run_dir),
        **({"data_check": rec["data_check"]} if rec.get("data_check") else {}),
        "model": {
            k: {**config, **config.get("model", {})}.get(k)
            for k in ("mode", "modality", "fusion", "pipe", "variant", "seed")
        },
        "step2": rec["step2"],
        "labels": list(classes),
        "speakers": speakers,
        "summary": {
            "segments": len(segments),
            "speakers": len(speakers),
            "emotion_shares_by_time": shares,
            "retimed_words": sum(s["flags"].get("retimed_words", 0) for s in segments),
            "nearest_speaker_words": sum(s["flags"].get("nearest_speaker_words", 0) for s in segments),
        },
        "segments": segments,
    }
    out.mkdir(parents=True, exist_ok=True)
    fileio.atomic_write_json(out / f"{name}.emotions.json", result)
    fileio.atomic_write_text(out / f"{name}.emotions.rttm", rttm_text(name, segments))
    fileio.atomic_write_text(out / f"{name}.{'srt' if srt else 'vtt'}", subtitles(segments, srt))
    plot_timeline(
        segments,
        duration,
        out / f"{name}.timeline.png",
        f"{rec['path'].name}: {duration:.1f} s, {len(speakers)} speakers, {len(segments)} segments "
        f"(run {run_dir.name})",
        classes,
    )
    return result


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def add_step2_flags(p: argparse.ArgumentParser) -> None:
    """The flags of step 2, run when no --asr-json is given."""
    w = p.add_argument_group("step 2 (preprocess.py --backend whisperx), when no --asr-json is given")
    w.add_argument("--asr-model", default=defaults.ASR_MODEL, help="(default: %(default)s, the paper's)")
    w.add_argument("--align-model", default=None, help="(default: WhisperX's for the language)")
    w.add_argument("--diar-model", default=defaults.DIAR_MODEL, help="(default: %(default)s)")
    w.add_argument("--model-dir", default=None, help="local mirror of hub models (preprocess.py --model-dir)")
    step2_whisperx.add_speaker_flags(w, "auto (pyannote estimates each recording's)")
    w.add_argument(
        "--language",
        default=defaults.PREDICT_LANGUAGE,
        metavar="CODE",
        help="Whisper language code of the recordings, or auto (default: %(default)s: detected per recording, "
        "as a user of an arbitrary recording expects; the paper's pipeline is en)",
    )
    w.add_argument(
        "--step2-args",
        default="",
        help='more preprocess.py flags, one quoted string (e.g. "--cache-only --beam-size 1")',
    )


def check_args(p: argparse.ArgumentParser, args) -> None:
    """What argparse cannot check alone -> p.error."""
    if (args.asr_json is None) != (args.rttm is None):
        p.error("--asr-json and --rttm go together (a step-2 output is both); give both or neither")
    if args.batch_size is not None and args.batch_size < 1:
        p.error(f"--batch-size {args.batch_size}: expected 1 or more")
    try:
        step2_whisperx.speaker_kwargs(args, step2_whisperx.AUTO_SPEAKERS)
    except ValueError as e:
        p.error(str(e))
    if any(
        a.split("=")[0] in ("--num-speakers", "--min-speakers", "--max-speakers") for a in shlex.split(args.step2_args)
    ):
        p.error(
            "give the speaker count as predict.py's --num-speakers/--min-speakers/--max-speakers, not in --step2-args"
        )
    if args.asr_json is not None and any(getattr(args, k) is not None for k in step2_whisperx.SPEAKER_FLAGS):
        p.error(
            "--num-speakers/--min-speakers/--max-speakers set step 2's pyannote call; with --asr-json/--rttm none runs"
        )


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("audio", nargs="+", help="recordings: wav, flac or ogg, mono or stereo, any sample rate")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="a trained run: WORK/runs/<run>/ (config.json, checkpoint_best.pt)")
    source.add_argument(
        "--model",
        help="a model folder written by export.py (model.safetensors, config.json), or its hub name org/name "
        "(downloaded as the extractors are; --model-dir copies and HF_HUB_OFFLINE are honoured)",
    )
    p.add_argument(
        "--asr-json",
        default=None,
        help="WhisperX-shaped ASR result (docs/FORMATS.md) instead of running step 2: a file (one "
        "recording) or a folder of <audio name>.json; needs --rttm",
    )
    p.add_argument(
        "--rttm",
        default=None,
        help="speaker turns (RTTM) to go with --asr-json: a file or a folder of <audio name>.rttm",
    )
    p.add_argument("--out", default="predictions", help="output folder (default: %(default)s)")
    p.add_argument("--srt", action="store_true", help="write <name>.srt instead of <name>.vtt")
    p.add_argument(
        rundirs.ALLOW_CHANGED_DATA,
        action="store_true",
        help="use the run even when its training data (labels.json, step-3 config or cache files) changed "
        "since it was trained (refused otherwise); recorded in <name>.emotions.json",
    )
    p.add_argument("--device", default="auto", help="auto (cuda if available), cuda or cpu; for steps 2 and 4")
    p.add_argument(
        "--onnx",
        action="store_true",
        help="run the model with onnxruntime on the CPU (a model folder: its model.onnx, from export.py --onnx; "
        "a run: RUN/model.onnx if present, else exported now); docs/PREDICT.md, ONNX",
    )
    p.add_argument("--batch-size", type=int, default=None, help="segments per batch (default: the run's)")
    p.add_argument(
        "--keep-work",
        default=None,
        metavar="DIR",
        help="use DIR as the work directory and keep it (labels.json, step 2 and 3 outputs); "
        "default: a temporary one, removed",
    )
    add_step2_flags(p)
    args = p.parse_args(argv)
    check_args(p, args)
    return args


def plan_recordings(args, data_check: dict | None) -> list[dict]:
    """One record per audio file: its path, dialog name and step-2 source (the given files, checked, or WhisperX)."""
    paths = [Path(a) for a in args.audio]
    recordings = []
    for path, dialog in zip(paths, dialog_names(paths)):
        rec = {"path": path, "dialog": dialog, "name": dialog, "data_check": data_check}
        if args.asr_json is not None:
            rec["asr_json"] = step2_file("--asr-json", args.asr_json, path, len(paths), ".json")
            rec["rttm"] = step2_file("--rttm", args.rttm, path, len(paths), ".rttm")
            rec["step2"] = {"asr_json": str(rec["asr_json"]), "rttm": str(rec["rttm"])}
        else:
            rec["step2"] = {
                "backend": "whisperx",
                "asr_model": args.asr_model,
                "diar_model": args.diar_model,
                "language": args.language,
            }
            rec["step2"].update(
                step2_whisperx.speaker_config(step2_whisperx.speaker_kwargs(args, step2_whisperx.AUTO_SPEAKERS))
            )
        recordings.append(rec)
    return recordings


def load_recordings(recordings: list[dict]) -> None:
    """Each recording's audio (read_audio: mono 16 kHz), duration and input facts, said one line each."""
    for n, rec in enumerate(recordings, 1):
        rec["audio"], rec["info"] = read_audio(rec["path"])
        rec["duration"] = len(rec["audio"]) / formats.SAMPLE_RATE
        i = rec["info"]
        print(
            f"[predict] ({n}/{len(recordings)}) {rec['path']}: {i['seconds']:.1f} s, {i['channels']} channel(s), "
            f"{i['sample_rate']} Hz" + (" -> mono 16 kHz" if i["resampled"] or i["channels"] > 1 else ""),
            flush=True,
        )


def model_folder_config(model_dir) -> dict:
    """An export.py model folder's config.json as the run config the steps here read: its model section (the
    extractors: the folder's subfolders), classes, normalisation, step-3 settings and training facts."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise PipelineError(f"{model_dir}: no config.json; expected a model folder written by export.py")
    exported = fileio.read_json(model_dir / "config.json", "model folder config")
    mc = utils.model_dir_config(model_dir, exported)
    training = exported.get("training") or {}
    return {
        **{k: training.get(k) for k in ("mode", "pipe", "seed", "batch_size", "bf16")},
        "variant": exported["variant"],
        "model": mc.to_dict(),
        "labels": formats.labels_of(exported),
        "do_normalize": exported["preprocessing"]["do_normalize"],
        "data": {"step3_config": exported["step3"]},
    }


def check_inputs(args) -> tuple[Path, dict, list[str], list[dict]]:
    """Everything that can be wrong with the inputs, found before any model is loaded -> (run dir or model folder,
    its config, the align.py flags of its step-3 variant, the recordings with their audio)."""
    if args.model is not None:
        folder = modelhub.resolve_model_dir(args.model, args.model_dir)  # a folder, a --model-dir copy or the hub
        config = model_folder_config(folder)
        align_flags = step3_flags(config, folder)
        recordings = plan_recordings(args, None)
        load_recordings(recordings)
        return folder, config, align_flags, recordings
    run_dir = check_run(args.run)
    config = fileio.read_json(run_dir / "config.json", "run config")
    if "folds" in config:
        raise PipelineError(f"{run_dir}: a cross-validation run; pass one of its fold dirs {config['folds']}")
    data_check = check_run_data(run_dir, config, args.allow_changed_data)
    align_flags = step3_flags(config, run_dir)
    recordings = plan_recordings(args, data_check)
    load_recordings(recordings)
    return run_dir, config, align_flags, recordings


def open_work(args, tmp: str) -> Path:
    """The work directory (--keep-work, or the temporary one), rid of the temporary files of a killed run
    (in --keep-work, and in --out where it writes, not below)."""
    work = Path(args.keep_work) if args.keep_work else Path(tmp)
    work.mkdir(parents=True, exist_ok=True)
    fileio.remove_stale_temp(work) + fileio.remove_stale_temp(Path(args.out), recursive=False)
    return work


def place_step2_files(pipe_dir: Path, recordings: list[dict], align_flags: list[str]) -> None:
    """The given --asr-json / --rttm files where step 2 would write them (the RTTM's file field: the dialog)."""
    for rec in recordings:
        dest = pipe_dir / "asr" / f"{rec['dialog']}.json"
        dest.parent.mkdir(parents=True, exist_ok=True)
        fileio.atomic_write_bytes(dest, rec["asr_json"].read_bytes())
        rttm_dir = "diarization_exclusive" if "exclusive" in align_flags else "diarization"
        relabel_rttm(rec["rttm"], pipe_dir / rttm_dir / f"{rec['dialog']}.rttm", rec["dialog"], rec["path"].stem)


def step2(args, work: Path, recordings: list[dict], align_flags: list[str]) -> dict:
    """Step 2's outputs in WORK/input: the given files placed, or preprocess.py --backend whisperx run
    -> {dialog: error} of the dialogs it failed."""
    pipe_dir = work / PIPE
    if args.asr_json is not None:
        place_step2_files(pipe_dir, recordings, align_flags)
        return {}
    argv = [
        "--work",
        str(work),
        "--backend",
        "whisperx",
        "--name",
        PIPE,
        "--device",
        args.device,
        "--asr-model",
        args.asr_model,
        "--diar-model",
        args.diar_model,
        *step2_whisperx.speaker_argv(args),
        "--language",
        args.language,
    ]
    argv += (
        (["--align-model", args.align_model] if args.align_model else [])
        + (["--model-dir", args.model_dir] if args.model_dir else [])
        + shlex.split(args.step2_args)
    )
    if run_step("preprocess.py", argv):
        return dialog_errors(pipe_dir / "manifest.json")
    return {}


def step3(work: Path, todo: list[dict], align_flags: list[str], config: dict) -> dict:
    """align.py on the recordings step 2 did not fail -> {dialog: error} of the dialogs it failed."""
    if todo and run_step(
        "align.py", ["--work", str(work), "--pipe", PIPE, *align_flags, "--dialogs", *[r["dialog"] for r in todo]]
    ):
        return dialog_errors(work / PIPE / config["variant"] / "manifest.json")
    return {}


def name_given_files(pipe_dir: Path, recordings: list[dict], failed: dict) -> None:
    """Errors name the user's files, not their copies in the work dir."""
    for rec in recordings:
        if rec["dialog"] in failed and "asr_json" in rec:
            for copy, given in (
                (pipe_dir / "asr" / f"{rec['dialog']}.json", rec["asr_json"]),
                (pipe_dir / "diarization" / f"{rec['dialog']}.rttm", rec["rttm"]),
                (pipe_dir / "diarization_exclusive" / f"{rec['dialog']}.rttm", rec["rttm"]),
            ):
                failed[rec["dialog"]] = failed[rec["dialog"]].replace(str(copy), f"{given} (as {rec['dialog']})")


def recording_segments(
    model, config: dict, variant_dir: Path, dialog: str, work: Path, device, batch_size: int
) -> list[dict]:
    """One recording's segments, classified, with step 3's word counts and flags, in time order. One
    recording at a time: its batches (and so its numbers) do not depend on the other files."""
    predicted = predict_segments(model, config, [variant_dir / "cache" / f"{dialog}.pt"], work, device, batch_size)
    step3 = fileio.read_json(variant_dir / "segments" / f"{dialog}.json", "step-3 segments")
    by_id = {s["id"]: s for s in step3["segments"]}
    segments = []
    for s in predicted:
        ref = by_id.get(s["id"], {})
        segments.append(
            {
                "id": s["id"],
                "start": s["start"],
                "end": s["end"],
                "speaker": s["speaker"],
                "text": s["text"],
                "n_words": ref.get("n_words"),
                "emotion": s["emotion"],
                "probs": s["probs"],
                "flags": ref.get("flags", {}),
            }
        )
    segments.sort(key=lambda s: (s["start"], s["end"], s["speaker"], s["id"]))
    return segments


def load_model(args, run_dir: Path, device) -> tuple:
    """(model, run config, device it runs on): the run (or export.py's model folder) in PyTorch, or with --onnx its
    ONNX graph in onnxruntime on the CPU (DIR/model.onnx; RUN/model.onnx, or the run exported now:
    common.onnxrun.run_onnx_for), which takes the same batches."""
    if args.model is not None:  # a model folder (export.py): its weights, or with --onnx its model.onnx
        config = model_folder_config(run_dir)
        if args.onnx:
            if not (run_dir / "model.onnx").is_file():
                raise PipelineError(f"{run_dir}: no model.onnx; export the run with `python export.py RUN OUT --onnx`")
            print(f"[predict] loading {run_dir / 'model.onnx'} in onnxruntime (CPU)", flush=True)
            return onnxrun.OnnxModel(run_dir / "model.onnx"), config, torch.device("cpu")
        print(f"[predict] loading the model {run_dir} on {device}", flush=True)
        return utils.load_model_dir(run_dir, device)[0], config, device
    if not args.onnx:
        print(f"[predict] loading the run {run_dir} on {device}", flush=True)
        return (*utils.load_run(run_dir, device), device)
    config = fileio.read_json(run_dir / "config.json", "run config")
    model = onnxrun.run_onnx_for(run_dir, lambda: utils.load_run(run_dir, "cpu")[0], formats.labels_of(config))
    return model, config, torch.device("cpu")


def predict_recordings(args, run_dir: Path, device, work: Path, todo: list[dict]) -> dict:
    """The run's model on each recording's step-3 segments -> {name: emotions.json}, its four files written."""
    model, config, device = load_model(args, run_dir, device)
    variant_dir = work / PIPE / config["variant"]
    results = {}
    for rec in todo:
        segments = recording_segments(
            model, config, variant_dir, rec["dialog"], work, device, args.batch_size or config["batch_size"]
        )
        if rec["step2"].get("backend") == "whisperx":  # the language step 2 decoded in (--language auto: detected)
            asr = fileio.read_json(work / PIPE / "asr" / f"{rec['dialog']}.json", "step-2 ASR result")
            rec["step2"]["language_used"] = asr.get("language")
        result = write_outputs(rec, segments, Path(args.out), run_dir, config, args.srt)
        results[rec["name"]] = result
        shares = result["summary"]["emotion_shares_by_time"]
        print(
            f"[predict] {rec['name']}: {rec['duration']:.1f} s, {result['summary']['speakers']} speakers, "
            f"{len(segments)} segments; emotions by speech time: "
            + " ".join(f"{lab} {100 * shares[lab]:.0f}%" for lab in shares)
            + f" -> {Path(args.out) / rec['name']}.{{emotions.json,emotions.rttm,{'srt' if args.srt else 'vtt'},"
            f"timeline.png}}",
            flush=True,
        )
    return results


def report_failures(failed: dict, recordings: list[dict]) -> None:
    """One FAILED line per failed recording, then exit status 1 (the others were written)."""
    if failed:
        by_dialog = {r["dialog"]: r["path"] for r in recordings}
        for d, message in failed.items():
            print(f"FAILED {by_dialog.get(d, d)}: {message}")
        raise SystemExit(
            f"predict: {len(failed)} of {len(recordings)} recordings failed (listed above); the others were written"
        )


def main(argv=None) -> dict:
    args = parse_args(argv)
    run_dir, config, align_flags, recordings = check_inputs(args)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    torch.set_flush_denormal(True)
    with tempfile.TemporaryDirectory(prefix="predict-") as tmp:
        work = open_work(args, tmp)
        write_corpus(work, recordings)
        failed = step2(args, work, recordings, align_flags)
        todo = [r for r in recordings if r["dialog"] not in failed]
        failed |= step3(work, todo, align_flags, config)
        todo = [r for r in todo if r["dialog"] not in failed]
        name_given_files(work / PIPE, recordings, failed)
        results = predict_recordings(args, run_dir, device, work, todo) if todo else {}
    report_failures(failed, recordings)
    return results


def annotate(audio, model=None, run=None, **options):
    """What predict.py writes in <name>.emotions.json, in Python: one dict for one recording (a path), a list in
    order for several (the models loaded once). model: an export.py folder, or run: a run dir. options: predict.py's
    flags by their names (asr_json="call.json", rttm="call.rttm", num_speakers=2, srt=True, ...); out: where the
    files go (default: a temporary folder, removed)."""
    paths = [audio] if isinstance(audio, (str, Path)) else list(audio)
    argv = [str(p) for p in paths] + (["--model", str(model)] if model is not None else [])
    argv += ["--run", str(run)] if run is not None else []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else ([] if value in (None, False) else [flag, str(value)])
    with tempfile.TemporaryDirectory(prefix="annotate-") as tmp:
        results = main(argv + ([] if "out" in options else ["--out", tmp]))
    found = [results[name] for name in dialog_names(paths)]
    return found[0] if isinstance(audio, (str, Path)) else found


if __name__ == "__main__":
    cli.run_main(main)
