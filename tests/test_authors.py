"""The switches that reproduce the authors' code (M4RC034/SER-Align), each on known answers:
align.py --label-rule authors, --peak-normalize authors; train.py --audio-padding authors."""

import numpy as np
import pytest
import soundfile as sf
import torch

import align
import utils
from common import cli, fileio

D = "Ses01F_impro01"


def utt(uid, start, end, label, code=None, text="words"):
    return {
        "id": uid,
        "start": start,
        "end": end,
        "speaker": uid[-4],
        "code": code or label,
        "label": label,
        "text": text,
    }


def label(utts, start, end, rule="authors", min_label_overlap=0.1):
    return align.label_segments([{"start": start, "end": end}], utts, D, min_label_overlap, rule)[0]["label"]


# --------------------------------------------------------------------------- --label-rule authors


def test_authors_rule_takes_the_largest_4class_utterance():
    """The issue's layout: [0, 5] over fru [0, 3.5] and ang [3.5, 5]. Their labels file holds no fru,
    so ang (1.5 s) is the largest candidate; the largest utterance of any code (fru) does not count."""
    utts = [utt("Ses01F_impro01_F000", 0.0, 3.5, None, "fru"), utt("Ses01F_impro01_M000", 3.5, 5.0, "ang")]
    assert label(utts, 0.0, 5.0) == "ang"
    assert label(utts, 0.0, 5.0, rule="sum") == "ang"
    # the single largest, not the largest sum: two neutral utterances (2 s together) lose to one ang of 1.5 s
    utts = [
        utt("Ses01F_impro01_F000", 0.0, 1.0, "neu"),
        utt("Ses01F_impro01_F001", 1.0, 2.0, "neu"),
        utt("Ses01F_impro01_M000", 2.0, 3.5, "ang", "ang"),
    ]
    assert label(utts, 0.0, 3.5) == "ang" and label(utts, 0.0, 3.5, rule="sum") == "neu"
    # exc is hap in their map, as in ours
    assert label([utt("Ses01F_impro01_F000", 0.0, 2.0, "hap", "exc")], 0.5, 1.5) == "hap"


def test_authors_rule_ties_go_to_the_earliest():
    """Their loop keeps the first utterance of their labels file on equal overlaps (a strict >);
    labels.json lists utterances by start time."""
    utts = [utt("Ses01F_impro01_F000", 0.0, 1.0, "sad"), utt("Ses01F_impro01_M000", 1.0, 2.0, "hap")]
    assert label(utts, 0.5, 1.5) == "sad"
    assert label(utts, 0.5, 1.5, rule="sum") == "hap"  # ours: a tie of sums goes to the first of LABELS
    # the same start (two speakers at once): the first listed
    same = [utt("Ses01F_impro01_F000", 1.0, 3.0, "neu"), utt("Ses01F_impro01_M000", 1.0, 2.5, "ang")]
    assert label(same, 1.0, 2.0) == "neu"
    assert label(same[::-1], 1.0, 2.0) == "ang"


def test_authors_rule_threshold_is_strict_and_below_it_nothing():
    utts = [utt("Ses01F_impro01_F000", 0.0, 4.95, None, "fru"), utt("Ses01F_impro01_M000", 4.95, 6.0, "ang")]
    assert label(utts, 0.0, 5.0) is None  # the only candidate overlaps 0.05 s
    one = [utt("Ses01F_impro01_F000", 0.0, 1.0, "sad")]
    assert label(one, 0.0, 0.1) is None  # exactly 0.1 s is not > 0.1 s
    assert label(one, 0.0, 0.125) == "sad"
    assert label(one, 0.0, 0.125, min_label_overlap=0.2) is None
    assert label([utt("Ses01F_impro01_F000", 0.0, 3.0, None, "xxx")], 0.0, 3.0) is None


