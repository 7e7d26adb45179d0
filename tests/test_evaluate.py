"""Step 5, evaluate.py: classification metrics against scikit-learn, coverage known answer, the run
outputs (with evaluate.predict_split replaced by a stub) and multi-fold aggregation."""

import re

import numpy as np
import pytest
from sklearn import metrics as skm

import evaluate as ev
import utils
from common import formats, rundirs, scoring
from common.cli import PipelineError
from common.fileio import atomic_write_json, read_json
from common.formats import LABELS


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("seed", range(6))
def test_classification_metrics_agree_with_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 200))
    # seed 0: a class never true, seed 1: a class never predicted (zero-division conventions)
    true_pool = LABELS[:3] if seed == 0 else LABELS
    pred_pool = LABELS[1:] if seed == 1 else LABELS
    y_true = [str(x) for x in rng.choice(true_pool, n)]
    y_pred = [str(x) for x in rng.choice(pred_pool, n)]
    m = ev.classification_metrics(y_true, y_pred, LABELS)
    kw = dict(labels=list(LABELS), zero_division=0)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert m["accuracy"] == pytest.approx(skm.recall_score(y_true, y_pred, average="weighted", **kw))  # WA
    assert m["ua"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert m["weighted_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="weighted", **kw))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro", **kw))
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, **kw)
    for i, lab in enumerate(LABELS):
        c = m["per_class"][lab]
        assert (c["precision"], c["recall"], c["f1"]) == pytest.approx((p[i], r[i], f[i]))
        assert c["support"] == s[i]
    assert m["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred, labels=list(LABELS)).tolist()


def test_confusion_matrix_orientation_known_answer():
    m = ev.classification_metrics(["hap", "hap", "sad"], ["sad", "hap", "sad"])
    assert m["confusion_matrix"][0] == [1, 0, 1, 0]  # row = true hap: 1 predicted hap, 1 predicted sad
    assert m["accuracy"] == pytest.approx(2 / 3) and m["ua"] == pytest.approx((0.5 + 1.0) / 2)


def test_coverage_known_answer():
    # Labelled reference: [0,4] and [3,6] (union 6 s) + an unlabelled [6,9]; in d2 [0,2] (2 s).
    utterances = {
        "d1": [
            {"start": 0, "end": 4, "label": "neu"},
            {"start": 3, "end": 6, "label": "sad"},
            {"start": 6, "end": 9, "label": None},
        ],
        "d2": [{"start": 0, "end": 2, "label": "ang"}],
    }
    # Scored segments: [1,2] and [1.5,5] (union [1,5], 4 s labelled) + [7,8] unlabelled time; none in d2.
    segments = [
        {"dialog": "d1", "start": 1, "end": 2},
        {"dialog": "d1", "start": 1.5, "end": 5},
        {"dialog": "d1", "start": 7, "end": 8},
    ]
    c = ev.coverage(segments, utterances)
    assert c["labelled_reference_s"] == pytest.approx(8.0)
    assert c["covered_s"] == pytest.approx(4.0)
    assert c["share"] == pytest.approx(0.5)


def segment(i, dialog, label, pred, start=None):
    start = 2.0 * i if start is None else start
    return {
        "id": f"{dialog}-{i:04d}",
        "dialog": dialog,
        "start": start,
        "end": start + 1.5,
        "speaker": "SPEAKER_00",
        "text": "x",
        "label": label,
        "pred": pred,
        "probs": {lab: float(lab == pred) for lab in LABELS},
    }


def make_work(tmp_path, dialogs):
    """labels.json with one labelled 2 s utterance per predicted segment slot (4 per dialog)."""
    work = tmp_path / "work"
    atomic_write_json(
        work / "labels.json",
        {
            "labels": list(LABELS),
            "dialogs": {
                d: {
                    "session": formats.session_of(d),
                    "utterances": [
                        {"id": f"{d}_F00{i}", "start": 2.0 * i, "end": 2.0 * i + 2.0, "speaker": "F", "label": "neu"}
                        for i in range(4)
                    ],
                }
                for d in dialogs
            },
        },
    )
    return work


def stub_predictions(by_run):
    def predict_split(run_dir, split="test", device=None, datasets=None):
        assert split == "test"
        return {"run": run_dir.name, "split": split, "segments": by_run[run_dir.name]}

    return predict_split


def test_single_run_writes_predictions_metrics_and_plot(tmp_path, monkeypatch):
    d = "Ses05F_impro01"
    work = make_work(tmp_path, [d])
    atomic_write_json(work / "runs/r/config.json", {"split": {"test": [d]}})
    segs = [
        segment(0, d, "neu", "neu"),
        segment(1, d, "sad", "sad"),
        segment(2, d, "sad", "hap"),
        segment(3, d, None, "ang"),
    ]  # unlabelled: predicted, not scored
    monkeypatch.setattr(ev, "predict_split", stub_predictions({"r": segs}))
    m = ev.main(["--work", str(work), "--run", "r"])
    assert (m["n_segments"], m["n_scored"], m["n_unlabelled"]) == (4, 3, 1)
    assert m["accuracy"] == pytest.approx(2 / 3)
    # 3 scored segments x 1.5 s over 4 x 2 s of labelled reference
    assert m["coverage"]["share"] == pytest.approx(4.5 / 8.0)
    # projected on the 4 "neu" reference utterances [2i, 2i + 2]: neu sad hap ang (the unlabelled segment votes too)
    u = m["utterance"]
    assert (u["n"], u["n_missed"], u["accuracy"]) == (4, 0, pytest.approx(1 / 4))
    assert u["coverage"]["share"] == pytest.approx(6.0 / 8.0)
    run = work / "runs/r"
    assert read_json(run / "predictions.json")["segments"] == segs
    assert read_json(run / "metrics.json")["confusion_matrix"] == m["confusion_matrix"]
    assert (run / "confusion_matrix.png").stat().st_size > 1000
    # --reuse-predictions scores the file without calling the model
    monkeypatch.setattr(ev, "predict_split", None)
    assert ev.main(["--work", str(work), "--run", "r", "--reuse-predictions"])["accuracy"] == pytest.approx(2 / 3)


def test_multifold_mean_std_and_pooled_known_answer(tmp_path, monkeypatch, capsys):
    d1, d2 = "Ses01F_impro01", "Ses02F_impro01"
    work = make_work(tmp_path, [d1, d2])
    atomic_write_json(work / "runs/cv/config.json", {"folds": ["fold1", "fold2"]})
    atomic_write_json(work / "runs/cv/fold1/config.json", {"split": {"test": [1]}})  # sessions form
    atomic_write_json(work / "runs/cv/fold2/config.json", {"split": {"test": [d2]}})
    folds = {
        "fold1": [segment(i, d1, "hap", "hap") for i in range(4)],  # accuracy 1
        "fold2": [segment(i, d2, "ang", "ang" if i < 2 else "sad") for i in range(4)],
    }  # accuracy 0.5
    monkeypatch.setattr(ev, "predict_split", stub_predictions(folds))
    m = ev.main(["--work", str(work), "--run", "cv"])
    assert m["folds"]["fold1"]["accuracy"] == pytest.approx(1.0)
    assert m["folds"]["fold2"]["accuracy"] == pytest.approx(0.5)
    # the spread over folds: sample std (ddof=1) of 1.0 and 0.5
    assert m["mean_std"]["accuracy"] == pytest.approx({"mean": 0.75, "std": np.sqrt(0.125), "n": 2})
    assert m["pooled"]["accuracy"] == pytest.approx(6 / 8) and m["pooled"]["n_scored"] == 8
    assert m["mean_std"]["n_scored"] == 8
    # projected: every reference utterance is "neu"; fold2 predicts ang, ang, sad, sad; fold1 hap
    assert m["pooled"]["utterance"]["n"] == m["mean_std"]["utterance"]["n"] == 8
    assert m["mean_std"]["utterance"]["accuracy"] == {"mean": 0.0, "std": 0.0, "n": 2}
    assert m["pooled"]["utterance"]["confusion_matrix"][3] == [4, 2, 2, 0, 0]
    assert m["folds"]["fold2"]["utterance"]["n_dialogs"] == 1 and m["pooled"]["utterance"]["n_dialogs"] == 2
    assert read_json(work / "runs/cv/metrics.json")["mean_std"]["accuracy"]["mean"] == pytest.approx(0.75)
    assert (work / "runs/cv/fold2/metrics.json").is_file()
    # The one rule of fold runs: a value printed with an interval is the pooled one, with the pooled interval.
    out = capsys.readouterr().out
    pooled = out[out.index("cv pooled:") :]
    seg_line = pooled[pooled.index("segment-level") :].splitlines()[1]
    value, lo, hi = map(float, re.search(r"accuracy \(WA\) ([\d.]+)% \[([\d.]+), ([\d.]+)\]", seg_line).groups())
    assert value == pytest.approx(100 * m["pooled"]["accuracy"], abs=0.005) and lo <= value <= hi
    assert [lo, hi] == pytest.approx([100 * x for x in m["pooled"]["ci95"]["accuracy"]], abs=0.005)
    assert "spread over 2 folds (mean ± sample std" in out and "accuracy 75.00 ± 35.36%" in out


def test_a_test_dialog_without_segments_stays_in_the_denominator(tmp_path, monkeypatch):
    """train.py records only the test dialogs that had a step-3 cache; the split's rule over labels.json
    puts back those a step failed on, and their labelled utterances are misses."""
    d1, failed, other_script, train = "Ses05F_impro01", "Ses05M_impro02", "Ses05F_script02_1", "Ses01F_impro01"
    work = make_work(tmp_path, [d1, failed, other_script, train])
    labels = read_json(work / "labels.json")
    for d, kind, script in (
        (d1, "impro", None),
        (failed, "impro", None),
        (other_script, "script", "script02"),
        (train, "impro", None),
    ):
        labels["dialogs"][d].update(kind=kind, script=script)
    atomic_write_json(work / "labels.json", labels)
    split = {"test": [d1], "test_session": 5, "held_script": "script01"}  # speaker-script: script02 is not tested
    atomic_write_json(work / "runs/r/config.json", {"split": split})
    monkeypatch.setattr(ev, "predict_split", stub_predictions({"r": [segment(i, d1, "neu", "neu") for i in range(4)]}))
    m = ev.main(["--work", str(work), "--run", "r", "--bootstrap-samples", "50"])
    u = m["utterance"]
    assert m["missing_dialogs"] == [failed] and (u["n_dialogs"], u["n"], u["n_missed"]) == (2, 8, 4)
    assert u["accuracy"] == pytest.approx(0.5) and u["confusion_matrix"][3] == [0, 0, 0, 4, 4]
    assert read_json(work / "runs/r/metrics.json")["missing_dialogs"] == [failed]
    del split["held_script"]  # --folds none / loso: every session-5 dialog is a test dialog
    atomic_write_json(work / "runs/r/config.json", {"split": split})
    m = ev.main(["--work", str(work), "--run", "r", "--reuse-predictions"])
    assert m["missing_dialogs"] == sorted([failed, other_script]) and m["utterance"]["n"] == 12


@pytest.mark.parametrize("scheme", ["session", "loso", "speaker-script"])
def test_split_rule_gives_the_test_dialogs_of_train_make_folds(demo_work, scheme):
    """common.rundirs.split_rule_test_dialogs repeats train.make_folds' test rule: the same dialogs when every
    dialog has a cache."""
    import train

    labels = formats.load_labels(demo_work)
    meta = {
        d: {"session": i["session"], "kind": i.get("kind"), "script": i.get("script")}
        for d, i in labels["dialogs"].items()
    }
    folds = train.make_folds(meta, scheme, 5, 0.2, 0)
    assert folds and all(rundirs.split_rule_test_dialogs(f, labels) == f["test"] for f in folds)
    assert sum(len(f["test"]) for f in folds) >= 2


def test_bad_predictions_raise_naming_the_file(tmp_path, monkeypatch):
    d = "Ses05F_impro01"
    work = make_work(tmp_path, [d])
    bad = [segment(0, d, "neu", "neutral")]
    monkeypatch.setattr(ev, "predict_split", stub_predictions({"r": bad}))
    (work / "runs/r").mkdir(parents=True)
    with pytest.raises(PipelineError, match="predictions.json.*'neutral'"):
        ev.main(["--work", str(work), "--run", "r"])


# ---- the authors' Table I from their confusion matrices (M4RC034/SER-Align result.txt) ------

AUTHORS_CM = {  # rows true, columns predicted, order hap ang sad neu
    "aligned": [[348, 14, 57, 85], [14, 146, 28, 65], [37, 12, 282, 51], [55, 32, 87, 305]],
    "without-alignment": [[74, 2, 1, 26], [3, 9, 0, 16], [19, 2, 8, 24], [33, 7, 0, 84]],
}


def expand(cm):
    """A confusion matrix -> (y_true, y_pred) lists with those counts."""
    pairs = [(LABELS[i], LABELS[j]) for i, row in enumerate(cm) for j, c in enumerate(row) for _ in range(c)]
    return [t for t, _ in pairs], [p for _, p in pairs]


@pytest.mark.parametrize("setup", ["aligned", "without-alignment"])
def test_authors_table1_known_answer(setup):
    m = ev.classification_metrics(*expand(AUTHORS_CM[setup]))
    paper = scoring.PAPER["table1"][setup]
    assert m["n"] == scoring.PAPER["test_segments"][setup]
    for k in ("accuracy", "weighted_f1", "macro_f1"):
        assert round(100 * m[k], 2) == paper[k], k
    assert {lab: round(c["f1"], 2) for lab, c in m["per_class"].items()} == scoring.PAPER["table2"][setup]
    fast = scoring.metrics_from_confusion(AUTHORS_CM[setup])  # the numpy path the bootstrap uses
    for k in ev.HEADLINE:
        assert float(fast[k]) == pytest.approx(m[k], abs=1e-12), k


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("seed", range(4))
def test_metrics_from_confusion_agree_with_sklearn_with_misses(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 200))
    true_pool = LABELS[:3] if seed == 0 else LABELS  # seed 0: a class never true
    y_true = [str(x) for x in rng.choice(true_pool, n)]
    y_pred = [None if rng.random() < 0.2 else str(rng.choice(LABELS)) for _ in range(n)]
    m = ev.classification_metrics(y_true, y_pred, miss_column=True)
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (4, 5) and cm[:, 4].sum() == sum(p is None for p in y_pred) and m["columns"][-1] == "miss"
    # sklearn on the same predictions, a miss being the extra label "miss" (wrong for every class)
    yp = ["miss" if p is None else p for p in y_pred]
    kw = dict(labels=list(LABELS), zero_division=0)
    fast = scoring.metrics_from_confusion(cm)
    for got in (m, {k: float(fast[k]) for k in ev.HEADLINE}):
        assert got["accuracy"] == pytest.approx(skm.accuracy_score(y_true, yp))
        assert got["ua"] == pytest.approx(skm.balanced_accuracy_score(y_true, yp))
        assert got["weighted_f1"] == pytest.approx(skm.f1_score(y_true, yp, average="weighted", **kw))
        assert got["macro_f1"] == pytest.approx(skm.f1_score(y_true, yp, average="macro", **kw))
    p, r, f, s = skm.precision_recall_fscore_support(y_true, yp, **kw)
    assert np.allclose(fast["precision"], p) and np.allclose(fast["recall"], r) and np.allclose(fast["f1"], f)
    assert fast["support"].tolist() == s.tolist()
    # batched: a stack of matrices gives the stack of metrics
    stack = scoring.metrics_from_confusion(np.stack([cm, np.pad(AUTHORS_CM["aligned"], ((0, 0), (0, 1)))]))
    assert stack["accuracy"].shape == (2,) and stack["accuracy"][0] == pytest.approx(m["accuracy"])
    assert stack["accuracy"][1] == pytest.approx(0.6681, abs=5e-5)


