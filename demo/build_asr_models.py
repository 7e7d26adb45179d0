"""Tiny, randomly initialised stand-ins for the three models of step 2's whisperx backend.

The real pipeline loads Whisper large-v2 (CTranslate2, through faster-whisper), the WhisperX English alignment
model (a wav2vec2 CTC model) and a pyannote speaker-diarization pipeline, by hub name or from a local directory.
This module writes small random models in exactly the local-directory layouts those loaders accept, so that
preprocess.py runs its real whisperx code path offline on CPU (the demo and the tests: docs/TESTING.md). Their
transcripts and speaker turns are noise; what they prove is that the code path, the data shapes and the timing
logic work.

    python demo/build_asr_models.py --out demo_data/models/asr

writes under OUT (each folder's layout: the function named): whisper-ct2/ (build_whisper), align-w2v2/
(build_align_model), diarization/ (a pipeline shaped like pyannote/speaker-diarization-community-1,
build_diarization), hub/ (a local hub mirror holding the paper's pyannote/speaker-diarization-3.1 and the two
model repositories its config names, build_diarization_31) and nltk_data/ (prepare_nltk_data), then prints the
preprocess.py flags that use them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Whisper's special tokens, in the order OpenAI's English-only vocabularies list them. Without a
# language token in the vocabulary, ctranslate2 treats the model as English-only, which is what
# language="en" needs.
WHISPER_SPECIALS = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
]
TEXT_TOKEN_GAIN = 50.0  # see build_whisper
N_TIMESTAMP_TOKENS = 1501  # <|0.00|> ... <|30.00|>, appended after the text vocabulary
# Character vocabulary laid out like facebook/wav2vec2-base-960h: <pad> is the CTC blank, "|" the
# word delimiter.
ALIGN_CHARS = ["<pad>", "<s>", "</s>", "<unk>", "|"] + list("ETAONIHSRDLUMWCFGYPBVK'XJQZ")
PUNKT_FILES = ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab")


def _whisper_tokenizer(hf_dir: Path):
    """A byte-level BPE Whisper tokenizer saved in hf_dir -> (fast tokenizer, byte vocabulary, ids of
    WHISPER_SPECIALS)."""
    from transformers import WhisperTokenizer, WhisperTokenizerFast
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    # A byte-level BPE with the 256 byte symbols and no merges encodes any string, and needs no download.
    vocab = {sym: i for i, sym in enumerate(bytes_to_unicode().values())}
    (hf_dir / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (hf_dir / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    eot = WHISPER_SPECIALS[0]
    slow = WhisperTokenizer(
        str(hf_dir / "vocab.json"),
        str(hf_dir / "merges.txt"),
        unk_token=eot,
        bos_token=eot,
        eos_token=eot,
        pad_token=eot,
        additional_special_tokens=WHISPER_SPECIALS[1:],
    )
    slow.save_pretrained(hf_dir)
    tokenizer = WhisperTokenizerFast.from_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)  # writes tokenizer.json, which faster-whisper reads
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in WHISPER_SPECIALS}
    return tokenizer, vocab, ids


def _whisper_config(n_text_tokens: int, ids: dict):
    """The WhisperConfig of the tiny model: 80 mel bins, 1 encoder and 1 decoder layer of width 64."""
    from transformers import WhisperConfig

    eot = WHISPER_SPECIALS[0]
    return WhisperConfig(
        vocab_size=n_text_tokens + N_TIMESTAMP_TOKENS,
        num_mel_bins=80,
        d_model=64,
        encoder_layers=1,
        encoder_attention_heads=2,
        decoder_layers=1,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=1500,
        max_target_positions=448,
        pad_token_id=ids[eot],
        bos_token_id=ids[eot],
        eos_token_id=ids[eot],
        decoder_start_token_id=ids["<|startoftranscript|>"],
        suppress_tokens=[],
        begin_suppress_tokens=[ids[eot]],
        tie_word_embeddings=False,
    )


def _boost_text_tokens(model, vocab: dict) -> None:
    """A random decoder mostly picks special or timestamp tokens, which decode to no text, so the
    transcripts would be empty and the alignment never exercised. Enlarging the output projection of
    the lower-case letters and the space (untied from the input embeddings, so the decoder's input
    still varies with the position) makes the noise it decodes look like words."""
    import torch
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    byte_to_symbol = bytes_to_unicode()
    with torch.no_grad():
        for char in "abcdefghijklmnopqrstuvwxyz ":
            model.proj_out.weight[vocab[byte_to_symbol[ord(char)]]] *= TEXT_TOKEN_GAIN * (1.6 if char == " " else 1.0)


def build_whisper(out: Path, seed: int = 0) -> Path:
    """A tiny random WhisperForConditionalGeneration converted to CTranslate2 -> folder for whisperx.load_model."""
    import ctranslate2
    import torch
    from transformers import GenerationConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    hf_dir, ct2_dir = out / "whisper-hf", out / "whisper-ct2"
    for d in (hf_dir, ct2_dir):
        shutil.rmtree(d, ignore_errors=True)
    hf_dir.mkdir(parents=True)
    tokenizer, vocab, ids = _whisper_tokenizer(hf_dir)
    eot = WHISPER_SPECIALS[0]
    config = _whisper_config(len(tokenizer), ids)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    _boost_text_tokens(model, vocab)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        eos_token_id=ids[eot],
        pad_token_id=ids[eot],
        suppress_tokens=[],
        begin_suppress_tokens=[ids[eot]],
        no_timestamps_token_id=ids["<|notimestamps|>"],
        max_length=448,
    )
    model.save_pretrained(hf_dir)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(hf_dir)
    # tokenizer.json must sit next to model.bin, or faster-whisper fetches a tokenizer from the hub.
    converter = ctranslate2.converters.TransformersConverter(
        str(hf_dir), copy_files=["tokenizer.json", "preprocessor_config.json"]
    )
    converter.convert(str(ct2_dir), quantization="float32", force=True)
    shutil.rmtree(hf_dir)
    return ct2_dir


def build_align_model(out: Path, seed: int = 0) -> Path:
    """A tiny random Wav2Vec2ForCTC with a character vocabulary, and its processor -> folder for
    whisperx.load_align_model."""
    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    out = out / "align-w2v2"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    vocab = {c: i for i, c in enumerate(ALIGN_CHARS)}
    (out / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    tokenizer = Wav2Vec2CTCTokenizer(
        str(out / "vocab.json"), unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|", do_lower_case=False
    )
    features = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=False
    )
    Wav2Vec2Processor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(out)
    # The convolutional front end keeps wav2vec2's 320-sample (20 ms) frame stride, so the alignment
    # has the real model's time resolution.
    config = Wav2Vec2Config(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32,) * 7,
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        pad_token_id=vocab["<pad>"],
        do_stable_layer_norm=False,
        feat_extract_norm="group",
    )
    torch.manual_seed(seed)
    Wav2Vec2ForCTC(config).eval().save_pretrained(out)
    return out


DIARIZATION_CONFIG = """\
dependencies:
  pyannote.audio: 4.0.0
