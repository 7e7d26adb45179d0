"""Ship a trained run: a self-contained model folder that predict.py --model and predict.annotate() load.

    python export.py RUN OUT [--work WORK]      # RUN: WORK/runs/<run>/, or its name under WORK/runs

Written in OUT (which must be new or empty):
  model.safetensors  every weight, the extractors' and the head's (SERModel's state dict; no pickle)
  config.json        the model configuration (utils.ModelConfig, extractors as the subfolders below), the label set,
                     what a recording needs before the model (sample rate, channels, normalisation, truncation),
                     step 3's settings the run was trained with (max pause, tie break, word policy, label rule...),
                     where the run came from (training settings, extractor hashes) and its test metrics
  text/, audio/      the extractors' configs and their tokenizer / feature-extractor files (save_pretrained)
  README.md          a model card with Hugging Face's YAML header, generated from the run's config and metrics.json

Nothing in OUT names a path of this machine: the export is refused if a text file would hold the run's, the work
directory's, the corpus's or an extractor's path. utils.load_model_dir loads it. Docs: docs/PREDICT.md.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import tempfile
from pathlib import Path

import torch

import utils
from common import cli, defaults, fileio, formats, hubpush, modelhub, onnxrun
from common.cli import PipelineError

FORMAT = {"name": "ser-align-model", "version": 1}  # config.json "format": what wrote the folder
# metrics.json headline -> (the Hub's metric type, its name in the card)
CARD_METRICS = {
    "accuracy": ("accuracy", "Accuracy (WA)"),
    "ua": ("recall", "Unweighted accuracy (UA, macro recall)"),
    "weighted_f1": ("f1", "Weighted F1"),
    "macro_f1": ("f1", "Macro F1"),
}
TRAINING_KEYS = (
    "mode", "pipe", "variant", "seed", "epochs", "batch_size", "bf16", "lr_extractor", "lr_head", "select_on",
    "validation", "test_session", "folds_scheme", "freeze_feature_encoder", "code_version",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def find_run(run: str, work: str) -> Path:
    """RUN as a directory, else WORK/runs/RUN; it must be a single run with its best checkpoint."""
    path = Path(run) if Path(run).is_dir() else Path(work) / "runs" / run
    if not (path / "config.json").is_file() or not (path / "checkpoint_best.pt").is_file():
        raise PipelineError(
            f"{path}: not a run trained by train.py (expected config.json and checkpoint_best.pt; "
            "for a cross-validation run pass one of its fold<k>/ dirs)"
        )
    return path


def run_corpus(config: dict, metrics: dict) -> dict:
    """What the run was trained on: {"kind": iemocap | csv | demo, "name", "labels_json"} from its metrics.json's
    demo note and the labels.json of its work directory (when it is on this machine)."""
    labels_path = Path(str((config.get("data") or {}).get("work") or config.get("work", ""))) / "labels.json"
    labels = fileio.read_json(labels_path, "labels.json") if labels_path.is_file() else {}
    name = Path(str(config.get("corpus") or labels.get("corpus") or "corpus")).name
    if metrics.get("note") == formats.DEMO_NOTE:
        return {"kind": "demo", "name": "the synthetic demo corpus", "dataset_id": "ser-align-demo-corpus"}
    if "csv" in (labels.get("source") or {}):
        return {"kind": "csv", "name": name, "dataset_id": name}
    return {"kind": "iemocap", "name": "IEMOCAP", "dataset_id": "iemocap"}


def step3_settings(config: dict, run_dir: Path) -> dict:
    """Step 3's settings the run was trained with (config.json data.step3_config, align.variant_config)."""
    recorded = (config.get("data") or {}).get("step3_config")
    if not isinstance(recorded, dict) or recorded.get("kind") not in ("aligned", "baseline"):
        raise PipelineError(
            f"{run_dir / 'config.json'}: no data.step3_config (a run trained before it was recorded); "
            "retrain the run to export it"
        )
    return dict(recorded)


# ---------------------------------------------------------------------------------------------
# The folder
# ---------------------------------------------------------------------------------------------


