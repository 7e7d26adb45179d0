"""The defaults every step shares, each said once: the paper's folders and models. A flag's default reads from here;
`--help` shows it."""

WORK_DIR = "preprocessed_iemocap"  # the work directory every step reads and writes (the authors' name)
CORPUS_DIR = "IEMOCAP_full_release"  # the corpus root, as USC SAIL distributes it
ASR_MODEL = "large-v2"  # WhisperX's ASR model (the paper's)
DIAR_MODEL = "pyannote/speaker-diarization-3.1"  # the diarization pipeline (the paper's)
TEXT_MODEL = "roberta-base"  # the text extractor (the paper's RoBERTa)
AUDIO_MODEL = "facebook/wav2vec2-base"  # the audio extractor (the paper's wav2vec 2.0)
PIPE = "whisperx"  # the step-2 run steps 3-6 read (WORK/<pipe>/): the paper's standard pipeline
LANGUAGE = "en"  # step 2's language (the paper's: IEMOCAP is English); "auto" detects each dialog's
PREDICT_LANGUAGE = "auto"  # predict.py on any recording: its language detected
