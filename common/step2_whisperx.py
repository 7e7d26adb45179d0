"""Step 2's real front end (--backend whisperx): WhisperX ASR and alignment and pyannote diarization, loaded once
per run, with the preflight and the offline copies of exactly these models.

The paper's pipeline: WhisperX ASR (faster-whisper large-v2, English) with the pyannote VAD bundled in WhisperX,
word timestamps from WhisperX's forced alignment (whisperx.load_align_model + whisperx.align), and pyannote
speaker diarization (paper: pyannote 3.1; speakers per dialog: the authors' min = max = 2, or
--num-speakers/--min-speakers/--max-speakers), called as whisperx.diarize.DiarizationPipeline calls it, keeping
also the exclusive diarization pyannote 4 returns. Each dialog wav is decoded once (mono, common.formats.load_audio)
and handed to both as an array. The pyannote pipeline is built from its config.yaml
(load_diarization_pipeline says why). --vad oracle replaces the VAD by the reference utterances
(WhisperX.transcribe). The run's settings and their defaults: preprocess.py --help; the models, the token and
the offline copies: docs/REAL_DATA.md; the pyannote checkpoints run code when loaded: docs/TESTING.md,
"Security".
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import numpy as np

from common import cli, defaults, huberrors, modelhub
from common.checklist import CheckItem
from common.cli import PipelineError
from common.fileio import atomic_write_json
from common.formats import SAMPLE_RATE
from common.step2_oracle import anonymise, asr_result

MAX_CHUNK_S = 30.0  # Whisper's input window: longer reference utterances are cut into pieces

# The paper's models and what their loaders open. A size such as "large-v2" is faster-whisper's
# name for a hub repository of a CTranslate2 model (faster_whisper.utils._MODELS); WhisperX's
# default English alignment model is a torchaudio bundle, fetched from download.pytorch.org into
# torch's hub cache (whisperx.alignment.DEFAULT_ALIGN_MODELS_TORCH["en"]; a test checks both).
DEFAULT_ALIGN_MODEL = "WAV2VEC2_ASR_BASE_960H"
WHISPER_REPOS = {"large-v2": "Systran/faster-whisper-large-v2"}  # used when faster_whisper is absent
WHISPER_FILES = ("config.json", "preprocessor_config.json", "model.bin", "tokenizer.json", "vocabulary.*")
WHISPER_REQUIRED = ("model.bin", "config.json", "tokenizer.json")  # without tokenizer.json faster-whisper goes online
ALIGN_REQUIRED = ("config.json", "preprocessor_config.json", "vocab.json", "|".join(modelhub.TRANSFORMERS_WEIGHTS))
PLDA_FILES = ("xvec_transform.npz", "plda.npz")
# The models a hub pipeline's config names, for the preflight, which does not download the config.
KNOWN_PIPELINE_MODELS = {
    "pyannote/speaker-diarization-3.1": {
        "segmentation": "pyannote/segmentation-3.0",
        "embedding": "pyannote/wespeaker-voxceleb-resnet34-LM",
    },
    "pyannote/speaker-diarization-community-1": {},  # segmentation, embedding, plda are its own subfolders
}


def device_and_compute_type(args) -> tuple[str, str]:
    """--device auto -> cuda if available, else cpu; --compute-type auto -> float16 on GPU, float32 on CPU."""
    device = args.device
    if device == "auto":
        import torch

        device = "cpu"
        if torch.cuda.is_available():  # under torchrun, one GPU per process
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
    compute_type = args.compute_type
    if compute_type == "auto":
        compute_type = "float16" if device.startswith("cuda") else "float32"
    return device, compute_type


def whisper_repo(name: str) -> str | None:
    """A faster-whisper size ('large-v2') or a hub id -> the hub repository of the CTranslate2 model."""
    try:
        from faster_whisper.utils import _MODELS
    except ImportError:
        _MODELS = WHISPER_REPOS
    return _MODELS.get(name) or (name if modelhub.HUB_NAME_RE.fullmatch(name) else None)


def language_names() -> dict:
    """Whisper's language codes -> names (whisperx.utils.LANGUAGES, the codes whisperx accepts)."""
    from whisperx.utils import LANGUAGES

    return LANGUAGES


def check_language(code: str) -> str | None:
    """--language CODE -> None when Whisper knows it (or it is 'auto'), else a one-line error."""
    if code == "auto" or code in language_names():
        return None
    return f"--language {code}: not a Whisper language code (e.g. en, fr, de, zh, ja; or auto)"


def default_align_model(language: str) -> str:
    """The alignment model WhisperX picks for a language (whisperx.alignment.DEFAULT_ALIGN_MODELS_TORCH,
    then DEFAULT_ALIGN_MODELS_HF), as load_align_model does when it is given no model_name."""
    if language == defaults.LANGUAGE:
        return DEFAULT_ALIGN_MODEL  # without importing whisperx.alignment (torch, transformers): the preflight
    from whisperx.alignment import DEFAULT_ALIGN_MODELS_HF, DEFAULT_ALIGN_MODELS_TORCH

    name = DEFAULT_ALIGN_MODELS_TORCH.get(language) or DEFAULT_ALIGN_MODELS_HF.get(language)
    if name is None:
        raise PipelineError(
            f"--language {language}: WhisperX has no default alignment model for it; pass --align-model "
            "with a wav2vec2 CTC model fine-tuned on the language (a hub name or a folder)"
        )
    return name


