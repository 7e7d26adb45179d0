"""Step 2's real whisperx backend end to end, offline, with tiny random models built by the test.

WhisperX ASR (faster-whisper, the pyannote VAD bundled with WhisperX), WhisperX alignment and pyannote
diarization all run for real on a demo dialog; only the model weights are tiny and random, so the
transcripts are noise. What is asserted: the output structure, times inside the dialog, RTTM validity
(both the overlapping and pyannote's exclusive diarization), the VAD-oracle path (one transcribed
piece per reference utterance, segments inside them), resume, and the preflight on these models. The
standard run loads a pipeline shaped like pyannote/speaker-diarization-3.1 from a local hub mirror
(--model-dir, --cache-only), the VAD-oracle run one shaped like community-1 from its folder.
"""

import os
import re
from pathlib import Path

import pytest

import preprocess
from common import step2_whisperx
from common.fileio import read_json
from common.formats import read_rttm

DIALOG = "Ses01F_impro01"


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from demo.build_asr_models import build_all

    saved = {k: os.environ.get(k) for k in ("NLTK_DATA", "TORCH_HOME")}
    folder = tmp_path_factory.mktemp("asr_models")
    os.environ["TORCH_HOME"] = str(folder / "torch_home")  # the bundled VAD model wants a writable cache
    models = build_all(folder)
    yield models
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


BATCH_FLAGS = ("--embedding-batch-size", "8", "--segmentation-batch-size", "8")


def whisperx_args(work, models, *extra, diar="3.1"):
    diar_flags = (
        ["--diar-model", "pyannote/speaker-diarization-3.1", "--model-dir", models["hub"], "--cache-only"]
        if diar == "3.1"
        else ["--diar-model", models["diarization"]]
    )
    return [
        "--work",
        str(work),
        "--backend",
        "whisperx",
        "--dialogs",
        DIALOG,
        "--device",
        "cpu",
        "--asr-model",
        models["asr"],
        "--align-model",
        models["align"],
        *diar_flags,
        "--nltk-data",
        models["nltk_data"],
        "--asr-max-length",
        "24",
        "--beam-size",
        "1",
        "--threads",
        "1",
        *extra,
    ]


@pytest.fixture(scope="module")
def short_corpus(tmp_path_factory):
    """(work dir with step 1's labels.json, ground truth) of a one-dialog demo corpus of 3 utterances
    (about 20 s of audio: the diarization's embeddings, the bulk of the time, scale with it)."""
    from demo.make_corpus import generate
    from iemo_lab_with_timestamps import main as step1

    root = tmp_path_factory.mktemp("demo_whisperx") / "IEMOCAP_full_release"
    truth = generate(root, seed=0, sessions=[1], impro_per_session=1, script_per_session=0, utterances_per_dialog=3)
    work = tmp_path_factory.mktemp("work_whisperx")
    step1(["--iemocap", str(root), "--work", str(work)])
    return work, truth


SPEAKER_RANGE = ("--min-speakers", "1", "--max-speakers", "3")  # the VAD-oracle run's speaker count


@pytest.fixture(scope="module")
def speaker_calls():
    """What reached pyannote's speaker count in each diarization: {"calls": [(given num/min/max, what
    pyannote resolved)]}, and `runs` files its runs' calls under "standard" and "oracle". Recorded by a
    wrapper of pyannote.audio's own set_num_speakers, which the SpeakerDiarization pipeline calls with
    the num_speakers/min_speakers/max_speakers it was given."""
    from pyannote.audio.pipelines import speaker_diarization

    real, calls = speaker_diarization.set_num_speakers, []

    def spy(num_speakers=None, min_speakers=None, max_speakers=None):
        resolved = real(num_speakers=num_speakers, min_speakers=min_speakers, max_speakers=max_speakers)
        calls.append(((num_speakers, min_speakers, max_speakers), resolved))
        return resolved

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(speaker_diarization, "set_num_speakers", spy)
        yield {"calls": calls}


@pytest.fixture(scope="module")
def runs(short_corpus, tiny_models, speaker_calls):
    """The standard (default speaker count) and the VAD-oracle pipeline (SPEAKER_RANGE) on the dialog, in a
    private work directory; speaker_calls: what each passed to pyannote."""
    work, _ = short_corpus
    standard = preprocess.main(whisperx_args(work, tiny_models, *BATCH_FLAGS))
    speaker_calls["standard"] = list(speaker_calls["calls"])
    oracle = preprocess.main(whisperx_args(work, tiny_models, "--vad", "oracle", *SPEAKER_RANGE, diar="community-1"))
    speaker_calls["oracle"] = speaker_calls["calls"][len(speaker_calls["standard"]) :]
    return work, standard, oracle


