"""Other audio and text encoder families through the same embedders (utils.AudioEmbedder, TextEmbedder).

Every family is a tiny random model built offline by demo/build_ser_models.build_families, with its
feature extractor or tokenizer. The property under test is the one the pooled embeddings need:
a sample padded inside a batch gets the embedding it gets alone (to 1e-5), and alone it is the
Hugging Face model's own output, mean-pooled.
"""

import numpy as np
import pytest
import torch

import utils
from common import cli, formats
from demo.build_ser_models import AUDIO_FAMILIES, TEXT_FAMILIES

# family -> (HF model class, how its CNN normalises: see AudioEmbedder.cnn_norm)
AUDIO = {
    "wav2vec2": ("Wav2Vec2Model", "per-frame"),  # the demo's model: a one-layer filterbank CNN, 25 frames/s
    "wav2vec2-group": ("Wav2Vec2Model", "group-first"),  # wav2vec2-base's layout
    "wav2vec2-layer": ("Wav2Vec2Model", "per-frame"),
    "hubert": ("HubertModel", "group-first"),
    "hubert-layer": ("HubertModel", "per-frame"),
    "wavlm": ("WavLMModel", "group-first"),
    "wavlm-layer": ("WavLMModel", "per-frame"),
    "xls-r": ("Wav2Vec2Model", "per-frame"),  # multilingual
    "data2vec-audio": ("Data2VecAudioModel", "per-frame"),
}
TEXT = {
    "roberta": "RobertaModel",
    "bert": "BertModel",
    "deberta": "DebertaModel",
    "deberta-v2": "DebertaV2Model",
    "xlm-roberta": "XLMRobertaModel",  # multilingual
}
LENGTHS = [3000, 9000, 16000]  # samples: 9, 28 and 49 frames
TEXTS = ["no", "I am so happy today", "what do you want from me, I never said that"]
MULTILINGUAL_TEXTS = ["café", "naïve 東京 Ελλάδα, très bien", "你好 谢谢, привет, glücklich über señor"]


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory):
    from demo.build_ser_models import build, build_families

    out = tmp_path_factory.mktemp("families")
    demo = build(out, seed=0)
    return {"wav2vec2": demo["audio_model"], "roberta": demo["text_model"], **build_families(out)}


def test_every_family_is_built():
    assert set(AUDIO) == set(AUDIO_FAMILIES) | {"wav2vec2"}
    assert set(TEXT) == set(TEXT_FAMILIES) | {"roberta"}


def waves(lengths=LENGTHS, seed=1):
    g = torch.Generator().manual_seed(seed)
    xs = [utils.zero_mean_unit_var(torch.randn(n, generator=g)) for n in lengths]
    batch = torch.zeros(len(xs), max(lengths))
    for i, x in enumerate(xs):
        batch[i, : len(x)] = x
    return xs, batch, torch.tensor(lengths)


def assert_audio_padding_exact(audio):
    xs, batch, lengths = waves()
    with torch.no_grad():
        together = audio(batch, lengths)
        for i, x in enumerate(xs):
            alone = audio(x[None], torch.tensor([len(x)]))[0]
            # alone, our sequence is the HF model's own forward, mean-pooled over its frames
            hf = audio.model(x[None]).last_hidden_state[0].mean(0)
            assert torch.allclose(alone, hf, atol=1e-5), f"sample {i}: not the HF model's output"
            assert torch.allclose(together[i], alone, atol=1e-5), f"sample {i}: padding changed its embedding"
    return together


@pytest.mark.parametrize("family", list(AUDIO))
def test_audio_family_padding_exact(family_dirs, family):
    torch.manual_seed(0)
    audio = utils.AudioEmbedder(family_dirs[family]).eval()
    model_cls, norm = AUDIO[family]
    assert type(audio.model).__name__ == model_cls and audio.cnn_norm() == norm
    assert audio.hidden_size == 64
    together = assert_audio_padding_exact(audio)
    assert together.shape == (3, 64) and torch.isfinite(together).all()
    # frame arithmetic is the same conv stack in every family: 20 ms hop, 25 ms window (the demo's: 40 ms hop)
    want = [1, 5, 25] if family == "wav2vec2" else [1, 9, 49]
    assert audio.frame_lengths(torch.tensor([400, 3000, 16000])).tolist() == want
    # HF's own forward with an attention mask is NOT padding-exact where we fixed something:
    # the base models' GroupNorm CNN and data2vec-audio's 5-layer positional convolution.
    if norm == "group-first" or family == "data2vec-audio":
        xs, batch, lengths = waves()
        mask = (torch.arange(batch.shape[1])[None] < lengths[:, None]).long()
        with torch.no_grad():
            hf = audio.model(batch, attention_mask=mask).last_hidden_state[0, :9].mean(0)
        assert not torch.allclose(hf, together[0], atol=1e-3)


