"""Step 6: time-weighted emotion error rates, TEER and sTEER (paper Section IV-C, Table III).

Reads WORK/runs/<run>/predictions.json (step 5) and WORK/labels.json; writes teer.json in the run dir
(teer_authors.json with --authors; both with --also-authors): the summed error components, TEER, sTEER, EERa
and sEERa, per dialog and, for a fold run, per fold and pooled (docs/FORMATS.md). Every dialog the run's split
puts in the test set is scored, with or without system segments.

By default it follows the original definition of Wu, Zhang and Woodland (Interspeech 2023): emotions compared
by identity, system speakers mapped onto the reference speakers before sTEER, a 0.25 s collar, the reference's
extent as scoring region, and reference time without a 4-class label cut out of it. --authors reproduces the
authors' script (optimal label mapping, UNK for segments without a 4-class reference, ...);
--nontarget other --empty-dialogs skip counts as W-Wu's scorer does. The formulas and the counting rules:
docs/EXPERIMENTS.md ("TEER and sTEER"); how the three computations differ: docs/DEPARTURES.md.

    python teer_calculate.py --work preprocessed_iemocap --run NAME [--collar 0.25] [--authors]
    python teer_calculate.py --work W --run NAME --nontarget other --empty-dialogs skip   # W-Wu's scorer
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from common import cli, crosscorpus, defaults, fileio, formats, rundirs
from common.cli import PipelineError
from common.fileio import atomic_write_json, read_json
from common.formats import load_labels
from common.intervals import cover_counts, merge_intervals, subtract_intervals
from common.rundirs import fold_dirs, run_test_dialogs

OTHER = "other"  # reference label of non-target time under --nontarget other
UNK = "UNK"  # hypothesis label of segments without a 4-class reference under --authors (their script's name)

# ---------------------------------------------------------------------------------------------
# Interval sweep
# ---------------------------------------------------------------------------------------------

# Unions and differences of intervals (scoring regions, collars) are common.intervals.merge_intervals and
# common.intervals.subtract_intervals; the label counts per elementary piece below are the scorer's own.


def _label_counts(points, segments, labels):
    """[n_labels, n_pieces] counts of each label's segments over the elementary pieces."""
    index = {lab: i for i, lab in enumerate(labels)}
    out = np.zeros((len(labels), len(points) - 1), dtype=np.int64)
    if not segments:
        return out
    starts = np.array([s for s, _, _ in segments])
    ends = np.array([e for _, e, _ in segments])
    rows = np.array([index[lab] for _, _, lab in segments])
    delta = np.zeros((len(labels), len(points)), dtype=np.int64)
    np.add.at(delta, (rows, np.searchsorted(points, starts)), 1)
    np.add.at(delta, (rows, np.searchsorted(points, ends)), -1)
    return np.cumsum(delta, axis=1)[:, :-1]


