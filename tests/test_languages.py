"""Non-ASCII text end to end, and a multilingual text/audio pair (tiny XLM-R + XLS-R) that trains and predicts.

A CSV corpus made of the tiny demo corpus's audio and utterances (conftest.demo_work), whose transcripts are
replaced by words with accents, Greek, Cyrillic and CJK characters and whose speakers have non-ASCII names,
goes through the CSV importer (labels.json), step 2's oracle backend (its ASR words are the transcript words),
step 3 (segments .json and .txt, the training cache), train.py (1 epoch, XLM-R text + XLS-R audio), evaluate.py
(predictions.json) and predict.py (emotions.json, .vtt) on a test dialog with --asr-json/--rttm. Known answer:
every word written is one of the transcripts' words, byte for byte, and each step keeps all of them. The
words are lower case without punctuation because the oracle backend's words are normalised for WER
(common/step2_oracle.transcript_words), as they are for IEMOCAP.
"""

import collections
import csv
import json
import shutil
import unicodedata
from pathlib import Path

import pytest
import torch
from conftest import steps_in_process

WORDS = ["café", "naïve", "東京", "ελλάδα", "straße", "niño", "привет", "你好", "über", "ça", "안녕하세요", "déjà"]
WORDS += [unicodedata.normalize("NFD", "résumé"), "हिन्दी"]  # combining marks: decomposed accents, vowel signs
NAMES = {"F": "José", "M": "美咲"}


def test_transcript_words_keep_combining_marks():
    """The oracle's words are lower case without punctuation; combining marks belong to the word."""
    from common.step2_oracle import transcript_words

    nfd = unicodedata.normalize("NFD", "Résumé")
    assert transcript_words(f"{nfd}, हिन्दी! Ελλάδα [LAUGHTER] WHAT'S up_x.") == [
        nfd.lower(),
        "हिन्दी",
        "ελλάδα",
        "what's",
        "up_x",
    ]
    assert len(nfd.lower()) == 8  # still decomposed: not normalised to NFC either


def utterance_text(i: int) -> str:
    """A different run of 2-4 of WORDS for each utterance i."""
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(2 + i % 3))


def words_of(texts) -> collections.Counter:
    return collections.Counter(w for t in texts for w in t.split())


