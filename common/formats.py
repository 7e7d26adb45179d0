"""The formats that cross between steps, each read and checked in one place, in the order of
docs/FORMATS.md: the label set and labels.json, IEMOCAP's transcriptions and .wdseg files, RTTM, wavs, the step-3
caches. A reader raises cli.PipelineError naming the file (and line) and what was expected."""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from common import cli, fileio

SAMPLE_RATE = 16000  # IEMOCAP audio, wav2vec 2.0 and WhisperX all use 16 kHz

# The label sets (step 1's --label-set), each: its classes in order (the classifier's outputs, the rows of every
# confusion matrix and table), IEMOCAP's emotion codes -> class (a code not in the map has no label: null), and
# each class's name in tables. labels.json's "labels" lists the set's classes; "label_set" names a set other than
# the default (absent: iemocap4, so the paper's labels.json is unchanged).
#   iemocap4  the paper's 4-class task (Section IV-A), in the order of its Table II: "exc" (excited) merged into
#             "hap", as is standard; fru, sur, fea, dis, oth and xxx have no label (5,531 of 10,039 utterances).
#   wu6       Wu, Zhang & Woodland's six classes (W-Wu/sTEER data_prep/iemo_lab_AER-cat.py, in the order of its
#             data/label_encoder_emo.txt): exc merged into hap; fru, sur, fea, dis and oth into "oth"; "xxx" (no
#             majority agreement) a class of its own: all 10,039 labelled utterances.
LABEL_SETS = {
    "iemocap4": {
        "labels": ("hap", "ang", "sad", "neu"),
        "codes": {"hap": "hap", "exc": "hap", "ang": "ang", "sad": "sad", "neu": "neu"},
        "names": {"hap": "happy (+excited)", "ang": "angry", "sad": "sad", "neu": "neutral"},
    },
    "wu6": {
        "labels": ("hap", "sad", "ang", "neu", "oth", "xxx"),
        "codes": {
            "hap": "hap",
            "exc": "hap",
            "sad": "sad",
            "ang": "ang",
            "neu": "neu",
            **{code: "oth" for code in ("fru", "sur", "fea", "dis", "oth")},
            "xxx": "xxx",
        },
        "names": {
            "hap": "happy (+excited)",
            "sad": "sad",
            "ang": "angry",
            "neu": "neutral",
            "oth": "other (fru, sur, fea, dis, oth)",
            "xxx": "no agreement (xxx)",
        },
    },
}
DEFAULT_LABEL_SET = "iemocap4"  # the paper's
# The default set's classes, index, names and code map (what a labels.json without "labels" means).
LABELS = LABEL_SETS[DEFAULT_LABEL_SET]["labels"]
LABEL_NAMES = LABEL_SETS[DEFAULT_LABEL_SET]["names"]
LABEL_INDEX = {name: i for i, name in enumerate(LABELS)}
CODE_TO_LABEL = LABEL_SETS[DEFAULT_LABEL_SET]["codes"]
IEMOCAP_CODES = ("neu", "hap", "exc", "sad", "ang", "fru", "sur", "fea", "dis", "oth", "xxx")


def label_set(name: str) -> dict:
    """The label set called name (LABEL_SETS) -> {"labels", "codes", "names"}; an unknown name is an error."""
    if name not in LABEL_SETS:
        raise cli.PipelineError(f"unknown label set {name!r}; known: {', '.join(LABEL_SETS)}")
    return LABEL_SETS[name]


def labels_of(data: dict) -> tuple:
    """The classes, in order, of a labels.json (its "labels"; absent: the default set's) or of a run config."""
    return tuple(data.get("labels", LABELS))


def label_set_name(labels) -> str | None:
    """The name of the set whose classes are exactly labels, in order; None for a set of the caller's own."""
    return next((name for name, s in LABEL_SETS.items() if tuple(s["labels"]) == tuple(labels)), None)


def label_names(labels) -> dict:
    """Each class's name in tables: the known set's name for it, else the class itself (a CSV corpus's own)."""
    known = {}
    for s in reversed(list(LABEL_SETS.values())):  # the default set's names win where sets share a class
        known.update(s["names"])
    return {lab: known.get(lab, lab) for lab in labels}


def session_of(dialog: str) -> int:
    """'Ses03M_impro05a' -> 3."""
    if not (dialog.startswith("Ses") and dialog[3:5].isdigit()):
        raise cli.PipelineError(f"not an IEMOCAP dialog or utterance id: {dialog!r}")
    return int(dialog[3:5])


