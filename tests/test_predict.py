"""predict.py on a held-out demo dialog with a trained tiny run and step 2's outputs (--asr-json/--rttm).

Known answers: with the same step-2 files and the run's step-3 settings, predict.py's segments are
step 3's segments of that dialog (same times, speakers, words and flags). The four outputs are
checked by their readers: the RTTM by pyannote.database's loader, the WebVTT by a strict check of
the format, the PNG by its signature and decoder. Sample rates and formats: the same recording as
FLAC, as 16 kHz mono, at 8 kHz and at 44.1 kHz stereo gives the same segments. Emotions: predict.py
promises to average the channels and resample ONCE to 16 kHz; so each resampled file must give
exactly the probabilities of the 16 kHz file holding that one resampling (computed here with
torchaudio, independently of predict.py), and the lossless copies (FLAC, the mono mean as float)
exactly those of the original. A second resampling, another downmix or a lossy write would break
these equalities.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from conftest import steps_in_process, tiny_trained_run

import predict
from common.cli import PipelineError
from common.formats import LABELS

ROOT = Path(__file__).resolve().parent.parent
OUTPUTS = (".emotions.json", ".emotions.rttm", ".vtt", ".timeline.png")


@pytest.fixture(scope="module")
def trained(demo_corpus, demo_work, tmp_path_factory):
    """A private work dir: step 2 simulated, step 3 aligned-p1.5, one tiny run trained for 1 epoch."""
    work, run_dir, _ = tiny_trained_run(demo_work, tmp_path_factory, "predict")
    config = json.loads((Path(run_dir) / "config.json").read_text())
    dialog = config["split"]["test"][0]  # a held-out Session 5 dialog
    labels = json.loads((work / "labels.json").read_text())
    wav = demo_corpus[0] / labels["dialogs"][dialog]["wav"]
    return work, Path(run_dir), dialog, wav


def resample(x: np.ndarray, orig: int, new: int) -> np.ndarray:
    return torchaudio.functional.resample(torch.from_numpy(np.ascontiguousarray(x)), orig, new).numpy()


@pytest.fixture(scope="module")
def predicted(trained, tmp_path_factory):
    """One predict.py call on the dialog in six forms (models loaded once); step-2 files from a folder."""
    work, run_dir, dialog, wav = trained
    audio_dir, step2_dir = tmp_path_factory.mktemp("audio"), tmp_path_factory.mktemp("step2")
    stereo, sr = sf.read(str(wav), dtype="float32", always_2d=True)
    assert sr == 16000 and stereo.shape[1] == 2  # the demo's dialogs are 16 kHz stereo, as IEMOCAP's
    mono = stereo.mean(axis=1)
    files = {
        "orig": wav,
        "flac": audio_dir / "flac.flac",
        "mono16": audio_dir / "mono16.wav",
        "up44": audio_dir / "up44.wav",
        "up44_ref": audio_dir / "up44_ref.wav",
        "down8": audio_dir / "down8.wav",
        "down8_ref": audio_dir / "down8_ref.wav",
    }
    sf.write(str(files["flac"]), sf.read(str(wav), dtype="int16")[0], 16000, subtype="PCM_16")  # lossless
    sf.write(str(files["mono16"]), mono, 16000, subtype="FLOAT")
    up = resample(mono, 16000, 44100)
    sf.write(str(files["up44"]), np.stack([up, up], axis=1), 44100, subtype="FLOAT")
    sf.write(str(files["up44_ref"]), resample(up, 44100, 16000), 16000, subtype="FLOAT")  # the one resampling
    down = resample(mono, 16000, 8000)
    sf.write(str(files["down8"]), down, 8000, subtype="FLOAT")
    sf.write(str(files["down8_ref"]), resample(down, 8000, 16000), 16000, subtype="FLOAT")
    for path in files.values():  # --asr-json / --rttm as folders of <audio name>.json / .rttm
        shutil.copy(work / "simulated" / "asr" / f"{dialog}.json", step2_dir / f"{path.stem}.json")
        shutil.copy(work / "simulated" / "diarization" / f"{dialog}.rttm", step2_dir / f"{path.stem}.rttm")
    out = tmp_path_factory.mktemp("predictions")
    with steps_in_process():  # step 3 in this process, as `python align.py ...` would run it
        results = predict.main(
            [
                *map(str, files.values()),
                "--run",
                str(run_dir),
                "--asr-json",
                str(step2_dir),
                "--rttm",
                str(step2_dir),
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
    names = {k: p.stem for k, p in files.items()}
    return {k: results[names[k]] for k in files}, names, out


def test_four_files_and_the_segments_are_step3s(trained, predicted):
    work, _, dialog, _ = trained
    results, names, out = predicted
    for name in names.values():
        for suffix in OUTPUTS:
            assert (out / f"{name}{suffix}").is_file(), f"{name}{suffix}"
    got = results["orig"]["segments"]
    assert got == json.loads((out / f"{names['orig']}.emotions.json").read_text())["segments"]
    step3 = json.loads((work / "simulated" / "aligned-p1.5" / "segments" / f"{dialog}.json").read_text())["segments"]
    assert len(step3) >= 3
    key = lambda s: (s["id"], s["start"], s["end"], s["speaker"], s["text"], s["n_words"], s["flags"])  # noqa: E731
    assert [key(s) for s in got] == [key(s) for s in step3]
    assert [s["start"] for s in got] == sorted(s["start"] for s in got)
    for s in got:
        assert s["emotion"] in LABELS and set(s["probs"]) == set(LABELS)
        assert abs(sum(s["probs"].values()) - 1) < 1e-5 and s["emotion"] == max(s["probs"], key=s["probs"].get)
    summary = results["orig"]["summary"]
    assert summary["segments"] == len(step3) and summary["speakers"] == len({s["speaker"] for s in step3})
    assert abs(sum(summary["emotion_shares_by_time"].values()) - 1) < 1e-9


def test_rttm_reads_with_pyannote(predicted):
    from pyannote.database.util import load_rttm

    results, names, out = predicted
    segments = results["orig"]["segments"]
    annotations = load_rttm(str(out / f"{names['orig']}.emotions.rttm"))
    assert list(annotations) == [names["orig"]]
    ann = annotations[names["orig"]]
    timed = [s for s in segments if round(s["end"] - s["start"], 3) > 0]
    assert len(list(ann.itertracks())) == len(timed)
    assert set(ann.labels()) == {f"{s['speaker']}_{s['emotion']}" for s in timed}
    for (seg, _, label), s in zip(sorted(ann.itertracks(yield_label=True)), sorted(timed, key=lambda s: s["start"])):
        assert abs(seg.start - s["start"]) < 1e-3 and abs(seg.end - s["end"]) < 2e-3
        assert label == f"{s['speaker']}_{s['emotion']}"


CUE_TIME = r"(\d{2,}):([0-5]\d):([0-5]\d)\.(\d{3})"


def check_webvtt(text: str) -> list[tuple[float, float, str]]:
    """A strict reading of the WebVTT format: header line, blank line, cues of an optional
    identifier, 'HH:MM:SS.mmm --> HH:MM:SS.mmm' with start < end and starts non-decreasing,
    payload lines without '-->' or raw '<' / '&' outside entities; cues separated by one blank line."""
    assert text.startswith("WEBVTT\n\n") and text.endswith("\n")
    cues, last_start = [], -1.0
    for block in text[len("WEBVTT\n\n") :].rstrip("\n").split("\n\n"):
        lines = block.split("\n")
        if "-->" not in lines[0]:
            assert re.fullmatch(r"[^\n]+", lines[0]) and "-->" not in lines[0]
            lines = lines[1:]
        m = re.fullmatch(rf"{CUE_TIME} --> {CUE_TIME}", lines[0])
        assert m, lines[0]
        g = [int(x) for x in m.groups()]
        start = g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000
        end = g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000
        assert start < end and start >= last_start
        last_start = start
        payload = lines[1:]
        assert payload and all(line.strip() for line in payload)
        for line in payload:
            assert "-->" not in line and "<" not in line
            assert not re.search(r"&(?!amp;|lt;|gt;)", line)
        cues.append((start, end, "\n".join(payload)))
    return cues


def test_vtt_is_valid_and_says_speaker_emotion_text(predicted):
    results, names, out = predicted
    segments = results["orig"]["segments"]
    cues = check_webvtt((out / f"{names['orig']}.vtt").read_text(encoding="utf-8"))
    assert len(cues) == len(segments)
    words = {"hap": "happy", "ang": "angry", "sad": "sad", "neu": "neutral"}
    for (start, _end, text), s in zip(cues, segments):
        assert abs(start - s["start"]) < 6e-4
        assert text == f"{s['speaker']} [{words[s['emotion']]}] {s['text']}".rstrip()
    # the check itself refuses what it should
    for bad in (
        "WEBVTT\n\n1\n00:00:01.000 --> 00:00:00.500\nx\n",
        "WEBVTT\n\n00:00:01,000 --> 00:00:02.000\nx\n",
        "WEBVT\n\n00:00:01.000 --> 00:00:02.000\nx\n",
        "WEBVTT\n\n00:00:01.000 --> 00:00:02.000\na <b\n",
    ):
        with pytest.raises(AssertionError):
            check_webvtt(bad)


def test_subtitle_writers_known_answer():
    segs = [{"start": 3661.0004, "end": 3661.0004, "speaker": "SPEAKER_01", "emotion": "ang", "text": "a < b & c"}]
    assert (
        predict.subtitles(segs) == "WEBVTT\n\n1\n01:01:01.000 --> 01:01:01.001\nSPEAKER_01 [angry] a &lt; b &amp; c\n\n"
    )
    assert predict.subtitles(segs, srt=True) == "1\n01:01:01,000 --> 01:01:01,001\nSPEAKER_01 [angry] a < b & c\n\n"
    assert predict.elide("one two three four", 10) == "one two…" and predict.elide("short", 10) == "short"


def test_png_is_a_timeline_image(predicted):
    import matplotlib.image

    _, names, out = predicted
    path = out / f"{names['orig']}.timeline.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(str(path))
    assert image.shape[0] > 150 and image.shape[1] > 1000
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_formats_and_rates_same_segments_emotions_from_one_resampling(predicted):
    results, _, _ = predicted
    seg = lambda r: [(s["start"], s["end"], s["speaker"], s["text"]) for s in r["segments"]]  # noqa: E731
    probs = lambda r: np.array([[s["probs"][lab] for lab in LABELS] for s in r["segments"]])  # noqa: E731
    for k in results:
        assert seg(results[k]) == seg(results["orig"]), k
    assert results["up44"]["input"] == {
        "sample_rate": 44100,
        "channels": 2,
        "seconds": pytest.approx(results["orig"]["input"]["seconds"], abs=1e-4),
        "resampled": True,
    }
    # lossless copies: exactly the original's probabilities
    for k in ("flac", "mono16"):
        assert np.array_equal(probs(results[k]), probs(results["orig"])), k
    # a resampled file: exactly the probabilities of its one resampling to 16 kHz
    for k in ("up44", "down8"):
        assert np.array_equal(probs(results[k]), probs(results[f"{k}_ref"])), k
        assert [s["emotion"] for s in results[k]["segments"]] == [s["emotion"] for s in results[f"{k}_ref"]["segments"]]
    # and the 16 -> 44.1 -> 16 kHz round trip is near-transparent: near the original's probabilities
    assert np.abs(probs(results["up44"]) - probs(results["orig"])).max() < 0.02


def test_bad_input_named(trained, tmp_path):
    work, run_dir, dialog, wav = trained
    asr, rttm = work / "simulated" / "asr" / f"{dialog}.json", work / "simulated" / "diarization" / f"{dialog}.rttm"
    common = ["--asr-json", str(asr), "--rttm", str(rttm), "--out", str(tmp_path / "out"), "--device", "cpu"]
    bad_audio = tmp_path / "noise.wav"
    bad_audio.write_bytes(b"not audio at all" * 10)
    with pytest.raises(PipelineError, match=re.escape(str(bad_audio)) + ": cannot decode audio"):
        predict.main([str(bad_audio), "--run", str(run_dir), *common])
    with pytest.raises(PipelineError, match=re.escape(str(tmp_path / "missing.flac")) + ": audio file not found"):
        predict.main([str(tmp_path / "missing.flac"), "--run", str(run_dir), *common])
    no_ckpt = tmp_path / "runs" / "r"
    no_ckpt.mkdir(parents=True)
    shutil.copy(run_dir / "config.json", no_ckpt / "config.json")
    with pytest.raises(PipelineError, match=re.escape(str(no_ckpt / "checkpoint_best.pt")) + ": not found"):
        predict.main([str(wav), "--run", str(no_ckpt), *common])
    missing_json = tmp_path / "nowhere.json"
    with pytest.raises(PipelineError, match=re.escape(str(missing_json)) + ": --asr-json file not found"):
        predict.main([str(wav), "--run", str(run_dir), "--asr-json", str(missing_json), "--rttm", str(rttm)])
    assert not (tmp_path / "out").exists()  # nothing written for bad input
    # from the command line: one line naming the file, exit status 2, before any model is loaded
    proc = subprocess.run(
        [sys.executable, str(ROOT / "predict.py"), str(bad_audio), "--run", str(run_dir), *common],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"error: {bad_audio}: cannot decode audio")


def test_a_failing_recording_is_listed_and_the_others_written(trained, tmp_path, capsys):
    work, run_dir, dialog, wav = trained
    step2 = tmp_path / "step2"
    step2.mkdir()
    for name in ("good", "late"):
        shutil.copy(wav, tmp_path / f"{name}.wav")
        shutil.copy(work / "simulated" / "diarization" / f"{dialog}.rttm", step2 / f"{name}.rttm")
    shutil.copy(work / "simulated" / "asr" / f"{dialog}.json", step2 / "good.json")
    (step2 / "late.json").write_text(
        json.dumps(
            {
                "segments": [
                    {"start": 1.0, "end": 999.0, "text": "hi", "words": [{"word": "hi", "start": 1.0, "end": 999.0}]}
                ]
            }
        )
    )  # past the end of the audio: step 3 fails this dialog
    with steps_in_process(), pytest.raises(SystemExit, match="1 of 2 recordings failed"):
        predict.main(
            [
                str(tmp_path / "good.wav"),
                str(tmp_path / "late.wav"),
                "--run",
                str(run_dir),
                "--asr-json",
                str(step2),
                "--rttm",
                str(step2),
                "--out",
                str(tmp_path / "out"),
                "--device",
                "cpu",
            ]
        )
    printed = capsys.readouterr().out
    assert (
        f"FAILED {tmp_path / 'late.wav'}: {step2 / 'late.json'} (as late): segment 0: end 999.000 s is after the end"
        in printed
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"good{s}" for s in OUTPUTS)


# --- any number of speakers ---------------------------------------------------------------------


def test_timeline_draws_one_lane_per_speaker_for_three_speakers(tmp_path, monkeypatch):
    """Three speakers -> three lanes in every row, named top to bottom in name order, and each bar in its
    speaker's lane; the figure is read just before it is saved (a wrapper of Figure.savefig)."""
    from matplotlib.figure import Figure

    probs = {lab: 1.0 / len(LABELS) for lab in LABELS}
    speakers = ["SPEAKER_02", "SPEAKER_00", "SPEAKER_01"]  # first speech order is not lane order
    segments = [
        {
            "start": 4 * i + 0.3,
            "end": 4 * i + 3.8,
            "speaker": speakers[i % 3],
            "text": f"w{i}",
            "emotion": LABELS[i % 4],
        }
        for i in range(20)  # 80 s: two rows of a minute, no segment across the rows
    ]
    for s in segments:
        s["probs"] = probs
    saved, real_savefig = [], Figure.savefig

    def spy(fig, *args, **kwargs):
        saved.append(
            [
                (
                    [t.get_text() for t in ax.get_yticklabels()],
                    [(round(p.get_x(), 6), round(p.get_y() + p.get_height() / 2, 6)) for c in ax.containers for p in c],
                )
                for ax in fig.axes
            ]
        )
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    assert predict.timeline_lanes(segments) == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_02"]
    path = tmp_path / "three.timeline.png"
    predict.plot_timeline(segments, 80.0, path, "three speakers")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (rows,) = saved
    assert len(rows) == 2  # one axes per minute
    lane_y = {"SPEAKER_00": 2, "SPEAKER_01": 1, "SPEAKER_02": 0}  # top lane first
    drawn = []
    for ticks, bars in rows:
        assert ticks == ["SPEAKER_02", "SPEAKER_01", "SPEAKER_00"]  # y = 0, 1, 2 (bottom to top)
        drawn += bars
    assert sorted(drawn) == sorted((round(s["start"], 6), lane_y[s["speaker"]]) for s in segments)