def save_extractors(model: utils.SERModel, mc: utils.ModelConfig, out: Path) -> None:
    """Each extractor's config (its source path cleared) and tokenizer / feature extractor into its subfolder."""
    from transformers import AutoFeatureExtractor, AutoTokenizer

    for kind, embedder in (("text", model.text), ("audio", model.audio)):
        if embedder is None:
            continue
        sub = out / utils.EXTRACTOR_DIRS[kind]
        cfg = copy.deepcopy(embedder.model.config)
        cfg._name_or_path = utils.EXTRACTOR_DIRS[kind]
        cfg.save_pretrained(sub)
        source = mc.text_model if kind == "text" else mc.audio_model
        files = (
            AutoTokenizer.from_pretrained(source) if kind == "text" else AutoFeatureExtractor.from_pretrained(source)
        )
        if hasattr(files, "name_or_path"):
            files.name_or_path = utils.EXTRACTOR_DIRS[kind]
        files.save_pretrained(sub)


def extractor_provenance(config: dict) -> dict:
    """{kind: identity} of the run's extractors (modelhub.extractor_identity), the name kept only when it is a
    hub repository (a local folder's path is this machine's: its hashes say what it was)."""
    out = {}
    for kind, ident in (config.get("extractors") or {}).items():
        if ident is not None:
            out[kind] = {**ident, "name": ident["name"] if modelhub.is_hub_name(ident["name"]) else None}
    return out


def folder_config(config: dict, mc: utils.ModelConfig, metrics: dict, corpus: dict, step3: dict) -> dict:
    """config.json of the folder: the model, label set, preprocessing, step 3, provenance and test metrics."""
    from transformers import AutoFeatureExtractor

    model = mc.to_dict()
    used = {"text": mc.modality != "audio", "audio": mc.modality != "text"}
    for kind, sub in utils.EXTRACTOR_DIRS.items():
        model[f"{kind}_model"] = sub if used[kind] else None
    do_norm = config.get("do_normalize")
    if do_norm is None and model["audio_model"]:
        do_norm = bool(getattr(AutoFeatureExtractor.from_pretrained(mc.audio_model), "do_normalize", True))
    return {
        "format": FORMAT,
        "model": model,
        "labels": list(formats.labels_of(config)),
        "label_set": formats.label_set_name(formats.labels_of(config)),
        "preprocessing": {
            "sample_rate": formats.SAMPLE_RATE,
            "channels": "mean",  # predict.read_audio: channels averaged, then resampled once
            "do_normalize": do_norm,
            "audio_padding": mc.audio_padding,
            "max_text_tokens": mc.max_text_tokens,
            "max_audio_seconds": mc.max_audio_seconds,
        },
        "step3": step3,
        "variant": config["variant"],
        "training": {k: config.get(k) for k in TRAINING_KEYS} | {"corpus": corpus},
        "extractors": extractor_provenance(config),
        "test_metrics": {
            "segment": {k: metrics.get(k) for k in CARD_METRICS} | {"ci95": metrics.get("ci95")},
            "utterance": {k: metrics["utterance"].get(k) for k in CARD_METRICS}
            | {"ci95": metrics["utterance"].get("ci95")},
            "n_scored": metrics.get("n_scored"),
            "n_dialogs": metrics.get("n_dialogs"),
            "bootstrap": metrics.get("bootstrap"),
        },
    }


def write_weights(model: utils.SERModel, out: Path) -> None:
    """Every weight of the model, extractors and head, as safetensors."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, out / utils.MODEL_WEIGHTS)


def check_no_paths(out: Path, paths: list[str]) -> None:
    """Refuse a folder whose text files name one of these paths of this machine."""
    needles = sorted({str(Path(p).resolve()) for p in paths if p} | {str(p) for p in paths if p}, key=len)
    for f in sorted(out.rglob("*")):
        if f.is_file() and f.suffix != ".safetensors":
            text = f.read_text(encoding="utf-8", errors="replace")
            for needle in needles:
                if needle in text:
                    raise PipelineError(f"{f}: names the path {needle} of this machine (a bug of export.py)")


# ---------------------------------------------------------------------------------------------
# The model card
# ---------------------------------------------------------------------------------------------


def card_metadata(exported: dict, name: str) -> str:
    """The card's YAML header (huggingface_hub.ModelCardData): tags, dataset, metrics and the test results."""
    from huggingface_hub import EvalResult, ModelCardData

    corpus, seg = exported["training"]["corpus"], exported["test_metrics"]["segment"]
    results = [
        EvalResult(
            task_type="audio-classification",
            dataset_type=corpus["dataset_id"],
            dataset_name=f"{corpus['name']} (test: session {exported['training']['test_session']})",
            dataset_split="test",
            metric_type=CARD_METRICS[k][0],
            metric_name=f"{CARD_METRICS[k][1]}, segment level" + interval_text(seg["ci95"], k),
            metric_value=seg[k],
        )
        for k in CARD_METRICS
        if seg.get(k) is not None
    ]
    bases = [e["name"] for e in exported["extractors"].values() if e.get("name")]
    data = ModelCardData(
        model_name=name,
        license="other",
        license_name="iemocap-usc-sail" if corpus["kind"] == "iemocap" else f"{corpus['kind']}-corpus",
        tags=["speech-emotion-recognition", "audio-classification", "multimodal", "pytorch", "safetensors"]
        + [f"label-set-{exported['label_set']}"] * bool(exported["label_set"])
        + ["demo"] * (corpus["kind"] == "demo"),
        datasets=[corpus["dataset_id"]],
        metrics=sorted({CARD_METRICS[k][0] for k in CARD_METRICS}),
        base_model=bases or None,
        pipeline_tag="audio-classification",
        eval_results=results or None,
    )
    return data.to_yaml()


