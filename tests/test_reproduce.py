"""The one command (reproduce.py) end to end on a tiny demo: seeds, tables traceable to metrics files
with intervals and paired tests, a re-run that recomputes nothing, a pause-only change that re-runs
only what follows it (the steps run in this process: conftest.steps_in_process), and, with real
processes, invocations side by side and a failing step that stops the run."""
import ast
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

import reproduce
import utils
from conftest import steps_in_process

STEPS = ("iemo_lab_with_timestamps", "preprocess", "align", "train", "evaluate", "teer_calculate", "predict", "corpus_from_csv")


def reproduce_in_process(args):
    with steps_in_process():
        reproduce.main(args)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("repro")
    args = ["--demo-dir", str(base / "demo"), "--demo-size", "tiny", "--results", str(base / "results"),
            "--epochs", "2", "--seeds", "2", "--pauses", "1.5", "--bootstrap-samples", "200",
            "--only", "main", "frozen", "vadoracle", "--jobs", "1"]
    reproduce_in_process(args)
    return base, args


def provenance(base):
    return json.loads((base / "results" / "provenance.json").read_text())


def seed_files(pattern: str, name: str) -> list[Path]:
    """`.../runs/NAME__s{0,1}/metrics.json` -> the files of each seed."""
    prefix, seeds, suffix = re.fullmatch(r"(.*)\{([\d,]+)\}(.*)", pattern).groups()
    return [Path(f"{prefix}{s}{suffix}") / name for s in seeds.split(",")]


def pm(values, scale=100.0):
    return f"{scale * np.mean(values):.2f} ± {scale * np.std(values):.2f}"


def test_first_run_writes_every_table_from_metrics_files(tiny_run):
    base, _ = tiny_run
    tables = (base / "results" / "tables.md").read_text()
    assert utils.DEMO_NOTE in tables
    for title in ("Table I", "Table II", "Table III", "Table IV", "Paired differences"):
        assert title in tables
    # Every row names its metrics files (one per seed); its cells are the mean ± std over those files.
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in tables.splitlines() if "metrics.json`" in line]
    rows = [cells for cells in rows if len(cells) == 16]  # Tables I and IV (the ablation tables have fewer columns)
    assert len(rows) == 4
    for cells in rows:
        row = " | ".join(cells)
        files = seed_files(re.search(r"`(.*)/metrics\.json`", row).group(1), "metrics.json")
        ms = [json.loads(f.read_text()) for f in files]
        assert len(ms) == 2 and all(m["note"] == utils.DEMO_NOTE for m in ms)
        for col, key in zip(range(1, 5), utils.HEADLINE):  # reference-projected, with the interval of the seed mean
            assert cells[col].startswith(pm([m["utterance"][key] for m in ms]) + " ["), (row, key)
        assert cells[5] == f"{ms[0]['utterance']['n']} ({ms[0]['utterance']['n_missed']})"
        assert cells[6] == pm([m["accuracy"] for m in ms])  # segment-level
        assert cells[9] == str(ms[0]["n_scored"]) and cells[11] == "2"
    # Table III cells come from the runs' teer.json and teer_authors.json.
    teer_rows = [line for line in tables.splitlines() if "teer*.json`" in line]
    assert len(teer_rows) == 2
    for row in teer_rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        pattern = re.search(r"`(.*)/teer\*\.json`", row).group(1)
        t = [json.loads(f.read_text()) for f in seed_files(pattern, "teer.json")]
        ta = [json.loads(f.read_text()) for f in seed_files(pattern, "teer_authors.json")]
        assert cells[1:5] == [pm([x["TEER"] for x in t]), pm([x["sTEER"] for x in t]),
                              pm([x["TEER"] for x in ta]), pm([x["sTEER"] for x in ta])]
    # the paired differences are recomputed from the per-utterance predictions of both systems
    pr = [line for line in tables.splitlines() if line.startswith("| with − without alignment (fine-tuned) | accuracy")]
    assert len(pr) == 1
    work = base / "demo" / "preprocessed_iemocap_tiny" / "runs"

    def cms(name):
        utts = [json.loads((work / f"{name}__s{s}" / "metrics.json").read_text())["utterance"]["utterances"] for s in (0, 1)]
        dialogs = sorted({u["dialog"] for u in utts[0]})
        return np.stack([utils.dialog_confusions(u, dialogs) for u in utts])
    r = utils.paired_bootstrap(cms("simulated__aligned-p1.5__finetune__fusion"), cms("simulated__baseline__finetune__fusion"),
                               "accuracy", 200, 0)
    assert f"{100 * r['diff']:+.1f} [{100 * r['ci95'][0]:+.1f}, {100 * r['ci95'][1]:+.1f}]" in pr[0]
    p = provenance(base)
    assert p["config"]["demo"] and p["code"]["commit"]
    assert p["corpus"]["kind"] == "demo" and p["corpus"]["dialogs"] == 4
    assert len(p["models"]["text"]["weights_sha256"]) == 64 and "config_sha256" in p["models"]["audio"]
    assert {s["step"].split()[1] for s in p["steps"]} >= {"1", "2", "3", "4", "5", "6"}
    assert not any(s["skipped"] for s in p["steps"])
    assert set(p["seconds_per_step"]) == {f"step {k}" for k in range(1, 8)}  # 7: predict.py on a test dialog
    assert sorted(f.name.split(".", 1)[1] for f in (base / "results" / "predict").iterdir()) == [
        "emotions.json", "emotions.rttm", "timeline.png", "vtt"]
    assert all(v == [0, 1] for v in p["seeds"].values())


