"""The whole model as ONNX (common/onnxrun.py) in onnxruntime gives PyTorch's probabilities (within 1e-4) on a tiny
demo run's held-out test segments, in batches of mixed lengths; predict.py --onnx gives the same segments and
emotions as without; every audio family's padding-exact pooling exports exactly."""

import json
import shutil
from pathlib import Path

import onnx
import pytest
import torch
from conftest import steps_in_process
from test_predict import trained  # noqa: F401  (the module fixture: a tiny run trained on the demo)

import predict
import utils
from common import formats, onnxrun
from common.cli import PipelineError


def held_out_segments(work: Path, run_dir: Path):
    """(model, dataset, collator) of the run's test split, as evaluate/predict build them."""
    from transformers import AutoTokenizer

    model, config = utils.load_run(run_dir, "cpu")
    mc = utils.ModelConfig.from_run_config(config)
    caches = [work / "simulated" / config["variant"] / "cache" / f"{d}.pt" for d in config["split"]["test"]]
    dataset = utils.SegmentDataset(caches, labelled_only=False, max_audio_seconds=mc.max_audio_seconds)
    collator = utils.Collator(AutoTokenizer.from_pretrained(mc.text_model), mc.max_text_tokens)
    return model, config, dataset, collator


def test_onnx_probabilities_equal_pytorch_on_the_test_segments(trained, tmp_path):  # noqa: F811
    work, run_dir, _, _ = trained
    model, config, dataset, collator = held_out_segments(work, run_dir)
    assert len(dataset) >= 8
    path = onnxrun.export_onnx(model, tmp_path / "model.onnx", formats.labels_of(config))
    assert not model.training  # the export leaves the model as it found it (eval): no dropout below
    graph = onnx.load(str(path))
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.graph.input}
    assert dims == {
        "input_ids": ["batch", "tokens"],
        "attention_mask": ["batch", "tokens"],
        "input_values": ["batch", "samples"],
        "lengths": ["batch"],
    }
    ort_model = onnxrun.OnnxModel(path)
    assert (ort_model.modality, ort_model.n_classes, ort_model.labels) == ("fusion", 4, list(formats.LABELS))
    torch_probs = utils.run_dataset(model, dataset, collator, 4, "cpu", False).softmax(-1)
    onnx_probs = utils.run_dataset(ort_model, dataset, collator, 4, "cpu", False).softmax(-1)
    assert torch_probs.shape == (len(dataset), 4)
    assert torch.allclose(onnx_probs, torch_probs, atol=1e-4, rtol=0), (onnx_probs - torch_probs).abs().max()
    # batches in dataset order (lengths mixed: a row padded to several times its length), and one of 1 segment
    for rows in ([list(range(0, 5)), list(range(5, len(dataset)))], [[0]]):
        for idx in rows:
            batch = collator([dataset[i] for i in idx])
            assert len(idx) == 1 or batch["lengths"].max() > 1.5 * batch["lengths"].min()
            with torch.no_grad():
                want = model(batch).softmax(-1)
            assert torch.allclose(ort_model(batch).softmax(-1), want, atol=1e-4, rtol=0)


def run_predict(run_dir: Path, work: Path, dialog: str, wav: Path, out: Path, *extra) -> dict:
    """predict.py on the held-out dialog with the step-2 outputs of the simulated pipe."""
    with steps_in_process():
        results = predict.main(
            [
                str(wav),
                "--run",
                str(run_dir),
                "--asr-json",
                str(work / "simulated" / "asr" / f"{dialog}.json"),
                "--rttm",
                str(work / "simulated" / "diarization" / f"{dialog}.rttm"),
                "--out",
                str(out),
                "--device",
                "cpu",
                *extra,
            ]
        )
    return results[wav.stem]


def same_predictions(a: dict, b: dict) -> None:
    """The same segments (times, speakers, words, flags) and emotions, probabilities within 1e-4."""
    assert len(a["segments"]) == len(b["segments"]) > 0
    for s, t in zip(a["segments"], b["segments"]):
        assert {k: v for k, v in s.items() if k != "probs"} == {k: v for k, v in t.items() if k != "probs"}
        assert max(abs(s["probs"][k] - t["probs"][k]) for k in s["probs"]) < 1e-4


