"""Issue 13: diarization pipelines loading exactly their own files, the preflight, offline model copies.

Offline throughout: local pipeline folders of both shapes with tiny random weights
(demo/build_asr_models.py), a hub cache laid out as huggingface_hub lays it out, and every hub call
recorded; the network itself is closed (requests.Session.send raises), so a test that reached for it
fails.
"""
import json
import os
import shutil
from pathlib import Path

import pytest
import requests

import preprocess
import utils

PIPE_31 = "pyannote/speaker-diarization-3.1"
PIPE_C1 = "pyannote/speaker-diarization-community-1"
SEG_30 = "pyannote/segmentation-3.0"
EMB_31 = "pyannote/wespeaker-voxceleb-resnet34-LM"
C1_FILES = ["config.yaml", "segmentation/pytorch_model.bin", "embedding/pytorch_model.bin",
            "plda/xvec_transform.npz", "plda/plda.npz"]


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

    pipe, files = preprocess.load_diarization_pipeline(PIPE_31, model_dir=pipelines["hub"],
                                                       embedding_batch_size=4, segmentation_batch_size=2)
    hub = pipelines["hub"]
    assert files == [str(hub / PIPE_31 / "config.yaml"), str(hub / SEG_30 / "pytorch_model.bin"),
                     str(hub / EMB_31 / "pytorch_model.bin")]
    assert pipe.klustering == "AgglomerativeClustering" and type(pipe._plda).__name__ == "NoPLDA"
    assert pipe.embedding_batch_size == 4 and pipe.segmentation_batch_size == 2
    assert pipe.clustering.threshold == pytest.approx(0.7045654963945799)  # the config's params applied

    c1 = pipelines["community1"]
    pipe, files = preprocess.load_diarization_pipeline(str(c1))
    assert files == [str(c1 / rel) for rel in C1_FILES]
    assert pipe.klustering == "VBxClustering" and type(pipe._plda) is PLDA
    assert pipe.embedding_batch_size == 32  # the config's own value when the flag is not given
    assert hub_calls == []


def test_31_from_the_hub_requests_only_its_three_files(pipelines, hub_cache, hub_calls):
    pipe, files = preprocess.load_diarization_pipeline(PIPE_31, cache_only=True)
    expected = [(PIPE_31, "config.yaml"), (SEG_30, "pytorch_model.bin"), (EMB_31, "pytorch_model.bin")]
    assert hub_calls == expected
    assert files == [f"{r}/{f}" for r, f in expected]
    assert not any(PIPE_C1 in repo for repo, _ in hub_calls)  # no community-1 PLDA
    assert pipe.klustering == "AgglomerativeClustering"


def test_community1_from_the_hub_requests_only_its_own_files(pipelines, hub_cache, hub_calls):
    pipe, _ = preprocess.load_diarization_pipeline(PIPE_C1)
    assert hub_calls == [(PIPE_C1, rel) for rel in C1_FILES]
    assert pipe.klustering == "VBxClustering"


def test_stock_pyannote_loader_also_fetches_community1_plda_for_31(pipelines, hub_cache, hub_calls, tmp_path):
    """Why load_diarization_pipeline exists: pyannote.audio 4.0.7's own loader, given the 3.1
    pipeline, also asks for community-1's PLDA (here absent from the cache, so it fails offline)."""
    import huggingface_hub.constants
    from pyannote.audio import Pipeline

    # community-1 out of the cache, as on a machine that only accepted 3.1's conditions
    shutil.rmtree(hub_cache / f"models--{PIPE_C1.replace('/', '--')}")
    with pytest.raises(Exception):
        Pipeline.from_pretrained(PIPE_31, cache_dir=huggingface_hub.constants.HF_HUB_CACHE)
    assert (PIPE_C1, "plda/xvec_transform.npz") in hub_calls


def test_pipeline_config_errors_name_the_file(pipelines, tmp_path, hub_calls):
    folder = tmp_path / "broken"
    shutil.copytree(pipelines["community1"], folder)
    (folder / "plda" / "plda.npz").unlink()
    with pytest.raises(utils.PipelineError, match=r"plda\.npz: not found"):
        preprocess.load_diarization_pipeline(str(folder))
    config = (folder / "config.yaml").read_text()
    (folder / "config.yaml").write_text(config.replace("    segmentation: $model/segmentation\n", ""))
    with pytest.raises(utils.PipelineError, match=r"config\.yaml: pipeline\.params\.segmentation is missing"):
        preprocess.load_diarization_pipeline(str(folder))
    with pytest.raises(utils.PipelineError, match="no such folder"):
        preprocess.load_diarization_pipeline(str(tmp_path / "missing" / "pipeline"))
    assert hub_calls == []


# ---------------------------------------------------------------------------------------------
# Preflight: one line per item, non-zero exit on a problem, nothing written
# ---------------------------------------------------------------------------------------------

def fake_model_folders(root: Path) -> dict:
    """Folders holding (empty) the files the ASR and alignment loaders open: enough for a check."""
    asr, align = root / "whisper-ct2", root / "align-w2v2"
    for folder, files in ((asr, preprocess.WHISPER_REQUIRED),
                          (align, ("config.json", "preprocessor_config.json", "vocab.json", "model.safetensors"))):
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
    return preprocess.main(["--check", "--work", str(work), "--backend", "whisperx", "--device", "cpu",
                            "--asr-model", models["asr"], "--align-model", models["align"],
                            "--nltk-data", models["nltk"], *extra])