def score_dialog(ref, hyp, uem, collar: float = 0.0, mapping: str = "identity") -> dict:
    """Error components of one dialog, in seconds.

    ref, hyp: [(start, end, label)]; uem: [(start, end)] scoring region; collar: seconds
    removed either side of each reference boundary. mapping "identity" = pyannote
    IdentificationErrorRate (Wu et al.'s TEER); "optimal" = DiarizationErrorRate (hypothesis
    labels first mapped one-to-one onto reference labels maximising their co-occurrence inside
    the scored region, as in the authors' script).
    Returns {"total", "missed", "false_alarm", "confusion", "correct", "scored", "mapping"}.
    """
    if mapping not in ("identity", "optimal"):
        raise ValueError(f"mapping must be 'identity' or 'optimal', got {mapping!r}")
    ref = [(float(s), float(e), lab) for s, e, lab in ref if e > s]
    hyp = [(float(s), float(e), lab) for s, e, lab in hyp if e > s]
    region = merge_intervals(uem)
    if collar > 0 and ref:
        bounds = np.array([t for s, e, _ in ref for t in (s, e)])
        region = subtract_intervals(region, np.stack([bounds - collar, bounds + collar], axis=1))
    result = {
        "total": 0.0,
        "missed": 0.0,
        "false_alarm": 0.0,
        "confusion": 0.0,
        "correct": 0.0,
        "scored": float((region[:, 1] - region[:, 0]).sum()) if len(region) else 0.0,
        "mapping": {},
    }
    if len(region) == 0:
        return result

    # Every boundary once, sorted; each elementary piece is wholly inside or outside the region.
    points = np.unique(np.concatenate([region.ravel(), [t for s, e, _ in ref + hyp for t in (s, e)]]))
    inside = cover_counts(points, region[:, 0], region[:, 1]) > 0
    dur = np.diff(points) * inside

    ref_labels = sorted({lab for _, _, lab in ref})
    hyp_labels = sorted({lab for _, _, lab in hyp})
    R = _label_counts(points, ref, ref_labels)
    H = _label_counts(points, hyp, hyp_labels)
    n_ref, n_hyp = R.sum(axis=0), H.sum(axis=0)

    if mapping == "identity":
        pairs = [(ref_labels.index(lab), j) for j, lab in enumerate(hyp_labels) if lab in ref_labels]
    else:
        cooccurrence = (H * dur) @ R.T  # [hyp label, ref label] seconds spoken together
        rows, cols = linear_sum_assignment(-cooccurrence) if cooccurrence.size else ([], [])
        pairs = [(c, r) for r, c in zip(rows, cols) if cooccurrence[r, c] > 0]
        result["mapping"] = {hyp_labels[j]: ref_labels[i] for i, j in pairs}
    # Largest matching of equal labels per piece: a label's reference and system copies pair up.
    n_correct = np.zeros_like(n_ref)
    for i, j in pairs:
        n_correct += np.minimum(R[i], H[j])

    result["total"] = float(np.dot(n_ref, dur))
    result["missed"] = float(np.dot(np.maximum(0, n_ref - n_hyp), dur))
    result["false_alarm"] = float(np.dot(np.maximum(0, n_hyp - n_ref), dur))
    result["confusion"] = float(np.dot(np.minimum(n_ref, n_hyp) - n_correct, dur))
    result["correct"] = float(np.dot(n_correct, dur))
    return result


def map_speakers(ref, hyp) -> dict:
    """One-to-one map of system speakers onto reference speakers with the largest total overlap.

    ref, hyp: [(start, end, speaker)]. Hungarian algorithm on the overlap matrix (seconds);
    pairs that never overlap are not mapped. Returns {system speaker: reference speaker}.
    """
    ref = [(s, e, x) for s, e, x in ref if e > s]
    hyp = [(s, e, x) for s, e, x in hyp if e > s]
    if not ref or not hyp:
        return {}
    points = np.unique([t for s, e, _ in ref + hyp for t in (s, e)])
    dur = np.diff(points)
    ref_spk, hyp_spk = sorted({x for *_, x in ref}), sorted({x for *_, x in hyp})
    overlap = (_label_counts(points, hyp, hyp_spk) * dur) @ _label_counts(points, ref, ref_spk).T
    rows, cols = linear_sum_assignment(-overlap)
    return {hyp_spk[r]: ref_spk[c] for r, c in zip(rows, cols) if overlap[r, c] > 0}


# ---------------------------------------------------------------------------------------------
# TEER over a set of dialogs
# ---------------------------------------------------------------------------------------------

COMPONENTS = ("total", "missed", "false_alarm", "confusion_emo", "correct_emo", "confusion_emo_spk", "correct_emo_spk")


