"""Step 6, teer_calculate.py: hand-computed TEER components, the flaw of optimal mapping on
emotions, speaker mapping for sTEER, and agreement with pyannote.metrics on random annotations."""

import numpy as np
import pytest
from pyannote.core import Annotation, Segment, Timeline
from pyannote.metrics.diarization import DiarizationErrorRate
from pyannote.metrics.identification import IdentificationErrorRate

import teer_calculate as tc
from common import formats
from common.cli import PipelineError
from common.fileio import atomic_write_json, read_json

DEFAULT = dict(collar=0.25, uem="extent", nontarget="exclude", mapping="identity", speaker_mapping="overlap")
AUTHORS = dict(
    collar=0.0,
    uem="union",
    nontarget="drop",
    mapping="optimal",
    speaker_mapping="none",
    unlabelled="unk",
    same_times="last",
)


def utt(start, end, speaker, label):
    return {"id": f"u{start}", "start": start, "end": end, "speaker": speaker, "label": label}


def seg(start, end, speaker, pred, dialog="Ses05F_impro01", label=None):
    """A predictions.json segment; label = its 4-class reference from step 3 (None: none)."""
    return {
        "id": f"s{start}",
        "dialog": dialog,
        "start": start,
        "end": end,
        "speaker": speaker,
        "pred": pred,
        "label": label,
        "text": "",
    }


# Reference: F neu [0, 4], M sad [3, 6] (overlapping in [3, 4]).
# System:    SPEAKER_00 neu [0.5, 3.5], SPEAKER_01 hap [3.5, 7].
REF = [(0.0, 4.0, "neu"), (3.0, 6.0, "sad")]
HYP = [(0.5, 3.5, "neu"), (3.5, 7.0, "hap")]


def test_known_answer_no_collar_reference_extent():
    # [0,.5] MS .5 | [.5,3] correct 2.5 | [3,3.5] 2 ref vs neu: MS .5 + correct .5
    # [3.5,4] neu+sad vs hap: MS .5 + CONF .5 | [4,6] sad vs hap: CONF 2 | [6,7] outside the extent
    c = tc.score_dialog(REF, HYP, [(0.0, 6.0)], collar=0.0)
    assert c["total"] == pytest.approx(7.0)
    assert c["missed"] == pytest.approx(1.5)
    assert c["false_alarm"] == pytest.approx(0.0)
    assert c["confusion"] == pytest.approx(2.5)
    assert c["correct"] == pytest.approx(3.0)


def test_known_answer_union_uem_counts_false_alarm_after_reference():
    c = tc.score_dialog(REF, HYP, [(0.0, 7.0)], collar=0.0)
    assert (c["total"], c["false_alarm"], c["missed"], c["confusion"]) == pytest.approx((7.0, 1.0, 1.5, 2.5))


def test_known_answer_collar_is_per_side():
    # Boundaries 0, 3, 4, 6 lose +-0.25 s: scored [.25,2.75] [3.25,3.75] [4.25,5.75] within [0,6].
    # [.25,.5] MS .25 | [.5,2.75] correct 2.25 | [3.25,3.5] MS .25 + correct .25
    # [3.5,3.75] MS .25 + CONF .25 | [4.25,5.75] CONF 1.5
    c = tc.score_dialog(REF, HYP, [(0.0, 6.0)], collar=0.25)
    assert c["scored"] == pytest.approx(2.5 + 0.5 + 1.5)
    assert c["total"] == pytest.approx(5.0)
    assert c["missed"] == pytest.approx(0.75)
    assert c["confusion"] == pytest.approx(1.75)
    assert c["correct"] == pytest.approx(2.5)
    r = tc.rates(
        {
            "total": 5.0,
            "missed": 0.75,
            "false_alarm": 0.0,
            "confusion_emo": 1.75,
            "correct_emo": 2.5,
            "confusion_emo_spk": 1.75,
            "correct_emo_spk": 2.5,
        }
    )
    assert r["TEER"] == pytest.approx(0.5) and r["EERa"] == pytest.approx(1.75 / 4.25)


def test_overlap_with_identical_labels_matches_each_copy_once():
    # Both actors neutral at once, system says neutral once: one copy correct, one missed.
    c = tc.score_dialog([(0, 2, "neu"), (0, 2, "neu")], [(0, 2, "neu")], [(0, 2)])
    assert (c["total"], c["correct"], c["missed"], c["confusion"]) == pytest.approx((4, 2, 2, 0))
    # Two system segments saying neu and hap over one "hap": hap matched, neu a false alarm.
    c = tc.score_dialog([(0, 2, "hap")], [(0, 2, "neu"), (0, 2, "hap")], [(0, 2)])
    assert (c["correct"], c["false_alarm"], c["confusion"]) == pytest.approx((2, 2, 0))


