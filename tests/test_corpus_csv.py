"""corpus_from_csv.py: a CSV corpus -> labels.json equal to step 1's, read by steps 2-3, bad rows named.

The CSV is written from step 1's labels.json of the tiny demo corpus (conftest.demo_work), so the
expected answer is known: the same utterances (ids, times, labels, sessions, wav paths, text,
.wdseg paths), and step 2 (oracle and simulated backends) gives byte-identical outputs on both.
"""

import csv
import json
from pathlib import Path

import pytest

import corpus_from_csv
from common import cli, formats
from common.cli import PipelineError

COLUMNS = ["audio", "id", "start", "end", "speaker", "emotion", "text", "session", "wdseg"]
UTT_KEYS = ("id", "start", "end", "speaker", "code", "label", "text", "wdseg")


def csv_rows(labels: dict) -> list[dict]:
    """step 1's labels.json -> one CSV row per utterance (times written with repr: exact round trip)."""
    return [
        {
            "audio": d["wav"],
            "id": u["id"],
            "start": repr(u["start"]),
            "end": repr(u["end"]),
            "speaker": u["speaker"],
            "emotion": u["code"],
            "text": u["text"],
            "session": d["session"],
            "wdseg": u["wdseg"] or "",
        }
        for d in labels["dialogs"].values()
        for u in d["utterances"]
    ]


def write_csv(path, rows, columns=COLUMNS):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def step1(demo_work):
    return json.loads((demo_work / "labels.json").read_text())


@pytest.fixture(scope="module")
def csv_work(demo_corpus, step1, tmp_path_factory):
    """A work dir whose labels.json comes from the CSV made of step 1's labels."""
    root, _ = demo_corpus
    work = tmp_path_factory.mktemp("csvwork")
    path = write_csv(work / "corpus.csv", csv_rows(step1))
    corpus_from_csv.main([str(path), "--work", str(work), "--audio-root", str(root)])
    return work


def test_same_utterances_as_step1(csv_work, step1):
    got = formats.load_labels(csv_work, require=("wav",))  # the schema check every step runs
    assert got["corpus"] == step1["corpus"]
    assert list(got["dialogs"]) == list(step1["dialogs"])
    assert len(got["dialogs"]) == 4
    for name, ref in step1["dialogs"].items():
        d = got["dialogs"][name]
        assert {k: d[k] for k in ("session", "kind", "scenario", "script", "wav")} == {
            k: ref[k] for k in ("session", "kind", "scenario", "script", "wav")
        }
        assert [{k: u[k] for k in UTT_KEYS} for u in d["utterances"]] == [
            {k: u[k] for k in UTT_KEYS} for u in ref["utterances"]
        ]
        assert [u["emotion"] for u in d["utterances"]] == [u["code"] for u in ref["utterances"]]
    for key in ("dialogs", "dialogs_per_session", "utterances", "target", "per_label", "target_per_session"):
        assert got["counts"][key] == step1["counts"][key]


@pytest.mark.parametrize("backend", ["oracle", "simulated"])
def test_steps_2_and_3_read_it(csv_work, demo_work, backend, tmp_path):
    """Step 2 on the CSV's labels.json writes the same ASR JSON and RTTMs as on step 1's; step 3 aligns them."""
    import shutil

    import align
    import preprocess

    outputs = {}
    for name, src in (("step1", demo_work), ("csv", csv_work)):
        work = tmp_path / name
        work.mkdir()
        shutil.copy(src / "labels.json", work / "labels.json")
        preprocess.main(["--work", str(work), "--backend", backend])
        outputs[name] = {
            p.relative_to(work / backend).as_posix(): p.read_bytes()
            for p in sorted((work / backend).glob("*/*"))
            if p.suffix in (".json", ".rttm")
        }
    assert len(outputs["csv"]) == 4 * 3  # asr + two RTTMs per dialog
    assert outputs["csv"] == outputs["step1"]
    if backend == "simulated":
        align.main(["--work", str(tmp_path / "csv"), "--pipe", backend, "--variant", "aligned"])
        segs = json.loads(
            (tmp_path / "csv" / backend / "aligned-p1.5" / "segments" / "Ses01F_impro01.json").read_text()
        )
        assert segs["session"] == 1 and segs["segments"]
        assert {s["label"] for s in segs["segments"]} <= {*formats.LABELS, None}