def asr_source(args) -> tuple[Path | None, str | None]:
    """--asr-model -> (local folder, None) or (None, hub repository). A name that is neither an
    existing folder, a mirrored repository nor a hub name comes back as a (missing) folder."""
    local = modelhub.local_model_path(args.asr_model, args.model_dir)
    if local is not None:
        return local, None
    repo = whisper_repo(args.asr_model)
    if repo is None:
        return Path(args.asr_model), None
    mirrored = modelhub.local_model_path(repo, args.model_dir)
    return (mirrored, None) if mirrored is not None else (None, repo)


def torchaudio_checkpoint(bundle: str) -> tuple[str, str] | None:
    """A torchaudio pipeline name -> (checkpoint file name, download URL), else None."""
    import torchaudio

    obj = getattr(torchaudio.pipelines, bundle, None) if bundle.isupper() else None
    path = getattr(obj, "_path", None)
    if not path:
        return None
    return Path(path).name, path if path.startswith(
        "https"
    ) else f"https://download.pytorch.org/torchaudio/models/{path}"


def align_source(args, language: str | None = None) -> dict:
    """--align-model / --align-model-dir / --model-dir and the language (default: --language) -> how
    whisperx.load_align_model gets it: {"kind": "torchaudio" | "local" | "hub", "name": what to pass as
    model_name, "model_dir": its model_dir, "file": the torchaudio checkpoint path (torchaudio only)}.
    Without --align-model, WhisperX's default for the language; for --language auto (the model is
    known only once a dialog's language is detected) {"kind": "per-language", "name": "..."}."""
    language = language or getattr(args, "language", defaults.LANGUAGE)
    if args.align_model is None and language == "auto":
        return {"kind": "per-language", "name": "WhisperX's default for each detected language", "model_dir": None}
    name = args.align_model or default_align_model(language)
    checkpoint = torchaudio_checkpoint(name)
    if checkpoint is not None:
        model_dir = args.align_model_dir
        if model_dir is None and args.model_dir and (Path(args.model_dir) / "torchaudio").is_dir():
            model_dir = str(Path(args.model_dir) / "torchaudio")
        if model_dir is None:
            import torch

            folder = Path(torch.hub.get_dir()) / "checkpoints"
        else:
            folder = Path(model_dir)
        return {
            "kind": "torchaudio",
            "name": name,
            "model_dir": model_dir,
            "file": folder / checkpoint[0],
            "url": checkpoint[1],
        }
    local = modelhub.local_model_path(name, args.model_dir)
    if local is not None or not modelhub.is_hub_name(name):
        return {"kind": "local", "name": str(local or name), "model_dir": None}
    return {"kind": "hub", "name": name, "model_dir": args.align_model_dir}


def token_kwargs(function, token) -> dict:
    """The hub token under the keyword `function` takes: whisperx 3.8 calls it `token` in
    DiarizationPipeline and the VAD, but still `use_auth_token` in whisperx.asr.load_model. Give
    the function itself: whisperx.load_model is a lazy (*args, **kwargs) wrapper of it."""
    import inspect

    parameters = inspect.signature(function).parameters
    return next(({key: token} for key in ("token", "use_auth_token") if key in parameters), {})


def _pipeline_file(ref: str, filename: str, subfolder, *, model_dir, token, cache_only, cache_dir, loaded) -> Path:
    """One file a diarization pipeline needs: from a local folder (or the --model-dir mirror) when
    `ref` is one, else from the hub (or its local cache) with huggingface_hub.hf_hub_download."""
    rel = f"{subfolder}/{filename}" if subfolder else filename
    local = modelhub.local_model_path(ref, model_dir)
    if local is not None:
        path = local / rel if local.is_dir() else local
        if not path.is_file():
            raise PipelineError(f"{path}: not found (the diarization pipeline needs {rel} of {ref})")
        loaded.append(str(path))
        return path
    if not modelhub.is_hub_name(ref):
        raise PipelineError(f"{ref}: no such folder (diarization pipeline), and not a hub name org/name")
    import huggingface_hub

    try:
        path = huggingface_hub.hf_hub_download(
            ref,
            filename,
            subfolder=subfolder or None,
            token=token,
            local_files_only=cache_only,
            cache_dir=cache_dir,
            library_name="pyannote",
        )
    except Exception as e:
        raise PipelineError(f"{ref}: {rel}: {huberrors.hub_error_message(ref, e, token)}") from e
    loaded.append(f"{ref}/{rel}")
    return Path(path)