def check_outputs(folder, manifest, duration):
    entry = manifest["dialogs"][DIALOG]
    assert entry["status"] == "done", entry.get("error")
    asr = read_json(folder / "asr" / f"{DIALOG}.json")
    assert asr["language"] == "en" and asr["segments"]
    timed = 0
    for seg in asr["segments"]:
        assert set(seg) == {"start", "end", "text", "words"}
        assert 0 <= seg["start"] <= seg["end"] <= duration + 1e-3
        for w in seg["words"]:
            assert isinstance(w["word"], str) and w["word"]
            if "start" in w:
                timed += 1
                assert seg["start"] - 1e-3 <= w["start"] <= w["end"] <= seg["end"] + 1e-3
    assert timed > 0  # the alignment model ran and timed words
    turns = read_rttm(folder / "diarization" / f"{DIALOG}.rttm")
    assert turns and all(0 <= s < e <= duration + 1e-3 for s, e, _ in turns)
    labels = [spk for _, _, spk in turns]
    assert all(re.fullmatch(r"SPEAKER_\d\d", spk) for spk in labels) and labels[0] == "SPEAKER_00"
    for line in (folder / "diarization" / f"{DIALOG}.rttm").read_text().splitlines():
        assert line.startswith(f"SPEAKER {DIALOG} 1 ") and line.endswith(" <NA> <NA>")
    # pyannote 4's exclusive diarization, under the same anonymous labels, one speaker at a time
    exclusive = read_rttm(folder / "diarization_exclusive" / f"{DIALOG}.rttm")
    assert exclusive and all(0 <= s < e <= duration + 1e-3 for s, e, _ in exclusive)
    assert all(b[0] >= a[1] - 1e-3 for a, b in zip(exclusive, exclusive[1:]))
    assert {spk for *_, spk in exclusive} <= set(labels)
    assert entry["stats"]["exclusive_from"] == "pyannote"
    assert entry["stats"]["duration"] == pytest.approx(duration, abs=1e-3)
    return asr


def test_standard_pipeline_end_to_end(runs, short_corpus):
    work, manifest, _ = runs
    _, truth = short_corpus
    duration = truth["dialogs"][DIALOG]["duration"]
    check_outputs(work / "whisperx", manifest, duration)
    config = manifest["config"]
    assert config["vad"] == "auto" and config["vad_onset"] == 0.4 and config["batch_size"] == 8
    assert config["diar_model"] == "pyannote/speaker-diarization-3.1" and config["embedding_batch_size"] == 8
    assert "wer" in manifest["summary"] and "der" in manifest["summary"]  # measured, even if it is noise


def test_vad_oracle_transcribes_each_reference_utterance(runs, short_corpus):
    work, _, manifest = runs
    _, truth = short_corpus
    gt = truth["dialogs"][DIALOG]
    asr = check_outputs(work / "whisperx-vadoracle", manifest, gt["duration"])
    utterances = gt["utterances"]  # XX utterances included: they are reference speech too
    assert manifest["dialogs"][DIALOG]["stats"]["unaligned_segments"] == len(utterances)
    for seg in asr["segments"]:
        assert any(u["start"] - 1e-3 <= seg["start"] and seg["end"] <= u["end"] + 1e-3 for u in utterances), seg
    assert "vad_onset" not in manifest["config"]  # no VAD runs in this pipeline


def test_resume_skips_without_loading_models(runs, tiny_models, monkeypatch, capsys):
    work, _, _ = runs
    before = {p: p.read_bytes() for p in (work / "whisperx").rglob("*.*") if p.name != "manifest.json"}

    def no_models(args):
        raise AssertionError("models loaded although every dialog is done")

    monkeypatch.setattr(step2_whisperx, "WhisperX", no_models)
    capsys.readouterr()
    manifest = preprocess.main(whisperx_args(work, tiny_models, *BATCH_FLAGS))
    assert "skipping 1 dialogs already done" in capsys.readouterr().out
    assert manifest["dialogs"][DIALOG]["status"] == "done"
    assert before == {p: p.read_bytes() for p in (work / "whisperx").rglob("*.*") if p.name != "manifest.json"}


