"""Step 1 (iemo_lab_with_timestamps.py) on hand-written fixtures in IEMOCAP's on-disk format.

tests/fixtures/iemocap_mini holds three dialogs: Session1 Ses01F_impro01 (a "%" header, evaluator
lines, blocks out of time order, fru/xxx/exc codes, an XX id, a non-"Ses" line, [BREATHING] and
[LAUGHTER] markers, a cp1252 apostrophe byte, one utterance without .wdseg), Session1
Ses01F_script01_1 (CRLF line ends, no ForcedAlignment folder, no dialog wav, a transcript line
without an EmoEvaluation entry) and Session3 Ses03M_impro05a (irregular name, XX id). A hidden
"._" file and a Categorical/ subfolder sit in EmoEvaluation/ as in the real release.
"""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

import iemo_lab_with_timestamps as step1
from common import formats
from common.cli import PipelineError
from common.formats import load_labels

MINI = Path(__file__).resolve().parent / "fixtures" / "iemocap_mini"
FA1 = "Session1/sentences/ForcedAlignment/Ses01F_impro01"
FA3 = "Session3/sentences/ForcedAlignment/Ses03M_impro05a"


def utt(id, start, end, code, label, text, wdseg):
    return {
        "id": id,
        "start": start,
        "end": end,
        "speaker": id.rsplit("_", 1)[1][0],
        "code": code,
        "label": label,
        "text": text,
        "wdseg": wdseg,
    }


EXPECTED_DIALOGS = {
    "Ses01F_impro01": {
        "session": 1,
        "kind": "impro",
        "scenario": "impro01",
        "script": None,
        "wav": "Session1/dialog/wav/Ses01F_impro01.wav",
        "utterances": [
            utt("Ses01F_impro01_F000", 6.2901, 8.2357, "neu", "neu", "Excuse me.", f"{FA1}/Ses01F_impro01_F000.wdseg"),
            utt(
                "Ses01F_impro01_M000",
                10.01,
                11.3925,
                "fru",
                None,
                "Do you have your forms?",
                f"{FA1}/Ses01F_impro01_M000.wdseg",
            ),
            utt("Ses01F_impro01_M001", 12.1, 14.0, "xxx", None, "[BREATHING] I don\u2019t know.", None),
            utt(
                "Ses01F_impro01_F001",
                14.8872,
                18.0175,
                "exc",
                "hap",
                "Yes. [LAUGHTER] I have them right here.",
                f"{FA1}/Ses01F_impro01_F001.wdseg",
            ),
            utt(
                "Ses01F_impro01_M002",
                19.29,
                22.0,
                "ang",
                "ang",
                "You're in the wrong line.",
                f"{FA1}/Ses01F_impro01_M002.wdseg",
            ),
        ],
    },
    "Ses01F_script01_1": {
        "session": 1,
        "kind": "script",
        "scenario": "script01_1",
        "script": "script01",
        "wav": "Session1/dialog/wav/Ses01F_script01_1.wav",
        "utterances": [
            utt("Ses01F_script01_1_F000", 1.5, 3.25, "hap", "hap", "Oh, it's a beautiful day.", None),
            utt("Ses01F_script01_1_M000", 3.6, 5.1, "sad", "sad", "Is it?", None),
            utt("Ses01F_script01_1_F001", 5.5, 7.0, "sur", None, "What?", None),
        ],
    },
    "Ses03M_impro05a": {
        "session": 3,
        "kind": "impro",
        "scenario": "impro05a",
        "script": None,
        "wav": "Session3/dialog/wav/Ses03M_impro05a.wav",
        "utterances": [
            utt("Ses03M_impro05a_M000", 2.0, 4.5, "neu", "neu", "Hi. [LAUGHTER]", f"{FA3}/Ses03M_impro05a_M000.wdseg"),
            utt("Ses03M_impro05a_F000", 5.0, 6.25, "hap", "hap", "Hello there.", f"{FA3}/Ses03M_impro05a_F000.wdseg"),
        ],
    },
}


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory):
    """Run step 1's CLI once on the fixture corpus -> labels.json as read back by common.formats.load_labels."""
    work = tmp_path_factory.mktemp("work")
    step1.main(["--iemocap", str(MINI), "--work", str(work)])
    return load_labels(work)