pipeline:
  name: pyannote.audio.pipelines.SpeakerDiarization
  params:
    segmentation: $model/segmentation
    embedding: $model/embedding
    plda: $model/plda
    clustering: VBxClustering
    embedding_exclude_overlap: true
    embedding_batch_size: 32
    segmentation_batch_size: 32
params:
  segmentation:
    min_duration_off: 0.0
  clustering:
    threshold: 0.6
    Fa: 0.07
    Fb: 0.8
"""


# pyannote/speaker-diarization-3.1's config.yaml as published (pyannote.audio 3.1 format): the
# models are other hub repositories, the clustering is agglomerative and needs no PLDA.
DIARIZATION_31_CONFIG = """\
version: 3.1.0
pipeline:
  name: pyannote.audio.pipelines.SpeakerDiarization
  params:
    clustering: AgglomerativeClustering
    embedding: pyannote/wespeaker-voxceleb-resnet34-LM
    embedding_batch_size: 32
    embedding_exclude_overlap: true
    segmentation: pyannote/segmentation-3.0
    segmentation_batch_size: 32
params:
  clustering:
    method: centroid
    min_cluster_size: 12
    threshold: 0.7045654963945799
  segmentation:
    min_duration_off: 0.0
"""
DIARIZATION_31_REPOS = {
    "pipeline": "pyannote/speaker-diarization-3.1",
    "segmentation": "pyannote/segmentation-3.0",
    "embedding": "pyannote/wespeaker-voxceleb-resnet34-LM",
}


def diarization_models(seed: int = 0):
    """(segmentation, embedding) tiny random pyannote models.

    Segmentation: PyanNet with powerset output over 3 local speakers, at most 2 at once (the
    specification of pyannote 3.x and community-1). Embedding: XVectorSincNet, 64-d, about ten times faster
    on CPU than the real WeSpeakerResNet34 (the loaders see the layout, not the architecture). Both
    diarization pipelines (build_diarization, build_diarization_31) use these two models.
    """
    import torch
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.embedding import XVectorSincNet
    from pyannote.audio.models.segmentation import PyanNet

    torch.manual_seed(seed)
    segmentation = PyanNet(
        sincnet={"stride": 10},
        lstm={"hidden_size": 32, "num_layers": 1, "bidirectional": True, "monolithic": True, "dropout": 0.0},
        linear={"hidden_size": 32, "num_layers": 1},
    )
    segmentation.specifications = Specifications(
        problem=Problem.MONO_LABEL_CLASSIFICATION,
        resolution=Resolution.FRAME,
        duration=10.0,
        classes=["speaker#1", "speaker#2", "speaker#3"],
        powerset_max_classes=2,
        permutation_invariant=True,
    )
    segmentation.build()
    embedding = XVectorSincNet(dimension=64)
    embedding.specifications = Specifications(problem=Problem.REPRESENTATION, resolution=Resolution.CHUNK, duration=5.0)
    return segmentation.eval(), embedding.eval()


def save_pyannote_checkpoint(model, path: Path) -> None:
    """A pyannote model as pytorch_model.bin, the file Model.from_pretrained reads."""
    import lightning
    import torch

    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": lightning.__version__,
    }
    model.on_save_checkpoint(checkpoint)  # records pyannote's architecture and specifications
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)


def save_plda(folder: Path, dim: int, seed: int = 0, lda_dim: int = 16) -> None:
    """PLDA files of VBx clustering: an orthonormal LDA projection, decreasing between-class variances."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lda, _ = np.linalg.qr(rng.standard_normal((dim, lda_dim)))
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "xvec_transform.npz", mean1=np.zeros(dim), mean2=np.zeros(lda_dim), lda=lda)
    np.savez(folder / "plda.npz", mu=np.zeros(lda_dim), tr=np.eye(lda_dim), psi=np.linspace(5.0, 0.5, lda_dim))


