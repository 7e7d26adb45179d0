"""Label sets (common.formats.LABEL_SETS): Wu et al.'s six classes (wu6) through steps 1-6 and reproduce.py's wu6
group on the tiny demo (steps in this process), the metrics of any set against scikit-learn, predict.py's colours."""

import json
from pathlib import Path

import numpy as np
import pytest
import sklearn.metrics as skm
from conftest import steps_in_process

import evaluate
import predict
import reproduce
from common import formats, scoring

WU6 = ["hap", "sad", "ang", "neu", "oth", "xxx"]
# Wu et al.'s mapping, written out on its own (W-Wu/sTEER data_prep/iemo_lab_AER-cat.py)
WU_CLASS = {"neu": "neu", "hap": "hap", "exc": "hap", "sad": "sad", "ang": "ang", "xxx": "xxx"}
WU_CLASS.update({code: "oth" for code in ("fru", "sur", "fea", "dis", "oth")})


@pytest.fixture(scope="module")
def wu6_run(tmp_path_factory):
    """reproduce.py --only wu6 on the tiny demo (1 epoch, 1 seed): (its work dir, its tables.md text, run dir)."""
    base = tmp_path_factory.mktemp("wu6")
    args = ["--demo-dir", str(base / "demo"), "--demo-size", "tiny", "--results", str(base / "results")]
    args += ["--epochs", "1", "--bootstrap-samples", "50", "--only", "wu6", "--jobs", "1"]
    with steps_in_process():
        reproduce.main(args)
    work = base / "demo" / ("preprocessed_iemocap_tiny" + reproduce.WU6_WORK_SUFFIX)
    runs = sorted((work / "runs").iterdir())
    assert [r.name for r in runs] == ["simulated__aligned-p1.5__finetune__fusion__s0"]  # one seed on the demo
    return work, (base / "results" / "tables.md").read_text(), runs[0]


def test_wu6_step1_puts_every_utterance_in_wus_class(wu6_run):
    work, _, _ = wu6_run
    labels = formats.load_labels(work)
    assert labels["labels"] == WU6 and labels["label_set"] == "wu6"
    utts = [u for d in labels["dialogs"].values() for u in d["utterances"]]
    assert utts and all(u["label"] == WU_CLASS[u["code"]] for u in utts)
    assert {u["label"] for u in utts} >= {"hap", "sad", "neu", "oth"}  # the tiny corpus's codes


def test_a_six_class_run_trains_evaluates_and_is_teer_scored(wu6_run):
    work, _, run = wu6_run
    config = json.loads((run / "config.json").read_text())
    assert config["labels"] == WU6
    import torch

    state = torch.load(run / "checkpoint_best.pt", weights_only=True)["model"]
    assert state["head.classifier.weight"].shape[0] == 6  # the classifier's width is the set's
    preds = json.loads((run / "predictions.json").read_text())["segments"]
    assert preds and all(list(s["probs"]) == WU6 and s["pred"] in WU6 for s in preds)
    m = json.loads((run / "metrics.json").read_text())
    u = m["utterance"]
    assert u["labels"] == WU6 and u["columns"] == WU6 + ["miss"]
    cm = np.array(u["confusion_matrix"])
    assert cm.shape == (6, 7) and np.array(m["confusion_matrix"]).shape == (6, 6)
    recs = u["utterances"]
    assert cm.sum() == u["n"] == len(recs) and cm[:, 6].sum() == u["n_missed"]
    truth = [r["label"] for r in recs]
    said = [r["pred"] or "miss" for r in recs]
    assert cm.tolist() == skm.confusion_matrix(truth, said, labels=WU6 + ["miss"])[:6].tolist()
    assert u["accuracy"] == pytest.approx(skm.accuracy_score(truth, said))
    # every reference utterance of the test dialogs has a class: all of them are scored
    labels = formats.load_labels(work)
    test = config["split"]["test"]
    assert u["n"] == sum(len(labels["dialogs"][d]["utterances"]) for d in test)
    for name in ("teer.json", "teer_authors.json"):
        t = json.loads((run / name).read_text())
        assert 0.0 <= t["TEER"] and 0.0 <= t["sTEER"] and t["n_dialogs"] == len(test)