# IEMOCAP's dialog names: "Ses01F_impro01", "Ses03M_impro05a", "Ses01F_script01_1", "Ses05M_script01_1b".
IEMOCAP_DIALOG_RE = re.compile(r"^Ses(\d\d)[FM]_(?:(impro)\d\d[a-z]?|(script)(\d\d)_\d[a-z]?)$")


def iemocap_dialog_meta(dialog: str) -> dict | None:
    """'Ses05M_script01_1b' -> {"kind": "script", "scenario": "script01_1b", "script": "script01"};
    None for a name that is not IEMOCAP's."""
    m = IEMOCAP_DIALOG_RE.match(dialog)
    if m is None:
        return None
    kind = m.group(2) or m.group(3)
    return {
        "kind": kind,
        "scenario": dialog.split("_", 1)[1],
        "script": f"script{m.group(4)}" if kind == "script" else None,
    }


def wav_seconds(path, where: str | None = None) -> float:
    """Length of a dialog wav from its header; it must exist, be complete, decode and be 16 kHz with
    samples (what steps 2-3 read). Errors name `where` (default: the file)."""
    import soundfile as sf

    path = Path(path)
    where = where or str(path)
    if not path.is_file():
        raise cli.PipelineError(f"{where}: audio file {path} not found")
    check_wav_complete(path)
    try:
        info = sf.info(str(path))
    except Exception as e:
        raise cli.PipelineError(f"{where}: cannot decode audio file {path}: {cli.one_line(str(e))}") from e
    if info.samplerate != SAMPLE_RATE or info.frames == 0:
        raise cli.PipelineError(
            f"{where}: {path}: {info.samplerate} Hz, {info.frames} frames; expected {SAMPLE_RATE} Hz "
            "audio with samples (resample it first)"
        )
    return info.frames / info.samplerate


def load_labels(work, require=()) -> dict:
    """Read WORK/labels.json (written by step 1, iemo_lab_with_timestamps.py), its shape checked
    (check_labels) so that no step meets a missing key or a wrong type later. `require`: dialog
    keys this step needs besides "utterances" (steps 2 and 3: "wav")."""
    path = Path(work) / "labels.json"
    if not path.is_file():
        raise cli.PipelineError(
            f"{path}: not found; run step 1 first: python iemo_lab_with_timestamps.py --work {work}"
        )
    data = fileio.read_json(path, "labels file")
    if not isinstance(data, dict) or "dialogs" not in data:
        raise cli.PipelineError(f"{path}: no 'dialogs' key; not a labels.json written by step 1")
    check_labels(data, path, require)
    return data


def count_labels(dialogs: dict, raw_key: str, labels=LABELS) -> dict:
    """The counts of a labels.json (step 1 and corpus_from_csv.py): dialogs (per session), utterances,
    targets (utterances with a class of labels) per class and per session, and per raw annotation u[raw_key]
    (IEMOCAP's code, a CSV's emotion) as Counters "per_raw" and "target_per_raw" that the caller names. Session
    keys are strings (JSON round-trips)."""
    per_raw, target_per_raw, per_label = Counter(), Counter(), Counter()
    per_session, dialogs_per_session = {}, Counter()
    for d in dialogs.values():
        s = str(d["session"])
        dialogs_per_session[s] += 1
        row = per_session.setdefault(s, {"utterances": 0, "target": 0, **{lab: 0 for lab in labels}})
        for u in d["utterances"]:
            per_raw[u[raw_key]] += 1
            row["utterances"] += 1
            if u["label"] is not None:
                per_label[u["label"]] += 1
                target_per_raw[u[raw_key]] += 1
                row["target"] += 1
                row[u["label"]] += 1
    return {
        "dialogs": len(dialogs),
        "dialogs_per_session": dict(sorted(dialogs_per_session.items())),
        "utterances": sum(per_raw.values()),
        "target": sum(per_label.values()),
        "per_label": {lab: per_label[lab] for lab in labels},
        "per_raw": per_raw,
        "target_per_raw": target_per_raw,
        "target_per_session": {s: r["target"] for s, r in sorted(per_session.items())},
        "per_session": dict(sorted(per_session.items())),
    }


