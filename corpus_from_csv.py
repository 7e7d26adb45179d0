"""Any corpus -> WORK/labels.json: a CSV of labelled utterances in place of step 1.

labels.json is the pipeline's corpus interface: steps 2-6 read nothing else about the corpus except the dialog
audio it names. This script writes it from a CSV (UTF-8, a header row, one row per labelled utterance; columns
audio, id, start, end, speaker, emotion, and optionally text, session or fold, dialog, wdseg): it maps each
emotion label to a class or to none (--emotion-map), keeps the speakers' names (any number per dialog), checks
the result with common.formats.check_labels and writes it, so that steps 2-6 and reproduce.py run unchanged. A bad
row stops it with an error naming "<csv>:<line>"; nothing is then written.

The columns, the emotion map, the speakers, the sessions and the errors: docs/FORMATS.md ("labels.json as the
corpus interface"); a walk-through, and what steps 2-6 still assume of a corpus: docs/PREDICT.md.

Usage: python corpus_from_csv.py corpus.csv --work WORK [--audio-root DIR] [--emotion-map SPEC]
"""

from __future__ import annotations

import argparse
import csv
import math
import re
from pathlib import Path

from common import cli, defaults, fileio, formats, scoring
from common.cli import PipelineError
from common.formats import CODE_TO_LABEL, IEMOCAP_CODES, LABELS

REQUIRED = ("audio", "id", "start", "end", "speaker", "emotion")
SESSION_COLUMNS = ("session", "fold")
NONE = "none"  # map target: speech without a class of the label set (label null)
CLASS_RE = re.compile(r"^[^\s,=]+$")  # a class name: no white space, comma or '=' (the map's syntax)
# IEMOCAP's codes: exc merged into hap (common.formats.CODE_TO_LABEL), the rest without a 4-class label.
DEFAULT_EMOTION_MAP = {code: CODE_TO_LABEL.get(code, NONE) for code in IEMOCAP_CODES}


def parse_emotion_map(spec: str | None, classes=None) -> dict:
    """'happy=hap,frustrated=none' -> {'happy': 'hap', 'frustrated': 'none'}; None -> the IEMOCAP default. classes:
    the classes a target may be (--labels; None: any class name, the set then follows the map: map_classes)."""
    if spec is None:
        return dict(DEFAULT_EMOTION_MAP)
    mapping = {}
    for item in spec.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        allowed = value in (*classes, NONE) if classes is not None else bool(CLASS_RE.match(value))
        if not sep or not key or not allowed:
            raise PipelineError(
                f"--emotion-map: bad item {cli.quote(item.strip())}; "
                "expected LABEL=CLASS with CLASS "
                + (f"one of {', '.join(classes)} or {NONE}" if classes is not None else f"a class name or {NONE}")
            )
        mapping[key] = value
    if not mapping:
        raise PipelineError("--emotion-map: empty; expected e.g. 'happy=hap,angry=ang,sad=sad,neutral=neu,other=none'")
    return mapping


def parse_class_list(spec: str) -> list:
    """--labels 'joy,anger,neutral' -> the classes in order (distinct names without white space, comma or '=')."""
    classes = [c.strip() for c in spec.split(",") if c.strip()]
    bad = [c for c in classes if not CLASS_RE.match(c) or c == NONE or c == scoring.MISS]
    if not classes or bad or len(set(classes)) != len(classes):
        raise PipelineError(
            f"--labels {cli.quote(spec)}: expected distinct class names, comma-separated"
            + (f" ({', '.join(map(repr, bad))} cannot be a class)" if bad else "")
        )
    return classes