def test_speaker_mapping_by_overlap_and_steer_known_answer():
    # Reference F neu [0,2], M neu [2,4]. System SPEAKER_01 [0,3] (mostly F), SPEAKER_00 [3,4] (M),
    # SPEAKER_02 [4,4.5] overlaps no reference speaker -> unmapped.
    ref = [utt(0, 2, "F", "neu"), utt(2, 4, "M", "neu")]
    hyp = [seg(0, 3, "SPEAKER_01", "neu"), seg(3, 4, "SPEAKER_00", "neu"), seg(4, 4.5, "SPEAKER_02", "neu")]
    spk = tc.map_speakers(
        [(u["start"], u["end"], u["speaker"]) for u in ref], [(s["start"], s["end"], s["speaker"]) for s in hyp]
    )
    assert spk == {"SPEAKER_01": "F", "SPEAKER_00": "M"}
    d = tc.teer_dialog(ref, hyp, **{**DEFAULT, "collar": 0.0})
    # Emotions all right; in [2,3] SPEAKER_01 (= F) speaks where M does: speaker confusion 1 s.
    assert (d["total"], d["missed"], d["false_alarm"], d["confusion_emo"]) == pytest.approx((4, 0, 0, 0))
    assert d["confusion_emo_spk"] == pytest.approx(1.0)
    r = tc.rates(d)
    assert r["TEER"] == pytest.approx(0.0) and r["sTEER"] == pytest.approx(0.25)


def test_nontarget_reference_time_options():
    ref = [utt(0, 2, "F", "neu"), utt(2, 4, "M", None)]  # M's utterance is e.g. "fru"
    hyp = [seg(0, 4, "SPEAKER_00", "neu")]
    base = {**DEFAULT, "collar": 0.0}
    excl = tc.teer_dialog(ref, hyp, **base)  # [2,4] cut from the region
    assert (excl["total"], excl["false_alarm"], excl["confusion_emo"]) == pytest.approx((2, 0, 0))
    other = tc.teer_dialog(ref, hyp, **{**base, "nontarget": "other"})  # "other" never matched
    assert (other["total"], other["confusion_emo"]) == pytest.approx((4, 2))
    drop = tc.teer_dialog(ref, hyp, **{**base, "nontarget": "drop", "uem": "union"})  # FA there
    assert (drop["total"], drop["false_alarm"]) == pytest.approx((2, 2))


def make_run(tmp_path, utterances, segments, dialog="Ses05F_impro01", run="r", fold=None):
    work = tmp_path / "work"
    labels_path = work / "labels.json"
    labels = (
        read_json(labels_path) if labels_path.is_file() else {"labels": ["hap", "ang", "sad", "neu"], "dialogs": {}}
    )
    labels["dialogs"][dialog] = {"session": formats.session_of(dialog), "utterances": utterances}
    atomic_write_json(labels_path, labels)
    run_dir = work / "runs" / run / (fold or "")
    atomic_write_json(run_dir / "config.json", {"split": {"test": [dialog]}})
    atomic_write_json(run_dir / "predictions.json", {"run": run, "split": "test", "segments": segments})
    return work


def test_optimal_mapping_forgives_consistently_swapped_emotions(tmp_path):
    """The flaw of the authors' computation: always "hap" for "sad" and "sad" for "hap" is perfect
    under optimal label mapping and entirely wrong by identity."""
    truth = ["sad", "hap", "sad", "hap", "sad", "neu"]
    swap = {"sad": "hap", "hap": "sad", "neu": "neu"}
    ref = [utt(3 * i, 3 * i + 2, "FM"[i % 2], lab) for i, lab in enumerate(truth)]
    hyp = [seg(3 * i, 3 * i + 2, f"SPEAKER_0{i % 2}", swap[lab], label=lab) for i, lab in enumerate(truth)]
    work = make_run(tmp_path, ref, hyp)
    ours = tc.main(["--work", str(work), "--run", "r"])
    theirs = tc.main(["--work", str(work), "--run", "r", "--authors"])
    # Default: 0.25 s collars leave 1.5 s of each 2 s utterance; 5 of 6 utterances swapped.
    assert ours["totals"]["total"] == pytest.approx(6 * 1.5)
    assert ours["TEER"] == pytest.approx(5 / 6) and ours["sTEER"] == pytest.approx(5 / 6)
    assert theirs["TEER"] == pytest.approx(0.0) and theirs["sTEER"] == pytest.approx(0.0)
    assert (work / "runs/r/teer.json").is_file() and (work / "runs/r/teer_authors.json").is_file()
    assert read_json(work / "runs/r/teer.json")["dialogs"]["Ses05F_impro01"]["speaker_map"] == {
        "SPEAKER_00": "F",
        "SPEAKER_01": "M",
    }


