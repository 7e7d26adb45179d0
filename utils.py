"""Shared definitions for the SER-with-alignment pipeline.

Two parts, read in order:
  1. Small shared helpers: the label map, atomic file writing, the loaders for labels.json,
     RTTM files, audio and .pt files. Every step uses these; none redefines them.
  2. The model of the paper (Section III-B, Fig. 1): text and audio embedders, bidirectional
     cross-attention with forget gates, the Transformer fusion layer and the linear classifier.

Paper: Wang, Lee, Chen, "Enhancing Speech Emotion Recognition Leveraging Aligning Timestamps
of ASR Transcripts and Speaker Diarization", IALP 2025 (arXiv 2507.19356).
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import tempfile
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------------------------
# 1. Shared helpers
# ---------------------------------------------------------------------------------------------

SAMPLE_RATE = 16000  # IEMOCAP audio, wav2vec 2.0 and WhisperX all use 16 kHz

# The 4-class task of the paper (Section IV-A), in the order of its Table II.
LABELS = ("hap", "ang", "sad", "neu")
LABEL_NAMES = {"hap": "happy (+excited)", "ang": "angry", "sad": "sad", "neu": "neutral"}
LABEL_INDEX = {name: i for i, name in enumerate(LABELS)}
# IEMOCAP emotion codes -> 4-class label. "exc" (excited) is merged into "hap", as is standard.
# Every other code (fru, sur, fea, dis, oth, xxx) has no 4-class label.
CODE_TO_LABEL = {"hap": "hap", "exc": "hap", "ang": "ang", "sad": "sad", "neu": "neu"}
IEMOCAP_CODES = ("neu", "hap", "exc", "sad", "ang", "fru", "sur", "fea", "dis", "oth", "xxx")


class PipelineError(Exception):
    """Bad input: the message names the file (and line) and what was expected."""


def session_of(dialog: str) -> int:
    """'Ses03M_impro05a' -> 3."""
    if not (dialog.startswith("Ses") and dialog[3:5].isdigit()):
        raise PipelineError(f"not an IEMOCAP dialog or utterance id: {dialog!r}")
    return int(dialog[3:5])


def atomic_write_bytes(path, data: bytes) -> None:
    """Write data to path via a temp file in the same folder and a rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj, indent=1) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def read_json(path, what: str = "JSON file"):
    """Load a JSON file, failing with a message that names the file."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: {what} not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PipelineError(f"{path}: corrupt {what}: {e}") from e


def atomic_torch_save(obj, path) -> None:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_pt(path, what: str = ".pt file"):
    """torch.load with weights_only=True (no pickled code runs), with errors naming the file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt zip, truncated file, unpickling refused
        raise PipelineError(f"{path}: corrupt or unreadable {what}: {type(e).__name__}: {e}") from e


def load_labels(work) -> dict:
    """Read WORK/labels.json (written by step 1, iemo_lab_with_timestamps.py)."""
    path = Path(work) / "labels.json"
    if not path.is_file():
        raise PipelineError(f"{path}: not found; run step 1 first: python iemo_lab_with_timestamps.py --work {work}")
    data = read_json(path, "labels file")
    if "dialogs" not in data:
        raise PipelineError(f"{path}: no 'dialogs' key; not a labels.json written by step 1")
    return data


def read_rttm(path) -> list[tuple[float, float, str]]:
    """Read an RTTM file -> [(start, end, speaker)] sorted by start. Errors name file:line."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: RTTM file not found")
    turns = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if fields[0] != "SPEAKER" or len(fields) < 8:
                raise PipelineError(f"{path}:{n}: expected 'SPEAKER <file> <chan> <start> <dur> <NA> <NA> <label> ...', got {line.strip()!r}")
            try:
                start, dur = float(fields[3]), float(fields[4])
            except ValueError:
                raise PipelineError(f"{path}:{n}: start and duration must be numbers, got {fields[3]!r} {fields[4]!r}") from None
            if not (start >= 0 and dur >= 0):
                raise PipelineError(f"{path}:{n}: negative start or duration in {line.strip()!r}")
            turns.append((start, start + dur, fields[7]))
    turns.sort()
    return turns


def write_rttm(path, dialog: str, turns) -> None:
    """Write [(start, end, speaker)] as RTTM, atomically."""
    lines = [f"SPEAKER {dialog} 1 {s:.3f} {e - s:.3f} <NA> <NA> {spk} <NA> <NA>\n"
             for s, e, spk in sorted(turns) if e > s]
    atomic_write_text(path, "".join(lines))


def load_audio(path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a wav file with soundfile -> float32 mono [samples] in [-1, 1].

    Stereo files (IEMOCAP's dialog wavs) are mixed down by averaging the channels, so both
    actors are heard (each channel favours one actor's microphone). No resampling: a file at
    another rate is an error, since every IEMOCAP wav is 16 kHz.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: audio file not found")
    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        raise PipelineError(f"{path}: cannot decode audio: {e}") from e
    if sr != sample_rate:
        raise PipelineError(f"{path}: sample rate {sr} Hz, expected {sample_rate} Hz")
    if audio.shape[0] == 0:
        raise PipelineError(f"{path}: audio file has no samples")
    return audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def code_version() -> dict:
    """The git commit of this code and whether the tree has uncommitted changes."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    return {"commit": commit or "unknown", "dirty": dirty}


def overlap(a_start: float, a_end: float, b_start: float, b_end: float) -> float:
    """Length of the intersection of two intervals (0 if disjoint)."""
    return max(0.0, min(a_end, b_end) - max(a_start, b_start))


# ---------------------------------------------------------------------------------------------
# 2. The model (paper Section III-B, Fig. 1)
# ---------------------------------------------------------------------------------------------