@pytest.fixture(scope="module")
def unicode_work(demo_corpus, demo_work, tmp_path_factory):
    """(work dir: the CSV corpus's labels.json, step 2 oracle and step 3 aligned outputs; texts by utterance id)."""
    import align
    import corpus_from_csv
    import preprocess

    root, _ = demo_corpus
    labels = json.loads((demo_work / "labels.json").read_text(encoding="utf-8"))
    work = tmp_path_factory.mktemp("work_unicode")
    rows, texts = [], {}
    for name, d in labels["dialogs"].items():
        for u in d["utterances"]:
            texts["u" + u["id"]] = utterance_text(len(texts))
            rows.append(
                {
                    "audio": d["wav"],
                    "id": "u" + u["id"],
                    "start": repr(u["start"]),
                    "end": repr(u["end"]),
                    "speaker": NAMES[u["speaker"]],
                    "emotion": u["code"],
                    "text": texts["u" + u["id"]],
                    "session": d["session"],
                    "dialog": "call_" + name,
                }
            )
    with open(work / "corpus.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    corpus_from_csv.main([str(work / "corpus.csv"), "--work", str(work), "--audio-root", str(root)])
    preprocess.main(["--work", str(work), "--backend", "oracle"])
    align.main(["--work", str(work), "--pipe", "oracle", "--variant", "aligned"])
    return work, texts


def test_importer_and_step2_keep_the_text(unicode_work):
    work, texts = unicode_work
    labels = json.loads((work / "labels.json").read_text(encoding="utf-8"))
    utterances = [u for d in labels["dialogs"].values() for u in d["utterances"]]
    assert {u["id"]: u["text"] for u in utterances} == texts
    assert {u["speaker"] for u in utterances} == set(NAMES.values())  # the names, byte for byte
    for dialog, d in labels["dialogs"].items():
        asr = json.loads((work / "oracle" / "asr" / f"{dialog}.json").read_text(encoding="utf-8"))
        by_text = [s["text"] for s in asr["segments"]]
        assert by_text == [u["text"] for u in sorted(d["utterances"], key=lambda u: (u["start"], u["id"]))]
        assert [w["word"] for s in asr["segments"] for w in s["words"]] == " ".join(by_text).split()


def test_step3_segments_text_and_cache_keep_the_text(unicode_work):
    work, _ = unicode_work
    labels = json.loads((work / "labels.json").read_text(encoding="utf-8"))
    vdir = work / "oracle" / "aligned-p1.5"
    for dialog, d in labels["dialogs"].items():
        segs = json.loads((vdir / "segments" / f"{dialog}.json").read_text(encoding="utf-8"))["segments"]
        assert words_of(s["text"] for s in segs) == words_of(u["text"] for u in d["utterances"])  # every word kept
        transcript = (vdir / "segments" / f"{dialog}.txt").read_text(encoding="utf-8")
        assert all(s["text"] in transcript for s in segs)
        cache = torch.load(vdir / "cache" / f"{dialog}.pt", weights_only=True)
        assert [s["text"] for s in cache["segments"]] == [s["text"] for s in segs]


@pytest.fixture(scope="module")
def trained(unicode_work, tmp_path_factory):
    """A run of the tiny multilingual pair (XLM-R text, XLS-R audio), 1 epoch, and evaluate.py on it."""
    import evaluate
    import train
    from demo.build_ser_models import build_families

    work, _ = unicode_work
    models = build_families(tmp_path_factory.mktemp("multilingual_models"), ["xlm-roberta", "xls-r"])
    flags = ["--work", str(work), "--pipe", "oracle", "--epochs", "1", "--batch-size", "4", "--num-workers", "0"]
    run_dir = train.main(
        [*flags, "--run", "ml", "--text-model", models["xlm-roberta"], "--audio-model", models["xls-r"]]
        + ["--device", "cpu"]
    )
    evaluate.main(["--work", str(work), "--run", "ml", "--device", "cpu"])
    return work, Path(run_dir)


def test_multilingual_pair_trains_and_evaluate_keeps_the_text(trained):
    work, run_dir = trained
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    model = config["model"]
    assert Path(model["text_model"]).name == "xlm-roberta-tiny" and Path(model["audio_model"]).name == "xls-r-tiny"
    assert (run_dir / "checkpoint_best.pt").is_file()
    predictions = json.loads((run_dir / "predictions.json").read_text(encoding="utf-8"))["segments"]
    vdir = work / "oracle" / "aligned-p1.5"
    segs = {}
    for dialog in {p["dialog"] for p in predictions}:
        for s in json.loads((vdir / "segments" / f"{dialog}.json").read_text(encoding="utf-8"))["segments"]:
            segs[(dialog, s["id"])] = s["text"]
    assert predictions and all(p["text"] == segs[(p["dialog"], p["id"])] for p in predictions)
    assert set(words_of(p["text"] for p in predictions)) <= set(WORDS)


def test_predict_keeps_the_text(trained, demo_corpus, tmp_path):
    import predict

    work, run_dir = trained
    root, _ = demo_corpus
    labels = json.loads((work / "labels.json").read_text(encoding="utf-8"))
    dialog = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["split"]["test"][0]
    wav = tmp_path / f"{dialog}.wav"
    shutil.copy(root / labels["dialogs"][dialog]["wav"], wav)
    shutil.copy(work / "oracle" / "asr" / f"{dialog}.json", tmp_path / f"{dialog}.json")
    shutil.copy(work / "oracle" / "diarization" / f"{dialog}.rttm", tmp_path / f"{dialog}.rttm")
    out = tmp_path / "out"
    with steps_in_process():
        argv = [str(wav), "--run", str(run_dir), "--out", str(out), "--device", "cpu"]
        results = predict.main(argv + ["--asr-json", str(tmp_path / f"{dialog}.json"), "--rttm", str(tmp_path)])
    segments = results[dialog]["segments"]
    want = words_of(u["text"] for u in labels["dialogs"][dialog]["utterances"])
    assert words_of(s["text"] for s in segments) == want
    emotions = json.loads((out / f"{dialog}.emotions.json").read_text(encoding="utf-8"))
    assert [s["text"] for s in emotions["segments"]] == [s["text"] for s in segments]
    vtt = (out / f"{dialog}.vtt").read_text(encoding="utf-8")
    assert all(s["text"] in vtt for s in segments) and "東京" in vtt + " ".join(s["text"] for s in segments)