def test_authors_rule_skips_utterances_without_transcript_text():
    """Their step 1 keeps an utterance only if its transcript line has text; our step 1 refuses an
    utterance without a line, so labels.json can only say "" for it."""
    utts = [utt("Ses01F_impro01_F000", 0.0, 3.0, "ang", text=" "), utt("Ses01F_impro01_M000", 3.0, 4.0, "neu")]
    assert label(utts, 0.0, 4.0) == "neu"
    assert label(utts, 0.0, 4.0, rule="sum") == "ang"
    utts[0]["text"] = "Leave me alone."
    assert label(utts, 0.0, 4.0) == "ang"


def their_rule(utts, start, end, threshold):
    """The authors' get_label_for_segment as their preprocess.py specifies it, over the utterances
    their step 1 keeps, written out independently of align.py."""
    best, best_label = 0.0, None
    for u in utts:
        if u["label"] is None or not u["text"].strip():
            continue
        overlap = max(0, min(end, u["end"]) - max(start, u["start"]))
        if overlap > best:
            best, best_label = overlap, u["label"]
    return best_label if best > threshold else None


def test_authors_rule_equals_their_loop_on_random_layouts():
    """Random dialogs on a 0.05 s grid (many exact ties, overlapping speakers, blank transcripts)."""
    rng = np.random.default_rng(19)
    codes = {
        "neu": "neu",
        "hap": "hap",
        "exc": "hap",
        "sad": "sad",
        "ang": "ang",
        "fru": None,
        "sur": None,
        "xxx": None,
    }
    n_labelled = 0
    for _ in range(300):
        utts = []
        for i in range(rng.integers(1, 7)):
            start = float(rng.integers(0, 100)) * 0.05
            code = str(rng.choice(list(codes)))
            utts.append(
                utt(
                    f"Ses01F_impro01_{'FM'[i % 2]}{i:03d}",
                    start,
                    start + float(rng.integers(1, 40)) * 0.05,
                    codes[code],
                    code,
                    text="" if rng.random() < 0.1 else "x",
                )
            )
        utts.sort(key=lambda u: (u["start"], u["id"]))  # labels.json's order
        start = float(rng.integers(0, 100)) * 0.05
        end = start + float(rng.integers(0, 60)) * 0.05
        expected = their_rule(utts, start, end, 0.1)
        assert label(utts, start, end) == expected, (utts, start, end)
        n_labelled += expected is not None
    assert n_labelled > 100  # the layouts exercise the labelled case, not only None


# --------------------------------------------------------------------------- --peak-normalize authors


def test_peak_normalize_known_answers():
    x = np.array([0.1, -0.5, 0.25], dtype=np.float32)
    np.testing.assert_array_equal(align.peak_normalize(x, "none"), x)
    y = align.peak_normalize(x, "authors")
    assert y.dtype == np.float32 and float(np.max(np.abs(y))) == pytest.approx(0.95, abs=1e-7)
    t = torch.from_numpy(x)  # their computation, in torch float32
    np.testing.assert_array_equal(y, (t / torch.max(torch.abs(t)) * 0.95).numpy())
    quiet = np.array([0.005, -0.01], dtype=np.float32)  # a peak of 0.01 does not exceed 0.01: unchanged
    np.testing.assert_array_equal(align.peak_normalize(quiet, "authors"), quiet)
    with pytest.raises(ValueError):
        align.peak_normalize(x, "max")