def teer_dialog(
    utterances,
    segments,
    collar=0.25,
    uem="extent",
    nontarget="exclude",
    mapping="identity",
    speaker_mapping="overlap",
    unlabelled="pred",
    same_times="all",
) -> dict:
    """TEER components of one dialog.

    utterances: labels.json reference utterances ({"start","end","speaker","label"});
    segments: predictions.json segments ({"start","end","speaker","pred"}, and "label" for
    unlabelled="unk").
    speaker_mapping "overlap": system speakers renamed to reference speakers first (map_speakers);
    "none": sTEER labels use the raw system speaker names (the authors' computation, where the
    optimal label mapping does the speaker mapping jointly with the emotions).
    unlabelled "pred": every segment says its prediction; "unk": a segment whose label is null
    (no 4-class reference) says UNK instead (the authors' script; uses the reference).
    same_times "all": every segment and utterance counts; "last": of those with identical start
    and end only the last counts (a pyannote Annotation keyed by Segment, as the authors build it).
    """
    if unlabelled not in ("pred", "unk"):
        raise ValueError(f"unlabelled must be 'pred' or 'unk', got {unlabelled!r}")
    if same_times not in ("all", "last"):
        raise ValueError(f"same_times must be 'all' or 'last', got {same_times!r}")
    if not utterances:
        raise ValueError("a dialog without reference utterances cannot be scored")
    region = [_scoring_extent(utterances, segments, uem, nontarget)]
    ref_emo, ref_spk = _reference_labels(utterances, nontarget)
    if nontarget == "exclude":
        region = subtract_intervals(region, [(u["start"], u["end"]) for u in utterances if u["label"] is None])
    spk_map, hyp_emo, hyp_spk = _system_labels(utterances, segments, speaker_mapping, unlabelled)
    if same_times == "last":
        ref_emo, ref_spk, hyp_emo, hyp_spk = map(_last_of_same_times, (ref_emo, ref_spk, hyp_emo, hyp_spk))

    emo = score_dialog(ref_emo, hyp_emo, region, collar=collar, mapping=mapping)
    spk = score_dialog(ref_spk, hyp_spk, region, collar=collar, mapping=mapping)
    return {
        "total": emo["total"],
        "missed": emo["missed"],
        "false_alarm": emo["false_alarm"],
        "confusion_emo": emo["confusion"],
        "correct_emo": emo["correct"],
        "confusion_emo_spk": spk["confusion"],
        "correct_emo_spk": spk["correct"],
        "scored_region": emo["scored"],
        "speaker_map": spk_map,
        "label_map_emo": emo["mapping"],
        "label_map_emo_spk": spk["mapping"],
        "n_reference": len(utterances),
        "n_system": len(segments),
    }


def _scoring_extent(utterances, segments, uem: str, nontarget: str) -> tuple:
    """(start, end) of the dialog's scoring region before any cut: the reference's extent, widened to the
    system's speech for uem "union". The reference is every utterance, except under "drop" the labelled ones."""
    in_ref = [u for u in utterances if u["label"] is not None] if nontarget == "drop" else utterances
    if not in_ref:
        raise ValueError("a dialog without reference utterances cannot be scored")
    extent = (min(u["start"] for u in in_ref), max(u["end"] for u in in_ref))
    spoken = [s for s in segments if s["end"] > s["start"]]  # empty segments hold no speech (pyannote ignores them)
    if uem == "union" and spoken:
        extent = (min(extent[0], min(s["start"] for s in spoken)), max(extent[1], max(s["end"] for s in spoken)))
    elif uem not in ("extent", "union"):
        raise ValueError(f"uem must be 'extent' or 'union', got {uem!r}")
    return extent


def _reference_labels(utterances, nontarget: str) -> tuple[list, list]:
    """-> (emotion labels, speaker+emotion labels) of the reference, [(start, end, label)] each.

    An utterance without a label (no class of labels.json's set) is left out ("exclude": its time is cut from the
    region by the caller; "drop") or says OTHER ("other").
    """
    ref_emo, ref_spk = [], []
    for u in utterances:
        label = u["label"]
        if label is None:
            if nontarget == "exclude":
                continue  # cut out of the region by the caller
            if nontarget == "drop":
                continue
            if nontarget != "other":
                raise ValueError(f"nontarget must be exclude, other or drop, got {nontarget!r}")
            label = OTHER
        ref_emo.append((u["start"], u["end"], label))
        ref_spk.append((u["start"], u["end"], f"{u['speaker']}+{label}"))
    return ref_emo, ref_spk


