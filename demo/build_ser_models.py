"""Tiny random-initialised SER extractors for the embedded demo.

Builds, offline, a tiny wav2vec 2.0 (Wav2Vec2Model + Wav2Vec2FeatureExtractor) and a tiny
RoBERTa (RobertaModel + a byte-level BPE tokenizer), saved with save_pretrained so that the
pipeline loads them through AutoModel / AutoTokenizer / AutoFeatureExtractor.from_pretrained
exactly as it loads facebook/wav2vec2-base and roberta-base. The weights are random, except the
wav2vec 2.0's single conv layer, which starts as a filterbank (filterbank_weights) so that its audio
embedding carries the spectrum as a pretrained one does: the demo tests the plumbing and that the
model learns, not pretrained representations.

    python demo/build_ser_models.py --out demo_data/models

build_families() writes tiny random models of other encoder layouts and families the same way
(wav2vec2-base's group-norm layout, a layer-norm wav2vec 2.0, HuBERT, WavLM, data2vec-audio, BERT,
DeBERTa, DeBERTa-v2, and the multilingual XLS-R and XLM-R), each with its feature extractor
or an offline-built tokenizer, so that tests can run every family through the pipeline's code:

    python demo/build_ser_models.py --out /tmp/families --families all
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

# A small English word list to learn a few BPE merges from, so the tokenizer is not all bytes.
WORDS = """
the a an and or but if then so because i you he she we they it me him her us them my your our
their this that these those is are was were be been being have has had do does did not no yes
what why how when where who which there here now just only very really too also again still
go going gone come coming get got make made take took give gave know knew think thought feel
felt want need like love hate say said tell told look see saw hear heard talk call leave stay
wait stop try help work home time day night year life world people man woman friend family
good great fine well nice happy glad excited wonderful amazing fantastic awesome beautiful fun
bad sad sorry upset angry mad furious terrible awful horrible unfair miss lost alone tired cry
okay alright sure maybe right wrong thing things something nothing everything anything always
never ever about with without from into over after before around through back down up out off
can could will would should shall might must may let please thank thanks hello hi hey bye oh
""".split()


def learn_merges(words, n_merges: int) -> list[tuple[str, str]]:
    """Classic BPE: repeatedly merge the most frequent adjacent symbol pair (ties: smallest pair)."""
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    b2u = bytes_to_unicode()
    vocab = collections.Counter(tuple(b2u[b] for b in (" " + w).encode("utf-8")) for w in words)
    merges = []
    for _ in range(n_merges):
        pairs = collections.Counter()
        for word, freq in vocab.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += freq
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        new = collections.Counter()
        for word, freq in vocab.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new[tuple(out)] += freq
        vocab = new
    return merges


def build_byte_bpe_tokenizer(
    out_dir: Path, tokenizer_cls, head: list[str], tail: list[str], n_merges: int = 300, **kwargs
):
    """Byte-level BPE tokenizer (GPT-2 style, as RoBERTa and DeBERTa v1 use): the special tokens
    `head` first, the 256 byte symbols, the learned merges, the special tokens `tail` last; built
    by tokenizer_cls from vocab.json + merges.txt and saved as a fast tokenizer (tokenizer.json)."""
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    vocab = {t: i for i, t in enumerate(head)}
    for sym in bytes_to_unicode().values():
        vocab.setdefault(sym, len(vocab))
    merges = learn_merges(WORDS, n_merges)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for t in tail:
        vocab[t] = len(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (Path(tmp) / "merges.txt").write_text(
            "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
        )
        tok = tokenizer_cls(
            vocab_file=str(Path(tmp) / "vocab.json"),
            merges_file=str(Path(tmp) / "merges.txt"),
            model_max_length=512,
            **kwargs,
        )
    tok.save_pretrained(out_dir)
    return tok


def build_tokenizer(out_dir: Path, n_merges: int = 300):
    """RoBERTa's byte-level BPE tokenizer: <s> <pad> </s> <unk>, bytes, merges, <mask> last (RoBERTa's order)."""
    from transformers import RobertaTokenizerFast

    return build_byte_bpe_tokenizer(
        out_dir, RobertaTokenizerFast, ["<s>", "<pad>", "</s>", "<unk>"], ["<mask>"], n_merges
    )


def build_wordpiece_tokenizer(out_dir: Path):
    """BERT's WordPiece tokenizer (uncased): [PAD] [UNK] [CLS] [SEP] [MASK], single characters,
    their ##continuations, then the demo words; saved from a vocab.txt as BERT's own files are."""
    from transformers import BertTokenizerFast

    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars]
    vocab += [w for w in dict.fromkeys(WORDS) if w not in vocab]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
        tok = BertTokenizerFast(vocab_file=str(Path(tmp) / "vocab.txt"), do_lower_case=True, model_max_length=512)
    tok.save_pretrained(out_dir)
    return tok