def corpus_copy(tmp_path):
    root = tmp_path / "IEMOCAP_full_release"
    shutil.copytree(MINI, root)
    return root


def edit(path, old, new):
    """Replace one exact occurrence of old in a fixture copy; return the 1-based line it is on."""
    data = path.read_bytes()
    old_b, new_b = old.encode("latin-1"), new.encode("latin-1")
    assert data.count(old_b) == 1, f"{old!r} must occur once in {path}"
    path.write_bytes(data.replace(old_b, new_b))
    return data[: data.index(old_b)].count(b"\n") + 1


# ---------------------------------------------------------------------------------------------
# Known answers on the fixture corpus
# ---------------------------------------------------------------------------------------------


def test_labels_json_dialogs_exact(mini_run):
    assert mini_run["corpus"] == str(MINI)
    assert mini_run["labels"] == ["hap", "ang", "sad", "neu"]
    assert list(mini_run["dialogs"]) == sorted(EXPECTED_DIALOGS)
    assert mini_run["dialogs"] == EXPECTED_DIALOGS


def test_labels_json_counts_exact(mini_run):
    c = mini_run["counts"]
    assert c["dialogs"] == 3 and c["dialogs_per_session"] == {"1": 2, "3": 1}
    assert c["utterances"] == 10 and c["target"] == 7
    assert c["per_label"] == {"hap": 3, "ang": 1, "sad": 1, "neu": 2}
    assert c["per_code"] == {"neu": 2, "hap": 2, "exc": 1, "sad": 1, "ang": 1, "fru": 1, "sur": 1, "xxx": 1}
    assert c["target_per_code"] == {"neu": 2, "hap": 2, "exc": 1, "sad": 1, "ang": 1}
    assert c["target_per_session"] == {"1": 5, "3": 2}
    assert c["per_session"] == {
        "1": {"utterances": 8, "target": 5, "hap": 2, "ang": 1, "sad": 1, "neu": 1},
        "3": {"utterances": 2, "target": 2, "hap": 1, "ang": 0, "sad": 0, "neu": 1},
    }
    assert c["skipped"] == {step1.SKIP_HIDDEN: 1, step1.SKIP_NOT_UTTERANCE: 1, step1.SKIP_XX: 2, step1.SKIP_NO_EMO: 1}
    assert c["missing"] == {"wdseg": 4, "dialog_wav": 1}
    assert c["missing_wdseg_ids"] == [
        "Ses01F_impro01_M001",
        "Ses01F_script01_1_F000",
        "Ses01F_script01_1_M000",
        "Ses01F_script01_1_F001",
    ]
    assert c["missing_wav_dialogs"] == ["Ses01F_script01_1"]
    assert c["transcript_times_differ"] == 0
    assert c["text_encodings"] == {"cp1252": 1, "utf-8": 5}
    std = c["standard"]
    assert std["applies"] is False and std["differences"] == []
    assert std["expected"] == json.loads(json.dumps(step1.IEMOCAP_STANDARD_COUNTS))


def test_main_prints_counts_and_what_it_wrote(tmp_path, capsys):
    step1.main(["--iemocap", str(MINI), "--work", str(tmp_path)])
    out = capsys.readouterr().out
    assert f"read {MINI}: 3 dialogs, 10 labelled utterances (7 with a 4-class label)" in out
    assert "     all        3      10       7      3      1      1      2" in out
    assert "raw codes: neu 2, hap 2, exc 1, sad 1, ang 1, fru 1, sur 1, xxx 1" in out
    assert f"       2  {step1.SKIP_XX}" in out
    assert "missing .wdseg (wdseg null): 4" in out and "missing dialog wavs (step 2 will need them): 1" in out
    assert "standard IEMOCAP counts: comparison does not apply" in out
    assert f"wrote {tmp_path / 'labels.json'}: 3 dialogs, 10 utterances" in out


def test_help_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as e:
        step1.main(["--help"])
    assert e.value.code == 0 and "--expect-standard" in capsys.readouterr().out