def _model_reference(params: dict, key: str, pipeline: str, config_path) -> tuple[str, str | None]:
    """pipeline.params[key] of a pyannote config -> (repository or folder, subfolder or None)."""
    ref = params.get(key)
    if ref is None:  # pyannote would silently fall back on community-1's model
        raise PipelineError(f"{config_path}: pipeline.params.{key} is missing")
    if not isinstance(ref, str):
        raise PipelineError(
            f"{config_path}: pipeline.params.{key}: expected a name, a path or $model/<subfolder>, got {cli.quote(ref)}"
        )
    if ref.startswith("$model/"):
        sub = ref[len("$model/") :]
        if "@" in sub:
            raise PipelineError(f"{config_path}: pipeline.params.{key}: revisions ({ref}) are not supported")
        return pipeline, sub
    return ref, None


def load_diarization_pipeline(
    name: str,
    *,
    model_dir=None,
    token=None,
    cache_only: bool = False,
    cache_dir=None,
    embedding_batch_size=None,
    segmentation_batch_size=None,
    device=None,
):
    """A pyannote SpeakerDiarization pipeline, loading exactly the files its config names -> (pipeline, files).

    name: a hub pipeline (pyannote/speaker-diarization-3.1, ...-community-1) or a local folder with
    its config.yaml; hub names are read from the model_dir mirror when there. The config's
    segmentation and embedding are hub names (3.1: pyannote/segmentation-3.0,
    pyannote/wespeaker-voxceleb-resnet34-LM) or $model/<subfolder> of the pipeline itself
    (community-1); each is resolved here to a local file, then the pipeline is built from the
    config by pyannote (Pipeline.from_pretrained of the resolved config dict), so pyannote itself
    never touches the hub. Why not Pipeline.from_pretrained(name): pyannote.audio 4.0's
    SpeakerDiarization.__init__ always loads a PLDA, by default community-1's, also for a pipeline
    whose clustering needs none (3.1: AgglomerativeClustering); here the PLDA is loaded only for
    VBxClustering (from the config's plda entry), and other clusterings get a stand-in that is
    never called. files: what was read (local paths, or repo/file for the hub).
    SECURITY: pyannote loads checkpoints with torch.load(weights_only=False): trust the source.
    """
    import yaml
    from pyannote.audio import Pipeline
    from pyannote.audio.core.plda import PLDA

    class NoPLDA(PLDA):
        """Stands in for the PLDA of a pipeline whose clustering uses none."""

        def __init__(self, clustering):
            self.clustering, self.lda_dimension = clustering, 0

        def __call__(self, embeddings):
            raise RuntimeError(f"{self.clustering} uses no PLDA")

    if Path(name).is_file():  # a config.yaml given directly: its folder is the pipeline
        name = str(Path(name).parent)
    loaded = []
    where = dict(model_dir=model_dir, token=token, cache_only=cache_only, cache_dir=cache_dir, loaded=loaded)
    config_path = _pipeline_file(name, "config.yaml", None, **where)
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        params = config["pipeline"].setdefault("params", {})
        config["pipeline"]["name"]
    except (yaml.YAMLError, KeyError, TypeError, AttributeError) as e:
        raise PipelineError(f"{config_path}: not a pyannote pipeline config ({type(e).__name__}: {e})") from e
    for key in ("segmentation", "embedding"):
        ref, sub = _model_reference(params, key, name, config_path)
        params[key] = {"checkpoint": str(_pipeline_file(ref, "pytorch_model.bin", sub, **where))}
    clustering = params.get("clustering", "VBxClustering")
    if clustering == "VBxClustering":
        ref, sub = _model_reference(params, "plda", name, config_path)
        params["plda"] = PLDA(*(_pipeline_file(ref, f, sub, **where) for f in PLDA_FILES))
    else:
        params["plda"] = NoPLDA(clustering)
    if embedding_batch_size:
        params["embedding_batch_size"] = embedding_batch_size
    if segmentation_batch_size:
        params["segmentation_batch_size"] = segmentation_batch_size
    params["token"], params["cache_dir"] = None, None  # every file is local by now
    left = [k for k, v in params.items() if isinstance(v, str) and v.startswith("$model/")]
    if left:
        raise PipelineError(
            f"{config_path}: pipeline.params {left}: $model/ references are supported for "
            "segmentation, embedding and plda only"
        )
    pipeline = Pipeline.from_pretrained(config)
    if device is not None:
        import torch

        pipeline.to(torch.device(device))
    return pipeline, loaded


@contextlib.contextmanager
def loading(what: str, name):
    """A model loader's own errors (CTranslate2's RuntimeError for a folder without model.bin,
    whisperx's ValueError for an unknown alignment model) -> a PipelineError naming the model. Hub
    errors (not found, gated, offline) and other OSErrors pass on: common.cli.run_main explains them."""
    try:
        yield
    except (RuntimeError, ValueError, KeyError) as e:
        if isinstance(e, OSError):
            raise
        raise PipelineError(f"{name}: cannot load the {what}: {type(e).__name__}: {cli.one_line(str(e))[:300]}") from e


# The speaker count handed to pyannote. IEMOCAP's default is the authors' call (their preprocess.py:
# whisperX's DiarizationPipeline called with min_speakers=2, max_speakers=2: every dialog is a dyad).
SPEAKER_FLAGS = ("num_speakers", "min_speakers", "max_speakers")
IEMOCAP_SPEAKERS = {"num_speakers": None, "min_speakers": 2, "max_speakers": 2}
AUTO_SPEAKERS = {"num_speakers": None, "min_speakers": None, "max_speakers": None}  # pyannote estimates it