def build_unigram_tokenizer(out_dir: Path, vocab_size: int = 200):
    """DeBERTa-v2/v3's tokenizer kind: a SentencePiece-style unigram model ("\u2581" marks a word start)
    with [PAD]=0 [CLS]=1 [SEP]=2 [UNK]=3 (DeBERTa-v3's ids) and [MASK], [CLS] x [SEP] around a
    sentence. Trained here with the `tokenizers` library on the demo words (the sentencepiece
    package is not needed) and saved as DebertaV2TokenizerFast (tokenizer.json)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import DebertaV2TokenizerFast

    specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
    backend = Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        unk_token="[UNK]",
        initial_alphabet=list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-"),
    )
    backend.train_from_iterator([" ".join(WORDS)] * 4, trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", backend.token_to_id("[CLS]")), ("[SEP]", backend.token_to_id("[SEP]"))],
    )
    tok = DebertaV2TokenizerFast(tokenizer_object=backend, model_max_length=512)
    tok.save_pretrained(out_dir)
    return tok


# Words of a few languages (accents, Greek, CJK) for the multilingual tokenizer (XLM-R's family).
MULTILINGUAL_WORDS = """
café naïve déjà vu très bien merci garçon über schön müde traurig glücklich wütend señor mañana feliz
enfadado triste ελλάδα γεια χαίρετε ευχαριστώ λυπημένος χαρούμενος 東京 日本 嬉しい 悲しい 怒り 你好 谢谢 高兴
难过 生气 안녕하세요 행복 슬픔 привет спасибо грустно
""".split()


def build_xlmr_tokenizer(out_dir: Path, vocab_size: int = 400):
    """XLM-RoBERTa's tokenizer kind: a SentencePiece-style unigram model ("\u2581" marks a word start)
    with XLM-R's ids <s>=0 <pad>=1 </s>=2 <unk>=3, <mask> last, <s> x </s> around a sentence (pairs
    <s> a </s></s> b </s>). Trained offline with the `tokenizers` library on the English demo words
    and MULTILINGUAL_WORDS, every character of which (and its upper case) is in its alphabet; saved
    as XLMRobertaTokenizerFast (tokenizer.json)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaTokenizerFast

    words = WORDS + MULTILINGUAL_WORDS
    backend = Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    alphabet = sorted(set("".join(words)) | set("".join(words).upper()) | set("0123456789.,!?'-"))
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        initial_alphabet=alphabet,
    )
    backend.train_from_iterator([" ".join(words)] * 4, trainer)
    backend.add_special_tokens(["<mask>"])
    bos, eos = backend.token_to_id("<s>"), backend.token_to_id("</s>")
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    tok = XLMRobertaTokenizerFast(tokenizer_object=backend, model_max_length=512)
    tok.save_pretrained(out_dir)
    return tok


def filterbank_weights(
    channels: int, kernel: int, sample_rate: int = 16000, low_hz: float = 80.0, high_hz: float = 5000.0
):
    """[channels, 1, kernel] conv weights: Hann-windowed cosines at centre frequencies equally spaced
    on the mel scale from low_hz to high_hz, each scaled to unit norm. Rectified (GELU) and averaged
    over time, channel k measures the energy near its centre frequency: a coarse spectrum, from which
    pitch, brightness and loudness contours (the demo corpus's audio cues) can be read."""
    import numpy as np
    import torch

    def mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    centres = 700.0 * (10.0 ** (np.linspace(mel(low_hz), mel(high_hz), channels) / 2595.0) - 1.0)
    t = np.arange(kernel) / sample_rate
    w = np.hanning(kernel)[None, :] * np.cos(2.0 * np.pi * centres[:, None] * t[None, :])
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    return torch.tensor(w, dtype=torch.float32)[:, None, :]


