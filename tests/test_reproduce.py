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
from conftest import steps_in_process

import reproduce
from common import cli, fileio, formats, scoring

STEPS = (
    "iemo_lab_with_timestamps",
    "preprocess",
    "align",
    "train",
    "evaluate",
    "teer_calculate",
    "predict",
    "corpus_from_csv",
)


def reproduce_in_process(args):
    with steps_in_process():
        reproduce.main(args)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("repro")
    args = [
        "--demo-dir",
        str(base / "demo"),
        "--demo-size",
        "tiny",
        "--results",
        str(base / "results"),
        "--epochs",
        "2",
        "--seeds",
        "2",
        "--pauses",
        "1.5",
        "--bootstrap-samples",
        "200",
        "--only",
        "main",
        "frozen",
        "vadoracle",
        "--jobs",
        "1",
    ]
    reproduce_in_process(args)
    return base, args


def provenance(base):
    return json.loads((base / "results" / "provenance.json").read_text())


def seed_files(pattern: str, name: str) -> list[Path]:
    """`.../runs/NAME__s{0,1}/metrics.json` -> the files of each seed."""
    prefix, seeds, suffix = re.fullmatch(r"(.*)\{([\d,]+)\}(.*)", pattern).groups()
    return [Path(f"{prefix}{s}{suffix}") / name for s in seeds.split(",")]


def pm(values, scale=100.0):
    return f"{scale * np.mean(values):.2f} ± {scale * np.std(values, ddof=1):.2f}"


def table_cells(line: str) -> list[str]:
    """The cells of a Markdown table row; an escaped pipe (\\|) stays inside its cell."""
    assert line.startswith("|") and line.rstrip().endswith("|") and not line.rstrip().endswith("\\|"), line
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def assert_tables_render(text: str) -> int:
    """Every Markdown table of text: a header, a delimiter row of as many cells, and body rows of as many
    cells. Returns how many tables there are."""
    lines, n_tables, i = text.splitlines(), 0, 0
    while i < len(lines):
        if not lines[i].startswith("|"):
            i += 1
            continue
        block = []
        while i < len(lines) and lines[i].startswith("|"):
            block.append(lines[i])
            i += 1
        assert len(block) >= 2, f"a table without a delimiter row: {block[0]}"
        header, delimiter = table_cells(block[0]), table_cells(block[1])
        assert all(re.fullmatch(r":?-{3,}:?", c) for c in delimiter), f"not a delimiter row: {block[1]}"
        assert len(delimiter) == len(header), (
            f"{len(header)} header cells, {len(delimiter)} delimiter cells: {block[0]}"
        )
        for row in block[2:]:
            assert len(table_cells(row)) == len(header), f"{len(header)} header cells: {block[0]}\nrow: {row}"
        n_tables += 1
    return n_tables


def test_the_table_check_catches_a_short_delimiter_and_reads_escaped_pipes():
    good = "text\n\n| a | b \\| c |\n|---|---|\n| 1 | 2 |\n"
    assert assert_tables_render(good) == 1
    with pytest.raises(AssertionError, match="3 header cells, 2 delimiter cells"):
        assert_tables_render("| a | b | c |\n|---|---|\n| 1 | 2 | 3 |\n")
    with pytest.raises(AssertionError, match="row"):
        assert_tables_render("| a | b |\n|---|---|\n| 1 | 2 | 3 |\n")


def test_mean_std_is_the_sample_std():
    assert reproduce.mean_std([0.60, 0.62, 0.64]) == "62.00 ± 2.00"  # ddof=1; the population std would be 1.63
    assert reproduce.mean_std([0.60, None]) == "60.00" and reproduce.mean_std([None]) == "-"  # one value: no ±