def test_multifold_components_pooled_then_divided_once(tmp_path):
    # fold1: 2 s reference all correct; fold2: 6 s reference all confused -> pooled TEER 6/8, not mean(0, 1).
    make_run(
        tmp_path,
        [utt(0, 2, "F", "neu")],
        [seg(0, 2, "SPEAKER_00", "neu", "Ses01F_impro01")],
        dialog="Ses01F_impro01",
        fold="fold1",
    )
    work = make_run(tmp_path, [utt(0, 6, "M", "ang")], [seg(0, 6, "SPEAKER_00", "sad")], fold="fold2")
    atomic_write_json(work / "runs/r/config.json", {"folds": ["fold1", "fold2"]})
    out = tc.main(["--work", str(work), "--run", "r", "--collar", "0"])
    assert out["folds"]["fold1"]["TEER"] == pytest.approx(0.0) and out["folds"]["fold2"]["TEER"] == pytest.approx(1.0)
    assert out["TEER"] == pytest.approx(6 / 8) and out["totals"]["total"] == pytest.approx(8.0)


def test_bad_prediction_label_names_the_file(tmp_path):
    work = make_run(tmp_path, [utt(0, 2, "F", "neu")], [seg(0, 2, "SPEAKER_00", "happy")])
    with pytest.raises(PipelineError, match="predictions.json.*'happy'"):
        tc.main(["--work", str(work), "--run", "r"])


# --- agreement with pyannote.metrics ---------------------------------------------------------


def annotation(segments):
    a = Annotation(uri="d")
    for i, (s, e, lab) in enumerate(segments):
        a[Segment(s, e), i] = lab
    return a


def random_segments(rng, n, labels, span=40.0):
    starts = rng.uniform(0, span, n)
    return [(s, s + rng.uniform(0.2, 6.0), str(rng.choice(labels))) for s in starts]


COMPONENT_NAMES = {
    "total": "total",
    "missed": "missed detection",
    "false_alarm": "false alarm",
    "confusion": "confusion",
    "correct": "correct",
}


@pytest.mark.parametrize("seed", range(4))
def test_agrees_with_pyannote_identification_and_diarization_error_rate(seed):
    rng = np.random.default_rng(seed)
    for _ in range(15):
        ref = random_segments(rng, rng.integers(1, 12), ["hap", "ang", "sad", "neu"])
        hyp = random_segments(rng, rng.integers(0, 12), ["hap", "ang", "sad", "neu", "F+sad"])
        a, b = sorted(rng.uniform(-2, 45, 2))
        uem = [(a, b), (b + 1.0, b + 8.0)]  # two-part region
        collar = float(rng.choice([0.0, 0.25, rng.uniform(0.01, 1.0)]))
        for mapping, metric in (("identity", IdentificationErrorRate), ("optimal", DiarizationErrorRate)):
            # pyannote's collar is the total width centred on a boundary: 2 x ours.
            expected = metric(collar=2 * collar).compute_components(
                annotation(ref), annotation(hyp), uem=Timeline([Segment(*u) for u in uem], uri="d")
            )
            got = tc.score_dialog(ref, hyp, uem, collar=collar, mapping=mapping)
            for ours, theirs in COMPONENT_NAMES.items():
                assert got[ours] == pytest.approx(expected[theirs], abs=1e-9), (mapping, ours)


def their_annotation(items):
    """An Annotation built as the authors' script builds it: annotation[Segment(start, end)] = label,
    so a second item with the same start and end replaces the first."""
    a = Annotation(uri="d")
    for s, e, lab in items:
        a[Segment(s, e)] = lab
    return a


