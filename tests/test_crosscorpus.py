"""Cross-corpus evaluation (common.crosscorpus, evaluate.py / teer_calculate.py --eval-work): a run trained on the
tiny demo corpus (seed 0) scored on a second tiny demo corpus (seed 1): B's utterances are the denominator, the
run's own outputs are untouched, a label-set mismatch is a one-line error and a label map resolves it."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import TINY_CORPUS, FinishedStep

import align
import evaluate
import preprocess
import teer_calculate
import train
from common import crosscorpus, formats
from common.cli import PipelineError

RENAMED = {"hap": "joy", "ang": "anger", "sad": "sadness", "neu": "neutral"}


def steps_123(work: Path, labels_from: Path) -> None:
    shutil.copy(labels_from / "labels.json", work / "labels.json")
    preprocess.main(["--work", str(work), "--backend", "simulated"])
    align.main(["--work", str(work), "--pipe", "simulated", "--variant", "aligned"])


@pytest.fixture(scope="module")
def corpora(demo_work, tmp_path_factory):
    """(A's work dir with run "r" trained and evaluated, B's work dir: another demo corpus, seed 1, steps 1-3)."""
    from demo.build_ser_models import build
    from demo.make_corpus import generate
    from iemo_lab_with_timestamps import main as step1

    work_a = tmp_path_factory.mktemp("cross_a")
    steps_123(work_a, demo_work)
    models = build(tmp_path_factory.mktemp("cross_models"), seed=0)
    train.main(
        ["--work", str(work_a), "--pipe", "simulated", "--run", "r", "--text-model", models["text_model"],
         "--audio-model", models["audio_model"], "--epochs", "1", "--batch-size", "4", "--num-workers", "0",
         "--device", "cpu"]
    )  # fmt: skip
    evaluate.main(["--work", str(work_a), "--run", "r", "--bootstrap-samples", "0"])
    root_b = tmp_path_factory.mktemp("demo_b") / "IEMOCAP_full_release"
    generate(root_b, **{**TINY_CORPUS, "seed": 1})
    labels_b = tmp_path_factory.mktemp("labels_b")
    step1(["--iemocap", str(root_b), "--work", str(labels_b)])
    work_b = tmp_path_factory.mktemp("cross_b")
    steps_123(work_b, labels_b)
    return work_a, work_b


def run_files(run_dir: Path) -> dict:
    return {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def scored(corpora):
    """evaluate.py and teer_calculate.py --eval-work B on run r; (A, B, the run's files before, metrics)."""
    work_a, work_b = corpora
    before = run_files(work_a / "runs" / "r")
    argv = ["--work", str(work_a), "--run", "r", "--eval-work", str(work_b), "--eval-name", "B"]
    metrics = evaluate.main([*argv, "--bootstrap-samples", "0"])
    teer_calculate.main([*argv, "--also-authors"])
    return work_a, work_b, before, metrics


def labelled(labels: dict, dialogs) -> int:
    return sum(u["label"] is not None for d in dialogs for u in labels["dialogs"][d]["utterances"])


def test_cross_metrics_name_b_and_count_its_utterances(scored):
    work_a, work_b, before, metrics = scored
    labels_b = json.loads((work_b / "labels.json").read_text())
    assert set(metrics) == {"test", "all"}
    for split, m in metrics.items():
        folder = work_a / "runs" / "r" / "eval" / "B" / split
        on_disk = json.loads((folder / "metrics.json").read_text())
        assert on_disk["utterance"]["n"] == m["utterance"]["n"]
        cross = on_disk["cross_corpus"]
        assert cross["eval_work"] == str(work_b) and cross["name"] == "B" and cross["split"] == split
        assert cross["labels_run"] == cross["labels_eval"] == list(formats.LABELS) and cross["label_map"] is None
        assert cross["eval_data"]["work"] == str(work_b)
        assert cross["eval_data"]["labels_sha256"] == cross["labels_sha256"]
        assert on_disk["data_check"]["status"] == "same"  # the TRAINING work dir's check
        dialogs = sorted(labels_b["dialogs"]) if split == "all" else sorted(
            d for d, v in labels_b["dialogs"].items() if v["session"] == 5
        )  # fmt: skip
        assert sorted(cross["eval_data"]["cache_files"]) == [f"{d}.pt" for d in dialogs]
        assert m["utterance"]["n"] == labelled(labels_b, dialogs)  # B's labelled utterances are the denominator
        assert {u["dialog"] for u in m["utterance"]["utterances"]} == set(dialogs)
        teer = json.loads((folder / "teer.json").read_text())
        assert teer["cross_corpus"]["eval_work"] == str(work_b) and teer["n_dialogs"] == len(dialogs)
        assert (folder / "teer_authors.json").is_file() and (folder / "confusion_matrix.png").is_file()
    assert metrics["all"]["utterance"]["n"] > metrics["test"]["utterance"]["n"] > 0


def test_the_runs_own_outputs_are_untouched(scored):
    work_a, _, before, _ = scored
    assert run_files(work_a / "runs" / "r") == before
    own = json.loads((work_a / "runs" / "r" / "metrics.json").read_text())
    assert "cross_corpus" not in own


@pytest.fixture(scope="module")
def renamed(corpora, tmp_path_factory):
    """A copy of B whose labels.json names the four classes otherwise (joy, anger, sadness, neutral)."""
    _, work_b = corpora
    work_c = tmp_path_factory.mktemp("cross_c") / "C"
    shutil.copytree(work_b, work_c)
    labels = json.loads((work_c / "labels.json").read_text())
    labels["labels"] = [RENAMED[lab] for lab in formats.LABELS]
    for d in labels["dialogs"].values():
        for u in d["utterances"]:
            u["label"] = RENAMED.get(u["label"])
    (work_c / "labels.json").write_text(json.dumps(labels))
    return work_c


def test_a_label_set_mismatch_is_a_one_line_error(corpora, renamed):
    work_a, _ = corpora
    argv = ["--work", str(work_a), "--run", "r", "--eval-work", str(renamed), "--bootstrap-samples", "0"]
    proc = FinishedStep("evaluate.py", argv, stdout=subprocess.PIPE)
    assert proc.returncode == 2
    last = proc.output.strip().splitlines()[-1]
    assert last.startswith("error: ") and "labels.json" in last and "--label-map" in last
    with pytest.raises(PipelineError, match="leaves \\['neutral'\\] of its labels unmapped"):
        evaluate.main([*argv, "--label-map", "joy=hap,anger=ang,sadness=sad"])


def test_a_label_map_makes_them_match_with_the_same_numbers(scored, renamed):
    work_a, _, _, metrics = scored
    spec = ",".join(f"{new}={old}" for old, new in RENAMED.items())
    argv = ["--work", str(work_a), "--run", "r", "--eval-work", str(renamed), "--label-map", spec]
    mapped = evaluate.main([*argv, "--bootstrap-samples", "0"])
    for split in ("test", "all"):
        got, want = mapped[split], metrics[split]
        assert got["cross_corpus"]["label_map"] == {new: old for old, new in RENAMED.items()}
        assert got["cross_corpus"]["labels_eval"] == [RENAMED[lab] for lab in formats.LABELS]
        assert got["cross_corpus"]["name"] == "C"
        for key in ("accuracy", "ua", "macro_f1", "confusion_matrix"):
            assert got["utterance"][key] == want["utterance"][key] and got[key] == want[key]
    teer = teer_calculate.main([*argv, "--eval-split", "test"])
    want = json.loads((work_a / "runs" / "r" / "eval" / "B" / "test" / "teer.json").read_text())
    assert teer["TEER"] == want["TEER"] and teer["sTEER"] == want["sTEER"]


def test_cross_flags_need_eval_work():
    for script in ("evaluate.py", "teer_calculate.py"):
        proc = FinishedStep(script, ["--run", "r", "--label-map", "a=b"], stdout=subprocess.PIPE)
        assert proc.returncode == 2 and "--label-map needs --eval-work" in proc.output


def test_label_maps_parse_and_check():
    assert crosscorpus.parse_label_map("exc=hap, fru=") == {"exc": "hap", "fru": None}
    with pytest.raises(PipelineError, match="mapped twice"):
        crosscorpus.parse_label_map("a=b,a=c")
    with pytest.raises(PipelineError, match="not 'label=label'"):
        crosscorpus.parse_label_map("a")
    assert crosscorpus.resolve_label_map(["hap", "sad"], ["sad", "hap"], None, "x") == {"sad": "sad", "hap": "hap"}
    with pytest.raises(PipelineError, match="maps onto \\['joy'\\]"):
        crosscorpus.resolve_label_map(["hap"], ["exc"], {"exc": "joy"}, "x")


def test_reproduce_writes_a_cross_corpus_table_that_recomputes_from_its_files(tmp_path):
    """reproduce.py --eval-demo-seed 1 (a second demo corpus, as --eval-corpus-csv): the table's cells are the
    metrics files' values, B's run on its own work dir, the run's own metrics.json cited for the first row."""
    import re
    import time

    from conftest import steps_in_process

    import reproduce

    args = ["--demo-dir", str(tmp_path / "demo"), "--demo-size", "tiny", "--results", str(tmp_path / "results"),
            "--epochs", "1", "--seeds", "1", "--bootstrap-samples", "0", "--only", "main", "--jobs", "1",
            "--eval-demo-seed", "1"]  # fmt: skip
    t0 = time.time()
    with steps_in_process():
        reproduce.main(args)
    print(f"reproduce tiny main + cross-corpus: {time.time() - t0:.1f} s")
    prov = json.loads((tmp_path / "results" / "provenance.json").read_text())
    cross = prov["config"]["cross_corpus"]
    print("cross-corpus steps:", [(t["step"], t["seconds"]) for t in prov["steps"] if t.get("cross_corpus")])
    assert Path(cross["work"]).name == "preprocessed_iemocap_tiny__cross_corpus_seed1"
    tables = (tmp_path / "results" / "tables.md").read_text()
    section = tables[tables.index("## Cross-corpus") :]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "metrics.json`" in line]
    assert len(rows) == 6  # two main configurations x (own test set, the other's test split, all of it)
    for line in rows:
        cells = [c.strip() for c in line.strip().split("|")[1:-1]]
        path = Path(re.fullmatch(r"`(.*)`", cells[-1]).group(1))
        m = json.loads(path.read_text())
        want = [f"{100 * m['utterance'][k]:.2f}" for k in ("accuracy", "ua", "weighted_f1", "macro_f1")]
        assert cells[2:6] == want and cells[6] == f"{100 * m['accuracy']:.2f}"
        teer = json.loads((path.parent / "teer.json").read_text())
        assert cells[7:9] == [f"{100 * teer['TEER']:.2f}", f"{100 * teer['sTEER']:.2f}"]
        assert cells[9] == str(m["utterance"]["n"])
        if cells[1] != "own test set":
            assert m["cross_corpus"]["eval_work"] == cross["work"]
            assert m["cross_corpus"]["split"] == path.parent.name
        else:
            assert "cross_corpus" not in m