def test_first_run_writes_every_table_from_metrics_files(tiny_run):
    base, _ = tiny_run
    tables = (base / "results" / "tables.md").read_text()
    assert formats.DEMO_NOTE in tables
    for title in ("Table I", "Table II", "Table III", "Table IV", "Paired differences", "Cross-corpus"):
        assert title in tables
    # Every row names its metrics files (one per seed); its cells are the mean ± std over those files.
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in tables.splitlines() if "metrics.json`" in line]
    rows = [cells for cells in rows if len(cells) == 17]  # Tables I and IV (the ablation tables have fewer columns)
    assert len(rows) == 4
    for cells in rows:
        row = " | ".join(cells)
        files = seed_files(re.search(r"`(.*)/metrics\.json`", row).group(1), "metrics.json")
        ms = [json.loads(f.read_text()) for f in files]
        assert len(ms) == 2 and all(m["note"] == formats.DEMO_NOTE for m in ms)
        for col, key in zip(range(1, 5), scoring.HEADLINE):  # reference-projected, with the interval of the seed mean
            assert cells[col].startswith(pm([m["utterance"][key] for m in ms]) + " ["), (row, key)
        assert cells[5] == f"{ms[0]['utterance']['n']} ({ms[0]['utterance']['n_missed']})"
        assert cells[6] == f"{ms[0]['utterance']['n_dialogs']} ({len(ms[0]['missing_dialogs'])})" == "2 (0)"
        assert cells[7] == pm([m["accuracy"] for m in ms])  # segment-level
        assert cells[10] == str(ms[0]["n_scored"]) and cells[12] == "2"
    # Table III cells come from the runs' teer.json and teer_authors.json.
    teer_rows = [line for line in tables.splitlines() if "teer*.json`" in line]
    assert len(teer_rows) == 2
    for row in teer_rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        pattern = re.search(r"`(.*)/teer\*\.json`", row).group(1)
        t = [json.loads(f.read_text()) for f in seed_files(pattern, "teer.json")]
        ta = [json.loads(f.read_text()) for f in seed_files(pattern, "teer_authors.json")]
        assert cells[1:5] == [
            pm([x["TEER"] for x in t]),
            pm([x["sTEER"] for x in t]),
            pm([x["TEER"] for x in ta]),
            pm([x["sTEER"] for x in ta]),
        ]
    # the paired differences are recomputed from the per-utterance predictions of both systems
    pr = [line for line in tables.splitlines() if line.startswith("| with − without alignment (fine-tuned) | accuracy")]
    assert len(pr) == 1
    work = base / "demo" / "preprocessed_iemocap_tiny" / "runs"

    def cms(name):
        utts = [
            json.loads((work / f"{name}__s{s}" / "metrics.json").read_text())["utterance"]["utterances"] for s in (0, 1)
        ]
        dialogs = sorted({u["dialog"] for u in utts[0]})
        return np.stack([scoring.dialog_confusions(u, dialogs) for u in utts])

    r = scoring.paired_bootstrap(
        cms("simulated__aligned-p1.5__finetune__fusion"),
        cms("simulated__baseline__finetune__fusion"),
        "accuracy",
        200,
        0,
    )
    assert f"{100 * r['diff']:+.1f} [{100 * r['ci95'][0]:+.1f}, {100 * r['ci95'][1]:+.1f}]" in pr[0]
    p = provenance(base)
    assert p["config"]["demo"] and p["code"]["commit"]
    assert p["corpus"]["kind"] == "demo" and p["corpus"]["dialogs"] == 4
    assert len(p["models"]["text"]["weights_sha256"]) == 64 and "config_sha256" in p["models"]["audio"]
    assert {s["step"].split()[1] for s in p["steps"]} >= {"1", "2", "3", "4", "5", "6"}
    assert not any(s["skipped"] for s in p["steps"])
    assert set(p["seconds_per_step"]) == {f"step {k}" for k in range(1, 8)}  # 7: predict.py on a test dialog
    assert sorted(f.name.split(".", 1)[1] for f in (base / "results" / "predict").iterdir()) == [
        "emotions.json",
        "emotions.rttm",
        "timeline.png",
        "vtt",
    ]
    assert all(v == [0, 1] for v in p["seeds"].values())
    assert assert_tables_render(tables) >= 5 and "sample standard deviation" in tables


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
    args[args.index("--only") + 1 : args.index("--jobs")] = ["main", "frozen", "vadoracle", "pause"]
    reproduce_in_process(args)
    ran = [s for s in provenance(base)["steps"] if not s["skipped"]]
    assert ran, "the new pause threshold must run"
    assert sorted({s["step"].split()[1] for s in ran}) == ["3", "4", "5", "6"]  # steps 1 and 2 were up to date
    assert all("p1.5" not in " ".join(s["argv"]) and "baseline" not in " ".join(s["argv"]) for s in ran)
    tables = (base / "results" / "tables.md").read_text()
    assert "maximum pause" in tables and assert_tables_render(tables) >= 6
    assert (base / "results" / "pause_sweep.png").is_file()