def their_components(utterances, segments):
    """The authors' teer_calculate.py on one dialog, with pyannote: target-only reference, "UNK" for
    segments without a prediction (= without a 4-class reference), uem = union of the extents,
    DiarizationErrorRate on speech / emotion / emotion_speaker annotations."""
    target = [u for u in utterances if u["label"] is not None]
    said = [s["pred"] if s["label"] is not None else "UNK" for s in segments]
    ref_speech = their_annotation([(u["start"], u["end"], "speech") for u in target])
    ref_emo = their_annotation([(u["start"], u["end"], u["label"]) for u in target])
    ref_spk = their_annotation([(u["start"], u["end"], f"{u['label']}_{u['speaker']}") for u in target])
    hyp_speech = their_annotation([(s["start"], s["end"], "speech") for s in segments])
    hyp_emo = their_annotation([(s["start"], s["end"], p) for s, p in zip(segments, said)])
    hyp_spk = their_annotation([(s["start"], s["end"], f"{p}_{s['speaker']}") for s, p in zip(segments, said)])
    uem = ref_speech.get_timeline().extent() | hyp_speech.get_timeline().extent()
    der = DiarizationErrorRate()
    speech = der.compute_components(ref_speech, hyp_speech, uem=uem)
    emo = der.compute_components(ref_emo, hyp_emo, uem=uem)
    spk = der.compute_components(ref_spk, hyp_spk, uem=uem)
    return {
        "total": speech["total"],
        "missed": speech["missed detection"],
        "false_alarm": speech["false alarm"],
        "confusion_emo": emo["confusion"],
        "correct_emo": emo["correct"],
        "confusion_emo_spk": spk["confusion"],
        "correct_emo_spk": spk["correct"],
    }


@pytest.mark.parametrize("seed", range(3))
def test_authors_option_equals_their_pyannote_computation(seed):
    """--authors on one dialog == the authors' script's pyannote computation, including the UNK
    hypothesis label for segments without a 4-class reference and Annotation keys that collapse
    items with identical times."""
    rng = np.random.default_rng(seed)
    utterances = [
        utt(
            float(s),
            float(s + rng.uniform(0.5, 5)),
            str(rng.choice(["F", "M"])),
            rng.choice(["hap", "ang", "sad", "neu", None]),
        )
        for s in np.sort(rng.uniform(0, 50, 14))
    ]
    segments = [
        seg(
            float(s),
            float(s + rng.uniform(0.5, 6)),
            f"SPEAKER_0{rng.integers(3)}",
            str(rng.choice(["hap", "ang", "sad", "neu"])),
            label=rng.choice(["hap", None]),
        )
        for s in rng.uniform(0, 55, 12)
    ]
    # Identical times: a second utterance and a second segment on top of existing ones.
    first = next(u for u in utterances if u["label"] is not None)
    utterances.append({**utt(first["start"], first["end"], "M", "sad"), "id": "dup"})
    segments.append({**segments[0], "pred": "ang", "label": "ang", "speaker": "SPEAKER_09"})
    assert any(s["label"] is None for s in segments)  # the case has UNK segments
    got = tc.teer_dialog(utterances, segments, **AUTHORS)
    expected = their_components(utterances, segments)
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, abs=1e-9), k
    # Both rules matter: without them the numbers differ from the authors' script.
    for rule in ({"unlabelled": "pred"}, {"same_times": "all"}):
        other = tc.teer_dialog(utterances, segments, **{**AUTHORS, **rule})
        assert any(abs(other[k] - v) > 1e-6 for k, v in expected.items()), rule


def authors_case(with_taken_label):
    """A dialog scored by hand under --authors (times in s):
    reference  F hap [0,4]   M sad [5,9]   M fru [10,12] (no 4-class label)   F ang [13,13.08]
               (+ F hap [20,20.08] if with_taken_label)
    system     SPEAKER_00 hap [0,4] (label hap)     SPEAKER_01 sad [5,9] (label sad)
               SPEAKER_01 neu [10,12] (label null: only fru under it)
               SPEAKER_00 sad [12.9,13.08] (label null: 0.08 s of ang is not > 0.1 s)
               (+ SPEAKER_00 hap [19.95,20.08], label null)
    """
    ref = [utt(0, 4, "F", "hap"), utt(5, 9, "M", "sad"), utt(10, 12, "M", None), utt(13, 13.08, "F", "ang")]
    hyp = [
        seg(0, 4, "SPEAKER_00", "hap", label="hap"),
        seg(5, 9, "SPEAKER_01", "sad", label="sad"),
        seg(10, 12, "SPEAKER_01", "neu"),
        seg(12.9, 13.08, "SPEAKER_00", "sad"),
    ]
    if with_taken_label:
        ref.append(utt(20, 20.08, "F", "hap"))
        hyp.append(seg(19.95, 20.08, "SPEAKER_00", "hap"))
    return ref, hyp


