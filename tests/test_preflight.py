"""Issue 13: diarization pipelines loading exactly their own files, the preflight, offline model copies.

Offline throughout: local pipeline folders of both shapes with tiny random weights
(demo/build_asr_models.py), a hub cache laid out as huggingface_hub lays it out, and every hub call
recorded; the network itself is closed (requests.Session.send raises), so a test that reached for it
fails.
"""

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import requests

import preprocess
import utils
from common import checklist, cli, fileio, formats, modelhub, step2_whisperx

PIPE_31 = "pyannote/speaker-diarization-3.1"
PIPE_C1 = "pyannote/speaker-diarization-community-1"
SEG_30 = "pyannote/segmentation-3.0"
EMB_31 = "pyannote/wespeaker-voxceleb-resnet34-LM"
C1_FILES = [
    "config.yaml",
    "segmentation/pytorch_model.bin",
    "embedding/pytorch_model.bin",
    "plda/xvec_transform.npz",
    "plda/plda.npz",
]


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """{"community1": folder, "hub": mirror holding the 3.1 pipeline and the two models it names}."""
    from demo.build_asr_models import build_diarization, build_diarization_31

    out = tmp_path_factory.mktemp("diar_models")
    return {"community1": build_diarization(out), "hub": build_diarization_31(out)}


@pytest.fixture
def no_network(monkeypatch):
    """Close the network: any HTTP request that would leave the machine through requests
    (huggingface_hub's transport) fails the test. huggingface_hub's offline mode answers before that
    (its OfflineAdapter overrides send), as it does on a machine with HF_HUB_OFFLINE=1."""

    def refuse(self, request, **kwargs):
        raise AssertionError(f"network request attempted: {request.method} {request.url}")

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", refuse)


@pytest.fixture
def hub_calls(monkeypatch, no_network):
    """Record every hf_hub_download / snapshot_download, through whichever name the caller holds."""
    import huggingface_hub
    import pyannote.audio.utils.hf_hub as pyannote_hub

    calls, real = [], huggingface_hub.hf_hub_download

    def recording(repo_id, filename, *args, subfolder=None, **kwargs):
        calls.append((repo_id, f"{subfolder}/{filename}" if subfolder else filename))
        return real(repo_id, filename, *args, subfolder=subfolder, **kwargs)

    def no_snapshot(repo_id, *args, **kwargs):
        calls.append((repo_id, "snapshot"))
        raise AssertionError("snapshot_download called while loading")

    for module in (huggingface_hub, huggingface_hub.file_download, pyannote_hub):
        monkeypatch.setattr(module, "hf_hub_download", recording)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_snapshot)
    return calls