def test_check_on_the_demo_models_is_all_ok_and_writes_nothing(runs, tiny_models, capsys):
    work, _, _ = runs
    roots = [work, tiny_models["hub"], tiny_models["diarization"], tiny_models["asr"]]
    before = {str(p): p.stat().st_mtime_ns for root in roots for p in Path(root).rglob("*")}
    for diar in ("3.1", "community-1"):
        items = preprocess.main(whisperx_args(work, tiny_models, "--check", diar=diar))
        assert all(item.ok for item in items), [item.line() for item in items]
        names = [item.name for item in items]
        assert {
            "ASR model",
            "alignment model",
            "diarization pipeline",
            "diarization segmentation",
            "diarization embedding",
            "NLTK punkt_tab",
            "CUDA",
            "time (estimate)",
        } <= set(names)
        assert ("diarization plda" in names) == (diar == "community-1")  # VBx needs a PLDA, 3.1 none
    assert "all 12 checks OK" in capsys.readouterr().out
    assert before == {str(p): p.stat().st_mtime_ns for root in roots for p in Path(root).rglob("*")}


def test_whisperx_api_names_match_the_installed_whisperx():
    """The token keyword and the default models are read from, or checked against, whisperx 3.8."""
    import whisperx.asr
    from whisperx.alignment import DEFAULT_ALIGN_MODELS_TORCH
    from whisperx.diarize import DiarizationPipeline

    assert step2_whisperx.token_kwargs(whisperx.asr.load_model, "t") == {"use_auth_token": "t"}
    assert step2_whisperx.token_kwargs(DiarizationPipeline.__init__, "t") == {"token": "t"}
    assert step2_whisperx.DEFAULT_ALIGN_MODEL == DEFAULT_ALIGN_MODELS_TORCH["en"]
    assert step2_whisperx.whisper_repo("large-v2") == "Systran/faster-whisper-large-v2"
    assert (
        step2_whisperx.torchaudio_checkpoint(step2_whisperx.DEFAULT_ALIGN_MODEL)[0]
        == "wav2vec2_fairseq_base_ls960_asr_ls960.pth"
    )


def test_speaker_counts_reach_the_pyannote_pipeline_and_the_config(runs, speaker_calls):
    """The default is the authors' call (min_speakers = max_speakers = 2, which pyannote resolves to
    exactly 2); a given range reaches pyannote as given. The run config records what pyannote uses:
    the default's `num_speakers: 2`, the range as min/max with no exact count."""
    _, standard, oracle = runs
    assert speaker_calls["standard"] == [((None, 2, 2), (2, 2, 2))]  # one dialog, one diarization
    assert speaker_calls["oracle"] == [((None, 1, 3), (None, 1, 3))]
    assert {k: v for k, v in standard["config"].items() if "speakers" in k} == {"num_speakers": 2}
    assert {k: v for k, v in oracle["config"].items() if "speakers" in k} == {
        "num_speakers": None,
        "min_speakers": 1,
        "max_speakers": 3,
    }