def test_authors_unk_known_answers(tmp_path):
    # Without the last pair. UEM [0, 13.08]; labelled reference 4 + 4 + 0.08 = 8.08 s; fru dropped.
    # FA: [10,12] 2 s + [12.9,13] 0.1 s = 2.1 s; nothing missed.
    # UNK: hyp labels hap, sad, UNK; UNK co-occurs only with ang (0.08 s), so the Hungarian mapping
    # pairs UNK -> ang and [13,13.08] counts as correct: CONF_emo 0. (Its prediction "sad" would be
    # mapped to sad and be wrong there: CONF_emo 0.08.) emotion_speaker: SPEAKER_00+UNK -> F+ang, 0.
    ref, hyp = authors_case(with_taken_label=False)
    unk = tc.teer_dialog(ref, hyp, **AUTHORS)
    assert (unk["total"], unk["missed"], unk["false_alarm"]) == pytest.approx((8.08, 0.0, 2.1))
    assert (unk["confusion_emo"], unk["confusion_emo_spk"]) == pytest.approx((0.0, 0.0))
    assert unk["label_map_emo"] == {"hap": "hap", "sad": "sad", "UNK": "ang"}
    pred = tc.teer_dialog(ref, hyp, **{**AUTHORS, "unlabelled": "pred"})
    assert (pred["false_alarm"], pred["confusion_emo"]) == pytest.approx((2.1, 0.08))

    # With the last pair: hap [20,20.08] lies under a label-null segment (UNK). Mapping hap -> hap
    # (4 s), sad -> sad (4 s), UNK -> ang or hap (0.08 s each, ang is free): UNK is wrong on
    # [20,20.08]. Total 8.16 s, FA 2.1 + 0.05 ([19.95,20]) = 2.15 s, CONF_emo 0.08 s.
    ref, hyp = authors_case(with_taken_label=True)
    unk = tc.teer_dialog(ref, hyp, **AUTHORS)
    assert (unk["total"], unk["missed"], unk["false_alarm"]) == pytest.approx((8.16, 0.0, 2.15))
    assert (unk["confusion_emo"], unk["correct_emo"]) == pytest.approx((0.08, 8.08))
    assert unk["confusion_emo_spk"] == pytest.approx(0.08)  # SPEAKER_00+UNK -> F+ang, F+hap [20,20.08] wrong
    assert their_components(ref, hyp) == pytest.approx(
        {
            k: unk[k]
            for k in (
                "total",
                "missed",
                "false_alarm",
                "confusion_emo",
                "correct_emo",
                "confusion_emo_spk",
                "correct_emo_spk",
            )
        },
        abs=1e-9,
    )

    # Through the command line: --authors applies the UNK rule and writes teer_authors.json.
    work = make_run(tmp_path, ref, hyp)
    out = tc.main(["--work", str(work), "--run", "r", "--authors"])
    assert out["settings"]["unlabelled"] == "unk"
    assert out["TEER"] == pytest.approx((2.15 + 0.08) / 8.16)
    assert out["EERa"] == pytest.approx(0.08 / 8.16)
    assert read_json(work / "runs/r/teer_authors.json")["TEER"] == pytest.approx(out["TEER"])


def test_authors_unk_needs_the_label_field(tmp_path):
    segment = seg(0, 2, "SPEAKER_00", "neu")
    del segment["label"]
    work = make_run(tmp_path, [utt(0, 2, "F", "neu")], [segment])
    tc.main(["--work", str(work), "--run", "r"])  # our default does not need it
    with pytest.raises(PipelineError, match=r"predictions.json: segment 0 lacks \['label'\]"):
        tc.main(["--work", str(work), "--run", "r", "--authors"])