def interval_text(ci95: dict | None, key: str) -> str:
    """ " (95% CI [lo, hi])" of a metric, "" when metrics.json has no interval for it."""
    lo_hi = (ci95 or {}).get(key)
    return f" (95% CI [{lo_hi[0]:.4f}, {lo_hi[1]:.4f}])" if lo_hi else ""


def metrics_table(tm: dict) -> list[str]:
    """The test metrics, segment level and reference-projected, each with its 95 % interval."""
    lines = ["| metric | labelled segments | reference utterances (projected) |", "|---|---|---|"]
    for k, (_, label) in CARD_METRICS.items():
        cells = [
            f"{tm[level][k]:.4f}{interval_text(tm[level]['ci95'], k)}" if tm[level].get(k) is not None else "n/a"
            for level in ("segment", "utterance")
        ]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    return lines


def model_card(exported: dict, metrics: dict, name: str) -> str:
    """README.md of the folder: YAML header, then what the model is, what it was trained on, its test metrics
    with their intervals, protocol and departures, use, limits and the corpus licence."""
    mc, tr, tm = exported["model"], exported["training"], exported["test_metrics"]
    corpus, boot = tr["corpus"], tm.get("bootstrap") or {}
    bases = {k: e.get("name") or "a local model (not a hub repository; its hashes are in config.json)"
             for k, e in exported["extractors"].items()}  # fmt: skip
    s3 = ", ".join(f"{k} {v}" for k, v in exported["step3"].items())
    code = tr.get("code_version") or {}
    lines = [
        "---",
        card_metadata(exported, name).rstrip("\n"),
        "---",
        "",
        f"# {name}",
        "",
        "Speech emotion recognition from conversations: the model of Wang, Lee and Chen, *Enhancing Speech Emotion "
        "Recognition Leveraging Aligning Timestamps of ASR Transcripts and Speaker Diarization* (IALP 2025, "
        "arXiv 2507.19356), as trained by this reproduction's train.py"
        + (
            f" at commit {code['commit']}" + (" (with uncommitted changes)" if code.get("dirty") else "")
            if code
            else ""
        )
        + ".",
        "",
        f"- modality {mc['modality']}, fusion {mc['fusion']}, mode {tr['mode']} (seed {tr['seed']}, "
        f"{tr['epochs']} epochs at most, batch {tr['batch_size']})",
        *[f"- {k} extractor: {v}" for k, v in bases.items()],
        f"- classes: {', '.join(exported['labels'])}"
        + (f" (label set {exported['label_set']})" if exported["label_set"] else ""),  # fmt: skip
        "",
        "## Training data",
        "",
        f"{corpus['name']}, step-2 pipeline {tr['pipe']}, step-3 variant {exported['variant']} ({s3}); "
        f"test session {tr['test_session']}, validation {tr['validation']}, model selected on {tr['select_on']}.",
        "",
        "## Test metrics",
        "",
        f"{tm['n_scored']} labelled segments of {tm['n_dialogs']} test dialogs (metrics.json of the run). Intervals: "
        f"{100 * boot.get('level', 0):g} % {boot.get('method', '')} bootstrap over {boot.get('unit', '')}s, "
        f"{boot.get('samples', 0)} resamples, seed {boot.get('seed')}.",
        "",
        *metrics_table(tm),
        "",
        *([f"> **{metrics['note']}**", ""] if metrics.get("note") else []),
        "## Protocol and departures",
        "",
        "The protocol (splits, metrics, the reference-projected scoring) is in the repository's docs/EXPERIMENTS.md; "
        "where it departs from the paper and the authors' code, docs/DEPARTURES.md.",
        "",
        "## Use",
        "",
        "```bash",
        f"python predict.py call.wav --model {name}",
        "```",
        "",
        f'or in Python `from predict import annotate; annotate("call.wav", model="{name}")` (docs/PREDICT.md). '
        f"Audio is read as {exported['preprocessing']['sample_rate']} Hz mono (channels averaged); step 2 "
        '(ASR and diarization) and step 3 (the settings above, config.json "step3") run before the model.',
        "",
        "## Intended use and limits",
        "",
        f"Research on emotion recognition in conversations like those of {corpus['name']}, with the classes above. "
        "Not for decisions about people: acted emotions of a few speakers do not transfer to arbitrary speech, "
        "and errors of the ASR and the diarization reach the segments the model sees.",
        "",
        "## Licence",
        "",
        licence_note(corpus),
        "",
    ]
    return "\n".join(lines)


