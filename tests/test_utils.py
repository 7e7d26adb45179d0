"""The shared helpers of utils.py section 1: label map, atomic writes, loaders and their errors."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

import utils
from utils import PipelineError


def test_label_map_merges_exc_and_drops_other_codes():
    assert utils.LABELS == ("hap", "ang", "sad", "neu")
    assert utils.CODE_TO_LABEL["exc"] == "hap" and utils.CODE_TO_LABEL["hap"] == "hap"
    for code in ("fru", "sur", "fea", "dis", "oth", "xxx"):
        assert code in utils.IEMOCAP_CODES and code not in utils.CODE_TO_LABEL
    assert [utils.LABEL_INDEX[x] for x in utils.LABELS] == [0, 1, 2, 3]


def test_session_of():
    assert utils.session_of("Ses03M_impro05a") == 3
    assert utils.session_of("Ses05M_script01_1b_F012") == 5
    with pytest.raises(PipelineError, match="not an IEMOCAP"):
        utils.session_of("Session1")


def test_atomic_json_roundtrip_and_no_temp_left(tmp_path):
    path = tmp_path / "a" / "b.json"
    utils.atomic_write_json(path, {"x": [1, 2.5, "é"]})
    assert utils.read_json(path) == {"x": [1, 2.5, "é"]}
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]


def test_atomic_write_keeps_old_file_when_serialisation_fails(tmp_path):
    path = tmp_path / "c.json"
    utils.atomic_write_json(path, {"ok": 1})
    with pytest.raises(TypeError):
        utils.atomic_write_json(path, {"bad": object()})
    assert utils.read_json(path) == {"ok": 1}
    assert len(list(tmp_path.iterdir())) == 1


def test_read_json_errors_name_the_file(tmp_path):
    with pytest.raises(PipelineError, match="missing.json: labels file not found"):
        utils.read_json(tmp_path / "missing.json", "labels file")
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": ')
    with pytest.raises(PipelineError, match="bad.json: corrupt"):
        utils.read_json(bad)


def test_load_labels_requires_step1(tmp_path):
    with pytest.raises(PipelineError, match="run step 1 first"):
        utils.load_labels(tmp_path)
    (tmp_path / "labels.json").write_text(json.dumps({"x": 1}))
    with pytest.raises(PipelineError, match="no 'dialogs' key"):
        utils.load_labels(tmp_path)


def test_pt_roundtrip_weights_only_and_corrupt_file(tmp_path):
    obj = {"segments": [{"id": "a", "audio": torch.arange(5, dtype=torch.float32), "label": -1}]}
    utils.atomic_torch_save(obj, tmp_path / "x.pt")
    back = utils.load_pt(tmp_path / "x.pt")
    assert torch.equal(back["segments"][0]["audio"], obj["segments"][0]["audio"])
    (tmp_path / "y.pt").write_bytes(b"not a zip file")
    with pytest.raises(PipelineError, match="y.pt: corrupt or unreadable"):
        utils.load_pt(tmp_path / "y.pt")


def test_load_pt_refuses_pickled_objects(tmp_path):
    from fractions import Fraction  # an arbitrary class: unpickling it would run its code

    torch.save({"obj": Fraction(1, 3)}, tmp_path / "z.pt")
    with pytest.raises(PipelineError, match="z.pt"):
        utils.load_pt(tmp_path / "z.pt")


def test_rttm_roundtrip_sorted(tmp_path):
    turns = [(3.0, 4.5, "SPEAKER_01"), (0.5, 2.25, "SPEAKER_00"), (5.0, 5.0, "SPEAKER_00")]
    utils.write_rttm(tmp_path / "d.rttm", "Ses01F_impro01", turns)
    lines = (tmp_path / "d.rttm").read_text().splitlines()
    assert lines[0] == "SPEAKER Ses01F_impro01 1 0.500 1.750 <NA> <NA> SPEAKER_00 <NA> <NA>"
    assert len(lines) == 2  # the zero-length turn is not written
    assert utils.read_rttm(tmp_path / "d.rttm") == [(0.5, 2.25, "SPEAKER_00"), (3.0, 4.5, "SPEAKER_01")]


@pytest.mark.parametrize("line,msg", [
    ("SPKR x 1 0.0 1.0 <NA> <NA> A <NA> <NA>", ":1: expected 'SPEAKER"),
    ("SPEAKER x 1 zero 1.0 <NA> <NA> A <NA> <NA>", ":1: start and duration must be numbers"),
    ("SPEAKER x 1 1.0 -1.0 <NA> <NA> A <NA> <NA>", ":1: negative"),
])
def test_rttm_malformed_lines_name_file_and_line(tmp_path, line, msg):
    path = tmp_path / "bad.rttm"
    path.write_text(line + "\n")
    with pytest.raises(PipelineError, match="bad.rttm" + msg):
        utils.read_rttm(path)


def test_load_audio_mixes_stereo_and_checks_rate(tmp_path):
    left = np.linspace(-0.5, 0.5, 1600, dtype=np.float32)
    right = np.zeros(1600, dtype=np.float32)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    mono = utils.load_audio(tmp_path / "s.wav")
    assert mono.shape == (1600,) and mono.dtype == np.float32
    np.testing.assert_allclose(mono, left / 2, atol=1e-7)
    sf.write(tmp_path / "r.wav", left, 8000)
    with pytest.raises(PipelineError, match="r.wav: sample rate 8000 Hz"):
        utils.load_audio(tmp_path / "r.wav")
    (tmp_path / "c.wav").write_bytes(b"RIFF....garbage")
    with pytest.raises(PipelineError, match="c.wav: cannot decode audio"):
        utils.load_audio(tmp_path / "c.wav")
    with pytest.raises(PipelineError, match="nope.wav: audio file not found"):
        utils.load_audio(tmp_path / "nope.wav")


def test_load_audio_channel_choice(tmp_path):
    # Left channel = 0.1 * n, right channel = -0.3 at every sample: exact in float32 WAV.
    left = (np.arange(800, dtype=np.float32) % 8) / 10
    right = np.full(800, -0.3, dtype=np.float32)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    np.testing.assert_array_equal(utils.load_audio(tmp_path / "s.wav", channel="0"), left)
    np.testing.assert_array_equal(utils.load_audio(tmp_path / "s.wav", channel=1), right)
    np.testing.assert_allclose(utils.load_audio(tmp_path / "s.wav", channel="mean"), (left + right) / 2, atol=1e-7)
    np.testing.assert_array_equal(utils.load_audio(tmp_path / "s.wav"), utils.load_audio(tmp_path / "s.wav", channel="mean"))
    # A mono file ignores the choice.
    sf.write(tmp_path / "m.wav", left, 16000, subtype="FLOAT")
    for ch in utils.AUDIO_CHANNELS:
        np.testing.assert_array_equal(utils.load_audio(tmp_path / "m.wav", channel=ch), left)
    with pytest.raises(ValueError, match="channel must be one of"):
        utils.load_audio(tmp_path / "s.wav", channel="2")


def test_merge_intervals_known_answers():
    assert utils.merge_intervals([(3, 4), (0, 1), (0.5, 2), (5, 5)]).tolist() == [[0, 2], [3, 4]]
    assert utils.merge_intervals([(0, 1), (1, 2), (2.5, 3), (2.6, 2.7)]).tolist() == [[0, 2], [2.5, 3]]  # touching join
    assert utils.merge_intervals([(2, 1), (4, 4)]).shape == (0, 2)  # reversed and empty intervals dropped
    assert utils.merge_intervals([]).shape == (0, 2)
    assert utils.subtract_intervals([(0, 10)], [(2, 3), (2.5, 4), (9, 12)]).tolist() == [[0, 2], [4, 9]]
    assert utils.subtract_intervals([(0, 1), (2, 3)], []).tolist() == [[0, 1], [2, 3]]
    assert utils.subtract_intervals([(0, 1)], [(-1, 5)]).shape == (0, 2)
    assert utils.union_length([(0, 2), (1, 3), (5, 6), (7, 7)]) == pytest.approx(4.0)
    assert utils.union_length([]) == 0.0


@pytest.mark.parametrize("seed", range(3))
def test_interval_helpers_match_a_fine_grid(seed):
    """Union and difference against membership on a 1 ms grid (random intervals on a 1 ms lattice)."""
    rng = np.random.default_rng(seed)
    a = np.sort(rng.integers(0, 2000, (12, 2)), axis=1) / 1000
    b = np.sort(rng.integers(0, 2000, (8, 2)), axis=1) / 1000
    grid = np.arange(0, 2000) / 1000 + 0.0005  # midpoints of the 1 ms cells

    def member(iv):
        return np.any((grid[:, None] > iv[:, 0]) & (grid[:, None] < iv[:, 1]), axis=1)

    m = utils.merge_intervals(a)
    assert np.all(np.diff(m[:, 0]) > 0) and np.all(m[1:, 0] > m[:-1, 1])  # sorted, disjoint, not touching
    np.testing.assert_array_equal(member(m), member(a))
    np.testing.assert_array_equal(member(utils.subtract_intervals(a, b)), member(a) & ~member(b))
    assert utils.union_length(a) == pytest.approx(member(a).sum() / 1000)


def test_run_directory_helpers(tmp_path):
    run = tmp_path / "run"
    for name in ("fold10", "fold2", "fold1", "foldx", "other"):
        utils.atomic_write_json(run / name / "config.json", {})
    (run / "fold3").mkdir()  # no config.json: not a fold
    assert [p.name for p in utils.fold_dirs(run)] == ["fold1", "fold2", "fold10"]
    utils.atomic_write_json(run / "config.json", {"folds": ["fold2", {"name": "fold1"}]})
    assert [p.name for p in utils.fold_dirs(run)] == ["fold2", "fold1"]

    labels = {"dialogs": {"Ses01F_impro01": {"session": 1}, "Ses05F_impro01": {"session": 5},
                          "Ses05M_script01_1b": {"session": 5}}}
    predictions = {"segments": [{"dialog": "Ses01F_impro01"}]}
    single = tmp_path / "single"
    single.mkdir()
    assert utils.run_test_dialogs(single, predictions, labels)[0] == ["Ses01F_impro01"]  # no config: predictions
    utils.atomic_write_json(single / "config.json", {"split": {"test": [5]}})
    assert utils.run_test_dialogs(single, predictions, labels)[0] == ["Ses05F_impro01", "Ses05M_script01_1b"]
    utils.atomic_write_json(single / "config.json", {"split": {"test": {"dialogs": ["Ses05F_impro01"]}}})
    assert utils.run_test_dialogs(single, predictions, labels)[0] == ["Ses05F_impro01"]


def test_overlap():
    assert utils.overlap(0, 2, 1, 3) == 1
    assert utils.overlap(0, 1, 2, 3) == 0
    assert utils.overlap(0, 5, 1, 2) == 1


def test_demo_note_only_for_the_generated_corpus(tmp_path):
    assert utils.demo_note({"corpus": str(tmp_path)}) is None
    (tmp_path / "demo_ground_truth.json").write_text("{}")
    assert utils.demo_note({"corpus": str(tmp_path)}) == utils.DEMO_NOTE
    assert "say nothing about IEMOCAP" in utils.DEMO_NOTE