def test_empty_dialogs_missed_or_skipped(tmp_path):
    # Dialog A: 2 s of reference, all correct. Dialog B: 6 s of reference, no system segment at all.
    make_run(tmp_path, [utt(0, 6, "M", "ang")], [], dialog="Ses05M_impro02")
    work = make_run(tmp_path, [utt(0, 2, "F", "neu")], [seg(0, 2, "SPEAKER_00", "neu")])
    atomic_write_json(work / "runs/r/config.json", {"split": {"test": ["Ses05F_impro01", "Ses05M_impro02"]}})
    missed = tc.main(["--work", str(work), "--run", "r", "--collar", "0"])
    assert missed["n_dialogs"] == 2 and missed["totals"]["missed"] == pytest.approx(6.0)
    assert missed["TEER"] == pytest.approx(6 / 8)
    skip = tc.main(["--work", str(work), "--run", "r", "--collar", "0", "--empty-dialogs", "skip"])
    assert skip["n_dialogs"] == 1 and skip["TEER"] == pytest.approx(0.0)
    assert skip["totals"]["total"] == pytest.approx(2.0)
    assert "Ses05M_impro02" in skip["skipped_dialogs"] and skip["settings"]["empty_dialogs"] == "skip"
    # The authors' pipeline wrote no aligned file for a dialog without segments: skipped too.
    assert tc.main(["--work", str(work), "--run", "r", "--authors"])["n_dialogs"] == 1


def test_a_test_dialog_step_3_failed_on_is_scored_as_missed(tmp_path):
    """train.py's recorded test list holds only the dialogs with a step-3 cache; the split's rule
    (test session 5) puts back the one a step failed on: all its labelled speech is missed."""
    make_run(tmp_path, [utt(0, 6, "M", "ang"), utt(6, 9, "M", None)], [], dialog="Ses05M_impro02")
    make_run(tmp_path, [utt(0, 1, "F", "hap")], [], dialog="Ses01F_impro01")  # another session: not a test dialog
    work = make_run(tmp_path, [utt(0, 2, "F", "neu")], [seg(0, 2, "SPEAKER_00", "neu")])
    labels = read_json(work / "labels.json")
    labels["dialogs"]["Ses01F_impro01"]["session"] = 1
    atomic_write_json(work / "labels.json", labels)
    atomic_write_json(work / "runs/r/config.json", {"split": {"test": ["Ses05F_impro01"], "test_session": 5}})
    r = tc.main(["--work", str(work), "--run", "r", "--collar", "0"])
    assert r["missing_dialogs"] == ["Ses05M_impro02"] and r["n_dialogs"] == 2
    failed = r["dialogs"]["Ses05M_impro02"]
    assert failed["missed"] == pytest.approx(6.0) == failed["total"] and failed["TEER"] == pytest.approx(1.0)
    assert r["TEER"] == pytest.approx(6 / 8)
    assert read_json(work / "runs/r/teer.json")["missing_dialogs"] == ["Ses05M_impro02"]
    authors = tc.main(["--work", str(work), "--run", "r", "--authors"])  # their pipeline skips it, and it is listed
    assert authors["n_dialogs"] == 1 and authors["missing_dialogs"] == ["Ses05M_impro02"]