def map_classes(emotion_map: dict, classes=None) -> list:
    """The label set of a CSV corpus, in order: classes (--labels) when given, every map target among them; else
    the paper's four when the map's targets are all among them (the default and any 4-class map), else a known
    set's classes in its order when the targets are exactly them (wu6), else the map's targets in their order of
    first appearance."""
    targets = list(dict.fromkeys(v for v in emotion_map.values() if v != NONE))
    if classes is not None:
        extra = [t for t in targets if t not in classes]
        if extra:
            raise PipelineError(f"--emotion-map maps to {extra}, not in --labels {','.join(classes)}")
        return list(classes)
    if all(t in LABELS for t in targets):
        return list(LABELS)
    known = [s["labels"] for s in formats.LABEL_SETS.values() if set(s["labels"]) == set(targets)]
    if known:  # the classes of a known set (e.g. wu6): in its order
        return list(known[0])
    bad = [t for t in targets if t == scoring.MISS]
    if bad:
        raise PipelineError(f"--emotion-map: {bad[0]!r} cannot be a class (the confusion matrices' miss column)")
    return targets


def dialog_meta(dialog: str) -> dict:
    """Step 1's kind/scenario/script for IEMOCAP-style names; impro/name/null for any other."""
    return formats.iemocap_dialog_meta(dialog) or {"kind": "impro", "scenario": dialog, "script": None}


