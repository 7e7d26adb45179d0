"""Shared fixtures: a tiny demo corpus and its step-1 labels, built once per test session.

Heavy objects are session-scoped so the suite fits CI's 2 cores. Tests never touch the network:
HF_HUB_OFFLINE is forced on before anything imports huggingface_hub.
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

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