def test_other_corpus_speakers_sessions_and_map(demo_corpus, step1, tmp_path):
    """Speaker names kept as they are; words mapped by --emotion-map; default session 1."""
    root, _ = demo_corpus
    rows = csv_rows(step1)
    names = {"F": "alice", "M": "bob"}
    words = {"neu": "Neutral", "hap": "happy", "exc": "excited", "ang": "angry", "sad": "sad"}
    for r in rows:
        r["id"] = "u" + r["id"]  # no IEMOCAP '<dialog>_<F|M>' form
        r["speaker"] = names[r["speaker"]]
        r["emotion"] = words.get(r["emotion"], "frustrated")
    flags = [
        "--work",
        str(tmp_path),
        "--audio-root",
        str(root),
        "--emotion-map",
        "happy=hap,excited=hap,angry=ang,sad=sad,neutral=neu,frustrated=none",
    ]
    path = write_csv(tmp_path / "c.csv", rows, [c for c in COLUMNS if c not in ("session", "wdseg")])
    # dialogs named by their IEMOCAP wavs keep their names' sessions: the default session 1 is refused
    refused = r"c\.csv: dialog Ses05\w+: 'session' 1 but the IEMOCAP name says session 5"
    with pytest.raises(cli.PipelineError, match=refused):
        corpus_from_csv.main([str(path), *flags])
    for r in rows:  # any other names take the default session
        r["dialog"] = "call_" + Path(r["audio"]).stem
    path = write_csv(tmp_path / "c.csv", rows, [c for c in COLUMNS if c not in ("session", "wdseg")] + ["dialog"])
    data = corpus_from_csv.main([str(path), *flags])
    assert {d["session"] for d in data["dialogs"].values()} == {1}
    for name, ref in step1["dialogs"].items():
        got = data["dialogs"]["call_" + name]["utterances"]
        assert [u["label"] for u in got] == [u["label"] for u in ref["utterances"]]
        assert [u["speaker"] for u in got] == [names[u["speaker"]] for u in ref["utterances"]]
        assert not any("speaker_name" in u for u in got)
        assert all(u["code"] in formats.IEMOCAP_CODES for u in got)
    formats.load_labels(tmp_path)


# ---- bad input: one named error per class ------------------------------------------------------