def _system_labels(utterances, segments, speaker_mapping: str, unlabelled: str) -> tuple[dict, list, list]:
    """-> (speaker map, emotion labels, speaker+emotion labels) of the system, [(start, end, label)] each."""
    spk_map = {}
    if speaker_mapping == "overlap":
        spk_map = map_speakers(
            [(u["start"], u["end"], u["speaker"]) for u in utterances],
            [(s["start"], s["end"], s["speaker"]) for s in segments],
        )
    elif speaker_mapping != "none":
        raise ValueError(f"speaker_mapping must be 'overlap' or 'none', got {speaker_mapping!r}")
    said = [UNK if unlabelled == "unk" and s["label"] is None else s["pred"] for s in segments]
    hyp_emo = [(s["start"], s["end"], p) for s, p in zip(segments, said)]
    names = _system_speaker_names(utterances, segments, spk_map) if speaker_mapping == "overlap" else {}
    hyp_spk = [(s["start"], s["end"], f"{names.get(s['speaker'], s['speaker'])}+{p}") for s, p in zip(segments, said)]
    return spk_map, hyp_emo, hyp_spk


def _system_speaker_names(utterances, segments, spk_map: dict) -> dict:
    """{system speaker: its name for sTEER}: the mapped reference speaker, else (more system than reference
    speakers, or no overlap) a name no reference speaker has, so that an unmapped system speaker called like a
    reference speaker (e.g. the reference's own names from an oracle) is never credited with that speaker's time."""
    taken = {u["speaker"] for u in utterances}
    names = dict(spk_map)
    for spk in sorted({s["speaker"] for s in segments} - set(spk_map)):
        name = spk
        while name in taken:
            name += " (unmapped)"
        names[spk] = name
    return names


def _last_of_same_times(items):
    """[(start, end, label)] keeping, of items with identical (start, end), only the last one."""
    last = {(s, e): (s, e, lab) for s, e, lab in items}  # later items overwrite; dicts keep first-insertion order
    return list(last.values())


def rates(c: dict) -> dict:
    """TEER, sTEER, EERa, sEERa from summed components (the sums are divided once).

    The agreement time of EERa is the time where reference and system both have speech, counted
    per speaker pair in overlapped speech: correct + confusion = sum of min(n_ref, n_hyp) x dur.
    """

    def ratio(num, den):
        return num / den if den > 0 else None

    return {
        "TEER": ratio(c["missed"] + c["false_alarm"] + c["confusion_emo"], c["total"]),
        "sTEER": ratio(c["missed"] + c["false_alarm"] + c["confusion_emo_spk"], c["total"]),
        "EERa": ratio(c["confusion_emo"], c["confusion_emo"] + c["correct_emo"]),
        "sEERa": ratio(c["confusion_emo_spk"], c["confusion_emo_spk"] + c["correct_emo_spk"]),
    }