def speaker_count(text: str) -> int | str:
    """argparse type of --num-speakers/--min-speakers/--max-speakers: an integer >= 1, or 'auto' (no count)."""
    import argparse

    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or 'auto', got {text!r}")
    return value


def add_speaker_flags(group, default: str) -> None:
    """The three speaker-count flags of a pyannote call (preprocess.py and predict.py); default: what
    giving none of them means, for --help."""
    group.add_argument(
        "--num-speakers",
        type=speaker_count,
        default=None,
        metavar="N|auto",
        help=f"exact speakers per dialog for pyannote, or 'auto' (pyannote estimates it); default: {default}",
    )
    for bound in ("min", "max"):
        group.add_argument(
            f"--{bound}-speakers",
            type=speaker_count,
            default=None,
            metavar="N|auto",
            help=f"{bound}imum speakers per dialog for pyannote ('auto' or left out: none; not with --num-speakers N)",
        )


def speaker_kwargs(args, default: dict) -> dict:
    """--num-speakers/--min-speakers/--max-speakers -> pyannote's num_speakers, min_speakers, max_speakers
    (None: not given to it). None of the flags given: `default`. ValueError for a contradiction."""
    given = {k: getattr(args, k, None) for k in SPEAKER_FLAGS}
    if all(v is None for v in given.values()):
        return dict(default)
    if isinstance(given["num_speakers"], int) and (given["min_speakers"], given["max_speakers"]) != (None, None):
        raise ValueError("--num-speakers N fixes the count: give it or --min-speakers/--max-speakers, not both")
    kwargs = {k: None if v == "auto" else v for k, v in given.items()}
    low, high = kwargs["min_speakers"], kwargs["max_speakers"]
    if low is not None and high is not None and low > high:
        raise ValueError(f"--min-speakers {low} is above --max-speakers {high}")
    return kwargs


def speaker_config(kwargs: dict) -> dict:
    """The speaker count of a run as step 2's config records it: num_speakers (None: estimated), and
    min_speakers/max_speakers only for a range. pyannote reads min = max = N as num_speakers = N
    (pyannote.audio's set_num_speakers), so both spellings of one count share a config."""
    num, low, high = (kwargs[k] for k in SPEAKER_FLAGS)
    if num is None and low is not None and low == high:
        return {"num_speakers": low}
    config = {"num_speakers": num}
    config.update({k: kwargs[k] for k in ("min_speakers", "max_speakers") if kwargs[k] is not None})
    return config


def speaker_argv(args) -> list[str]:
    """The speaker-count flags given on a command line, to pass on to preprocess.py (none given: 'auto')."""
    given = [(k, getattr(args, k)) for k in SPEAKER_FLAGS if getattr(args, k, None) is not None]
    given = given or [("num_speakers", "auto")]
    return [a for k, v in given for a in ("--" + k.replace("_", "-"), str(v))]


def annotation_turns(annotation, duration: float) -> list[tuple[float, float, str]]:
    """pyannote Annotation -> [(start, end, label)], clipped to the audio: pyannote's last sliding
    window is padded, so a turn can end after the audio does."""
    turns = [
        (max(float(seg.start), 0.0), min(float(seg.end), duration), str(label))
        for seg, _, label in annotation.itertracks(yield_label=True)
    ]
    return [t for t in turns if t[1] > t[0]]


