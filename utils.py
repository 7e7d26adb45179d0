"""The model of the paper (Section III-B, Fig. 1) and its data: what a student reads.

Read in the order data flows through Fig. 1: the two embedders (TextEmbedder -> z_t, AudioEmbedder
-> z_a, each mean-pooled), the Cross-Attention Fusion Block (CrossModalAttention -> a(t,a), a(a,t);
ForgetGate -> h(t,a), h(a,t)), the Fusion Layer and Linear Classifier (PositionalEncoding,
FusionClassifier), the whole model (SERModel, with the fusion ablations, built by build_model);
then the data side (SegmentDataset over the step-3 caches, Collator, LengthBucketSampler), the
frozen-feature cache, and how a trained run is loaded (load_run). Where the paper is silent the head
follows the authors' implementation (M4RC034/SER-Align): at D = 768 it has 19,300,868 parameters
(tests/test_model.py checks it). Each class names its part of the paper, its equations and shapes.

The plumbing the steps share (errors, files, formats, statistics, preflight) is in common/.

Paper: Wang, Lee, Chen, "Enhancing Speech Emotion Recognition Leveraging Aligning Timestamps
of ASR Transcripts and Speaker Diarization", IALP 2025 (arXiv 2507.19356).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common import cli, defaults, fileio, formats, modelhub


@dataclass
class ModelConfig:
    """Every hyperparameter of the extractors and the head (build_model, SERModel, Collator,
    SegmentDataset), with the authors' values (M4RC034/SER-Align) as defaults. train.py's flags take
    their defaults from here; a run's config.json holds them as its "model" section, read back with
    from_run_config (an unknown key is an error)."""

    text_model: str = defaults.TEXT_MODEL  # text extractor: hub name or local dir (AutoModel/AutoTokenizer)
    audio_model: str = defaults.AUDIO_MODEL  # audio extractor: hub name or local dir (AutoFeatureExtractor)
    modality: str = "fusion"  # fusion (both extractors), text or audio only (MODALITIES)
    fusion: str = "gated-xattn"  # how the two embeddings are fused (FUSIONS): the paper's
    dropout: float = 0.2  # dropout of cross-attention, fusion layer and MLP
    heads: int = 8  # attention heads of cross-attention and fusion layer
    fusion_layers: int = 2  # Transformer encoder layers of the fusion layer
    ffn_dim: int = 2048  # feed-forward size of the fusion layer
    audio_padding: str = "exact"  # exact (ours) or authors: how a batch's padding reaches z_a
    max_text_tokens: int = 512  # transcript truncated to this many tokens (RoBERTa's limit)
    max_audio_seconds: float = 0.0  # segments centre-cropped to this length; 0 = no crop (authors)

    # keys every run config has had since the first; the others fall back to their defaults (older runs)
    REQUIRED = ("text_model", "audio_model", "modality", "dropout", "heads")

    @classmethod
    def from_dict(cls, section: dict, where: str = "model config") -> ModelConfig:
        """A model section {field: value}: an unknown key is an error naming it; a missing one takes its default."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(section) - set(names))
        if unknown:
            raise cli.PipelineError(f"{where}: unknown model setting(s) {unknown}; known: {names}")
        return cls(**section)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_run_config(cls, config: dict, where: str = "run config") -> ModelConfig:
        """The "model" section of a run config (train.py's config.json); runs written before it existed
        held the same settings as flat keys, which are read the same way."""
        if "model" in config:
            if not isinstance(config["model"], dict):
                raise cli.PipelineError(f'{where}: "model" must be an object of model settings')
            return cls.from_dict(config["model"], where)
        missing = [k for k in cls.REQUIRED if k not in config]
        if missing:
            raise cli.PipelineError(f"{where}: no {missing} (not a run config written by train.py)")
        return cls.from_dict({f.name: config[f.name] for f in fields(cls) if f.name in config}, where)

    def to_dict(self) -> dict:
        return asdict(self)


MODALITIES = ("fusion", "text", "audio")


# ---- Fig. 1, bottom to top: the embedders (z_t, z_a), the fusion block, the fusion layer, the classifier ----


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of x [B, T, H] counting only positions where mask [B, T] is true -> [B, H]."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class TextEmbedder(nn.Module):
    """Text branch of Fig. 1: RoBERTa (or another encoder) over the segment transcript, mean-pooled over tokens.

    input_ids, attention_mask [B, L] -> z_t [B, H_t]  (H_t = config.hidden_size, 768 for roberta-base).
    Any encoder AutoModel works (RoBERTa, BERT, DeBERTa v1/v2/v3, ...): only input_ids and the
    attention mask are passed, so models with token type ids (BERT) use their all-zero default,
    which is what their tokenizer gives a single sentence. Padding tokens are excluded from the
    mean by the attention mask and the models mask them in attention (their tokenizers pad on the
    right, so absolute positions are unchanged), so a padded sample gives the same z_t as alone
    (tested for RoBERTa, BERT, DeBERTa v1 and v2: tests/test_encoders.py). The pooler head is not built
    where the model class offers that (add_pooling_layer=False: BERT, RoBERTa): it is unused here (and
    unused parameters would upset DistributedDataParallel); classes without that argument (DeBERTa) have
    no pooler.
    """

    def __init__(self, name_or_dir: str, from_config: bool = False):
        super().__init__()
        import inspect

        from transformers import AutoConfig, AutoModel
        from transformers.models.auto.modeling_auto import MODEL_MAPPING

        config = AutoConfig.from_pretrained(name_or_dir)
        if getattr(config, "is_encoder_decoder", False):
            raise cli.PipelineError(
                f"{name_or_dir}: {config.model_type} is an encoder-decoder model; "
                "--text-model needs an encoder (RoBERTa, BERT, DeBERTa, ...)"
            )
        kwargs = {}
        if type(config) in MODEL_MAPPING:
            if "add_pooling_layer" in inspect.signature(MODEL_MAPPING[type(config)].__init__).parameters:
                kwargs["add_pooling_layer"] = False
        self.model = (
            AutoModel.from_config(config, **kwargs) if from_config else AutoModel.from_pretrained(name_or_dir, **kwargs)
        )
        self.hidden_size = self.model.config.hidden_size

    def gradient_checkpointing_enable(self) -> None:
        """Recompute activations in backward (train.py --gradient-checkpointing), non-reentrant: see AudioEmbedder's."""
        self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return masked_mean(out, attention_mask.bool())


