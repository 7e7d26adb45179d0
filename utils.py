"""Shared definitions for the SER-with-alignment pipeline.

Two parts, read in order:
  1. Small shared helpers: the label map, atomic file writing, the loaders for labels.json,
     RTTM files, audio and .pt files. Every step uses these; none redefines them.
  2. The model of the paper (Section III-B, Fig. 1): text and audio embedders, bidirectional
     cross-attention with forget gates, the Transformer fusion layer and the linear classifier.

Paper: Wang, Lee, Chen, "Enhancing Speech Emotion Recognition Leveraging Aligning Timestamps
of ASR Transcripts and Speaker Diarization", IALP 2025 (arXiv 2507.19356).
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import tempfile
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------------------------
# 1. Shared helpers
# ---------------------------------------------------------------------------------------------

SAMPLE_RATE = 16000  # IEMOCAP audio, wav2vec 2.0 and WhisperX all use 16 kHz

# The 4-class task of the paper (Section IV-A), in the order of its Table II.
LABELS = ("hap", "ang", "sad", "neu")
LABEL_NAMES = {"hap": "happy (+excited)", "ang": "angry", "sad": "sad", "neu": "neutral"}
LABEL_INDEX = {name: i for i, name in enumerate(LABELS)}
# IEMOCAP emotion codes -> 4-class label. "exc" (excited) is merged into "hap", as is standard.
# Every other code (fru, sur, fea, dis, oth, xxx) has no 4-class label.
CODE_TO_LABEL = {"hap": "hap", "exc": "hap", "ang": "ang", "sad": "sad", "neu": "neu"}
IEMOCAP_CODES = ("neu", "hap", "exc", "sad", "ang", "fru", "sur", "fea", "dis", "oth", "xxx")


class PipelineError(Exception):
    """Bad input: the message names the file (and line) and what was expected."""


def session_of(dialog: str) -> int:
    """'Ses03M_impro05a' -> 3."""
    if not (dialog.startswith("Ses") and dialog[3:5].isdigit()):
        raise PipelineError(f"not an IEMOCAP dialog or utterance id: {dialog!r}")
    return int(dialog[3:5])


def atomic_write_bytes(path, data: bytes) -> None:
    """Write data to path via a temp file in the same folder and a rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj, indent=1) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def read_json(path, what: str = "JSON file"):
    """Load a JSON file, failing with a message that names the file."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: {what} not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PipelineError(f"{path}: corrupt {what}: {e}") from e


def atomic_torch_save(obj, path) -> None:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_pt(path, what: str = ".pt file"):
    """torch.load with weights_only=True (no pickled code runs), with errors naming the file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt zip, truncated file, unpickling refused
        raise PipelineError(f"{path}: corrupt or unreadable {what}: {type(e).__name__}: {e}") from e


def load_labels(work) -> dict:
    """Read WORK/labels.json (written by step 1, iemo_lab_with_timestamps.py)."""
    path = Path(work) / "labels.json"
    if not path.is_file():
        raise PipelineError(f"{path}: not found; run step 1 first: python iemo_lab_with_timestamps.py --work {work}")
    data = read_json(path, "labels file")
    if "dialogs" not in data:
        raise PipelineError(f"{path}: no 'dialogs' key; not a labels.json written by step 1")
    return data


