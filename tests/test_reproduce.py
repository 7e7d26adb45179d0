"""The one command (reproduce.py) end to end on a tiny demo: steps 1-6, tables traceable to metrics
files, a re-run that recomputes nothing, and a pause-only change that re-runs only what follows it."""
import json
import re
from pathlib import Path

import pytest

import reproduce
import utils


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("repro")
    args = ["--demo-dir", str(base / "demo"), "--demo-size", "tiny", "--results", str(base / "results"),
            "--epochs", "2", "--pauses", "1.5", "--only", "main", "frozen", "vadoracle"]
    reproduce.main(args)
    return base, args


def provenance(base):
    return json.loads((base / "results" / "provenance.json").read_text())


def test_first_run_writes_every_table_from_metrics_files(tiny_run):
    base, _ = tiny_run
    tables = (base / "results" / "tables.md").read_text()
    assert utils.DEMO_NOTE in tables
    for title in ("Table I", "Table II", "Table III", "Table IV"):
        assert title in tables
    # Every row of ours names its metrics file, and the numbers in the row are that file's.
    rows = [line for line in tables.splitlines() if line.startswith("|") and "metrics.json`" in line]
    assert len(rows) >= 4
    for row in rows:
        path = Path(re.search(r"`([^`]*metrics\.json)`", row).group(1))
        m = json.loads(path.read_text())
        assert f"{100 * m['accuracy']:.2f}" in row and f"{100 * m['macro_f1']:.2f}" in row
        assert f"| {m['n_scored']} |" in row
        assert m["note"] == utils.DEMO_NOTE  # the run's own report says it is demo data
    # Table III cells come from the runs' teer.json and teer_authors.json.
    teer_rows = [line for line in tables.splitlines() if "teer*.json`" in line]
    assert len(teer_rows) == 2
    for row in teer_rows:
        run_dir = Path(re.search(r"`([^`]*)/teer\*\.json`", row).group(1))
        t, ta = (json.loads((run_dir / f).read_text()) for f in ("teer.json", "teer_authors.json"))
        cells = [c.strip() for c in row.split("|")]
        assert cells[2:6] == [f"{100 * t['TEER']:.2f}", f"{100 * t['sTEER']:.2f}",
                              f"{100 * ta['TEER']:.2f}", f"{100 * ta['sTEER']:.2f}"]
    p = provenance(base)
    assert p["config"]["demo"] and p["code"]["commit"]
    assert p["corpus"]["kind"] == "demo" and p["corpus"]["dialogs"] == 4
    assert len(p["models"]["text"]["weights_sha256"]) == 64 and "config_sha256" in p["models"]["audio"]
    assert {s["step"].split()[1] for s in p["steps"]} >= {"1", "2", "3", "4", "5", "6"}
    assert not any(s["skipped"] for s in p["steps"])


def test_rerun_with_nothing_changed_recomputes_nothing(tiny_run):
    base, args = tiny_run
    before = (base / "results" / "tables.md").read_text()
    reproduce.main(args)
    steps = provenance(base)["steps"]
    assert steps and all(s["skipped"] for s in steps)
    assert (base / "results" / "tables.md").read_text() == before


def test_changing_only_the_pause_reruns_only_that_alignment_and_what_follows(tiny_run):
    base, args = tiny_run
    args = list(args)
    args[args.index("--pauses") + 1] = "1.0"
    args[args.index("--only") + 1:] = ["main", "frozen", "vadoracle", "pause"]
    reproduce.main(args)
    ran = [s for s in provenance(base)["steps"] if not s["skipped"]]
    assert ran, "the new pause threshold must run"
    kinds = sorted({s["step"].split()[1] for s in ran})
    assert kinds == ["3", "4", "5", "6"]  # steps 1 and 2 were up to date
    assert all("p1.5" not in " ".join(s["argv"]) and "baseline" not in " ".join(s["argv"]) for s in ran)
    assert "maximum pause" in (base / "results" / "tables.md").read_text()
    assert (base / "results" / "pause_sweep.png").is_file()


def test_force_redoes_steps_their_own_caches_would_skip(tiny_run):
    """A stale stamp (here: --force) must not be satisfied by the steps' own caches: step 2 and 3
    get --overwrite and training --no-resume, so the checkpoint is trained again."""
    base, args = tiny_run
    args = list(args)
    args[args.index("--only") + 1:] = ["main"]
    run = base / "demo" / "preprocessed_iemocap_tiny" / "runs" / "simulated__aligned-p1.5__finetune__fusion__s0"
    before = (run / "checkpoint_best.pt").stat().st_mtime_ns
    reproduce.main(args + ["--force"])
    steps = provenance(base)["steps"]
    assert steps and not any(s["skipped"] for s in steps)
    for s in steps:
        kind = s["step"].split()[1]
        if kind in ("2", "3"):
            assert s["argv"][-1] == "--overwrite"
        if kind == "4":
            assert s["argv"][-1] == "--no-resume"
    assert (run / "checkpoint_best.pt").stat().st_mtime_ns > before