# ---- reference-projected utterances: the time-weighted vote ---------------------------------


def seg(start, end, pred, speaker="SPEAKER_00", dialog="d", label=None):
    return {
        "id": f"{dialog}-{start}-{end}-{pred}",
        "dialog": dialog,
        "start": start,
        "end": end,
        "speaker": speaker,
        "label": label,
        "pred": pred,
    }


def utt(start, end, label="neu", i=0, speaker="F"):
    return {"id": f"u{i}", "start": start, "end": end, "speaker": speaker, "label": label}


def test_projection_longest_speech_wins_over_more_segments():
    # sad: one 6 s segment; hap: two segments, 4 s together -> sad
    assert ev.project_dialog([seg(0, 6, "sad"), seg(6, 8, "hap"), seg(8, 10, "hap")], [utt(0, 10)]) == ["sad"]
    # the vote is summed: hap 3 + 3 s beats a single 4 s sad segment
    assert ev.project_dialog([seg(0, 3, "hap"), seg(3, 6, "hap"), seg(6, 10, "sad")], [utt(0, 10)]) == ["hap"]
    # only the part inside the utterance counts: the 9 s ang segment overlaps it by 1 s
    assert ev.project_dialog([seg(-8, 1, "ang"), seg(1, 3, "neu")], [utt(0, 3)]) == ["neu"]


