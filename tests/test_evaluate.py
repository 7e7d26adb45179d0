"""Step 5, evaluate.py: classification metrics against scikit-learn, coverage known answer, the run
outputs (with utils.predict_split replaced by a stub) and multi-fold aggregation."""
import numpy as np
import pytest
from sklearn import metrics as skm

import evaluate as ev
import utils
from utils import LABELS, PipelineError, atomic_write_json, read_json


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
    utterances = {"d1": [{"start": 0, "end": 4, "label": "neu"}, {"start": 3, "end": 6, "label": "sad"},
                         {"start": 6, "end": 9, "label": None}],
                  "d2": [{"start": 0, "end": 2, "label": "ang"}]}
    # Scored segments: [1,2] and [1.5,5] (union [1,5], 4 s labelled) + [7,8] unlabelled time; none in d2.
    segments = [{"dialog": "d1", "start": 1, "end": 2}, {"dialog": "d1", "start": 1.5, "end": 5},
                {"dialog": "d1", "start": 7, "end": 8}]
    c = ev.coverage(segments, utterances)
    assert c["labelled_reference_s"] == pytest.approx(8.0)
    assert c["covered_s"] == pytest.approx(4.0)
    assert c["share"] == pytest.approx(0.5)


def segment(i, dialog, label, pred, start=None):
    start = 2.0 * i if start is None else start
    return {"id": f"{dialog}-{i:04d}", "dialog": dialog, "start": start, "end": start + 1.5, "speaker": "SPEAKER_00",
            "text": "x", "label": label, "pred": pred, "probs": {lab: float(lab == pred) for lab in LABELS}}


def make_work(tmp_path, dialogs):
    """labels.json with one labelled 2 s utterance per predicted segment slot (4 per dialog)."""
    work = tmp_path / "work"
    atomic_write_json(work / "labels.json", {"labels": list(LABELS), "dialogs": {
        d: {"session": utils.session_of(d), "utterances": [
            {"id": f"{d}_F00{i}", "start": 2.0 * i, "end": 2.0 * i + 2.0, "speaker": "F", "label": "neu"}
            for i in range(4)]} for d in dialogs}})
    return work


def stub_predictions(by_run):
    def predict_split(run_dir, split="test", device=None):
        assert split == "test"
        return {"run": run_dir.name, "split": split, "segments": by_run[run_dir.name]}
    return predict_split


def test_single_run_writes_predictions_metrics_and_plot(tmp_path, monkeypatch):
    d = "Ses05F_impro01"
    work = make_work(tmp_path, [d])
    atomic_write_json(work / "runs/r/config.json", {"split": {"test": [d]}})
    segs = [segment(0, d, "neu", "neu"), segment(1, d, "sad", "sad"), segment(2, d, "sad", "hap"),
            segment(3, d, None, "ang")]  # unlabelled: predicted, not scored
    monkeypatch.setattr(utils, "predict_split", stub_predictions({"r": segs}), raising=False)
    m = ev.main(["--work", str(work), "--run", "r"])
    assert (m["n_segments"], m["n_scored"], m["n_unlabelled"]) == (4, 3, 1)
    assert m["accuracy"] == pytest.approx(2 / 3)
    # 3 scored segments x 1.5 s over 4 x 2 s of labelled reference
    assert m["coverage"]["share"] == pytest.approx(4.5 / 8.0)
    run = work / "runs/r"
    assert read_json(run / "predictions.json")["segments"] == segs
    assert read_json(run / "metrics.json")["confusion_matrix"] == m["confusion_matrix"]
    assert (run / "confusion_matrix.png").stat().st_size > 1000
    # --reuse-predictions scores the file without calling the model
    monkeypatch.setattr(utils, "predict_split", None, raising=False)
    assert ev.main(["--work", str(work), "--run", "r", "--reuse-predictions"])["accuracy"] == pytest.approx(2 / 3)


def test_multifold_mean_std_and_pooled_known_answer(tmp_path, monkeypatch):
    d1, d2 = "Ses01F_impro01", "Ses02F_impro01"
    work = make_work(tmp_path, [d1, d2])
    atomic_write_json(work / "runs/cv/config.json", {"folds": ["fold1", "fold2"]})
    atomic_write_json(work / "runs/cv/fold1/config.json", {"split": {"test": [1]}})  # sessions form
    atomic_write_json(work / "runs/cv/fold2/config.json", {"split": {"test": [d2]}})
    folds = {"fold1": [segment(i, d1, "hap", "hap") for i in range(4)],  # accuracy 1
             "fold2": [segment(i, d2, "ang", "ang" if i < 2 else "sad") for i in range(4)]}  # accuracy 0.5
    monkeypatch.setattr(utils, "predict_split", stub_predictions(folds), raising=False)
    m = ev.main(["--work", str(work), "--run", "cv"])
    assert m["folds"]["fold1"]["accuracy"] == pytest.approx(1.0)
    assert m["folds"]["fold2"]["accuracy"] == pytest.approx(0.5)
    assert m["mean_std"]["accuracy"] == pytest.approx({"mean": 0.75, "std": 0.25})
    assert m["pooled"]["accuracy"] == pytest.approx(6 / 8) and m["pooled"]["n_scored"] == 8
    assert m["mean_std"]["n_scored"] == 8
    assert read_json(work / "runs/cv/metrics.json")["mean_std"]["accuracy"]["mean"] == pytest.approx(0.75)
    assert (work / "runs/cv/fold2/metrics.json").is_file()


def test_bad_predictions_raise_naming_the_file(tmp_path, monkeypatch):
    d = "Ses05F_impro01"
    work = make_work(tmp_path, [d])
    bad = [segment(0, d, "neu", "neutral")]
    monkeypatch.setattr(utils, "predict_split", stub_predictions({"r": bad}), raising=False)
    (work / "runs/r").mkdir(parents=True)
    with pytest.raises(PipelineError, match="predictions.json.*'neutral'"):
        ev.main(["--work", str(work), "--run", "r"])