def score_predictions(predictions: dict, labels: dict, dialogs, settings: dict, where: str = "predictions") -> dict:
    """Score predictions.json against labels.json over `dialogs`; per-dialog breakdown + totals.

    settings: teer_dialog's keyword arguments plus "empty_dialogs": "missed" (a test dialog
    without any system segment is scored, all its reference speech missed) or "skip" (not scored,
    listed under skipped_dialogs; W-Wu's scorer and the authors' pipeline).
    """
    empty_dialogs = settings.get("empty_dialogs", "missed")
    if empty_dialogs not in ("missed", "skip"):
        raise ValueError(f"empty_dialogs must be 'missed' or 'skip', got {empty_dialogs!r}")
    dialog_settings = {k: v for k, v in settings.items() if k != "empty_dialogs"}
    required = ("dialog", "start", "end", "speaker", "pred") + (
        ("label",) if settings.get("unlabelled") == "unk" else ()
    )
    by_dialog: dict[str, list] = {d: [] for d in dialogs}
    outside = 0
    classes = formats.labels_of(labels)  # the target classes: labels.json's (its label set)
    segments = predictions.get("segments", []) if isinstance(predictions, dict) else None
    if not isinstance(segments, list):
        raise PipelineError(f"{where}: expected {{'segments': [...]}} (predictions.json)")
    for n, seg in enumerate(segments):
        if not isinstance(seg, dict):
            raise PipelineError(f"{where}: segment {n}: expected an object, got {type(seg).__name__}")
        missing = [k for k in required if k not in seg]
        if missing:
            raise PipelineError(f"{where}: segment {n} lacks {missing}; expected predictions.json segments")
        if seg["pred"] not in classes:
            raise PipelineError(
                f"{where}: segment {n} ({seg.get('id')}) has pred {seg['pred']!r:.40}, expected one of {classes}"
            )
        if "label" in seg and seg["label"] is not None and seg["label"] not in classes:
            raise PipelineError(
                f"{where}: segment {n} ({seg.get('id')}) has label {seg['label']!r:.40}, "
                f"expected one of {classes} or null"
            )
        if not (
            formats.is_finite_number(seg["start"])
            and formats.is_finite_number(seg["end"])
            and seg["start"] <= seg["end"]
        ):
            raise PipelineError(
                f"{where}: segment {n} ({seg.get('id')}): start {seg['start']!r:.40}, end "
                f"{seg['end']!r:.40}; expected finite seconds with start <= end"
            )
        if not isinstance(seg["dialog"], str) or not isinstance(seg["speaker"], str):
            raise PipelineError(f"{where}: segment {n} ({seg.get('id')}): dialog and speaker must be strings")
        if seg["dialog"] in by_dialog:
            by_dialog[seg["dialog"]].append(seg)
        else:
            outside += 1
    sums = dict.fromkeys(COMPONENTS, 0.0)
    per_dialog, skipped = {}, {}
    for d in dialogs:
        if d not in labels["dialogs"]:
            raise PipelineError(f"{where}: the test dialog {d!r} of this run is not in labels.json")
        utterances = labels["dialogs"][d]["utterances"]
        if not utterances:
            skipped[d] = "no reference utterances"
            continue
        if not any(u["label"] is not None for u in utterances) and settings["nontarget"] in ("exclude", "drop"):
            skipped[d] = "no reference utterance with a 4-class label"
            continue
        if not by_dialog[d] and empty_dialogs == "skip":
            skipped[d] = "no system segment (--empty-dialogs skip)"
            continue
        comp = teer_dialog(utterances, by_dialog[d], **dialog_settings)
        per_dialog[d] = {**comp, **rates(comp)}
        for k in COMPONENTS:
            sums[k] += comp[k]
    return {
        "totals": sums,
        **rates(sums),
        "n_dialogs": len(per_dialog),
        "n_segments": sum(len(v) for v in by_dialog.values()),
        "segments_outside_test_dialogs": outside,
        "skipped_dialogs": skipped,
        "missing_dialogs": [d for d in dialogs if not by_dialog[d]],
        "dialogs": per_dialog,
    }


def settings_from_args(args) -> dict:
    """The scorer's settings: ours from the flags, or the authors' script's (--authors overrides them)."""
    if args.authors:
        return {
            "collar": 0.0,
            "uem": "union",
            "nontarget": "drop",
            "mapping": "optimal",
            "speaker_mapping": "none",
            "unlabelled": "unk",
            "same_times": "last",
            "empty_dialogs": "skip",
        }
    return {
        "collar": args.collar,
        "uem": args.uem,
        "nontarget": args.nontarget,
        "mapping": "identity",
        "speaker_mapping": "overlap",
        "unlabelled": "pred",
        "same_times": "all",
        "empty_dialogs": args.empty_dialogs,
    }