def test_projection_tie_rules():
    # hap 1 + 1 s vs neu 2 s: tied votes, neu owns the largest single segment
    assert ev.project_dialog([seg(0, 1, "hap"), seg(1, 2, "hap"), seg(2, 4, "neu")], [utt(0, 4)]) == ["neu"]
    # sad 2 s vs ang 2 s, one segment each: the order of common.formats.LABELS (hap, ang, sad, neu) -> ang
    assert ev.project_dialog([seg(0, 2, "sad"), seg(2, 4, "ang")], [utt(0, 4)]) == ["ang"]
    # float sums: 0.1 + 0.2 != 0.3 in binary, but whole microseconds tie exactly -> neu (largest single)
    assert 0.1 + 0.2 != 0.6 - 0.3
    assert ev.project_dialog([seg(0, 0.1, "hap"), seg(0.1, 0.3, "hap"), seg(0.3, 0.6, "neu")], [utt(0, 0.6)]) == ["neu"]


def test_projection_miss_touching_and_empty_segments():
    segments = [seg(0, 2, "hap"), seg(5, 5, "sad"), seg(7, 8, "ang")]
    # [2, 3]: touched by [0, 2] only; [4.5, 5.5]: only an empty segment inside; [6, 7]: touched by [7, 8]
    assert ev.project_dialog(segments, [utt(2, 3), utt(4.5, 5.5), utt(6, 7), utt(1, 7.5)]) == [None, None, None, "hap"]
    assert ev.project_dialog([], [utt(0, 1)]) == [None]