def is_finite_number(x) -> bool:
    """A real number (not a bool) that is finite: no NaN, no infinity, no integer too large for a float."""
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


def check_session_name(dialog: str, session, where: str) -> None:
    """An IEMOCAP-named dialog (Ses02F_...) must be in the session its name gives (the fold follows the
    session); other names (a CSV corpus) may have any session."""
    if session is not None and iemocap_dialog_meta(dialog) is not None and session != session_of(dialog):
        raise cli.PipelineError(
            f"{where}: 'session' {session} but the IEMOCAP name says session {session_of(dialog)}; "
            "a dialog's session decides its fold, so they must agree"
        )


def check_labels(data: dict, path, require=()) -> None:
    """The schema of labels.json (docs/FORMATS.md), checked once where it is read (load_labels).

    Errors name labels.json, the dialog and the utterance. Required: "dialogs" an object of dialog
    objects, each with an "utterances" list (and the keys in `require`); each utterance an object
    with a non-empty string "id", unique in its dialog; "start" and "end" finite numbers with
    0 <= start <= end; "speaker" a name (check_speaker: any non-empty string, any number per dialog;
    IEMOCAP's F and M; in an IEMOCAP id '<dialog>_<F|M>000' the
    letter must agree); "label" one of the classes (labels_of) or null. Checked when present: top-level
    "labels" a list of distinct class names (check_label_list), "label_set" the name of LABEL_SETS whose classes
    "labels" lists, "corpus" a string; a dialog's "session" an integer, "wav" a
    string, "kind" impro or script, "script" a string or null; an utterance's "code" one of
    IEMOCAP_CODES, "text" a string, "wdseg" a string (no two utterances share one) or null.
    """
    check_label_list(data, path)
    labels = labels_of(data)
    if "corpus" in data and not isinstance(data["corpus"], str):
        raise cli.PipelineError(f"{path}: 'corpus' must be a string (the corpus root), got {data['corpus']!r:.60}")
    dialogs = data["dialogs"]
    if not isinstance(dialogs, dict):
        raise cli.PipelineError(
            f"{path}: 'dialogs' must be an object {{dialog: {{...}}}}, got {type(dialogs).__name__}"
        )
    wdsegs = {}
    for d, info in dialogs.items():
        where = f"{path}: dialog {d}"
        _check_dialog_record(d, info, where, require)
        ids = set()
        for n, u in enumerate(info["utterances"]):
            _check_utterance(d, n, u, where, ids, wdsegs, labels)


def check_label_list(data: dict, path) -> None:
    """labels.json's (or a run config's) "labels": a non-empty list of distinct non-empty strings, when present;
    its "label_set", when present, a name of LABEL_SETS whose classes "labels" lists in the same order."""
    labels = data.get("labels", LABELS)
    if (
        not isinstance(labels, list | tuple)
        or not labels
        or not all(isinstance(lab, str) and lab.strip() == lab != "" for lab in labels)
        or len(set(labels)) != len(labels)
    ):
        raise cli.PipelineError(f"{path}: 'labels' {labels!r:.80}, expected a list of distinct class names")
    name = data.get("label_set")
    if name is not None:
        if name not in LABEL_SETS:
            raise cli.PipelineError(f"{path}: label_set {name!r:.40}, expected one of {', '.join(LABEL_SETS)}")
        if tuple(labels) != tuple(LABEL_SETS[name]["labels"]):
            raise cli.PipelineError(
                f"{path}: label_set {name} has the classes {list(LABEL_SETS[name]['labels'])}, 'labels' lists {labels}"
            )


# The optional keys of a dialog record in labels.json and the values they may hold (check_labels).
_DIALOG_KEY_CHECKS = {
    "session": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "wav": lambda v: isinstance(v, str) and v != "",
    "kind": lambda v: v in ("impro", "script"),
    "script": lambda v: v is None or isinstance(v, str),
    "scenario": lambda v: isinstance(v, str),
}


def _check_dialog_record(d: str, info, where: str, require) -> None:
    """One dialog of labels.json, without its utterances (check_labels)."""
    if not isinstance(info, dict):
        raise cli.PipelineError(f"{where}: expected an object, got {type(info).__name__}")
    for key in ("utterances", *require):
        if key not in info:
            raise cli.PipelineError(f"{where}: no {key!r} key; expected the dialog record step 1 writes")
    for key, ok in _DIALOG_KEY_CHECKS.items():
        if key in info and not ok(info[key]):
            raise cli.PipelineError(f"{where}: bad {key!r} {info[key]!r:.60}")
    check_session_name(d, info.get("session"), where)
    if not isinstance(info["utterances"], list):
        raise cli.PipelineError(f"{where}: 'utterances' must be a list, got {type(info['utterances']).__name__}")