def test_data2vec_positional_conv_needs_the_mask_at_every_layer(family_dirs):
    """With the CNN exact and HF's single zeroing of padded frames, data2vec-audio still differs:
    the zeroing must happen before each of its positional convs (the pre-hooks)."""
    audio = utils.AudioEmbedder(family_dirs["data2vec-audio"]).eval()
    xs, batch, lengths = waves()
    with torch.no_grad():
        exact = audio(batch, lengths)
        for m in audio.model.encoder.pos_conv_embed.modules():
            m._forward_pre_hooks.clear()
        leaky = audio(batch, lengths)
    assert not torch.allclose(exact[0], leaky[0], atol=1e-3)  # the shortest sample changes without the hooks
    assert torch.allclose(exact[2], leaky[2], atol=1e-5)  # the longest one has no padding


def test_hubert_with_positional_batch_norm(family_dirs, tmp_path):
    """HuBERT's conv_pos_batch_norm (BatchNorm before the positional conv) turns zero padding into
    non-zeros: the pre-hook zeroes it after the BatchNorm, so it stays padding-exact."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(family_dirs["hubert"])
    config.conv_pos_batch_norm = True
    torch.manual_seed(3)
    model = AutoModel.from_config(config)
    bn = model.encoder.pos_conv_embed.batch_norm
    bn.running_mean.normal_()  # non-trivial running statistics: BN(0) != 0
    bn.running_var.uniform_(0.5, 2.0)
    model.save_pretrained(tmp_path / "hubert-bn")
    audio = utils.AudioEmbedder(str(tmp_path / "hubert-bn")).eval()
    assert_audio_padding_exact(audio)


@pytest.mark.parametrize("family", list(TEXT))
def test_text_family_padding_exact(family_dirs, family):
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    text = utils.TextEmbedder(family_dirs[family]).eval()
    assert type(text.model).__name__ == TEXT[family]
    assert getattr(text.model, "pooler", None) is None  # not built (BERT, RoBERTa) or absent (DeBERTa)
    tok = AutoTokenizer.from_pretrained(family_dirs[family])
    collate = utils.Collator(tok)
    texts = MULTILINGUAL_TEXTS if family == "xlm-roberta" else TEXTS
    items = [{"index": i, "audio": torch.zeros(400), "text": t, "label": 0} for i, t in enumerate(texts)]
    batch = collate(items)
    if family == "xlm-roberta":  # accents, CJK, Greek, Cyrillic: every character known, none <unk>
        assert tok.unk_token_id not in batch["input_ids"]
        decoded = [tok.decode(ids, skip_special_tokens=True) for ids in batch["input_ids"]]
        assert decoded == texts
    assert set(batch) >= {"input_ids", "attention_mask"} and "token_type_ids" not in batch
    assert (batch["attention_mask"] == 0).any()  # the batch really is padded
    with torch.no_grad():
        together = text(batch["input_ids"], batch["attention_mask"])
        for i, it in enumerate(items):
            one = collate([it])
            alone = text(one["input_ids"], one["attention_mask"])[0]
            hf = text.model(input_ids=one["input_ids"]).last_hidden_state[0].mean(0)
            assert torch.allclose(alone, hf, atol=1e-5), f"sample {i}: not the HF model's output"
            assert torch.allclose(together[i], alone, atol=1e-5), f"sample {i}: padding changed its embedding"
    assert together.shape == (3, text.hidden_size) and torch.isfinite(together).all()


def audio_grads(audio, freeze: bool, checkpointing: bool) -> dict:
    """One training-mode forward/backward (dropout, SpecAugment and LayerDrop on, seeded) -> {name: grad}."""
    if freeze:
        audio.freeze_feature_encoder()
    if checkpointing:
        audio.gradient_checkpointing_enable()
        assert audio.model.is_gradient_checkpointing
    audio.train()
    torch.manual_seed(5)
    np.random.seed(5)  # SpecAugment draws its spans with numpy
    _, batch, lengths = waves([8000, 12000])
    audio(batch, lengths).pow(2).sum().backward()
    return {n: p.grad for n, p in audio.named_parameters()}


@pytest.mark.parametrize("family", list(AUDIO))
def test_audio_family_trains_frozen_cnn_and_checkpointing(family_dirs, family):
    """train.py's --freeze-feature-encoder and --gradient-checkpointing work for every family
    (HuBERT's model has no freeze_feature_encoder: AudioEmbedder.freeze_feature_encoder does it),
    and checkpointing computes the same gradients."""
    plain = audio_grads(utils.AudioEmbedder(family_dirs[family]), freeze=False, checkpointing=False)
    ckpt = audio_grads(utils.AudioEmbedder(family_dirs[family]), freeze=False, checkpointing=True)
    cnn = [n for n in plain if n.startswith("model.feature_extractor.")]
    assert cnn and all(plain[n] is not None for n in cnn)
    for n, g in plain.items():
        if g is not None:
            assert ckpt[n] is not None and torch.allclose(g, ckpt[n], atol=1e-5, rtol=1e-4), n
    frozen = audio_grads(utils.AudioEmbedder(family_dirs[family]), freeze=True, checkpointing=True)
    assert all(frozen[n] is None for n in cnn)
    assert frozen["model.feature_projection.projection.weight"] is not None
    assert any(g is not None for n, g in frozen.items() if n.startswith("model.encoder.layers."))


@pytest.mark.parametrize("family", list(TEXT))
def test_text_family_trains_with_checkpointing(family_dirs, family):
    from transformers import AutoTokenizer

    text = utils.TextEmbedder(family_dirs[family])
    text.gradient_checkpointing_enable()
    text.train()
    batch = utils.Collator(AutoTokenizer.from_pretrained(family_dirs[family]))(
        [{"index": i, "audio": torch.zeros(400), "text": t, "label": 0} for i, t in enumerate(TEXTS)]
    )
    text(batch["input_ids"], batch["attention_mask"]).pow(2).sum().backward()
    assert text.model.is_gradient_checkpointing
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in text.named_parameters() if "layer" in n)


@pytest.mark.parametrize(
    "text_family,audio_family",
    [
        ("bert", "hubert"),
        ("deberta-v2", "wavlm"),
        ("deberta", "data2vec-audio"),
        ("roberta", "hubert-layer"),
        ("xlm-roberta", "xls-r"),
    ],
)
def test_fused_model_runs_for_family_pairs(family_dirs, text_family, audio_family):
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    model = utils.SERModel(
        text_model=family_dirs[text_family], audio_model=family_dirs[audio_family], modality="fusion"
    ).eval()
    tok = AutoTokenizer.from_pretrained(family_dirs[text_family])
    xs, _, _ = waves()
    items = [{"index": i, "audio": x, "text": t, "label": i} for i, (x, t) in enumerate(zip(xs, TEXTS))]
    batch = utils.Collator(tok)(items)
    with torch.no_grad():
        logits = model(batch)
        z_t, z_a = model.embed(batch)
        first_alone = model(utils.Collator(tok)(items[:1]))
    assert logits.shape == (3, len(formats.LABELS)) and torch.isfinite(logits).all()
    assert z_t.shape == (3, model.text.hidden_size) and z_a.shape == (3, 64)
    assert model.dim == model.text.hidden_size  # D = the text model's width (BERT's tiny one is 32: audio projected)
    assert torch.allclose(logits[0], first_alone[0], atol=1e-5)


def test_unsupported_models_are_refused(family_dirs, tmp_path):
    from transformers import BartConfig, Wav2Vec2Config

    with pytest.raises(cli.PipelineError, match="not supported"):
        utils.AudioEmbedder(family_dirs["bert"])  # a text model as --audio-model
    Wav2Vec2Config(
        hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, add_adapter=True
    ).save_pretrained(tmp_path / "adapter")
    with pytest.raises(cli.PipelineError, match="adapter"):
        utils.AudioEmbedder(str(tmp_path / "adapter"))
    BartConfig(d_model=32, encoder_layers=1, decoder_layers=1).save_pretrained(tmp_path / "bart")
    with pytest.raises(cli.PipelineError, match="encoder-decoder"):
        utils.TextEmbedder(str(tmp_path / "bart"))