def test_peak_normalize_scales_the_cached_audio_and_is_part_of_the_config(tmp_path, capsys):
    from test_align import FIG3_TURNS, FIG3_UTTS, fig3_asr, make_work

    corpus, work = make_work(tmp_path, {D: fig3_asr()}, {D: FIG3_TURNS}, {D: FIG3_UTTS})
    mean = sf.read(corpus / "Session1/dialog/wav" / f"{D}.wav", dtype="float32", always_2d=True)[0].mean(axis=1)
    scale = np.float32(0.95) / np.max(np.abs(mean))
    assert abs(scale - 1) > 0.5  # the test audio's peak is about 0.5
    caches = {}
    for rule in ("none", "authors"):
        align.main(["--work", str(work), "--pipe", "simulated", "--variant", "aligned", "--peak-normalize", rule])
        assert "wrote 1 dialogs" in capsys.readouterr().out  # a changed setting redoes the dialog
        for manifest in (work / "simulated").glob("*/manifest.json"):  # the variant that holds this setting
            config = fileio.read_json(manifest)["config"]
            if config.get("peak_normalize", "none") == rule:
                caches[rule] = fileio.load_pt(manifest.parent / "cache" / f"{D}.pt")
                assert ("peak_normalize" in config) == (rule != "none")  # the default keeps earlier config keys
    plain, scaled = caches["none"]["segments"], caches["authors"]["segments"]
    assert len(plain) == len(scaled) > 0
    for a, b in zip(plain, scaled):
        np.testing.assert_allclose(b["audio"].numpy(), a["audio"].numpy() * scale, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- --audio-padding authors


def cache_of(tmp_path, arrays):
    segs, t = [], 0.0
    for n, a in enumerate(arrays):
        segs.append(
            {
                "id": f"{D}-{n:04d}",
                "start": t,
                "end": t + len(a) / 16000,
                "speaker": "SPEAKER_00",
                "text": "x",
                "label": n % 4,
                "audio": torch.from_numpy(a),
            }
        )
        t += len(a) / 16000
    path = tmp_path / f"{D}.pt"
    fileio.atomic_torch_save({"dialog": D, "session": 1, "sample_rate": 16000, "segments": segs}, path)
    return path


def collated(path, audio_padding, do_normalize=True):
    seg_norm, row_norm = utils.normalisation_places(audio_padding, do_normalize)
    ds = utils.SegmentDataset([path], labelled_only=True, do_normalize=seg_norm)
    return utils.Collator(None, normalize_rows=row_norm)([ds[i] for i in range(len(ds))])["input_values"]


def test_authors_padding_equals_their_feature_extractor(tmp_path):
    """Their Wav2Vec2Processor (wav2vec2-base: do_normalize, no attention mask) with padding="longest"
    on the same raw arrays gives our authors-mode batch, padding included."""
    from transformers import Wav2Vec2FeatureExtractor

    rng = np.random.default_rng(0)
    arrays = [
        (rng.standard_normal(n) * s + o).astype(np.float32)
        for n, s, o in ((4000, 0.1, 0.02), (6400, 0.3, -0.01), (12000, 0.05, 0.0), (640, 0.5, 0.1))
    ]
    fe = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=False
    )
    theirs = fe(arrays, sampling_rate=16000, padding="longest", return_tensors="np")["input_values"]
    assert "attention_mask" not in fe(arrays, sampling_rate=16000, padding="longest")
    ours = collated(cache_of(tmp_path, arrays), "authors").numpy()
    assert ours.shape == theirs.shape == (4, 12000)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-6)
    assert np.all(ours[0, 4000:] == ours[0, 4000]) and ours[0, 4000] != 0  # their padding is not zero after it
    # the default (exact): each segment normalised alone, then zero padding
    exact = collated(cache_of(tmp_path, arrays), "exact").numpy()
    for row, a in zip(exact, arrays):
        np.testing.assert_allclose(row[: len(a)], utils.zero_mean_unit_var(torch.from_numpy(a)).numpy(), atol=1e-6)
        assert not row[len(a) :].any()
    assert np.abs(exact - theirs).max() > 0.1
    # an extractor without do_normalize: raw samples, zero-padded, in both modes
    raw = collated(cache_of(tmp_path, arrays), "authors", do_normalize=False).numpy()
    np.testing.assert_array_equal(raw, collated(cache_of(tmp_path, arrays), "exact", do_normalize=False).numpy())
    np.testing.assert_array_equal(raw[3, :640], arrays[3])
    with pytest.raises(cli.PipelineError):
        utils.normalisation_places("longest", True)
