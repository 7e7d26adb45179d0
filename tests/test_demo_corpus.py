"""Tests of demo/make_corpus.py: the synthetic corpus in IEMOCAP's layout and its ground truth.

The corpus is tiny (Sessions 1 and 5, one improvised + one scripted dialog each, 6 utterances) so
the file runs in a few seconds. The corpus files are parsed here with simple regexes on purpose:
step 1's parser is tested elsewhere, and these tests pin the format independently of it.
"""

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common.cli import PipelineError  # noqa: E402
from common.fileio import read_json  # noqa: E402
from common.formats import CODE_TO_LABEL, IEMOCAP_CODES  # noqa: E402
from demo import make_corpus as mc  # noqa: E402

TINY = dict(seed=0, sessions=[1, 5], impro_per_session=1, script_per_session=1, utterances_per_dialog=6)
DIALOG_RE = re.compile(r"^Ses(\d\d)([FM])_(impro\d\d[a-z]?|script0[123]_\d[a-z]?)$")
EMO_FIRST_RE = re.compile(
    r"^\[(\d+\.\d{4}) - (\d+\.\d{4})\]\t(\S+)\t([a-z]{3})\t\[(\d\.\d{4}), (\d\.\d{4}), (\d\.\d{4})\]$"
)
EMO_CAT_RE = re.compile(r"^C-(E[1-4]|[FM]1):\t(?:[A-Z][a-z]+; ?)+\t\(\)$")
EMO_DIM_RE = re.compile(r"^A-(E[1-4]|[FM]1):\tval ([1-5]); act ([1-5]); dom  ([1-5]);\t\(\)$")
TRANS_RE = re.compile(r"^(Ses\S+) \[(\d{3}\.\d{4})-(\d{3}\.\d{4})\]: (.+)$")
WDSEG_ROW_RE = re.compile(r"^ *(\d+) +(\d+) +(-?\d+) (\S+)$")
TOTAL_RE = re.compile(r"^ Total score: +(-?\d+)$")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "IEMOCAP_full_release"
    truth = mc.generate(out, **TINY)
    return out, truth


def dialog_dir(out, truth, name):
    return out / f"Session{truth['dialogs'][name]['session']}"


def read_wdseg(path):
    """-> rows [(sfrm, efrm, score, token)], total score; asserts the Sphinx-3 layout."""
    lines = path.read_text().splitlines()
    assert lines[0].split() == ["SFrm", "EFrm", "SegAScr", "Word"]
    rows = []
    for line in lines[1:-1]:
        m = WDSEG_ROW_RE.match(line)
        assert m, f"{path}: bad row {line!r}"
        rows.append((int(m[1]), int(m[2]), int(m[3]), m[4]))
    m = TOTAL_RE.match(lines[-1])
    assert m, f"{path}: bad last line {lines[-1]!r}"
    return rows, int(m[1])


def test_deterministic_and_cli(corpus, tmp_path):
    out, truth = corpus
    again = tmp_path / "again"
    mc.main(
        [
            "--out",
            str(again),
            "--seed",
            "0",
            "--sessions",
            "1,5",
            "--impro-per-session",
            "1",
            "--script-per-session",
            "1",
            "--utterances-per-dialog",
            "6",
        ]
    )
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert len(files) == 1 + 1 + 4 * 3 + 2 * 24  # marker, ground truth, 3 per dialog, wav+wdseg per utterance
    for rel in files:
        assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel
    assert read_json(out / "demo_ground_truth.json") == truth


def test_other_seed_differs_and_sessions_independent(corpus, tmp_path):
    out, truth = corpus
    other = mc.generate(tmp_path / "s1", **{**TINY, "seed": 1, "sessions": [5], "script_per_session": 0})
    assert other["dialogs"]["Ses05F_impro01"]["words"] != truth["dialogs"]["Ses05F_impro01"]["words"]
    # Session 5 does not depend on which other sessions are generated with it.
    alone = mc.generate(tmp_path / "s5", **{**TINY, "sessions": [5]})
    assert alone["dialogs"]["Ses05F_impro01"] == truth["dialogs"]["Ses05F_impro01"]
    rel = Path("Session5/dialog/wav/Ses05F_impro01.wav")
    assert (tmp_path / "s5" / rel).read_bytes() == (out / rel).read_bytes()