def test_nontarget_other_equals_w_wu_scorer():
    """W-Wu's score_TEER: IdentificationErrorRate, pyannote collar 2 x 0.25 s, uem = reference extent,
    non-target utterances kept under their own emotion code. Equal to --nontarget other (whose
    label "other" no prediction matches either) given the same speaker map."""
    rng = np.random.default_rng(11)
    codes = ["hap", "ang", "sad", "neu", "fru", "sur", "xxx"]
    raw = [str(rng.choice(codes)) for _ in range(16)]
    utterances = [
        utt(
            float(s),
            float(s + rng.uniform(0.5, 5)),
            str(rng.choice(["F", "M"])),
            code if code in ("hap", "ang", "sad", "neu") else None,
        )
        for s, code in zip(np.sort(rng.uniform(0, 60, 16)), raw)
    ]
    segments = [
        seg(
            float(s),
            float(s + rng.uniform(0.5, 6)),
            f"SPEAKER_0{rng.integers(2)}",
            str(rng.choice(["hap", "ang", "sad", "neu"])),
        )
        for s in rng.uniform(0, 62, 14)
    ]
    ours = tc.teer_dialog(utterances, segments, **{**DEFAULT, "nontarget": "other"})
    spk = ours["speaker_map"]
    ref_emo = annotation([(u["start"], u["end"], code) for u, code in zip(utterances, raw)])
    ref_spk = annotation([(u["start"], u["end"], f"{u['speaker']}+{code}") for u, code in zip(utterances, raw)])
    hyp_emo = annotation([(s["start"], s["end"], s["pred"]) for s in segments])
    hyp_spk = annotation(
        [(s["start"], s["end"], f"{spk.get(s['speaker'], s['speaker'])}+{s['pred']}") for s in segments]
    )
    ier = IdentificationErrorRate(collar=2 * 0.25)
    emo = ier.compute_components(ref_emo, hyp_emo, uem=ref_emo.get_timeline().extent())
    both = ier.compute_components(ref_spk, hyp_spk, uem=ref_spk.get_timeline().extent())
    assert ours["total"] == pytest.approx(emo["total"], abs=1e-9)
    assert ours["missed"] == pytest.approx(emo["missed detection"], abs=1e-9)
    assert ours["false_alarm"] == pytest.approx(emo["false alarm"], abs=1e-9)
    assert ours["confusion_emo"] == pytest.approx(emo["confusion"], abs=1e-9)
    assert ours["confusion_emo_spk"] == pytest.approx(both["confusion"], abs=1e-9)
    # The default (exclude) scores less reference time: non-target speech is cut out of the region.
    default = tc.teer_dialog(utterances, segments, **DEFAULT)
    assert default["total"] < ours["total"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"start": float("nan")}, r"start nan, end 2; expected finite seconds with start <= end"),
        ({"end": -1.0}, r"start 0, end -1.0; expected finite seconds"),
        ({"label": "happy"}, r"has label 'happy', expected one of"),
        ({"speaker": None}, r"dialog and speaker must be strings"),
    ],
)
def test_bad_prediction_times_and_fields_name_the_file(tmp_path, change, message):
    """Issue 12: a NaN or reversed time in predictions.json crashed the scorer or scored garbage."""
    work = make_run(tmp_path, [utt(0, 2, "F", "neu")], [{**seg(0, 2, "SPEAKER_00", "neu"), **change}])
    with pytest.raises(PipelineError, match="predictions.json: segment 0 .*" + message):
        tc.main(["--work", str(work), "--run", "r"])


def test_labels_outside_the_four_classes_are_a_named_error(tmp_path):
    """Issue 12: labels.json labels outside the four classes silently became "unlabelled"."""
    work = make_run(tmp_path, [utt(0, 2, "F", "happy")], [seg(0, 2, "SPEAKER_00", "neu")])
    with pytest.raises(PipelineError, match=r"labels.json: dialog Ses05F_impro01: utterance u0: label 'happy'"):
        tc.main(["--work", str(work), "--run", "r"])


# --- any number of speakers: sTEER's one-to-one speaker map against pyannote.metrics ---------------


def test_three_reference_speakers_four_system_speakers_known_answer():
    # Reference A [0,2], B [2,4], C [4,6], all neu. System: S1 [0,2.5], S2 [2.5,4], S3 [4,5.5], S4 [5.5,6].
    # S1 overlaps A 2 s and B 0.5 s; S2 B 1.5 s; S3 C 1.5 s; S4 C 0.5 s: the map is S1->A, S2->B, S3->C and S4,
    # the fourth, stays unmapped (one to one). Speaker confusion: S1 on B 0.5 s + S4 on C 0.5 s = 1 s of 6.
    ref = [utt(0, 2, "A", "neu"), utt(2, 4, "B", "neu"), utt(4, 6, "C", "neu")]
    hyp = [seg(0, 2.5, "S1", "neu"), seg(2.5, 4, "S2", "neu"), seg(4, 5.5, "S3", "neu"), seg(5.5, 6, "S4", "neu")]
    d = tc.teer_dialog(ref, hyp, **{**DEFAULT, "collar": 0.0})
    assert d["speaker_map"] == {"S1": "A", "S2": "B", "S3": "C"}
    assert d["confusion_emo"] == pytest.approx(0.0) and d["confusion_emo_spk"] == pytest.approx(1.0)
    assert tc.rates(d)["sTEER"] == pytest.approx(1 / 6)
    # Fewer system speakers: S1 [0,3.9] (A 2 s, B 1.9 s) -> A, S3 [3.9,6] (B 0.1 s, C 2 s) -> C; B is left
    # without a system speaker, so its 2 s are speaker confusion.
    two = tc.teer_dialog(ref, [seg(0, 3.9, "S1", "neu"), seg(3.9, 6, "S3", "neu")], **{**DEFAULT, "collar": 0.0})
    assert two["speaker_map"] == {"S1": "A", "S3": "C"} and two["confusion_emo_spk"] == pytest.approx(2.0)


