"""Tiny random-initialised SER extractors for the embedded demo.

Builds, offline, a tiny wav2vec 2.0 (Wav2Vec2Model + Wav2Vec2FeatureExtractor) and a tiny
RoBERTa (RobertaModel + a byte-level BPE tokenizer), saved with save_pretrained so that the
pipeline loads them through AutoModel / AutoTokenizer / AutoFeatureExtractor.from_pretrained
exactly as it loads facebook/wav2vec2-base and roberta-base. The weights are random: the demo
tests the plumbing and that the classifier head learns, not pretrained representations.

    python demo/build_ser_models.py --out demo_data/models
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


def build_tokenizer(out_dir: Path, n_merges: int = 300):
    """RoBERTa-style byte-level BPE tokenizer: <s> <pad> </s> <unk>, the 256 byte symbols, the
    learned merges, <mask> last (RoBERTa's order), saved as a fast tokenizer (tokenizer.json)."""
    from transformers import RobertaTokenizerFast
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for sym in bytes_to_unicode().values():
        vocab.setdefault(sym, len(vocab))
    merges = learn_merges(WORDS, n_merges)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab["<mask>"] = len(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
        tok = RobertaTokenizerFast(vocab_file=str(Path(tmp) / "vocab.json"), merges_file=str(Path(tmp) / "merges.txt"),
                                   model_max_length=512)
    tok.save_pretrained(out_dir)
    return tok


def build(out_dir, seed: int = 0) -> dict:
    """Write <out_dir>/wav2vec2-tiny and <out_dir>/roberta-tiny; return their paths."""
    import torch
    from transformers import (RobertaConfig, RobertaModel, Wav2Vec2Config, Wav2Vec2FeatureExtractor,
                              Wav2Vec2Model)

    out_dir = Path(out_dir)
    paths = {"audio_model": str(out_dir / "wav2vec2-tiny"), "text_model": str(out_dir / "roberta-tiny")}

    torch.manual_seed(seed)
    # wav2vec2-base's layout (group-norm CNN with 7 conv layers, post-norm encoder) at toy width.
    w2v_config = Wav2Vec2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                                feat_extract_norm="group", do_stable_layer_norm=False)
    Wav2Vec2Model(w2v_config).save_pretrained(paths["audio_model"])
    # The same feature-extractor settings as facebook/wav2vec2-base.
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=False).save_pretrained(paths["audio_model"])

    tok = build_tokenizer(Path(paths["text_model"]))
    torch.manual_seed(seed + 1)
    rob_config = RobertaConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=128, max_position_embeddings=514, type_vocab_size=1,
                               pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    RobertaModel(rob_config, add_pooling_layer=False).save_pretrained(paths["text_model"])
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_data/models", help="folder for wav2vec2-tiny/ and roberta-tiny/")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = build(args.out, args.seed)
    for kind, path in paths.items():
        n_files = len(list(Path(path).iterdir()))
        print(f"wrote {kind}: {path} ({n_files} files)")
    return paths


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