def test_rerun_cleans_previous_demo_and_refuses_foreign_dirs(tmp_path):
    out = tmp_path / "c"
    mc.generate(out, **{**TINY, "sessions": [1, 2], "script_per_session": 0, "utterances_per_dialog": 2})
    mc.generate(out, **{**TINY, "sessions": [2], "script_per_session": 0, "utterances_per_dialog": 2})
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["Session2"]
    foreign = tmp_path / "real"
    (foreign / "Session1").mkdir(parents=True)
    with pytest.raises(PipelineError, match="not a demo corpus"):
        mc.generate(foreign, **TINY)
    assert (foreign / "Session1").is_dir()
    for bad in (
        dict(sessions=0),
        dict(sessions=[]),
        dict(utterances_per_dialog=1),
        dict(audio_noise=1.5),
        dict(impro_per_session=0, script_per_session=0),
    ):
        with pytest.raises(PipelineError):
            mc.generate(tmp_path / "bad", **{**TINY, **bad})


def test_layout_and_dialog_names(corpus):
    out, truth = corpus
    assert sorted(truth["dialogs"]) == ["Ses01F_impro01", "Ses01F_script01_1", "Ses05F_impro01", "Ses05F_script01_1b"]
    for name, d in truth["dialogs"].items():
        m = DIALOG_RE.match(name)
        assert m and int(m[1]) == d["session"]
        assert d["scenario"] == m[3] and d["kind"] == ("impro" if m[3].startswith("impro") else "script")
        assert d["script"] == (m[3][:8] if d["kind"] == "script" else None)
        ses = dialog_dir(out, truth, name)
        for sub in ("dialog/wav/{}.wav", "dialog/EmoEvaluation/{}.txt", "dialog/transcriptions/{}.txt"):
            assert (ses / sub.format(name)).is_file()
        for u in d["utterances"]:
            assert re.fullmatch(rf"{name}_[FM](\d{{3}}|XX\d)", u["id"]) and u["id"][len(name) + 1] == u["speaker"]
            assert (ses / "sentences" / "wav" / name / f"{u['id']}.wav").is_file()
            assert (ses / "sentences" / "ForcedAlignment" / name / f"{u['id']}.wdseg").is_file()
    # the three scripts have the same lines in every session (markers and performance aside)
    strip = lambda t: re.sub(r"[.!?]$", "", " ".join(w for w in t.split() if not re.fullmatch(r"\[[A-Z]+\]", w)))  # noqa: E731
    s1 = [(u["speaker"], strip(u["text"])) for u in truth["dialogs"]["Ses01F_script01_1"]["utterances"]]
    s5 = [(u["speaker"], strip(u["text"])) for u in truth["dialogs"]["Ses05F_script01_1b"]["utterances"]]
    assert s1 == s5


def test_emo_evaluation_format(corpus):
    out, truth = corpus
    for name, d in truth["dialogs"].items():
        text = (dialog_dir(out, truth, name) / "dialog" / "EmoEvaluation" / f"{name}.txt").read_text()
        assert text.startswith("%")
        blocks = [b for b in text.split("\n\n")[1:] if b.strip()]
        expected = [u for u in d["utterances"] if u["evaluated"]]
        assert len(blocks) == len(expected)
        for block, u in zip(blocks, expected):
            first, *rest = block.strip("\n").split("\n")
            m = EMO_FIRST_RE.match(first)
            assert m, first
            assert (float(m[1]), float(m[2]), m[3], m[4]) == (u["start"], u["end"], u["id"], u["code"])
            assert u["code"] in IEMOCAP_CODES and u["label"] == CODE_TO_LABEL.get(u["code"])
            cats = [line for line in rest if line.startswith("C-")]
            dims = [EMO_DIM_RE.match(line) for line in rest if line.startswith("A-")]
            assert len(cats) == 4 and all(EMO_CAT_RE.match(line) for line in cats)
            assert len(dims) == 3 and all(dims)
            external = [g for g in dims if g[1].startswith("E")]  # [V, A, D] is their mean
            means = [float(m[5]), float(m[6]), float(m[7])]
            assert means == [np.mean([int(g[k]) for g in external]) for k in (2, 3, 4)]
        assert not any(u["id"] in text for u in d["utterances"] if not u["evaluated"])