def fill_hub_cache(cache: Path, repo: str, files: dict) -> None:
    """Lay out files as huggingface_hub's cache does (refs/main -> snapshots/<commit>/...)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    for rel, src in files.items():
        target = folder / "snapshots" / commit / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, target)


@pytest.fixture
def hub_cache(pipelines, tmp_path, monkeypatch):
    """A private hub cache holding the 3.1 pipeline, its two models, and community-1."""
    import huggingface_hub.constants

    cache, hub, c1 = tmp_path / "hub_cache", pipelines["hub"], pipelines["community1"]
    fill_hub_cache(cache, PIPE_31, {"config.yaml": hub / PIPE_31 / "config.yaml"})
    for repo in (SEG_30, EMB_31):
        fill_hub_cache(cache, repo, {"pytorch_model.bin": hub / repo / "pytorch_model.bin"})
    fill_hub_cache(cache, PIPE_C1, {rel: c1 / rel for rel in C1_FILES})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


# ---------------------------------------------------------------------------------------------
# Loading the pipelines: exactly their own files
# ---------------------------------------------------------------------------------------------


def test_local_31_and_community1_folders_load_without_the_hub(pipelines, hub_calls):
    from pyannote.audio.core.plda import PLDA

    pipe, files = step2_whisperx.load_diarization_pipeline(
        PIPE_31, model_dir=pipelines["hub"], embedding_batch_size=4, segmentation_batch_size=2
    )
    hub = pipelines["hub"]
    assert files == [
        str(hub / PIPE_31 / "config.yaml"),
        str(hub / SEG_30 / "pytorch_model.bin"),
        str(hub / EMB_31 / "pytorch_model.bin"),
    ]
    assert pipe.klustering == "AgglomerativeClustering" and type(pipe._plda).__name__ == "NoPLDA"
    assert pipe.embedding_batch_size == 4 and pipe.segmentation_batch_size == 2
    assert pipe.clustering.threshold == pytest.approx(0.7045654963945799)  # the config's params applied

    c1 = pipelines["community1"]
    pipe, files = step2_whisperx.load_diarization_pipeline(str(c1))
    assert files == [str(c1 / rel) for rel in C1_FILES]
    assert pipe.klustering == "VBxClustering" and type(pipe._plda) is PLDA
    assert pipe.embedding_batch_size == 32  # the config's own value when the flag is not given
    assert hub_calls == []


def test_31_from_the_hub_requests_only_its_three_files(pipelines, hub_cache, hub_calls):
    pipe, files = step2_whisperx.load_diarization_pipeline(PIPE_31, cache_only=True)
    expected = [(PIPE_31, "config.yaml"), (SEG_30, "pytorch_model.bin"), (EMB_31, "pytorch_model.bin")]
    assert hub_calls == expected
    assert files == [f"{r}/{f}" for r, f in expected]
    assert not any(PIPE_C1 in repo for repo, _ in hub_calls)  # no community-1 PLDA
    assert pipe.klustering == "AgglomerativeClustering"


def test_community1_from_the_hub_requests_only_its_own_files(pipelines, hub_cache, hub_calls):
    pipe, _ = step2_whisperx.load_diarization_pipeline(PIPE_C1)
    assert hub_calls == [(PIPE_C1, rel) for rel in C1_FILES]
    assert pipe.klustering == "VBxClustering"


def test_stock_pyannote_loader_also_fetches_community1_plda_for_31(pipelines, hub_cache, hub_calls, tmp_path):
    """Why load_diarization_pipeline exists: pyannote.audio 4.0.7's own loader, given the 3.1
    pipeline, also asks for community-1's PLDA (here absent from the cache, so it fails offline)."""
    import huggingface_hub.constants
    from huggingface_hub.errors import LocalEntryNotFoundError
    from pyannote.audio import Pipeline

    # community-1 out of the cache, as on a machine that only accepted 3.1's conditions
    shutil.rmtree(hub_cache / f"models--{PIPE_C1.replace('/', '--')}")
    with pytest.raises(LocalEntryNotFoundError):  # offline, and the PLDA is not in the cache
        Pipeline.from_pretrained(PIPE_31, cache_dir=huggingface_hub.constants.HF_HUB_CACHE)
    assert (PIPE_C1, "plda/xvec_transform.npz") in hub_calls


def test_pipeline_config_errors_name_the_file(pipelines, tmp_path, hub_calls):
    folder = tmp_path / "broken"
    shutil.copytree(pipelines["community1"], folder)
    (folder / "plda" / "plda.npz").unlink()
    with pytest.raises(cli.PipelineError, match=r"plda\.npz: not found"):
        step2_whisperx.load_diarization_pipeline(str(folder))
    config = (folder / "config.yaml").read_text()
    (folder / "config.yaml").write_text(config.replace("    segmentation: $model/segmentation\n", ""))
    with pytest.raises(cli.PipelineError, match=r"config\.yaml: pipeline\.params\.segmentation is missing"):
        step2_whisperx.load_diarization_pipeline(str(folder))
    with pytest.raises(cli.PipelineError, match="no such folder"):
        step2_whisperx.load_diarization_pipeline(str(tmp_path / "missing" / "pipeline"))
    assert hub_calls == []


# ---------------------------------------------------------------------------------------------
# Preflight: one line per item, non-zero exit on a problem, nothing written
# ---------------------------------------------------------------------------------------------


def fake_model_folders(root: Path) -> dict:
    """Folders holding (empty) the files the ASR and alignment loaders open: enough for a check."""
    asr, align = root / "whisper-ct2", root / "align-w2v2"
    for folder, files in (
        (asr, step2_whisperx.WHISPER_REQUIRED),
        (align, ("config.json", "preprocessor_config.json", "vocab.json", "model.safetensors")),
    ):
        folder.mkdir(parents=True)
        for f in files:
            (folder / f).touch()
    (root / "nltk_data" / "tokenizers" / "punkt_tab" / "english").mkdir(parents=True)
    return {"asr": str(asr), "align": str(align), "nltk": str(root / "nltk_data")}


def tree(root: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in Path(root).rglob("*")}