def test_parse_emo_evaluation_file_order_and_vad():
    entries = step1.parse_emo_evaluation(MINI / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt")
    assert [e["id"][-4:] for e in entries] == ["F000", "M000", "F001", "M001", "M002"]  # as in the file
    assert entries[0] == {
        "id": "Ses01F_impro01_F000",
        "start": 6.2901,
        "end": 8.2357,
        "code": "neu",
        "vad": [2.5, 2.5, 2.5],
    }
    assert entries[1]["vad"] == [2.0, 3.5, 3.0]


def test_parse_transcriptions_skips_with_line_numbers():
    utts, skipped = step1.parse_transcriptions(MINI / "Session1/dialog/transcriptions/Ses01F_impro01.txt")
    assert skipped == [(3, step1.SKIP_XX), (6, step1.SKIP_NOT_UTTERANCE)]
    assert list(utts) == [
        "Ses01F_impro01_F000",
        "Ses01F_impro01_M000",
        "Ses01F_impro01_M001",
        "Ses01F_impro01_F001",
        "Ses01F_impro01_M002",
    ]
    assert utts["Ses01F_impro01_M001"] == {"start": 12.1, "end": 14.0, "text": "[BREATHING] I don\u2019t know."}


def test_parse_wdseg_raw_rows():
    rows = formats.parse_wdseg(MINI / FA1 / "Ses01F_impro01_F000.wdseg")
    assert rows == [
        (0, 10, -52010, "<s>"),
        (11, 45, -194425, "EXCUSE"),
        (46, 60, -88315, "<sil>"),
        (61, 95, -160114, "++BREATHING++"),
        (96, 120, -101232, "WHAT(2)"),
        (121, 150, -70712, "ME"),
        (151, 194, -40000, "</s>"),
    ]


# ---------------------------------------------------------------------------------------------
# The standard IEMOCAP counts
# ---------------------------------------------------------------------------------------------


def test_standard_counts_constant_is_consistent():
    s = step1.IEMOCAP_STANDARD_COUNTS
    assert sum(s["per_label"].values()) == s["target"] == sum(s["target_per_session"].values()) == 5531
    assert s["target_per_code"]["hap"] + s["target_per_code"]["exc"] == s["per_label"]["hap"]
    assert sum(s["dialogs_per_session"].values()) == s["dialogs"]


def _standard_like_counts():
    s = json.loads(json.dumps(step1.IEMOCAP_STANDARD_COUNTS))
    return {**s, "missing": {"wdseg": s.pop("missing_wdseg"), "dialog_wav": 0}}


def test_standard_comparison_reports_each_difference():
    counts = _standard_like_counts()
    same = step1.compare_with_standard(counts, None)
    assert same["applies"] is True and same["differences"] == []
    counts["per_label"]["sad"] = 1083
    counts["target_per_session"]["5"] = 1240
    counts["missing"]["wdseg"] = 3
    diff = step1.compare_with_standard(counts, None)["differences"]
    assert diff == [
        {"count": "per_label.sad", "expected": 1084, "got": 1083},
        {"count": "target_per_session.5", "expected": 1241, "got": 1240},
        {"count": "missing_wdseg", "expected": 2, "got": 3},
    ]
    assert step1.compare_with_standard(counts, False)["applies"] is False


def test_expect_standard_forced_on_small_corpus(tmp_path, capsys):
    data = step1.main(["--iemocap", str(MINI), "--work", str(tmp_path), "--expect-standard", "yes"])
    diffs = {d["count"]: (d["expected"], d["got"]) for d in data["counts"]["standard"]["differences"]}
    assert diffs["dialogs"] == (151, 3)
    assert diffs["per_label.neu"] == (1708, 2) and diffs["dialogs_per_session.2"] == (30, 0)
    assert diffs["missing_wdseg"] == (2, 4)
    assert f"standard IEMOCAP counts: {len(diffs)} differences" in capsys.readouterr().out


def test_full_release_shape_triggers_the_comparison(tmp_path, capsys):
    """151 dialogs in Sessions 1-5 (one neu utterance each): auto mode compares and reports."""
    for s, n in step1.IEMOCAP_STANDARD_COUNTS["dialogs_per_session"].items():
        for j in range(n):
            dialog = f"Ses0{s}F_impro{j:02d}"
            for sub, line in (
                ("EmoEvaluation", f"[1.0000 - 2.0000]\t{dialog}_F000\tneu\t[2.5, 2.5, 2.5]\n"),
                ("transcriptions", f"{dialog}_F000 [001.0000-002.0000]: Hello.\n"),
            ):
                path = tmp_path / f"Session{s}/dialog/{sub}/{dialog}.txt"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(line)
    data = step1.main(["--iemocap", str(tmp_path), "--work", str(tmp_path / "work")])
    std = data["counts"]["standard"]
    assert std["applies"] is True
    diffs = {d["count"]: (d["expected"], d["got"]) for d in std["differences"]}
    assert "dialogs" not in diffs and "dialogs_per_session.3" not in diffs
    assert diffs["utterances"] == (10039, 151) and diffs["per_label.neu"] == (1708, 151)
    assert diffs["target_per_session.5"] == (1241, 31) and diffs["missing_wdseg"] == (2, 151)
    assert f"standard IEMOCAP counts: {len(diffs)} differences" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Malformed input -> PipelineError naming file and line
# ---------------------------------------------------------------------------------------------

EMO = "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"
TRANS = "Session1/dialog/transcriptions/Ses01F_impro01.txt"


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("[6.2901 - 8.2357]\tSes01F_impro01_F000", "[6.2901 8.2357]\tSes01F_impro01_F000", "expected a block header"),
        ("Ses01F_impro01_F000\tneu\t", "Ses01F_impro01_F000 neu\t", "expected a block header"),
        ("Ses01F_impro01_M000\tfru", "Ses01F_impro01_M000\tfrustrated", "expected an emotion code"),
        ("[19.2900 - 22.0000]", "[22.0000 - 22.0000]", "expected end > start"),
        ("Ses01F_impro01_M002\tang", "Ses01F_impro02_M002\tang", "expected an utterance id 'Ses01F_impro01_"),
        ("Ses01F_impro01_M002\tang", "Ses01F_impro01_MXX2\tang", "expected a labelled utterance id"),
        ("[4.0000, 3.5000, 3.0000]", "[4.0000, 3.5000]", "expected three numbers"),
        ("Ses01F_impro01_M002\tang", "Ses01F_impro01_F000\tang", "duplicate utterance Ses01F_impro01_F000"),
        ("\n\n[10.0100", "\n\nC-E2:\tNeutral;\t()\n[10.0100", "expected a block header"),
    ],
)
def test_malformed_emo_evaluation(tmp_path, old, new, message):
    root = corpus_copy(tmp_path)
    line = edit(root / EMO, old, new)
    if old.startswith("\n\n"):
        line += 2  # the edit point is the blank line before the block
    with pytest.raises(PipelineError, match="expected|duplicate") as e:
        step1.build_labels(root)
    assert f"{root / EMO}:{line}: " in str(e.value) and message in str(e.value)


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("[006.2901-008.2357]: Excuse", "[006.2901-008.2357] Excuse", "expected '<id> [start-end]: text'"),
        (
            "Ses01F_impro01_M000 [010.0100-011.3925]",
            "Ses01F_impro01_M000 [10.01 - 11.39]",
            "expected '<id> [start-end]",
        ),
        ("Ses01F_impro01_M002 [019", "Ses01F_impro01X_M002 [019", "expected an utterance id 'Ses01F_impro01_"),
        ("Ses01F_impro01_M002 [019", "Ses01F_impro01_F000 [019", "duplicate utterance"),
    ],
)
def test_malformed_transcriptions(tmp_path, old, new, message):
    root = corpus_copy(tmp_path)
    line = edit(root / TRANS, old, new)
    with pytest.raises(PipelineError) as e:
        step1.build_labels(root)
    assert f"{root / TRANS}:{line}: " in str(e.value) and message in str(e.value)


