"""Step 2 (preprocess.py), offline backends: oracle exactness, simulated error rates, resume, failures.

The whisperx backend's end-to-end tests (tiny local models) are in test_preprocess_whisperx.py.
"""

import json
import re
import shutil
from pathlib import Path

import pytest

import preprocess
from common import formats, step2_oracle, step2_simulated, step2_whisperx
from common.cli import PipelineError
from common.fileio import read_json
from common.formats import read_rttm


def fresh_work(demo_work, tmp_path, name="work") -> Path:
    """A private work directory holding the shared labels.json (so runs never collide with other tests)."""
    work = tmp_path / name
    work.mkdir()
    shutil.copy(demo_work / "labels.json", work / "labels.json")
    return work


def output_files(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for sub in ("asr", "diarization")
        for p in sorted((folder / sub).glob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------------------------------------
# Building blocks, on known answers
# ---------------------------------------------------------------------------------------------


def test_edit_distance_known_answers():
    ed = preprocess.edit_distance
    assert ed("a b c".split(), "a b c".split()) == 0
    assert ed("a b c".split(), "a x c".split()) == 1  # substitution
    assert ed("a b c".split(), "a c".split()) == 1  # deletion
    assert ed("a b c".split(), "a b b c".split()) == 1  # insertion
    assert ed("a b c d".split(), "b c d a".split()) == 2  # a moved: one deletion + one insertion
    assert ed([], "a b".split()) == 2 and ed("a b".split(), []) == 2
    assert ed("kitten sitting on the mat".split(), "sitting kitten on mat".split()) == 3
    with pytest.raises(ValueError, match="whitespace"):  # jiwer would score "a b" as two words
        ed(["a b"], ["a", "b"])


def test_reference_words_time_convention_tokens_and_missing_wdseg(tmp_path):
    fa = tmp_path / "fa.wdseg"
    fa.write_text(
        "  SFrm  EFrm    SegAScr Word\n"
        "     0    14      -1000 <s>\n"
        "    15    44     -90000 WHAT(2)\n"
        "    45    59      -5000 ++LAUGHTER++\n"
        "    60    60      -5000 <sil>\n"
        "    61    99     -80000 IS\n"
        "   100   110      -1000 </s>\n"
        " Total score: -181000\n"
    )
    utterances = [
        {
            "id": "Ses01F_impro01_F000",
            "start": 6.2901,
            "end": 7.4,
            "speaker": "F",
            "text": "What is?",
            "wdseg": "fa.wdseg",
        },
        {
            "id": "Ses01F_impro01_M001",
            "start": 8.0,
            "end": 9.0,
            "speaker": "M",
            "text": "Yeah, [LAUGHTER] okay well.",
            "wdseg": None,
        },
    ]
    words, no_wdseg = step2_oracle.reference_words(tmp_path, utterances)
    assert no_wdseg == 1
    assert [w["word"] for w in words] == ["what", "is", "yeah", "okay", "well"]
    # start = utt start + SFrm/100, end = utt start + (EFrm+1)/100
    assert words[0]["start"] == pytest.approx(6.4401, abs=1e-9) and words[0]["end"] == pytest.approx(6.7401, abs=1e-9)
    assert words[1]["start"] == pytest.approx(6.9001, abs=1e-9) and words[1]["end"] == pytest.approx(7.2901, abs=1e-9)
    # no .wdseg: the transcript words (markers and punctuation removed) spread uniformly
    third = 1.0 / 3
    assert [t for w in words[2:] for t in (w["start"], w["end"])] == pytest.approx(
        [8.0, 8.0 + third, 8.0 + third, 8.0 + 2 * third, 8.0 + 2 * third, 9.0], abs=1e-6
    )
    assert {w["speaker"] for w in words[2:]} == {"M"}


def test_anonymise_numbers_speakers_in_order_of_first_speech():
    turns = step2_oracle.anonymise([(5.0, 6.0, "F"), (1.0, 2.0, "M"), (3.0, 4.0, "F")])
    assert turns == [(1.0, 2.0, "SPEAKER_00"), (3.0, 4.0, "SPEAKER_01"), (5.0, 6.0, "SPEAKER_01")]


def test_cut_segments_cuts_at_pauses_and_length_not_at_speaker_changes():
    def word(w, s, e, spk):
        return {"word": w, "start": s, "end": e, "speaker": spk}

    words = [
        word("a", 0.0, 0.5, "F"),
        word("b", 0.6, 1.0, "F"),
        word("c", 1.3, 1.8, "M"),  # speaker change after a 0.3 s pause: same segment
        word(
            "d",
            3.0,
            3.4,
            "M",
        ),
        word("e", 3.5, 3.9, "M"),
    ]  # 1.2 s pause: new segment
    words[3]["untimed"] = True
    segments, straddling = step2_simulated.cut_segments(words, {"seg_pause": 0.7, "seg_max": 15.0})
    assert [s["text"] for s in segments] == ["a b c", "d e"]
    assert straddling == 1
    assert segments[1]["words"][0] == {"word": "d"}  # untimed: no start/end in the output
    assert (segments[1]["start"], segments[1]["end"]) == (3.0, 3.9)
    segments, _ = step2_simulated.cut_segments(words, {"seg_pause": 0.7, "seg_max": 1.5})
    assert [s["text"] for s in segments] == ["a b", "c", "d e"]


def test_select_dialogs_lists_globs_sessions_and_unknown_names():
    labels = {
        "dialogs": {
            "Ses01F_impro01": {"session": 1},
            "Ses01F_script01_1": {"session": 1},
            "Ses05F_impro01": {"session": 5},
        }
    }
    assert preprocess.select_dialogs(labels, ["Ses0?F_impro*"], None) == ["Ses01F_impro01", "Ses05F_impro01"]
    assert preprocess.select_dialogs(labels, None, [5]) == ["Ses05F_impro01"]
    with pytest.raises(preprocess.PipelineError, match="Ses09"):
        preprocess.select_dialogs(labels, ["Ses09*"], None)


def test_vad_oracle_only_with_whisperx(capsys):
    with pytest.raises(SystemExit):
        preprocess.parse_args(["--backend", "oracle", "--vad", "oracle"])
    assert "whisperx backend only" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# oracle backend: reproduces the demo generator's ground truth exactly
# ---------------------------------------------------------------------------------------------


def test_oracle_reproduces_ground_truth(demo_corpus, demo_work, tmp_path):
    _, truth = demo_corpus
    work = fresh_work(demo_work, tmp_path)
    manifest = preprocess.main(["--work", str(work), "--backend", "oracle"])
    assert set(manifest["dialogs"]) == set(truth["dialogs"])
    for dialog, gt in truth["dialogs"].items():
        asr = read_json(work / "oracle" / "asr" / f"{dialog}.json")
        assert asr["language"] == "en"
        words = sorted((w["start"], w["end"], w["word"]) for s in asr["segments"] for w in s["words"])
        expected = sorted((w["start"], w["end"], w["word"]) for w in gt["words"])
        assert [w[2] for w in words] == [w[2] for w in expected]
        for (s, e, _), (s0, e0, _) in zip(words, expected):
            assert abs(s - s0) < 1e-6 and abs(e - e0) < 1e-6
        # one segment per spoken utterance, XX utterances included
        assert len(asr["segments"]) == len(gt["utterances"])
        # turns = the utterances, under anonymous labels (first speaker SPEAKER_00); RTTM keeps 3 decimals
        turns = read_rttm(work / "oracle" / "diarization" / f"{dialog}.rttm")
        ref = sorted((u["start"], u["end"], u["speaker"]) for u in gt["utterances"])
        assert len(turns) == len(ref)
        mapping = {}
        for (s, e, label), (s0, e0, spk) in zip(turns, ref):
            assert abs(s - s0) < 5e-4 and abs(e - e0) < 5e-4
            assert mapping.setdefault(spk, label) == label
        assert mapping[ref[0][2]] == "SPEAKER_00" and sorted(mapping.values()) == ["SPEAKER_00", "SPEAKER_01"]
    summary = manifest["summary"]
    assert summary["wer"] == 0 and summary["der"] == 0 and summary["untimed_rate"] == 0 and summary["cpwer"] == 0
    assert summary["words"] == sum(len(gt["words"]) for gt in truth["dialogs"].values())


# ---------------------------------------------------------------------------------------------
# simulated backend: realised rates, determinism
# ---------------------------------------------------------------------------------------------

SIM_FLAGS = [
    "--sim-wer",
    "0.2",
    "--sim-del-share",
    "0.5",
    "--sim-untimed",
    "0.1",
    "--sim-confusion",
    "0.34",
    "--sim-vad-miss",
    "0.5",
    "--sim-spurious",
    "0.3",
]


def test_simulated_rates_match_requested(demo_work, tmp_path):
    """Counts are drawn exactly (round(rate * n) per dialog), so the corpus rate is within 0.5 item per
    dialog of the requested one; the measured WER (edit distance vs the oracle words) equals the drawn
    errors up to word reorderings by the time jitter (tolerance 1 % absolute)."""
    work = fresh_work(demo_work, tmp_path)
    manifest = preprocess.main(["--work", str(work), "--backend", "simulated"] + SIM_FLAGS)
    done = [e["stats"] for e in manifest["dialogs"].values()]
    n_dialogs = len(done)
    for st in done:
        sim = st["simulated"]
        n = sim["oracle_words"]
        errors = sim["deleted"] + sim["substituted"]
        assert errors == round(0.2 * n)
        assert sim["deleted"] == round(0.5 * errors)
        assert sim["untimed"] == round(0.1 * (n - sim["vad_missed"] - sim["deleted"]))
        assert sim["confused_turns"] == round(0.34 * sim["reference_turns"])
        assert sim["spurious_turns"] == round(0.3 * sim["speaker_changes"])
        assert st["untimed_words"] == sim["untimed"]
    total = manifest["summary"]["simulated"]
    n_words = total["oracle_words"]
    assert abs((total["deleted"] + total["substituted"]) / n_words - 0.2) <= 0.5 * n_dialogs / n_words
    assert abs(total["confused_turns"] / total["reference_turns"] - 0.34) <= 0.5 * n_dialogs / total["reference_turns"]
    drawn = (total["deleted"] + total["substituted"] + total["vad_missed"]) / n_words
    assert abs(manifest["summary"]["wer"] - drawn) <= 0.01
    assert 0.05 < manifest["summary"]["der"] < 0.6  # confusion of a third of the turns shows in the DER
    # ... and in the cpWER: the confused turns' words land in the other speaker's stream
    cp_errors = sum(st["cp_word_errors"] for st in done)
    assert manifest["summary"]["cpwer"] == round(cp_errors / sum(st["ref_words"] for st in done), 4)
    assert manifest["summary"]["cpwer"] > manifest["summary"]["wer"] + 0.1
    assert total["straddling_segments"] > 0  # segments cross speaker changes
    # the measured rates are printed and stored
    assert manifest["summary"]["untimed_rate"] == pytest.approx(
        total["untimed"] / manifest["summary"]["words"], abs=1e-4
    )


def test_simulated_same_seed_same_output_other_seed_differs(demo_work, tmp_path):
    outputs = {}
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        work = fresh_work(demo_work, tmp_path, name)
        preprocess.main(["--work", str(work), "--backend", "simulated", "--seed", seed])
        outputs[name] = output_files(work / "simulated")
    assert outputs["a"] == outputs["b"] and len(outputs["a"]) == 2 * 4
    assert outputs["a"] != outputs["c"]


def test_default_names_and_config_change_redoes(demo_work, tmp_path, capsys):
    work = fresh_work(demo_work, tmp_path)
    preprocess.main(["--work", str(work), "--backend", "simulated", "--dialogs", "Ses01*"])
    first = output_files(work / "simulated")
    assert len(first) == 4  # two Session 1 dialogs, two files each
    capsys.readouterr()
    preprocess.main(["--work", str(work), "--backend", "simulated", "--dialogs", "Ses01*", "--sim-wer", "0.5"])
    assert "redoing 2 done with another config" in capsys.readouterr().out
    assert output_files(work / "simulated") != first


# ---------------------------------------------------------------------------------------------
# Resume and failures
# ---------------------------------------------------------------------------------------------


def test_interrupted_run_resumes_to_identical_outputs(demo_work, tmp_path, monkeypatch):
    args = ["--backend", "simulated", "--seed", "1"]
    whole = fresh_work(demo_work, tmp_path, "whole")
    preprocess.main(["--work", str(whole)] + args)

    # Interrupt after two dialogs (as a kill would), then start again.
    work = fresh_work(demo_work, tmp_path, "interrupted")
    real_run_dialog, calls = preprocess.run_dialog, []

    def interrupting(dialog, *a, **k):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(dialog)
        return real_run_dialog(dialog, *a, **k)

    monkeypatch.setattr(preprocess, "run_dialog", interrupting)
    with pytest.raises(KeyboardInterrupt):
        preprocess.main(["--work", str(work)] + args)
    assert len(output_files(work / "simulated")) == 4
    assert len(read_json(work / "simulated" / "manifest.json")["dialogs"]) == 2

    resumed = []
    monkeypatch.setattr(
        preprocess, "run_dialog", lambda dialog, *a, **k: resumed.append(dialog) or real_run_dialog(dialog, *a, **k)
    )
    manifest = preprocess.main(["--work", str(work)] + args)
    assert resumed and not set(resumed) & set(calls)  # only the dialogs not yet done
    assert output_files(work / "simulated") == output_files(whole / "simulated")
    assert manifest["dialogs"] == read_json(whole / "simulated" / "manifest.json")["dialogs"]

    # --overwrite redoes everything, to the same bytes
    resumed.clear()
    preprocess.main(["--work", str(work), "--overwrite"] + args)
    assert len(resumed) == 4 and output_files(work / "simulated") == output_files(whole / "simulated")


def test_failed_dialog_is_recorded_and_redone_when_fixed(demo_corpus, demo_work, tmp_path, capsys):
    root, _ = demo_corpus
    work = fresh_work(demo_work, tmp_path)
    labels = json.loads((work / "labels.json").read_text())
    bad = sorted(labels["dialogs"])[1]
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEgarbage" * 10)
    good_wav = labels["dialogs"][bad]["wav"]
    labels["dialogs"][bad]["wav"] = str(corrupt)  # an absolute path overrides the corpus root
    (work / "labels.json").write_text(json.dumps(labels))

    with pytest.raises(SystemExit, match="1 of 4 dialogs failed"):
        preprocess.main(["--work", str(work), "--backend", "oracle"])
    out = capsys.readouterr().out
    assert f"FAILED {bad}" in out and "corrupt.wav" in out
    manifest = read_json(work / "oracle" / "manifest.json")
    assert manifest["dialogs"][bad]["status"] == "failed"
    assert "cannot decode audio" in manifest["dialogs"][bad]["error"]
    assert manifest["summary"]["dialogs_failed"] == 1 and manifest["summary"]["dialogs_done"] == 3
    assert not (work / "oracle" / "asr" / f"{bad}.json").exists()

    labels["dialogs"][bad]["wav"] = good_wav
    (work / "labels.json").write_text(json.dumps(labels))
    manifest = preprocess.main(["--work", str(work), "--backend", "oracle"])
    assert "skipping 3 dialogs already done" in capsys.readouterr().out
    assert manifest["dialogs"][bad]["status"] == "done" and manifest["summary"]["dialogs_failed"] == 0


def test_rttm_and_asr_shapes(demo_work, tmp_path):
    work = fresh_work(demo_work, tmp_path)
    preprocess.main(["--work", str(work), "--backend", "simulated", "--dialogs", "Ses05*"])
    for path in (work / "simulated" / "diarization").glob("*.rttm"):
        for line in path.read_text().splitlines():
            assert re.fullmatch(
                rf"SPEAKER {path.stem} 1 \d+\.\d{{3}} \d+\.\d{{3}} <NA> <NA> SPEAKER_\d\d <NA> <NA>", line
            )
    for path in (work / "simulated" / "asr").glob("*.json"):
        asr = read_json(path)
        assert asr["dialog"] == path.stem and asr["backend"] == "simulated"
        for seg in asr["segments"]:
            assert set(seg) == {"start", "end", "text", "words"} and seg["start"] <= seg["end"]
            assert seg["text"] == " ".join(w["word"] for w in seg["words"])
            for w in seg["words"]:
                assert set(w) in ({"word"}, {"word", "start", "end"})
                if "start" in w:
                    assert seg["start"] - 1e-9 <= w["start"] < w["end"] <= seg["end"] + 1e-9


def test_simulation_rates_are_validated(capsys):
    with pytest.raises(SystemExit):
        preprocess.parse_args(["--backend", "simulated", "--sim-wer", "1.5"])
    assert "--sim-wer must be in [0, 1]" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Exclusive diarization: the derived version of the offline backends
# ---------------------------------------------------------------------------------------------


def union_length(turns) -> float:
    total, end = 0.0, float("-inf")
    for s, e, _ in sorted(turns):
        total += max(0.0, e - max(s, end))
        end = max(end, e)
    return total


def test_exclusive_turns_known_answers():
    ex = step2_oracle.exclusive_turns
    # no overlap: unchanged (touching turns of one speaker stay two turns)
    plain = [(0.0, 1.0, "A"), (1.0, 2.0, "A"), (2.5, 3.0, "B")]
    assert ex(plain) == plain
    # partial overlap: the newer turn takes the shared time
    assert ex([(0.0, 2.0, "A"), (1.5, 3.0, "B")]) == [(0.0, 1.5, "A"), (1.5, 3.0, "B")]
    # a backchannel inside a long turn: it keeps its time, the long turn resumes after it
    assert ex([(0.0, 5.0, "A"), (2.0, 2.5, "B")]) == [(0.0, 2.0, "A"), (2.0, 2.5, "B"), (2.5, 5.0, "A")]
    # same start: the shorter turn first, then the rest of the longer one
    assert ex([(0.0, 4.0, "A"), (0.0, 1.0, "B")]) == [(0.0, 1.0, "B"), (1.0, 4.0, "A")]


def test_simulated_writes_both_rttms_exclusive_has_no_overlap_and_same_speech(demo_work, tmp_path):
    work = fresh_work(demo_work, tmp_path)
    manifest = preprocess.main(["--work", str(work), "--backend", "simulated", "--sim-spurious", "0.5"])
    overlapping = 0
    for dialog, entry in manifest["dialogs"].items():
        turns = read_rttm(work / "simulated" / "diarization" / f"{dialog}.rttm")
        exclusive = read_rttm(work / "simulated" / "diarization_exclusive" / f"{dialog}.rttm")
        overlapping += any(b[0] < a[1] - 1e-9 for a, b in zip(turns, turns[1:]))
        assert all(b[0] >= a[1] - 1e-9 for a, b in zip(exclusive, exclusive[1:]))  # one speaker at a time
        assert union_length(exclusive) == pytest.approx(union_length(turns), abs=2e-3)  # speech time kept
        assert {spk for *_, spk in exclusive} <= {spk for *_, spk in turns}
        assert entry["stats"]["exclusive_from"] == "derived" and "der_exclusive" in entry["stats"]
    assert overlapping  # spurious turns overlap the next speaker's: the two versions differ
    assert "der_exclusive" in manifest["summary"]


def test_align_reads_the_exclusive_rttm_and_reports_both(demo_work, tmp_path):
    import align

    work = fresh_work(demo_work, tmp_path)
    preprocess.main(["--work", str(work), "--backend", "simulated", "--dialogs", "Ses01F_impro01"])
    align.main(["--work", str(work), "--pipe", "simulated", "--variant", "aligned"])
    report = align.main(
        ["--work", str(work), "--pipe", "simulated", "--variant", "aligned", "--diarization", "exclusive"]
    )
    assert set(report["variants"]) == {"aligned-p1.5", "aligned-p1.5-exclusive"}
    assert "aligned-p1.5-exclusive" in (work / "simulated" / "alignment_report.md").read_text()
    segments = read_json(work / "simulated" / "aligned-p1.5-exclusive" / "segments" / "Ses01F_impro01.json")
    assert segments["variant"] == "aligned-p1.5-exclusive" and segments["segments"]


# ---------------------------------------------------------------------------------------------
# Sharding: every N-th dialog from K; parts merge into one manifest
# ---------------------------------------------------------------------------------------------


def test_two_shards_equal_one_run_byte_for_byte(demo_work, tmp_path, monkeypatch):
    args = ["--backend", "simulated", "--seed", "2"]
    whole = fresh_work(demo_work, tmp_path, "whole")
    one = preprocess.main(["--work", str(whole)] + args)

    work = fresh_work(demo_work, tmp_path, "sharded")
    first = preprocess.main(["--work", str(work), "--shard", "0/2"] + args)
    names = sorted(one["dialogs"])
    assert sorted(first["dialogs"]) == names[0::2]  # every 2nd dialog from the 0th, merged so far
    assert (work / "simulated" / "manifest.parts" / "shard-0-of-2.json").is_file()
    monkeypatch.setenv("RANK", "1")  # as torchrun would: the rank picks the shard
    monkeypatch.setenv("WORLD_SIZE", "2")
    second = preprocess.main(["--work", str(work)] + args)
    assert second["config"] == one["config"] and second["dialogs"] == one["dialogs"]
    assert second["summary"] == one["summary"]
    for sub in ("asr", "diarization", "diarization_exclusive"):
        got = {p.name: p.read_bytes() for p in (work / "simulated" / sub).iterdir()}
        assert got == {p.name: p.read_bytes() for p in (whole / "simulated" / sub).iterdir()} and len(got) == 4
    merged = read_json(work / "simulated" / "manifest.json")
    assert merged["dialogs"] == one["dialogs"] and list(merged["dialogs"]) == names

    # an unsharded run over the same work finds everything done, and retires the parts
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    again = preprocess.main(["--work", str(work)] + args)
    assert again["dialogs"] == one["dialogs"] and not (work / "simulated" / "manifest.parts").exists()


def test_shard_flag_is_validated(capsys):
    with pytest.raises(SystemExit):
        preprocess.parse_args(["--shard", "2/2"])
    assert "--shard: expected K/N with 0 <= K < N" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Issue 12: hostile inputs (regression tests)
# ---------------------------------------------------------------------------------------------


def test_wdseg_token_normalising_to_nothing_is_dropped_and_counted(tmp_path):
    """A token such as "(2)" normalised to "": step 2 counted 67 words and step 3 66."""
    (tmp_path / "fa.wdseg").write_text(
        "  SFrm  EFrm    SegAScr Word\n     0    14      -1000 <s>\n"
        "    15    44     -90000 WHAT(2)\n    45    59      -5000 (2)\n"
        "    61    99     -80000 IS\n Total score: -181000\n"
    )
    utt = {"id": "Ses01F_impro01_F000", "start": 1.0, "end": 2.2, "speaker": "F", "text": "x", "wdseg": "fa.wdseg"}
    counts = {}
    words, _ = step2_oracle.reference_words(tmp_path, [utt], 10.0, counts)
    assert [w["word"] for w in words] == ["what", "is"] and counts == {"empty_wdseg_tokens": 1}
    # a word past the end of the dialog audio (beyond the 50 ms tolerance) names the .wdseg file and its row
    with pytest.raises(
        PipelineError,
        match=r"fa.wdseg: word row 4: 'IS' \(frames 61-99 from the utterance start 1.000 s\) "
        r"ends at 2.000 s, after the end of the audio \(1.900 s",
    ):
        step2_oracle.reference_words(tmp_path, [utt], 1.9)


def test_times_past_the_audio_and_a_truncated_wav_fail_the_dialog(demo_corpus, demo_work, tmp_path, capsys):
    """Utterance times past the end of the audio went through steps 1-3 with exit status 0."""
    root, _ = demo_corpus
    work = fresh_work(demo_work, tmp_path)
    labels = json.loads((work / "labels.json").read_text())
    late, cut = sorted(labels["dialogs"])[:2]
    seconds = formats.wav_seconds(root / labels["dialogs"][late]["wav"])
    labels["dialogs"][late]["utterances"][-1]["end"] = seconds + 1.0
    data = (root / labels["dialogs"][cut]["wav"]).read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 3])  # a truncated copy
    labels["dialogs"][cut]["wav"] = str(tmp_path / "cut.wav")
    (work / "labels.json").write_text(json.dumps(labels))
    with pytest.raises(SystemExit, match="2 of 4 dialogs failed"):
        preprocess.main(["--work", str(work), "--backend", "oracle"])
    manifest = read_json(work / "oracle" / "manifest.json")
    u = labels["dialogs"][late]["utterances"][-1]
    assert (
        f"utterance {u['id']} ({u['start']:.3f}-{u['end']:.3f} s) ends at {u['end']:.3f} s, after the end of the "
        f"audio ({seconds:.3f} s; tolerance 0.05 s)" in manifest["dialogs"][late]["error"]
    )
    assert "cut.wav: truncated: the header declares" in manifest["dialogs"][cut]["error"]
    assert manifest["summary"]["dialogs_done"] == 2 and manifest["summary"]["empty_wdseg_tokens"] == 0


