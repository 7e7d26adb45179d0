"""The whole model (both extractors and the head) as ONNX, and run with ONNX Runtime on the CPU.

export_onnx(model, out) traces a loaded utils.SERModel (utils.load_run, or a model folder's loader) in eval mode with
torch.onnx's TorchScript exporter (dynamo=False) into one model.onnx. Its inputs are the tensors of a
utils.Collator batch, by the modality: input_ids, attention_mask [batch, tokens] (text) and input_values [batch,
samples], lengths [batch] (audio; the valid samples of each zero-padded row: the audio attention mask as lengths);
batch, tokens and samples are dynamic axes (a run with --audio-padding authors uses no lengths: its graph has no
such input). Its outputs: logits and probs (softmax) [batch, classes]. The inference path is exported as SERModel
runs it: AudioEmbedder's padding-exact pooling (the frame mask from the lengths, the GroupNorm of a base model's
first conv over each row's valid frames, the positional conv's padded frames zeroed) is made of tensor operations
on the lengths and traces exactly; the one path that loops over the batch's distinct lengths (a CNN normalised
neither per frame nor as wav2vec2-base) is refused. The model's modality, classes and inputs are stored in the
file's metadata.

OnnxModel(path) opens it with onnxruntime.InferenceSession on the CPU (2 intra-op threads by default) and takes
the same collated batches as the PyTorch model: model(batch) -> logits, so utils.run_dataset runs either.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common import cli, fileio

OPSET = 17
DEFAULT_THREADS = 2
TEXT_INPUTS = ("input_ids", "attention_mask")
AUDIO_INPUTS = ("input_values", "lengths")
DYNAMIC_AXES = {
    "input_ids": {0: "batch", 1: "tokens"},
    "attention_mask": {0: "batch", 1: "tokens"},
    "input_values": {0: "batch", 1: "samples"},
    "lengths": {0: "batch"},
    "logits": {0: "batch"},
    "probs": {0: "batch"},
}


def input_names(modality: str) -> tuple[str, ...]:
    """The graph's inputs for a modality setting: the text pair, the audio pair or both."""
    return (TEXT_INPUTS if modality != "audio" else ()) + (AUDIO_INPUTS if modality != "text" else ())