def test_check_all_ok_then_a_missing_model_folder_fails(check_work, pipelines, tmp_path, capsys, no_network):
    models = fake_model_folders(tmp_path / "models")
    before = tree(tmp_path)
    items = run_check(check_work, models, "--diar-model", PIPE_31, "--model-dir", str(pipelines["hub"]))
    out = capsys.readouterr().out
    assert all(i.ok for i in items), out
    assert [i.name for i in items] == ["labels", "corpus audio", "ASR model", "alignment model", "diarization pipeline",
                                       "diarization segmentation", "diarization embedding", "NLTK punkt_tab", "CUDA",
                                       "disk (step-2 outputs)", "time (estimate)"]
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
    assert (f"FAIL diarization pipeline: {PIPE_31}: gated repository and HF_TOKEN is not set: accept its conditions "
            f"at https://huggingface.co/{PIPE_31}") in out
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


def test_check_offline_and_unreachable_hub_are_lines_not_crashes(check_work, tmp_path, capsys, monkeypatch,
                                                               no_network):
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
    assert utils.check_disk(tmp_path / "not" / "yet", 1.0).ok
    assert not utils.check_disk(tmp_path, 1e18).ok
    item = utils.check_cuda(required=True)
    import torch
    assert item.ok == torch.cuda.is_available()
    # 4e10 FLOP on 2 CPU cores at 2e10 FLOP/s each: 1 s
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    item = utils.estimate_time("t", 4e10, device="cpu")
    assert item.ok and item.message.startswith("estimate 1 s on CPU, 2 cores")
    assert utils.transformer_flops(1e6, 10) == 2e7 and utils.transformer_flops(1e6, 10, training=True) == 6e7
    assert utils.parse_shard("1/3") == (1, 3) and utils.parse_shard(None, {}) == (0, 1)
    assert utils.parse_shard(None, {"RANK": "2", "WORLD_SIZE": "4"}) == (2, 4)
    for bad in ("3/3", "1", "-1/2", "a/b"):
        with pytest.raises(utils.PipelineError, match="K/N"):
            utils.parse_shard(bad)


# ---------------------------------------------------------------------------------------------
# --download-models: exactly the repositories and files that load
# ---------------------------------------------------------------------------------------------

def test_download_models_fetches_exactly_what_loads_then_runs_offline(pipelines, check_work, tmp_path, monkeypatch,
                                                                      capsys, no_network):
    """snapshot_download is replaced by a recorder that copies the tiny models where the hub's
    would land; the result is then loaded with --model-dir and checked offline, all OK."""
    import huggingface_hub
    import nltk
    import torch

    hub, tiny = pipelines["hub"], fake_model_folders(tmp_path / "tiny")
    sources = {PIPE_31: hub / PIPE_31, SEG_30: hub / SEG_30, EMB_31: hub / EMB_31,
               "Systran/faster-whisper-large-v2": Path(tiny["asr"])}
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
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda url, dst, *a, **k: urls.append(url) or Path(dst).touch())
    monkeypatch.setattr(nltk, "download", lambda info, download_dir, **k: bool(
        Path(download_dir, "tokenizers", "punkt_tab", "english").mkdir(parents=True, exist_ok=True) or True))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    dest = tmp_path / "offline_models"
    manifest = preprocess.main(["--work", str(check_work), "--download-models", str(dest)])
    assert calls == [("Systran/faster-whisper-large-v2", list(preprocess.WHISPER_FILES)),
                     (PIPE_31, ["config.yaml"]), (SEG_30, ["pytorch_model.bin"]), (EMB_31, ["pytorch_model.bin"])]
    assert urls == ["https://download.pytorch.org/torchaudio/models/wav2vec2_fairseq_base_ls960_asr_ls960.pth"]
    assert manifest["flags"] == ["--model-dir", str(dest)]
    assert json.loads((dest / "models.json").read_text()) == manifest
    assert "--model-dir" in capsys.readouterr().out

    # Offline, with only the copies: the preflight passes and the pipeline loads from them.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    items = preprocess.main(["--check", "--work", str(check_work), "--device", "cpu", "--model-dir", str(dest),
                             "--cache-only"])
    assert all(i.ok for i in items), [i.line() for i in items]
    assert str(dest / "torchaudio") in next(i for i in items if i.name == "alignment model").message
    _, files = preprocess.load_diarization_pipeline(PIPE_31, model_dir=dest, cache_only=True)
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
    preprocess.main(["--work", str(check_work), "--download-models", str(tmp_path / "c1"), "--diar-model", PIPE_C1,
                     "--asr-model", tiny["asr"], "--align-model", "org/w2v"])
    assert calls == [("org/w2v", list(utils.TRANSFORMERS_FILES) + ["model.safetensors"]),
                     ("org/w2v", ["pytorch_model.bin"]), (PIPE_C1, ["config.yaml"]), (PIPE_C1, C1_FILES[1:])]
    assert sorted(p.name for p in (tmp_path / "c1" / "org" / "w2v").iterdir()) == [
        "config.json", "preprocessor_config.json", "pytorch_model.bin", "vocab.json"]  # no TF weights


def test_download_models_refuses_offline(check_work, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(utils.PipelineError, match="HF_HUB_OFFLINE"):
        preprocess.main(["--work", str(check_work), "--download-models", str(tmp_path / "m")])
    assert not (tmp_path / "m").exists()