def test_model_loader_errors_name_the_model(tmp_path):
    """A model folder that does not load ended in a raw CTranslate2 RuntimeError; hub errors (not
    found, gated) pass on to common.cli.run_main, which explains them in one line."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    with pytest.raises(PipelineError, match=rf"{tmp_path}: cannot load the ASR model \(--asr-model\): RuntimeError: "):
        with step2_whisperx.loading("ASR model (--asr-model)", tmp_path):
            ctranslate2.models.Whisper(str(tmp_path))  # an empty folder: no model.bin
    from huggingface_hub.errors import RepositoryNotFoundError

    with pytest.raises(RepositoryNotFoundError):
        with step2_whisperx.loading("diarization pipeline (--diar-model)", "org/nope"):
            raise RepositoryNotFoundError(
                "404 Client Error. Repository Not Found for url https://huggingface.co/org/nope"
            )


# ---------------------------------------------------------------------------------------------
# cpWER (meeteval) beside WER (jiwer), on hand-built dialogs with known answers
# ---------------------------------------------------------------------------------------------


def hand_dialog(hyp_times=None):
    """Reference: F says "a b" (0-1 s), M says "c d" (1-2 s), one word per 0.5 s. The ASR hears the same words at
    the same times (hyp_times: other times for them), so WER is 0 and cpWER shows the speaker attribution only."""
    ref_words = [
        {"word": w, "start": 0.5 * i, "end": 0.5 * (i + 1), "speaker": "F" if i < 2 else "M", "utterance": "u"}
        for i, w in enumerate("a b c d".split())
    ]
    times = hyp_times or [(w["start"], w["end"]) for w in ref_words]
    words = [{"word": w["word"].upper() + ",", "start": s, "end": e} for w, (s, e) in zip(ref_words, times)]
    asr = {"segments": [{"start": times[0][0], "end": times[-1][1], "words": words}]}
    ref_turns = [(0.0, 1.0, "F"), (1.0, 2.0, "M")]
    return asr, ref_words, ref_turns


def test_cpwer_is_permutation_free_and_counts_misattributed_words():
    asr, ref_words, ref_turns = hand_dialog()
    # the diarization's labels are arbitrary: M's time under SPEAKER_00 costs nothing
    stats = preprocess.measure(asr, [(0.0, 1.0, "SPEAKER_01"), (1.0, 2.0, "SPEAKER_00")], ref_words, ref_turns)
    assert (stats["word_errors"], stats["cp_word_errors"]) == (0, 0)
    assert stats["cp_assignment"] == [["F", "SPEAKER_01"], ["M", "SPEAKER_00"]]
    # "c" attributed to F's speaker: one insertion in F's stream, one deletion in M's; WER still 0
    stats = preprocess.measure(asr, [(0.0, 1.5, "S0"), (1.5, 2.0, "S1")], ref_words, ref_turns)
    assert (stats["word_errors"], stats["cp_word_errors"]) == (0, 2)
    # speakers alternating word by word: S0 = "a c", S1 = "b d"; either assignment has 2 substitutions
    turns = [(0.0, 0.5, "S0"), (0.5, 1.0, "S1"), (1.0, 1.5, "S0"), (1.5, 2.0, "S1")]
    stats = preprocess.measure(asr, turns, ref_words, ref_turns)
    assert (stats["word_errors"], stats["cp_word_errors"], stats["cp_nearest_words"]) == (0, 2, 0)
    assert (stats["cp_missed_speakers"], stats["cp_false_alarm_speakers"]) == (0, 0)


def test_cpwer_more_hypothesis_than_reference_speakers_and_words_without_a_turn():
    asr, ref_words, ref_turns = hand_dialog()
    # S1 = "c", S2 = "d": M is matched with one of them (1 deletion), the other is a false-alarm speaker (1 insertion)
    turns = [(0.0, 1.0, "S0"), (1.0, 1.5, "S1"), (1.5, 2.0, "S2")]
    stats = preprocess.measure(asr, turns, ref_words, ref_turns)
    assert (stats["word_errors"], stats["cp_word_errors"]) == (0, 2)
    assert (stats["cp_missed_speakers"], stats["cp_false_alarm_speakers"]) == (0, 1)
    assert ["F", "S0"] in stats["cp_assignment"] and sum(r is None for r, _ in stats["cp_assignment"]) == 1
    # "d" heard after every turn ended: it gets the nearest turn's speaker (S0, 0.2 s away), counted
    asr, _, _ = hand_dialog([(0.0, 0.5), (0.5, 1.0), (1.0, 1.5), (2.7, 2.9)])
    stats = preprocess.measure(asr, [(0.0, 1.5, "S1"), (3.1, 4.0, "S0"), (5.0, 6.0, "S2")], ref_words, [])
    assert (stats["cp_nearest_words"], stats["cp_word_errors"]) == (1, 2)  # S1 "a b c" vs F: +c; S0 "d" vs M: -c
    assert stats["cp_false_alarm_speakers"] == 0  # S2 has no words: it takes no part
    # no turns at all: every word in one stream, counted; F (or M) is left without a hypothesis speaker
    stats = preprocess.measure(asr, [], ref_words, [])
    assert (stats["cp_nearest_words"], stats["cp_word_errors"], stats["cp_missed_speakers"]) == (4, 4, 1)


def test_wer_and_cpwer_equal_meeteval_called_directly():
    """Random dialogs (3 reference speakers, 4 diarization speakers, words from a small vocabulary, each word inside
    one turn): measure's counts equal meeteval's cpwer and siso WER, and jiwer's WER, on the same segments."""
    import random

    import jiwer
    from meeteval.io import SegLST
    from meeteval.wer import cpwer
    from meeteval.wer.wer.siso import siso_word_error_rate

    rng = random.Random(7)
    for _ in range(5):
        ref_words, hyp_words, turns = [], [], []
        for i in range(60):
            ref_words.append({"word": rng.choice("ab cd ef gh".split()), "start": i, "end": i + 0.9})
            ref_words[-1].update(speaker=rng.choice("FMX"), utterance="u")
            if rng.random() < 0.9:  # some words missed, some substituted, some inserted
                hyp_words.append({"word": rng.choice([ref_words[-1]["word"], "zz"]), "start": i, "end": i + 0.4})
            if rng.random() < 0.2:
                hyp_words.append({"word": "yy", "start": i + 0.5, "end": i + 0.9})
        for w in hyp_words:
            turns.append((w["start"] - 0.05, w["end"] + 0.05, rng.choice(["S0", "S1", "S2", "S3"])))
        asr = {"segments": [{"start": 0.0, "end": 60.0, "words": hyp_words}]}
        stats = preprocess.measure(asr, turns, ref_words, [])

        def seglst(words, speakers):
            return SegLST(
                [
                    dict(session_id="d", speaker=spk, words=w["word"], start_time=w["start"], end_time=w["end"])
                    for w, spk in zip(words, speakers)
                ]
            )

        ref = seglst(ref_words, [w["speaker"] for w in ref_words])
        hyp = seglst(hyp_words, [t[2] for t in turns])
        direct = cpwer(ref, hyp)["d"]
        assert stats["cp_word_errors"] == direct.errors and stats["cp_word_errors"] > stats["word_errors"]
        assert (stats["cp_missed_speakers"], stats["cp_false_alarm_speakers"]) == (
            direct.missed_speaker,
            direct.falarm_speaker,
        )
        ref_text, hyp_text = (" ".join(w["word"] for w in words) for words in (ref_words, hyp_words))
        assert stats["word_errors"] == siso_word_error_rate(ref_text, hyp_text).errors
        out = jiwer.process_words(ref_text, hyp_text)
        assert stats["word_errors"] == out.substitutions + out.deletions + out.insertions