# An IEMOCAP utterance id: '<IEMOCAP dialog>_<F|M><number>' or an unevaluated '..._<F|M>XX<n>'; the letter is
# the actor (F or M) who speaks it.
IEMOCAP_UTTERANCE_SUFFIX_RE = re.compile(r"^([FM])(?:\d+|XX\d*)$")


def iemocap_id_speaker(dialog: str, utterance_id: str) -> str | None:
    """The actor letter (F or M) an IEMOCAP utterance id names ('Ses01F_impro01_M003' -> 'M'); None for an id
    that is not IEMOCAP's (a dialog name not IEMOCAP's, or a suffix not '<F|M><number>')."""
    if iemocap_dialog_meta(dialog) is None or not utterance_id.startswith(f"{dialog}_"):
        return None
    m = IEMOCAP_UTTERANCE_SUFFIX_RE.match(utterance_id[len(dialog) + 1 :])
    return m.group(1) if m else None


def check_speaker(dialog: str, utterance_id: str, speaker, where: str) -> None:
    """An utterance's speaker is a name: any non-empty string without surrounding white space, any number per
    dialog (IEMOCAP's are F and M). An IEMOCAP id ('<dialog>_<F|M>000') must name its speaker's letter."""
    if not isinstance(speaker, str) or not speaker.strip() or speaker != speaker.strip():
        raise cli.PipelineError(
            f"{where}: speaker {speaker!r:.40}, expected a name (a non-empty string without surrounding spaces)"
        )
    letter = iemocap_id_speaker(dialog, utterance_id)
    if letter is not None and letter != speaker:
        raise cli.PipelineError(f"{where}: speaker {speaker!r:.40} but the IEMOCAP id names speaker {letter!r}")


def _check_utterance(d: str, n: int, u, where: str, ids: set, wdsegs: dict, labels=LABELS) -> None:
    """Utterance n of dialog d in labels.json (check_labels); adds its id to ids and its wdseg to
    wdsegs (wdseg -> utterance id, over all dialogs)."""
    if not isinstance(u, dict):
        raise cli.PipelineError(f"{where}: utterance {n}: expected an object, got {type(u).__name__}")
    missing = [k for k in ("id", "start", "end", "speaker", "label") if k not in u]
    if missing:
        raise cli.PipelineError(f"{where}: utterance {n} lacks {missing}")
    if not isinstance(u["id"], str) or not u["id"]:
        raise cli.PipelineError(f"{where}: utterance {n}: 'id' must be a non-empty string, got {u['id']!r:.60}")
    at = f"{where}: utterance {u['id']}"
    if u["id"] in ids:
        raise cli.PipelineError(f"{at}: listed twice (utterance ids must be unique in a dialog)")
    ids.add(u["id"])
    if not (is_finite_number(u["start"]) and is_finite_number(u["end"]) and 0 <= u["start"] <= u["end"]):
        raise cli.PipelineError(
            f"{at}: start {u['start']!r:.40}, end {u['end']!r:.40}; expected finite seconds with 0 <= start <= end"
        )
    check_speaker(d, u["id"], u["speaker"], at)
    if u["label"] is not None and u["label"] not in labels:
        raise cli.PipelineError(
            f"{at}: label {u['label']!r:.40}, expected one of {list(labels)} or null "
            "(other emotion codes have label null)"
        )
    if "code" in u and u["code"] not in IEMOCAP_CODES:
        raise cli.PipelineError(f"{at}: code {u['code']!r:.40}, expected one of {', '.join(IEMOCAP_CODES)}")
    if "text" in u and not isinstance(u["text"], str):
        raise cli.PipelineError(f"{at}: 'text' must be a string, got {type(u['text']).__name__}")
    wdseg = u.get("wdseg")
    if wdseg is not None:
        if not isinstance(wdseg, str) or not wdseg:
            raise cli.PipelineError(f"{at}: 'wdseg' must be a path or null, got {wdseg!r:.60}")
        if wdseg in wdsegs:
            raise cli.PipelineError(f"{at}: wdseg {wdseg} is also the file of utterance {wdsegs[wdseg]}")
        wdsegs[wdseg] = u["id"]