def test_label_without_transcript_line_names_both_files(tmp_path):
    root = corpus_copy(tmp_path)
    edit(root / TRANS, "Ses01F_impro01_F001 [014.8872-018.0175]: Yes. [LAUGHTER] I have them right here.\n", "")
    with pytest.raises(PipelineError, match="Ses01F_impro01_F001 has a label but no line in") as e:
        step1.build_labels(root)
    assert str(root / EMO) in str(e.value) and str(root / TRANS) in str(e.value)


WDSEG = (
    " SFrm  EFrm    SegAScr Word\n     0    10     -52010 <s>\n    11    45    -194425 WHAT(2)\n"
    " Total score:    -246435\n"
)


@pytest.mark.parametrize(
    "old, new, line, message",
    [
        (" SFrm  EFrm    SegAScr Word", "SFrm EFrm Word", 1, "expected the header"),
        (
            "    11    45    -194425 WHAT(2)",
            "    11    45    WHAT(2)",
            3,
            "expected '<start frame> <end frame> <score> <word>'",
        ),
        ("    11    45", "    11   4.5", 3, "expected '<start frame>"),
        ("    11    45", "    46    45", 3, "expected 0 <= start frame <= end frame"),
        (" Total score:    -246435\n", "", 3, "expected a 'Total score: N' line after this line, got end of file"),
        (
            " Total score:    -246435\n",
            " Total score:    -246435\n     0    10     -52010 <s>\n",
            5,
            "expected nothing after",
        ),
        (" Total score:    -246435", " Total score: unknown", 4, "expected 'Total score: <integer>'"),
    ],
)
def test_malformed_wdseg(tmp_path, old, new, line, message):
    path = tmp_path / "Ses01F_impro01_F000.wdseg"
    path.write_text(WDSEG)
    assert formats.parse_wdseg(path)[1] == (11, 45, -194425, "WHAT(2)")
    edit(path, old, new)
    with pytest.raises(PipelineError) as e:
        formats.parse_wdseg(path)
    assert f"{path}:{line}: " in str(e.value) and message in str(e.value)