@pytest.fixture
def check_work(demo_work, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(demo_work / "labels.json", work / "labels.json")
    return work


def run_check(work, models, *extra):
    return preprocess.main(
        [
            "--check",
            "--work",
            str(work),
            "--backend",
            "whisperx",
            "--device",
            "cpu",
            "--asr-model",
            models["asr"],
            "--align-model",
            models["align"],
            "--nltk-data",
            models["nltk"],
            *extra,
        ]
    )


def test_check_all_ok_then_a_missing_model_folder_fails(check_work, pipelines, tmp_path, capsys, no_network):
    models = fake_model_folders(tmp_path / "models")
    before = tree(tmp_path)
    items = run_check(check_work, models, "--diar-model", PIPE_31, "--model-dir", str(pipelines["hub"]))
    out = capsys.readouterr().out
    assert all(i.ok for i in items), out
    assert [i.name for i in items] == [
        "labels",
        "corpus audio",
        "ASR model",
        "alignment model",
        "diarization pipeline",
        "diarization segmentation",
        "diarization embedding",
        "NLTK punkt_tab",
        "CUDA",
        "disk (step-2 outputs)",
        "time (estimate)",
    ]
    assert "4 selected" in out and "all 11 checks OK" in out and "estimate" in items[-1].message
    assert tree(tmp_path) == before  # nothing written, nothing touched

    shutil.rmtree(models["asr"])
    before = tree(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_check(check_work, models, "--diar-model", str(pipelines["community1"]))
    out = capsys.readouterr().out
    assert exit_info.value.code == 1
    assert f"FAIL ASR model: {models['asr']}: not found" in out
    assert "diarization plda" in out and "1 of 12 checks failed (ASR model)" in out
    assert tree(tmp_path) == before  # nothing written, nothing touched


def test_check_gated_hub_model_without_token_and_with_one(check_work, tmp_path, capsys, monkeypatch, no_network):
    """HF_TOKEN unset: the gated pyannote repositories are named with what to do; the hub's answer is
    mocked (HfApi.auth_check), the network is closed. With a token, the token never appears."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError

    asked = []

    def auth_check(self, repo_id, *, repo_type=None, token=None):
        asked.append((repo_id, token))
        if repo_id in (PIPE_31, SEG_30):
            raise GatedRepoError(f"Access to model {repo_id} is restricted.")

    monkeypatch.setattr(HfApi, "auth_check", auth_check)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    models = fake_model_folders(tmp_path / "models")
    before = tree(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_check(check_work, models)  # --diar-model defaults to pyannote/speaker-diarization-3.1
    out = capsys.readouterr().out
    assert exit_info.value.code == 1
    assert [r for r, _ in asked] == [PIPE_31, SEG_30, EMB_31]
    assert (
        f"FAIL diarization pipeline: {PIPE_31}: gated repository and HF_TOKEN is not set: accept its conditions "
        f"at https://huggingface.co/{PIPE_31}"
    ) in out
    assert f"FAIL diarization segmentation: {SEG_30}: gated" in out
    assert f"OK   diarization embedding: {EMB_31} on the hub" in out
    assert "2 of 11 checks failed (diarization pipeline, diarization segmentation)" in out

    secret = "hf_" + "x" * 34
    monkeypatch.setenv("HF_TOKEN", secret)
    with pytest.raises(SystemExit):
        run_check(check_work, models)
    out = capsys.readouterr().out
    assert "the token in HF_TOKEN has no access" in out and secret not in out
    assert asked[-1] == (EMB_31, secret)  # the token is used, never shown
    assert tree(tmp_path) == before


def test_check_offline_and_unreachable_hub_are_lines_not_crashes(check_work, tmp_path, capsys, monkeypatch, no_network):
    from huggingface_hub import HfApi

    models = fake_model_folders(tmp_path / "models")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # and the default pipeline is not in the (empty) cache
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(SystemExit):
        run_check(check_work, models)
    out = capsys.readouterr().out
    assert f"FAIL diarization pipeline: offline and {PIPE_31} is not in the local hub cache" in out
    assert "--download-models DIR" in out

    def unreachable(self, repo_id, **kwargs):
        raise requests.ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(HfApi, "auth_check", unreachable)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(SystemExit):
        run_check(check_work, models)
    assert "cannot reach huggingface.co (ConnectionError)" in capsys.readouterr().out


def test_check_missing_labels_names_step_1(tmp_path, capsys):
    with pytest.raises(SystemExit):
        preprocess.main(["--check", "--work", str(tmp_path / "nowhere"), "--backend", "simulated"])
    out = capsys.readouterr().out
    assert "FAIL labels:" in out and "run step 1 first" in out
    assert not (tmp_path / "nowhere").exists()


def test_generic_checks_known_answers(tmp_path, monkeypatch):
    assert checklist.check_disk(tmp_path / "not" / "yet", 1.0).ok
    assert not checklist.check_disk(tmp_path, 1e18).ok
    item = checklist.check_cuda(required=True)
    import torch

    assert item.ok == torch.cuda.is_available()
    # 4e10 FLOP on 2 CPU cores at 2e10 FLOP/s each: 1 s
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    item = checklist.estimate_time("t", 4e10, device="cpu")
    assert item.ok and item.message.startswith("estimate 1 s on CPU, 2 cores")
    assert checklist.transformer_flops(1e6, 10) == 2e7 and checklist.transformer_flops(1e6, 10, training=True) == 6e7
    assert checklist.parse_shard("1/3") == (1, 3) and checklist.parse_shard(None, {}) == (0, 1)
    assert checklist.parse_shard(None, {"RANK": "2", "WORLD_SIZE": "4"}) == (2, 4)
    for bad in ("3/3", "1", "-1/2", "a/b"):
        with pytest.raises(cli.PipelineError, match="K/N"):
            checklist.parse_shard(bad)


# ---------------------------------------------------------------------------------------------
# --download-models: exactly the repositories and files that load
# ---------------------------------------------------------------------------------------------


def test_download_models_fetches_exactly_what_loads_then_runs_offline(
    pipelines, check_work, tmp_path, monkeypatch, capsys, no_network
):
    """snapshot_download is replaced by a recorder that copies the tiny models where the hub's
    would land; the result is then loaded with --model-dir and checked offline, all OK."""
    import huggingface_hub
    import nltk
    import torch

    hub, tiny = pipelines["hub"], fake_model_folders(tmp_path / "tiny")
    sources = {
        PIPE_31: hub / PIPE_31,
        SEG_30: hub / SEG_30,
        EMB_31: hub / EMB_31,
        "Systran/faster-whisper-large-v2": Path(tiny["asr"]),
    }
    calls = []

    def snapshot_download(repo_id, *, local_dir, allow_patterns, token=None, **kwargs):
        calls.append((repo_id, list(allow_patterns)))
        import fnmatch

        for f in sources[repo_id].rglob("*"):
            rel = f.relative_to(sources[repo_id]).as_posix()
            if f.is_file() and any(fnmatch.fnmatch(rel, pat) for pat in allow_patterns):
                (Path(local_dir) / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, Path(local_dir) / rel)
        return local_dir

    urls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(
        torch.hub, "download_url_to_file", lambda url, dst, *a, **k: urls.append(url) or Path(dst).touch()
    )
    monkeypatch.setattr(
        nltk,
        "download",
        lambda info, download_dir, **k: bool(
            Path(download_dir, "tokenizers", "punkt_tab", "english").mkdir(parents=True, exist_ok=True) or True
        ),
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    dest = tmp_path / "offline_models"
    manifest = preprocess.main(["--work", str(check_work), "--download-models", str(dest)])
    assert calls == [
        ("Systran/faster-whisper-large-v2", list(step2_whisperx.WHISPER_FILES)),
        (PIPE_31, ["config.yaml"]),
        (SEG_30, ["pytorch_model.bin"]),
        (EMB_31, ["pytorch_model.bin"]),
    ]
    assert urls == ["https://download.pytorch.org/torchaudio/models/wav2vec2_fairseq_base_ls960_asr_ls960.pth"]
    assert manifest["flags"] == ["--model-dir", str(dest)]
    assert json.loads((dest / "models.json").read_text()) == manifest
    assert "--model-dir" in capsys.readouterr().out

    # Offline, with only the copies: the preflight passes and the pipeline loads from them.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    items = preprocess.main(
        ["--check", "--work", str(check_work), "--device", "cpu", "--model-dir", str(dest), "--cache-only"]
    )
    assert all(i.ok for i in items), [i.line() for i in items]
    assert str(dest / "torchaudio") in next(i for i in items if i.name == "alignment model").message
    _, files = step2_whisperx.load_diarization_pipeline(PIPE_31, model_dir=dest, cache_only=True)
    assert files[0] == str(dest / PIPE_31 / "config.yaml")

    # community-1: its config first, then only the subfolder files it names
    calls.clear()
    sources[PIPE_C1] = pipelines["community1"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    # and a hub alignment model without model.safetensors: its PyTorch weights, nothing else
    w2v = tmp_path / "w2v_source"
    w2v.mkdir()
    for f in ("config.json", "vocab.json", "preprocessor_config.json", "pytorch_model.bin", "tf_model.h5"):
        (w2v / f).touch()
    sources["org/w2v"] = w2v
    preprocess.main(
        [
            "--work",
            str(check_work),
            "--download-models",
            str(tmp_path / "c1"),
            "--diar-model",
            PIPE_C1,
            "--asr-model",
            tiny["asr"],
            "--align-model",
            "org/w2v",
        ]
    )
    assert calls == [
        ("org/w2v", list(modelhub.TRANSFORMERS_FILES) + ["model.safetensors"]),
        ("org/w2v", ["pytorch_model.bin"]),
        (PIPE_C1, ["config.yaml"]),
        (PIPE_C1, C1_FILES[1:]),
    ]
    assert sorted(p.name for p in (tmp_path / "c1" / "org" / "w2v").iterdir()) == [
        "config.json",
        "preprocessor_config.json",
        "pytorch_model.bin",
        "vocab.json",
    ]  # no TF weights


def test_download_models_refuses_offline(check_work, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(cli.PipelineError, match="HF_HUB_OFFLINE"):
        preprocess.main(["--work", str(check_work), "--download-models", str(tmp_path / "m")])
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------------------------------------
# train.py --check / --download-models, step 1 --check, reproduce.py --check
# ---------------------------------------------------------------------------------------------

import http.server  # noqa: E402
import threading  # noqa: E402

import torch  # noqa: E402
from conftest import steps_in_process  # noqa: E402

import iemo_lab_with_timestamps as step1  # noqa: E402
import reproduce  # noqa: E402
import train  # noqa: E402

GATED = "org/gated-wav2vec2"


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    """reproduce.py's tiny demo (corpus and tiny models), built once as `reproduce.py --demo-size tiny` builds it."""
    demo_dir = tmp_path_factory.mktemp("demo_dir")
    cfg = reproduce.setup(reproduce.parse_args(["--demo-dir", str(demo_dir), "--demo-size", "tiny"]))
    return demo_dir, cfg


def write_cache(work: Path) -> None:
    """labels.json and a step-3 cache WORK/simulated/aligned-p1.5/cache for sessions 1, 2 and 5, three
    dialogs each, every dialog 3 labelled segments of 1 s ('i am so happy') and one unlabelled."""
    dialogs = {}
    for ses in (1, 2, 5):
        for name, kind, script in (
            (f"Ses0{ses}F_impro01", "impro", None),
            (f"Ses0{ses}M_impro02", "impro", None),
            (f"Ses0{ses}F_script01_1", "script", "script01"),
        ):
            dialogs[name] = {"session": ses, "kind": kind, "script": script, "utterances": []}
            segs = [
                {
                    "id": f"{name}-{i:04d}",
                    "start": float(i),
                    "end": i + 1.0,
                    "speaker": "SPEAKER_00",
                    "text": "i am so happy",
                    "label": i - 1,
                    "audio": torch.zeros(16000),
                }
                for i in range(4)
            ]
            fileio.atomic_torch_save(
                {"dialog": name, "session": ses, "sample_rate": 16000, "segments": segs},
                work / "simulated" / "aligned-p1.5" / "cache" / f"{name}.pt",
            )
    fileio.atomic_write_json(
        work / "labels.json", {"corpus": "synthetic", "labels": list(formats.LABELS), "dialogs": dialogs}
    )


def train_args(work, demo_cfg, *extra):
    return train.parse_args(
        [
            "--check",
            "--work",
            str(work),
            "--pipe",
            "simulated",
            "--device",
            "cpu",
            "--text-model",
            demo_cfg["text_model"],
            "--audio-model",
            demo_cfg["audio_model"],
            *extra,
        ]
    )


def test_extractor_sizes_and_cnn_flops_known_answers(tiny_demo):
    _, cfg = tiny_demo
    from transformers import Wav2Vec2Config

    # what training builds (utils.TextEmbedder / AudioEmbedder), read from the weights' headers only
    for name, embedder in ((cfg["text_model"], utils.TextEmbedder), (cfg["audio_model"], utils.AudioEmbedder)):
        assert train.extractor_facts(name)["params"] == sum(p.numel() for p in embedder(name).parameters())
    facts = train.extractor_facts(cfg["audio_model"])
    assert facts["frames_per_s"] == 25 and facts["source"] == cfg["audio_model"]  # the demo model's 40 ms hop
    # wav2vec2-base's CNN: 1->512 k10 s5 to 3200 frames/s, then 512->512 k3,3,3,3,2,2 s2 down to 50 frames/s
    per_second = 2 * 512 * 10 * 3200 + 2 * 512 * 512 * (3 * 1600 + 3 * 800 + 3 * 400 + 3 * 200 + 2 * 100 + 2 * 50)
    assert train.cnn_flops_per_second(Wav2Vec2Config().to_dict()) == per_second == 4_908_646_400
    assert train.extractor_facts("/nonexistent")["source"].startswith("base size assumed")


def test_train_check_counts_the_splits_estimates_and_writes_nothing(tiny_demo, tmp_path, monkeypatch, capsys):
    _, cfg = tiny_demo
    work = tmp_path / "work"
    write_cache(work)
    estimated = []
    real_estimate = checklist.estimate_time
    monkeypatch.setattr(
        checklist,
        "estimate_time",
        lambda name, flops, **kw: estimated.append(flops) or real_estimate(name, flops, **kw),
    )
    before = tree(tmp_path)
    items = train.preflight(train_args(work, cfg, "--epochs", "3", "--check-runs", "2"))
    assert [i.name for i in items] == [
        "labels",
        "step-3 cache",
        "text extractor",
        "audio extractor",
        "CUDA",
        "disk (checkpoints)",
        "time (estimate)",
    ]
    assert all(i.ok for i in items), [i.line() for i in items]
    # val_fraction 0.15 of 3 dialogs per training session rounds to 0, at least 1 is held out: 2 val, 4 train
    assert (
        "split main (test session 5): train 4 dialogs / 12 labelled segments, val 2 dialogs / 6 labelled "
        "segments, test 3 dialogs / 9 labelled segments"
    ) in items[1].message
    assert tree(tmp_path) == before

    # The documented formula, by hand: every segment 1 s (the demo model's 25 frames),
    # 'i am so happy' = 4 words -> 7.2 tokens.
    t, a = train.extractor_facts(cfg["text_model"]), train.extractor_facts(cfg["audio_model"])
    dim = t["hidden"]
    head = 2 * (4 * dim * dim + 2 * dim * 2048) + 12 * dim * dim

    def seg(f, positions, trained, cnn=0.0):
        k = 3 if trained else 1
        return (
            (6 if trained else 2) * f["dense"] * positions + k * 4 * f["layers"] * f["hidden"] * positions**2 + k * cnn
        )

    per_epoch = (
        12 * (seg(t, 7.2, True) + seg(a, 25, True, a["cnn_flops_per_s"]))
        + 6 * (seg(t, 7.2, False) + seg(a, 25, False, a["cnn_flops_per_s"]))
        + 6 * head * 2 * 12
    )
    assert estimated == [pytest.approx(2 * 3 * per_epoch, rel=1e-9)]

    # frozen: the embeddings once, then only the head; the feature cache enters the disk estimate
    estimated.clear()
    items = train.preflight(train_args(work, cfg, "--epochs", "3", "--check-runs", "2", "--mode", "frozen"))
    assert items[5].name == "disk (checkpoints and feature cache)"
    assert estimated == [
        pytest.approx(
            18 * (seg(t, 7.2, False) + seg(a, 25, False, a["cnn_flops_per_s"])) + 2 * 3 * 6 * head * 2 * 12, rel=1e-9
        )
    ]

    # no cache: step 3 is named; with --planned the reference utterances stand in
    with pytest.raises(SystemExit) as exit_info:
        train.main(
            [
                "--check",
                "--work",
                str(work),
                "--pipe",
                "whisperx",
                "--text-model",
                cfg["text_model"],
                "--audio-model",
                cfg["audio_model"],
            ]
        )
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert f"FAIL step-3 cache: {work / 'whisperx'}" in out and "python align.py" in out
    assert tree(tmp_path) == before


def test_train_download_models_fetches_what_loads(tiny_demo, tmp_path, monkeypatch, capsys):
    """snapshot_download replaced by a recorder that copies the tiny models where the hub's files would
    land (no network); then the printed folders pass the check offline."""
    import huggingface_hub

    _, cfg = tiny_demo
    spm = tmp_path / "spm_source"  # a SentencePiece text model (DeBERTa v3's files): no tokenizer.json
    spm.mkdir()
    for f in ("config.json", "spm.model", "tokenizer_config.json", "pytorch_model.bin", "tf_model.h5"):
        (spm / f).write_text("{}")
    sources = {"org/text": Path(cfg["text_model"]), "org/audio": Path(cfg["audio_model"]), "org/spm": spm}
    calls = []

    def snapshot_download(repo_id, *, local_dir, allow_patterns, token=None, **kwargs):
        import fnmatch

        calls.append((repo_id, list(allow_patterns)))
        for f in sources[repo_id].iterdir():
            if any(fnmatch.fnmatch(f.name, pat) for pat in allow_patterns):
                Path(local_dir).mkdir(parents=True, exist_ok=True)
                shutil.copy(f, Path(local_dir) / f.name)
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    dest = tmp_path / "models"
    dest.mkdir()
    (dest / "models.json").write_text(
        json.dumps(
            {
                "written_by": "preprocess.py --download-models",
                "repositories": {PIPE_31: {"path": "x"}},
                "flags": ["--model-dir", str(dest)],
            }
        )
    )
    manifest = train.main(["--download-models", str(dest), "--text-model", "org/text", "--audio-model", "org/audio"])
    files = list(modelhub.TRANSFORMERS_FILES)
    assert calls == [("org/text", files + ["model.safetensors"]), ("org/audio", files + ["model.safetensors"])]
    assert manifest["train_flags"] == ["--text-model", str(dest / "org/text"), "--audio-model", str(dest / "org/audio")]
    saved = json.loads((dest / "models.json").read_text())
    assert saved == manifest and PIPE_31 in saved["repositories"] and saved["flags"] == ["--model-dir", str(dest)]
    assert saved["written_by"] == "preprocess.py --download-models; train.py --download-models"
    assert " ".join(manifest["train_flags"]) in capsys.readouterr().out

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    items = train.preflight(
        train.parse_args(["--check", "--work", str(tmp_path / "w"), "--planned", *manifest["train_flags"]])
    )
    assert [i.ok for i in items if "extractor" in i.name] == [True, True]

    calls.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    train.main(
        ["--download-models", str(tmp_path / "m2"), "--text-model", "org/spm", "--audio-model", cfg["audio_model"]]
    )
    assert calls == [
        ("org/spm", files + ["model.safetensors"]),
        ("org/spm", ["pytorch_model.bin"]),
        ("org/spm", list(train.SENTENCEPIECE_FILES)),
    ]
    assert sorted(p.name for p in (tmp_path / "m2" / "org" / "spm").iterdir()) == [
        "config.json",
        "pytorch_model.bin",
        "spm.model",
        "tokenizer_config.json",
    ]  # no TF weights


def test_step1_check_demo_passes_missing_or_incomplete_corpus_fails(tiny_demo, tmp_path, capsys):
    _, cfg = tiny_demo
    work = tmp_path / "work"
    with pytest.raises(SystemExit) as exit_info:
        step1.main(["--check", "--iemocap", cfg["iemocap"], "--work", str(work)])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0, out
    assert "OK   corpus:" in out and "4 dialogs in sessions 1,5" in out and "comparison does not apply" in out
    assert "all 4 checks OK" in out

    with pytest.raises(SystemExit) as exit_info:
        step1.main(["--check", "--iemocap", str(tmp_path / "nowhere"), "--work", str(work)])
    assert exit_info.value.code == 1 and "FAIL corpus:" in capsys.readouterr().out

    partial = tmp_path / "partial"  # a corpus that claims to be the full release (--expect-standard yes)
    shutil.copytree(cfg["iemocap"], partial)
    shutil.rmtree(partial / "Session5")
    (partial / "Session1" / "dialog" / "wav" / "Ses01F_impro01.wav").unlink()
    with pytest.raises(SystemExit) as exit_info:
        step1.main(["--check", "--iemocap", str(partial), "--work", str(work), "--expect-standard", "yes"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 1
    assert "FAIL dialog wavs: 1 missing (Ses01F_impro01)" in out
    assert "FAIL standard counts: 23 differ (forced by --expect-standard yes): dialogs expected 151, got 2" in out
    assert not work.exists()


def reproduce_check_in_process(cwd: Path, capsys, monkeypatch, *argv):
    """reproduce.py --check with its step checks run in this process (conftest.steps_in_process), from
    cwd -> (exit status, output)."""
    monkeypatch.chdir(cwd)
    with steps_in_process(), pytest.raises(SystemExit) as exit_info:
        reproduce.main(["--check", *argv])
    return exit_info.value.code, capsys.readouterr().out


def test_reproduce_check_demo_every_item_ok_and_nothing_written(tiny_demo, tmp_path, capsys, monkeypatch, no_network):
    demo_dir, _ = tiny_demo
    before, before_demo = tree(tmp_path), tree(demo_dir)
    status, out = reproduce_check_in_process(
        tmp_path, capsys, monkeypatch, "--demo-dir", str(demo_dir), "--demo-size", "tiny"
    )
    assert status == 0, out
    summary = out.split("reproduce.py --check (demo")[1].splitlines()[1:]
    assert [line.split(":")[0] for line in summary] == [
        "OK   step 1 labels",
        "OK   step 2 oracle",
        "OK   step 2 simulated",
        "OK   step 3 align (disk)",
        "OK   step 4 train (finetune)",
        "OK   step 4 train (frozen)",
        "reproduce preflight",
    ]
    assert "reproduce preflight: all 6 checks OK" in out and "FAIL" not in out
    # the train checks count every run of the plan: 17 fine-tuned, 6 frozen (demo: 3 headline seeds, 1 ablation)
    assert "--check-runs 17" in out and "--check-runs 6" in out
    assert tree(tmp_path) == before and tree(demo_dir) == before_demo

    # a demo not built yet: said so, nothing built
    with pytest.raises(SystemExit) as exit_info:
        reproduce.main(["--check", "--demo-dir", str(tmp_path / "fresh"), "--results", str(tmp_path / "res")])
    assert exit_info.value.code == 0
    assert not (tmp_path / "fresh").exists() and not (tmp_path / "res").exists()


class GatedHub(http.server.BaseHTTPRequestHandler):
    """The hub's auth-check endpoint: GATED answers as a gated repository does without a token."""

    seen = []

    def do_GET(self):  # noqa: N802
        GatedHub.seen.append(self.path)
        gated = self.path.startswith(f"/api/models/{GATED}/")
        self.send_response(401 if gated else 200)
        if gated:
            self.send_header("X-Error-Code", "GatedRepo")
            self.send_header("X-Error-Message", "Access to this model is restricted.")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def test_reproduce_check_names_a_missing_folder_and_a_gated_model(tiny_demo, tmp_path, capsys, monkeypatch):
    """Online (HF_HUB_OFFLINE=0) against a local server that answers as the hub does for a gated
    repository; the checks run in this process, so huggingface_hub's import-time settings are patched."""
    import huggingface_hub.constants
    from huggingface_hub.utils import reset_sessions

    demo_dir, _ = tiny_demo
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), GatedHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.delenv("HF_TOKEN", raising=False)
    for key, value in dict(HF_HUB_OFFLINE="0", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    before, before_demo = tree(tmp_path), tree(demo_dir)
    reset_sessions()  # sessions made offline before this test would refuse the request
    try:
        status, out = reproduce_check_in_process(
            tmp_path,
            capsys,
            monkeypatch,
            "--demo-dir",
            str(demo_dir),
            "--demo-size",
            "tiny",
            "--only",
            "main",
            "--text-model",
            "/nonexistent",
            "--audio-model",
            GATED,
        )
    finally:
        server.shutdown()
        reset_sessions()
    assert status == 1, out
    assert "FAIL text extractor: /nonexistent: no such folder" in out
    assert (
        f"FAIL audio extractor: {GATED}: gated repository and HF_TOKEN is not set: accept its conditions at "
        f"https://huggingface.co/{GATED}"
    ) in out
    assert GatedHub.seen == [f"/api/models/{GATED}/auth-check"]  # one train check (fine-tuned only), one request
    assert re.search(r"FAIL step 4 train \(finetune\): 2 of \d+ checks failed \(text extractor, audio extractor\)", out)
    assert "OK   step 1 labels" in out and "OK   step 2 simulated" in out
    assert tree(tmp_path) == before and tree(demo_dir) == before_demo


def test_reproduce_check_names_a_corpus_with_wrong_counts(tiny_demo, tmp_path, capsys, monkeypatch, no_network):
    """Real-data mode claims the full release: a copy of the tiny demo minus Session 5 fails step 1's
    comparison (and the paper's split, which tests on Session 5)."""
    demo_dir, cfg = tiny_demo
    corpus = tmp_path / "IEMOCAP_full_release"
    shutil.copytree(cfg["iemocap"], corpus)
    shutil.rmtree(corpus / "Session5")
    before = tree(tmp_path)
    status, out = reproduce_check_in_process(
        tmp_path,
        capsys,
        monkeypatch,
        "--iemocap",
        str(corpus),
        "--only",
        "main",
        "--text-model",
        cfg["text_model"],
        "--audio-model",
        cfg["audio_model"],
    )
    assert status == 1, out
    assert "--expect-standard yes" in out
    assert "FAIL standard counts: 23 differ (forced by --expect-standard yes): dialogs expected 151, got 2" in out
    assert "FAIL step 1 labels: 1 of 4 checks failed (standard counts)" in out
    assert "FAIL step-3 cache: fold testing session 5: 0 test and 2 training dialogs" in out
    assert "OK   text extractor" in out and "OK   audio extractor" in out
    assert tree(tmp_path) == before