# Times (of utterances, words, turns, segments) may pass the end of the dialog audio by this much:
# rounding in the tools that wrote them (IEMOCAP's 4-decimal times, 10 ms frames, 3-decimal JSON).
# Beyond it the time belongs to other audio, and the reader stops with an error naming the file,
# the item and the audio length.
TIME_TOLERANCE_S = 0.05


def check_in_audio(end: float, duration: float | None, where: str, item: str) -> None:
    """PipelineError unless `end` (seconds) is at most the audio's duration + TIME_TOLERANCE_S."""
    if duration is not None and end > duration + TIME_TOLERANCE_S:
        at = f"{end:.3f}" if end < 1e9 else f"{end:.4g}"
        raise cli.PipelineError(
            f"{where}: {item} ends at {at} s, after the end of the audio ({duration:.3f} s; "
            f"tolerance {TIME_TOLERANCE_S:g} s): times must lie inside the dialog wav"
        )


def read_rttm(
    path, dialog: str | None = None, duration: float | None = None, counts: dict | None = None
) -> list[tuple[float, float, str]]:
    """Read an RTTM file -> [(start, end, speaker)] sorted by start. Errors name file:line.

    Every line must be 'SPEAKER <file> <chan> <start> <dur> <NA> <NA> <label> ...' in UTF-8 with
    finite start >= 0 and duration >= 0. dialog: keep only the lines whose <file> field is this
    recording (a multi-recording RTTM); the others are counted in counts["other_recording_lines"]
    (names in counts["other_recordings"]), and a file with lines but none of this recording is an
    error. duration (seconds of the dialog audio): a turn ending later than duration +
    TIME_TOLERANCE_S is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise cli.PipelineError(f"{path}: RTTM file not found")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise cli.PipelineError(f"{path}: cannot read RTTM file: {e.strerror or e}") from e
    turns, others = [], Counter()
    for n, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise cli.PipelineError(
                f"{path}:{n}: not UTF-8 text (byte 0x{raw[e.start]:02X} at column {e.start + 1}); "
                "expected an RTTM file in UTF-8"
            ) from None
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if fields[0] != "SPEAKER" or len(fields) < 8:
            raise cli.PipelineError(
                f"{path}:{n}: expected 'SPEAKER <file> <chan> <start> <dur> <NA> <NA> <label> ...', "
                f"got {cli.quote(line.strip())}"
            )
        try:
            start, dur = float(fields[3]), float(fields[4])
        except ValueError:
            raise cli.PipelineError(
                f"{path}:{n}: start and duration must be numbers, got {fields[3]!r:.40} {fields[4]!r:.40}"
            ) from None
        if not (math.isfinite(start) and math.isfinite(dur) and math.isfinite(start + dur)):
            raise cli.PipelineError(
                f"{path}:{n}: start and duration must be finite numbers of seconds, got "
                f"{fields[3]!r:.40} {fields[4]!r:.40}"
            )
        if not (start >= 0 and dur >= 0):
            raise cli.PipelineError(f"{path}:{n}: negative start or duration in {cli.quote(line.strip())}")
        if dialog is not None and fields[1] != dialog:
            others[fields[1]] += 1
            continue
        check_in_audio(start + dur, duration, f"{path}:{n}", f"the turn {start:.3f} + {dur:.3f} s")
        turns.append((start, start + dur, fields[7]))
    if dialog is not None and others and not turns:
        raise cli.PipelineError(
            f"{path}: no turn of the recording {dialog}; the file names "
            f"{', '.join(sorted(others)[:5])}{' ...' if len(others) > 5 else ''}"
        )
    if counts is not None:
        counts["other_recording_lines"] = counts.get("other_recording_lines", 0) + sum(others.values())
        counts["other_recordings"] = sorted(set(counts.get("other_recordings", [])) | set(others))
    turns.sort()
    return turns


def write_rttm(path, dialog: str, turns) -> None:
    """Write [(start, end, speaker)] as RTTM, atomically."""
    lines = [
        f"SPEAKER {dialog} 1 {s:.3f} {e - s:.3f} <NA> <NA> {spk} <NA> <NA>\n" for s, e, spk in sorted(turns) if e > s
    ]
    fileio.atomic_write_text(path, "".join(lines))


AUDIO_CHANNELS = ("mean", "0", "1")  # the --channel choices of align.py


def check_wav_complete(path) -> None:
    """PipelineError if a RIFF/WAVE file is shorter than its header says (a truncated copy).

    libsndfile reads such a file without complaint, returning fewer samples than were recorded.
    The 'data' chunk's declared size is compared with the bytes the file holds; sizes 0 and
    0xFFFFFFFF (streaming writers that never filled the header in) and other formats are not checked.
    """
    import struct

    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if f.read(12)[8:12] != b"WAVE":
                return
            pos = 12
            for _ in range(64):  # a wav has a handful of chunks before 'data'
                header = f.read(8)
                if len(header) < 8:
                    return
                chunk, length = header[:4], struct.unpack("<I", header[4:])[0]
                if chunk == b"data":
                    held = size - (pos + 8)
                    if length not in (0, 0xFFFFFFFF) and held < length:
                        raise cli.PipelineError(
                            f"{path}: truncated: the header declares {length} bytes of audio, the "
                            f"file holds {held} ({100 * held / length:.1f} %); copy the file again"
                        )
                    return
                pos += 8 + length + (length & 1)
                f.seek(pos)
    except OSError as e:
        raise cli.PipelineError(f"{path}: cannot read audio file: {e.strerror or e}") from e


def load_audio(path, sample_rate: int = SAMPLE_RATE, channel: str = "mean") -> np.ndarray:
    """Decode a wav file with soundfile -> float32 mono [samples] in [-1, 1].

    channel: how a multi-channel file (IEMOCAP's stereo dialog wavs) becomes mono. "mean"
    (default) averages the channels, so both actors are heard (each channel favours one actor's
    microphone); "0" or "1" (or the int) takes that channel alone (the authors took channel 0).
    A mono file is returned as it is whatever `channel` says. No resampling: a file at another
    rate is an error, since every IEMOCAP wav is 16 kHz.
    """
    channel = str(channel)
    if channel not in AUDIO_CHANNELS:
        raise ValueError(f"channel must be one of {AUDIO_CHANNELS}, got {channel!r}")
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise cli.PipelineError(f"{path}: audio file not found")
    check_wav_complete(path)
    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        raise cli.PipelineError(f"{path}: cannot decode audio: {e}") from e
    if sr != sample_rate:
        raise cli.PipelineError(f"{path}: sample rate {sr} Hz, expected {sample_rate} Hz")
    if audio.shape[0] == 0:
        raise cli.PipelineError(f"{path}: audio file has no samples")
    if not np.isfinite(audio).all():  # a float wav can hold NaN or infinity; every later step would spread it
        bad = ~np.isfinite(audio).all(axis=1)
        first = int(np.argmax(bad))
        raise cli.PipelineError(
            f"{path}: {int(bad.sum())} samples are NaN or infinite (the first at "
            f"{first / sr:.3f} s); expected finite samples"
        )
    if audio.shape[1] == 1:
        return audio[:, 0]
    if channel == "mean":
        return audio.mean(axis=1)
    if int(channel) >= audio.shape[1]:
        raise cli.PipelineError(f"{path}: no channel {channel} in a {audio.shape[1]}-channel file")
    return np.ascontiguousarray(audio[:, int(channel)])


# IEMOCAP's text formats, read by steps 1 and 2 (docs/FORMATS.md).
# "Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me."
TRANSCRIPT_RE = re.compile(r"^(Ses\S+) \[(\d+(?:\.\d*)?)-(\d+(?:\.\d*)?)\]:(.*)$")


def read_text_lines(path, decode_log: Counter | None = None) -> list[str]:
    """Lines of a corpus text file without line ends.

    UTF-8 first, then cp1252, then latin-1 (never fails). Splits on "\\n" only: str.splitlines
    would also split on characters such as U+0085 that a latin-1 decode can produce.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise cli.PipelineError(f"{path}: cannot read file: {e}") from e
    for encoding in ("utf-8", "cp1252", "latin-1"):
        try:
            text = data.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    if decode_log is not None:
        decode_log[encoding] += 1
    if text.startswith("\ufeff"):
        text = text[1:]
    return [line.rstrip("\r") for line in text.split("\n")]


MAX_WDSEG_FRAME = 60_000  # 10 minutes at 100 frames/s: far above any utterance (IEMOCAP's are under 35 s)


def parse_wdseg(path, seconds: float | None = None) -> list[tuple[int, int, int, str]]:
    """Parse one ForcedAlignment .wdseg (CMU Sphinx-3) -> [(start_frame, end_frame, score, token)].

    Tokens are returned as written (<s>, <sil>, ++BREATHING++, WHAT(2) ...); frames are 10 ms from
    the start of the utterance wav. Validates the "SFrm EFrm SegAScr Word" header, every row and the
    "Total score: N" trailer. seconds: the utterance's length; a row ending later (frame EFrm ends
    at (EFrm + 1) / 100 s) than seconds + TIME_TOLERANCE_S is an error naming the row: its times
    belong to audio outside the utterance (docs/FORMATS.md).
    """
    path = Path(path)
    lines = read_text_lines(path)
    rows, state, last = [], "header", 0  # header -> rows -> done; last: the last non-blank line
    for n, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        last = n
        where = f"{path}:{n}"
        if state == "header":
            if fields != ["SFrm", "EFrm", "SegAScr", "Word"]:
                raise cli.PipelineError(f"{where}: expected the header 'SFrm EFrm SegAScr Word', got {cli.quote(line)}")
            state = "rows"
        elif state == "rows" and fields[:2] == ["Total", "score:"]:
            if len(fields) != 3 or not re.fullmatch(r"-?\d+", fields[2]):
                raise cli.PipelineError(f"{where}: expected 'Total score: <integer>', got {cli.quote(line)}")
            state = "done"
        elif state == "rows":
            if len(fields) != 4 or not all(re.fullmatch(r"-?\d+", f) for f in fields[:3]):
                raise cli.PipelineError(
                    f"{where}: expected '<start frame> <end frame> <score> <word>', got {cli.quote(line)}"
                )
            if any(len(f.lstrip("-")) > 18 for f in fields[:3]):
                raise cli.PipelineError(
                    f"{where}: a number of {max(len(f) for f in fields[:3])} digits; expected frame "
                    f"numbers up to {MAX_WDSEG_FRAME} and an integer score"
                )
            start, end, score = int(fields[0]), int(fields[1]), int(fields[2])
            if not 0 <= start <= end:
                raise cli.PipelineError(f"{where}: expected 0 <= start frame <= end frame, got {start} {end}")
            if end > MAX_WDSEG_FRAME:
                raise cli.PipelineError(
                    f"{where}: end frame {end} is {end / 100:.0f} s into the utterance; expected at "
                    f"most {MAX_WDSEG_FRAME} (10 minutes at 100 frames per second)"
                )
            if seconds is not None and (end + 1) / 100 > seconds + TIME_TOLERANCE_S:
                raise cli.PipelineError(
                    f"{where}: word {cli.quote(fields[3], 60)} ends at frame {end} "
                    f"({(end + 1) / 100:.2f} s), "
                    f"past the end of its utterance ({seconds:.2f} s long); expected frames inside "
                    "the utterance's audio"
                )
            rows.append((start, end, score, fields[3]))
        else:
            raise cli.PipelineError(f"{where}: expected nothing after the 'Total score' line, got {cli.quote(line)}")
    if state == "header":
        raise cli.PipelineError(f"{path}: expected the header 'SFrm EFrm SegAScr Word', got an empty file")
    if state != "done":
        raise cli.PipelineError(f"{path}:{last}: expected a 'Total score: N' line after this line, got end of file")
    if not rows:
        raise cli.PipelineError(f"{path}: no word rows between the header and the 'Total score' line")
    return rows


DEMO_NOTE = (
    "DEMO: these numbers come from the synthetic demo corpus (and, in the default demo setup, tiny "
    "randomly initialised models); they say nothing about IEMOCAP or about the paper's claims."
)


def demo_note(labels: dict) -> str | None:
    """DEMO_NOTE if labels.json was made from the generated demo corpus (it leaves its ground truth
    in the corpus root), else None. Every report of a run carries it, so no demo number passes for
    an IEMOCAP one."""
    return DEMO_NOTE if (Path(labels.get("corpus", "")) / "demo_ground_truth.json").is_file() else None


MIN_AUDIO_SAMPLES = 400  # 25 ms: wav2vec 2.0's CNN receptive field, the shortest input giving one frame


def check_cache(cache, path, sample_rate: int = SAMPLE_RATE) -> None:
    """The top level of a step-3 cache (docs/FORMATS.md): dialog (the file's name), sample rate, segments."""
    if not isinstance(cache, dict) or "segments" not in cache or "dialog" not in cache:
        raise cli.PipelineError(f"{path}: not a step-3 segment cache (expected keys dialog, segments)")
    if cache["dialog"] != Path(path).stem:
        raise cli.PipelineError(
            f"{path}: holds dialog {cache['dialog']!r:.60}, expected {Path(path).stem!r} (the file's name)"
        )
    rate = cache.get("sample_rate", sample_rate)
    if isinstance(rate, bool) or rate != sample_rate:
        raise cli.PipelineError(f"{path}: sample_rate {rate!r:.40}, expected {sample_rate}")
    if not isinstance(cache["segments"], list):
        raise cli.PipelineError(f"{path}: 'segments' must be a list, got {type(cache['segments']).__name__}")


def check_cache_segment(seg, where: str, sample_rate: int = SAMPLE_RATE, labels=LABELS) -> int:
    """One segment of a step-3 cache -> its label index; PipelineError (prefixed `where`) otherwise.

    id, speaker and text strings; start, end finite seconds with 0 <= start <= end; label an integer
    in -1..len(labels)-1 (index into labels, labels.json's classes; -1 = none; not a bool, a float or a name);
    audio a 1-D floating
    tensor of finite samples, no longer than the segment's times at sample_rate (+ 2 samples of
    rounding). Audio shorter than its times (by more than TIME_TOLERANCE_S) is counted by SegmentDataset.
    """
    if not isinstance(seg, dict):
        raise cli.PipelineError(f"{where}: expected a segment record, got {type(seg).__name__}")
    missing = {"id", "start", "end", "speaker", "text", "label", "audio"} - set(seg)
    if missing:
        raise cli.PipelineError(f"{where} lacks {sorted(missing)}")
    for key in ("id", "speaker", "text"):
        if not isinstance(seg[key], str):
            raise cli.PipelineError(f"{where}: {key} must be a string, got {type(seg[key]).__name__} {seg[key]!r:.40}")
    where = f"{where} ({seg['id']})"
    start, end = seg["start"], seg["end"]
    if not (is_finite_number(start) and is_finite_number(end) and 0 <= start <= end):
        raise cli.PipelineError(
            f"{where}: start {start!r:.40}, end {end!r:.40}; expected finite seconds, 0 <= start <= end"
        )
    label = seg["label"]
    if (
        isinstance(label, torch.Tensor)
        and label.ndim == 0
        and not label.is_floating_point()
        and label.dtype != torch.bool
    ):
        label = int(label)
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)) or not -1 <= label < len(labels):
        raise cli.PipelineError(
            f"{where}: label {label!r:.40}, expected an integer in -1..{len(labels) - 1} "
            f"(the index into {list(labels)}, -1 = no label)"
        )
    audio = seg["audio"]
    if not isinstance(audio, torch.Tensor) or audio.ndim != 1 or not audio.is_floating_point():
        kind = f"a {audio.ndim}-D {audio.dtype} tensor" if isinstance(audio, torch.Tensor) else type(audio).__name__
        raise cli.PipelineError(f"{where}: audio is {kind}; expected a 1-D float tensor of mono samples")
    if not bool(torch.isfinite(audio).all()):
        raise cli.PipelineError(f"{where}: audio holds {int((~torch.isfinite(audio)).sum())} NaN or infinite samples")
    expected = (end - start) * sample_rate
    if audio.numel() > expected + 2:
        raise cli.PipelineError(
            f"{where}: {audio.numel()} samples for {end - start:.3f} s; expected at most {expected:.0f} "
            f"at {sample_rate} Hz (audio of another segment, or another sample rate)"
        )
    return int(label)


def step3_rerun(path) -> str:
    """How to rewrite the step-3 cache WORK/<pipe>/<variant>/cache/<dialog>.pt (for error messages)."""
    path = Path(path)
    if len(path.parents) < 4:
        return "re-run step 3 (align.py --overwrite) to rewrite it"
    work, pipe, variant = path.parents[3], path.parents[2].name, path.parents[1].name
    return (
        f"re-run step 3 to rewrite it: python align.py --work {work} --pipe {pipe} --overwrite "
        f"--dialogs {path.stem} (with the switches that made {variant})"
    )