def test_wdseg_without_rows_or_empty(tmp_path):
    path = tmp_path / "x.wdseg"
    path.write_text(" SFrm  EFrm    SegAScr Word\n Total score: 0\n")
    with pytest.raises(PipelineError, match="no word rows"):
        formats.parse_wdseg(path)
    path.write_text("\n")
    with pytest.raises(PipelineError, match="x.wdseg: expected the header .* got an empty file"):
        formats.parse_wdseg(path)


def test_xx_line_is_skipped_whatever_follows_its_id(tmp_path):
    path = tmp_path / "Ses03M_impro05a.txt"
    path.write_text("Ses03M_impro05a_FXX0: Mm.\nSes03M_impro05a_F000 [005.0000-006.2500]:\n")
    utts, skipped = step1.parse_transcriptions(path)
    assert skipped == [(1, step1.SKIP_XX)]
    assert utts == {"Ses03M_impro05a_F000": {"start": 5.0, "end": 6.25, "text": ""}}


# ---------------------------------------------------------------------------------------------
# Missing or misplaced corpus parts -> clear errors
# ---------------------------------------------------------------------------------------------


def test_missing_root_and_empty_corpus(tmp_path):
    with pytest.raises(PipelineError, match="IEMOCAP root not found"):
        step1.build_labels(tmp_path / "nowhere")
    with pytest.raises(PipelineError, match="no Session<N> folders"):
        step1.build_labels(tmp_path)
    (tmp_path / "Session2" / "dialog" / "EmoEvaluation").mkdir(parents=True)
    with pytest.raises(PipelineError, match="no dialogs found .*empty corpus"):
        step1.build_labels(tmp_path)


def test_missing_emo_folder_and_transcription_file(tmp_path):
    root = corpus_copy(tmp_path)
    (root / "Session1/dialog/transcriptions/Ses01F_script01_1.txt").unlink()
    with pytest.raises(PipelineError, match="Ses01F_script01_1.txt: transcription file not found"):
        step1.build_labels(root)
    shutil.rmtree(root / "Session3/dialog/EmoEvaluation")
    with pytest.raises(PipelineError, match="Session3/dialog/EmoEvaluation: EmoEvaluation folder not found"):
        step1.build_labels(root)


def test_bad_dialog_name_and_wrong_session_folder(tmp_path):
    root = corpus_copy(tmp_path)
    emo3 = root / "Session3/dialog/EmoEvaluation"
    shutil.move(emo3 / "Ses03M_impro05a.txt", emo3 / "notes.txt")
    with pytest.raises(PipelineError, match="notes.txt: expected a dialog name"):
        step1.build_labels(root)
    shutil.move(emo3 / "notes.txt", root / "Session1/dialog/EmoEvaluation/Ses03M_impro05a.txt")
    with pytest.raises(PipelineError, match="dialog of session 3 inside Session1"):
        step1.build_labels(root)