def test_cpwer_speakers_are_step_3s_for_timed_words(demo_work, tmp_path):
    """On the simulated demo (confused and spurious turns, segments straddling speaker changes), every timed word
    gets the speaker align.attribute_words (step 3) gives it; untimed words are left out (step 3 re-times them)."""
    import align

    work = fresh_work(demo_work, tmp_path)
    preprocess.main(["--work", str(work), "--backend", "simulated", "--sim-confusion", "0.34", "--sim-spurious", "0.3"])
    checked = 0
    for path in sorted((work / "simulated" / "asr").glob("*.json")):
        asr, turns = read_json(path), read_rttm(work / "simulated" / "diarization" / f"{path.stem}.rttm")
        for seg in asr["segments"]:
            seg["words"] = [w for w in seg["words"] if "start" in w]
        words, _, _, speakers, _, _ = align.attribute_words(asr["segments"], turns)
        step3 = {}
        for word, speaker in zip(words, speakers):
            step3.setdefault(speaker, []).append(step2_oracle.normalise_for_wer(word))
        ours = preprocess.speaker_streams(asr, turns)[0]
        assert {k: sorted(v) for k, v in ours.items()} == {k: sorted(v) for k, v in step3.items()}
        checked += sum(map(len, ours.values()))
    assert checked > 100