def test_a_step3_rerun_by_hand_retrains_what_it_changed_under_the_same_names(tiny_run):
    """Step 3 re-run outside reproduce.py: with a departures switch it writes another variant, so
    nothing here is stale; on changed step-2 output it rewrites the trained variant, and the next
    reproduce.py retrains (--no-resume), evaluates and scores that variant's runs under the paper's
    names instead of stopping at evaluate.py's data check (common.rundirs.check_run_data)."""
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
    fileio.atomic_write_json(asr, result)
    align.main(["--work", str(work), "--pipe", "simulated", "--variant", "aligned"])
    reproduce_in_process(args)
    ran = [s for s in provenance(base)["steps"] if not s["skipped"]]
    assert sorted({s["step"].split()[1] for s in ran}) == ["4", "5", "6"]
    trained = [a for s in ran if s["step"].startswith("step 4") for a in [" ".join(s["argv"])]]
    assert trained and all(
        "--variant aligned-p1.5 " in a and "--no-resume" in a and "--pipe simulated" in a for a in trained
    )
    for name in ("simulated__aligned-p1.5__finetune__fusion__s0", "simulated__aligned-p1.5__frozen__fusion__s1"):
        metrics = fileio.read_json(work / "runs" / name / "metrics.json")
        assert metrics["data_check"]["status"] == "same"
        assert fileio.read_json(work / "runs" / name / "config.json")["data"]["cache_files"][
            "Ses05F_impro01.pt"
        ] == fileio.file_sha256(work / "simulated" / "aligned-p1.5" / "cache" / "Ses05F_impro01.pt")


def test_force_and_changed_items_get_the_redo_flag_and_invocations_run_side_by_side(tmp_path, capfd):
    """A stale stamp must not be satisfied by a step's own cache: an item that succeeded before under
    another key (changed argv, code or upstream), or any item under --force, gets the step's redo flag
    (--overwrite / --no-resume); up-to-date items are not run; split invocations run side by side, each
    with its share of the cores, and a failing one is named, its log printed whole, after the others finish."""
    script = tmp_path / "step.py"
    script.write_text(
        "import json, os, sys, time\n"
        "time.sleep(0.3)\n"
        "out = os.path.join(os.path.dirname(sys.argv[0]), 'calls.jsonl')\n"
        "open(out, 'a').write(json.dumps({'argv': sys.argv[1:], 'threads': os.environ.get('OMP_NUM_THREADS'),"
        " 'start': time.time()}) + '\\n')\n"
        "if 'bad' in sys.argv:\n"
        "    sys.exit('error: ' + out + ': a bad item')\n"
    )

    def calls():
        lines = (tmp_path / "calls.jsonl").read_text().splitlines() if (tmp_path / "calls.jsonl").exists() else []
        (tmp_path / "calls.jsonl").unlink(missing_ok=True)
        return [json.loads(line) for line in lines]

    def step(runner, items, up=("u",)):
        return runner.step(
            "step 9 demo",
            str(script),
            [(i, [i], up) for i in items],
            lambda ids: list(ids),
            redo_flag="--redo",
            split=lambda stale: [[i] for i in stale],
        )

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
    with pytest.raises(cli.PipelineError, match=r"step 9 demo \[1/2\] failed \(exit status 1\)"):
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
        for group in split(ids) if split else [ids]:
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
    assert flags == {
        "iemo_lab_with_timestamps.py": None,
        "preprocess.py": "--overwrite",
        "align.py": "--overwrite",
        "train.py": "--no-resume",
        "evaluate.py": None,
        "teer_calculate.py": None,
    }
    planned = {r["name"]: r for c in configs for r in reproduce.config_runs(c)}
    trained = []

    def pick(argv, flag):
        """The values after flag in argv, up to the next flag."""
        first = argv.index(flag) + 1
        return argv[first : next((i for i in range(first, len(argv)) if argv[i].startswith("--")), len(argv))]

    for script, _, argv, group, _ in rec.calls:
        if script != "train.py":
            continue
        variants, modalities, fusions, seeds, names = (
            pick(argv, f) for f in ("--variant", "--modality", "--fusion", "--seed", "--run")
        )
        # train.py's sweep order: variant, then modality (each fusion for the fused model), then seed
        combos = [
            (v, m, f, int(s))
            for v in variants
            for m in modalities
            for f in (fusions if m == "fusion" else fusions[:1])
            for s in seeds
        ]
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
    args[args.index("--only") + 1 :] = ["pause"]
    asr = base / "demo" / "preprocessed_iemocap_tiny" / "simulated" / "asr" / "Ses01F_impro01.json"
    good = asr.read_bytes()
    asr.write_text("{not json")
    try:
        with pytest.raises(cli.PipelineError, match=r"step 3 align.* failed \(exit status 1\)"):
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
    args = reproduce.parse_args(
        [
            "--corpus-csv",
            str(csv_path),
            "--audio-root",
            str(tmp_path / "audio"),
            "--emotion-map",
            "happy=hap",
            "--demo-dir",
            str(tmp_path / "demo"),
        ]
    )
    cfg = reproduce.setup(args, build=False)
    assert cfg["iemocap"] == str(tmp_path / "audio")

    def step1():
        rec = Recorder()
        reproduce.run_pipeline(cfg, args, rec, reproduce.plan_configs(cfg, args))
        script, _, argv, _, upstream = rec.calls[0]
        return script, argv, upstream

    script, argv, upstream = step1()
    assert script == "corpus_from_csv.py"
    assert argv == [
        str(csv_path),
        "--work",
        cfg["work"],
        "--audio-root",
        str(tmp_path / "audio"),
        "--emotion-map",
        "happy=hap",
    ]
    csv_path.write_text("audio,id,start,end,speaker,emotion,text\n")
    assert step1()[2] != upstream


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--epochs", "0"], "--epochs must be at least 1, got 0"),  # not silently the default
        (["--pauses", "1.5", "-1"], "--pauses must be >= 0 s, got -1"),
        (["--seeds", "0"], "--seeds and --ablation-seeds must be at least 1"),
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        reproduce.parse_args(flags)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