def test_rerun_with_nothing_changed_recomputes_nothing(tiny_run):
    base, args = tiny_run
    before = (base / "results" / "tables.md").read_text()
    reproduce_in_process(args)
    steps = provenance(base)["steps"]
    assert steps and all(s["skipped"] for s in steps)
    assert (base / "results" / "tables.md").read_text() == before  # the bootstraps are seeded


def test_changing_only_the_pause_reruns_only_that_alignment_and_what_follows(tiny_run):
    base, args = tiny_run
    args = list(args)
    args[args.index("--pauses") + 1] = "1.0"
    args[args.index("--only") + 1:args.index("--jobs")] = ["main", "frozen", "vadoracle", "pause"]
    reproduce_in_process(args)
    ran = [s for s in provenance(base)["steps"] if not s["skipped"]]
    assert ran, "the new pause threshold must run"
    assert sorted({s["step"].split()[1] for s in ran}) == ["3", "4", "5", "6"]  # steps 1 and 2 were up to date
    assert all("p1.5" not in " ".join(s["argv"]) and "baseline" not in " ".join(s["argv"]) for s in ran)
    assert "maximum pause" in (base / "results" / "tables.md").read_text()
    assert (base / "results" / "pause_sweep.png").is_file()


def test_a_step3_rerun_by_hand_retrains_what_it_changed_under_the_same_names(tiny_run):
    """Step 3 re-run outside reproduce.py: with a departures switch it writes another variant, so
    nothing here is stale; on changed step-2 output it rewrites the trained variant, and the next
    reproduce.py retrains (--no-resume), evaluates and scores that variant's runs under the paper's
    names instead of stopping at evaluate.py's data check (utils.check_run_data)."""
    import align

    base, args = tiny_run
    work = base / "demo" / "preprocessed_iemocap_tiny"
    align.main(["--work", str(work), "--pipe", "simulated", "--variant", "aligned", "--word-policy", "authors"])
    assert (work / "simulated" / "aligned-p1.5-words_authors" / "manifest.json").is_file()
    reproduce_in_process(args)
    assert all(s["skipped"] for s in provenance(base)["steps"])
    asr = work / "simulated" / "asr" / "Ses05F_impro01.json"
    result = json.loads(asr.read_text())
    seg = next(s for s in result["segments"] if len(s["words"]) > 1)
    seg["words"] = seg["words"][1:]
    utils.atomic_write_json(asr, result)
    align.main(["--work", str(work), "--pipe", "simulated", "--variant", "aligned"])
    reproduce_in_process(args)
    ran = [s for s in provenance(base)["steps"] if not s["skipped"]]
    assert sorted({s["step"].split()[1] for s in ran}) == ["4", "5", "6"]
    trained = [a for s in ran if s["step"].startswith("step 4") for a in [" ".join(s["argv"])]]
    assert trained and all("--variant aligned-p1.5 " in a and "--no-resume" in a and "--pipe simulated" in a
                           for a in trained)
    for name in ("simulated__aligned-p1.5__finetune__fusion__s0", "simulated__aligned-p1.5__frozen__fusion__s1"):
        metrics = utils.read_json(work / "runs" / name / "metrics.json")
        assert metrics["data_check"]["status"] == "same"
        assert utils.read_json(work / "runs" / name / "config.json")["data"]["cache_files"]["Ses05F_impro01.pt"] \
            == utils.file_sha256(work / "simulated" / "aligned-p1.5" / "cache" / "Ses05F_impro01.pt")