def score_run(run_dir: Path, labels: dict, settings: dict) -> dict:
    pred_path = run_dir / "predictions.json"
    if not pred_path.is_file():
        raise PipelineError(f"{pred_path}: not found; run step 5 first: python evaluate.py --run {run_dir.name}")
    predictions = read_json(pred_path, "predictions file")
    dialogs, source = run_test_dialogs(run_dir, predictions, labels)
    result = score_predictions(predictions, labels, dialogs, settings, where=str(pred_path))
    print(
        f"  read {pred_path} ({result['n_segments']} segments in {len(dialogs)} test dialogs from {source}); "
        f"scored {result['n_dialogs']} dialogs, skipped {len(result['skipped_dialogs'])}"
        + (
            f", ignored {result['segments_outside_test_dialogs']} segments outside the test dialogs"
            if result["segments_outside_test_dialogs"]
            else ""
        )
    )
    for d, why in result["skipped_dialogs"].items():
        print(f"    skipped {d}: {why}")
    missed = [d for d in result["missing_dialogs"] if d not in result["skipped_dialogs"]]
    if missed:
        print(
            f"    {len(missed)} test dialogs without any system segment scored as all missed: {', '.join(missed[:5])}"
            + (" ..." if len(missed) > 5 else "")
        )
    return result


def pool(results: list[dict]) -> dict:
    """Sum the components of several folds and divide once."""
    sums = {k: sum(r["totals"][k] for r in results) for k in COMPONENTS}
    return {
        "totals": sums,
        **rates(sums),
        "n_dialogs": sum(r["n_dialogs"] for r in results),
        "missing_dialogs": sorted({d for r in results for d in r.get("missing_dialogs", [])}),
    }


def report(name: str, r: dict) -> None:
    t = r["totals"]

    def pct(x):
        return "n/a" if x is None else f"{100 * x:6.2f}%"

    print(f"{name}: {r['n_dialogs']} dialogs, reference speech scored {t['total']:.2f} s")
    print(
        f"  MS {t['missed']:.2f} s  FA {t['false_alarm']:.2f} s  CONF_emo {t['confusion_emo']:.2f} s  "
        f"CONF_emo+spk {t['confusion_emo_spk']:.2f} s"
    )
    print(f"  TEER {pct(r['TEER'])}  sTEER {pct(r['sTEER'])}  EERa {pct(r['EERa'])}  sEERa {pct(r['sEERa'])}")


def main(argv=None) -> dict:
    p = _parser()
    args = p.parse_args(argv)
    crosscorpus.check_eval_args(p, args)
    if not args.collar >= 0 or args.collar == float("inf"):  # also NaN
        p.error(f"--collar {args.collar}: expected a finite number of seconds >= 0")
    if args.out and (len(args.run) > 1 or args.also_authors):
        p.error("--out names one file: use it with one --run and without --also-authors")
    if args.eval_work is not None:
        return score_cross(args)
    work = Path(args.work)
    labels, checks = _load_runs(work, args)
    semantics = [args.authors] + ([True] if args.also_authors and not args.authors else [])
    results = {}
    for name in args.run:
        for authors in semantics:
            results[name, authors] = score_named_run(
                work, name, labels, argparse.Namespace(**{**vars(args), "authors": authors}), checks[name]
            )
    return results[args.run[0], semantics[0]] if len(results) == 1 else results