def read_rttm(path) -> list[tuple[float, float, str]]:
    """Read an RTTM file -> [(start, end, speaker)] sorted by start. Errors name file:line."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: RTTM file not found")
    turns = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if fields[0] != "SPEAKER" or len(fields) < 8:
                raise PipelineError(f"{path}:{n}: expected 'SPEAKER <file> <chan> <start> <dur> <NA> <NA> <label> ...', got {line.strip()!r}")
            try:
                start, dur = float(fields[3]), float(fields[4])
            except ValueError:
                raise PipelineError(f"{path}:{n}: start and duration must be numbers, got {fields[3]!r} {fields[4]!r}") from None
            if not (start >= 0 and dur >= 0):
                raise PipelineError(f"{path}:{n}: negative start or duration in {line.strip()!r}")
            turns.append((start, start + dur, fields[7]))
    turns.sort()
    return turns


def write_rttm(path, dialog: str, turns) -> None:
    """Write [(start, end, speaker)] as RTTM, atomically."""
    lines = [f"SPEAKER {dialog} 1 {s:.3f} {e - s:.3f} <NA> <NA> {spk} <NA> <NA>\n"
             for s, e, spk in sorted(turns) if e > s]
    atomic_write_text(path, "".join(lines))


def load_audio(path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a wav file with soundfile -> float32 mono [samples] in [-1, 1].

    Stereo files (IEMOCAP's dialog wavs) are mixed down by averaging the channels, so both
    actors are heard (each channel favours one actor's microphone). No resampling: a file at
    another rate is an error, since every IEMOCAP wav is 16 kHz.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: audio file not found")
    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        raise PipelineError(f"{path}: cannot decode audio: {e}") from e
    if sr != sample_rate:
        raise PipelineError(f"{path}: sample rate {sr} Hz, expected {sample_rate} Hz")
    if audio.shape[0] == 0:
        raise PipelineError(f"{path}: audio file has no samples")
    return audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def code_version() -> dict:
    """The git commit of this code and whether the tree has uncommitted changes."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    return {"commit": commit or "unknown", "dirty": dirty}


DEMO_NOTE = ("DEMO: these numbers come from the synthetic demo corpus (and, in the default demo setup, tiny "
             "randomly initialised models); they say nothing about IEMOCAP or about the paper's claims.")


def demo_note(labels: dict) -> str | None:
    """DEMO_NOTE if labels.json was made from the generated demo corpus (it leaves its ground truth
    in the corpus root), else None. Every report of a run carries it, so no demo number passes for
    an IEMOCAP one."""
    return DEMO_NOTE if (Path(labels.get("corpus", "")) / "demo_ground_truth.json").is_file() else None


def overlap(a_start: float, a_end: float, b_start: float, b_end: float) -> float:
    """Length of the intersection of two intervals (0 if disjoint)."""
    return max(0.0, min(a_end, b_end) - max(a_start, b_start))


# ---------------------------------------------------------------------------------------------
# 2. The model (paper Section III-B, Fig. 1)
# ---------------------------------------------------------------------------------------------
#
# Read in this order: the two embedders (z_t, z_a), the cross-attention fusion block with its
# forget gates (a(t,a), a(a,t) -> h(t,a), h(a,t)), the fusion layer and classifier, the whole
# model, then the data side (dataset, collate, length-bucketed sampler), the frozen-feature cache
# and the inference helpers that evaluate.py calls (load_run, predict_split).
# torch and transformers are imported here, not at the top, only so that this file reads in order.
import hashlib  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

MODALITIES = ("fusion", "text", "audio")