def build(out_dir, seed: int = 0) -> dict:
    """Write <out_dir>/wav2vec2-tiny and <out_dir>/roberta-tiny; return their paths."""
    import torch
    from transformers import RobertaConfig, RobertaModel, Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    out_dir = Path(out_dir)
    paths = {"audio_model": str(out_dir / "wav2vec2-tiny"), "text_model": str(out_dir / "roberta-tiny")}

    torch.manual_seed(seed)
    # A wav2vec 2.0 at toy width whose CNN is ONE conv layer (64 channels, 25 ms windows as
    # wav2vec2-base's receptive field, so the shortest segment still gives a frame, every 40 ms:
    # 25 frames/s) with per-frame LayerNorm (the large models' "layer" layout), initialised as a
    # filterbank (filterbank_weights): random CNN weights followed by wav2vec2-base's GroupNorm left the
    # audio branch at the majority class, because the GroupNorm over time removes each channel's energy,
    # i.e. the spectrum. A real pretrained CNN carries it; so does this one, frozen or not. No attention
    # dropout: on CPU, sampling the [B, heads, T, T] dropout mask took 44 % of a training step. One
    # Transformer layer in each tiny extractor: a fused training epoch took 1.8 s instead of 2.6 s with two
    # (1 CPU thread), with the learning the demo needs.
    # SpecAugment's time mask spans 5 frames (0.2 s, as wav2vec2-base's 10 frames at 50/s).
    w2v_config = Wav2Vec2Config(
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=128,
        conv_dim=(64,),
        conv_kernel=(400,),
        conv_stride=(640,),
        conv_bias=False,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        attention_dropout=0.0,
        mask_time_length=5,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    )
    w2v = Wav2Vec2Model(w2v_config)
    first = w2v.feature_extractor.conv_layers[0].conv
    with torch.no_grad():
        first.weight.copy_(filterbank_weights(first.out_channels, first.kernel_size[0]))
    w2v.save_pretrained(paths["audio_model"])
    # The same feature-extractor settings as facebook/wav2vec2-base.
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=False
    ).save_pretrained(paths["audio_model"])

    tok = build_tokenizer(Path(paths["text_model"]))
    torch.manual_seed(seed + 1)
    rob_config = RobertaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    RobertaModel(rob_config, add_pooling_layer=False).save_pretrained(paths["text_model"])
    return paths


# Tiny layouts of other encoder families, each named after the real checkpoint layout it mirrors.
# Audio: (config class, overrides). "group" = wav2vec2-base style CNN (GroupNorm in the first conv
# layer only, post-norm encoder); "layer" = the large models' style (LayerNorm in every conv layer,
# pre-norm "stable" encoder). data2vec-audio always has layer-norm convs and a 5-layer positional conv.
TINY_AUDIO = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, conv_dim=(32,) * 7)
AUDIO_FAMILIES = {
    "wav2vec2-group": (
        "Wav2Vec2Config",
        dict(
            feat_extract_norm="group",
            do_stable_layer_norm=False,
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4,
        ),
    ),
    "wav2vec2-layer": (
        "Wav2Vec2Config",
        dict(
            feat_extract_norm="layer",
            do_stable_layer_norm=True,
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4,
        ),
    ),
    "hubert": (
        "HubertConfig",
        dict(
            feat_extract_norm="group",
            do_stable_layer_norm=False,
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4,
        ),
    ),
    "hubert-layer": (
        "HubertConfig",
        dict(
            feat_extract_norm="layer",
            do_stable_layer_norm=True,
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4,
        ),
    ),
    "wavlm": (
        "WavLMConfig",
        dict(
            feat_extract_norm="group",
            do_stable_layer_norm=False,
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4,
        ),
    ),
    "wavlm-layer": (
        "WavLMConfig",
        dict(
            feat_extract_norm="layer",
            do_stable_layer_norm=True,
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4,
        ),
    ),
    # XLS-R (facebook/wav2vec2-xls-r-300m, multilingual): a wav2vec 2.0 with LayerNorm in every conv
    # layer, conv biases and the pre-norm "stable" encoder, as its config sets them.
    "xls-r": (
        "Wav2Vec2Config",
        dict(
            feat_extract_norm="layer",
            do_stable_layer_norm=True,
            conv_bias=True,
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4,
        ),
    ),
    "data2vec-audio": (
        "Data2VecAudioConfig",
        dict(num_conv_pos_embeddings=5, conv_pos_kernel_size=19, num_conv_pos_embedding_groups=16),
    ),
}
# Text: (config class, overrides, tokenizer builder). DeBERTa's as deberta-base / deberta-v3-base
# (relative attention, no absolute positions); BERT at a different width (32) than the audio models,
# so that the fused model's audio projection is exercised.
TEXT_FAMILIES = {
    "bert": ("BertConfig", dict(hidden_size=32, intermediate_size=64, type_vocab_size=2), "wordpiece"),
    "deberta": (
        "DebertaConfig",
        dict(
            relative_attention=True,
            pos_att_type=["c2p", "p2c"],
            position_biased_input=False,
            max_relative_positions=-1,
            type_vocab_size=0,
        ),
        "byte-bpe",
    ),
    "deberta-v2": (
        "DebertaV2Config",
        dict(
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            position_biased_input=False,
            max_relative_positions=-1,
            position_buckets=256,
            norm_rel_ebd="layer_norm",
            share_att_key=True,
            type_vocab_size=0,
        ),
        "unigram",
    ),
    # XLM-R (xlm-roberta-base, multilingual): RoBERTa's layout with a SentencePiece unigram vocabulary.
    "xlm-roberta": (
        "XLMRobertaConfig",
        dict(max_position_embeddings=514, type_vocab_size=1),
        "xlmr-unigram",
    ),
}
FAMILIES = tuple(AUDIO_FAMILIES) + tuple(TEXT_FAMILIES)