def test_the_wu6_table_prints_wus_numbers_beside_ours(wu6_run):
    from test_reproduce import assert_tables_render, table_cells

    work, text, run = wu6_run
    section = text[text.index("## Wu et al.'s six classes") :]
    assert assert_tables_render(section) == 2
    rows = {table_cells(line)[0]: table_cells(line) for line in section.splitlines() if line.startswith("| ")}
    wu = rows["Wu et al. (6 classes; paper)"]
    assert [wu[1], wu[7], wu[8]] == ["49.49", "66.03", "65.17"]
    assert (wu[1], wu[7], wu[8]) == tuple(
        f"{v:.2f}" for v in (scoring.PAPER["table1"]["wu2023"]["accuracy"], *scoring.PAPER["table3"]["wu2023"].values())
    )
    ours = rows["Ours (wu6, simulated, with alignment)"]
    m = json.loads((run / "metrics.json").read_text())["utterance"]
    t, ta = (json.loads((run / f).read_text()) for f in ("teer.json", "teer_authors.json"))
    assert (
        ours[1].split(" [")[0] == f"{100 * m['accuracy']:.2f}"
        and ours[4].split(" [")[0] == f"{100 * m['macro_f1']:.2f}"
    )
    assert ours[5] == f"{m['n']} ({m['n_missed']})"
    assert ours[7:11] == [
        f"{100 * t['TEER']:.2f}",
        f"{100 * t['sTEER']:.2f}",
        f"{100 * ta['TEER']:.2f}",
        f"{100 * ta['sTEER']:.2f}",
    ]
    assert [r for r in rows if r in formats.label_names(WU6).values()] == list(formats.label_names(WU6).values())
    assert rows["no agreement (xxx)"][1] == f"{m['per_class']['xxx']['f1']:.2f}"


@pytest.mark.parametrize("classes", [WU6, ["joy", "anger", "neutral"]])
def test_metrics_of_any_set_agree_with_sklearn_and_the_bootstrap_path(classes):
    rng = np.random.default_rng(len(classes))
    n = 300
    y_true = [str(c) for c in rng.choice(classes, n)]
    y_pred = [None if rng.random() < 0.15 else str(rng.choice(classes)) for _ in range(n)]
    m = evaluate.classification_metrics(y_true, y_pred, classes, miss_column=True)
    said = ["miss" if p is None else p for p in y_pred]
    assert (
        m["confusion_matrix"] == skm.confusion_matrix(y_true, said, labels=classes + ["miss"])[: len(classes)].tolist()
    )
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y_true, said, labels=classes, average="macro", zero_division=0))
    records = [{"dialog": f"d{i % 7}", "label": t, "pred": p} for i, (t, p) in enumerate(zip(y_true, y_pred))]
    cms = scoring.dialog_confusions(records, [f"d{i}" for i in range(7)], labels=classes)
    assert cms.shape == (7, len(classes), len(classes) + 1) and cms.sum(0).tolist() == m["confusion_matrix"]
    fast = scoring.metrics_from_confusion(cms.sum(0))
    for k in scoring.HEADLINE:
        assert float(fast[k]) == pytest.approx(m[k])
    votes = evaluate.project_dialog(
        [{"start": 0.0, "end": 2.0, "pred": classes[-1]}, {"start": 1.0, "end": 2.0, "pred": classes[0]}],
        [{"start": 0.0, "end": 1.5}, {"start": 1.0, "end": 2.0}, {"start": 5.0, "end": 6.0}],
        classes,
    )
    assert votes == [classes[-1], classes[0], None]  # overlap 1.5 vs 0.5; a tie of 1.0 each: the first class


