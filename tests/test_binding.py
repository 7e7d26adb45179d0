"""A run bound to its data (issue 19, item 1): step 3 names a variant by every setting that changes
it, so a departures switch writes another directory; a trained run records what it read (config.json
"data": labels.json, the step-3 config, the cache files), and evaluate.py, teer_calculate.py,
predict.py and train.py --resume refuse in one line (exit 2) when that changed, naming it, unless
--allow-changed-data, which the outputs record.

One tiny run on the demo (step 2 simulated, step 3 aligned-p1.5, 1 epoch), scored once by
evaluate.py; each test changes one thing, and puts it back.
"""

import contextlib
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import steps_in_process, tiny_trained_run

import align
import evaluate
import predict
import teer_calculate
import train
from common import fileio, rundirs
from common.cli import PipelineError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bound(demo_corpus, demo_work, tmp_path_factory):
    """(work, run name, training argv, a test dialog) of a run trained and evaluated once."""
    work, run_dir, argv = tiny_trained_run(demo_work, tmp_path_factory, "binding")
    evaluate.main(["--work", str(work), "--run", "r", "--bootstrap-samples", "0"])
    dialog = json.loads((run_dir / "config.json").read_text())["split"]["test"][0]
    return work, "r", argv, dialog


@contextlib.contextmanager
def restored(*paths):
    """Put these files back as they were (bytes) when the block ends."""
    saved = {p: p.read_bytes() for p in paths}
    try:
        yield
    finally:
        for p, data in saved.items():
            fileio.atomic_write_bytes(p, data)


def tree_bytes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_run_records_what_it_was_trained_on(bound):
    work, name, _, dialog = bound
    config = json.loads((work / "runs" / name / "config.json").read_text())
    data = config["data"]
    split = config["split"]
    assert sorted(data["cache_files"]) == sorted(f"{d}.pt" for part in ("train", "val", "test") for d in split[part])
    cache = work / "simulated" / "aligned-p1.5" / "cache"
    assert data["cache_files"][f"{dialog}.pt"] == fileio.file_sha256(cache / f"{dialog}.pt")
    assert (
        data["cache_sha256"]
        == hashlib.sha256(
            "".join(f"{n}\0{fileio.file_sha256(cache / n)}\n" for n in sorted(data["cache_files"])).encode()
        ).hexdigest()
    )
    assert data["labels_sha256"] == hashlib.sha256((work / "labels.json").read_bytes()).hexdigest()
    manifest = fileio.read_json(work / "simulated" / "aligned-p1.5" / "manifest.json")
    assert data["step3_config"] == manifest["config"] and data["step3_config_key"] == manifest["config_key"]
    metrics = fileio.read_json(work / "runs" / name / "metrics.json")
    assert metrics["data_check"] == {"status": "same", "changed": [], "allow_changed_data": False}


def test_a_departures_switch_writes_its_own_variant_and_leaves_the_default_untouched(bound):
    work, name, _, _ = bound
    default = work / "simulated" / "aligned-p1.5"
    before = tree_bytes(default)
    align.main(
        [
            "--work",
            str(work),
            "--pipe",
            "simulated",
            "--variant",
            "aligned",
            "--word-policy",
            "authors",
            "--label-rule",
            "authors",
            "--channel",
            "0",
        ]
    )
    new = work / "simulated" / "aligned-p1.5-words_authors-label_authors-ch_0"
    assert tree_bytes(default) == before
    config = fileio.read_json(new / "manifest.json")["config"]
    assert (config["word_policy"], config["label_rule"], config["channel"]) == ("authors", "authors", "0")
    assert sorted(p.name for p in (new / "cache").iterdir()) == sorted(p.name for p in (default / "cache").iterdir())
    # the run is still scored on what it was trained on
    assert rundirs.check_run_data(work / "runs" / name, work / "labels.json")["status"] == "same"


def refused(work, name, argv_train, dialog, expected: str):
    """Every step that uses the run refuses in one line naming `expected`; nothing is written."""
    run_dir = work / "runs" / name
    metrics = (run_dir / "metrics.json").read_bytes()
    calls = {
        "evaluate": lambda: evaluate.main(["--work", str(work), "--run", name, "--bootstrap-samples", "0"]),
        "teer": lambda: teer_calculate.main(["--work", str(work), "--run", name]),
        "resume": lambda: train.main(argv_train),
        "predict": lambda: predict.main(["x.wav", "--run", str(run_dir)]),
    }
    for step, call in calls.items():
        with pytest.raises(PipelineError) as e:
            call()
        message = str(e.value)
        assert "\n" not in message and expected in message and "--allow-changed-data" in message, (step, message)
        assert message.startswith(f"{run_dir}: its data changed since it was trained"), (step, message)
    assert (run_dir / "metrics.json").read_bytes() == metrics