def test_transcriptions_format(corpus):
    out, truth = corpus
    n_xx = n_other = n_markers = 0
    for name, d in truth["dialogs"].items():
        lines = (dialog_dir(out, truth, name) / "dialog" / "transcriptions" / f"{name}.txt").read_text().splitlines()
        ses_lines = [TRANS_RE.match(line) for line in lines if line.startswith("Ses")]
        assert all(ses_lines)
        n_other += len(lines) - len(ses_lines)
        got = [(m[1], float(m[2]), float(m[3]), m[4]) for m in ses_lines]
        assert got == [(u["id"], u["start"], u["end"], u["text"]) for u in d["utterances"]]
        n_xx += sum("XX" in g[0] for g in got)
        n_markers += sum(bool(re.search(r"\[(LAUGHTER|BREATHING)\]", g[3])) for g in got)
        assert all(line.endswith("]") for line in lines if not line.startswith("Ses"))
    # this seed's tiny corpus has every quirk: XX ids, non-"Ses" lines, inline markers
    assert n_xx == 2 and n_other == 2 and n_markers >= 3


def test_wdseg_matches_ground_truth_words(corpus):
    out, truth = corpus
    n_variants = 0
    for name, d in truth["dialogs"].items():
        by_utt = {}
        for w in d["words"]:
            by_utt.setdefault(w["utterance"], []).append(w)
        for u in d["utterances"]:
            path = dialog_dir(out, truth, name) / "sentences" / "ForcedAlignment" / name / f"{u['id']}.wdseg"
            rows, total = read_wdseg(path)
            assert total == sum(r[2] for r in rows)
            assert rows[0][3] == "<s>" and rows[-1][3] == "</s>" and rows[0][0] == 0
            assert all(b[0] == a[1] + 1 for a, b in zip(rows, rows[1:])) and all(r[1] >= r[0] for r in rows)
            assert abs(u["start"] + (rows[-1][1] + 1) / 100 - u["end"]) < 1e-6
            words = [r for r in rows if not (r[3] in ("<s>", "</s>", "<sil>") or r[3].startswith("++"))]
            assert all(re.fullmatch(r"[A-Z]+(\(\d\))?", r[3]) for r in words)
            n_variants += sum("(" in r[3] for r in words)
            markers = [r[3].strip("+") for r in rows if r[3].startswith("++")]
            assert markers == re.findall(r"\[([A-Z]+)\]", u["text"])
            expected = by_utt[u["id"]]
            assert [re.sub(r"\(\d\)$", "", r[3]).lower() for r in words] == [w["word"] for w in expected]
            for r, w in zip(words, expected):  # the documented convention: end = (EFrm + 1) / 100
                assert abs(u["start"] + r[0] / 100 - w["start"]) < 1e-6
                assert abs(u["start"] + (r[1] + 1) / 100 - w["end"]) < 1e-6
            # the transcript shows the same words
            assert [t.strip(".!?").lower() for t in u["text"].split() if not t.startswith("[")] == [
                w["word"] for w in expected
            ]
    assert n_variants > 0


def test_wav_properties_and_sentence_slices(corpus):
    out, truth = corpus
    for name, d in truth["dialogs"].items():
        ses = dialog_dir(out, truth, name)
        info = sf.info(ses / "dialog" / "wav" / f"{name}.wav")
        assert (info.samplerate, info.channels, info.subtype) == (16000, 2, "PCM_16")
        pcm, _ = sf.read(ses / "dialog" / "wav" / f"{name}.wav", dtype="int16")
        assert abs(len(pcm) / 16000 - d["duration"]) < 1e-6
        assert np.count_nonzero(pcm[:4000]) > 0.9 * pcm[:4000].size  # background noise in silence, not digital zero
        for u in d["utterances"]:
            path = ses / "sentences" / "wav" / name / f"{u['id']}.wav"
            info = sf.info(path)
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            sent, _ = sf.read(path, dtype="int16")
            a, b = round(u["start"] * 16000), round(u["end"] * 16000)
            assert np.array_equal(sent, pcm[a:b, 0 if u["speaker"] == "F" else 1])
        # each channel favours its actor: inside the F-only words, ch0 is louder than ch1
        f_only = [
            w
            for w in d["words"]
            if w["speaker"] == "F"
            and not any(v["speaker"] == "M" and v["start"] < w["end"] and w["start"] < v["end"] for v in d["words"])
        ]
        seg = np.concatenate([pcm[round(w["start"] * 16000) : round(w["end"] * 16000)].astype(float) for w in f_only])
        rms = np.sqrt((seg**2).mean(axis=0))
        assert rms[0] > 2.5 * rms[1]