class WhisperX:
    """WhisperX ASR + alignment + pyannote diarization, models loaded once."""

    def __init__(self, args):
        import whisperx

        nltk_data = args.nltk_data
        if nltk_data is None and args.model_dir and (Path(args.model_dir) / "nltk_data").is_dir():
            nltk_data = Path(args.model_dir) / "nltk_data"
        if nltk_data:  # whisperx.align loads NLTK's punkt_tab; a local copy avoids the download
            import nltk

            nltk.data.path.insert(0, str(Path(nltk_data).resolve()))
        self.whisperx = whisperx
        self.device, self.compute_type = device_and_compute_type(args)
        self.vad, self.batch_size = args.vad, args.batch_size
        self.speakers = speaker_kwargs(args, IEMOCAP_SPEAKERS)  # num/min/max_speakers of the pyannote call
        self.args, self.language, self.aligners = args, getattr(args, "language", defaults.LANGUAGE), {}
        token = huberrors.hub_token()  # never printed
        asr_path, asr_repo = asr_source(args)
        align = align_source(args)
        print(
            f"loading models on {self.device} ({self.compute_type}): ASR {asr_path or asr_repo}, "
            f"alignment {align['name']}, diarization {args.diar_model}" + (" (cache only)" if args.cache_only else "")
        )
        device_type, _, index = self.device.partition(":")  # ctranslate2 takes the GPU index apart
        from whisperx.asr import load_model  # what whisperx.load_model calls

        with loading("ASR model (--asr-model)", asr_path or args.asr_model):
            self.asr = load_model(
                str(asr_path) if asr_path else args.asr_model,
                device_type,
                device_index=int(index or 0),
                compute_type=self.compute_type,
                language=None if self.language == "auto" else self.language,
                vad_method="pyannote",
                vad_options={"vad_onset": args.vad_onset, "vad_offset": args.vad_offset},
                asr_options={"beam_size": args.beam_size},
                threads=args.threads,
                local_files_only=args.cache_only,
                **token_kwargs(load_model, token),
            )
        if args.asr_max_length:
            self.asr.model.max_length = args.asr_max_length
        if self.language != "auto":  # loaded now, so that a missing model stops the run before any dialog
            self.aligner(self.language)
        with loading("diarization pipeline (--diar-model)", args.diar_model):
            self.diarizer, files = load_diarization_pipeline(
                args.diar_model,
                model_dir=args.model_dir,
                token=token,
                cache_only=args.cache_only,
                embedding_batch_size=args.embedding_batch_size,
                segmentation_batch_size=args.segmentation_batch_size,
                device=self.device,
            )
        print(f"diarization pipeline read {len(files)} files: " + ", ".join(files))

    def aligner(self, language: str) -> tuple:
        """whisperx.load_align_model for a language -> (model, metadata), loaded once per language: the
        --align-model given, else WhisperX's default for the language (--language auto: the detected one)."""
        if language not in self.aligners:
            args, align = self.args, align_source(self.args, language)
            if align["kind"] == "torchaudio" and args.cache_only and not align["file"].is_file():
                raise PipelineError(
                    f"{align['file']}: the alignment model {align['name']} is not there and --cache-only "
                    f"forbids downloading it; copy it with --download-models DIR and pass --model-dir DIR"
                )
            if self.language == "auto":
                print(f"language {language}: loading the alignment model {align['name']}")
            with loading(f"alignment model for language {language} (--align-model)", align["name"]):
                self.aligners[language] = self.whisperx.load_align_model(
                    language_code=language,
                    device=self.device,
                    model_name=align["name"],
                    model_dir=align["model_dir"],
                    model_cache_only=args.cache_only,
                )
        return self.aligners[language]

    def dialog_language(self, audio: np.ndarray) -> str:
        """--language, or for auto the language Whisper detects in the dialog's first 30 s (what
        FasterWhisperPipeline.transcribe detects when it is given none); an English-only model: en."""
        if self.language != "auto":
            return self.language
        if not is_multilingual(self.asr):
            return "en"
        return self.asr.detect_language(audio)

    def transcribe(self, audio: np.ndarray, utterances: list[dict], language: str = defaults.LANGUAGE) -> list[dict]:
        """Unaligned segments [{"start", "end", "text"}], from WhisperX's VAD or the reference utterances.

        --vad oracle (the paper's VAD-oracle pipeline, Table III): WhisperX's VAD is not run; each reference
        utterance (in pieces of at most MAX_CHUNK_S) is transcribed on its own, in dialog time, and aligned on
        its own. Oracle are the speech regions and their cuts; not oracle are the words, the word times inside
        an utterance and the speaker turns (pyannote runs on the whole dialog as in the standard pipeline).
        whisperx.load_model always builds its VAD model; in this mode it is loaded but never called.
        """
        if self.vad == "auto":
            try:
                return self.asr.transcribe(audio, batch_size=self.batch_size, language=language)["segments"]
            except IndexError as e:  # whisperx's merge_chunks indexes the first VAD region
                raise PipelineError(f"the VAD found no speech in the dialog ({e})") from e
        # VAD oracle: the reference utterances are the speech regions; each is decoded on its own,
        # through the same batched Whisper pipeline that FasterWhisperPipeline.transcribe runs on VAD chunks.
        chunks = []
        for u in sorted(utterances, key=lambda u: (u["start"], u["end"])):
            start, end = max(u["start"], 0.0), min(u["end"], len(audio) / SAMPLE_RATE)
            while end - start > 0.01:
                chunks.append((start, min(end, start + MAX_CHUNK_S)))
                start += MAX_CHUNK_S
        self.set_tokenizer(language)
        inputs = ({"inputs": audio[int(s * SAMPLE_RATE) : int(e * SAMPLE_RATE)]} for s, e in chunks)
        segments = []
        for (start, end), out in zip(chunks, self.asr(inputs, batch_size=self.batch_size, num_workers=0)):
            text = out["text"][0] if isinstance(out["text"], list) else out["text"]
            segments.append({"text": text, "start": round(start, 3), "end": round(end, 3)})
        return segments

    def set_tokenizer(self, language: str) -> None:
        """The Whisper tokenizer for the language, as FasterWhisperPipeline.transcribe sets it (the
        VAD-oracle path calls the pipeline directly, which decodes with whatever tokenizer it holds)."""
        tokenizer = self.asr.tokenizer
        if tokenizer is None or tokenizer.language_code != language:
            from faster_whisper.tokenizer import Tokenizer

            model = self.asr.model
            self.asr.tokenizer = Tokenizer(
                model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language
            )

    def __call__(self, dialog, utterances, audio):
        import torch

        language = self.dialog_language(audio)
        segments = self.transcribe(audio, utterances, language)
        align_model, align_meta = self.aligner(language)
        aligned = self.whisperx.align(
            segments, align_model, align_meta, audio, self.device, return_char_alignments=False
        )
        # The pipeline is called as whisperx.diarize.DiarizationPipeline calls it, keeping both outputs.
        output = self.diarizer(
            {"waveform": torch.from_numpy(audio[None, :]), "sample_rate": SAMPLE_RATE}, **self.speakers
        )
        duration = len(audio) / SAMPLE_RATE
        names = {}  # one anonymous labelling for both versions
        turns = anonymise(annotation_turns(getattr(output, "speaker_diarization", output), duration), names)
        exclusive = getattr(output, "exclusive_speaker_diarization", None)  # absent for legacy pipelines
        exclusive = anonymise(annotation_turns(exclusive, duration), names) if exclusive is not None else None
        out = [clean_segment(s) for s in aligned["segments"]]
        # A segment with no time at all (nothing aligned, no timed word) cannot be placed: dropped, counted.
        untimed = [s for s in out if s["start"] is None]
        out = [s for s in out if s["start"] is not None]
        stats = {
            "unaligned_segments": len(segments),
            "empty_segments": sum(1 for s in out if not s["words"]),
            "dropped_untimed_segments": len(untimed),
            "dropped_untimed_words": sum(len(s["words"]) for s in untimed),
        }
        stats["language"] = language
        result = asr_result(dialog, "whisperx" if self.vad == "auto" else "whisperx-vadoracle", out)
        result["language"] = language
        return (
            result,
            turns,
            stats,
            exclusive,
        )