# ---- issue 19: statistics as labelled, failed dialogs, tables that render -----------------------


def tiny_cfg(base, args, **changes):
    parsed = reproduce.parse_args(args)
    for k, v in changes.items():
        setattr(parsed, k, v)
    return reproduce.setup(parsed, build=False), parsed


def test_every_table_of_every_group_renders(tiny_run, tmp_path):
    """Tables.write with a result in every configuration of every group (the tiny run's aligned
    fine-tuned result standing in for the ablations it did not train) and fold runs' spread table."""
    base, args = tiny_run
    cfg, parsed = tiny_cfg(base, args, only=None, pauses=[1.0, 1.5], folds="loso")
    work = Path(cfg["work"])
    main = next(
        c
        for c in reproduce.plan_configs(cfg, reproduce.parse_args(args))
        if (c["variant"], c["mode"]) == ("aligned-p1.5", "finetune")
    )
    loaded = reproduce.load_results(work, main)
    results = {
        tuple(c[k] for k in ("pipe", "variant", "mode", "modality", "fusion")): loaded
        for c in reproduce.plan_configs(cfg, parsed)
    }
    text = reproduce.Tables(cfg, parsed, results).write(tmp_path, work)
    for title in ("Table I", "Table III", "single-modality", "fusion of the two", "maximum pause", "Spread over folds"):
        assert title in text
    assert assert_tables_render(text) >= 9


def fold_run(accuracies_by_fold: dict) -> dict:
    """One seed's metrics.json of a fold run: fold -> {dialog: [True/False per utterance]}; every
    utterance is "neu", predicted "neu" when True, "sad" when False."""

    def scored(recs):
        dialogs = sorted({r["dialog"] for r in recs})
        m = scoring.metrics_from_confusion(scoring.dialog_confusions(recs, dialogs).sum(0))
        return {**{k: float(m[k]) for k in scoring.HEADLINE}, "utterances": recs, "n_dialogs": len(dialogs)}

    folds, records = {}, []
    for fold, dialogs in accuracies_by_fold.items():
        recs = [
            {"id": f"{d}_{i}", "dialog": d, "label": "neu", "pred": "neu" if ok else "sad"}
            for d, oks in dialogs.items()
            for i, ok in enumerate(oks)
        ]
        folds[fold] = {"utterance": scored(recs)}
        records += recs
    pooled = scored(records)
    return {"folds": folds, "pooled": {"utterance": pooled, "missing_dialogs": []}}


def test_a_fold_cell_prints_the_pooled_value_inside_its_own_interval(tmp_path):
    # fold 1: one dialog, 1 utterance right (1.0); fold 2: two dialogs, 6 utterances wrong (0.0).
    # Pooled: 1/7 = 14.29 %; the mean of the folds would be 50 %, outside nothing, but not the cell's quantity.
    seeds = [
        {"metrics": fold_run({"fold1": {"a": [True]}, "fold2": {"b": [False] * 3, "c": [False] * 3}})} for _ in range(2)
    ]
    res = {"runs": seeds, "name": "x__s{seed}__loso", "source": "runs/x"}
    args = reproduce.parse_args(["--bootstrap-samples", "500", "--folds", "loso"])
    tables = reproduce.Tables({"work": str(tmp_path)}, args, {("p",): res})
    cell = tables.projected(res, "accuracy")
    value, _, lo, hi = re.fullmatch(r"([\d.]+) ± ([\d.]+) \[([\d.]+), ([\d.]+)\]", cell).groups()
    assert value == "14.29" and float(lo) <= float(value) <= float(hi)
    cms = reproduce.seed_confusions(res)[0]
    interval = scoring.bootstrap_ci(cms, "accuracy", 500, 0)
    assert [float(lo), float(hi)] == pytest.approx([round(100 * x, 1) for x in interval])
    pooled = scoring.metrics_from_confusion(cms.sum(1))["accuracy"]
    assert pooled == pytest.approx([1 / 7, 1 / 7])  # the value and the interval: the same pooled quantity
    assert tables.n(res) == 2  # the ± is over the 2 seeds
    spread = tables.fold_spread()  # the folds' own spread, apart: 1, 0, 1, 0 -> 50.00 ± 57.74 over 4 values
    row = next(line for line in spread if line.startswith("| x__loso |"))
    assert table_cells(row)[1] == "50.00 ± 57.74" and table_cells(row)[5] == "4"
    assert assert_tables_render("\n".join(spread)) == 1