def _number(text: str, name: str, where: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = math.nan
    if not math.isfinite(x):
        raise PipelineError(f"{where}: {name} {text!r:.40}; expected a finite number of seconds")
    return x


def read_rows(csv_path: Path) -> tuple[list[tuple[int, dict]], list[str]]:
    """-> ([(line number, row)], header); the required columns checked (line 1)."""
    if not csv_path.is_file():
        raise PipelineError(f"{csv_path}: CSV file not found")
    try:
        text = csv_path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PipelineError(f"{csv_path}: not UTF-8 text (byte {e.start})") from None
    reader = csv.DictReader(text.splitlines(keepends=True))
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise PipelineError(
            f"{csv_path}:1: missing column(s) {', '.join(missing)}; the header must name "
            f"{', '.join(REQUIRED)} (optional: text, session or fold, dialog, wdseg), got {header}"
        )
    rows = []
    for row in reader:  # reader.line_num: the row's (last) line; a quoted multi-line text ends there
        if not any((v or "").strip() for k, v in row.items() if k is not None):
            continue  # a row of empty cells
        rows.append((reader.line_num, {k: (v or "").strip() for k, v in row.items() if k is not None}))
    return rows, header


def build_labels(
    csv_path, audio_root=None, emotion_map: dict | None = None, default_session: int = 1, classes=None
) -> dict:
    """Read the CSV -> the content of labels.json (docs/FORMATS.md), checked by common.formats.check_labels. Its
    label set: map_classes(emotion_map, classes); "label_set" names it when it is a known set other than the
    default (common.formats.LABEL_SETS)."""
    csv_path = Path(csv_path).resolve()
    root = Path(audio_root).resolve() if audio_root is not None else csv_path.parent
    emotion_map = DEFAULT_EMOTION_MAP if emotion_map is None else emotion_map
    classes = map_classes(emotion_map, classes)
    name = formats.label_set_name(classes)
    rows, header = read_rows(csv_path)
    session_col = next((c for c in SESSION_COLUMNS if c in header), None)
    if not rows:
        raise PipelineError(f"{csv_path}: no utterance rows after the header")
    dialogs = _read_dialogs(csv_path, rows, root, emotion_map, session_col, default_session)
    for dialog, d in dialogs.items():
        d["utterances"].sort(key=lambda u: (u["start"], u["id"]))
        assign_speakers(csv_path, dialog, d["utterances"])
        del d["_line"]
    dialogs = {d: dialogs[d] for d in sorted(dialogs)}
    data = {
        "corpus": str(root),
        "labels": classes,
        **({"label_set": name} if name not in (None, formats.DEFAULT_LABEL_SET) else {}),
        "dialogs": dialogs,
        "source": {
            "csv": str(csv_path),
            "emotion_map": dict(emotion_map),
            "session_column": session_col,
            "default_session": default_session,
        },
        "counts": count_utterances(dialogs, classes),
    }
    formats.check_labels(data, csv_path)
    return data


def _read_dialogs(csv_path: Path, rows, root: Path, emotion_map: dict, session_col, default_session: int) -> dict:
    """The checked rows grouped by dialog -> {dialog: entry with "utterances" (unsorted) and "_line"}."""
    dialogs, first_line, durations, wdsegs = {}, {}, {}, {}
    for line, row in rows:
        where = f"{csv_path}:{line}"
        utt_id, start, end, emotion, target = _row_utterance_fields(row, line, where, first_line, emotion_map)
        session = _row_session(row, session_col, default_session, where)
        d, audio_rel = _row_dialog(dialogs, durations, row, root, session, session_col, line, where)
        formats.check_in_audio(end, durations[audio_rel], where, f"utterance {utt_id} ({start:.3f}-{end:.3f} s)")
        wdseg = _row_wdseg(row, root, wdsegs, line, where)
        code = emotion.lower() if emotion.lower() in IEMOCAP_CODES else (target if target != NONE else "oth")
        d["utterances"].append(
            {
                "id": utt_id,
                "start": start,
                "end": end,
                "speaker": row["speaker"],
                "code": code,
                "label": None if target == NONE else target,
                "text": row.get("text", ""),
                "wdseg": wdseg,
                "emotion": emotion,
                "_line": line,
            }
        )
    return dialogs


def _row_utterance_fields(row: dict, line: int, where: str, first_line: dict, emotion_map: dict) -> tuple:
    """A row's required fields checked -> (id, start, end, CSV emotion, mapped class); its id noted in first_line."""
    empty = [c for c in REQUIRED if not row.get(c)]
    if empty:
        raise PipelineError(f"{where}: empty {', '.join(empty)}")
    utt_id = row["id"]
    if utt_id in first_line:
        raise PipelineError(f"{where}: duplicate utterance id {cli.quote(utt_id)} (first at line {first_line[utt_id]})")
    first_line[utt_id] = line
    start, end = _number(row["start"], "start", where), _number(row["end"], "end", where)
    if not 0 <= start < end:
        raise PipelineError(f"{where}: start {row['start']}, end {row['end']}; expected 0 <= start < end")
    emotion = row["emotion"]
    if emotion.lower() not in emotion_map:
        raise PipelineError(
            f"{where}: emotion {emotion!r:.40} is not in the emotion map ({', '.join(emotion_map)}); "
            f"add it with --emotion-map {emotion.lower()}=<{'|'.join(dict.fromkeys(emotion_map.values()))}>"
        )
    return utt_id, start, end, emotion, emotion_map[emotion.lower()]


def _row_session(row: dict, session_col, default_session: int, where: str) -> int:
    """The row's session (or fold) cell as a positive integer; default_session when there is none."""
    if session_col and row.get(session_col):
        if not re.fullmatch(r"\d+", row[session_col]) or int(row[session_col]) < 1:
            raise PipelineError(f"{where}: {session_col} {row[session_col]!r:.40}; expected a positive integer")
        return int(row[session_col])
    return default_session


def _row_dialog(dialogs: dict, durations: dict, row: dict, root: Path, session: int, session_col, line, where):
    """The row's dialog entry (created on its first row, its audio's length read into durations) -> (entry, audio).

    A later row must name the same audio file and session as the dialog's first row.
    """
    audio_rel = row["audio"]
    dialog = row.get("dialog") or Path(audio_rel).stem
    d = dialogs.get(dialog)
    if d is None:
        if audio_rel not in durations:
            durations[audio_rel] = formats.wav_seconds(root / audio_rel, where)
        d = dialogs[dialog] = {
            "session": session,
            **dialog_meta(dialog),
            "wav": Path(audio_rel).as_posix(),
            "utterances": [],
            "_line": line,
        }
    elif d["wav"] != Path(audio_rel).as_posix():
        raise PipelineError(
            f"{where}: dialog {dialog} has audio {cli.quote(audio_rel)} here but "
            f"{cli.quote(d['wav'])} at line "
            f"{d['_line']}; one audio file per dialog"
        )
    elif d["session"] != session:
        raise PipelineError(
            f"{where}: dialog {dialog} is in {session_col or 'session'} {session} here but "
            f"{d['session']} at line {d['_line']}"
        )
    return d, audio_rel


def _row_wdseg(row: dict, root: Path, wdsegs: dict, line: int, where: str):
    """The row's wdseg path (None when empty), checked to exist and to be no other row's; noted in wdsegs."""
    wdseg = row.get("wdseg") or None
    if wdseg is not None:
        if not (root / wdseg).is_file():
            raise PipelineError(f"{where}: wdseg file {root / wdseg} not found")
        if wdseg in wdsegs:
            raise PipelineError(f"{where}: wdseg {wdseg} is also the file of line {wdsegs[wdseg]}")
        wdsegs[wdseg] = line
    return wdseg


def assign_speakers(csv_path: Path, dialog: str, utterances: list[dict]) -> None:
    """Check each utterance's speaker in place and drop its "_line": the CSV's speaker names are kept as they are
    (any number per dialog; an IEMOCAP CSV's F/M stay F/M). An id of the IEMOCAP form '<dialog>_<F|M>000' in an
    IEMOCAP-named dialog must name its speaker's letter (common.formats.check_speaker)."""
    for u in utterances:
        line = u.pop("_line")
        formats.check_speaker(dialog, u["id"], u["speaker"], f"{csv_path}:{line}: utterance {u['id']}")


def count_utterances(dialogs: dict, classes=LABELS) -> dict:
    """Counts per class, per CSV emotion and per session (common.formats.count_labels)."""
    c = formats.count_labels(dialogs, "emotion", classes)
    per_emotion = c.pop("per_raw")
    c.pop("target_per_raw")
    c["per_emotion"] = dict(sorted(per_emotion.items()))
    c["missing"] = {
        "wdseg": sum(u["wdseg"] is None for d in dialogs.values() for u in d["utterances"]),
        "dialog_wav": 0,
    }
    return c


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("csv", help="the corpus CSV (columns: docs/FORMATS.md)")
    parser.add_argument("--work", default=defaults.WORK_DIR, help="work directory; writes WORK/labels.json")
    parser.add_argument(
        "--audio-root",
        default=None,
        help="folder that relative audio/wdseg paths start from (default: the CSV's folder); "
        "recorded as labels.json 'corpus'",
    )
    parser.add_argument(
        "--emotion-map",
        default=None,
        metavar="LABEL=CLASS,...",
        help="CSV emotion -> a class or none (default: IEMOCAP's codes, exc merged into hap, fru/sur/fea/dis/oth/xxx "
        "none). The label set: --labels, else the paper's hap, ang, sad, neu when every class is one of them, else "
        "the map's classes in order (docs/PREDICT.md)",
    )
    parser.add_argument(
        "--labels",
        default=None,
        metavar="CLASS,...",
        help="the label set's classes in order (the classifier's outputs, the tables' rows); the map's classes must "
        "be among them",
    )
    parser.add_argument(
        "--default-session",
        type=int,
        default=1,
        help="session of every dialog when the CSV has no session/fold column (or the cell is empty)",
    )
    args = parser.parse_args(argv)
    if args.default_session < 1:
        raise PipelineError(f"--default-session {args.default_session}: expected a positive integer")
    classes = parse_class_list(args.labels) if args.labels is not None else None
    emotion_map = parse_emotion_map(args.emotion_map, classes)
    data = build_labels(args.csv, args.audio_root, emotion_map, args.default_session, classes)
    out_path = Path(args.work) / "labels.json"
    fileio.remove_stale_temp(out_path.parent, recursive=False)  # a killed write's leftover temporary file
    fileio.atomic_write_json(out_path, data)
    c = data["counts"]
    print(
        f"read {args.csv}: {c['dialogs']} dialogs in sessions {','.join(c['dialogs_per_session'])}, "
        f"{c['utterances']} utterances ({c['target']} in the {len(data['labels'])} classes: "
        + ", ".join(f"{lab} {c['per_label'][lab]}" for lab in data["labels"])
        + ")"
    )
    print(f"wrote {out_path}")
    return data


if __name__ == "__main__":
    cli.run_main(main)