def is_multilingual(asr) -> bool:
    """Whether a loaded WhisperX pipeline's Whisper model knows languages other than English."""
    return bool(asr.model.model.is_multilingual)


def _number(x):
    """numpy/pandas scalar -> float, NaN -> None (JSON has no NaN)."""
    x = float(x)
    return None if x != x else round(x, 3)


def clean_segment(seg: dict) -> dict:
    """WhisperX aligned segment -> plain JSON (floats, no NaN); a word keeps only the times it has."""
    words = []
    for w in seg.get("words", []):
        word = {"word": str(w["word"])}
        for key in ("start", "end", "score"):
            if key in w and w[key] is not None and _number(w[key]) is not None:
                word[key] = _number(w[key])
        words.append(word)
    out = {"start": _number(seg["start"]), "end": _number(seg["end"]), "text": str(seg["text"]), "words": words}
    if out["start"] is None or out["end"] is None:  # no timed character: fall back on its words
        timed = [w for w in words if "start" in w]
        out["start"] = timed[0]["start"] if timed else None
        out["end"] = max(w["end"] for w in timed) if timed else None
    return out


# ---------------------------------------------------------------------------------------------
# Preflight (--check) and offline copies (--download-models) of these models
# ---------------------------------------------------------------------------------------------

MODEL_BYTES = {  # download sizes, approximate, for the disk check
    "Systran/faster-whisper-large-v2": 3.1e9,
    DEFAULT_ALIGN_MODEL: 3.8e8,
    "pyannote/segmentation-3.0": 6e6,
    "pyannote/wespeaker-voxceleb-resnet34-LM": 2.7e7,
    "pyannote/speaker-diarization-community-1": 3.5e7,
}


def read_pipeline_config(path) -> dict:
    import yaml

    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        config["pipeline"]["name"]
        config["pipeline"].setdefault("params", {})
        return config
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise PipelineError(f"{path}: not a pyannote pipeline config ({type(e).__name__}: {e})") from e


def pipeline_model_refs(config: dict, name: str, config_path) -> dict:
    """{"segmentation" | "embedding" | "plda": (repository or folder, subfolder or None, files)} of a
    pipeline config: what load_diarization_pipeline will read (plda only for VBx clustering)."""
    params = config["pipeline"]["params"]
    refs = {
        key: (*_model_reference(params, key, name, config_path), ("pytorch_model.bin",))
        for key in ("segmentation", "embedding")
    }
    if params.get("clustering", "VBxClustering") == "VBxClustering":
        refs["plda"] = (*_model_reference(params, "plda", name, config_path), PLDA_FILES)
    return refs


