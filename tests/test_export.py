"""export.py on a tiny trained demo run (test_predict.py's fixture), then predict.py --model and annotate().

Known answers: the folder holds the files it promises and no path of the run, its work directory, the demo
corpus or the demo's extractors (every text file read); the model card loads with huggingface_hub's ModelCard and
holds metrics.json's values and intervals; the folder's model is the run's (the same state dict, loaded with
safetensors); predict.py --model gives the segments and emotions of --run on a held-out dialog, probabilities
within 1e-6; annotate() returns what <name>.emotions.json holds, for one recording and for several.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import steps_in_process
from test_hub import REPO, TOKEN, hub  # noqa: F401  (the fake, local hub)
from test_predict import trained  # noqa: F401  (the module fixture: a work dir and a tiny run)

import evaluate
import export
import predict
import utils
from common.cli import PipelineError


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):  # noqa: F811
    work, run_dir, dialog, wav = trained
    evaluate.main(["--work", str(work), "--run", run_dir.name, "--device", "cpu", "--bootstrap-samples", "200"])
    out = tmp_path_factory.mktemp("models") / "ser-demo"
    export.main([run_dir.name, str(out), "--work", str(work)])
    step2 = tmp_path_factory.mktemp("step2_export")
    shutil.copy(work / "simulated" / "asr" / f"{dialog}.json", step2 / f"{wav.stem}.json")
    shutil.copy(work / "simulated" / "diarization" / f"{dialog}.rttm", step2 / f"{wav.stem}.rttm")
    return out, step2


def test_folder_is_self_contained(trained, exported):  # noqa: F811
    work, run_dir, _, _ = trained
    out, _ = exported
    for name in ("model.safetensors", "config.json", "README.md", "text/config.json", "text/tokenizer_config.json"):
        assert (out / name).is_file(), name
    assert (out / "audio" / "preprocessor_config.json").is_file()
    config = json.loads((run_dir / "config.json").read_text())
    forbidden = {str(run_dir), str(work), str(work.resolve()), config["corpus"], str(Path(config["corpus"]).parent)}
    forbidden |= {config["model"]["text_model"], config["model"]["audio_model"], str(Path(__file__).parent.parent)}
    texts = [f for f in out.rglob("*") if f.is_file() and f.suffix != ".safetensors"]
    assert len(texts) >= 8
    for f in texts:
        text = f.read_text(encoding="utf-8")
        assert not [p for p in forbidden if p in text], f
        assert "/tmp" not in text and "demo_data" not in text, f
    folder = json.loads((out / "config.json").read_text())
    assert folder["labels"] == config["labels"] and folder["model"]["text_model"] == "text"
    assert folder["step3"] == config["data"]["step3_config"] and folder["preprocessing"]["sample_rate"] == 16000
    with pytest.raises(PipelineError, match="not an empty folder"):
        export.main([str(run_dir), str(out)])


def test_model_card_loads_with_metrics_and_intervals(trained, exported):  # noqa: F811
    from huggingface_hub import ModelCard

    _, run_dir, _, _ = trained
    out, _ = exported
    metrics = json.loads((run_dir / "metrics.json").read_text())
    card = ModelCard.load(out / "README.md")
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert len(results) == 4 and "demo" in card.data.tags and card.data.datasets == ["ser-align-demo-corpus"]
    for key in ("accuracy", "ua", "weighted_f1", "macro_f1"):
        lo, hi = metrics["ci95"][key]
        (name,) = [n for n in results if n.startswith(export.CARD_METRICS[key][1] + ",")]
        assert results[name] == metrics[key] and f"[{lo:.4f}, {hi:.4f}]" in name
        assert f"{metrics['utterance'][key]:.4f} (95% CI [{metrics['utterance']['ci95'][key][0]:.4f}" in card.text
    assert metrics["note"] in card.text and "USC SAIL" not in card.text


def test_folder_model_is_the_runs(trained, exported):  # noqa: F811
    _, run_dir, _, _ = trained
    out, _ = exported
    run_model, _ = utils.load_run(run_dir)
    model, config = utils.load_model_dir(out)
    a, b = run_model.state_dict(), model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert config["labels"] == ["hap", "ang", "sad", "neu"]


def test_predict_model_equals_run_and_annotate_equals_the_file(trained, exported, tmp_path):  # noqa: F811
    _, run_dir, _, wav = trained
    out, step2 = exported
    common = [str(wav), "--asr-json", str(step2), "--rttm", str(step2), "--device", "cpu"]
    with steps_in_process():
        by_run = predict.main([*common, "--run", str(run_dir), "--out", str(tmp_path / "run")])[wav.stem]
        by_model = predict.main([*common, "--model", str(out), "--out", str(tmp_path / "model")])[wav.stem]
        one = predict.annotate(str(wav), model=str(out), asr_json=step2, rttm=step2, out=tmp_path / "one")
        two = predict.annotate([wav, wav], model=out, asr_json=step2, rttm=step2, device="cpu")
    key = lambda s: (s["id"], s["start"], s["end"], s["speaker"], s["text"], s["emotion"], s["flags"])  # noqa: E731
    assert len(by_run["segments"]) >= 3
    assert [key(s) for s in by_model["segments"]] == [key(s) for s in by_run["segments"]]
    for r, m in zip(by_run["segments"], by_model["segments"]):
        assert max(abs(r["probs"][c] - m["probs"][c]) for c in r["probs"]) < 1e-6
    assert by_model["run"] == str(out) and by_model["labels"] == by_run["labels"]
    assert one == json.loads((tmp_path / "one" / f"{wav.stem}.emotions.json").read_text())
    assert isinstance(two, list) and len(two) == 2 and two[1]["name"] == f"{wav.stem}_2"
    assert [s["probs"] for s in two[0]["segments"]] == [s["probs"] for s in one["segments"]]


def test_export_pushes_to_the_hub_and_predict_fetches_the_model_by_name(trained, hub, tmp_path, capsys):  # noqa: F811
    """export.py --push-to-hub sends the folder to the (fake, local) hub; predict.py --model org/name downloads it
    and gives the probabilities of the folder it was exported to."""
    work, run_dir, dialog, wav = trained
    evaluate.main(["--work", str(work), "--run", run_dir.name, "--device", "cpu", "--bootstrap-samples", "50"])
    out = export.main([run_dir.name, str(tmp_path / "pushed"), "--work", str(work), "--push-to-hub", REPO])
    sent = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert {k: v for k, v in hub.repos[REPO].items() if "/" not in k} == sent  # the folder's files, as written
    step2 = tmp_path / "step2"
    step2.mkdir()
    shutil.copy(work / "simulated" / "asr" / f"{dialog}.json", step2 / f"{wav.stem}.json")
    shutil.copy(work / "simulated" / "diarization" / f"{dialog}.rttm", step2 / f"{wav.stem}.rttm")
    common = [str(wav), "--device", "cpu", "--asr-json", str(step2), "--rttm", str(step2)]
    with steps_in_process():
        local = predict.main([*common, "--model", str(out), "--out", str(tmp_path / "local")])[wav.stem]
        fetched = predict.main([*common, "--model", REPO, "--out", str(tmp_path / "hub")])[wav.stem]
    assert len(fetched["segments"]) >= 3
    assert [s["probs"] for s in fetched["segments"]] == [s["probs"] for s in local["segments"]]
    assert TOKEN not in "".join(capsys.readouterr())


def test_export_onnx_and_predict_model_onnx_equal_pytorch(trained, exported, tmp_path):  # noqa: F811
    """export.py --onnx writes model.onnx beside model.safetensors; predict.py --model DIR --onnx (onnxruntime)
    gives the segments and emotions of --model DIR (PyTorch), probabilities within 1e-4."""
    work, run_dir, _, wav = trained
    _, step2 = exported
    out = export.main([run_dir.name, str(tmp_path / "with-onnx"), "--work", str(work), "--onnx"])
    assert (out / "model.onnx").stat().st_size > 0 and (out / "model.safetensors").is_file()
    common = [str(wav), "--asr-json", str(step2), "--rttm", str(step2), "--device", "cpu", "--model", str(out)]
    with steps_in_process():
        torch_run = predict.main([*common, "--out", str(tmp_path / "pt")])[wav.stem]
        onnx_run = predict.main([*common, "--onnx", "--out", str(tmp_path / "ort")])[wav.stem]
    assert len(onnx_run["segments"]) >= 3
    assert [s["emotion"] for s in onnx_run["segments"]] == [s["emotion"] for s in torch_run["segments"]]
    for a, b in zip(torch_run["segments"], onnx_run["segments"]):
        assert max(abs(a["probs"][c] - b["probs"][c]) for c in a["probs"]) < 1e-4
    with pytest.raises(PipelineError, match="no model.onnx"):
        with steps_in_process():
            predict.main([*common[:-1], str(exported[0]), "--onnx", "--out", str(tmp_path / "none")])