def test_projection_ignores_speakers_and_counts_overlapping_speech_twice():
    # reference speaker F; system: SPEAKER_00 says sad over the whole 4 s, SPEAKER_01 and SPEAKER_00
    # say hap over [0, 2.5] and [1.5, 4] (overlapping): hap 2.5 + 2.5 = 5 s > sad 4 s
    segments = [seg(0, 4, "sad", "SPEAKER_00"), seg(0, 2.5, "hap", "SPEAKER_01"), seg(1.5, 4, "hap", "SPEAKER_00")]
    assert ev.project_dialog(segments, [utt(0, 4, speaker="F")]) == ["hap"]
    # a second speaker's segment covering most of the utterance decides it
    assert ev.project_dialog([seg(0, 1.5, "ang", "SPEAKER_00"), seg(1, 4, "hap", "SPEAKER_01")], [utt(0, 4)]) == ["hap"]


def test_score_utterances_known_answer():
    labels = {
        "dialogs": {
            "d": {
                "utterances": [
                    utt(0, 4, "hap", 0),
                    utt(4, 6, "sad", 1),
                    utt(6, 8, None, 2),
                    utt(10, 12, "neu", 3),
                    utt(12, 14, "neu", 4),
                ]
            },
            "e": {"utterances": [utt(0, 2, "ang", 5)]},
        }
    }
    segments = [
        seg(0, 3, "hap", label="hap"),
        seg(3, 6, "neu"),
        seg(6, 8, "sad"),  # u1: neu 2 s -> wrong
        seg(12.5, 14, "neu", label="neu"),  # u3 [10, 12] missed, u4 right
        seg(0, 2, "ang", dialog="x"),
    ]  # another dialog: no vote for e's utterance, which is missed
    u = ev.score_utterances(segments, ev.reference_utterances(labels, ["d", "e"]), n_samples=200, seed=0)
    assert [(r["id"], r["pred"]) for r in u["utterances"]] == [
        ("u0", "hap"),
        ("u1", "neu"),
        ("u3", None),
        ("u4", "neu"),
        ("u5", None),
    ]
    assert (u["n"], u["n_missed"], u["n_dialogs"]) == (5, 2, 2)  # u2 has no 4-class label: not scored
    assert u["accuracy"] == pytest.approx(2 / 5)
    assert u["confusion_matrix"] == [[1, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]]
    assert u["per_class"]["neu"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert u["ua"] == pytest.approx((1 + 0 + 0 + 0.5) / 4)
    # labelled reference 4 + 2 + 2 + 2 (d) + 2 (e) = 12 s; covered: [0, 6] and [12.5, 14] -> 6 + 1.5 s
    assert u["coverage"]["share"] == pytest.approx(7.5 / 12)
    assert set(u["ci95"]) == set(ev.HEADLINE) and all(lo <= hi for lo, hi in u["ci95"].values())


def test_reference_utterances_bad_times_name_the_utterance():
    labels = {"dialogs": {"d": {"utterances": [utt(3, 2, "neu", 7)]}}}
    with pytest.raises(PipelineError, match="u7 of d"):
        ev.reference_utterances(labels, ["d"])
    with pytest.raises(PipelineError, match="lacks test dialogs"):
        ev.reference_utterances(labels, ["zz"])


# ---- bootstrap over dialogs -------------------------------------------------------------------


def cms_of(records, dialogs):
    return scoring.dialog_confusions(records, dialogs, miss_column=True)


def test_percentile_bootstrap_hand_checked():
    # dialog a: 1 utterance right; dialog b: 3 wrong. Resampling 2 dialogs: {a, a} accuracy 1 (p 1/4),
    # {a, b} 1/4 (p 1/2), {b, b} 0 (p 1/4): 95 % interval [0, 1], 40 % interval (30th-70th pct) [1/4, 1/4].
    records = [{"dialog": "a", "label": "hap", "pred": "hap"}] + [{"dialog": "b", "label": "sad", "pred": None}] * 3
    cms = cms_of(records, ["a", "b"])
    assert cms.shape == (2, 4, 5) and cms.sum(0)[2, 4] == 3
    assert scoring.bootstrap_ci(cms, "accuracy", 4000, seed=0) == [0.0, 1.0]
    assert scoring.bootstrap_ci(cms, "accuracy", 4000, seed=0, level=0.4) == [0.25, 0.25]
    draws = scoring.dialog_draws(2, 4000, seed=0)
    assert (draws.sum(1) == 2).all() and abs((draws[:, 0] == 1).mean() - 0.5) < 0.03
    # seeded: same seed, same numbers; a metric given as a function works the same
    assert scoring.bootstrap_ci(cms, "ua", 300, seed=3) == scoring.bootstrap_ci(cms, "ua", 300, seed=3)
    acc = scoring.bootstrap_ci(cms, lambda cm: scoring.metrics_from_confusion(cm)["accuracy"], 4000, seed=0)
    assert acc == [0.0, 1.0]


def runs_on(dialogs, correct):
    """Per-dialog confusion matrices of a run that is right on the first `correct` of 4 utterances per dialog."""
    records = [
        {"dialog": d, "label": LABELS[i], "pred": LABELS[i] if i < correct else LABELS[(i + 1) % 4]}
        for d in dialogs
        for i in range(4)
    ]
    return cms_of(records, dialogs)


def test_paired_bootstrap_known_answers():
    dialogs = [f"d{i}" for i in range(7)]
    same = runs_on(dialogs, 2)
    r = scoring.paired_bootstrap(same, same.copy(), "accuracy", 500, seed=0)
    assert (r["diff"], r["ci95"], r["sign_flip_share"]) == (0.0, [0.0, 0.0], 1.0)
    assert (r["n_dialogs"], r["n_samples"], r["n_seeds"]) == (7, 500, [1, 1])
    right, wrong = runs_on(dialogs, 4), runs_on(dialogs, 0)
    r = scoring.paired_bootstrap(right[None], wrong[None], "macro_f1", 500, seed=0)
    assert (r["diff"], r["ci95"], r["sign_flip_share"]) == (1.0, [1.0, 1.0], 0.0)
    r = scoring.paired_bootstrap(wrong, right, "accuracy", 500, seed=0)
    assert (r["diff"], r["ci95"], r["sign_flip_share"]) == (-1.0, [-1.0, -1.0], 0.0)
    # seeds: A = mean of a perfect seed and a 50 % seed (0.75), B one 50 % seed -> +0.25, exactly on every resample
    a, b = np.stack([runs_on(dialogs, 4), runs_on(dialogs, 2)]), runs_on(dialogs, 2)[None]
    r = scoring.paired_bootstrap(a, b, "accuracy", 500, seed=1)
    assert r["diff"] == pytest.approx(0.25) and r["ci95"] == pytest.approx([0.25, 0.25]) and r["n_seeds"] == [2, 1]
    # seeded and reproducible; a mixed case has a proper interval around the observed difference
    rng = np.random.default_rng(0)
    mixed_a = cms_of(
        [
            {"dialog": d, "label": "neu", "pred": "neu" if rng.random() < 0.7 else "sad"}
            for d in dialogs
            for _ in range(5)
        ],
        dialogs,
    )
    mixed_b = cms_of(
        [
            {"dialog": d, "label": "neu", "pred": "neu" if rng.random() < 0.5 else None}
            for d in dialogs
            for _ in range(5)
        ],
        dialogs,
    )
    r1, r2 = (scoring.paired_bootstrap(mixed_a, mixed_b, "accuracy", 1000, seed=5) for _ in range(2))
    assert r1 == r2
    assert r1["ci95"][0] <= r1["diff"] <= r1["ci95"][1] and 0 <= r1["sign_flip_share"] <= 1
    with pytest.raises(ValueError, match="same dialogs"):
        scoring.paired_bootstrap(mixed_a, mixed_b[:3], "accuracy", 10, seed=0)
    with pytest.raises(ValueError, match="unknown metric"):
        scoring.bootstrap_ci(mixed_a, "wa", 10, seed=0)


def test_dialog_confusions_sum_to_the_overall_matrix():
    records = [
        {"dialog": "b", "label": "hap", "pred": "sad"},
        {"dialog": "a", "label": "neu", "pred": None},
        {"dialog": "b", "label": "neu", "pred": "neu"},
    ]
    cms = cms_of(records, ["a", "b"])
    overall = ev.classification_metrics([r["label"] for r in records], [r["pred"] for r in records], miss_column=True)
    assert cms.sum(0).tolist() == overall["confusion_matrix"]
    assert cms[0].sum() == 1 and cms[1, 0, 2] == 1
    with pytest.raises(ValueError, match="not one of the dialogs"):
        cms_of(records, ["a"])
    with pytest.raises(ValueError, match="None for a miss"):
        cms_of([{"dialog": "a", "label": "neu", "pred": "neutral"}], ["a"])
    with pytest.raises(ValueError):
        scoring.dialog_confusions([{"dialog": "a", "label": "neu", "pred": None}], ["a"], miss_column=False)


# ---- the run outputs: both sets of metrics, intervals, printout order ---------------------------


def test_run_metrics_have_projected_utterances_and_seeded_intervals(tmp_path, monkeypatch, capsys):
    d1, d2 = "Ses05F_impro01", "Ses05M_impro01"
    work = make_work(tmp_path, [d1, d2])  # 4 labelled "neu" utterances [2i, 2i + 2] per dialog
    atomic_write_json(work / "runs/r/config.json", {"split": {"test": [d1, d2]}})
    segs = [segment(i, d1, "neu", ["neu", "neu", "sad", "ang"][i]) for i in range(4)] + [
        segment(0, d2, "neu", "neu"),
        segment(1, d2, None, "hap", start=2.2),
    ]  # d2: utterances 2, 3 missed
    monkeypatch.setattr(ev, "predict_split", stub_predictions({"r": segs}))
    m = ev.main(["--work", str(work), "--run", "r", "--bootstrap-samples", "300"])
    u = m["utterance"]
    assert (u["n"], u["n_missed"], u["n_dialogs"]) == (8, 2, 2)
    assert u["accuracy"] == pytest.approx(3 / 8)  # d1: neu neu sad ang; d2: neu hap miss miss
    assert [r["pred"] for r in u["utterances"]] == ["neu", "neu", "sad", "ang", "neu", "hap", None, None]
    assert set(u["utterances"][0]) == {"id", "dialog", "label", "pred"}
    assert np.array(u["confusion_matrix"]).shape == (4, 5) and u["confusion_matrix"][3] == [1, 1, 1, 3, 2]
    assert m["accuracy"] == pytest.approx(3 / 5)  # segment level: 5 labelled segments, 3 right
    assert set(m["ci95"]) == set(u["ci95"]) == set(ev.HEADLINE)
    assert m["bootstrap"] == {"unit": "dialog", "method": "percentile", "level": 0.95, "samples": 300, "seed": 0}
    first = (work / "runs/r/metrics.json").read_text()
    out = capsys.readouterr().out
    assert out.index("reference-projected") < out.index("segment-level")
    ev.main(["--work", str(work), "--run", "r", "--bootstrap-samples", "300", "--reuse-predictions"])
    assert (work / "runs/r/metrics.json").read_text() == first  # seeded: identical file
    other = ev.main(
        [
            "--work",
            str(work),
            "--run",
            "r",
            "--bootstrap-samples",
            "300",
            "--bootstrap-seed",
            "1",
            "--reuse-predictions",
        ]
    )
    assert other["utterance"]["accuracy"] == u["accuracy"]
    assert (
        ev.main(["--work", str(work), "--run", "r", "--bootstrap-samples", "0", "--reuse-predictions"])["ci95"] is None
    )


def test_import_evaluate_does_not_import_other_steps():
    import subprocess
    import sys

    code = (
        "import sys, evaluate; "
        "print(sorted(m for m in ('teer_calculate', 'align', 'train', 'preprocess') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=utils.Path(utils.__file__).parent, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_bad_arguments_and_labels_are_named_errors(tmp_path, capsys):
    """Issue 12: argument errors exit 2 with argparse's message; labels outside the four classes are
    an error naming labels.json, not silently "unlabelled"."""
    work = make_work(tmp_path, ["Ses05F_impro01"])
    (work / "runs" / "r").mkdir(parents=True)
    with pytest.raises(SystemExit) as e:
        ev.main(["--work", str(work), "--run", "r", "--bootstrap-samples", "-1"])
    assert e.value.code == 2 and "--bootstrap-samples -1: expected 0 or more" in capsys.readouterr().err
    labels = read_json(work / "labels.json")
    labels["dialogs"]["Ses05F_impro01"]["utterances"][0]["label"] = "excited"
    atomic_write_json(work / "labels.json", labels)
    with pytest.raises(
        PipelineError,
        match=r"labels.json: dialog Ses05F_impro01: utterance Ses05F_impro01_F000: "
        r"label 'excited'",
    ):
        ev.main(["--work", str(work), "--run", "r"])