def build_diarization(out: Path, seed: int = 0) -> Path:
    """A pipeline folder shaped like pyannote/speaker-diarization-community-1 -> OUT/diarization.

    community-1 is pyannote 4's default pipeline. config.yaml names its models as subfolders
    ($model/segmentation, $model/embedding, $model/plda), so Pipeline.from_pretrained(<dir>) and
    common.step2_whisperx.load_diarization_pipeline load it offline. The PLDA files are required by the VBx
    clustering.
    """
    out = Path(out) / "diarization"
    shutil.rmtree(out, ignore_errors=True)
    segmentation, embedding = diarization_models(seed)
    save_pyannote_checkpoint(segmentation, out / "segmentation" / "pytorch_model.bin")
    save_pyannote_checkpoint(embedding, out / "embedding" / "pytorch_model.bin")
    save_plda(out / "plda", embedding.dimension, seed)
    (out / "config.yaml").write_text(DIARIZATION_CONFIG, encoding="utf-8")
    return out


def build_diarization_31(out: Path, seed: int = 0) -> Path:
    """The three repositories of pyannote/speaker-diarization-3.1 in a hub mirror -> OUT/hub.

    OUT/hub/pyannote/speaker-diarization-3.1/config.yaml (the published config, which names the
    two model repositories by hub name), OUT/hub/pyannote/segmentation-3.0/pytorch_model.bin and
    OUT/hub/pyannote/wespeaker-voxceleb-resnet34-LM/pytorch_model.bin: the layout
    `preprocess.py --download-models OUT/hub` writes. No PLDA: the clustering is agglomerative. Use it with
    --diar-model pyannote/speaker-diarization-3.1 --model-dir OUT/hub.
    """
    hub = Path(out) / "hub"
    for repo in DIARIZATION_31_REPOS.values():
        shutil.rmtree(hub / repo, ignore_errors=True)
    segmentation, embedding = diarization_models(seed)
    save_pyannote_checkpoint(segmentation, hub / DIARIZATION_31_REPOS["segmentation"] / "pytorch_model.bin")
    save_pyannote_checkpoint(embedding, hub / DIARIZATION_31_REPOS["embedding"] / "pytorch_model.bin")
    pipeline = hub / DIARIZATION_31_REPOS["pipeline"]
    pipeline.mkdir(parents=True)
    (pipeline / "config.yaml").write_text(DIARIZATION_31_CONFIG, encoding="utf-8")
    return hub


