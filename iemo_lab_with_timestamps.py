"""Step 1: IEMOCAP reference labels with timestamps -> WORK/labels.json.

Reads an IEMOCAP root (IEMOCAP_full_release, or the demo corpus, which has the same on-disk layout): each
dialog's EmoEvaluation and transcriptions files and where its ForcedAlignment .wdseg files are. Writes each
dialog's reference utterances in time order: times in the dialog wav, speaker, emotion code, 4-class label
(exc merged into hap), transcript and .wdseg path. These references are what the paper (Section IV-A)
trains and scores against: the labels of step 3's segments and the timelines of TEER/sTEER (step 6).

The record shape, what step 1 checks and leaves to later steps (it never decodes audio), the text decoding
and the comparison with the standard IEMOCAP counts: docs/FORMATS.md (labels.json; "What every reader
checks"); the standard counts themselves: docs/REAL_DATA.md.

Usage:
  python iemo_lab_with_timestamps.py --iemocap IEMOCAP_full_release --work preprocessed_iemocap
  python iemo_lab_with_timestamps.py --iemocap IEMOCAP_full_release --check   # preflight, writes nothing
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from common import cli, defaults, formats
from common.cli import PipelineError, quote
from common.fileio import atomic_write_json, remove_stale_temp
from common.formats import (
    DEFAULT_LABEL_SET,
    IEMOCAP_CODES,
    LABEL_SETS,
    TRANSCRIPT_RE,
    count_labels,
    iemocap_dialog_meta,
    read_text_lines,
    session_of,
)

# Facts of the real corpus (IEMOCAP_full_release, as used by the standard 4-class protocol): the subset
# (5,531 utterances, exc merged into hap), all labelled utterances (any code), the dialogs per
# session, and the two utterances without a forced alignment file.
IEMOCAP_STANDARD_COUNTS = {
    "dialogs": 151,
    "dialogs_per_session": {"1": 28, "2": 30, "3": 32, "4": 30, "5": 31},
    "utterances": 10039,
    "target": 5531,
    "per_label": {"hap": 1636, "ang": 1103, "sad": 1084, "neu": 1708},
    "target_per_code": {"hap": 595, "exc": 1041, "ang": 1103, "sad": 1084, "neu": 1708},
    "target_per_session": {"1": 1085, "2": 1023, "3": 1151, "4": 1031, "5": 1241},
    "missing_wdseg": 2,
}
IEMOCAP_SESSIONS = (1, 2, 3, 4, 5)
# The same corpus under Wu, Zhang & Woodland's six classes (--label-set wu6): every labelled utterance has a class
# (W-Wu/sTEER data_prep/iemo_lab_AER-cat.py prints these counts of the full release).
WU6_STANDARD_COUNTS = {
    "dialogs": 151,
    "dialogs_per_session": IEMOCAP_STANDARD_COUNTS["dialogs_per_session"],
    "utterances": 10039,
    "target": 10039,
    "per_label": {"hap": 1636, "sad": 1084, "ang": 1103, "neu": 1708, "oth": 2001, "xxx": 2507},
    "target_per_code": {
        **{"neu": 1708, "hap": 595, "exc": 1041, "sad": 1084, "ang": 1103},
        **{"fru": 1849, "sur": 107, "fea": 40, "dis": 2, "oth": 3, "xxx": 2507},
    },
    "missing_wdseg": 2,
}
STANDARD_COUNTS = {"iemocap4": IEMOCAP_STANDARD_COUNTS, "wu6": WU6_STANDARD_COUNTS}  # per label set

# Skip reasons (stable strings: they are keys of counts["skipped"]).
SKIP_XX = "transcript line with an XX id (no EmoEvaluation entry by design)"
SKIP_NOT_UTTERANCE = "transcript line that is not an utterance (does not start with 'Ses')"
SKIP_NO_EMO = "transcript utterance without an EmoEvaluation entry"
SKIP_HIDDEN = "hidden file (name starts with '.')"
SKIP_TRANSCRIPT_ONLY = "transcription file without an EmoEvaluation file"

# "Ses01F_impro01", "Ses03M_impro05a", "Ses01F_script01_1", "Ses05M_script01_1b"
# Utterance suffix after "<dialog>_": speaker letter then index ("F000") or an XX id ("FXX0").
UTT_SUFFIX_RE = re.compile(r"^([FM])(\d+|XX\d*)$")
NUM = r"(\d+(?:\.\d*)?)"
# "[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]"
EMO_HEADER_RE = re.compile(r"^\[" + NUM + r" - " + NUM + r"\]\t(\S+)\t(\S+)\t\[([^\]]*)\]$")


# ---------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------


def _split_utterance_id(utt_id: str, dialog: str, where: str) -> tuple[str, bool]:
    """-> (speaker letter, is_xx). The id must be '<dialog>_<F|M><index>'."""
    suffix = utt_id[len(dialog) + 1 :] if utt_id.startswith(dialog + "_") else None
    m = UTT_SUFFIX_RE.match(suffix) if suffix is not None else None
    if m is None:
        raise PipelineError(
            f"{where}: expected an utterance id '{dialog}_<F|M><index>' (dialog prefix "
            f"from the file name), got {quote(utt_id)}"
        )
    return m.group(1), m.group(2).startswith("XX")


def parse_emo_evaluation(path, decode_log: Counter | None = None) -> list[dict]:
    """Parse one EmoEvaluation/<dialog>.txt -> [{id, start, end, code, vad}] in file order.

    Blocks are separated by blank lines; the first line of a block is
    "[start - end]<TAB>id<TAB>code<TAB>[v, a, d]", the rest are evaluator lines (ignored).
    "%" lines are headers. The dialog is the file name's stem.
    """
    path = Path(path)
    dialog = path.stem
    entries, seen = [], {}
    in_block = False
    for n, line in enumerate(read_text_lines(path, decode_log), 1):
        if not line.strip():
            in_block = False
            continue
        if line.startswith("%"):
            continue
        # A line opening with "[" is always a block header, even if the blank line before it is missing.
        if in_block and not line.startswith("["):
            continue  # evaluator line, e.g. "C-E2:\tNeutral;\t()"
        in_block = True
        where = f"{path}:{n}"
        m = EMO_HEADER_RE.match(line.strip())
        if m is None:
            raise PipelineError(
                f"{where}: expected a block header '[start - end]<TAB>id<TAB>code<TAB>[v, a, d]', got {quote(line)}"
            )
        start, end, utt_id, code, vad_text = float(m.group(1)), float(m.group(2)), m.group(3), m.group(4), m.group(5)
        if not (math.isfinite(start) and math.isfinite(end)):
            raise PipelineError(f"{where}: expected times in seconds, got [{m.group(1):.30} - {m.group(2):.30}]")
        if code not in IEMOCAP_CODES:
            raise PipelineError(f"{where}: expected an emotion code in {', '.join(IEMOCAP_CODES)}, got {quote(code)}")
        if not end > start:
            raise PipelineError(f"{where}: expected end > start, got [{m.group(1)} - {m.group(2)}]")
        _, is_xx = _split_utterance_id(utt_id, dialog, where)
        if is_xx:
            raise PipelineError(f"{where}: expected a labelled utterance id, got the XX id {quote(utt_id)}")
        try:
            vad = [float(v) for v in vad_text.split(",")]
        except ValueError:
            vad = []
        if len(vad) != 3 or not all(math.isfinite(v) for v in vad):
            raise PipelineError(f"{where}: expected three numbers [v, a, d], got [{vad_text}]")
        if utt_id in seen:
            raise PipelineError(f"{where}: duplicate utterance {utt_id} (first at line {seen[utt_id]})")
        seen[utt_id] = n
        entries.append({"id": utt_id, "start": start, "end": end, "code": code, "vad": vad})
    return entries


def parse_transcriptions(path, decode_log: Counter | None = None) -> tuple[dict, list[tuple[int, str]]]:
    """Parse one transcriptions/<dialog>.txt.

    -> ({id: {start, end, text}}, [(line_no, reason)] for lines that carry no labelled utterance:
    XX ids and lines not starting with "Ses"). Text keeps inline markers ([LAUGHTER] ...).
    """
    path = Path(path)
    dialog = path.stem
    utterances, skipped = {}, []
    for n, line in enumerate(read_text_lines(path, decode_log), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        if not line.startswith("Ses"):
            skipped.append((n, SKIP_NOT_UTTERANCE))
            continue
        # XX ids are recognised by their first token alone: their lines carry no label, so the
        # rest of the line is not needed (and not validated).
        _, is_xx = _split_utterance_id(line.split()[0].rstrip(":"), dialog, where)
        if is_xx:
            skipped.append((n, SKIP_XX))
            continue
        m = TRANSCRIPT_RE.match(line.rstrip())
        if m is None:
            raise PipelineError(f"{where}: expected '<id> [start-end]: text', got {quote(line)}")
        utt_id, start, end = m.group(1), float(m.group(2)), float(m.group(3))
        if not (math.isfinite(start) and math.isfinite(end) and start <= end):
            raise PipelineError(
                f"{where}: expected times in seconds with start <= end, got [{m.group(2):.30}-{m.group(3):.30}]"
            )
        if utt_id in utterances:
            raise PipelineError(f"{where}: duplicate utterance {utt_id}")
        utterances[utt_id] = {"start": start, "end": end, "text": m.group(4).strip()}
    return utterances, skipped


# ---------------------------------------------------------------------------------------------
# Building labels.json
# ---------------------------------------------------------------------------------------------


def dialog_info(dialog: str, where: str) -> dict:
    """'Ses05M_script01_1b' -> {session 5, kind script, scenario script01_1b, script script01}."""
    meta = iemocap_dialog_meta(dialog)
    if meta is None:
        raise PipelineError(
            f"{where}: expected a dialog name like Ses01F_impro01 or Ses01F_script01_1, got {quote(dialog)}"
        )
    return {"session": session_of(dialog), **meta}


def find_dialogs(root: Path, skipped: Counter) -> list[tuple[int, str, Path]]:
    """-> sorted [(session, dialog, EmoEvaluation path)] over the SessionN folders present."""
    if not root.is_dir():
        raise PipelineError(f"{root}: IEMOCAP root not found (expected a folder with Session1..Session5)")
    sessions = sorted(int(p.name[7:]) for p in root.glob("Session*") if p.is_dir() and p.name[7:].isdigit())
    if not sessions:
        raise PipelineError(
            f"{root}: no Session<N> folders; expected the IEMOCAP layout "
            "Session1..Session5/dialog/{EmoEvaluation,transcriptions,wav}"
        )
    dialogs = []
    for s in sessions:
        emo_dir = root / f"Session{s}" / "dialog" / "EmoEvaluation"
        if not emo_dir.is_dir():
            raise PipelineError(f"{emo_dir}: EmoEvaluation folder not found")
        for path in sorted(emo_dir.glob("*.txt")):  # top level only: Categorical/, Attribute/ ... are per-evaluator
            if path.name.startswith("."):
                skipped[SKIP_HIDDEN] += 1
                continue
            info = dialog_info(path.stem, str(path))
            if info["session"] != s:
                raise PipelineError(f"{path}: dialog of session {info['session']} inside Session{s}")
            dialogs.append((s, path.stem, path))
        trans_dir = root / f"Session{s}" / "dialog" / "transcriptions"
        known = {d for _, d, _ in dialogs}
        for path in sorted(trans_dir.glob("*.txt")):
            if path.name.startswith("."):
                skipped[SKIP_HIDDEN] += 1
            elif path.stem not in known:
                skipped[SKIP_TRANSCRIPT_ONLY] += 1
    if not dialogs:
        raise PipelineError(
            f"{root}: no dialogs found (no EmoEvaluation/*.txt in Session{sessions[0]}"
            f"..Session{sessions[-1]}); empty corpus?"
        )
    return sorted(dialogs, key=lambda t: t[1])


def build_labels(iemocap_root, expect_standard: bool | None = None, label_set: str = DEFAULT_LABEL_SET) -> dict:
    """Read the corpus -> the content of labels.json (docs/FORMATS.md), each utterance's label its code's class in
    label_set (common.formats.LABEL_SETS; null for a code the set leaves out).

    expect_standard: None compares with the set's STANDARD_COUNTS when the corpus looks like the full
    release (151 dialogs in Sessions 1-5); True always compares; False never does.
    """
    lset = formats.label_set(label_set)
    root = Path(iemocap_root).resolve()
    skipped, decode_log = Counter(), Counter()
    transcript_times_differ = 0
    missing_wdseg, missing_wav = [], []
    dialogs = {}
    for s, dialog, emo_path in tqdm(
        find_dialogs(root, skipped), desc="step 1: dialogs", unit="dialog", file=sys.stdout
    ):
        info = dialog_info(dialog, str(emo_path))
        entries = parse_emo_evaluation(emo_path, decode_log)
        trans_path = root / f"Session{s}" / "dialog" / "transcriptions" / f"{dialog}.txt"
        if not trans_path.is_file():
            raise PipelineError(f"{trans_path}: transcription file not found for the labelled dialog in {emo_path}")
        transcript, trans_skipped = parse_transcriptions(trans_path, decode_log)
        for _, reason in trans_skipped:
            skipped[reason] += 1

        wav = f"Session{s}/dialog/wav/{dialog}.wav"
        if not (root / wav).is_file():
            missing_wav.append(dialog)
        fa_rel = f"Session{s}/sentences/ForcedAlignment/{dialog}"
        fa_dir = root / fa_rel
        wdseg_files = {p.name for p in fa_dir.iterdir()} if fa_dir.is_dir() else set()

        utterances = []
        for e in entries:
            if e["id"] not in transcript:
                raise PipelineError(f"{emo_path}: utterance {e['id']} has a label but no line in {trans_path}")
            t = transcript[e["id"]]
            if abs(t["start"] - e["start"]) > 0.01 or abs(t["end"] - e["end"]) > 0.01:
                transcript_times_differ += 1  # EmoEvaluation's times are used; counted for the record
            wdseg = f"{fa_rel}/{e['id']}.wdseg" if f"{e['id']}.wdseg" in wdseg_files else None
            speaker, _ = _split_utterance_id(e["id"], dialog, str(emo_path))
            utterances.append(
                {
                    "id": e["id"],
                    "start": e["start"],
                    "end": e["end"],
                    "speaker": speaker,
                    "code": e["code"],
                    "label": lset["codes"].get(e["code"]),
                    "text": t["text"],
                    "wdseg": wdseg,
                }
            )
        labelled = {e["id"] for e in entries}
        skipped[SKIP_NO_EMO] += sum(1 for utt_id in transcript if utt_id not in labelled)
        utterances.sort(key=lambda u: (u["start"], u["id"]))
        missing_wdseg += [u["id"] for u in utterances if u["wdseg"] is None]
        dialogs[dialog] = {**info, "wav": wav, "utterances": utterances}

    counts = count_utterances(dialogs, label_set)
    counts["skipped"] = {reason: n for reason, n in sorted(skipped.items()) if n}
    counts["missing"] = {"wdseg": len(missing_wdseg), "dialog_wav": len(missing_wav)}
    counts["missing_wdseg_ids"] = missing_wdseg
    counts["missing_wav_dialogs"] = missing_wav
    counts["transcript_times_differ"] = transcript_times_differ
    counts["text_encodings"] = dict(sorted(decode_log.items()))
    counts["standard"] = compare_with_standard(counts, expect_standard, STANDARD_COUNTS[label_set])
    named = {} if label_set == DEFAULT_LABEL_SET else {"label_set": label_set}  # absent: the default (unchanged)
    return {"corpus": str(root), "labels": list(lset["labels"]), **named, "dialogs": dialogs, "counts": counts}


def count_utterances(dialogs: dict, label_set: str = DEFAULT_LABEL_SET) -> dict:
    """Counts per class of label_set, per raw code and per session (common.formats.count_labels, keyed by
    IEMOCAP's codes)."""
    lset = LABEL_SETS[label_set]
    c = count_labels(dialogs, "code", lset["labels"])
    per_code, target_per_code = c.pop("per_raw"), c.pop("target_per_raw")
    c["per_code"] = {code: per_code[code] for code in IEMOCAP_CODES if per_code[code]}
    c["target_per_code"] = {code: target_per_code[code] for code in IEMOCAP_CODES if code in lset["codes"]}
    return c


def compare_with_standard(counts: dict, expect_standard: bool | None, standard: dict = IEMOCAP_STANDARD_COUNTS) -> dict:
    """Every difference between this corpus's counts and standard (the label set's STANDARD_COUNTS)."""
    looks_real = counts["dialogs"] == IEMOCAP_STANDARD_COUNTS["dialogs"] and sorted(
        int(s) for s in counts["dialogs_per_session"]
    ) == list(IEMOCAP_SESSIONS)
    applies = looks_real if expect_standard is None else expect_standard
    if expect_standard is None:
        why = (
            f"corpus has {counts['dialogs']} dialogs in sessions {','.join(counts['dialogs_per_session'])}; "
            f"the full release has {IEMOCAP_STANDARD_COUNTS['dialogs']} in 1-5"
        )
    else:
        why = "forced by --expect-standard " + ("yes" if expect_standard else "no")
    result = {"applies": applies, "why": why, "expected": standard, "differences": []}
    if not applies:
        return result
    found = {**counts, "missing_wdseg": counts["missing"]["wdseg"]}
    for key, expected in standard.items():
        got = found.get(key)
        if isinstance(expected, dict):
            for sub in expected:
                g = (got or {}).get(sub, 0)
                if g != expected[sub]:
                    result["differences"].append({"count": f"{key}.{sub}", "expected": expected[sub], "got": g})
        elif got != expected:
            result["differences"].append({"count": key, "expected": expected, "got": got})
    return result


# ---------------------------------------------------------------------------------------------
# Report and entry point
# ---------------------------------------------------------------------------------------------


def code_mapping_note(data: dict) -> str:
    """How the set maps the codes present: '(exc -> hap; fru, sur -> no label)' (the codes it merges, then those it
    leaves without a label, when the set leaves any of IEMOCAP's codes out)."""
    codes = LABEL_SETS[data.get("label_set", DEFAULT_LABEL_SET)]["codes"]
    per_code = data["counts"]["per_code"]
    parts = ["; ".join(f"{code} -> {lab}" for code, lab in codes.items() if code != lab)]
    if set(IEMOCAP_CODES) - set(codes):
        parts.append(", ".join(code for code in per_code if code not in codes) + " -> no label")
    return "  (" + "; ".join(parts) + ")"


def print_report(data: dict, out_path: Path) -> None:
    """Step 1's report: the counts per session and class, the codes, what was skipped or missing, the standard
    counts of the label set."""
    c, labels = data["counts"], data["labels"]
    print(
        f"read {data['corpus']}: {c['dialogs']} dialogs, {c['utterances']} labelled utterances "
        f"({c['target']} with a {len(labels)}-class label"
        + (f", label set {data['label_set']})" if "label_set" in data else ")")
    )
    header = f"{'session':>8} {'dialogs':>8} {'utts':>7} {'target':>7} " + " ".join(f"{lab:>6}" for lab in labels)
    print(header)
    for s, row in c["per_session"].items():
        print(
            f"{s:>8} {c['dialogs_per_session'][s]:>8} {row['utterances']:>7} {row['target']:>7} "
            + " ".join(f"{row[lab]:>6}" for lab in labels)
        )
    print(
        f"{'all':>8} {c['dialogs']:>8} {c['utterances']:>7} {c['target']:>7} "
        + " ".join(f"{c['per_label'][lab]:>6}" for lab in labels)
    )
    print("raw codes: " + ", ".join(f"{code} {n}" for code, n in c["per_code"].items()) + code_mapping_note(data))
    print(f"skipped: {sum(c['skipped'].values())}")
    for reason, n in c["skipped"].items():
        print(f"  {n:>6}  {reason}")
    print(
        f"missing .wdseg (wdseg null): {c['missing']['wdseg']}"
        + (
            f" ({', '.join(c['missing_wdseg_ids'][:5])}{' ...' if c['missing']['wdseg'] > 5 else ''})"
            if c["missing"]["wdseg"]
            else ""
        )
    )
    print(
        f"missing dialog wavs (step 2 will need them): {c['missing']['dialog_wav']}"
        + (
            f" ({', '.join(c['missing_wav_dialogs'][:5])}{' ...' if c['missing']['dialog_wav'] > 5 else ''})"
            if c["missing"]["dialog_wav"]
            else ""
        )
    )
    print(f"utterances whose transcript times differ from EmoEvaluation by > 0.01 s: {c['transcript_times_differ']}")
    print("text encodings: " + ", ".join(f"{enc} {n} files" for enc, n in c["text_encodings"].items()))
    std = c["standard"]
    if not std["applies"]:
        print(f"standard IEMOCAP counts: comparison does not apply ({std['why']})")
    elif not std["differences"]:
        n = sum(len(v) if isinstance(v, dict) else 1 for v in std["expected"].values())
        print(f"standard IEMOCAP counts: all {n} match ({std['why']})")
    else:
        print(f"standard IEMOCAP counts: {len(std['differences'])} differences ({std['why']}):")
        for d in std["differences"]:
            print(f"  {d['count']}: expected {d['expected']}, got {d['got']}")
    print(f"wrote {out_path}: {c['dialogs']} dialogs, {c['utterances']} utterances")


def preflight(iemocap, work, expect_standard: bool | None = None, label_set: str = DEFAULT_LABEL_SET) -> list:
    """--check: the corpus read exactly as a run reads it (build_labels, in memory), writing nothing
    -> common.checklist.CheckItem lines: the corpus and its counts; its dialog wavs (step 2 decodes them); the
    standard IEMOCAP counts, a FAIL on any difference when the comparison applies (the corpus looks
    like the full release, or --expect-standard yes; a run only reports them); the work folder."""
    import contextlib
    import io

    from common.checklist import CheckItem, check_disk

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the progress bar
            data = build_labels(iemocap, expect_standard=expect_standard, label_set=label_set)
    except PipelineError as e:
        return [CheckItem("corpus", False, f"{e} (--iemocap)")]
    c = data["counts"]
    items = [
        CheckItem(
            "corpus",
            True,
            f"{data['corpus']}: {c['dialogs']} dialogs in sessions "
            f"{','.join(c['dialogs_per_session'])}, {c['utterances']} labelled utterances, {c['target']} "
            f"in the {len(data['labels'])} classes ("
            + ", ".join(f"{lab} {c['per_label'][lab]}" for lab in data["labels"])
            + ")",
        )
    ]
    missing = c["missing_wav_dialogs"]
    items.append(
        CheckItem(
            "dialog wavs",
            not missing,
            f"all {c['dialogs']} present"
            if not missing
            else f"{len(missing)} missing ({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}): "
            "step 2 needs Session<N>/dialog/wav/<dialog>.wav; complete the corpus copy",
        )
    )
    std = c["standard"]
    if not std["applies"]:
        items.append(CheckItem("standard counts", True, f"comparison does not apply ({std['why']})"))
    elif not std["differences"]:
        n = sum(len(v) if isinstance(v, dict) else 1 for v in std["expected"].values())
        items.append(CheckItem("standard counts", True, f"all {n} match ({std['why']})"))
    else:
        diffs = std["differences"]
        items.append(
            CheckItem(
                "standard counts",
                False,
                f"{len(diffs)} differ ({std['why']}): "
                + "; ".join(f"{d['count']} expected {d['expected']}, got {d['got']}" for d in diffs[:6])
                + (" ..." if len(diffs) > 6 else "")
                + ": is the corpus copy complete? (--expect-standard no skips the comparison)",
            )
        )
    items.append(check_disk(work, 600 * c["utterances"], "labels.json"))  # ~0.4 KB per utterance record, rounded up
    return items


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--iemocap", default=defaults.CORPUS_DIR, help="IEMOCAP root (real or demo corpus)")
    parser.add_argument("--work", default=defaults.WORK_DIR, help="work directory; writes WORK/labels.json")
    parser.add_argument(
        "--expect-standard",
        choices=("auto", "yes", "no"),
        default="auto",
        help="compare with the standard IEMOCAP counts: auto = when the corpus has the full "
        "release's 151 dialogs in Sessions 1-5",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="preflight only: read the corpus, report its counts against the standard ones and "
        "the dialog wavs; write nothing; exit status 1 when the corpus is missing or unreadable, "
        "wavs are missing, or the comparison applies and a count differs",
    )
    parser.add_argument(
        "--label-set",
        choices=tuple(LABEL_SETS),
        default=DEFAULT_LABEL_SET,
        help="the classes: iemocap4 = the paper's hap (+exc), ang, sad, neu (other codes unlabelled); wu6 = Wu et "
        "al.'s hap (+exc), sad, ang, neu, oth (fru, sur, fea, dis, oth), xxx (no agreement): every labelled utterance",
    )
    args = parser.parse_args(argv)
    expect = {"auto": None, "yes": True, "no": False}[args.expect_standard]
    if args.check:
        from common.checklist import report_checks

        items = preflight(args.iemocap, args.work, expect, args.label_set)
        sys.exit(0 if report_checks(items, "step 1 preflight") else 1)
    data = build_labels(args.iemocap, expect_standard=expect, label_set=args.label_set)
    out_path = Path(args.work) / "labels.json"
    remove_stale_temp(out_path.parent, recursive=False)  # a killed write's leftover temporary file
    atomic_write_json(out_path, data)
    print_report(data, out_path)
    return data


if __name__ == "__main__":
    cli.run_main(main)