def score_cross(args) -> dict:
    """--eval-work: teer*.json of each run's cross-corpus predictions (evaluate.py --eval-work) in
    RUN/eval/<name>/<split>/, scored on the other work dir's labels -> {(run, split, authors): result}."""
    work = Path(args.work)
    train_labels, checks = _load_runs(work, args)
    labels, record = crosscorpus.load_eval_labels(args.eval_work, train_labels, args.label_map)
    print(crosscorpus.short(record))
    semantics = [args.authors] + ([True] if args.also_authors and not args.authors else [])
    results = {}
    for name in args.run:
        if fold_dirs(work / "runs" / name):
            raise PipelineError(
                f"{work / 'runs' / name}: a cross-validation run; cross-corpus scoring takes single runs"
            )
        for split in crosscorpus.eval_splits(args.eval_split):
            for authors in semantics:
                a = argparse.Namespace(**{**vars(args), "authors": authors})
                results[name, split, authors] = score_cross_split(work, name, split, labels, record, a, checks[name])
    return next(iter(results.values())) if len(results) == 1 else results


def score_cross_split(work: Path, name: str, split: str, labels: dict, record: dict, args, data_check: dict) -> dict:
    """One run's cross-corpus predictions of one split scored; teer.json (teer_authors.json) written beside them,
    with the "cross_corpus" record of the predictions (B's data checked unchanged since evaluate.py)."""
    folder = crosscorpus.eval_dir(work / "runs" / name, args.eval_name, split)
    pred_path = folder / "predictions.json"
    if not pred_path.is_file():
        raise PipelineError(
            f"{pred_path}: not found; run step 5 first: python evaluate.py --work {work} --run {name} "
            f"--eval-work {args.eval_work} --eval-name {args.eval_name}"
        )
    predictions = read_json(pred_path, "predictions file")
    cross = predictions.get("cross_corpus") or {}
    if cross.get("label_map") != record["label_map"] or not isinstance(predictions.get("dialogs"), list):
        raise PipelineError(
            f"{pred_path}: made with the label map {cross.get('label_map')}, not {record['label_map']} "
            "(or not a cross-corpus predictions file); run evaluate.py with the same --label-map"
        )
    recorded = cross.get("eval_data") or {}
    current = crosscorpus.eval_identity(args.eval_work, recorded.get("pipe"), recorded.get("variant"),
                                        predictions["dialogs"])  # fmt: skip
    crosscorpus.check_same_eval_data(recorded, current, str(pred_path))
    settings = settings_from_args(args)
    t0 = time.perf_counter()
    result = score_predictions(predictions, labels, predictions["dialogs"], settings, where=str(pred_path))
    note = formats.demo_note(labels)
    result = {
        "run": name,
        "split": split,
        "cross_corpus": {**cross, "eval_data": current},
        **({"note": note} if note else {}),
        "settings": settings,
        "semantics": "authors" if args.authors else "wu2023",
        "data_check": data_check,
        **result,
        "seconds": time.perf_counter() - t0,
    }
    out = folder / (args.out or ("teer_authors.json" if args.authors else "teer.json"))
    atomic_write_json(out, result)
    report(f"{name} on {args.eval_name} ({split})", result)
    print(f"wrote {out}")
    return result