def test_simulated_confusion_with_any_number_of_speakers():
    """A confused turn gets another speaker's label: F <-> M on IEMOCAP (no draw), the one other name of two, one
    of the others drawn from the generator with more; simulate_turns confuses three-party turns among the three."""
    import numpy as np

    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert step2_simulated.confused_speaker(rng, "F", ["F", "M"]) == "M"
    assert step2_simulated.confused_speaker(rng, "M", ["M"]) == "F"  # as before names: F/M dialogs swap
    assert step2_simulated.confused_speaker(rng, "Ann", ["Ann", "Bo"]) == "Bo"
    assert step2_simulated.confused_speaker(rng, "Ann", ["Ann"]) == "Ann"
    assert rng.bit_generator.state == state  # none of the above drew from the generator
    picks = [step2_simulated.confused_speaker(rng, "Ann", ["Ann", "Bo", "Cy"]) for _ in range(200)]
    assert set(picks) == {"Bo", "Cy"} and 60 < picks.count("Bo") < 140
    turns = [(2.0 * i, 2.0 * i + 1.5, ("Ann", "Bo", "Cy")[i % 3]) for i in range(30)]
    sim = {k: v for k, (v, _) in step2_simulated.SIM_DEFAULTS.items()}
    sim.update(boundary=0.0, spurious=0.0, miss_short=0.0, confusion=0.2)
    out, counts = step2_simulated.simulate_turns(turns, sim, np.random.default_rng(1), 60.0)
    changed = [(a, b) for a, b in zip(turns, out) if a[2] != b[2]]
    assert counts["confused_turns"] == 6 == len(changed)  # round(0.2 * 30), each to another of the three
    assert {b[2] for _, b in changed} <= {"Ann", "Bo", "Cy"}