def test_predict_onnx_gives_the_same_emotions(trained, tmp_path, capsys):  # noqa: F811
    work, run_dir, dialog, wav = trained
    run = tmp_path / "run"  # a copy: model.onnx is written into it below
    shutil.copytree(run_dir, run)
    config = json.loads((run / "config.json").read_text())
    plain = run_predict(run, work, dialog, wav, tmp_path / "plain")
    exported = run_predict(run, work, dialog, wav, tmp_path / "onnx", "--onnx")
    assert "exported to ONNX" in capsys.readouterr().out
    same_predictions(plain, exported)
    # RUN/model.onnx, exported from this checkpoint, is read as it is; one of another checkpoint is not used
    model, _ = utils.load_run(run, "cpu")
    digest = onnxrun.fileio.file_sha256(run / "checkpoint_best.pt")
    onnxrun.export_onnx(model, run / "model.onnx", formats.labels_of(config), {"checkpoint_sha256": digest})
    stored = run_predict(run, work, dialog, wav, tmp_path / "stored", "--onnx")
    out = capsys.readouterr().out
    assert f"{run / 'model.onnx'}: onnxruntime on the CPU, 2 threads" in out and "exported" not in out
    same_predictions(plain, stored)
    onnxrun.export_onnx(model, run / "model.onnx", formats.labels_of(config), {"checkpoint_sha256": "0" * 64})
    run_predict(run, work, dialog, wav, tmp_path / "stale", "--onnx")
    assert "exported from another checkpoint than checkpoint_best.pt; exported anew" in capsys.readouterr().out


def test_not_an_onnx_model_is_named(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(PipelineError, match=f"{bad}: not a loadable ONNX model"):
        onnxrun.OnnxModel(bad)
    with pytest.raises(PipelineError, match=f"{tmp_path / 'none.onnx'}: ONNX model not found"):
        onnxrun.OnnxModel(tmp_path / "none.onnx")


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    from demo.build_ser_models import build, build_families

    out = tmp_path_factory.mktemp("onnx_families")
    return {**build_families(out, families=("wav2vec2-group", "wavlm", "data2vec-audio")), **build(out)}


@pytest.mark.parametrize(
    "audio, modality, fusion, padding",
    [
        ("wav2vec2-group", "fusion", "gated-xattn", "exact"),  # wav2vec2-base's GroupNorm over valid frames
        ("wavlm", "fusion", "late", "exact"),  # relative position bias
        ("data2vec-audio", "fusion", "concat", "exact"),  # the stack of positional convs
        ("wav2vec2-group", "audio", "gated-xattn", "authors"),  # every frame of the padded batch
        ("wav2vec2-group", "text", "gated-xattn", "exact"),
    ],
)
def test_every_path_exports_exactly(families, audio, modality, fusion, padding, tmp_path):
    """Random-init models of each family: onnxruntime's probabilities equal PyTorch's on batches of other sizes and
    lengths than the example the export traced (a row of 400 samples: one frame of the base CNN)."""
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    model = utils.SERModel(families["text_model"], families[audio], modality, fusion=fusion, audio_padding=padding)
    model.eval()
    ort_model = onnxrun.OnnxModel(onnxrun.export_onnx(model, tmp_path / "m.onnx"))
    expected = list(onnxrun.input_names(modality))
    assert ort_model.names == (["input_values"] if padding == "authors" else expected)  # the authors': no lengths
    assert json.loads(ort_model.metadata["inputs"]) == ort_model.names
    g = torch.Generator().manual_seed(1)
    items = [
        {"index": i, "audio": torch.randn(n, generator=g), "text": "so " * (3 * i + 1), "label": 0}
        for i, n in enumerate([400, 16000, 52000, 7000, 3000])
    ]
    collator = utils.Collator(AutoTokenizer.from_pretrained(families["text_model"]) if modality != "audio" else None)
    for rows in (items, items[1:3], items[:1]):
        batch = collator(rows)
        with torch.no_grad():
            want = model(batch).softmax(-1)
        assert torch.allclose(ort_model(batch).softmax(-1), want, atol=1e-5, rtol=0)