def prepare_nltk_data(folder) -> Path:
    """Create the punkt_tab English files whisperx.align opens, in `folder`, and point NLTK_DATA at it.

    whisperx.align splits segments into sentences with NLTK's punkt_tab model and downloads it when
    missing. Empty parameter files form a valid (untrained) punkt model that splits at sentence-final
    punctuation, which is enough offline. Files that already exist (a real download) are kept.
    """
    folder = Path(folder).resolve()
    english = folder / "tokenizers" / "punkt_tab" / "english"
    english.mkdir(parents=True, exist_ok=True)
    for name in PUNKT_FILES:
        (english / name).touch(exist_ok=True)
    paths = os.environ.get("NLTK_DATA", "").split(os.pathsep)
    if str(folder) not in paths:
        os.environ["NLTK_DATA"] = os.pathsep.join([str(folder)] + [p for p in paths if p])
    try:  # nltk reads NLTK_DATA when imported; update its search path too if it is already loaded
        import nltk

        if str(folder) not in nltk.data.path:
            nltk.data.path.insert(0, str(folder))
    except ImportError:
        pass
    return folder


def build_all(out, seed: int = 0) -> dict:
    """Build the tiny models and the NLTK data under `out` -> their folders.

    {"asr", "align", "diarization" (community-1 shape), "diarization31" (3.1 shape, inside the hub
    mirror), "hub" (the mirror: pass it as --model-dir), "nltk_data"}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hub = build_diarization_31(out, seed)
    return {
        "asr": str(build_whisper(out, seed)),
        "align": str(build_align_model(out, seed)),
        "diarization": str(build_diarization(out, seed)),
        "diarization31": str(hub / DIARIZATION_31_REPOS["pipeline"]),
        "hub": str(hub),
        "nltk_data": str(prepare_nltk_data(out / "nltk_data")),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_data/models/asr", help="output folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: %(default)s)")
    args = parser.parse_args(argv)
    paths = build_all(args.out, args.seed)
    for what, path in paths.items():
        n_bytes = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
        print(f"wrote {what:12s} {path} ({n_bytes / 1e6:.2f} MB)")
    print(
        "use with: python preprocess.py --backend whisperx --asr-model {asr} --align-model {align} "
        "--diar-model {diarization} --nltk-data {nltk_data}\n"
        "or, with the 3.1-shaped pipeline: ... --diar-model pyannote/speaker-diarization-3.1 "
        "--model-dir {hub}".format(**paths)
    )
    return paths


if __name__ == "__main__":
    main()