def extractor_identity(name_or_dir: str) -> dict:
    """What a pretrained extractor *is*: its name or local dir, a hash of its config and, for a
    local dir, a hash of its weight files (a regenerated demo model with the same config differs)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name_or_dir)
    ident = {"name": str(name_or_dir),
             "config_sha256": hashlib.sha256(config.to_json_string(use_diff=False).encode()).hexdigest()}
    path = Path(name_or_dir)
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
            h.update(f.name.encode())
            h.update(f.read_bytes())
        ident["weights_sha256"] = h.hexdigest()
    return ident


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of x [B, T, H] counting only positions where mask [B, T] is true -> [B, H]."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class TextEmbedder(nn.Module):
    """Text branch of Fig. 1: RoBERTa over the segment transcript, mean-pooled over tokens.

    input_ids, attention_mask [B, L] -> z_t [B, H_t]  (H_t = config.hidden_size, 768 for roberta-base).
    Padding tokens are excluded from the mean by the attention mask, so a padded sample gives the
    same z_t as alone. The pooler head of AutoModel is not built: it is unused here (and unused
    parameters would upset DistributedDataParallel).
    """

    def __init__(self, name_or_dir: str):
        super().__init__()
        from transformers import AutoModel

        self.model = AutoModel.from_pretrained(name_or_dir, add_pooling_layer=False)
        self.hidden_size = self.model.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return masked_mean(out, attention_mask.bool())


class AudioEmbedder(nn.Module):
    """Audio branch of Fig. 1: wav2vec 2.0 over the segment waveform, mean-pooled over frames.

    input_values [B, S] (normalised, zero-padded), lengths [B] (valid samples) -> z_a [B, H_a].

    Padding must not change a sample's embedding. The valid samples are carried to frame
    resolution with the model's own _get_feat_extract_output_lengths; the transformer encoder gets
    that frame mask (it zeroes padded frames before its positional convolution and masks them in
    attention) and the mean pool counts only valid frames. The CNN feature encoder is the subtle
    part: wav2vec2-base (config.feat_extract_norm == "group") GroupNorm-normalises its first conv
    layer over the whole time axis, so zeros appended to a sample shift the statistics of every
    frame. That GroupNorm (one group per channel, only in the first conv layer) is therefore
    computed here with statistics over each sample's valid frames only, the rest of the CNN runs
    batched unchanged (a GroupNorm of another shape falls back to running the CNN sample by
    sample). For "layer" models
    (wav2vec2-large-lv60) the CNN normalises each frame alone, so it runs batched: a valid frame's
    receptive field lies inside the valid samples. The forward below is Wav2Vec2Model.forward's
    own sequence (feature_extractor -> feature_projection -> _mask_hidden_states (SpecAugment
    while training, as configured) -> encoder), with the CNN step made padding-exact.
    """

    def __init__(self, name_or_dir: str):
        super().__init__()
        from transformers import AutoModel

        self.model = AutoModel.from_pretrained(name_or_dir)
        cfg = self.model.config
        if getattr(cfg, "add_adapter", False):
            raise PipelineError(f"{name_or_dir}: wav2vec2 models with an adapter are not supported")
        self.hidden_size = cfg.hidden_size
        self.per_sample_cnn = getattr(cfg, "feat_extract_norm", "group") != "layer"

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.model._get_feat_extract_output_lengths(lengths).long()

    def cnn_features(self, input_values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """wav2vec2's CNN feature encoder, exact under padding: [B, S] -> [B, C, T]."""
        cnn = self.model.feature_extractor
        if not self.per_sample_cnn:
            return cnn(input_values)
        first = cnn.conv_layers[0]
        norm = getattr(first, "layer_norm", None)
        if isinstance(norm, nn.GroupNorm) and norm.num_groups == norm.num_channels:
            h = first.conv(input_values[:, None]).float()  # [B, C, T0]; statistics in fp32 under autocast
            n0 = (lengths.to(h.device) - first.conv.kernel_size[0]) // first.conv.stride[0] + 1
            valid = (torch.arange(h.shape[-1], device=h.device)[None, :] < n0[:, None]).to(h.dtype)[:, None, :]
            count = valid.sum(-1, keepdim=True)
            mean = (h * valid).sum(-1, keepdim=True) / count
            var = (((h - mean) ** 2) * valid).sum(-1, keepdim=True) / count
            h = (h - mean) * torch.rsqrt(var + norm.eps) * norm.weight[:, None] + norm.bias[:, None]
            h = first.activation(h)
            for layer in cnn.conv_layers[1:]:  # frames past a sample's end never reach its valid frames
                h = layer(h)
            return h
        feats = None  # any other normalisation: run the CNN on each sample's own samples
        t_max = int(self.frame_lengths(lengths).max())
        for n in torch.unique(lengths).tolist():
            rows = (lengths == n).nonzero().flatten()
            f = cnn(input_values[rows, :n])
            if feats is None:
                feats = f.new_zeros(len(lengths), f.shape[1], t_max)
            feats[rows, :, :f.shape[2]] = f
        return feats

    def forward(self, input_values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        n_frames = self.frame_lengths(lengths)
        feats = self.cnn_features(input_values, lengths).transpose(1, 2)  # [B, T, C]
        mask = torch.arange(feats.shape[1], device=feats.device)[None, :] < n_frames.to(feats.device)[:, None]
        hidden, _ = self.model.feature_projection(feats)
        hidden = self.model._mask_hidden_states(hidden, attention_mask=mask)
        hidden = self.model.encoder(hidden, attention_mask=mask).last_hidden_state
        return masked_mean(hidden, mask)


class GatedCrossAttention(nn.Module):
    """The Cross-Attention Fusion Block of Fig. 1 (after Jiang & Ji 2022, CMGA, arXiv 2208.11893).

    z_t, z_a [B, D] -> [B, 2, D] = [h(t,a); h(a,t)].

      a(t,a) = MHA(query=z_t, key=z_a, value=z_a)          text queries audio
      a(a,t) = MHA(query=z_a, key=z_t, value=z_t)          audio queries text
      f_t    = sigmoid(W_t [z_t ; a(t,a)] + b_t)           forget gate, element-wise, in (0, 1)
      h(t,a) = f_t * a(t,a) + (1 - f_t) * z_t
      f_a    = sigmoid(W_a [z_a ; a(a,t)] + b_a)
      h(a,t) = f_a * a(a,t) + (1 - f_a) * z_a

    The gate decides per dimension how much of the attended (other-modality) information replaces
    the original one; this is the forget gate as the paper describes it ("controls the flow of
    information from the attended modality, fusing it with the original representation"). We
    could not retrieve CMGA's exact gate equations offline; the form above is our reading, not a
    quotation. Note that, as in the paper, each modality is a single token (1 x 1 x 768), so the
    softmax runs over one key and a(t,a) reduces to the value/output projections of z_a: the
    block is a learned, gated linear exchange between the two embeddings.
    """

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.attn_ta = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.attn_at = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.gate_t = nn.Linear(2 * dim, dim)
        self.gate_a = nn.Linear(2 * dim, dim)

    def forward(self, z_t: torch.Tensor, z_a: torch.Tensor) -> torch.Tensor:
        t, a = z_t.unsqueeze(1), z_a.unsqueeze(1)  # [B, 1, D]: the paper's "unsqueeze"
        a_ta, _ = self.attn_ta(t, a, a, need_weights=False)
        a_at, _ = self.attn_at(a, t, t, need_weights=False)
        f_t = torch.sigmoid(self.gate_t(torch.cat([t, a_ta], dim=-1)))
        f_a = torch.sigmoid(self.gate_a(torch.cat([a, a_at], dim=-1)))
        h_ta = f_t * a_ta + (1 - f_t) * t
        h_at = f_a * a_at + (1 - f_a) * a
        return torch.cat([h_ta, h_at], dim=1)  # [B, 2, D]


class FusionClassifier(nn.Module):
    """Fusion Layer + Linear Classifier of Fig. 1.

    tokens [B, N, D] -> logits [B, 4]. One Transformer encoder layer (heads, FFN 4D, dropout)
    over the token sequence (N = 2: [h(t,a); h(a,t)]), mean-pooled over the sequence to [B, D],
    dropout, then Linear(D -> len(LABELS)). Softmax is applied at inference (predict_split);
    training uses cross-entropy on the logits. The single-modality baselines use this same head
    on their one token (N = 1), so the baselines differ from the fused model only by the missing
    modality and the missing cross-attention block.
    """

    def __init__(self, dim: int, heads: int, dropout: float, n_classes: int = len(LABELS)):
        super().__init__()
        self.fusion = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=dropout,
                                                 batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(dim, n_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        fused = self.fusion(tokens).mean(dim=1)
        return self.classifier(self.dropout(fused))


class SERModel(nn.Module):
    """The whole classifier of Fig. 1 for one modality setting.

    modality "fusion": z_t = TextEmbedder, z_a = AudioEmbedder (projected to the text size D if
    the hidden sizes differ, else identity), GatedCrossAttention -> [B, 2, D], FusionClassifier.
    modality "text" / "audio": the one embedding as a single token [B, 1, D] -> FusionClassifier.
    Sizes come from the loaded models' configs. With load_extractors=False only the head is built
    (sizes then come from the configs alone), for training on cached frozen embeddings.
    """

    def __init__(self, text_model: str | None, audio_model: str | None, modality: str = "fusion",
                 dropout: float = 0.2, heads: int = 8, load_extractors: bool = True):
        super().__init__()
        if modality not in MODALITIES:
            raise PipelineError(f"modality must be one of {MODALITIES}, got {modality!r}")
        from transformers import AutoConfig

        self.modality = modality
        use_text, use_audio = modality in ("fusion", "text"), modality in ("fusion", "audio")
        self.text = TextEmbedder(text_model) if use_text and load_extractors else None
        self.audio = AudioEmbedder(audio_model) if use_audio and load_extractors else None
        h_t = AutoConfig.from_pretrained(text_model).hidden_size if use_text else None
        h_a = AutoConfig.from_pretrained(audio_model).hidden_size if use_audio else None
        dim = h_t if use_text else h_a
        if dim % heads:
            raise PipelineError(f"hidden size {dim} is not divisible by --heads {heads}")
        self.dim = dim
        self.proj_a = nn.Linear(h_a, dim) if use_audio and h_a != dim else nn.Identity()
        self.cross = GatedCrossAttention(dim, heads, dropout) if modality == "fusion" else None
        self.head = FusionClassifier(dim, heads, dropout)

    def extractors(self) -> list[nn.Module]:
        return [m for m in (self.text, self.audio) if m is not None]

    def extractor_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.extractors() for p in m.parameters()]

    def head_parameters(self) -> list[nn.Parameter]:
        ext = {id(p) for p in self.extractor_parameters()}
        return [p for p in self.parameters() if id(p) not in ext]

    def head_state_dict(self) -> dict:
        """State of everything but the pretrained extractors (what frozen mode trains)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(("text.", "audio."))}

    def embed(self, batch: dict) -> tuple:
        """batch from Collator -> (z_t [B, H_t] or None, z_a [B, H_a] or None)."""
        z_t = self.text(batch["input_ids"], batch["attention_mask"]) if self.text is not None else None
        z_a = self.audio(batch["input_values"], batch["lengths"]) if self.audio is not None else None
        return z_t, z_a

    def classify(self, z_t, z_a) -> torch.Tensor:
        """Pooled embeddings -> logits [B, 4] (everything after the extractors in Fig. 1)."""
        if z_a is not None:
            z_a = self.proj_a(z_a)
        if self.modality == "fusion":
            tokens = self.cross(z_t, z_a)
        else:
            tokens = (z_t if self.modality == "text" else z_a).unsqueeze(1)
        return self.head(tokens)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.classify(*self.embed(batch))


def build_model(config: dict, load_extractors: bool = True) -> SERModel:
    """SERModel from a run config (the keys train.py writes to config.json)."""
    return SERModel(config["text_model"], config["audio_model"], config["modality"], config["dropout"],
                    config["heads"], load_extractors=load_extractors)


# ---- data: the step-3 segment caches as batches ---------------------------------------------

MIN_AUDIO_SAMPLES = 400  # 25 ms: wav2vec 2.0's CNN receptive field, the shortest input giving one frame


def zero_mean_unit_var(x: torch.Tensor) -> torch.Tensor:
    """Per-utterance normalisation, as Wav2Vec2FeatureExtractor does when do_normalize is set."""
    return (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)


class SegmentDataset(torch.utils.data.Dataset):
    """All segments of the given step-3 caches (WORK/<pipe>/<variant>/cache/<dialog>.pt).

    labelled_only=True keeps the segments with a 4-class label (training, validation); False
    keeps every segment (prediction: TEER scores all system speech). Audio is prepared once, here:
    segments longer than max_audio_seconds are centre-cropped (the middle of a long turn; 0 = no
    crop), audio is normalised zero-mean unit-variance if the feature extractor's config says
    do_normalize, and audio shorter than 25 ms is zero-padded to one wav2vec2 frame. Counts of
    what was kept, cropped and padded are in .counts.
    """

    def __init__(self, cache_paths, labelled_only: bool, max_audio_seconds: float = 0.0,
                 do_normalize: bool = True, sample_rate: int = SAMPLE_RATE):
        self.segments = []
        self.counts = {"dialogs": 0, "segments": 0, "unlabelled_skipped": 0, "cropped": 0, "padded_short": 0}
        max_samples = int(max_audio_seconds * sample_rate) if max_audio_seconds else 0
        for path in cache_paths:
            cache = load_pt(path, "segment cache")
            if not isinstance(cache, dict) or "segments" not in cache or "dialog" not in cache:
                raise PipelineError(f"{path}: not a step-3 segment cache (expected keys dialog, segments)")
            if cache.get("sample_rate", sample_rate) != sample_rate:
                raise PipelineError(f"{path}: sample_rate {cache.get('sample_rate')}, expected {sample_rate}")
            self.counts["dialogs"] += 1
            for n, seg in enumerate(cache["segments"]):
                missing = {"id", "start", "end", "speaker", "text", "label", "audio"} - set(seg)
                if missing:
                    raise PipelineError(f"{path}: segment {n} lacks {sorted(missing)}")
                label = int(seg["label"])
                if not -1 <= label < len(LABELS):
                    raise PipelineError(f"{path}: segment {seg['id']}: label {label} is not in -1..{len(LABELS) - 1}")
                if labelled_only and label < 0:
                    self.counts["unlabelled_skipped"] += 1
                    continue
                audio = torch.as_tensor(seg["audio"], dtype=torch.float32).flatten()
                if max_samples and audio.numel() > max_samples:
                    off = (audio.numel() - max_samples) // 2
                    audio = audio[off:off + max_samples]
                    self.counts["cropped"] += 1
                if do_normalize and audio.numel() > 1:
                    audio = zero_mean_unit_var(audio)
                if audio.numel() < MIN_AUDIO_SAMPLES:
                    audio = F.pad(audio, (0, MIN_AUDIO_SAMPLES - audio.numel()))
                    self.counts["padded_short"] += 1
                self.segments.append({"id": seg["id"], "dialog": cache["dialog"], "start": float(seg["start"]),
                                      "end": float(seg["end"]), "speaker": seg["speaker"], "text": seg["text"] or "",
                                      "label": label, "audio": audio.contiguous()})
        self.counts["segments"] = len(self.segments)
        self.lengths = [s["audio"].numel() for s in self.segments]

    def __len__(self):
        return len(self.segments)

    def __getitem__(self, i):
        return {"index": i, **self.segments[i]}


class Collator:
    """List of dataset items -> one batch: audio zero-padded [B, S] with lengths [B], text
    tokenised with the extractor's own tokenizer (padded, truncated to max_tokens), labels [B]."""

    def __init__(self, tokenizer, max_tokens: int = 512):
        self.tokenizer = tokenizer
        self.max_tokens = min(max_tokens, getattr(tokenizer, "model_max_length", max_tokens))

    def __call__(self, items: list[dict]) -> dict:
        lengths = torch.tensor([it["audio"].numel() for it in items])
        audio = torch.zeros(len(items), int(lengths.max()))
        for i, it in enumerate(items):
            audio[i, :lengths[i]] = it["audio"]
        batch = {"input_values": audio, "lengths": lengths,
                 "labels": torch.tensor([it["label"] for it in items]),
                 "index": torch.tensor([it["index"] for it in items])}
        if self.tokenizer is not None:
            tok = self.tokenizer([it["text"] for it in items], padding=True, truncation=True,
                                 max_length=self.max_tokens, return_tensors="pt")
            batch["input_ids"], batch["attention_mask"] = tok["input_ids"], tok["attention_mask"]
        return batch


class LengthBucketSampler(torch.utils.data.Sampler):
    """Batches of similar audio length (less padding), in a seeded, deterministic order.

    shuffle=True: each epoch (set_epoch) permutes the indices with seed + epoch, cuts the
    permutation into pools of batch_size * pool_batches, sorts each pool by length, cuts it into
    batches and permutes the batches. shuffle=False: batches of the length-sorted indices.
    Distributed: the batch list is padded by repetition to a multiple of world_size and each rank
    takes every world_size-th batch (the same role as DistributedSampler, at batch level).
    """

    def __init__(self, lengths, batch_size: int, shuffle: bool = True, seed: int = 0,
                 pool_batches: int = 50, rank: int = 0, world_size: int = 1):
        self.lengths, self.batch_size, self.shuffle, self.seed = list(lengths), batch_size, shuffle, seed
        self.pool, self.rank, self.world_size, self.epoch = batch_size * pool_batches, rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        n = len(self.lengths)
        if not self.shuffle:
            order = sorted(range(n), key=lambda i: self.lengths[i])
            batches = [order[i:i + self.batch_size] for i in range(0, n, self.batch_size)]
        else:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            perm = torch.randperm(n, generator=g).tolist()
            batches = []
            for p in range(0, n, self.pool):
                pool = sorted(perm[p:p + self.pool], key=lambda i: self.lengths[i])
                batches += [pool[i:i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        if self.world_size > 1 and batches:
            batches += batches[:(-len(batches)) % self.world_size]
            batches = batches[self.rank::self.world_size]
        return batches

    def __iter__(self):
        return iter(self.batches())

    def __len__(self):
        return len(self.batches())


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def autocast(device, bf16: bool):
    """bf16 autocast on CUDA when asked; a no-op context elsewhere."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")


# ---- frozen mode: pooled embeddings cached on disk ------------------------------------------

def embedding_code_digest() -> str:
    """Hash of the source code that turns a segment into a pooled embedding: cached features
    computed by other code are not reused."""
    import inspect

    parts = (masked_mean, zero_mean_unit_var, TextEmbedder, AudioEmbedder, SegmentDataset, Collator)
    return hashlib.sha256("".join(inspect.getsource(p) for p in parts).encode()).hexdigest()[:16]


def feature_key(kind: str, identity: dict, settings: dict) -> str:
    """Folder name under WORK/features/ for one frozen extractor: readable name + hash of the
    extractor identity, the input settings (crop length, normalisation, token limit) and the
    embedding code (embedding_code_digest)."""
    blob = json.dumps({"kind": kind, "identity": identity, "settings": settings,
                       "code": embedding_code_digest()}, sort_keys=True)
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(identity["name"]).name)
    return f"{kind}-{name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


@torch.no_grad()
def cached_embeddings(model: SERModel, dataset: SegmentDataset, collator: Collator, feature_dirs: dict,
                      cache_dir, batch_size: int, device, bf16: bool, num_workers: int = 0) -> dict:
    """Frozen mode: pooled embeddings of every segment of dataset, per extractor, from the cache
    WORK/features/<key>/<pipe>/<variant>/<dialog>.pt ({"source_sha256", "emb": {segment id: [H]}})
    or computed now (extractors in eval mode) for the segments that miss, then saved.

    feature_dirs: {"text": dir, "audio": dir} for the extractors the model has. The cache of a
    dialog is valid for the step-3 cache file it was computed from (its sha256). Returns
    {"text": [N, H_t] or None, "audio": [N, H_a] or None, "computed": n, "reused": n}.
    """
    out = {"text": None, "audio": None, "computed": 0, "reused": 0}
    dialogs = sorted({s["dialog"] for s in dataset.segments})
    for kind, folder in feature_dirs.items():
        embedder = model.text if kind == "text" else model.audio
        store = {}
        for d in dialogs:
            source = hashlib.sha256((Path(cache_dir) / f"{d}.pt").read_bytes()).hexdigest()
            path = Path(folder) / f"{d}.pt"
            old = load_pt(path, "feature cache") if path.is_file() else None
            store[d] = {"source_sha256": source, "emb": dict(old["emb"]) if old and old.get("source_sha256") == source else {}}
        missing = [i for i, s in enumerate(dataset.segments) if s["id"] not in store[s["dialog"]]["emb"]]
        out["reused"] += len(dataset) - len(missing)
        out["computed"] += len(missing)
        if missing:
            was_training = embedder.training
            embedder.eval()
            sampler = LengthBucketSampler([dataset.lengths[i] for i in missing], batch_size, shuffle=False)
            subset = torch.utils.data.Subset(dataset, missing)
            loader = torch.utils.data.DataLoader(subset, batch_sampler=sampler, collate_fn=collator, num_workers=num_workers)
            from tqdm import tqdm

            for batch in tqdm(loader, desc=f"frozen {kind} embeddings", leave=False):
                batch = to_device(batch, device)
                with autocast(device, bf16):
                    emb = (embedder(batch["input_ids"], batch["attention_mask"]) if kind == "text"
                           else embedder(batch["input_values"], batch["lengths"]))
                for i, e in zip(batch["index"].tolist(), emb.float().cpu()):
                    seg = dataset.segments[i]
                    store[seg["dialog"]]["emb"][seg["id"]] = e.clone()
            embedder.train(was_training)
            for d in sorted({dataset.segments[i]["dialog"] for i in missing}):
                atomic_torch_save(store[d], Path(folder) / f"{d}.pt")
        out[kind] = torch.stack([store[s["dialog"]]["emb"][s["id"]] for s in dataset.segments])
    return out


# ---- inference: load a run, predict a split (evaluate.py calls predict_split) ---------------

def load_run(run_dir, device=None, load_extractors: bool = True) -> tuple[SERModel, dict]:
    """(model with the best-validation weights, config) of a train.py run dir."""
    run_dir = Path(run_dir)
    config = read_json(run_dir / "config.json", "run config")
    if "folds" in config:
        raise PipelineError(f"{run_dir}: a cross-validation run; load one of its fold dirs {config['folds']}")
    for kind, ident in config["extractors"].items():
        # a frozen run keeps no extractor weights: they must still be the ones it was trained on
        if ident is not None and extractor_identity(ident["name"]) != ident:
            raise PipelineError(f"{run_dir / 'config.json'}: the {kind} extractor {ident['name']} has changed since "
                                f"this run was trained (config or weights hash differs)")
    model = build_model(config, load_extractors=load_extractors)
    state = load_pt(run_dir / "checkpoint_best.pt", "best checkpoint")
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    if unexpected or (missing and config["mode"] == "finetune") or \
            any(not k.startswith(("text.", "audio.")) for k in missing):
        raise PipelineError(f"{run_dir / 'checkpoint_best.pt'}: does not match the model of config.json "
                            f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.to(device or "cpu").eval()
    return model, config


def run_dataset(model: SERModel, dataset: SegmentDataset, collator: Collator, batch_size: int, device,
                bf16: bool, num_workers: int = 0) -> torch.Tensor:
    """Logits [N, 4] of every segment of dataset, in dataset order (model in eval mode)."""
    logits = torch.zeros(len(dataset), len(LABELS))
    sampler = LengthBucketSampler(dataset.lengths, batch_size, shuffle=False)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collator, num_workers=num_workers)
    model.eval()
    with torch.no_grad():
        for batch in loader:
            batch = to_device(batch, device)
            with autocast(device, bf16):
                logits[batch["index"].cpu()] = model(batch).float().cpu()
    return logits


def predict_split(run_dir, split: str = "test", device=None) -> dict:
    """predictions.json content (docs/FORMATS.md) for every segment of the split's dialogs,
    labelled or not: id, dialog, start, end, speaker, text, label (str or None), pred, probs.
    Frozen runs read (or fill) the same feature cache as training."""
    from transformers import AutoFeatureExtractor, AutoTokenizer

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, config = load_run(run_dir, device)
    dialogs = config["split"][split]
    cache_dir = Path(config["work"]) / config["pipe"] / config["variant"] / "cache"
    paths = [cache_dir / f"{d}.pt" for d in dialogs]
    do_norm = getattr(AutoFeatureExtractor.from_pretrained(config["audio_model"]), "do_normalize", True)
    dataset = SegmentDataset(paths, labelled_only=False, max_audio_seconds=config["max_audio_seconds"], do_normalize=do_norm)
    tokenizer = AutoTokenizer.from_pretrained(config["text_model"]) if model.modality != "audio" else None
    collator = Collator(tokenizer, config["max_text_tokens"])
    bf16 = bool(config.get("bf16")) and device.type == "cuda"
    if config["mode"] == "frozen":
        feats = cached_embeddings(model, dataset, collator, config["feature_dirs"], cache_dir, config["batch_size"], device, bf16)
        with torch.no_grad():
            z_t = feats["text"].to(device) if feats["text"] is not None else None
            z_a = feats["audio"].to(device) if feats["audio"] is not None else None
            logits = model.classify(z_t, z_a).float().cpu()
    else:
        logits = run_dataset(model, dataset, collator, config["batch_size"], device, bf16)
    probs = logits.softmax(-1)
    segments = []
    for seg, p in zip(dataset.segments, probs):
        segments.append({"id": seg["id"], "dialog": seg["dialog"], "start": seg["start"], "end": seg["end"],
                         "speaker": seg["speaker"], "text": seg["text"],
                         "label": LABELS[seg["label"]] if seg["label"] >= 0 else None,
                         "pred": LABELS[int(p.argmax())], "probs": {lab: float(v) for lab, v in zip(LABELS, p)}})
    return {"run": Path(run_dir).name, "split": split, "segments": segments}