def licence_note(corpus: dict) -> str:
    """The corpus licence note of the card."""
    if corpus["kind"] == "demo":
        return (
            "Trained on the repository's synthetic demo corpus (generated, no IEMOCAP data): a test artefact whose "
            "predictions mean nothing."
        )
    if corpus["kind"] == "csv":
        return f"Trained on {corpus['name']}: its own licence applies to these weights' use."
    return (
        "Trained on IEMOCAP, which is licensed by USC SAIL (Signal Analysis and Interpretation Laboratory) under its "
        "own release agreement; check that agreement before using or sharing these weights."
    )


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("run", help="a trained run: WORK/runs/<run>/ or its name under WORK/runs")
    p.add_argument("out", help="the model folder to write (new, or empty)")
    p.add_argument(
        "--work", default=defaults.WORK_DIR, help="work directory of a run given by name (default: %(default)s)"
    )
    p.add_argument(
        "--onnx",
        action="store_true",
        help="also write model.onnx: the whole model (both extractors and the head) for onnxruntime "
        "(predict.py --model OUT --onnx; common/onnxrun.py)",
    )
    hubpush.add_hub_flags(p)
    return p.parse_args(argv)


def main(argv=None) -> Path:
    args = parse_args(argv)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PipelineError(f"{out}: exists and is not an empty folder; export.py writes a new model folder")
    run_dir = find_run(args.run, args.work)
    config = fileio.read_json(run_dir / "config.json", "run config")
    metrics = fileio.read_json(run_dir / "metrics.json", "run metrics (evaluate.py)")
    step3 = step3_settings(config, run_dir)
    corpus = run_corpus(config, metrics)
    print(f"[export] loading the run {run_dir}", flush=True)
    model, config = utils.load_run(run_dir, "cpu")  # frozen runs: the extractors from their source, as trained
    mc = utils.ModelConfig.from_run_config(config)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.tmp-", dir=out.parent) as tmp:
        tmp = Path(tmp)
        write_weights(model, tmp)
        save_extractors(model, mc, tmp)
        exported = folder_config(config, mc, metrics, corpus, step3)
        fileio.atomic_write_json(tmp / "config.json", exported)
        fileio.atomic_write_text(tmp / "README.md", model_card(exported, metrics, out.name))
        if args.onnx:  # the graph of the weights just written (their sha256 in its metadata)
            weights = fileio.file_sha256(tmp / utils.MODEL_WEIGHTS)
            onnxrun.export_onnx(model, tmp / "model.onnx", exported["labels"], {"weights_sha256": weights})
        machine_paths = [run_dir, config.get("work"), (config.get("data") or {}).get("work"), config.get("corpus")]
        check_no_paths(tmp, [*map(str, filter(None, machine_paths)), mc.text_model, mc.audio_model])
        if out.exists():
            out.rmdir()
        shutil.move(str(tmp), str(out))
        tmp.mkdir()  # for TemporaryDirectory's cleanup
    n = sum(p.numel() for p in model.parameters())
    print(f"[export] {run_dir} -> {out}: {n:,} parameters, {len(exported['labels'])} classes", flush=True)
    hubpush.push_if_asked(args, out)
    return out


if __name__ == "__main__":
    torch.set_flush_denormal(True)
    cli.run_main(main)
