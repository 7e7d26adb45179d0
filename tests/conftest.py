"""Shared fixtures: a tiny demo corpus and its step-1 labels, built once per test session.

Heavy objects are session-scoped so the suite fits CI's 2 cores. Tests never touch the network:
HF_HUB_OFFLINE is forced on before anything imports huggingface_hub.
"""

import contextlib
import io
import os
import runpy
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist each worker (and what it starts) gets its share of the cores, set before torch
# is imported: torch's default, every core per process, made N workers' threads spin against each
# other (2 cores, 2 workers: the suite took 104 s and 190 CPU-seconds; one thread each, 78 s and 134).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    os.environ.setdefault("OMP_NUM_THREADS", _share)
    os.environ.setdefault("MKL_NUM_THREADS", _share)

import pytest

from common import cli

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The smallest corpus that still has a training session and the paper's test session (5).
TINY_CORPUS = dict(seed=0, sessions=[1, 5], impro_per_session=1, script_per_session=1, utterances_per_dialog=6)


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory):
    """(corpus root, ground truth dict) of a tiny generated demo corpus."""
    from demo.make_corpus import generate

    root = tmp_path_factory.mktemp("demo") / "IEMOCAP_full_release"
    truth = generate(root, **TINY_CORPUS)
    return root, truth


@pytest.fixture(scope="session")
def demo_work(demo_corpus, tmp_path_factory):
    """A work directory holding step 1's labels.json for the tiny demo corpus."""
    from iemo_lab_with_timestamps import main as step1

    root, _ = demo_corpus
    work = tmp_path_factory.mktemp("work")
    step1(["--iemocap", str(root), "--work", str(work)])
    return work


class FinishedStep:
    """What common.cli.start_step gives for `python <script> argv`, run to its end in THIS process (runpy
    of the same script with the same argv; the same exit status; its output where the process's
    would go). Patched over common.cli.start_step by steps_in_process(): tests of what the steps compute,
    run by reproduce.py or predict.py, skip a Python start-up (torch, transformers: 3-8 s) per
    invocation. Real processes are tested on their own (test_reproduce: side by side, logs, a
    failing step; test_preflight: a gated model through reproduce.py --check; test_predict and
    test_utils: exit statuses and error lines; test_train: kill -9)."""

    def __init__(self, script, argv, env=None, stdout=None):
        assert env is None, "steps in process run one at a time (--jobs 1)"
        out = io.StringIO() if stdout is subprocess.PIPE else stdout  # a log file, or None: as they come
        saved = sys.argv
        sys.argv = [str(ROOT / script), *argv]
        try:
            with contextlib.ExitStack() as stack:
                if out is not None:
                    stack.enter_context(contextlib.redirect_stdout(out))
                    stack.enter_context(contextlib.redirect_stderr(out))
                try:
                    runpy.run_path(sys.argv[0], run_name="__main__")
                    self.returncode = 0
                except SystemExit as e:
                    self.returncode = e.code if isinstance(e.code, int) else int(e.code is not None)
        finally:
            sys.argv = saved
        self.output = out.getvalue() if stdout is subprocess.PIPE else None

    def wait(self):
        return self.returncode

    def communicate(self):
        return self.output, None


@contextlib.contextmanager
def steps_in_process():
    """Scripts started by other scripts (common.cli.start_step) run in this process (FinishedStep)."""

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "start_step", FinishedStep)
        yield


def tiny_trained_run(demo_work, tmp_path_factory, name: str) -> tuple[Path, Path, list[str]]:
    """A private work dir (labels.json of the tiny demo, step 2 simulated, step 3 aligned-p1.5) and one tiny run "r"
    trained for 1 epoch on CPU -> (work, run dir, the training argv)."""
    import shutil

    import align
    import preprocess
    import train
    from demo.build_ser_models import build

    work = tmp_path_factory.mktemp(f"work_{name}")
    shutil.copy(demo_work / "labels.json", work / "labels.json")
    preprocess.main(["--work", str(work), "--backend", "simulated"])
    align.main(["--work", str(work), "--pipe", "simulated", "--variant", "aligned"])
    models = build(tmp_path_factory.mktemp(f"ser_models_{name}"), seed=0)
    argv = ["--work", str(work), "--pipe", "simulated", "--run", "r", "--text-model", models["text_model"]]
    argv += ["--audio-model", models["audio_model"], "--epochs", "1", "--batch-size", "4", "--num-workers", "0"]
    argv += ["--device", "cpu"]
    return work, Path(train.main(argv)), argv
