"""Step 6, teer_calculate.py: hand-computed TEER components, the flaw of optimal mapping on
emotions, speaker mapping for sTEER, and agreement with pyannote.metrics on random annotations."""

import numpy as np
import pytest
from pyannote.core import Annotation, Segment, Timeline
from pyannote.metrics.diarization import DiarizationErrorRate
from pyannote.metrics.identification import IdentificationErrorRate

import teer_calculate as tc
from utils import PipelineError, atomic_write_json, read_json

DEFAULT = dict(collar=0.25, uem="extent", nontarget="exclude", mapping="identity", speaker_mapping="overlap")
AUTHORS = dict(collar=0.0, uem="union", nontarget="drop", mapping="optimal", speaker_mapping="none")


def utt(start, end, speaker, label):
    return {"id": f"u{start}", "start": start, "end": end, "speaker": speaker, "label": label}


def seg(start, end, speaker, pred, dialog="Ses05F_impro01"):
    return {"id": f"s{start}", "dialog": dialog, "start": start, "end": end, "speaker": speaker, "pred": pred,
            "label": None, "text": ""}


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
    r = tc.rates({"total": 5.0, "missed": 0.75, "false_alarm": 0.0, "confusion_emo": 1.75, "correct_emo": 2.5,
                  "confusion_emo_spk": 1.75, "correct_emo_spk": 2.5})
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
    spk = tc.map_speakers([(u["start"], u["end"], u["speaker"]) for u in ref],
                          [(s["start"], s["end"], s["speaker"]) for s in hyp])
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
    labels = read_json(labels_path) if labels_path.is_file() else {"labels": ["hap", "ang", "sad", "neu"], "dialogs": {}}
    labels["dialogs"][dialog] = {"session": 5, "utterances": utterances}
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
    hyp = [seg(3 * i, 3 * i + 2, f"SPEAKER_0{i % 2}", swap[lab]) for i, lab in enumerate(truth)]
    work = make_run(tmp_path, ref, hyp)
    ours = tc.main(["--work", str(work), "--run", "r"])
    theirs = tc.main(["--work", str(work), "--run", "r", "--authors"])
    # Default: 0.25 s collars leave 1.5 s of each 2 s utterance; 5 of 6 utterances swapped.
    assert ours["totals"]["total"] == pytest.approx(6 * 1.5)
    assert ours["TEER"] == pytest.approx(5 / 6) and ours["sTEER"] == pytest.approx(5 / 6)
    assert theirs["TEER"] == pytest.approx(0.0) and theirs["sTEER"] == pytest.approx(0.0)
    assert (work / "runs/r/teer.json").is_file() and (work / "runs/r/teer_authors.json").is_file()
    assert read_json(work / "runs/r/teer.json")["dialogs"]["Ses05F_impro01"]["speaker_map"] == {"SPEAKER_00": "F", "SPEAKER_01": "M"}


def test_multifold_components_pooled_then_divided_once(tmp_path):
    # fold1: 2 s reference all correct; fold2: 6 s reference all confused -> pooled TEER 6/8, not mean(0, 1).
    make_run(tmp_path, [utt(0, 2, "F", "neu")], [seg(0, 2, "SPEAKER_00", "neu", "Ses01F_impro01")],
             dialog="Ses01F_impro01", fold="fold1")
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


COMPONENT_NAMES = {"total": "total", "missed": "missed detection", "false_alarm": "false alarm",
                   "confusion": "confusion", "correct": "correct"}


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
                annotation(ref), annotation(hyp), uem=Timeline([Segment(*u) for u in uem], uri="d"))
            got = tc.score_dialog(ref, hyp, uem, collar=collar, mapping=mapping)
            for ours, theirs in COMPONENT_NAMES.items():
                assert got[ours] == pytest.approx(expected[theirs], abs=1e-9), (mapping, ours)


def test_authors_option_equals_their_pyannote_computation():
    """--authors on one dialog == DiarizationErrorRate on target-only emotion and emotion_speaker
    annotations with uem = union of extents, as the authors' script computes it."""
    rng = np.random.default_rng(7)
    utterances = [utt(float(s), float(s + rng.uniform(0.5, 5)), str(rng.choice(["F", "M"])),
                      rng.choice(["hap", "ang", "sad", "neu", None])) for s in np.sort(rng.uniform(0, 50, 14))]
    segments = [seg(float(s), float(s + rng.uniform(0.5, 6)), f"SPEAKER_0{rng.integers(3)}",
                    str(rng.choice(["hap", "ang", "sad", "neu"]))) for s in rng.uniform(0, 55, 12)]
    target = [u for u in utterances if u["label"] is not None]
    ref_emo = annotation([(u["start"], u["end"], u["label"]) for u in target])
    ref_spk = annotation([(u["start"], u["end"], f"{u['label']}_{u['speaker']}") for u in target])
    hyp_emo = annotation([(s["start"], s["end"], s["pred"]) for s in segments])
    hyp_spk = annotation([(s["start"], s["end"], f"{s['pred']}_{s['speaker']}") for s in segments])
    uem = ref_emo.get_timeline().extent() | hyp_emo.get_timeline().extent()
    der = DiarizationErrorRate()
    emo = der.compute_components(ref_emo, hyp_emo, uem=uem)
    spk = der.compute_components(ref_spk, hyp_spk, uem=uem)
    got = tc.teer_dialog(utterances, segments, **AUTHORS)
    assert got["total"] == pytest.approx(emo["total"], abs=1e-9)
    assert got["missed"] == pytest.approx(emo["missed detection"], abs=1e-9)
    assert got["false_alarm"] == pytest.approx(emo["false alarm"], abs=1e-9)
    assert got["confusion_emo"] == pytest.approx(emo["confusion"], abs=1e-9)
    assert got["confusion_emo_spk"] == pytest.approx(spk["confusion"], abs=1e-9)


def test_interval_helpers():
    assert tc.merge_intervals([(3, 4), (0, 1), (0.5, 2), (5, 5)]).tolist() == [[0, 2], [3, 4]]
    assert tc.subtract_intervals([(0, 10)], [(2, 3), (2.5, 4), (9, 12)]).tolist() == [[0, 2], [4, 9]]