def diarization_checks(args, token, offline: bool) -> list[CheckItem]:
    """The pipeline (config.yaml) and every model its config names, local or on the hub."""
    name, items = args.diar_model, []
    local = modelhub.local_model_path(name, args.model_dir)
    if local is None and not modelhub.is_hub_name(name):
        return [
            CheckItem(
                "diarization pipeline",
                False,
                f"{name}: not found; copy the pipeline folder there, "
                "or give its hub name (pyannote/speaker-diarization-3.1)",
            )
        ]
    config = config_path = None
    if local is not None:
        items.append(modelhub.check_local_model("diarization pipeline", local, ["config.yaml"]))
        config_path = local / "config.yaml"
    else:
        items.append(modelhub.check_hub_model("diarization pipeline", name, ["config.yaml"], token, offline=offline))
        if offline:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "config.yaml")
            config_path = Path(cached) if isinstance(cached, str) else None
    if config_path is not None and config_path.is_file():
        try:
            config = read_pipeline_config(config_path)
            refs = pipeline_model_refs(config, name, config_path)
        except PipelineError as e:
            return items + [CheckItem("diarization config", False, str(e))]
    elif local is None:  # online: the config is not downloaded by a check; the known pipelines' models
        known = KNOWN_PIPELINE_MODELS.get(name)
        if known is None:
            return items + [
                CheckItem(
                    "diarization models",
                    True,
                    f"{name} is not a pipeline this check knows: the models its config names are checked when it loads",
                )
            ]
        refs = {key: (repo, None, ("pytorch_model.bin",)) for key, repo in known.items()}
    else:
        return items
    for key, (ref, sub, files) in refs.items():
        label = f"diarization {key}"
        if ref == name and sub is not None:  # a subfolder of the pipeline itself
            if local is not None:
                items.append(modelhub.check_local_model(label, local / sub, files))
            elif offline:
                items.append(modelhub.check_hub_model(label, name, [f"{sub}/{f}" for f in files], token, offline=True))
            continue  # online: the pipeline's own access covers it
        where = modelhub.local_model_path(ref, args.model_dir)
        if where is not None:
            items.append(modelhub.check_local_model(label, where, files if where.is_dir() else ()))
        elif modelhub.is_hub_name(ref):
            items.append(modelhub.check_hub_model(label, ref, files, token, offline=offline))
        else:
            items.append(CheckItem(label, False, f"{ref}: not found (named by the diarization pipeline's config)"))
    return items


def punkt_language(args) -> str:
    """The punkt_tab model whisperx.align opens for --language (whisperx.utils.PUNKT_LANGUAGES, else english)."""
    language = getattr(args, "language", defaults.LANGUAGE)
    if language in (defaults.LANGUAGE, "auto"):
        return "english"
    from whisperx.utils import PUNKT_LANGUAGES

    return PUNKT_LANGUAGES.get(language, "english")


def nltk_check(args, offline: bool) -> CheckItem:
    """whisperx.align splits sentences with NLTK's punkt_tab and downloads it when it is missing.
    Looked up where nltk.data.path looks (NLTK_DATA, then nltk's default folders), without
    importing nltk (seconds of scipy imports)."""
    folders = [d for d in (args.nltk_data, args.model_dir and Path(args.model_dir) / "nltk_data") if d]
    folders += [d for d in os.environ.get("NLTK_DATA", "").split(os.pathsep) if d]
    folders += [Path.home() / "nltk_data"] + [
        Path(sys.prefix) / d for d in ("nltk_data", "share/nltk_data", "lib/nltk_data")
    ]
    folders += ["/usr/share/nltk_data", "/usr/local/share/nltk_data", "/usr/lib/nltk_data", "/usr/local/lib/nltk_data"]
    found = next(
        (
            Path(d) / "tokenizers" / "punkt_tab" / punkt_language(args)
            for d in folders
            if (Path(d) / "tokenizers" / "punkt_tab" / punkt_language(args)).is_dir()
        ),
        None,
    )
    if found is not None:
        return CheckItem("NLTK punkt_tab", True, str(found))
    if offline:
        return CheckItem(
            "NLTK punkt_tab",
            False,
            "not found and offline: whisperx.align needs it; pass "
            "--nltk-data DIR (--download-models DIR writes DIR/nltk_data)",
        )
    return CheckItem("NLTK punkt_tab", True, "not found; whisperx downloads it at first use (~40 MB)")


def model_checks(args) -> list[CheckItem]:
    """Each model of the whisperx backend: local folder complete, or hub access (gated: token)."""
    token, offline = huberrors.hub_token(), huberrors.hub_offline() or args.cache_only
    path, repo = asr_source(args)
    items = [
        modelhub.check_local_model("ASR model", path, WHISPER_REQUIRED)
        if path is not None
        else modelhub.check_hub_model("ASR model", repo, ["model.bin"], token, offline=offline)
    ]
    align = align_source(args)
    if align["kind"] == "per-language":
        items.append(
            CheckItem(
                "alignment model",
                True,
                "--language auto: WhisperX's default for each detected language, loaded (or downloaded) when a "
                "dialog needs it; not checked here (pass --language CODE or --align-model to check one)",
            )
        )
    elif align["kind"] == "torchaudio":
        if align["file"].is_file():
            items.append(CheckItem("alignment model", True, f"{align['file']} ({align['name']}, local)"))
        elif offline:
            items.append(
                CheckItem(
                    "alignment model",
                    False,
                    f"{align['file']}: not found and offline; copy it with "
                    "--download-models DIR and pass --model-dir DIR (or --align-model-dir)",
                )
            )
        else:
            items.append(
                CheckItem(
                    "alignment model",
                    True,
                    f"{align['name']} not cached; torchaudio downloads it "
                    f"at first use from {align['url']} into {align['file'].parent}",
                )
            )
    elif align["kind"] == "local":
        items.append(modelhub.check_local_model("alignment model", align["name"], ALIGN_REQUIRED))
    else:
        items.append(
            modelhub.check_hub_model(
                "alignment model", align["name"], ["config.json"], token, cache_dir=align["model_dir"], offline=offline
            )
        )
    items += diarization_checks(args, token, offline)
    items.append(nltk_check(args, offline))
    return items