def test_force_and_changed_items_get_the_redo_flag_and_invocations_run_side_by_side(tmp_path, capfd):
    """A stale stamp must not be satisfied by a step's own cache: an item that succeeded before under
    another key (changed argv, code or upstream), or any item under --force, gets the step's redo flag
    (--overwrite / --no-resume); up-to-date items are not run; split invocations run side by side, each
    with its share of the cores, and a failing one is named, its log printed whole, after the others finish."""
    script = tmp_path / "step.py"
    script.write_text("import json, os, sys, time\n"
                      "time.sleep(0.3)\n"
                      "out = os.path.join(os.path.dirname(sys.argv[0]), 'calls.jsonl')\n"
                      "open(out, 'a').write(json.dumps({'argv': sys.argv[1:], 'threads': os.environ.get('OMP_NUM_THREADS'),"
                      " 'start': time.time()}) + '\\n')\n"
                      "if 'bad' in sys.argv:\n"
                      "    sys.exit('error: ' + out + ': a bad item')\n")

    def calls():
        lines = (tmp_path / "calls.jsonl").read_text().splitlines() if (tmp_path / "calls.jsonl").exists() else []
        (tmp_path / "calls.jsonl").unlink(missing_ok=True)
        return [json.loads(line) for line in lines]

    def step(runner, items, up=("u",)):
        return runner.step("step 9 demo", str(script), [(i, [i], up) for i in items], lambda ids: list(ids),
                           redo_flag="--redo", split=lambda stale: [[i] for i in stale])
    work = tmp_path / "work"
    work.mkdir()
    step(reproduce.Runner(work, force=False, jobs=2), ["a", "b"])
    first = calls()
    assert sorted(c["argv"][0] for c in first) == ["a", "b"] and all(c["argv"] == c["argv"][:1] for c in first)
    assert all(c["threads"] == str(max(1, (os.cpu_count() or 1) // 2)) for c in first)
    assert abs(first[0]["start"] - first[1]["start"]) < 0.3  # side by side
    step(reproduce.Runner(work, force=False, jobs=2), ["a", "b"])
    assert calls() == []  # up to date
    step(reproduce.Runner(work, force=False, jobs=1), ["a", "b"], up=("changed",))
    assert sorted(c["argv"] for c in calls()) == [["a", "--redo"], ["b", "--redo"]]
    step(reproduce.Runner(work, force=True, jobs=1), ["a", "c"], up=("changed",))
    assert sorted(c["argv"] for c in calls()) == [["a", "--redo"], ["c", "--redo"]]
    capfd.readouterr()
    with pytest.raises(utils.PipelineError, match=r"step 9 demo \[1/2\] failed \(exit status 1\)"):
        step(reproduce.Runner(work, force=False, jobs=2), ["bad", "d"])
    assert sorted(c["argv"][0] for c in calls()) == ["bad", "d"]  # the other one ran to its end
    assert f"error: {tmp_path / 'calls.jsonl'}: a bad item" in capfd.readouterr().out  # its log, printed whole
    assert "d" in {v["item"] for v in json.loads((work / "reproduce_stamps.json").read_text()).values()}


class Recorder:
    """Stands in for reproduce.Runner: records each invocation (script, redo flag, argv, item ids,
    the items' upstream keys) instead of running it, splitting the items as the Runner does."""
    jobs = 2

    def __init__(self):
        self.calls = []

    def step(self, name, script, items, argv_for, sources=(), redo_flag=None, split=None, cost=None):
        ids = [i for i, _, _ in items]
        for group in (split(ids) if split else [ids]):
            self.calls.append((script, redo_flag, argv_for(group), group, [u for i, _, u in items if i in group]))
        return {i: i for i in ids}


def test_each_step_gets_its_own_redo_flag_and_train_sweeps_cover_the_plan_exactly(tmp_path):
    """run_pipeline wiring, recorded without running: steps 2 and 3 redo with --overwrite, step 4 with
    --no-resume; the train.py sweeps train every run of the plan exactly once, named as planned."""
    args = reproduce.parse_args(["--demo-dir", str(tmp_path / "demo"), "--results", str(tmp_path / "r")])
    cfg = reproduce.setup(args, build=False)
    configs = reproduce.plan_configs(cfg, args)

    rec = Recorder()
    reproduce.run_pipeline(cfg, args, rec, configs)
    flags = {script: flag for script, flag, _, _, _ in rec.calls}
    assert flags == {"iemo_lab_with_timestamps.py": None, "preprocess.py": "--overwrite", "align.py": "--overwrite",
                     "train.py": "--no-resume", "evaluate.py": None, "teer_calculate.py": None}
    planned = {r["name"]: r for c in configs for r in reproduce.config_runs(c)}
    trained = []
    for script, _, argv, group, _ in rec.calls:
        if script != "train.py":
            continue
        pick = lambda flag: argv[argv.index(flag) + 1:next((i for i in range(argv.index(flag) + 1, len(argv))  # noqa: E731
                                                            if argv[i].startswith("--")), len(argv))]
        variants, modalities, fusions, seeds, names = (pick(f) for f in ("--variant", "--modality", "--fusion", "--seed", "--run"))
        # train.py's sweep order: variant, then modality (each fusion for the fused model), then seed
        combos = [(v, m, f, int(s)) for v in variants for m in modalities for f in (fusions if m == "fusion" else fusions[:1])
                  for s in seeds]
        assert len(combos) == len(names) == len(group)
        for (v, m, f, s), name in zip(combos, names):
            r = planned[name]
            assert (r["variant"], r["modality"], r["seed"]) == (v, m, s) and (m != "fusion" or r["fusion"] == f)
            assert argv[argv.index("--pipe") + 1] == r["pipe"] and argv[argv.index("--mode") + 1] == r["mode"]
        trained += names
    assert sorted(trained) == sorted(planned)  # every planned run, once


def test_a_failing_step_stops_the_run_with_its_message(tiny_run, capfd):
    """Real processes (--jobs as the default): a new pause threshold runs step 3, which fails on a
    corrupt step-2 file; the run stops there, naming the step and printing the step's own message."""
    base, args = tiny_run
    args = list(args)
    args[args.index("--pauses") + 1] = "0.5"
    args[args.index("--only") + 1:] = ["pause"]
    asr = base / "demo" / "preprocessed_iemocap_tiny" / "simulated" / "asr" / "Ses01F_impro01.json"
    good = asr.read_bytes()
    asr.write_text("{not json")
    try:
        with pytest.raises(utils.PipelineError, match=r"step 3 align.* failed \(exit status 1\)"):
            reproduce.main(args)
    finally:
        asr.write_bytes(good)
    out = capfd.readouterr()
    assert "=== step 3 align" in out.out and "python align.py" in out.out  # the command, printed before it ran
    assert f"FAILED Ses01F_impro01: {asr}: corrupt ASR result (step 2)" in out.out + out.err  # the step's own message
    assert "=== step 4" not in out.out


def test_no_step_script_imports_another():
    root = Path(reproduce.__file__).parent
    for step in STEPS + ("reproduce",):
        tree = ast.parse((root / f"{step}.py").read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & (set(STEPS) - {step}), (step, imported & set(STEPS))


def test_a_csv_corpus_replaces_step_1_and_its_content_is_stamped(tmp_path):
    """--corpus-csv: step 1 is corpus_from_csv.py on the CSV and --audio-root; the CSV's bytes are part
    of the item's key, so an edited CSV re-runs step 1 (and what follows)."""
    csv_path = tmp_path / "c.csv"
    csv_path.write_text("audio,id,start,end,speaker,emotion\n")
    args = reproduce.parse_args(["--corpus-csv", str(csv_path), "--audio-root", str(tmp_path / "audio"),
                                 "--emotion-map", "happy=hap", "--demo-dir", str(tmp_path / "demo")])
    cfg = reproduce.setup(args, build=False)
    assert cfg["iemocap"] == str(tmp_path / "audio")

    def step1():
        rec = Recorder()
        reproduce.run_pipeline(cfg, args, rec, reproduce.plan_configs(cfg, args))
        script, _, argv, _, upstream = rec.calls[0]
        return script, argv, upstream
    script, argv, upstream = step1()
    assert script == "corpus_from_csv.py"
    assert argv == [str(csv_path), "--work", cfg["work"], "--audio-root", str(tmp_path / "audio"), "--emotion-map", "happy=hap"]
    csv_path.write_text("audio,id,start,end,speaker,emotion,text\n")
    assert step1()[2] != upstream


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs must be at least 1, got 0"),  # not silently the default
    (["--pauses", "1.5", "-1"], "--pauses must be >= 0 s, got -1"),
    (["--seeds", "0"], "--seeds and --ablation-seeds must be at least 1"),
])
def test_bad_arguments_are_refused_before_anything_runs(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        reproduce.parse_args(flags)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