@pytest.mark.parametrize(
    "flags, call, config",
    [
        ([], (None, 2, 2), {"num_speakers": 2}),
        (["--num-speakers", "2"], (2, None, None), {"num_speakers": 2}),  # the same count for pyannote: same key
        (["--num-speakers", "4"], (4, None, None), {"num_speakers": 4}),
        (["--num-speakers", "auto"], (None, None, None), {"num_speakers": None}),
        (["--max-speakers", "5"], (None, None, 5), {"num_speakers": None, "max_speakers": 5}),
        (["--min-speakers", "3", "--max-speakers", "3"], (None, 3, 3), {"num_speakers": 3}),
        (["--num-speakers", "auto", "--min-speakers", "2"], (None, 2, None), {"num_speakers": None, "min_speakers": 2}),
    ],
)
def test_speaker_flags_give_the_call_and_the_config_key(flags, call, config):
    args = preprocess.parse_args(["--backend", "whisperx", "--device", "cpu", *flags])
    kwargs = step2_whisperx.speaker_kwargs(args, step2_whisperx.IEMOCAP_SPEAKERS)
    assert tuple(kwargs[k] for k in step2_whisperx.SPEAKER_FLAGS) == call
    got = preprocess.run_config(args)
    assert {k: v for k, v in got.items() if "speakers" in k} == config
    default = preprocess.run_config(preprocess.parse_args(["--backend", "whisperx", "--device", "cpu"]))
    assert (preprocess.config_key(got) == preprocess.config_key(default)) == (config == {"num_speakers": 2})


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--num-speakers", "3", "--max-speakers", "4"], "--num-speakers N fixes the count"),
        (["--min-speakers", "4", "--max-speakers", "3"], "--min-speakers 4 is above --max-speakers 3"),
        (["--num-speakers", "0"], "expected an integer >= 1 or 'auto', got '0'"),
        (["--max-speakers", "two"], "expected an integer >= 1 or 'auto', got 'two'"),
        (["--backend", "oracle", "--num-speakers", "3"], "--num-speakers applies to the whisperx backend only"),
    ],
)
def test_bad_speaker_flags_are_refused(flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        preprocess.parse_args(["--device", "cpu", *flags])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_language_auto_detects_records_and_picks_the_alignment_per_language(
    short_corpus, tiny_models, monkeypatch, tmp_path
):
    """--language auto: the detected language (stubbed to fr: the tiny Whisper is English-only) reaches
    FasterWhisperPipeline.transcribe and whisperx.load_align_model, and is recorded in asr/<dialog>.json,
    the dialog's stats and the summary; the run config records auto. Everything else runs for real."""
    import shutil

    import whisperx
    import whisperx.asr

    work, _ = short_corpus
    nltk_data = tmp_path / "nltk_data"  # whisperx.align opens punkt_tab/french for fr
    shutil.copytree(tiny_models["nltk_data"], nltk_data)
    shutil.copytree(nltk_data / "tokenizers/punkt_tab/english", nltk_data / "tokenizers/punkt_tab/french")
    calls = {"detect": 0, "transcribe": [], "align": []}
    real_transcribe, real_load_align = whisperx.asr.FasterWhisperPipeline.transcribe, whisperx.load_align_model

    def detect(self, audio):
        calls["detect"] += 1
        return "fr"

    def transcribe(self, audio, *a, language=None, **kw):
        calls["transcribe"].append(language)
        return real_transcribe(self, audio, *a, language=language, **kw)

    def load_align(*a, language_code, **kw):
        calls["align"].append(language_code)
        return real_load_align(*a, language_code=language_code, **kw)

    monkeypatch.setattr(step2_whisperx, "is_multilingual", lambda asr: True)
    monkeypatch.setattr(whisperx.asr.FasterWhisperPipeline, "detect_language", detect)
    monkeypatch.setattr(whisperx.asr.FasterWhisperPipeline, "transcribe", transcribe)
    monkeypatch.setattr(whisperx, "load_align_model", load_align)
    flags = ("--language", "auto", "--name", "whisperx-auto", "--nltk-data", str(nltk_data), *BATCH_FLAGS)
    manifest = preprocess.main(whisperx_args(work, tiny_models, *flags))
    entry = manifest["dialogs"][DIALOG]
    assert entry["status"] == "done", entry.get("error")
    assert calls == {"detect": 1, "transcribe": ["fr"], "align": ["fr"]}
    assert read_json(work / "whisperx-auto" / "asr" / f"{DIALOG}.json")["language"] == "fr"
    assert entry["stats"]["language"] == "fr" and manifest["summary"]["languages"] == {"fr": 1}
    assert manifest["config"]["language"] == "auto"


def without_align_model(argv: list[str]) -> list[str]:
    i = argv.index("--align-model")
    return argv[:i] + argv[i + 2 :]


def test_language_flag_checks_and_run_config(short_corpus, tiny_models):
    work, _ = short_corpus
    base = whisperx_args(work, tiny_models)
    default = preprocess.run_config(preprocess.parse_args(base))
    assert "language" not in default  # the paper's en: the run config (and its key) of en runs is unchanged
    assert preprocess.run_config(preprocess.parse_args(base + ["--language", "en"])) == default
    assert preprocess.run_config(preprocess.parse_args(base + ["--language", "fr"]))["language"] == "fr"
    # WhisperX's default alignment model per language, read from whisperx itself
    from whisperx.alignment import DEFAULT_ALIGN_MODELS_HF, DEFAULT_ALIGN_MODELS_TORCH

    args = preprocess.parse_args(without_align_model(base) + ["--language", "ja"])
    assert args.align_model is None
    assert step2_whisperx.align_source(args)["name"] == DEFAULT_ALIGN_MODELS_HF["ja"]
    assert step2_whisperx.align_source(args, "fr")["name"] == DEFAULT_ALIGN_MODELS_TORCH["fr"]
    assert step2_whisperx.align_source(args, "en")["name"] == step2_whisperx.DEFAULT_ALIGN_MODEL
    args.language = "auto"
    assert step2_whisperx.align_source(args)["kind"] == "per-language"


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--language", "xx"], "not a Whisper language code"),
        (["--language", "fr", "--backend", "oracle"], "whisperx backend only"),
        (["--language", "fr", "--asr-model", "small.en"], "English-only"),
        (["--language", "sw", "--align-model", None], "no default alignment model"),
    ],
)
def test_language_flag_errors(short_corpus, tiny_models, capsys, extra, message):
    work, _ = short_corpus
    argv = whisperx_args(work, tiny_models)
    if None in extra:  # without --align-model: the language's default is looked up
        argv, extra = without_align_model(argv), extra[:-2]
    with pytest.raises(SystemExit) as e:
        preprocess.parse_args(argv + extra)
    assert e.value.code == 2 and message in capsys.readouterr().err