def build_families(out_dir, families=FAMILIES, seed: int = 0) -> dict:
    """Write <out_dir>/<family>-tiny for each family name (AUDIO_FAMILIES, TEXT_FAMILIES): a random
    AutoModel with save_pretrained plus, for audio, a Wav2Vec2FeatureExtractor (wav2vec2-base's
    settings; return_attention_mask as the layer-norm checkpoints set it) and, for text, an offline
    tokenizer of the family's kind. Returns {family: path}."""
    import torch
    import transformers
    from transformers import AutoModel, DebertaTokenizerFast, Wav2Vec2FeatureExtractor

    out_dir = Path(out_dir)
    paths = {}
    for i, family in enumerate(families):
        path = out_dir / f"{family}-tiny"
        torch.manual_seed(seed + 10 + i)
        if family in AUDIO_FAMILIES:
            config_cls, overrides = AUDIO_FAMILIES[family]
            config = getattr(transformers, config_cls)(**TINY_AUDIO, **overrides)
            AutoModel.from_config(config).save_pretrained(path)
            layer_norm_cnn = getattr(config, "feat_extract_norm", "layer") == "layer"
            Wav2Vec2FeatureExtractor(
                feature_size=1,
                sampling_rate=16000,
                padding_value=0.0,
                do_normalize=True,
                return_attention_mask=layer_norm_cnn,
            ).save_pretrained(path)
        elif family in TEXT_FAMILIES:
            config_cls, overrides, kind = TEXT_FAMILIES[family]
            if kind == "wordpiece":
                tok = build_wordpiece_tokenizer(path)
            elif kind == "byte-bpe":  # DeBERTa v1: GPT-2's byte-level BPE with BERT-style special tokens
                tok = build_byte_bpe_tokenizer(
                    path, DebertaTokenizerFast, ["[PAD]", "[CLS]", "[SEP]", "[UNK]"], ["[MASK]"]
                )
            elif kind == "xlmr-unigram":
                tok = build_xlmr_tokenizer(path)
            else:
                tok = build_unigram_tokenizer(path)
            base = dict(
                vocab_size=len(tok),
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=128,
                max_position_embeddings=512,
                pad_token_id=tok.pad_token_id,
            )
            config = getattr(transformers, config_cls)(**{**base, **overrides})
            AutoModel.from_config(config).save_pretrained(path)
        else:
            raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
        paths[family] = str(path)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_data/models", help="folder for wav2vec2-tiny/ and roberta-tiny/")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--families",
        default="",
        help="also build tiny models of these families, comma-separated, "
        f"or 'all' ({', '.join(FAMILIES)}); default: none, only the demo's two models",
    )
    args = parser.parse_args(argv)
    paths = build(args.out, args.seed)
    if args.families:
        families = FAMILIES if args.families == "all" else [f.strip() for f in args.families.split(",") if f.strip()]
        paths.update(build_families(args.out, families, args.seed))
    for kind, path in paths.items():
        n_files = len(list(Path(path).iterdir()))
        print(f"wrote {kind}: {path} ({n_files} files)")
    return paths


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