def test_predict_gives_every_class_of_any_set_its_own_colour():
    four = predict.emotion_colours(formats.LABELS)
    assert four == {lab: predict.EMOTION_COLOURS[lab] for lab in formats.LABELS}  # the paper's colours unchanged
    for classes in (WU6, [f"c{i}" for i in range(9)]):
        colours = predict.emotion_colours(classes)
        assert list(colours) == list(classes) and len(set(colours.values())) == len(classes)
    shares = predict.emotion_shares(
        [{"start": 0.0, "end": 3.0, "emotion": "xxx"}, {"start": 3.0, "end": 4.0, "emotion": "oth"}], WU6
    )
    assert shares == {"hap": 0.0, "sad": 0.0, "ang": 0.0, "neu": 0.0, "oth": 0.25, "xxx": 0.75}


def test_a_labels_json_of_one_set_refuses_labels_of_another(tmp_path):
    work = Path(tmp_path)
    utt = {"id": "Ses01F_impro01_F000", "start": 0.0, "end": 1.0, "speaker": "F", "label": "xxx", "code": "xxx"}
    (work / "labels.json").write_text(json.dumps({"dialogs": {"Ses01F_impro01": {"utterances": [utt]}}}))
    with pytest.raises(Exception, match=r"label 'xxx', expected one of \['hap', 'ang', 'sad', 'neu'\] or null"):
        formats.load_labels(work)


def test_a_wu6_corpus_scored_by_a_four_class_run_through_a_label_map(tmp_path):
    """Cross-corpus (common.crosscorpus): B's wu6 labels mapped into A's four classes; B's label_set goes (A's
    labels.json names none), and a B label the map leaves out is not scored."""
    from common import crosscorpus

    utts = [
        {"id": f"Ses01F_impro01_F00{i}", "start": i, "end": i + 1.0, "speaker": "F", "label": lab, "code": code}
        for i, (lab, code) in enumerate([("hap", "exc"), ("oth", "fru"), ("xxx", "xxx"), ("sad", "sad")])
    ]
    b = tmp_path / "b"
    b.mkdir()
    (b / "labels.json").write_text(
        json.dumps({"labels": WU6, "label_set": "wu6", "dialogs": {"Ses01F_impro01": {"utterances": utts}}})
    )
    a = {"labels": list(formats.LABELS), "dialogs": {}}
    labels, _ = crosscorpus.load_eval_labels(b, a, "hap=hap,sad=sad,ang=ang,neu=neu,oth=,xxx=")
    assert labels["labels"] == list(formats.LABELS) and "label_set" not in labels
    assert [u["label"] for u in labels["dialogs"]["Ses01F_impro01"]["utterances"]] == ["hap", None, None, "sad"]
    with pytest.raises(Exception, match="differ from the run's"):
        crosscorpus.load_eval_labels(b, a, None)


def test_predict_with_a_six_class_run(wu6_run, tmp_path):
    """predict.py with the wu6 run on a demo dialog (its step-2 outputs as --asr-json/--rttm): the six classes'
    probabilities, shares over the six, a word per class in the subtitles, the timeline drawn."""
    work, _, run = wu6_run
    dialog = sorted(formats.load_labels(work)["dialogs"])[-1]
    info = formats.load_labels(work)["dialogs"][dialog]
    wav = Path(formats.load_labels(work)["corpus"]) / info["wav"]
    out = tmp_path / "out"
    with steps_in_process():
        results = predict.main(
            [str(wav), "--run", str(run), "--asr-json", str(work / "simulated" / "asr" / f"{dialog}.json")]
            + ["--rttm", str(work / "simulated" / "diarization" / f"{dialog}.rttm"), "--out", str(out)]
            + ["--device", "cpu"]
        )
    (r,) = results.values()
    assert r["labels"] == WU6 and list(r["summary"]["emotion_shares_by_time"]) == WU6
    assert r["segments"] and all(list(s["probs"]) == WU6 and s["emotion"] in WU6 for s in r["segments"])
    assert sum(r["summary"]["emotion_shares_by_time"].values()) == pytest.approx(1.0)
    vtt = (out / f"{wav.stem}.vtt").read_text()
    assert all(f"[{predict.EMOTION_WORDS[s['emotion']]}]" in vtt for s in r["segments"])
    assert (out / f"{wav.stem}.timeline.png").stat().st_size > 0