def paper_turns(words, max_pause=1.5):
    """Independent re-implementation of the paper's grouping (Sec. III-A): lists of words."""
    turns = []
    for w in words:
        if turns and turns[-1][-1]["speaker"] == w["speaker"] and w["start"] - turns[-1][-1]["end"] <= max_pause:
            turns[-1].append(w)
        else:
            turns.append([w])
    return turns


def test_ground_truth_consistency(corpus):
    out, truth = corpus
    n_long_inside = n_overlaps = n_same_speaker_next = 0
    for d in truth["dialogs"].values():
        utts = {u["id"]: u for u in d["utterances"]}
        words = d["words"]
        assert [u["start"] for u in d["utterances"]] == sorted(u["start"] for u in d["utterances"])
        assert [w["start"] for w in words] == sorted(w["start"] for w in words)
        for w in words:
            u = utts[w["utterance"]]
            assert u["start"] <= w["start"] < w["end"] <= u["end"] and w["speaker"] == u["speaker"]
            assert re.fullmatch(r"[a-z]+", w["word"])
        for i, (a, b) in enumerate(zip(words, words[1:])):
            assert i == 0 or b["start"] >= max(w["end"] for w in words[:i])  # overlaps at most the previous word
            if b["start"] < a["end"]:
                # the only overlap allowed: the next speaker starts inside the previous speaker's last word
                n_overlaps += 1
                assert b["speaker"] != a["speaker"] and a["start"] < b["start"] and b["end"] > a["end"]
                assert 0.1 - 1e-6 <= a["end"] - b["start"] <= 0.4 + 1e-6
            pause = b["start"] - a["end"]
            assert not 1.4 < pause < 1.6  # no pause ambiguous at the 1.5 s threshold
            n_long_inside += a["utterance"] == b["utterance"] and pause > 1.5
        n_same_speaker_next += sum(a["speaker"] == b["speaker"] for a, b in zip(d["utterances"], d["utterances"][1:]))
        expected = [
            dict(
                speaker=t[0]["speaker"],
                start=t[0]["start"],
                end=max(w["end"] for w in t),
                utterances=list(dict.fromkeys(w["utterance"] for w in t)),
                n_words=len(t),
            )
            for t in paper_turns(words)
        ]
        assert d["turns"] == expected
    # this seed's tiny corpus shows every case: long pauses inside utterances, overlaps, same-speaker runs
    assert n_long_inside >= 2 and n_overlaps >= 2 and n_same_speaker_next >= 2


def estimate_pitch(x, sr=16000):
    """Median autocorrelation pitch over 64 ms frames (70-400 Hz)."""
    out = []
    for i in range(0, len(x) - 1024, 512):
        f = x[i : i + 1024] - x[i : i + 1024].mean()
        ac = np.correlate(f, f, "full")[1023:]
        lo, hi = sr // 400, sr // 70
        out.append(sr / (lo + np.argmax(ac[lo:hi])))
    return float(np.median(out))


def test_synthesised_voice_has_the_intended_pitch_and_cues():
    voice = dict(f0=120.0, formant_scale=1.0, loudness=1.0)
    words = {
        e: mc.synth_voiced(
            np.random.default_rng(0), 12000, "ah", voice, mc.PROSODY[e], mc.PROSODY[e]["pitch"], mc.PROSODY[e]["energy"]
        )
        for e in ("neu", "ang", "sad")
    }
    assert abs(estimate_pitch(words["neu"]) - 120) < 12
    assert estimate_pitch(words["ang"]) > 1.3 * estimate_pitch(words["sad"])
    rms = {e: np.sqrt(np.mean(x**2)) for e, x in words.items()}
    assert rms["sad"] < rms["neu"] < rms["ang"]