def _parser() -> argparse.ArgumentParser:
    """The command line of step 6."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("--work", default=defaults.WORK_DIR, help="work directory (default: %(default)s)")
    p.add_argument(
        "--run",
        required=True,
        nargs="+",
        help="run name(s): WORK/runs/<run>/ holds predictions.json (step 5); several runs are scored in turn",
    )
    p.add_argument(
        "--collar",
        type=float,
        default=0.25,
        help="seconds not scored either side of each reference boundary (default: %(default)s, Wu et al.)",
    )
    p.add_argument(
        "--uem",
        choices=("extent", "union"),
        default="extent",
        help="scoring region per dialog: the reference's extent, or the union of reference and system extents",
    )
    p.add_argument(
        "--nontarget",
        choices=("exclude", "other", "drop"),
        default="exclude",
        help="reference time without a 4-class label: cut from the scoring region (default), "
        "kept as label 'other' that no prediction matches, or dropped from the reference only (FA there)",
    )
    p.add_argument(
        "--empty-dialogs",
        choices=("missed", "skip"),
        default="missed",
        help="test dialogs without any system segment: scored as all missed (default), or left out "
        "as W-Wu's scorer does (it scores only the dialogs in the system output)",
    )
    p.add_argument(
        "--authors",
        action="store_true",
        help="reproduce the authors' script: optimal label mapping (DiarizationErrorRate), collar 0, "
        "union UEM, non-target dropped, dialogs without system segments skipped, and segments "
        "without a 4-class reference labelled UNK instead of their prediction (this uses reference "
        "information: which segments overlap labelled speech); overrides "
        "--collar/--uem/--nontarget/--empty-dialogs; writes teer_authors.json",
    )
    p.add_argument(
        "--also-authors",
        action="store_true",
        help="write both teer.json (the flags' settings) and teer_authors.json (--authors) in one go",
    )
    p.add_argument(
        "--out",
        default=None,
        help="output file name in the run dir (default teer.json, teer_authors.json with --authors)",
    )
    p.add_argument(
        rundirs.ALLOW_CHANGED_DATA,
        action="store_true",
        help="score a run even when labels.json, its step-3 config or cache files changed since it was "
        "trained (refused otherwise); teer.json data_check records it",
    )
    crosscorpus.add_eval_flags(p)
    return p


def _load_runs(work: Path, args) -> tuple[dict, dict]:
    """Check that every --run exists, read labels.json and check each run's data -> (labels, {run: data check}).

    Every run is bound to its data: all are checked before any is scored.
    """
    for name in args.run:
        if not (work / "runs" / name).is_dir():
            raise PipelineError(f"{work / 'runs' / name}: run directory not found")
    labels = load_labels(work)
    print(f"read {work / 'labels.json'} ({len(labels['dialogs'])} dialogs)")
    checks = {
        name: rundirs.check_run_data(work / "runs" / name, work / "labels.json", args.allow_changed_data)
        for name in args.run
    }  # every run bound to its data: all checked before any is scored
    for name, check in checks.items():
        if check["changed"]:
            print(
                f"WARNING {name}: scored on changed data ({rundirs.ALLOW_CHANGED_DATA}): {'; '.join(check['changed'])}"
            )
    return labels, checks


def score_named_run(work: Path, name: str, labels: dict, args, data_check: dict | None = None) -> dict:
    """Score WORK/runs/<name>/ (each fold, then all folds pooled) and write its teer*.json (with
    data_check, common.rundirs.check_run_data's record)."""
    settings = settings_from_args(args)
    run_dir = work / "runs" / name
    fileio.remove_stale_temp(run_dir)  # temporary files of a killed run (its folds' too)
    print(f"{name}: settings {settings}")
    t0 = time.perf_counter()
    folds = fold_dirs(run_dir)
    if folds:
        per_fold = {}
        for f in folds:
            per_fold[f.name] = score_run(f, labels, settings)
        result = {"folds": per_fold, **pool(list(per_fold.values()))}
    else:
        result = score_run(run_dir, labels, settings)
    elapsed = time.perf_counter() - t0

    note = formats.demo_note(labels)
    result = {
        "run": name,
        **({"note": note} if note else {}),
        "settings": settings,
        "semantics": "authors" if args.authors else "wu2023",
        **({"data_check": data_check} if data_check else {}),
        **result,
        "seconds": elapsed,
    }
    out = run_dir / (args.out or ("teer_authors.json" if args.authors else "teer.json"))
    atomic_write_json(out, result)
    for name, r in result.get("folds", {}).items():
        report(name, r)
    report("pooled" if folds else name, result)
    print(f"scored in {elapsed:.3f} s; wrote {out}")
    if note:
        print(note)
    return result


if __name__ == "__main__":
    cli.run_main(main)