BAD_CASES = {
    "missing column": (lambda rows: rows, {"drop": "emotion"}, r"c\.csv:1: missing column\(s\) emotion"),
    "non-finite time": (
        lambda rows: [dict(r, start="nan") if i == 2 else r for i, r in enumerate(rows)],
        {},
        r"c\.csv:4: start 'nan'; expected a finite number",
    ),
    "reversed times": (
        lambda rows: [dict(r, start=r["end"], end=r["start"]) if i == 2 else r for i, r in enumerate(rows)],
        {},
        r"c\.csv:4: .*expected 0 <= start < end",
    ),
    "unknown label": (
        lambda rows: [dict(r, emotion="bored") if i == 3 else r for i, r in enumerate(rows)],
        {},
        r"c\.csv:5: emotion 'bored' is not in the emotion map",
    ),
    "duplicate id": (
        lambda rows: rows[:4] + [dict(rows[5], id=rows[1]["id"])] + rows[6:],
        {},
        r"c\.csv:6: duplicate utterance id .*first at line 3",
    ),
    "missing audio": (
        lambda rows: [dict(r, audio="Session1/dialog/wav/nope.wav") if i == 0 else r for i, r in enumerate(rows)],
        {},
        r"c\.csv:2: audio file .*nope\.wav not found",
    ),
    "past the audio end": (
        lambda rows: [dict(r, end="1000.0") if i == 1 else r for i, r in enumerate(rows)],
        {},
        r"c\.csv:3: utterance .* ends at 1000\.000 s, after the end of the audio",
    ),
    "IEMOCAP id of another speaker": (
        lambda rows: [dict(r, speaker="X") if i == 4 else r for i, r in enumerate(rows)],
        {},
        r"c\.csv:6: utterance Ses\w+_[FM]\d+: speaker 'X' but the IEMOCAP id names speaker '[FM]'",
    ),
    "bad session": (
        lambda rows: [dict(r, session="two") if i == 0 else r for i, r in enumerate(rows)],
        {},
        r"c\.csv:2: session 'two'; expected a positive integer",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_rows_are_named(case, demo_corpus, step1, tmp_path):
    root, _ = demo_corpus
    edit, opts, message = BAD_CASES[case]
    columns = [c for c in COLUMNS if c != opts.get("drop")]
    path = write_csv(tmp_path / "c.csv", edit(csv_rows(step1)), columns)
    with pytest.raises(PipelineError, match=message):
        corpus_from_csv.main([str(path), "--work", str(tmp_path), "--audio-root", str(root)])
    assert not (tmp_path / "labels.json").exists()


def test_bad_emotion_map():
    assert corpus_from_csv.parse_emotion_map("happy=joy") == {"happy": "joy"}  # a class of the corpus's own
    with pytest.raises(PipelineError, match=r"--emotion-map: bad item 'happy=joy'.*one of hap, ang, sad, neu or none"):
        corpus_from_csv.parse_emotion_map("happy=joy", formats.LABELS)  # --labels names the classes
    assert corpus_from_csv.parse_emotion_map(None)["exc"] == "hap"
    assert corpus_from_csv.parse_emotion_map(None)["fru"] == "none"
    assert corpus_from_csv.parse_emotion_map(" Happy = hap ,other=none") == {"happy": "hap", "other": "none"}


# ---- more than two speakers ----------------------------------------------------------------------

PARTY = [  # (speaker, start, end, emotion, text) of one three-party dialog; Joey speaks twice in a row
    ("Ross", 0.5, 2.5, "neutral", "we were on a break"),
    ("Rachel", 3.0, 5.0, "angry", "no we were not"),
    ("Joey", 5.5, 7.0, "happy", "how you doin"),
    ("Joey", 7.2, 8.4, "happy", "pizza is here"),
    ("Rachel", 9.0, 11.0, "sad", "I miss the old days"),
    ("Ross", 11.5, 13.5, "neutral", "me too honestly"),
    ("Joey", 14.0, 15.5, "other", "anyone want the last slice"),
]


@pytest.fixture(scope="module")
def party_work(tmp_path_factory):
    """A CSV corpus of two three-party dialogs (wavs written with soundfile) -> labels.json."""
    import numpy as np
    import soundfile as sf

    root = tmp_path_factory.mktemp("party")
    rows, rng = [], np.random.default_rng(0)
    for k, dialog in enumerate(("friends_s01e01", "friends_s01e02"), 1):
        sf.write(root / f"{dialog}.wav", (0.01 * rng.standard_normal(16000 * 17)).astype("float32"), 16000)
        for i, (spk, start, end, emotion, text) in enumerate(PARTY):
            rows.append(
                dict(audio=f"{dialog}.wav", id=f"{dialog}_{i:02d}", start=start, end=end, speaker=spk,
                     emotion=emotion, text=text, session=k)
            )  # fmt: skip
    columns = ["audio", "id", "start", "end", "speaker", "emotion", "text", "session"]
    path = write_csv(root / "party.csv", rows, columns)
    emotion_map = "neutral=neu,angry=ang,happy=hap,sad=sad,other=none"
    corpus_from_csv.main([str(path), "--work", str(root / "work"), "--emotion-map", emotion_map])
    return root / "work"


def test_three_party_csv_keeps_its_speakers(party_work):
    labels = formats.load_labels(party_work, require=("wav",))
    assert list(labels["dialogs"]) == ["friends_s01e01", "friends_s01e02"]
    for d in labels["dialogs"].values():
        assert [u["speaker"] for u in d["utterances"]] == [p[0] for p in PARTY]
        assert [u["label"] for u in d["utterances"]] == ["neu", "ang", "hap", "hap", "sad", "neu", None]


@pytest.mark.parametrize("backend", ["oracle", "simulated"])
def test_three_party_steps_2_and_3(party_work, backend, tmp_path):
    """Steps 2 and 3 on the three-party corpus: three diarization speakers per dialog, and segments under three
    speakers whose reference speakers are the corpus's three names."""
    import shutil

    import align
    import preprocess

    work = tmp_path / "w"
    work.mkdir()
    shutil.copy(party_work / "labels.json", work / "labels.json")
    preprocess.main(["--work", str(work), "--backend", backend])
    for dialog in ("friends_s01e01", "friends_s01e02"):
        turns = formats.read_rttm(work / backend / "diarization" / f"{dialog}.rttm")
        assert {t[2] for t in turns} == {"SPEAKER_00", "SPEAKER_01", "SPEAKER_02"}
        if backend == "oracle":  # one turn per utterance, labelled in order of first speech
            order = {"Ross": "SPEAKER_00", "Rachel": "SPEAKER_01", "Joey": "SPEAKER_02"}
            assert turns == [(p[1], p[2], order[p[0]]) for p in PARTY]
    align.main(["--work", str(work), "--pipe", backend, "--variant", "aligned", "--max-pause", "1.5"])
    for dialog in ("friends_s01e01", "friends_s01e02"):
        segs = json.loads((work / backend / "aligned-p1.5" / "segments" / f"{dialog}.json").read_text())["segments"]
        assert len({s["speaker"] for s in segs}) == 3
        assert {s["ref_speaker"] for s in segs} == {"Ross", "Rachel", "Joey"}
        if backend == "oracle":  # Joey's two utterances (0.2 s apart) form one turn; the others one each
            assert [s["ref_speaker"] for s in segs] == ["Ross", "Rachel", "Joey", "Rachel", "Ross", "Joey"]
            assert [s["label"] for s in segs] == ["neu", "ang", "hap", "sad", "neu", None]
            # Joey's turn: 2.7 s of labelled speech in 2.9 s (the 0.2 s pause has no label); "other" has none
            assert [s["purity"] for s in segs] == [1.0, 1.0, round(2.7 / 2.9, 3), 1.0, 1.0, 0.0]


def test_a_map_keeps_any_set_of_classes(demo_corpus, step1, tmp_path):
    """--emotion-map with classes of the corpus's own: labels.json lists them (the map's order, or --labels');
    every utterance gets its class; Wu et al.'s map gives exactly their set, named; the default stays the paper's."""
    root, _ = demo_corpus
    path = write_csv(tmp_path / "c.csv", csv_rows(step1))
    own = "neu=calm,hap=joy,exc=joy,sad=sorrow,ang=rage,fru=rage,sur=none,fea=none,dis=none,oth=none,xxx=none"
    runs = {
        "own": ["--emotion-map", own],
        "ordered": ["--emotion-map", own, "--labels", "joy,rage,sorrow,calm,fear"],
        "wu6": [
            "--emotion-map",
            "neu=neu,hap=hap,exc=hap,sad=sad,ang=ang,fru=oth,sur=oth,fea=oth,dis=oth,oth=oth,xxx=xxx",
        ],
        "default": [],
    }
    got = {}
    for name, flags in runs.items():
        corpus_from_csv.main([str(path), "--work", str(tmp_path / name), "--audio-root", str(root), *flags])
        got[name] = formats.load_labels(tmp_path / name)
    assert got["own"]["labels"] == ["calm", "joy", "sorrow", "rage"] and "label_set" not in got["own"]
    assert got["ordered"]["labels"] == ["joy", "rage", "sorrow", "calm", "fear"]
    assert got["wu6"]["labels"] == ["hap", "sad", "ang", "neu", "oth", "xxx"] and got["wu6"]["label_set"] == "wu6"
    assert got["default"]["labels"] == list(formats.LABELS) and "label_set" not in got["default"]
    mine = dict(item.split("=") for item in own.split(","))
    for d, info in got["own"]["dialogs"].items():
        for u, u1 in zip(info["utterances"], step1["dialogs"][d]["utterances"]):
            assert u["label"] == (None if mine[u1["code"]] == "none" else mine[u1["code"]])
            assert (
                got["wu6"]["dialogs"][d]["utterances"][[x["id"] for x in info["utterances"]].index(u["id"])]["label"]
                == formats.LABEL_SETS["wu6"]["codes"][u1["code"]]
            )
    assert got["own"]["counts"]["per_label"]["rage"] == sum(
        u["code"] in ("ang", "fru") for d in step1["dialogs"].values() for u in d["utterances"]
    )
    for flags, message in (
        (
            ["--emotion-map", own, "--labels", "joy,rage"],
            "bad item 'neu=calm'; expected LABEL=CLASS with CLASS one of joy, rage or none",
        ),
        (["--emotion-map", own, "--labels", "joy,joy"], "expected distinct class names"),
        (["--emotion-map", "neu=miss,hap=joy"], "'miss' cannot be a class"),
        (["--emotion-map", "neu=calm,hap=joy", "--labels", "calm,joy,miss"], "'miss' cannot be a class"),
        (["--emotion-map", "neu=ca lm"], "expected LABEL=CLASS with CLASS a class name or none"),
    ):
        with pytest.raises(PipelineError, match=message):
            corpus_from_csv.main([str(path), "--work", str(tmp_path / "bad"), "--audio-root", str(root), *flags])