def planned_download_bytes(args) -> float:
    """Approximate bytes the whisperx backend downloads at first use (models not on disk)."""
    if args.backend != "whisperx" or huberrors.hub_offline() or args.cache_only:
        return 0.0
    total = 0.0
    _, repo = asr_source(args)
    total += MODEL_BYTES.get(repo, 0.0) if repo else 0.0
    align = align_source(args)
    if align["kind"] == "torchaudio" and not align["file"].is_file():
        total += MODEL_BYTES.get(align["name"], 0.0)
    if modelhub.local_model_path(args.diar_model, args.model_dir) is None:
        total += MODEL_BYTES.get(args.diar_model, 0.0) + sum(
            MODEL_BYTES.get(r, 0.0) for r in KNOWN_PIPELINE_MODELS.get(args.diar_model, {}).values()
        )
    return total


def download_align_model(args, dest: Path, token, repos: dict) -> str | None:
    """The alignment model of --align-model / --language into dest (for download_models) -> its path, or
    None for a local folder; a hub model is added to `repos`."""
    align = align_source(args)
    if align["kind"] == "per-language":
        raise PipelineError(
            "--download-models with --language auto: the alignment model depends on the language; "
            "pass --language CODE (or --align-model) for the recordings' language"
        )
    if align["kind"] == "torchaudio":
        target = dest / "torchaudio" / align["file"].name
        if not target.is_file():
            import torch

            print(f"downloading {align['url']}")
            target.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(align["url"], str(target))
        return str(target)
    elif align["kind"] == "hub":
        print(f"downloading {align['name']}: config, vocabulary and weights")
        local = modelhub.snapshot_transformers_model(align["name"], dest, token)
        repos[align["name"]] = {"path": str(local), "allow_patterns": "common.modelhub.TRANSFORMERS_FILES and weights"}
        return str(local)
    return None


def download_models(args) -> dict:
    """Copy the models of a whisperx run into DIR (--download-models DIR) -> the manifest written to
    DIR/models.json. Exactly what loads: the CTranslate2 files of the Whisper repository, the
    alignment model (the torchaudio checkpoint of the default English model, or a hub model's
    config, vocabulary and weights), the pipeline's config.yaml and then only the files it names
    (3.1: pytorch_model.bin of segmentation-3.0 and wespeaker-voxceleb-resnet34-LM; community-1:
    its segmentation/, embedding/ and plda/ files), and NLTK's punkt_tab."""
    dest, token = Path(args.download_models), huberrors.hub_token()
    if args.backend != "whisperx":
        print(f"--download-models: the {args.backend} backend uses no model; nothing to download")
        return {}
    if huberrors.hub_offline():
        raise PipelineError(
            "--download-models needs the hub, but HF_HUB_OFFLINE is set: run it with HF_HUB_OFFLINE=0 "
            "on a machine with internet"
        )
    repos, files = {}, {}

    def fetch(repo, patterns) -> Path:
        print(f"downloading {repo}: {', '.join(patterns)}")
        path = modelhub.snapshot_repo(repo, dest, patterns, token)
        entry = repos.setdefault(repo, {"path": str(path), "allow_patterns": []})
        entry["allow_patterns"] += list(patterns)
        return path

    path, repo = asr_source(args)
    if repo:
        files["asr"] = str(fetch(repo, WHISPER_FILES))
    else:
        print(f"ASR model {path}: on disk, not downloaded")
    align_file = download_align_model(args, dest, token, repos)
    if align_file:
        files["align"] = align_file
    name = args.diar_model
    local = modelhub.local_model_path(name, args.model_dir)
    if local is None and not modelhub.is_hub_name(name):
        raise PipelineError(f"--diar-model {name}: no such folder, and not a hub name")
    config_path = (local or fetch(name, ["config.yaml"])) / "config.yaml"
    own = []
    for ref, sub, needed in pipeline_model_refs(read_pipeline_config(config_path), name, config_path).values():
        if ref == name and sub is not None:
            own += [f"{sub}/{f}" for f in needed]
        elif modelhub.local_model_path(ref, args.model_dir) is None and modelhub.is_hub_name(ref):
            fetch(ref, list(needed))
    if own and local is None:
        fetch(name, own)
    files["diarization"] = str(local or dest / name)
    import nltk

    if not nltk.download("punkt_tab", download_dir=str(dest / "nltk_data"), quiet=True, raise_on_error=True):
        raise PipelineError("NLTK punkt_tab: download failed")
    files["nltk_data"] = str(dest / "nltk_data")
    manifest = {
        "written_by": "preprocess.py --download-models",
        "repositories": repos,
        "files": files,
        "flags": ["--model-dir", str(dest)],
    }
    atomic_write_json(dest / "models.json", manifest)
    print(
        f"wrote {dest / 'models.json'}; on the machine without internet run:\n"
        f"  HF_HUB_OFFLINE=1 python preprocess.py --backend whisperx --model-dir {dest} --cache-only"
        + (f" --diar-model {name}" if name != defaults.DIAR_MODEL else "")
        + (f" --language {args.language}" if getattr(args, "language", defaults.LANGUAGE) != defaults.LANGUAGE else "")
    )
    return manifest