class _Exportable(nn.Module):
    """SERModel.forward over positional tensors (what tracing needs) -> (logits, probs)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.names = model, input_names(model.modality)

    def forward(self, *tensors):
        logits = self.model(dict(zip(self.names, tensors)))
        return logits, logits.softmax(-1)


def check_exportable(model: nn.Module) -> None:
    """Refuse (one line) a model whose inference path does not trace into a graph valid for every batch."""
    if model.modality != "text" and model.audio is None or model.modality != "audio" and model.text is None:
        raise cli.PipelineError("ONNX export needs the extractors: load the model with load_extractors=True")
    if model.audio is not None and model.audio_padding == "exact" and model.audio.cnn_norm() == "other":
        raise cli.PipelineError(
            f"ONNX export: the audio model's CNN normalisation ({model.audio.model.config.feat_extract_norm!r}) is run "
            "sample by sample in PyTorch (AudioEmbedder.cnn_features), which does not trace into one graph"
        )


def example_batch(model: nn.Module, sample_rate: int = 16000) -> dict:
    """A two-row batch of unequal lengths (so that no mask is constant while tracing): random audio, token ids 5-9."""
    g = torch.Generator().manual_seed(0)
    batch = {}
    if model.modality != "audio":
        ids = torch.randint(5, 10, (2, 7), generator=g)
        mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
        batch |= {"input_ids": ids * mask + (1 - mask), "attention_mask": mask}
    if model.modality != "text":
        lengths = torch.tensor([sample_rate, sample_rate * 3 // 5])
        audio = torch.randn(2, sample_rate, generator=g) * (torch.arange(sample_rate)[None] < lengths[:, None])
        batch |= {"input_values": audio, "lengths": lengths}
    return batch


def export_onnx(model: nn.Module, out, labels=None, metadata: dict | None = None) -> Path:
    """A loaded SERModel (traced in eval mode on its device; its mode is restored) -> out (model.onnx); returns
    out. labels: its classes, kept in the metadata with metadata's other {key: text} entries (e.g. the checkpoint's
    sha256)."""
    import onnx

    check_exportable(model)
    was_training = model.training
    wrapper = _Exportable(model).eval()  # export restores the wrapper's mode onto the model: eval, as inference
    names = wrapper.names
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in example_batch(model).items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused Transformer kernels have no ONNX form; same maths
    try:
        _trace(wrapper, batch, names, tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        model.train(was_training)
    graph = onnx.load(str(tmp), load_external_data=False)  # a model over 2 GB keeps its weights beside the graph
    inputs = [i.name for i in graph.graph.input]  # an unused input is dropped (authors' padding: lengths)
    info = {"modality": model.modality, "n_classes": str(model.n_classes), "inputs": json.dumps(inputs)}
    info |= {"labels": json.dumps(list(labels))} if labels is not None else {}
    onnx.helper.set_model_props(graph, {**info, **{k: str(v) for k, v in (metadata or {}).items()}})
    onnx.save(graph, str(tmp))
    tmp.replace(out)
    return out


def _trace(wrapper: nn.Module, batch: dict, names, path: Path) -> None:
    """torch.onnx's TorchScript exporter on the example batch: dynamic batch, token and sample axes."""
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # Python ints of shapes: checked by the tests
        torch.onnx.export(
            wrapper,
            tuple(batch[n] for n in names),
            str(path),
            input_names=list(names),
            output_names=["logits", "probs"],
            dynamic_axes={k: v for k, v in DYNAMIC_AXES.items() if k in names or k in ("logits", "probs")},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def session_options(threads: int = DEFAULT_THREADS):
    """ONNX Runtime options: `threads` intra-op threads, one inter-op thread, every graph optimisation."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return opts


class OnnxModel:
    """model.onnx in an onnxruntime.InferenceSession (CPU): model(batch) takes a utils.Collator batch (tensors)
    and returns its logits [B, C] as a torch tensor, as SERModel does; so utils.run_dataset runs it. The
    metadata gives modality, n_classes, labels (None when not stored) and any other entry the export stored."""

    is_onnx = True

    def __init__(self, path, threads: int = DEFAULT_THREADS):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise cli.PipelineError(f"{self.path}: ONNX model not found")
        try:
            self.session = ort.InferenceSession(
                str(self.path), session_options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as e:
            raise cli.PipelineError(f"{self.path}: not a loadable ONNX model: {cli.one_line(str(e))}") from e
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        if "modality" not in self.metadata:
            raise cli.PipelineError(f"{self.path}: no 'modality' in its metadata; expected a model.onnx of export_onnx")
        self.modality = self.metadata["modality"]
        self.n_classes = int(self.metadata["n_classes"])
        self.labels = json.loads(self.metadata["labels"]) if "labels" in self.metadata else None
        self.names = [i.name for i in self.session.get_inputs()]

    def eval(self) -> OnnxModel:
        """Nothing to switch (the graph is the inference path); here so that code written for SERModel runs it."""
        return self

    def __call__(self, batch: dict) -> torch.Tensor:
        """Collated batch -> logits [B, C] (float32, CPU)."""
        feed = {n: np.ascontiguousarray(batch[n].cpu().numpy()) for n in self.names}
        feed = {n: v.astype(np.int64) if v.dtype.kind in "iub" else v.astype(np.float32) for n, v in feed.items()}
        return torch.from_numpy(self.session.run(["logits"], feed)[0])


def run_onnx_for(run_dir, load_model, labels=None, threads: int = DEFAULT_THREADS) -> OnnxModel:
    """The ONNX model of a trained run: RUN/model.onnx when present and exported from its checkpoint_best.pt (the
    sha256 in its metadata), else load_model() (a zero-argument callable giving the run's SERModel on the CPU)
    exported to a temporary file, read into the session."""
    import tempfile

    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoint_best.pt"
    digest = fileio.file_sha256(ckpt) if ckpt.is_file() else None
    stored = run_dir / "model.onnx"
    if stored.is_file():
        onnx_model = OnnxModel(stored, threads)
        if digest is None or onnx_model.metadata.get("checkpoint_sha256") in (None, digest):
            print(f"[onnx] {stored}: onnxruntime on the CPU, {threads} threads", flush=True)
            return onnx_model
        print(f"[onnx] {stored}: exported from another checkpoint than {ckpt.name}; exported anew", flush=True)
    with tempfile.TemporaryDirectory(prefix="onnx-") as tmp:
        meta = {"checkpoint_sha256": digest} if digest else {}
        path = export_onnx(load_model(), Path(tmp) / "model.onnx", labels, meta)
        print(f"[onnx] {run_dir}: exported to ONNX; onnxruntime on the CPU, {threads} threads", flush=True)
        return OnnxModel(path, threads)  # the session holds the graph: the file may go