def test_dialog_info_irregular_names():
    assert step1.dialog_info("Ses05M_script01_1b", "x") == {
        "session": 5,
        "kind": "script",
        "scenario": "script01_1b",
        "script": "script01",
    }
    assert step1.dialog_info("Ses03M_impro08b", "x")["scenario"] == "impro08b"
    assert step1.dialog_info("Ses02F_script03_2", "x")["script"] == "script03"


# ---------------------------------------------------------------------------------------------
# The demo corpus goes through the same parser
# ---------------------------------------------------------------------------------------------

HAVE_DEMO = importlib.util.find_spec("demo.make_corpus") is not None


@pytest.mark.skipif(not HAVE_DEMO, reason="demo/make_corpus.py not present yet")
def test_demo_corpus_matches_its_ground_truth(demo_corpus, demo_work):
    """Every ground-truth utterance of the generated corpus comes out of step 1 unchanged."""
    _, truth = demo_corpus
    labels = load_labels(demo_work)
    assert sorted(labels["dialogs"]) == sorted(truth["dialogs"])
    keys = ("id", "start", "end", "speaker", "code", "label", "text")
    for name, t in truth["dialogs"].items():
        d = labels["dialogs"][name]
        assert {k: d[k] for k in ("session", "kind", "scenario", "script")} == {
            k: t[k] for k in ("session", "kind", "scenario", "script")
        }
        # XX utterances (code None in the ground truth) are spoken but never evaluated: not in labels.json
        expected = sorted(
            ({k: u[k] for k in keys} for u in t["utterances"] if u["code"] is not None),
            key=lambda u: (u["start"], u["id"]),
        )
        assert [{k: u[k] for k in keys} for u in d["utterances"]] == expected
        assert all(u["wdseg"] is not None for u in d["utterances"])
    counts = labels["counts"]
    truth_utts = [u for t in truth["dialogs"].values() for u in t["utterances"]]
    assert counts["utterances"] == sum(u["code"] is not None for u in truth_utts) > 0
    assert counts["skipped"][step1.SKIP_XX] == sum(u["code"] is None for u in truth_utts) > 0
    assert counts["missing"] == {"wdseg": 0, "dialog_wav": 0}
    assert counts["standard"]["applies"] is False


# ---------------------------------------------------------------------------------------------
# Issue 12: numbers a reader must not trust (regression tests)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rel, old, new, message",
    [
        (
            "EMO",
            "[19.2900 - 22.0000]",
            "[19.2900 - " + "9" * 400 + ".0]",
            "expected times in seconds, got [19.2900 - 9999",
        ),
        ("EMO", "[4.0000, 3.5000, 3.0000]", "[4.0000, 3.5000, " + "9" * 400 + "]", "expected three numbers"),
        ("TRANS", "[019.2900-022.0000]", "[019.2900-" + "9" * 400 + "]", "expected times in seconds with start <= end"),
        (
            "TRANS",
            "[019.2900-022.0000]",
            "[022.0000-019.2900]",
            "expected times in seconds with start <= end, got [022.0000-019.2900]",
        ),
    ],
)
def test_huge_or_reversed_times_are_named_errors(tmp_path, rel, old, new, message):
    """A 400-digit number parses as float infinity: it must not reach labels.json."""
    root = corpus_copy(tmp_path)
    path = root / {"EMO": EMO, "TRANS": TRANS}[rel]
    line = edit(path, old, new)
    with pytest.raises(PipelineError) as e:
        step1.build_labels(root)
    assert f"{path}:{line}: " in str(e.value) and message in str(e.value), str(e.value)


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("    11    45", "    11    " + "4" * 400, "a number of 400 digits; expected frame numbers up to 60000"),
        ("    11    45", "    11    60001", "end frame 60001 is 600 s into the utterance; expected at most 60000"),
    ],
)
def test_wdseg_frame_numbers_are_bounded(tmp_path, old, new, message):
    """A .wdseg frame number of 400 digits crashed step 2 (OverflowError converting it to seconds)."""
    path = tmp_path / "Ses01F_impro01_F000.wdseg"
    path.write_text(WDSEG)
    edit(path, old, new)
    with pytest.raises(PipelineError) as e:
        formats.parse_wdseg(path)
    assert f"{path}:3: " in str(e.value) and message in str(e.value), str(e.value)