def test_changed_labels_are_refused_and_the_override_is_recorded(bound, capsys):
    work, name, argv, dialog = bound
    labels = fileio.read_json(work / "labels.json")
    utt = labels["dialogs"][dialog]["utterances"][0]
    with restored(work / "labels.json", work / "runs" / name / "metrics.json"):
        utt["label"] = "ang" if utt.get("label") != "ang" else "sad"
        fileio.atomic_write_json(work / "labels.json", labels)
        refused(work, name, argv, dialog, "labels.json (sha256 ")
        metrics = evaluate.main(
            ["--work", str(work), "--run", name, "--bootstrap-samples", "0", "--allow-changed-data"]
        )
        assert metrics["data_check"]["status"] == "changed" and metrics["data_check"]["allow_changed_data"] is True
        assert metrics["data_check"]["changed"][0].startswith("labels.json (sha256 ")
        assert fileio.read_json(work / "runs" / name / "metrics.json")["data_check"] == metrics["data_check"]
        assert "WARNING r: scored on changed data" in capsys.readouterr().out
        teer = teer_calculate.main(["--work", str(work), "--run", name, "--allow-changed-data", "--out", "t.json"])
        assert teer["data_check"]["status"] == "changed"
        (work / "runs" / name / "t.json").unlink()
    assert rundirs.check_run_data(work / "runs" / name)["status"] == "same"


def test_a_changed_cache_file_is_refused_naming_it(bound):
    work, name, argv, dialog = bound
    path = work / "simulated" / "aligned-p1.5" / "cache" / f"{dialog}.pt"
    with restored(path):
        cache = fileio.load_pt(path)
        cache["segments"][0]["audio"] = cache["segments"][0]["audio"] * 0.5
        fileio.atomic_torch_save(cache, path)
        refused(work, name, argv, dialog, f"step-3 cache files {dialog}.pt (changed)")
    with restored(path):
        path.unlink()
        refused(work, name, argv, dialog, f"step-3 cache files {dialog}.pt (missing)")


def test_realigning_the_variant_on_other_inputs_is_refused(bound):
    """A step-3 re-run that rewrites the trained variant from changed step-2 output (here one word of a
    test dialog dropped) changes that dialog's cache: refused, naming it; a changed step-3 config
    (a manifest written by other settings) is named as such."""
    work, name, argv, dialog = bound
    variant = work / "simulated" / "aligned-p1.5"
    asr = work / "simulated" / "asr" / f"{dialog}.json"
    files = [
        asr,
        variant / "manifest.json",
        *(
            variant / sub / f"{dialog}{ext}"
            for sub, ext in (("cache", ".pt"), ("segments", ".json"), ("segments", ".txt"))
        ),
    ]
    with restored(*files):
        result = fileio.read_json(asr)
        seg = next(s for s in result["segments"] if len(s.get("words", [])) > 1)
        seg["words"] = seg["words"][1:]
        fileio.atomic_write_json(asr, result)
        align.main(["--work", str(work), "--pipe", "simulated", "--variant", "aligned"])
        refused(work, name, argv, dialog, f"step-3 cache files {dialog}.pt (changed)")
    with restored(variant / "manifest.json"):
        manifest = fileio.read_json(variant / "manifest.json")
        manifest["config"]["word_policy"] = "authors"
        fileio.atomic_write_json(variant / "manifest.json", manifest)
        refused(work, name, argv, dialog, "step-3 config of simulated/aligned-p1.5 (word_policy None -> 'authors')")
    assert rundirs.check_run_data(work / "runs" / name)["status"] == "same"


def test_resume_on_changed_data_with_the_override_records_it(bound):
    work, name, argv, dialog = bound
    copy = work / "runs" / "r_copy"
    shutil.copytree(work / "runs" / name, copy)
    config = fileio.read_json(copy / "config.json")
    fileio.atomic_write_json(copy / "config.json", {**config, "run": "r_copy"})
    argv = [*argv[: argv.index("--run") + 1], "r_copy", *argv[argv.index("--run") + 2 :]]
    with restored(work / "labels.json"):
        labels = fileio.read_json(work / "labels.json")
        labels["note"] = "edited"
        fileio.atomic_write_json(work / "labels.json", labels)
        with pytest.raises(PipelineError, match="start over with --no-resume"):
            train.main(argv)
        train.main([*argv, "--allow-changed-data"])  # resumes after its last epoch: nothing left to train
        changed = fileio.read_json(copy / "config.json")["data_changed_on_resume"]
        assert len(changed) == 1 and changed[0].startswith("labels.json")
    shutil.rmtree(copy)