def test_labels_speakers_are_names():
    """labels.json: any non-empty name, any number per dialog; an IEMOCAP id must name its speaker's letter."""
    u = {"start": 0.0, "end": 1.0, "label": None}
    utts = [dict(u, id=f"meet_{i}", speaker=name) for i, name in enumerate(["Ann", "Bo", "Cy", "Dee Dee"])]
    formats.check_labels({"dialogs": {"meet": {"utterances": utts}}}, "x.json")
    formats.check_labels({"dialogs": {"m": {"utterances": [dict(u, id="m_F000", speaker="M")]}}}, "x.json")
    for bad, message in (
        ({"Ses01F_impro01": [dict(u, id="Ses01F_impro01_F000", speaker="M")]}, r"the IEMOCAP id names speaker 'F'"),
        ({"Ses01F_impro01": [dict(u, id="Ses01F_impro01_MXX1", speaker="Ann")]}, r"IEMOCAP id names speaker 'M'"),
        ({"meet": [dict(u, id="meet_0", speaker="")]}, r"meet: utterance meet_0: speaker '', expected a name"),
        ({"meet": [dict(u, id="meet_0", speaker=3)]}, r"speaker 3, expected a name"),
    ):
        with pytest.raises(PipelineError, match=message):
            formats.check_labels({"dialogs": {d: {"utterances": us} for d, us in bad.items()}}, "x.json")
    ok = {"Ses01F_impro01": {"utterances": [dict(u, id="Ses01F_impro01_Fay_000", speaker="Fay")]}}
    formats.check_labels({"dialogs": ok}, "x.json")  # not of the IEMOCAP id form: no letter to agree with