def test_an_unmapped_system_speaker_named_like_a_reference_speaker_gets_no_credit():
    # Reference A [0,4], B [4,8]. System A [0,1] (an oracle-like name), X [1,4], B [4,8]: the one-to-one map
    # gives X->A (3 s) and B->B; system "A" is unmapped and must not score as reference A.
    ref = [utt(0, 4, "A", "neu"), utt(4, 8, "B", "neu")]
    hyp = [seg(0, 1, "A", "neu"), seg(1, 4, "X", "neu"), seg(4, 8, "B", "neu")]
    d = tc.teer_dialog(ref, hyp, **{**DEFAULT, "collar": 0.0})
    assert d["speaker_map"] == {"X": "A", "B": "B"}
    assert d["confusion_emo_spk"] == pytest.approx(1.0) and d["correct_emo_spk"] == pytest.approx(7.0)


def pyannote_steer(utterances, segments, collar):
    """sTEER's components as pyannote.metrics computes them: the system speakers first renamed to integers
    (as DiarizationErrorRate does, so that no system name equals a reference name), mapped by
    DiarizationErrorRate().optimal_mapping on speakers, then IdentificationErrorRate on speaker+emotion labels
    over the reference's extent. -> (speaker map in the system's names, components)."""
    ints = {spk: i for i, spk in enumerate(sorted({s["speaker"] for s in segments}))}
    back = {i: spk for spk, i in ints.items()}
    ref_spk = annotation([(u["start"], u["end"], u["speaker"]) for u in utterances])
    hyp_spk = annotation([(s["start"], s["end"], ints[s["speaker"]]) for s in segments])
    mapping = DiarizationErrorRate().optimal_mapping(ref_spk, hyp_spk)
    ref = annotation([(u["start"], u["end"], f"{u['speaker']}+{u['label']}") for u in utterances])
    hyp = annotation(
        [(s["start"], s["end"], f"{mapping.get(ints[s['speaker']], ints[s['speaker']])}+{s['pred']}") for s in segments]
    )
    components = IdentificationErrorRate(collar=2 * collar).compute_components(
        ref, hyp, uem=ref.get_timeline().extent()
    )
    return {back[h]: r for h, r in mapping.items()}, components


@pytest.mark.parametrize(
    "n_ref, n_sys, seed",
    [(3, 3, 0), (3, 4, 1), (3, 2, 2), (4, 4, 3), (4, 6, 4), (4, 3, 5), (4, 2, 6), (3, 5, 7)],
)
def test_steer_with_n_system_and_m_reference_speakers_equals_pyannote(n_ref, n_sys, seed):
    """3 and 4 reference speakers; as many, more and fewer system speakers, named like the reference
    speakers in part (names A, B, ... on both sides: a collision pyannote avoids by renaming)."""
    rng = np.random.default_rng(seed)
    names = [chr(ord("A") + i) for i in range(max(n_ref, n_sys))]
    for _ in range(6):
        utterances = [
            utt(float(s), float(s + rng.uniform(0.5, 5)), names[i % n_ref], str(rng.choice(LABELS4)))
            for i, s in enumerate(np.sort(rng.uniform(0, 60, 18)))
        ]
        sys_names = [names[(i + seed) % len(names)] for i in range(n_sys)]  # shifted: same names, other people
        segments = [
            seg(float(s), float(s + rng.uniform(0.3, 6)), sys_names[i % n_sys], str(rng.choice(LABELS4)))
            for i, s in enumerate(rng.uniform(0, 62, 16))
        ]
        collar = float(rng.choice([0.0, 0.25]))
        ours = tc.teer_dialog(utterances, segments, **{**DEFAULT, "collar": collar})
        theirs_map, theirs = pyannote_steer(utterances, segments, collar)
        assert ours["speaker_map"] == theirs_map
        assert len(ours["speaker_map"]) <= min(n_ref, len(set(s["speaker"] for s in segments)))
        assert ours["total"] == pytest.approx(theirs["total"], abs=1e-9)
        assert ours["correct_emo_spk"] == pytest.approx(theirs["correct"], abs=1e-9)
        assert ours["confusion_emo_spk"] == pytest.approx(theirs["confusion"], abs=1e-9)
        steer = (theirs["missed detection"] + theirs["false alarm"] + theirs["confusion"]) / theirs["total"]
        assert tc.rates(ours)["sTEER"] == pytest.approx(steer, abs=1e-12)


LABELS4 = ["hap", "ang", "sad", "neu"]
