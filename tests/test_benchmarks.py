"""Every benchmark in benchmarks/ runs at its small setting (--small): a smoke test of its code path,
not a timing. Each runs in this process (runpy) as `python benchmarks/<name>.py --small` would."""

import runpy
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
# what each prints once its figures are computed
FIGURES = {
    "bench_align.py": ["align_dialog end to end", "result:"],
    "bench_infer.py": ["pytorch eager:", "onnxruntime:", "ratio onnxruntime/pytorch:"],
    "bench_teer.py": ["default (Wu et al.)", "--authors", "TEER"],
    "bench_train.py": ["audio s/s", "ratio ours/authors:"],
}


def test_every_benchmark_is_covered():
    assert sorted(p.name for p in BENCH.glob("bench_*.py")) == sorted(FIGURES)


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_benchmark_runs_at_its_small_setting(name, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(BENCH / name), "--small"])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        runpy.run_path(str(BENCH / name), run_name="__main__")
    except SystemExit as e:  # a benchmark that exits must exit 0
        assert e.code in (0, None), e.code
    out = capsys.readouterr().out
    for figure in FIGURES[name]:
        assert figure in out, (name, figure, out[-2000:])