def test_corpus_cues_are_learnable(corpus):
    out, truth = corpus
    energy = {}
    for name, d in truth["dialogs"].items():
        ses = dialog_dir(out, truth, name)
        for u in d["utterances"]:
            x, _ = sf.read(ses / "sentences" / "wav" / name / f"{u['id']}.wav")
            frames = x[: len(x) // 400 * 400].reshape(-1, 400)
            e = np.sqrt((frames**2).mean(axis=1))
            energy.setdefault(u["audio_cue"], []).append(np.log(e[e > 0.01]).mean())
            # text cues: a word of the cue emotion's vocabulary is in the utterance
            if u["text_cue"] in mc.TEXT_SOURCES:
                vocab = {w for s in mc.TEXT_SOURCES[u["text_cue"]] for w in mc.EMOTION_WORDS[s]}
                assert vocab & {w["word"] for w in d["words"] if w["utterance"] == u["id"]}
    assert np.mean(energy["sad"]) + 1.0 < np.mean(energy["ang"])
    assert np.mean(energy["sad"]) < np.mean(energy["neu"])


def test_timing_rules_over_many_draws():
    """The timing helpers keep the rules on every draw, not only on the tiny corpus's."""
    rng = np.random.default_rng(0)
    pauses = np.array([mc.pause_frames(rng, slow=bool(i % 2)) for i in range(4000)]) / 100
    assert not np.any((pauses > 1.4) & (pauses < 1.6))
    assert np.any(pauses > 1.5) and np.any((pauses > 0.3) & (pauses < 1.5)) and np.any(pauses == 0)
    overlaps = []
    for _ in range(4000):
        last_start = rng.uniform(0, 1)
        prev = dict(last_word_start=last_start, last_word_end=last_start + rng.uniform(0.1, 0.8))
        first_dur = rng.uniform(0.1, 0.8)
        same = bool(rng.random() < 0.3)
        start = mc.next_first_word_start(rng, prev, same, first_dur)
        gap = start - prev["last_word_end"]
        assert not 1.4 < gap < 1.6
        if gap < 0:
            overlaps.append(-gap)
            assert not same and start > prev["last_word_start"] and start + first_dur > prev["last_word_end"]
    assert overlaps and 0.1 <= min(overlaps) and max(overlaps) <= 0.4


def test_three_party_demo_is_a_csv_corpus(tmp_path):
    """--speakers 3: three actors per dialog (named per session), a mono wav per dialog, wdsegs and corpus.csv,
    which corpus_from_csv.py reads into labels.json with the ground truth's utterances and speakers."""
    import corpus_from_csv
    from common import formats

    out = tmp_path / "party"
    truth = mc.generate(out, **{**TINY, "speakers": 3})
    assert truth["args"]["speakers"] == 3 and not list(out.glob("Session*/dialog/EmoEvaluation"))
    for name, d in truth["dialogs"].items():
        names = {f"{n}{d['session']}" for n in ("Ana", "Ben", "Cai")}
        assert {u["speaker"] for u in d["utterances"]} == names  # six lines: every actor speaks
        assert all(u["evaluated"] for u in d["utterances"])
        info = sf.info(str(out / f"Session{d['session']}" / "dialog" / "wav" / f"{name}.wav"))
        assert info.channels == 1 and info.samplerate == 16000 and abs(info.frames / 16000 - d["duration"]) < 1e-4
    labels = corpus_from_csv.build_labels(out / "corpus.csv")
    assert labels["corpus"] == str(out.resolve()) and formats.demo_note(labels) is not None
    for name, d in truth["dialogs"].items():
        got = labels["dialogs"][name]["utterances"]
        want = sorted(d["utterances"], key=lambda u: (u["start"], u["id"]))
        assert [(u["id"], u["speaker"], u["start"], u["end"], u["label"]) for u in got] == [
            (u["id"], u["speaker"], u["start"], u["end"], u["label"]) for u in want
        ]
        assert all(u["wdseg"] for u in got)
    with pytest.raises(PipelineError, match="speakers must be 2-8 and at most utterances_per_dialog"):
        mc.generate(tmp_path / "x", **{**TINY, "speakers": 9})