def test_fold_runs_check_each_fold(bound):
    """A fold run (top-level config.json listing folds): each fold's data is checked and named."""
    work, name, _, dialog = bound
    cv = work / "runs" / "cv"
    for fold in ("fold1", "fold2"):
        shutil.copytree(work / "runs" / name, cv / fold)
    fileio.atomic_write_json(cv / "config.json", {"folds": ["fold1", "fold2"], "run": "cv"})
    path = work / "simulated" / "aligned-p1.5" / "cache" / f"{dialog}.pt"
    try:
        teer = teer_calculate.main(["--work", str(work), "--run", "cv"])
        assert teer["data_check"]["folds"]["fold2"]["status"] == "same"
        with restored(path):
            path.write_bytes(path.read_bytes() + b"\0")
            with pytest.raises(PipelineError, match=f"fold1: step-3 cache files {dialog}.pt .changed.; fold2: "):
                evaluate.main(["--work", str(work), "--run", "cv", "--reuse-predictions", "--bootstrap-samples", "0"])
            metrics = evaluate.main(
                [
                    "--work",
                    str(work),
                    "--run",
                    "cv",
                    "--reuse-predictions",
                    "--bootstrap-samples",
                    "0",
                    "--allow-changed-data",
                ]
            )
            assert metrics["data_check"]["status"] == "changed" and len(metrics["data_check"]["changed"]) == 2
            assert metrics["folds"]["fold1"]["data_check"]["status"] == "changed"
            assert metrics["folds"]["fold1"]["data_check"]["allow_changed_data"] is True
    finally:
        shutil.rmtree(cv)


def test_predict_uses_the_recorded_step3_settings_and_records_the_check(bound, tmp_path):
    work, name, _, dialog = bound
    run_dir = work / "runs" / name
    config = fileio.read_json(run_dir / "config.json")
    assert predict.step3_flags(config, run_dir) == [
        "--variant",
        "aligned",
        "--max-pause",
        "1.5",
        "--min-label-overlap",
        "0.1",
        "--tie-break",
        "asr-segment",
        "--channel",
        "mean",
        "--max-word-seconds",
        "3.0",
    ]
    # the manifest rewritten by other settings no longer decides predict's step 3
    other = {
        **config,
        "data": {**config["data"], "step3_config": {**config["data"]["step3_config"], "word_policy": "authors"}},
    }
    assert predict.step3_flags(other, run_dir)[-2:] == ["--word-policy", "authors"]
    labels = fileio.read_json(work / "labels.json")
    wav = Path(labels["corpus"]) / labels["dialogs"][dialog]["wav"]
    asr, rttm = work / "simulated" / "asr" / f"{dialog}.json", work / "simulated" / "diarization" / f"{dialog}.rttm"
    with restored(work / "labels.json"), steps_in_process():
        fileio.atomic_write_json(work / "labels.json", {**labels, "note": "edited"})
        results = predict.main(
            [
                str(wav),
                "--run",
                str(run_dir),
                "--asr-json",
                str(asr),
                "--rttm",
                str(rttm),
                "--out",
                str(tmp_path),
                "--device",
                "cpu",
                "--allow-changed-data",
            ]
        )
    check = results[dialog]["data_check"]
    assert check["status"] == "changed" and check["allow_changed_data"] is True
    assert fileio.read_json(tmp_path / f"{dialog}.emotions.json")["data_check"] == check


def test_the_refusal_from_the_command_line_is_one_line_with_exit_status_2(bound):
    work, name, _, dialog = bound
    path = work / "simulated" / "aligned-p1.5" / "cache" / f"{dialog}.pt"
    with restored(path):
        torch.save({"replaced": True}, path)
        proc = subprocess.run(
            [sys.executable, str(ROOT / "teer_calculate.py"), "--work", str(work), "--run", name],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(
        f"error: {work / 'runs' / name}: its data changed since it was trained: "
        f"step-3 cache files {dialog}.pt (changed);"
    )