class AudioEmbedder(nn.Module):
    """Audio branch of Fig. 1: wav2vec 2.0 (or HuBERT, WavLM, data2vec-audio) over the segment
    waveform, mean-pooled over frames.

    input_values [B, S] (normalised, zero-padded), lengths [B] (valid samples) -> z_a [B, H_a].

    The four families share one sequence, Wav2Vec2Model.forward's, which forward() below follows:
    CNN feature_extractor [B, S] -> [B, C, T] -> feature_projection -> _mask_hidden_states
    (SpecAugment while training, as configured) -> Transformer encoder -> mean over valid frames.

    Padding must not change a sample's embedding. The valid samples are carried to frame
    resolution with the model's own _get_feat_extract_output_lengths (the same conv arithmetic in
    every family); the encoder gets that frame mask (it zeroes padded frames before its positional
    convolution and masks them in attention) and the mean pool counts only valid frames. Three
    places are not padding-exact in the Hugging Face code and are made so here:

    1. The CNN of base-size models (wav2vec2-base, hubert-base, wavlm-base: feat_extract_norm
       "group") GroupNorm-normalises its first conv layer over the whole time axis, so zeros
       appended to a sample shift the statistics of every frame. That GroupNorm (one group per
       channel, first layer only) is computed here over each sample's valid frames only; the rest
       of the CNN runs batched (a frame past a sample's end never reaches its valid frames). CNNs
       that normalise each frame alone (LayerNorm in every conv layer: the large models and all of
       data2vec-audio, whose config has no feat_extract_norm) run batched as they are; any other
       normalisation falls back to running the CNN sample by sample. Decided from the modules.
    2. The positional convolution(s) must see zeros past a sample's end, as the conv's own zero
       padding gives a sample alone. HF zeroes padded frames once, before the positional
       embedding; data2vec-audio's is a stack of 5 convs (each + LayerNorm + GELU), so from the
       second conv on the padded frames are no longer zero and leak into a sample's last frames
       (measured on a tiny random model: 1.09 max difference); HuBERT with conv_pos_batch_norm
       applies BatchNorm before its conv, which turns zeros into non-zeros. A forward pre-hook on
       every Conv1d of encoder.pos_conv_embed zeroes the padded frames of its input.
    3. feature_projection returns (hidden, normed features) in wav2vec2 / WavLM / data2vec-audio
       and the hidden states alone in HuBERT: both are accepted.

    SpecAugment (training only, as configured by mask_time_prob / mask_time_length) is skipped for a
    batch whose padded length is at most one time mask: Hugging Face raises on it, and length
    bucketing puts the shortest segments (single words of ASR output) in one batch.

    WavLM's gated relative position bias depends on frame distance and each frame's own state,
    and its attention takes the frame mask as key padding mask: exact as it is. Adapters
    (config.add_adapter, a strided conv stack after the encoder) are refused. HuBERT has no
    freeze_feature_encoder(): use this class's freeze_feature_encoder(), which works for all four.
    """

    FAMILIES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio")  # config.model_type of the supported models

    def __init__(self, name_or_dir: str, from_config: bool = False):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        cfg = AutoConfig.from_pretrained(name_or_dir)
        if cfg.model_type not in self.FAMILIES:
            raise cli.PipelineError(
                f"{name_or_dir}: audio model type {cfg.model_type!r} is not supported "
                f"(padding-exact pooling is implemented for {', '.join(self.FAMILIES)})"
            )
        if getattr(cfg, "add_adapter", False):
            raise cli.PipelineError(
                f"{name_or_dir}: {cfg.model_type} models with an adapter (add_adapter) are not supported"
            )
        self.model = AutoModel.from_config(cfg) if from_config else AutoModel.from_pretrained(name_or_dir)
        self.hidden_size = cfg.hidden_size
        self._frame_mask = None  # [B, T] valid frames, set by forward while the encoder runs
        for m in self.model.encoder.pos_conv_embed.modules():
            if isinstance(m, nn.Conv1d):
                m.register_forward_pre_hook(self._zero_padded_frames)

    def _zero_padded_frames(self, conv: nn.Module, args: tuple):
        """Forward pre-hook of the positional Conv1d(s): input [B, C, T] -> padded frames set to 0."""
        if self._frame_mask is None:
            return None
        x = args[0]
        return (x * self._frame_mask[:, None, :].to(x.dtype),) + tuple(args[1:])

    def freeze_feature_encoder(self) -> None:
        """Stop training the CNN feature encoder (train.py --freeze-feature-encoder), any family."""
        self.model.feature_extractor._freeze_parameters()

    def gradient_checkpointing_enable(self) -> None:
        """Recompute activations in backward (train.py --gradient-checkpointing), any family.

        Non-reentrant checkpointing, not the Hugging Face default (reentrant): with reentrant
        checkpointing the backward of a tiny WavLM exhausted 23 GB of memory (transformers 4.57.6:
        the relative position bias that WavLM's first layer returns is a keyword input of every later
        layer), and reentrant checkpointing drops the gradients of keyword inputs anyway.
        """
        self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.model._get_feat_extract_output_lengths(lengths).long()

    def cnn_norm(self) -> str:
        """How the CNN normalises: "per-frame" (no norm or LayerNorm over channels, in every conv
        layer), "group-first" (GroupNorm with one group per channel in the first layer only, none
        after: the base models' "group" layout) or "other"."""
        norms = [getattr(layer, "layer_norm", None) for layer in self.model.feature_extractor.conv_layers]
        if all(n is None or isinstance(n, nn.LayerNorm) for n in norms):
            return "per-frame"
        first = norms[0]
        if (
            isinstance(first, nn.GroupNorm)
            and first.num_groups == first.num_channels
            and all(n is None for n in norms[1:])
        ):
            return "group-first"
        return "other"

    def _first_layer_masked(self, input_values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The first conv layer with its GroupNorm statistics over each sample's valid frames: [B, S] -> [B, C, T0]."""
        first = self.model.feature_extractor.conv_layers[0]
        norm = first.layer_norm
        h = first.conv(input_values[:, None]).float()  # [B, C, T0]; statistics in fp32 under autocast
        n0 = (lengths.to(h.device) - first.conv.kernel_size[0]) // first.conv.stride[0] + 1
        valid = (torch.arange(h.shape[-1], device=h.device)[None, :] < n0[:, None]).to(h.dtype)[:, None, :]
        count = valid.sum(-1, keepdim=True)
        mean = (h * valid).sum(-1, keepdim=True) / count
        var = (((h - mean) ** 2) * valid).sum(-1, keepdim=True) / count
        h = (h - mean) * torch.rsqrt(var + norm.eps) * norm.weight[:, None] + norm.bias[:, None]
        return first.activation(h)

    def cnn_features(self, input_values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The CNN feature encoder, exact under padding: [B, S] -> [B, C, T]."""
        cnn = self.model.feature_extractor
        kind = self.cnn_norm()
        if kind == "per-frame":  # a valid frame's receptive field lies inside the valid samples
            return cnn(input_values)
        if kind == "group-first":
            first = cnn.conv_layers[0]
            if self.training and getattr(first, "gradient_checkpointing", False):  # as HF checkpoints each conv layer
                from torch.utils.checkpoint import checkpoint

                h = checkpoint(self._first_layer_masked, input_values, lengths, use_reentrant=False)
            else:
                h = self._first_layer_masked(input_values, lengths)
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
            feats[rows, :, : f.shape[2]] = f
        return feats

    def forward(
        self, input_values: torch.Tensor | None, lengths: torch.Tensor, cnn: torch.Tensor | None = None
    ) -> torch.Tensor:
        """input_values [B, S], lengths [B] -> z_a [B, H]. cnn [B, C, T]: this CNN's features of the
        same samples, computed earlier (cnn_features) while the CNN is frozen; input_values is then unused."""
        n_frames = self.frame_lengths(lengths)
        feats = (self.cnn_features(input_values, lengths) if cnn is None else cnn).transpose(1, 2)  # [B, T, C]
        mask = torch.arange(feats.shape[1], device=feats.device)[None, :] < n_frames.to(feats.device)[:, None]
        hidden = self.model.feature_projection(feats)
        if isinstance(hidden, tuple):  # wav2vec2, WavLM, data2vec-audio: (hidden, normed CNN features)
            hidden = hidden[0]
        if hidden.shape[1] > getattr(self.model.config, "mask_time_length", 0):
            hidden = self.model._mask_hidden_states(hidden, attention_mask=mask)
        # else: a batch of clips shorter than one SpecAugment time mask (wav2vec2-base: 10 frames, 0.2 s;
        # length bucketing puts the shortest segments together) gets no masking; HF would raise.
        self._frame_mask = mask
        try:
            hidden = self.model.encoder(hidden, attention_mask=mask).last_hidden_state
        finally:
            self._frame_mask = None
        return masked_mean(hidden, mask)


class CrossModalAttention(nn.Module):
    """The two cross-attention arrows of Fig. 1's Cross-Attention Fusion Block (Section III-B).

    z_t, z_a [B, 1, D] -> a(t,a), a(a,t) [B, 1, D], each direction with a residual and a LayerNorm:

      a(t,a) = LN_t(MHA_ta(query=z_t, key=z_a, value=z_a) + z_t)       text queries audio
      a(a,t) = LN_a(MHA_at(query=z_a, key=z_t, value=z_t) + z_a)       audio queries text

    The paper describes the block in words; the residual + LayerNorm and the attention dropout p
    follow the authors' implementation (M4RC034/SER-Align, utils.py). Each modality is ONE pooled
    token, so the softmax runs over a single key (its weight is 1) and MHA reduces to its value and
    output projections of the other modality: a learned linear exchange between the embeddings.
    """

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.attn_ta = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.attn_at = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_ta = nn.LayerNorm(dim)
        self.norm_at = nn.LayerNorm(dim)

    def forward(self, z_t: torch.Tensor, z_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a_ta = self.norm_ta(self.attn_ta(z_t, z_a, z_a, need_weights=False)[0] + z_t)
        a_at = self.norm_at(self.attn_at(z_a, z_t, z_t, need_weights=False)[0] + z_a)
        return a_ta, a_at


class ForgetGate(nn.Module):
    """One forget gate of Fig. 1 (after Jiang & Ji 2022, as implemented by the authors).

    z (the modality's own embedding) and a (its attended embedding), both [B, 1, D] -> h [B, 1, D]:

      g = sigmoid(W_g [z ; a] + b_g)            gate, element-wise in (0, 1)      W_g: 2D -> D
      h = ReLU(z + g * (W_v a + b_v))           the gate admits the projected     W_v: D -> D
                                                attended information into z

    h(t,a) = ForgetGate_t(z_t, a(t,a)) and h(a,t) = ForgetGate_a(z_a, a(a,t)). h >= 0 (ReLU).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.gate = nn.Linear(2 * dim, dim)  # W_g, b_g
        self.value = nn.Linear(dim, dim)  # W_v, b_v

    def forward(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate(torch.cat([z, a], dim=-1)))
        return F.relu(z + g * self.value(a))


class PositionalEncoding(nn.Module):
    """Sinusoidal positional encoding (Vaswani et al. 2017) added to a token sequence, then dropout.

    x [B, N, D] -> x + PE[:N] [B, N, D]; PE[n, 2i] = sin(n / 10000^(2i/D)), PE[n, 2i+1] = cos(...).
    In the fusion layer N = 2, so this only tells the encoder which token is h(t,a) and which h(a,t).
    """

    def __init__(self, dim: int, dropout: float, max_len: int = 64):
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float32)[:, None]
        freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
        pe = torch.zeros(max_len, dim)
        pe[:, 0::2] = torch.sin(position * freq)
        pe[:, 1::2] = torch.cos(position * freq[: dim // 2])
        self.register_buffer("pe", pe, persistent=False)  # a constant: not part of checkpoints
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(x + self.pe[: x.shape[1]].to(x.dtype))


class FusionClassifier(nn.Module):
    """Fusion Layer + Linear Classifier of Fig. 1, as the authors implement them.

    tokens [B, N, D] -> logits [B, 4]:
      PositionalEncoding (dropout p) -> TransformerEncoder (layers x [MHA(heads) + FFN(ffn_dim),
      ReLU, dropout p, post-norm]) -> mean over the N tokens [B, D] -> Linear(D -> 4).
    The fused model has N = 2 ([h(t,a); h(a,t)]); the single-modality baselines run the same head on
    their one token (N = 1). Softmax is applied at inference (evaluate.py); training uses
    cross-entropy on the logits. No dropout before the classifier (as the authors).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dropout: float,
        layers: int = ModelConfig.fusion_layers,
        ffn_dim: int = ModelConfig.ffn_dim,
        n_classes: int = len(formats.LABELS),
    ):
        super().__init__()
        self.position = PositionalEncoding(dim, dropout)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=ffn_dim, dropout=dropout, activation="relu", batch_first=True, norm_first=False
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        self.classifier = nn.Linear(dim, n_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(self.position(tokens)).mean(dim=1))


class ConcatMLP(nn.Module):
    """Fusion ablation "concat" (not in the paper): an MLP on the concatenated embeddings.

    z_t, z_a [B, D] -> Linear(2D -> D), ReLU, dropout p, Linear(D -> 4) -> logits [B, 4].
    """

    def __init__(self, dim: int, dropout: float, n_classes: int = len(formats.LABELS)):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, n_classes))

    def forward(self, z_t: torch.Tensor, z_a: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([z_t, z_a], dim=-1))


# Fusion of the two pooled embeddings (train.py --fusion). The paper's model is "gated-xattn"; the
# others answer the paper's future-work question with everything else (extractors, data, training)
# equal: "xattn" drops the forget gates (h = a), "concat" replaces the whole fusion block and
# fusion layer by an MLP, "late" averages the logits of the two single-modality heads.
FUSIONS = ("gated-xattn", "xattn", "concat", "late")


class SERModel(nn.Module):
    """The whole classifier of Fig. 1 for one modality setting and fusion variant.

    modality "fusion": z_t = TextEmbedder [B, D], z_a = AudioEmbedder [B, H_a] (projected to the
    text size D by a Linear if H_a != D, else identity), then by `fusion`:
      gated-xattn  CrossModalAttention -> ForgetGate x 2 -> [h(t,a); h(a,t)] [B, 2, D] -> FusionClassifier
      xattn        CrossModalAttention -> [a(t,a); a(a,t)] [B, 2, D] -> FusionClassifier
      concat       ConcatMLP([z_t ; z_a])
      late         (FusionClassifier_t(z_t) + FusionClassifier_a(z_a)) / 2, each on one token
    modality "text" / "audio": the one embedding as a single token [B, 1, D] -> FusionClassifier.
    Sizes come from the extractors' configs (D = the text model's hidden size, as the authors).
    load_extractors=False builds only the head (for training on cached frozen embeddings); "config" builds the
    extractors from their configs alone, random weights for a state dict to fill (load_model_dir).
    audio_padding "exact" (ours) makes z_a independent of the padding in the batch (AudioEmbedder);
    "authors" runs the audio model on the padded batch (each row normalised over its padded length,
    normalisation_places) without an attention mask and averages every frame, padding included, as
    the authors' code does for wav2vec2-base.
    """

    def __init__(
        self,
        text_model: str | None,
        audio_model: str | None,
        modality: str = ModelConfig.modality,
        dropout: float = ModelConfig.dropout,
        heads: int = ModelConfig.heads,
        fusion: str = ModelConfig.fusion,
        layers: int = ModelConfig.fusion_layers,
        ffn_dim: int = ModelConfig.ffn_dim,
        audio_padding: str = ModelConfig.audio_padding,
        load_extractors: bool | str = True,
        n_classes: int = len(formats.LABELS),
    ):
        super().__init__()
        if modality not in MODALITIES:
            raise cli.PipelineError(f"modality must be one of {MODALITIES}, got {modality!r}")
        if fusion not in FUSIONS:
            raise cli.PipelineError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if audio_padding not in ("exact", "authors"):
            raise cli.PipelineError(f"audio_padding must be 'exact' or 'authors', got {audio_padding!r}")
        from transformers import AutoConfig

        self.modality, self.fusion, self.audio_padding, self.n_classes = modality, fusion, audio_padding, n_classes
        use_text, use_audio = modality in ("fusion", "text"), modality in ("fusion", "audio")
        from_config = load_extractors == "config"  # built from their configs; load_model_dir loads the weights
        self.text = TextEmbedder(text_model, from_config) if use_text and load_extractors else None
        self.audio = AudioEmbedder(audio_model, from_config) if use_audio and load_extractors else None
        h_t = AutoConfig.from_pretrained(text_model).hidden_size if use_text else None
        h_a = AutoConfig.from_pretrained(audio_model).hidden_size if use_audio else None
        dim = h_t if use_text else h_a
        if dim % heads:
            raise cli.PipelineError(f"hidden size {dim} is not divisible by --heads {heads}")
        self.dim = dim
        self.proj_a = nn.Linear(h_a, dim) if use_audio and h_a != dim else nn.Identity()
        head = dict(dim=dim, heads=heads, dropout=dropout, layers=layers, ffn_dim=ffn_dim, n_classes=n_classes)
        self.cross = self.gate_t = self.gate_a = self.head = self.head_t = self.head_a = self.mlp = None
        if modality != "fusion":
            self.head = FusionClassifier(**head)
        elif fusion in ("gated-xattn", "xattn"):
            self.cross = CrossModalAttention(dim, heads, dropout)
            if fusion == "gated-xattn":
                self.gate_t, self.gate_a = ForgetGate(dim), ForgetGate(dim)
            self.head = FusionClassifier(**head)
        elif fusion == "concat":
            self.mlp = ConcatMLP(dim, dropout, n_classes)
        else:  # late
            self.head_t, self.head_a = FusionClassifier(**head), FusionClassifier(**head)

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
        z_a = None
        if self.audio is not None and self.audio_padding == "exact":
            z_a = self.audio(batch.get("input_values"), batch["lengths"], batch.get("cnn"))
        elif self.audio is not None:  # the authors': no attention mask, every frame of the padded batch
            z_a = self.audio.model(batch["input_values"]).last_hidden_state.mean(dim=1)
        return z_t, z_a

    def classify(self, z_t, z_a) -> torch.Tensor:
        """Pooled embeddings [B, H] -> logits [B, 4] (everything after the extractors in Fig. 1)."""
        if z_a is not None:
            z_a = self.proj_a(z_a)
        if self.modality != "fusion":
            return self.head((z_t if self.modality == "text" else z_a).unsqueeze(1))
        if self.fusion == "concat":
            return self.mlp(z_t, z_a)
        if self.fusion == "late":
            return (self.head_t(z_t.unsqueeze(1)) + self.head_a(z_a.unsqueeze(1))) / 2
        t, a = z_t.unsqueeze(1), z_a.unsqueeze(1)  # [B, 1, D]: one token per modality
        a_ta, a_at = self.cross(t, a)
        if self.fusion == "gated-xattn":
            a_ta, a_at = self.gate_t(t, a_ta), self.gate_a(a, a_at)  # h(t,a), h(a,t)
        return self.head(torch.cat([a_ta, a_at], dim=1))  # [B, 2, D] -> [B, 4]

    def forward(self, batch: dict) -> torch.Tensor:
        return self.classify(*self.embed(batch))


def build_model(config: ModelConfig | dict, load_extractors: bool | str = True, labels=None) -> SERModel:
    """SERModel from a ModelConfig, or from a run config (its "model" section, ModelConfig.from_run_config). Its
    classifier has one output per class of labels: given, else the run config's "labels" (labels.json's classes,
    train.py), else the default set's."""
    mc = config if isinstance(config, ModelConfig) else ModelConfig.from_run_config(config)
    if labels is None:
        labels = formats.labels_of(config) if isinstance(config, dict) else formats.LABELS
    return SERModel(
        mc.text_model,
        mc.audio_model,
        mc.modality,
        mc.dropout,
        mc.heads,
        fusion=mc.fusion,
        layers=mc.fusion_layers,
        ffn_dim=mc.ffn_dim,
        audio_padding=mc.audio_padding,
        load_extractors=load_extractors,
        n_classes=len(labels),
    )


# ---- the data: step-3 segment caches as batches ----


def zero_mean_unit_var(x: torch.Tensor) -> torch.Tensor:
    """Per-utterance normalisation, as Wav2Vec2FeatureExtractor does when do_normalize is set."""
    return (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)


def normalisation_places(audio_padding: str, do_normalize: bool) -> tuple[bool, bool]:
    """Where zero-mean unit-variance normalisation happens (when the feature extractor's config says
    do_normalize): (each segment over its own samples, in SegmentDataset; each row of the padded
    batch over its padded length, in Collator). "exact" normalises each segment alone, then pads
    with zeros. "authors" pads first and normalises each row as Wav2Vec2FeatureExtractor does
    without an attention mask (the authors' Wav2Vec2Processor with padding="longest"): the zeros
    enter the row's mean and variance, and the padding becomes non-zero."""
    if audio_padding not in ("exact", "authors"):
        raise cli.PipelineError(f"audio_padding must be 'exact' or 'authors', got {audio_padding!r}")
    per_row = bool(do_normalize) and audio_padding == "authors"
    return bool(do_normalize) and not per_row, per_row


class SegmentDataset(torch.utils.data.Dataset):
    """All segments of the given step-3 caches (WORK/<pipe>/<variant>/cache/<dialog>.pt).

    labelled_only=True keeps the segments with a label (training, validation; labels: labels.json's classes, which the
    cache's label indices index); False
    keeps every segment (prediction: TEER scores all system speech). Audio is prepared once, here:
    segments longer than max_audio_seconds are centre-cropped (the middle of a long turn; 0 = no
    crop), audio is normalised zero-mean unit-variance if the feature extractor's config says
    do_normalize, and audio shorter than 25 ms is zero-padded to one wav2vec2 frame. Counts of
    what was kept, cropped and padded are in .counts.
    """

    def __init__(
        self,
        cache_paths,
        labelled_only: bool,
        max_audio_seconds: float = ModelConfig.max_audio_seconds,
        do_normalize: bool = True,
        sample_rate: int = formats.SAMPLE_RATE,
        labels=formats.LABELS,
    ):
        self.segments = []
        self.counts = {
            "dialogs": 0,
            "segments": 0,
            "unlabelled_skipped": 0,
            "cropped": 0,
            "padded_short": 0,
            "audio_shorter_than_times": 0,
        }
        max_samples = int(max_audio_seconds * sample_rate) if max_audio_seconds else 0
        seen = {}  # segment id -> the cache holding it
        self.sha256 = {}  # dialog -> the verified sha256 of its cache file (what was read)
        for path in cache_paths:
            cache, self.sha256[Path(path).stem] = fileio.load_checked_pt(
                path, "segment cache", formats.step3_rerun(path)
            )
            formats.check_cache(cache, path, sample_rate)
            self.counts["dialogs"] += 1
            for n, seg in enumerate(cache["segments"]):
                label = formats.check_cache_segment(seg, f"{path}: segment {n}", sample_rate, labels)
                if seg["id"] in seen:
                    raise cli.PipelineError(
                        f"{path}: segment {n}: id {seg['id']!r} is also a segment of {seen[seg['id']]}; "
                        "expected unique segment ids"
                    )
                seen[seg["id"]] = path
                if labelled_only and label < 0:
                    self.counts["unlabelled_skipped"] += 1
                    continue
                audio = seg["audio"].to(torch.float32)
                if audio.numel() < (seg["end"] - seg["start"] - formats.TIME_TOLERANCE_S) * sample_rate - 2:
                    self.counts["audio_shorter_than_times"] += 1  # e.g. a cache made before step 3 checked times
                if max_samples and audio.numel() > max_samples:
                    off = (audio.numel() - max_samples) // 2
                    audio = audio[off : off + max_samples]
                    self.counts["cropped"] += 1
                if do_normalize and audio.numel() > 1:
                    audio = zero_mean_unit_var(audio)
                if audio.numel() < formats.MIN_AUDIO_SAMPLES:
                    audio = F.pad(audio, (0, formats.MIN_AUDIO_SAMPLES - audio.numel()))
                    self.counts["padded_short"] += 1
                self.segments.append(
                    {
                        "id": seg["id"],
                        "dialog": cache["dialog"],
                        "start": float(seg["start"]),
                        "end": float(seg["end"]),
                        "speaker": seg["speaker"],
                        "text": seg["text"],
                        "label": label,
                        "audio": audio.contiguous(),
                    }
                )
        self.counts["segments"] = len(self.segments)
        self.lengths = [s["audio"].numel() for s in self.segments]

    def __len__(self):
        return len(self.segments)

    def __getitem__(self, i):
        return {"index": i, **self.segments[i]}


class Collator:
    """List of dataset items -> one batch: audio zero-padded [B, S] with lengths [B], text
    tokenised with the extractor's own tokenizer (padded, truncated to max_tokens), labels [B].
    normalize_rows (normalisation_places, --audio-padding authors): each padded row is then
    normalised zero-mean unit-variance over all S samples, as the authors' processor does; the
    dataset must then hold un-normalised audio (its zero-padding of segments under 25 ms only
    matters for a batch with no longer segment, which wav2vec2's CNN could not take at all)."""

    def __init__(self, tokenizer, max_tokens: int = ModelConfig.max_text_tokens, normalize_rows: bool = False):
        self.tokenizer = tokenizer
        self.max_tokens = min(max_tokens, getattr(tokenizer, "model_max_length", max_tokens))
        self.normalize_rows = normalize_rows

    def __call__(self, items: list[dict]) -> dict:
        lengths = torch.tensor([it["audio"].numel() for it in items])
        if "cnn" in items[0]:  # CNN features cached while the CNN is frozen (cache_cnn_features): no audio needed
            cnn = torch.zeros(len(items), items[0]["cnn"].shape[0], max(it["cnn"].shape[1] for it in items))
            for i, it in enumerate(items):
                cnn[i, :, : it["cnn"].shape[1]] = it["cnn"]
            batch = {"cnn": cnn}
        else:
            audio = torch.zeros(len(items), int(lengths.max()))
            for i, it in enumerate(items):
                audio[i, : lengths[i]] = it["audio"]
            if self.normalize_rows:
                audio = torch.stack([zero_mean_unit_var(row) for row in audio])
            batch = {"input_values": audio}
        batch |= {
            "lengths": lengths,
            "labels": torch.tensor([it["label"] for it in items]),
            "index": torch.tensor([it["index"] for it in items]),
        }
        if self.tokenizer is not None:
            tok = self.tokenizer(
                [it["text"] for it in items],
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            )
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

    def __init__(
        self,
        lengths,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        pool_batches: int = 50,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.lengths, self.batch_size, self.shuffle, self.seed = list(lengths), batch_size, shuffle, seed
        self.pool, self.rank, self.world_size, self.epoch = batch_size * pool_batches, rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        n = len(self.lengths)
        if not self.shuffle:
            order = sorted(range(n), key=lambda i: self.lengths[i])
            batches = [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
        else:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            perm = torch.randperm(n, generator=g).tolist()
            batches = []
            for p in range(0, n, self.pool):
                pool = sorted(perm[p : p + self.pool], key=lambda i: self.lengths[i])
                batches += [pool[i : i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        if self.world_size > 1 and batches:
            batches += batches[: (-len(batches)) % self.world_size]
            batches = batches[self.rank :: self.world_size]
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


@torch.no_grad()
# ---- frozen mode: features computed once and cached ----


def cache_cnn_features(audio: AudioEmbedder, dataset: SegmentDataset, batch_size: int, device) -> int:
    """With the CNN feature encoder frozen (train.py --freeze-feature-encoder), compute each segment's
    CNN features once, [C, T_i] on the CPU in dataset.segments[i]["cnn"]; the Collator then batches
    those instead of the audio and every epoch (and every seed sharing the dataset) skips the CNN.
    Exact: the CNN has no dropout and, computed by cnn_features, does not depend on the batch.
    Returns how many segments were computed (those already cached are skipped)."""
    todo = [i for i, s in enumerate(dataset.segments) if "cnn" not in s]
    for b in LengthBucketSampler([dataset.lengths[i] for i in todo], batch_size, shuffle=False).batches():
        rows = [todo[j] for j in b]
        lengths = torch.tensor([dataset.lengths[i] for i in rows])
        x = torch.zeros(len(rows), int(lengths.max()))
        for r, i in enumerate(rows):
            x[r, : lengths[r]] = dataset.segments[i]["audio"]
        feats = audio.cnn_features(x.to(device), lengths.to(device)).float().cpu()
        for r, (i, n) in enumerate(zip(rows, audio.frame_lengths(lengths).tolist())):
            dataset.segments[i]["cnn"] = feats[r, :, :n].clone()
    return len(todo)


@functools.cache
def embedding_code_digest() -> str:
    """Hash of the source code that turns a segment into a pooled embedding: cached features
    computed by other code are not reused. (Once per process: inspect parses utils.py for it.)"""
    import inspect

    parts = (masked_mean, zero_mean_unit_var, TextEmbedder, AudioEmbedder, SegmentDataset, Collator)
    return hashlib.sha256("".join(inspect.getsource(p) for p in parts).encode()).hexdigest()[:16]


def feature_key(kind: str, identity: dict, settings: dict) -> str:
    """Folder name under WORK/features/ for one frozen extractor: readable name + hash of the
    extractor identity, the input settings (crop length, normalisation, token limit) and the
    embedding code (embedding_code_digest)."""
    blob = json.dumps(
        {"kind": kind, "identity": identity, "settings": settings, "code": embedding_code_digest()}, sort_keys=True
    )
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(identity["name"]).name)
    return f"{kind}-{name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


@torch.no_grad()
def cached_embeddings(
    model: SERModel,
    dataset: SegmentDataset,
    collator: Collator,
    feature_dirs: dict,
    cache_dir,
    batch_size: int,
    device,
    bf16: bool,
    num_workers: int = 0,
) -> dict:
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
            source_path = Path(cache_dir) / f"{d}.pt"
            source = (
                getattr(dataset, "sha256", {}).get(d)  # verified when the dataset read it
                or fileio.verified_sha256(source_path, "segment cache", formats.step3_rerun(source_path))
            )
            path = Path(folder) / f"{d}.pt"
            # Without its sidecar a feature cache is unfinished (killed mid-write) or older: computed anew.
            old = (
                fileio.load_checked_pt(
                    path,
                    "feature cache",
                    f"delete it (and {fileio.checksum_path(path).name}); step 4 then recomputes it",
                )[0]
                if path.is_file() and fileio.checksum_path(path).is_file()
                else None
            )
            store[d] = {
                "source_sha256": source,
                "emb": dict(old["emb"]) if old and old.get("source_sha256") == source else {},
            }
        missing = [i for i, s in enumerate(dataset.segments) if s["id"] not in store[s["dialog"]]["emb"]]
        out["reused"] += len(dataset) - len(missing)
        out["computed"] += len(missing)
        if missing:
            was_training = embedder.training
            embedder.eval()
            sampler = LengthBucketSampler([dataset.lengths[i] for i in missing], batch_size, shuffle=False)
            subset = torch.utils.data.Subset(dataset, missing)
            loader = torch.utils.data.DataLoader(
                subset, batch_sampler=sampler, collate_fn=collator, num_workers=num_workers
            )
            # the loader draws from the global RNG: restored below, so that training (dropout, order) is the
            # same whether the embeddings are computed now or read from the cache
            rng_state = torch.get_rng_state()
            from tqdm import tqdm

            for batch in tqdm(loader, desc=f"frozen {kind} embeddings", leave=False):
                batch = to_device(batch, device)
                with autocast(device, bf16):
                    emb = (
                        embedder(batch["input_ids"], batch["attention_mask"])
                        if kind == "text"
                        else embedder(batch["input_values"], batch["lengths"])
                    )
                for i, e in zip(batch["index"].tolist(), emb.float().cpu()):
                    seg = dataset.segments[i]
                    store[seg["dialog"]]["emb"][seg["id"]] = e.clone()
            embedder.train(was_training)
            torch.set_rng_state(rng_state)
            for d in sorted({dataset.segments[i]["dialog"] for i in missing}):
                fileio.atomic_torch_save(store[d], Path(folder) / f"{d}.pt")
        out[kind] = torch.stack([store[s["dialog"]]["emb"][s["id"]] for s in dataset.segments])
    return out


# ---- a trained run: loaded and applied ----


def load_run(run_dir, device=None, load_extractors: bool = True) -> tuple[SERModel, dict]:
    """(model with the best-validation weights, config) of a train.py run dir."""
    run_dir = Path(run_dir)
    config = fileio.read_json(run_dir / "config.json", "run config")
    if "folds" in config:
        raise cli.PipelineError(f"{run_dir}: a cross-validation run; load one of its fold dirs {config['folds']}")
    for kind, ident in config["extractors"].items():
        # a frozen run keeps no extractor weights: they must still be the ones it was trained on
        if ident is not None and modelhub.extractor_identity(ident["name"]) != ident:
            raise cli.PipelineError(
                f"{run_dir / 'config.json'}: the {kind} extractor {ident['name']} has changed since "
                f"this run was trained (config or weights hash differs)"
            )
    model = build_model(config, load_extractors=load_extractors)
    state = fileio.load_pt(run_dir / "checkpoint_best.pt", "best checkpoint")
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    if (
        unexpected
        or (missing and config["mode"] == "finetune")
        or any(not k.startswith(("text.", "audio.")) for k in missing)
    ):
        raise cli.PipelineError(
            f"{run_dir / 'checkpoint_best.pt'}: does not match the model of config.json "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    model.to(device or "cpu").eval()
    return model, config


MODEL_WEIGHTS = "model.safetensors"  # an export.py folder: every weight, extractors and head (safetensors, no pickle)
EXTRACTOR_DIRS = {"text": "text", "audio": "audio"}  # ModelConfig field -> its subfolder (config, tokenizer, ...)


def model_dir_config(model_dir, config: dict) -> ModelConfig:
    """The ModelConfig of a model folder's config.json, its extractors the folder's subfolders (EXTRACTOR_DIRS:
    relative in the file; None for an extractor the modality does not use)."""
    section = dict(config.get("model") or {})
    for kind, sub in EXTRACTOR_DIRS.items():
        section[f"{kind}_model"] = str(Path(model_dir) / sub) if section.get(f"{kind}_model") else None
    return ModelConfig.from_dict(section, f"{Path(model_dir) / 'config.json'} model")


def load_model_dir(model_dir, device=None) -> tuple[SERModel, dict]:
    """(model, the folder's config.json) of a model folder written by export.py: the extractors built from the
    configs in its subfolders (EXTRACTOR_DIRS), every weight read from model.safetensors, which must match exactly."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    config = fileio.read_json(model_dir / "config.json", "model folder config")
    if not (model_dir / MODEL_WEIGHTS).is_file():
        raise cli.PipelineError(f"{model_dir / MODEL_WEIGHTS}: not found; expected a model folder written by export.py")
    model = build_model(model_dir_config(model_dir, config), load_extractors="config", labels=formats.labels_of(config))
    missing, unexpected = model.load_state_dict(load_file(model_dir / MODEL_WEIGHTS), strict=False)
    if missing or unexpected:
        raise cli.PipelineError(
            f"{model_dir / MODEL_WEIGHTS}: does not match the model of config.json "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    model.to(device or "cpu").eval()
    return model, config


def run_dataset(
    model: SERModel,
    dataset: SegmentDataset,
    collator: Collator,
    batch_size: int,
    device,
    bf16: bool,
    num_workers: int = 0,
) -> torch.Tensor:
    """Logits [N, C] of every segment of dataset (C classes: the model's outputs), in dataset order (eval mode)."""
    logits = None
    sampler = LengthBucketSampler(dataset.lengths, batch_size, shuffle=False)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collator, num_workers=num_workers)
    model.eval()
    with torch.no_grad():
        for batch in loader:
            batch = to_device(batch, device)
            with autocast(device, bf16):
                out = model(batch).float().cpu()
                if logits is None:
                    logits = torch.zeros(len(dataset), out.shape[-1])
                logits[batch["index"].cpu()] = out
    return logits if logits is not None else torch.zeros(0, model.n_classes)