def test_paired_differences_over_different_dialog_sets_count_the_missing_dialog_as_missed(tmp_path):
    def res(records):
        return {"runs": [{"metrics": {"utterance": {"utterances": records}}}]}

    # A has no record of dialog d2 (failed there); B has both. Every utterance is "neu", 2 per dialog.
    a = res([{"id": f"d1_{i}", "dialog": "d1", "label": "neu", "pred": "neu"} for i in range(2)])
    b = res(
        [
            {"id": f"{d}_{i}", "dialog": d, "label": "neu", "pred": p}
            for d, p in (("d1", "sad"), ("d2", "neu"))
            for i in range(2)
        ]
    )
    args = reproduce.parse_args(["--bootstrap-samples", "200"])
    tables = reproduce.Tables({"work": str(tmp_path)}, args, {})
    tables._labels = {
        "dialogs": {
            d: {
                "utterances": [{"id": f"{d}_{i}", "label": "neu"} for i in range(2)] + [{"id": f"{d}_x", "label": None}]
            }
            for d in ("d1", "d2")
        }
    }
    rows = tables.paired("A − B", a, b)
    assert len(rows) == 4
    cells = table_cells(rows[0])  # accuracy: A 2/4 (d2's two utterances missed), B 2/4
    assert cells[1:4] == ["accuracy", "50.00", "50.00"] and cells[6] == "2"
    both = tables.paired("B − A", b, a)
    assert table_cells(both[0])[6] == "2"


def test_a_test_dialog_without_its_cache_stays_in_the_denominator(tiny_run, tmp_path):
    """The tiny run's aligned fine-tuned seed-0 run, copied, with one test dialog's step-3 cache
    removed: the same reference utterances are scored (that dialog's as misses), TEER counts all of
    its labelled speech as missed, and both files list it."""
    import shutil

    import evaluate
    import teer_calculate

    base, _ = tiny_run
    work, copy = base / "demo" / "preprocessed_iemocap_tiny", tmp_path / "work"
    name = "simulated__aligned-p1.5__finetune__fusion__s0"
    shutil.copyfile(work / "labels.json", (copy / "runs").mkdir(parents=True) or copy / "labels.json")
    shutil.copytree(work / "simulated" / "aligned-p1.5" / "cache", copy / "simulated" / "aligned-p1.5" / "cache")
    shutil.copytree(work / "runs" / name, copy / "runs" / name)
    config = fileio.read_json(copy / "runs" / name / "config.json")
    fileio.atomic_write_json(copy / "runs" / name / "config.json", {**config, "work": str(copy)})
    failed = config["split"]["test"][0]
    (copy / "simulated" / "aligned-p1.5" / "cache" / f"{failed}.pt").unlink()
    before = fileio.read_json(work / "runs" / name / "metrics.json")["utterance"]
    m = evaluate.main(["--work", str(copy), "--run", name, "--bootstrap-samples", "50"])
    u = m["utterance"]
    assert m["missing_dialogs"] == [failed] and u["n"] == before["n"] and u["n_dialogs"] == before["n_dialogs"]
    mine = [r for r in u["utterances"] if r["dialog"] == failed]
    assert mine and all(r["pred"] is None for r in mine) and u["n_missed"] >= len(mine)
    assert sum(u["confusion_matrix"][i][4] for i in range(4)) == u["n_missed"]
    assert fileio.read_json(copy / "runs" / name / "predictions.json")["missing_dialogs"] == [failed]
    t = teer_calculate.main(["--work", str(copy), "--run", name])
    assert t["missing_dialogs"] == [failed]
    d = t["dialogs"][failed]
    assert d["total"] > 0 and d["missed"] == pytest.approx(d["total"]) and d["TEER"] == pytest.approx(1.0)
