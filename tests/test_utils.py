"""The shared helpers of utils.py section 1: label map, atomic writes, loaders and their errors."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import utils
from common import cli, fileio, formats, intervals, rundirs
from common.cli import PipelineError


def test_label_map_merges_exc_and_drops_other_codes():
    assert formats.LABELS == ("hap", "ang", "sad", "neu")
    assert formats.CODE_TO_LABEL["exc"] == "hap" and formats.CODE_TO_LABEL["hap"] == "hap"
    for code in ("fru", "sur", "fea", "dis", "oth", "xxx"):
        assert code in formats.IEMOCAP_CODES and code not in formats.CODE_TO_LABEL
    assert [formats.LABEL_INDEX[x] for x in formats.LABELS] == [0, 1, 2, 3]


def test_session_of():
    assert formats.session_of("Ses03M_impro05a") == 3
    assert formats.session_of("Ses05M_script01_1b_F012") == 5
    with pytest.raises(PipelineError, match="not an IEMOCAP"):
        formats.session_of("Session1")


def test_atomic_json_roundtrip_and_no_temp_left(tmp_path):
    path = tmp_path / "a" / "b.json"
    fileio.atomic_write_json(path, {"x": [1, 2.5, "é"]})
    assert fileio.read_json(path) == {"x": [1, 2.5, "é"]}
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]


def test_atomic_write_keeps_old_file_when_serialisation_fails(tmp_path):
    path = tmp_path / "c.json"
    fileio.atomic_write_json(path, {"ok": 1})
    with pytest.raises(TypeError):
        fileio.atomic_write_json(path, {"bad": object()})
    assert fileio.read_json(path) == {"ok": 1}
    assert len(list(tmp_path.iterdir())) == 1


def test_read_json_errors_name_the_file(tmp_path):
    with pytest.raises(PipelineError, match="missing.json: labels file not found"):
        fileio.read_json(tmp_path / "missing.json", "labels file")
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": ')
    with pytest.raises(PipelineError, match="bad.json: corrupt"):
        fileio.read_json(bad)


def test_load_labels_requires_step1(tmp_path):
    with pytest.raises(PipelineError, match="run step 1 first"):
        formats.load_labels(tmp_path)
    (tmp_path / "labels.json").write_text(json.dumps({"x": 1}))
    with pytest.raises(PipelineError, match="no 'dialogs' key"):
        formats.load_labels(tmp_path)


def test_pt_roundtrip_weights_only_and_corrupt_file(tmp_path):
    obj = {"segments": [{"id": "a", "audio": torch.arange(5, dtype=torch.float32), "label": -1}]}
    fileio.atomic_torch_save(obj, tmp_path / "x.pt")
    back = fileio.load_pt(tmp_path / "x.pt")
    assert torch.equal(back["segments"][0]["audio"], obj["segments"][0]["audio"])
    (tmp_path / "y.pt").write_bytes(b"not a zip file")
    with pytest.raises(PipelineError, match="y.pt: corrupt or unreadable"):
        fileio.load_pt(tmp_path / "y.pt")


def test_load_pt_refuses_pickled_objects(tmp_path):
    from fractions import Fraction  # an arbitrary class: unpickling it would run its code

    torch.save({"obj": Fraction(1, 3)}, tmp_path / "z.pt")
    with pytest.raises(PipelineError, match="z.pt"):
        fileio.load_pt(tmp_path / "z.pt")


def test_rttm_roundtrip_sorted(tmp_path):
    turns = [(3.0, 4.5, "SPEAKER_01"), (0.5, 2.25, "SPEAKER_00"), (5.0, 5.0, "SPEAKER_00")]
    formats.write_rttm(tmp_path / "d.rttm", "Ses01F_impro01", turns)
    lines = (tmp_path / "d.rttm").read_text().splitlines()
    assert lines[0] == "SPEAKER Ses01F_impro01 1 0.500 1.750 <NA> <NA> SPEAKER_00 <NA> <NA>"
    assert len(lines) == 2  # the zero-length turn is not written
    assert formats.read_rttm(tmp_path / "d.rttm") == [(0.5, 2.25, "SPEAKER_00"), (3.0, 4.5, "SPEAKER_01")]


@pytest.mark.parametrize(
    "line,msg",
    [
        ("SPKR x 1 0.0 1.0 <NA> <NA> A <NA> <NA>", ":1: expected 'SPEAKER"),
        ("SPEAKER x 1 zero 1.0 <NA> <NA> A <NA> <NA>", ":1: start and duration must be numbers"),
        ("SPEAKER x 1 1.0 -1.0 <NA> <NA> A <NA> <NA>", ":1: negative"),
    ],
)
def test_rttm_malformed_lines_name_file_and_line(tmp_path, line, msg):
    path = tmp_path / "bad.rttm"
    path.write_text(line + "\n")
    with pytest.raises(PipelineError, match="bad.rttm" + msg):
        formats.read_rttm(path)


def test_load_audio_mixes_stereo_and_checks_rate(tmp_path):
    left = np.linspace(-0.5, 0.5, 1600, dtype=np.float32)
    right = np.zeros(1600, dtype=np.float32)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    mono = formats.load_audio(tmp_path / "s.wav")
    assert mono.shape == (1600,) and mono.dtype == np.float32
    np.testing.assert_allclose(mono, left / 2, atol=1e-7)
    sf.write(tmp_path / "r.wav", left, 8000)
    with pytest.raises(PipelineError, match="r.wav: sample rate 8000 Hz"):
        formats.load_audio(tmp_path / "r.wav")
    (tmp_path / "c.wav").write_bytes(b"RIFF....garbage")
    with pytest.raises(PipelineError, match="c.wav: cannot decode audio"):
        formats.load_audio(tmp_path / "c.wav")
    with pytest.raises(PipelineError, match="nope.wav: audio file not found"):
        formats.load_audio(tmp_path / "nope.wav")


def test_load_audio_channel_choice(tmp_path):
    # Left channel = 0.1 * n, right channel = -0.3 at every sample: exact in float32 WAV.
    left = (np.arange(800, dtype=np.float32) % 8) / 10
    right = np.full(800, -0.3, dtype=np.float32)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    np.testing.assert_array_equal(formats.load_audio(tmp_path / "s.wav", channel="0"), left)
    np.testing.assert_array_equal(formats.load_audio(tmp_path / "s.wav", channel=1), right)
    np.testing.assert_allclose(formats.load_audio(tmp_path / "s.wav", channel="mean"), (left + right) / 2, atol=1e-7)
    np.testing.assert_array_equal(
        formats.load_audio(tmp_path / "s.wav"), formats.load_audio(tmp_path / "s.wav", channel="mean")
    )
    # A mono file ignores the choice.
    sf.write(tmp_path / "m.wav", left, 16000, subtype="FLOAT")
    for ch in formats.AUDIO_CHANNELS:
        np.testing.assert_array_equal(formats.load_audio(tmp_path / "m.wav", channel=ch), left)
    with pytest.raises(ValueError, match="channel must be one of"):
        formats.load_audio(tmp_path / "s.wav", channel="2")


def test_merge_intervals_known_answers():
    assert intervals.merge_intervals([(3, 4), (0, 1), (0.5, 2), (5, 5)]).tolist() == [[0, 2], [3, 4]]
    assert intervals.merge_intervals([(0, 1), (1, 2), (2.5, 3), (2.6, 2.7)]).tolist() == [
        [0, 2],
        [2.5, 3],
    ]  # touching join
    assert intervals.merge_intervals([(2, 1), (4, 4)]).shape == (0, 2)  # reversed and empty intervals dropped
    assert intervals.merge_intervals([]).shape == (0, 2)
    assert intervals.subtract_intervals([(0, 10)], [(2, 3), (2.5, 4), (9, 12)]).tolist() == [[0, 2], [4, 9]]
    assert intervals.subtract_intervals([(0, 1), (2, 3)], []).tolist() == [[0, 1], [2, 3]]
    assert intervals.subtract_intervals([(0, 1)], [(-1, 5)]).shape == (0, 2)
    assert intervals.union_length([(0, 2), (1, 3), (5, 6), (7, 7)]) == pytest.approx(4.0)
    assert intervals.union_length([]) == 0.0


@pytest.mark.parametrize("seed", range(3))
def test_interval_helpers_match_a_fine_grid(seed):
    """Union and difference against membership on a 1 ms grid (random intervals on a 1 ms lattice)."""
    rng = np.random.default_rng(seed)
    a = np.sort(rng.integers(0, 2000, (12, 2)), axis=1) / 1000
    b = np.sort(rng.integers(0, 2000, (8, 2)), axis=1) / 1000
    grid = np.arange(0, 2000) / 1000 + 0.0005  # midpoints of the 1 ms cells

    def member(iv):
        return np.any((grid[:, None] > iv[:, 0]) & (grid[:, None] < iv[:, 1]), axis=1)

    m = intervals.merge_intervals(a)
    assert np.all(np.diff(m[:, 0]) > 0) and np.all(m[1:, 0] > m[:-1, 1])  # sorted, disjoint, not touching
    np.testing.assert_array_equal(member(m), member(a))
    np.testing.assert_array_equal(member(intervals.subtract_intervals(a, b)), member(a) & ~member(b))
    assert intervals.union_length(a) == pytest.approx(member(a).sum() / 1000)


def test_run_directory_helpers(tmp_path):
    run = tmp_path / "run"
    for name in ("fold10", "fold2", "fold1", "foldx", "other"):
        fileio.atomic_write_json(run / name / "config.json", {})
    (run / "fold3").mkdir()  # no config.json: not a fold
    assert [p.name for p in rundirs.fold_dirs(run)] == ["fold1", "fold2", "fold10"]
    fileio.atomic_write_json(run / "config.json", {"folds": ["fold2", {"name": "fold1"}]})
    assert [p.name for p in rundirs.fold_dirs(run)] == ["fold2", "fold1"]

    labels = {
        "dialogs": {
            "Ses01F_impro01": {"session": 1},
            "Ses05F_impro01": {"session": 5},
            "Ses05M_script01_1b": {"session": 5},
        }
    }
    predictions = {"segments": [{"dialog": "Ses01F_impro01"}]}
    single = tmp_path / "single"
    single.mkdir()
    assert rundirs.run_test_dialogs(single, predictions, labels)[0] == ["Ses01F_impro01"]  # no config: predictions
    fileio.atomic_write_json(single / "config.json", {"split": {"test": [5]}})
    assert rundirs.run_test_dialogs(single, predictions, labels)[0] == ["Ses05F_impro01", "Ses05M_script01_1b"]
    fileio.atomic_write_json(single / "config.json", {"split": {"test": {"dialogs": ["Ses05F_impro01"]}}})
    assert rundirs.run_test_dialogs(single, predictions, labels)[0] == ["Ses05F_impro01"]


def test_overlap():
    assert intervals.overlap(0, 2, 1, 3) == 1
    assert intervals.overlap(0, 1, 2, 3) == 0
    assert intervals.overlap(0, 5, 1, 2) == 1


def test_demo_note_only_for_the_generated_corpus(tmp_path):
    assert formats.demo_note({"corpus": str(tmp_path)}) is None
    (tmp_path / "demo_ground_truth.json").write_text("{}")
    assert formats.demo_note({"corpus": str(tmp_path)}) == formats.DEMO_NOTE
    assert "say nothing about IEMOCAP" in formats.DEMO_NOTE


# ---------------------------------------------------------------------------------------------
# Issue 12: one error path for every script, and the readers' validation (regression tests)
# ---------------------------------------------------------------------------------------------


def run_main_with(monkeypatch, capsys, error=None, argv=("--x", "1")):
    """common.cli.run_main on a main() that raises `error` -> (exit status, stderr lines, argv main saw)."""
    import sys

    seen = []

    def main(args):
        seen.append(list(args))
        if error is not None:
            raise error

    monkeypatch.setattr(sys, "argv", ["step.py", *argv])
    monkeypatch.setenv("PIPELINE_DEBUG", "")  # run_main may set it; restored after the test
    code = "returned"
    try:
        cli.run_main(main)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err.splitlines(), seen[0] if seen else None


def test_run_main_prints_one_line_and_exit_status(monkeypatch, capsys):
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    cases = [
        (PipelineError("/w/x.rttm:3: start and duration must be numbers"), 2, "error: /w/x.rttm:3: start and duration"),
        (PipelineError("--dialogs: no dialog of labels.json matches ['X']"), 2, "error: step.py: --dialogs: no dialog"),
        (PipelineError("3 of 5 dialogs failed:\n  a: x\n  b: y"), 2, "error: 3 of 5 dialogs failed: a: x b: y"),
        (
            PermissionError(13, "Permission denied", "/ro/.labels.json.ab12.tmp"),
            2,
            "error: /ro (writing a temporary file there): Permission denied; check its permissions",
        ),
        (
            FileNotFoundError(2, "No such file or directory", "/models/roberta"),
            2,
            "error: /models/roberta: No such file or directory; expected an existing file",
        ),
        (
            OSError(28, "No space left on device", "/w/cache/a.pt"),
            2,
            "error: /w/cache/a.pt: No space left on device; no space",
        ),
        (
            OSError(
                "xyz is not a local folder and is not a valid model identifier listed on 'https://huggingface.co/models'"
                "\nIf this is a private repository, make sure to pass a token"
            ),
            2,
            "error: step.py: xyz is not a local folder and is not a valid model identifier listed on "
            "'https://huggingface.co/models' If this is",
        ),
        (
            GatedRepoError(
                "401 Client Error. Cannot access gated repo for url "
                "https://huggingface.co/pyannote/speaker-diarization-3.1/resolve/main/config.yaml."
            ),
            2,
            "error: pyannote/speaker-diarization-3.1: gated repository",
        ),
        (
            RepositoryNotFoundError(
                "404 Client Error. Repository Not Found for url https://huggingface.co/api/models/org/nope"
            ),
            2,
            "error: org/nope: no such repository on the hub",
        ),
        (
            LocalEntryNotFoundError(
                "Cannot find the requested files in the disk cache and outgoing traffic has been disabled."
            ),
            2,
            "error: hub model: not available offline",
        ),
        (
            ModuleNotFoundError("No module named 'whisperx'", name="whisperx"),
            2,
            "error: step.py: the Python package 'whisperx'",
        ),
        (KeyboardInterrupt(), 130, "error: step.py: interrupted; run the same command again to resume"),
        (TypeError("unsupported operand"), 3, "error: step.py: unexpected TypeError: unsupported operand (a bug: run"),
    ]
    for error, status, start in cases:
        code, err, _ = run_main_with(monkeypatch, capsys, error)
        assert code == status and len(err) == 1 and err[0].startswith(start), (error, code, err)
        assert "Traceback" not in err[0]
    code, err, seen = run_main_with(monkeypatch, capsys, None, ("--a", "--b"))
    assert code == "returned" and err == [] and seen == ["--a", "--b"]  # a normal run: nothing printed, status 0


def test_run_main_debug_prints_the_traceback_and_strips_the_flag(monkeypatch, capsys):
    import os

    code, err, seen = run_main_with(monkeypatch, capsys, PipelineError("x.json: bad"), ("--debug", "--n", "2"))
    assert code == 2 and seen == ["--n", "2"]  # argparse never sees --debug
    assert err[0] == "Traceback (most recent call last):" and err[-1] == "error: x.json: bad"
    assert os.environ.get("PIPELINE_DEBUG") == "1"  # child steps (reproduce.py) inherit it


def test_run_main_turns_argparse_errors_into_one_line(monkeypatch, capsys):
    import argparse

    def main(argv):
        p = argparse.ArgumentParser(prog="align.py")
        p.add_argument("--max-pause", type=float)
        p.parse_args(argv)

    import sys

    monkeypatch.setattr(sys, "argv", ["align.py", "--max-pause", "x"])
    monkeypatch.setenv("PIPELINE_DEBUG", "")
    with pytest.raises(SystemExit) as e:
        cli.run_main(main)
    err = capsys.readouterr().err.splitlines()
    assert e.value.code == 2 and err == [
        "error: align.py: argument --max-pause: invalid float value: 'x' (see align.py --help)"
    ]
    assert argparse.ArgumentParser.error is not None  # restored afterwards
    with pytest.raises(SystemExit):
        argparse.ArgumentParser(prog="p").parse_args(["--nope"])  # argparse's own behaviour again


def test_scripts_as_subprocesses_print_one_error_line_and_exit_2(tmp_path, capsys, monkeypatch):
    """The reported symptom: a named error printed under a full traceback. Now one line, status 2:
    align.py as a process of its own, then step 1 through the same entry point in this process."""
    import os
    import subprocess
    import sys

    import iemo_lab_with_timestamps

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("PIPELINE_DEBUG", None)
    (tmp_path / "labels.json").write_text(
        '{"dialogs": {"Ses01F_impro01": {"utterances": [{"id": "u", "start": 0, '
        '"end": 1, "speaker": "F", "label": "happy"}]}}}'
    )
    proc = subprocess.run(
        [sys.executable, str(root / "align.py"), "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr)
    assert (
        lines[0].startswith(f"error: {tmp_path / 'labels.json'}: dialog Ses01F_impro01: ")
        and "Traceback" not in proc.stderr
    )

    monkeypatch.delenv("PIPELINE_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["iemo_lab_with_timestamps.py", "--iemocap", str(tmp_path / "nope")])
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(iemo_lab_with_timestamps.main)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: {tmp_path / 'nope'}: IEMOCAP root not found") and "Traceback" not in err


def test_read_json_nested_100000_deep_and_bad_bytes_are_named_errors(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(PipelineError, match="deep.json: corrupt ASR result: nested deeper than"):
        fileio.read_json(path, "ASR result")
    path.write_bytes(b'{"a": 1,\n "b": "caf\xe9"}')
    with pytest.raises(PipelineError, match=r"deep.json:2: corrupt JSON file: not UTF-8 text \(byte 0xE9\)"):
        fileio.read_json(path)
    path.write_text('{"a": ' + "9" * 5000 + "}")  # beyond Python's 4300-digit integer limit
    with pytest.raises(PipelineError, match="deep.json: corrupt JSON file"):
        fileio.read_json(path)


RTTM_LINE = "SPEAKER {f} 1 {s} {d} <NA> <NA> {spk} <NA> <NA>\n"


def test_read_rttm_rejects_bad_bytes_and_non_finite_times(tmp_path):
    path = tmp_path / "d.rttm"
    path.write_bytes(
        RTTM_LINE.format(f="d", s="0.0", d="1.0", spk="A").encode()
        + RTTM_LINE.format(f="d", s="1.0", d="1.0", spk="caf\xe9").encode("latin-1")
    )
    with pytest.raises(PipelineError, match=r"d.rttm:2: not UTF-8 text \(byte 0xE9 at column 34\)"):
        formats.read_rttm(path)
    for start, dur in (("0.0", "inf"), ("nan", "1.0"), ("1e308", "1e308"), ("9" * 400, "1.0")):
        path.write_text(RTTM_LINE.format(f="d", s=start, d=dur, spk="A"))
        with pytest.raises(PipelineError, match="d.rttm:1: start and duration must be finite"):
            formats.read_rttm(path)
    path.write_text(RTTM_LINE.format(f="d", s="1e300", d="1.0", spk="A"))  # finite, but far past the audio
    with pytest.raises(PipelineError, match=r"d.rttm:1: the turn .* ends at .* after the end of the audio \(20.000 s"):
        formats.read_rttm(path, duration=20.0)
    path.write_text(RTTM_LINE.format(f="d", s="19.0", d="1.04", spk="A"))  # 40 ms past the end: within the tolerance
    assert formats.read_rttm(path, duration=20.0) == [(19.0, 20.04, "A")]


def test_read_rttm_picks_the_dialogs_lines_from_a_multi_recording_file(tmp_path):
    """Same-named speakers of another recording were merged into this one; now they are counted apart."""
    path = tmp_path / "all.rttm"
    path.write_text(
        RTTM_LINE.format(f="Ses01F_impro01", s="0.0", d="2.0", spk="SPEAKER_00")
        + RTTM_LINE.format(f="Ses01F_impro02", s="1.0", d="5.0", spk="SPEAKER_00")
        + RTTM_LINE.format(f="Ses01F_impro02", s="7.0", d="1.0", spk="SPEAKER_01")
        + RTTM_LINE.format(f="Ses01F_impro01", s="3.0", d="1.0", spk="SPEAKER_01")
    )
    counts = {}
    assert formats.read_rttm(path, dialog="Ses01F_impro01", counts=counts) == [
        (0.0, 2.0, "SPEAKER_00"),
        (3.0, 4.0, "SPEAKER_01"),
    ]
    assert counts == {"other_recording_lines": 2, "other_recordings": ["Ses01F_impro02"]}
    assert len(formats.read_rttm(path)) == 4  # without a dialog: every line, as before
    with pytest.raises(
        PipelineError,
        match="all.rttm: no turn of the recording Ses02F_impro01; the file names Ses01F_impro01, Ses01F_impro02",
    ):
        formats.read_rttm(path, dialog="Ses02F_impro01")


def test_load_audio_rejects_nan_samples_and_truncated_wavs(tmp_path):
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, (16000, 2)).astype(np.float32)
    audio[8000, 1] = np.nan
    sf.write(tmp_path / "nan.wav", audio, 16000, subtype="FLOAT")
    with pytest.raises(PipelineError, match=r"nan.wav: 1 samples are NaN or infinite \(the first at 0.500 s\)"):
        formats.load_audio(tmp_path / "nan.wav")
    audio[8000, 1] = 0.0
    sf.write(tmp_path / "ok.wav", audio, 16000, subtype="PCM_16")
    data = (tmp_path / "ok.wav").read_bytes()
    assert len(formats.load_audio(tmp_path / "ok.wav")) == 16000
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])  # libsndfile reads this without complaint
    with pytest.raises(
        PipelineError,
        match=r"cut.wav: truncated: the header declares 64000 bytes of audio, the file "
        r"holds 31978 \(50.0 %\)",
    ):
        formats.load_audio(tmp_path / "cut.wav")


def labels_file(tmp_path, utterances, **dialog):
    info = {"session": 1, "wav": "Session1/dialog/wav/Ses01F_impro01.wav", "utterances": utterances, **dialog}
    (tmp_path / "labels.json").write_text(
        json.dumps({"corpus": "c", "labels": list(formats.LABELS), "dialogs": {"Ses01F_impro01": info}})
    )


def good_utt(i=0, **kw):
    return {
        "id": f"Ses01F_impro01_F00{i}",
        "start": 1.0 + 2 * i,
        "end": 2.5 + 2 * i,
        "speaker": "F",
        "code": "neu",
        "label": "neu",
        "text": "hi",
        "wdseg": f"w/Ses01F_impro01_F00{i}.wdseg",
        **kw,
    }


@pytest.mark.parametrize(
    "utterances, dialog, message",
    [
        ([{k: v for k, v in good_utt().items() if k != "end"}], {}, r"utterance 0 lacks \['end'\]"),
        ([good_utt(start="1.0")], {}, "start '1.0', end 2.5; expected finite seconds"),
        ([good_utt(start=float("nan"))], {}, "start nan"),
        ([good_utt(end=10**400)], {}, "expected finite seconds"),
        ([good_utt(start=3.0, end=2.0)], {}, "0 <= start <= end"),
        ([good_utt(label="happy")], {}, r"label 'happy', expected one of \['hap', 'ang', 'sad', 'neu'\] or null"),
        ([good_utt(label=1)], {}, "label 1, expected one of"),
        ([good_utt(speaker="X")], {}, "speaker 'X' but the IEMOCAP id names speaker 'F'"),
        ([good_utt(speaker="M")], {}, "speaker 'M' but the IEMOCAP id names speaker 'F'"),
        ([good_utt(speaker=" F")], {}, "speaker ' F', expected a name"),
        ([good_utt(), good_utt()], {}, "utterance Ses01F_impro01_F000: listed twice"),
        (
            [good_utt(0), good_utt(1, wdseg="w/Ses01F_impro01_F000.wdseg")],
            {},
            "is also the file of utterance Ses01F_impro01_F000",
        ),
        ([good_utt(code="happy")], {}, "code 'happy', expected one of neu"),
        ([good_utt(text=None)], {}, "'text' must be a string"),
        ([good_utt(id=7)], {}, "'id' must be a non-empty string"),
        (["Ses01F_impro01_F000"], {}, "utterance 0: expected an object"),
        ({"a": 1}, {}, "'utterances' must be a list"),
        ([good_utt()], {"session": "1"}, "bad 'session' '1'"),
        ([good_utt()], {"wav": None}, "bad 'wav' None"),
    ],
)
def test_load_labels_checks_the_schema(tmp_path, utterances, dialog, message):
    """labels.json with missing keys or wrong types crashed steps 2-4 (KeyError, TypeError); labels
    outside the four classes silently became "unlabelled"; a duplicated utterance had its words written twice."""
    labels_file(tmp_path, utterances, **dialog)
    with pytest.raises(PipelineError) as e:
        formats.load_labels(tmp_path)
    assert str(e.value).startswith(f"{tmp_path / 'labels.json'}: dialog Ses01F_impro01"), str(e.value)
    assert re.search(message, str(e.value)), str(e.value)


def test_load_labels_accepts_a_valid_file_and_requires_what_a_step_needs(tmp_path):
    labels_file(tmp_path, [good_utt(0), good_utt(1, label=None, code="fru", wdseg=None)])
    assert len(formats.load_labels(tmp_path, require=("wav",))["dialogs"]["Ses01F_impro01"]["utterances"]) == 2
    (tmp_path / "labels.json").write_text(json.dumps({"dialogs": {"Ses01F_impro01": {"utterances": []}}}))
    assert formats.load_labels(tmp_path)["dialogs"]["Ses01F_impro01"]["utterances"] == []
    with pytest.raises(PipelineError, match="dialog Ses01F_impro01: no 'wav' key"):
        formats.load_labels(tmp_path, require=("wav",))
    # any list of distinct classes is a label set (a CSV corpus's own); a named set must list its classes
    (tmp_path / "labels.json").write_text(json.dumps({"labels": ["a", "b"], "dialogs": {}}))
    assert formats.labels_of(formats.load_labels(tmp_path)) == ("a", "b")
    for bad, message in (
        ({"labels": ["a", "a"]}, r"'labels' \['a', 'a'\], expected a list of distinct class names"),
        ({"labels": []}, "expected a list of distinct class names"),
        ({"labels": ["hap", "ang", "sad", "neu"], "label_set": "wu6"}, r"label_set wu6 has the classes \['hap', 'sad'"),
        ({"label_set": "meld7"}, "label_set 'meld7', expected one of iemocap4, wu6"),
    ):
        (tmp_path / "labels.json").write_text(json.dumps({**bad, "dialogs": {}}))
        with pytest.raises(PipelineError, match=message):
            formats.load_labels(tmp_path)
    wu6 = {"labels": list(formats.LABEL_SETS["wu6"]["labels"]), "label_set": "wu6"}
    (tmp_path / "labels.json").write_text(
        json.dumps({**wu6, "dialogs": {"Ses01F_impro01": {"utterances": [good_utt(0, label="xxx", code="xxx")]}}})
    )
    assert formats.load_labels(tmp_path)["dialogs"]["Ses01F_impro01"]["utterances"][0]["label"] == "xxx"
    (tmp_path / "labels.json").write_text(json.dumps({"dialogs": [1, 2]}))
    with pytest.raises(PipelineError, match="'dialogs' must be an object"):
        formats.load_labels(tmp_path)


def cache_segment(i=0, **kw):
    return {
        "id": f"Ses01F_impro01-{i:04d}",
        "start": float(i),
        "end": i + 0.5,
        "speaker": "SPEAKER_00",
        "text": "hi",
        "label": 1,
        "audio": torch.linspace(-0.5, 0.5, 8000),
        **kw,
    }


@pytest.mark.parametrize(
    "change, message",
    [
        ({"text": b"hi"}, "text must be a string, got bytes"),
        ({"label": "hap"}, "label 'hap', expected an integer in -1..3"),
        ({"label": 1.7}, "label 1.7, expected an integer"),
        ({"label": True}, "label True, expected an integer"),
        ({"label": 4}, "label 4, expected an integer"),
        ({"audio": torch.full((8000,), float("nan"))}, "audio holds 8000 NaN or infinite samples"),
        ({"audio": torch.tensor([0.1, float("inf")])}, "audio holds 1 NaN or infinite samples"),
        ({"audio": torch.zeros(2, 4000)}, "audio is a 2-D torch.float32 tensor; expected a 1-D float tensor"),
        ({"audio": torch.zeros(8000, dtype=torch.bool)}, "audio is a 1-D torch.bool tensor"),
        ({"audio": torch.zeros(8000, dtype=torch.int16)}, "audio is a 1-D torch.int16 tensor"),
        ({"audio": torch.zeros(48000)}, "48000 samples for 0.500 s; expected at most 8000 at 16000 Hz"),
        ({"start": float("nan")}, "start nan, end 1.5; expected finite seconds"),
        ({"id": 3}, "id must be a string"),
    ],
)
def test_segment_dataset_rejects_bad_cache_contents(tmp_path, change, message):
    path = tmp_path / "Ses01F_impro01.pt"
    fileio.atomic_torch_save(
        {
            "dialog": "Ses01F_impro01",
            "session": 1,
            "sample_rate": 16000,
            "segments": [cache_segment(0), cache_segment(1, **change)],
        },
        path,
    )
    with pytest.raises(PipelineError) as e:
        utils.SegmentDataset([path], labelled_only=False)
    assert str(e.value).startswith(f"{path}: segment 1") and message in str(e.value), str(e.value)


def test_segment_dataset_rejects_duplicate_ids_wrong_dialog_and_rate(tmp_path):
    a, b = tmp_path / "Ses01F_impro01.pt", tmp_path / "Ses01F_impro02.pt"
    fileio.atomic_torch_save({"dialog": "Ses01F_impro01", "sample_rate": 16000, "segments": [cache_segment(0)]}, a)
    fileio.atomic_torch_save({"dialog": "Ses01F_impro02", "sample_rate": 16000, "segments": [cache_segment(0)]}, b)
    with pytest.raises(
        PipelineError, match="Ses01F_impro02.pt: segment 0: id 'Ses01F_impro01-0000' is also a segment of"
    ):
        utils.SegmentDataset([a, b], labelled_only=False)
    fileio.atomic_torch_save({"dialog": "Ses01F_impro01", "sample_rate": 16000, "segments": [cache_segment(0)]}, b)
    with pytest.raises(
        PipelineError, match="Ses01F_impro02.pt: holds dialog 'Ses01F_impro01', expected 'Ses01F_impro02'"
    ):
        utils.SegmentDataset([b], labelled_only=False)
    fileio.atomic_torch_save({"dialog": "Ses01F_impro01", "sample_rate": 8000, "segments": [cache_segment(0)]}, a)
    with pytest.raises(PipelineError, match="Ses01F_impro01.pt: sample_rate 8000, expected 16000"):
        utils.SegmentDataset([a], labelled_only=False)
    fileio.atomic_torch_save(
        {
            "dialog": "Ses01F_impro01",
            "sample_rate": 16000,
            "segments": [cache_segment(0, audio=torch.zeros(0), label=torch.tensor(2))],
        },
        a,
    )
    ds = utils.SegmentDataset([a], labelled_only=False)  # an integer tensor label is an integer; no audio is counted
    assert (
        ds.segments[0]["label"] == 2 and ds.counts["audio_shorter_than_times"] == 1 and ds.counts["padded_short"] == 1
    )