# ---------------------------------------------------------------------------------------------
# --label-set wu6: Wu, Zhang & Woodland's six classes
# ---------------------------------------------------------------------------------------------

# Their mapping, written out here on its own (W-Wu/sTEER data_prep/iemo_lab_AER-cat.py): exc -> hap; fru, sur,
# fea, dis, oth -> oth; xxx stays; every labelled utterance has a class.
WU_CLASS = {"neu": "neu", "hap": "hap", "exc": "hap", "sad": "sad", "ang": "ang", "xxx": "xxx"}
WU_CLASS.update({code: "oth" for code in ("fru", "sur", "fea", "dis", "oth")})


@pytest.mark.parametrize("corpus", ["mini", "demo"])
def test_wu6_puts_every_utterance_in_wus_class(tmp_path, corpus, demo_corpus):
    root = MINI if corpus == "mini" else demo_corpus[0]
    step1.main(["--iemocap", str(root), "--work", str(tmp_path / "wu6"), "--label-set", "wu6"])
    step1.main(["--iemocap", str(root), "--work", str(tmp_path / "four")])
    wu6, four = load_labels(tmp_path / "wu6"), load_labels(tmp_path / "four")
    assert wu6["labels"] == ["hap", "sad", "ang", "neu", "oth", "xxx"] and wu6["label_set"] == "wu6"
    assert "label_set" not in four and four["labels"] == ["hap", "ang", "sad", "neu"]  # the default as before
    assert formats.labels_of(wu6) == tuple(formats.LABEL_SETS["wu6"]["labels"])
    codes = set()
    for d, info in wu6["dialogs"].items():
        assert [u["id"] for u in info["utterances"]] == [u["id"] for u in four["dialogs"][d]["utterances"]]
        for u, u4 in zip(info["utterances"], four["dialogs"][d]["utterances"]):
            assert u["label"] == WU_CLASS[u["code"]], u
            assert u4["label"] == (u["label"] if u["code"] not in ("fru", "sur", "fea", "dis", "oth", "xxx") else None)
            codes.add(u["code"])
    assert {"fru", "exc"} <= codes if corpus == "mini" else {"fru", "oth", "hap", "sad", "neu"} <= codes
    c = wu6["counts"]
    assert c["target"] == c["utterances"] == sum(c["per_label"].values())
    assert list(c["per_label"]) == wu6["labels"]


def test_wu6_standard_counts_are_wus_and_consistent():
    """Wu et al.'s printed counts of the full release, and their sums: 10,039 utterances, each in a class; the
    codes' counts add up to each class's through the set's map; the 4-class set's classes have the same counts."""
    s = step1.WU6_STANDARD_COUNTS
    assert s["per_label"] == {"xxx": 2507, "oth": 2001, "neu": 1708, "hap": 1636, "ang": 1103, "sad": 1084}
    assert sum(s["per_label"].values()) == s["target"] == s["utterances"] == 10039
    assert sum(s["target_per_code"].values()) == 10039
    for lab, n in s["per_label"].items():
        assert sum(v for code, v in s["target_per_code"].items() if WU_CLASS[code] == lab) == n
    four = step1.IEMOCAP_STANDARD_COUNTS["per_label"]
    assert {lab: s["per_label"][lab] for lab in four} == four
    counts = json.loads(json.dumps(s))
    counts = {**counts, "missing": {"wdseg": counts.pop("missing_wdseg"), "dialog_wav": 0}}
    assert step1.compare_with_standard(counts, None, s)["differences"] == []
    counts["per_label"]["xxx"] = 2506
    assert step1.compare_with_standard(counts, None, s)["differences"] == [
        {"count": "per_label.xxx", "expected": 2507, "got": 2506}
    ]


def test_wu6_forced_comparison_and_report(tmp_path, capsys):
    data = step1.main(
        ["--iemocap", str(MINI), "--work", str(tmp_path), "--label-set", "wu6", "--expect-standard", "yes"]
    )
    diffs = {d["count"]: (d["expected"], d["got"]) for d in data["counts"]["standard"]["differences"]}
    assert diffs["utterances"][0] == 10039 and diffs["per_label.xxx"][0] == 2507 and diffs["per_label.oth"][0] == 2001
    out = capsys.readouterr().out
    assert "with a 6-class label, label set wu6)" in out and "fru -> oth" in out and "no label" not in out