@pytest.mark.parametrize(
    "flags, passed, pyannote",
    [
        ([], ["--num-speakers", "auto"], (None, None, None)),  # predict.py's default: pyannote estimates it
        (["--num-speakers", "3"], ["--num-speakers", "3"], (3, None, None)),
        (["--min-speakers", "2", "--max-speakers", "5"], ["--min-speakers", "2", "--max-speakers", "5"], (None, 2, 5)),
    ],
)
def test_speaker_flags_pass_through_to_step_2(tmp_path, monkeypatch, flags, passed, pyannote):
    """predict.py's speaker flags reach preprocess.py's command line, and preprocess.py reads them as the
    pyannote call's num_speakers/min_speakers/max_speakers."""
    import preprocess
    from common import step2_whisperx

    calls = []
    monkeypatch.setattr(predict, "run_step", lambda script, argv: calls.append((script, argv)) or 0)
    args = predict.parse_args(["x.wav", "--run", "R", *flags])
    assert predict.step2(args, tmp_path, [], []) == {}
    ((script, argv),) = calls
    assert script == "preprocess.py"
    given = [a for a in argv if a.endswith("-speakers")]
    assert [argv[argv.index(f) + i] for f in given for i in (0, 1)] == passed
    step2_args = preprocess.parse_args(argv)
    kwargs = step2_whisperx.speaker_kwargs(step2_args, step2_whisperx.IEMOCAP_SPEAKERS)
    assert tuple(kwargs[k] for k in step2_whisperx.SPEAKER_FLAGS) == pyannote


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--num-speakers", "3", "--min-speakers", "2"], "--num-speakers N fixes the count"),
        (["--step2-args", "--max-speakers 3"], "not in --step2-args"),
        (["--asr-json", "a.json", "--rttm", "a.rttm", "--num-speakers", "3"], "with --asr-json/--rttm none runs"),
    ],
)
def test_speaker_flags_misused_are_refused(flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        predict.parse_args(["x.wav", "--run", "R", *flags])
    assert e.value.code == 2 and message in capsys.readouterr().err
