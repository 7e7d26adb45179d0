"""Generate a small synthetic corpus in IEMOCAP_full_release's exact on-disk layout.

The demo corpus lets the whole pipeline (steps 1-6) run here, with no IEMOCAP and no GPU, through the very code
paths that read the real corpus, quirks included. Under <out> it writes, per dialog:

  SessionK/dialog/wav/<dialog>.wav                              16 kHz stereo, one channel per actor
  SessionK/dialog/EmoEvaluation/<dialog>.txt                    labels, evaluator lines, [V, A, D]
  SessionK/dialog/transcriptions/<dialog>.txt                   "Ses01F_impro01_F000 [006.2901-008.2357]: ..."
  SessionK/sentences/wav/<dialog>/<utt>.wav                     16 kHz mono, cut from the dialog wav
  SessionK/sentences/ForcedAlignment/<dialog>/<utt>.wdseg       Sphinx-3 word alignment

and <out>/demo_ground_truth.json (utterances, words, turns), against which the tests check every step. With
--speakers N (3 or more; default 2 = the layout above) the dialogs are N-party and the corpus is a CSV corpus
instead: per dialog its wav (mono) and wdsegs, and <out>/corpus.csv for corpus_from_csv.py.
Emotion is carried by speech-like audio cues and emotion-leaning words, each modality confusing on purpose
what the other separates (--audio-noise, --text-noise). Deterministic: the same arguments give bit-identical
files. The corpus, its file details, the .wdseg time convention and the ground truth's fields:
docs/EXPERIMENTS.md ("The demo").

    python demo/make_corpus.py [--out demo_data/IEMOCAP_full_release] [--sessions 1,5] [--seed 0]
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import lfilter, sosfilt
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: find utils.py
from common.cli import PipelineError  # noqa: E402
from common.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text  # noqa: E402
from common.formats import CODE_TO_LABEL, LABELS, SAMPLE_RATE  # noqa: E402

SR = SAMPLE_RATE
FRAME_RATE = 100  # .wdseg frames per second (Sphinx-3, 10 ms hop)
MAX_PAUSE = 1.5  # the paper's turn-grouping threshold; generated pauses keep 0.1 s away from it
CSV_FILE = "corpus.csv"  # a --speakers N > 2 demo: the corpus CSV that corpus_from_csv.py reads
MARKER_FILE = ".demo_corpus"  # written first; lets a re-run clean a previous (possibly partial) demo corpus

# ---------------------------------------------------------------------------------------------
# Design tables: class mix, vocabulary, prosody. Constants of the design, read-only.
# ---------------------------------------------------------------------------------------------

# Utterance code mix outside any theme; non-target codes ~30% overall, like the target order of
# IEMOCAP (neu > hap+exc > ang ~ sad).
BASE_CODES = {
    "neu": 0.26,
    "exc": 0.10,
    "hap": 0.07,
    "ang": 0.14,
    "sad": 0.12,
    "fru": 0.12,
    "xxx": 0.10,
    "sur": 0.04,
    "fea": 0.03,
    "dis": 0.01,
    "oth": 0.01,
}
# Each dialog (scripted scenario) has a mood; 35% of its utterances are drawn from it.
THEMES = {
    "ang": {"ang": 0.6, "fru": 0.3, "xxx": 0.1},
    "sad": {"sad": 0.6, "neu": 0.3, "xxx": 0.1},
    "hap": {"exc": 0.45, "hap": 0.35, "sur": 0.1, "xxx": 0.1},
    "neu": {"neu": 0.75, "fru": 0.1, "xxx": 0.15},
}
THEME_WEIGHT = 0.35
# Moods are dealt in turn (not drawn) so that small corpora keep the intended class mix.
IMPRO_THEMES = ("ang", "sad", "hap", "neu")
SCRIPT_THEMES = {"script01": "neu", "script02": "hap", "script03": "ang"}

FUNCTION_WORDS = (
    "the a to and you i it we that is was have just know what about going there this "
    "here with for on at then so well right yeah now of in my your be do not if but "
    "they he she me can would could all out up back one some"
).split()
CONTENT_WORDS = (
    "time thing way day place people home work car morning tonight week house friend "
    "year phone door street money dinner family night mother brother sister city road "
    "job letter name table water coffee window morning"
).split()
EMOTION_WORDS = {
    "neu": "okay fine sure maybe office form number schedule meeting paper line address ticket probably usual".split(),
    "ang": (
        "ridiculous stop hate stupid enough unacceptable furious liar never shut sick nonsense idiot fault yelling"
    ).split(),
    "hap": (
        "great wonderful love amazing happy excited fantastic beautiful fun perfect glad congratulations celebrate "
        "awesome laugh"
    ).split(),
    "sad": "miss alone sorry lost cry gone hurt lonely died funeral empty tears goodbye sad hopeless".split(),
    "fru": "again whatever annoying still supposed problem waiting seriously".split(),
    "sur": "really wow believe suddenly unexpected incredible".split(),
    "fea": "scared afraid careful danger help dark".split(),
    "dis": "gross disgusting awful".split(),
}
# Which vocabularies an emotion's text draws its emotion-leaning words from.
TEXT_SOURCES = {
    "neu": ("neu",),
    "ang": ("ang",),
    "hap": ("hap",),
    "exc": ("hap",),
    "sad": ("sad",),
    "fru": ("fru", "ang", "neu"),
    "sur": ("sur", "hap"),
    "fea": ("fea", "sad"),
    "dis": ("dis", "ang"),
    "oth": ("neu",),
}
VARIANT_WORDS = {"the", "a", "to", "what", "you", "that", "for", "and", "read", "live"}  # get WORD(2) sometimes

# Prosody relative to the actor: pitch x base f0, contour excursion, contour shape, RMS energy,
# syllables per second, attack time (s), spectral tilt (one-pole low-pass coefficient; higher =
# darker), tremor depth.
PROSODY = {
    "neu": dict(
        pitch=1.00, excursion=0.08, contour="decline", energy=0.065, rate=4.4, attack=0.030, tilt=0.45, tremor=0.0
    ),
    "ang": dict(
        pitch=1.32, excursion=0.14, contour="fall", energy=0.150, rate=5.6, attack=0.004, tilt=0.05, tremor=0.0
    ),
    "hap": dict(
        pitch=1.22, excursion=0.30, contour="risefall", energy=0.100, rate=5.0, attack=0.015, tilt=0.30, tremor=0.0
    ),
    "exc": dict(
        pitch=1.27, excursion=0.32, contour="risefall", energy=0.115, rate=5.3, attack=0.012, tilt=0.25, tremor=0.0
    ),
    "sad": dict(
        pitch=0.85, excursion=0.02, contour="flat", energy=0.035, rate=3.0, attack=0.050, tilt=0.75, tremor=0.0
    ),
    "fru": dict(
        pitch=1.15, excursion=0.10, contour="fall", energy=0.110, rate=5.0, attack=0.010, tilt=0.20, tremor=0.0
    ),
    "sur": dict(
        pitch=1.25, excursion=0.30, contour="rise", energy=0.100, rate=4.8, attack=0.015, tilt=0.30, tremor=0.0
    ),
    "fea": dict(
        pitch=1.25, excursion=0.06, contour="decline", energy=0.070, rate=5.4, attack=0.020, tilt=0.40, tremor=0.04
    ),
    "dis": dict(
        pitch=0.95, excursion=0.08, contour="fall", energy=0.070, rate=3.8, attack=0.020, tilt=0.45, tremor=0.0
    ),
    "oth": dict(
        pitch=1.00, excursion=0.10, contour="decline", energy=0.070, rate=4.4, attack=0.030, tilt=0.45, tremor=0.0
    ),
}

# Peterson & Barney average male vowel formants (Hz); actors scale them.
VOWELS = {
    "i": (270, 2290, 3010),
    "I": (390, 1990, 2550),
    "E": (530, 1840, 2480),
    "ae": (660, 1720, 2410),
    "A": (730, 1090, 2440),
    "O": (570, 840, 2410),
    "U": (440, 1020, 2240),
    "u": (300, 870, 2240),
    "V": (640, 1190, 2390),
    "R": (490, 1350, 1690),
}
LETTER_VOWEL = {
    "a": "ae",
    "e": "E",
    "i": "I",
    "o": "O",
    "u": "V",
    "y": "i",
    "ee": "i",
    "ea": "i",
    "oo": "u",
    "ou": "A",
    "ai": "E",
    "ay": "E",
    "oa": "O",
    "ie": "i",
    "io": "V",
    "er": "R",
    "ue": "u",
}
FORMANT_BANDWIDTHS = (90.0, 110.0, 160.0)

# IEMOCAP's evaluator vocabulary and typical (valence, activation, dominance) per code.
CATEGORY_NAMES = {
    "neu": "Neutral",
    "hap": "Happiness",
    "exc": "Excited",
    "sad": "Sadness",
    "ang": "Anger",
    "fru": "Frustration",
    "sur": "Surprise",
    "fea": "Fear",
    "dis": "Disgust",
    "oth": "Other",
}
VAD_MEANS = {
    "neu": (3, 2.5, 3),
    "hap": (4, 3, 3),
    "exc": (4, 4, 3.5),
    "sad": (2, 2, 2),
    "ang": (1.5, 4, 4),
    "fru": (2, 3.5, 3.5),
    "sur": (3.5, 4, 3),
    "fea": (2, 3.5, 2),
    "dis": (2, 3, 3.5),
    "oth": (3, 3, 3),
    "xxx": (2.5, 3, 3),
}


def _pick(rng, table: dict):
    keys = list(table)
    p = np.array([table[k] for k in keys], dtype=float)
    return keys[rng.choice(len(keys), p=p / p.sum())]


def draw_code(rng, theme: str) -> str:
    """An utterance's annotated code: the global mix, pulled towards the dialog's mood."""
    return _pick(rng, THEMES[theme]) if rng.random() < THEME_WEIGHT else _pick(rng, BASE_CODES)


# A speaker who keeps the floor mostly keeps their emotion: in IEMOCAP consecutive utterances of one
# actor usually share a label, which is what makes whole turns (the paper's aligned segments) coherent.
SAME_SPEAKER_KEEPS_EMOTION = 0.8


def next_code(rng, theme: str, lines: list[dict], speaker: str) -> str:
    """The code of the next line: the previous line's if the same speaker continues (mostly), else a draw."""
    if lines and lines[-1]["speaker"] == speaker and rng.random() < SAME_SPEAKER_KEEPS_EMOTION:
        return lines[-1]["code"]
    return draw_code(rng, theme)


# What each modality cannot tell apart, as in real speech: the words carry valence (negative ang and
# sad share a vocabulary's tone, non-negative hap and neu too) and the voice carries arousal (ang and
# hap are both loud, high and fast; sad and neu both quiet and slow). A modality's noisy cue comes from
# the emotion it confuses, so text alone mixes up ang/sad and hap/neu, audio alone ang/hap and sad/neu,
# and only the two together pin the emotion down: the gain that fusion is meant to bring.
VALENCE_TWIN = {"ang": "sad", "sad": "ang", "hap": "neu", "neu": "hap"}  # same valence, other arousal
AROUSAL_TWIN = {"ang": "hap", "hap": "ang", "sad": "neu", "neu": "sad"}  # same arousal, other valence


def confusable_emotion(rng, code: str, twin: dict) -> str:
    """The cue a noisy modality gives for `code`: its twin (VALENCE_TWIN for text, AROUSAL_TWIN for
    audio) for a 4-class code; any other 4-class emotion for the codes outside the four classes."""
    own = CODE_TO_LABEL.get(code)
    if own in twin:
        return twin[own]
    return LABELS[rng.integers(len(LABELS))]


# ---------------------------------------------------------------------------------------------
# Corpus plan: which dialogs exist
# ---------------------------------------------------------------------------------------------


def plan_dialogs(sessions: list[int], impro_per_session: int, script_per_session: int) -> list[dict]:
    """Dialog names per session, IEMOCAP style, with the two irregular names where possible."""
    dialogs = []
    for k in sessions:
        for i in range(impro_per_session):
            scenario = f"impro{i // 2 + 1:02d}"
            if k == 3 and i == impro_per_session - 1:
                scenario += "a"  # like Ses03M_impro05a
            dialogs.append(
                dict(
                    session=k,
                    kind="impro",
                    index=i,
                    scenario=scenario,
                    script=None,
                    name=f"Ses{k:02d}{'FM'[i % 2]}_{scenario}",
                )
            )
        first_script01 = True
        for i in range(script_per_session):
            family, part = i % 3 + 1, i // 3 % 3 + 1
            scenario = f"script{family:02d}_{part}"
            lines_key = scenario
            if k == 5 and family == 1 and first_script01:
                scenario += "b"  # like Ses05M_script01_1b; same lines as script01_1
            first_script01 = first_script01 and family != 1
            dialogs.append(
                dict(
                    session=k,
                    kind="script",
                    index=i,
                    scenario=scenario,
                    script=f"script{family:02d}",
                    lines_key=lines_key,
                    name=f"Ses{k:02d}{'FM'[i % 2]}_{scenario}",
                )
            )
    return dialogs


# The speakers of a --speakers N > 2 demo (a CSV corpus): these names with the session's number ("Ana1" is an
# actor of session 1), so that a name is one person across the corpus (train.py's speaker-disjoint folds).
PARTY_NAMES = ("Ana", "Ben", "Cai", "Dev", "Eva", "Gus", "Ida", "Jon")


def speaker_names(session: int, speakers: int = 2) -> tuple[str, ...]:
    """The session's actors: IEMOCAP's F and M for two speakers, else PARTY_NAMES with the session's number."""
    if speakers == 2:
        return ("F", "M")
    return tuple(f"{name}{session}" for name in PARTY_NAMES[:speakers])


def make_actors(seed: int, session: int, speakers: int = 2) -> dict:
    """The session's actors (speaker_names): clearly different voices (base pitch, formant scale, loudness);
    with more than two, female and male voices alternate, each in its own band of base pitch."""
    if speakers != 2:
        rng = np.random.default_rng([seed, session, 7, speakers])
        actors = {}
        for i, name in enumerate(speaker_names(session, speakers)):
            band = i // 2 * 12.0  # a voice of the same kind as an earlier one is set apart in pitch
            female = i % 2 == 0
            actors[name] = dict(
                f0=rng.uniform(190, 205) + band if female else rng.uniform(100, 112) + band,
                formant_scale=rng.uniform(1.12, 1.2) if female else rng.uniform(0.95, 1.02),
                loudness=rng.uniform(0.85, 1.15),
            )
        return actors
    rng = np.random.default_rng([seed, session, 7])
    return {
        "F": dict(f0=rng.uniform(190, 235), formant_scale=rng.uniform(1.12, 1.2), loudness=rng.uniform(0.85, 1.15)),
        "M": dict(f0=rng.uniform(100, 130), formant_scale=rng.uniform(0.95, 1.02), loudness=rng.uniform(0.85, 1.15)),
    }


# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------


def make_words(rng, emotion: str, n_words: int) -> list[str]:
    """n_words lower-case words: 1-3 emotion-leaning words among function and content words."""
    sources = TEXT_SOURCES[emotion]
    n_emo = min(n_words, 1 + int(rng.integers(0, 1 + n_words // 4)))
    words = []
    for _ in range(n_emo):
        vocab = EMOTION_WORDS[sources[rng.integers(len(sources))]]
        words.append(vocab[rng.integers(len(vocab))])
    for _ in range(n_words - n_emo):
        vocab = FUNCTION_WORDS if rng.random() < 0.65 else CONTENT_WORDS
        words.append(vocab[rng.integers(len(vocab))])
    return [words[i] for i in rng.permutation(n_words)]


def text_emotion_of(rng, code: str) -> str:
    """The emotion whose vocabulary a code's own text uses; xxx (no agreement) mixes two."""
    if code == "xxx":
        return ("neu", "ang", "hap", "sad", "fru")[rng.integers(5)]
    return code


def next_speaker(rng, speaker: str, names, lines: list[dict], left: int) -> str:
    """Who speaks the next line: the same speaker with probability 0.2, else another one. Of two: the other.
    Of more: one who has not spoken yet in `lines` if any (forced when the `left` lines still to come are no
    more than those who have not spoken, so that every actor speaks), else one drawn uniformly."""
    if len(names) == 2:
        return speaker if rng.random() < 0.2 else names[1 - names.index(speaker)]
    heard = {line["speaker"] for line in lines}
    unheard = [n for n in names if n not in heard]
    if not (unheard and left <= len(unheard)) and rng.random() < 0.2:
        return speaker
    pool = unheard or [n for n in names if n != speaker]
    return pool[int(rng.integers(len(pool)))]


def script_lines(seed: int, lines_key: str, n: int, names=("F", "M")) -> list[dict]:
    """The fixed lines of a scripted scenario: the same in every session (names: the session's speakers)."""
    rng = np.random.default_rng([seed, 99, int(lines_key[6:8]), int(lines_key[9])])
    theme = SCRIPT_THEMES[lines_key[:8]]
    lines, speaker = [], names[rng.integers(len(names))]
    for _ in range(n):
        code = next_code(rng, theme, lines, speaker)
        text_emotion = text_emotion_of(rng, code)
        lines.append(
            dict(
                speaker=speaker,
                code=code,
                text_cue=text_emotion,
                words=make_words(rng, text_emotion, int(rng.integers(4, 13))),
            )
        )
        speaker = next_speaker(rng, speaker, names, lines, n - len(lines))
    return lines


def transcript_text(items: list[tuple[str, str]], code: str | None) -> str:
    """Transcript as IEMOCAP writes it: sentence case, final punctuation, inline [MARKERS]."""
    out, seen_word = [], False
    for kind, w in items:
        if kind == "marker":
            out.append(f"[{w}]")
            continue
        w = "I" if w == "i" else w
        out.append(w if seen_word else w.capitalize())
        seen_word = True
    punct = "!" if code in ("ang", "exc", "fru") else "?" if code == "sur" else "."
    last_word = max(i for i, (kind, _) in enumerate(items) if kind == "word")
    out[last_word] += punct
    return " ".join(out)


# ---------------------------------------------------------------------------------------------
# Timing: utterances -> frames (.wdseg rows) -> dialog times
# ---------------------------------------------------------------------------------------------


def syllables(word: str) -> list[str]:
    """Vowel letter groups of a word (a crude syllable split), at least one."""
    groups, cur = [], ""
    for ch in word:
        if ch in "aeiouy":
            cur += ch
        elif cur:
            groups.append(cur)
            cur = ""
    if cur:
        groups.append(cur)
    if len(groups) > 1 and word.endswith("e") and groups[-1] == "e":
        groups.pop()  # silent final e
    return groups or ["a"]


def vowel_of(group: str) -> str:
    return LETTER_VOWEL.get(group[:2], LETTER_VOWEL.get(group[0], "V"))


def pause_frames(rng, slow: bool) -> int:
    """A pause between two words of one utterance, in frames; never within 0.1 s of 1.5 s."""
    p = (0.30, 0.45, 0.20, 0.05) if slow else (0.45, 0.40, 0.12, 0.03)
    kind = rng.choice(4, p=p)
    return int((0, rng.integers(3, 16), rng.integers(30, 111), rng.integers(165, 241))[kind])


def plan_utterance(rng, words: list[str], prosody: dict, audio_code: str) -> dict:
    """Lay out one utterance in frames: the rows of its .wdseg and where each word is."""
    rate = prosody["rate"] * float(np.exp(rng.normal(0, 0.08)))
    n = len(words)
    gaps = [pause_frames(rng, slow=audio_code == "sad") for _ in range(n - 1)]
    marker, marker_at = None, -1
    if audio_code in ("hap", "exc", "sur") and rng.random() < 0.35:
        marker = "LAUGHTER"
    elif rng.random() < 0.08:
        marker = "BREATHING"
    if marker:
        marker_at = int(rng.integers(0, n))  # the marker comes before word marker_at
    rows = []  # (token, n_frames, kind): kind word/marker/sil/s
    lead = int(rng.integers(8, 35))
    marker_frames = int(rng.integers(25, 61))
    if marker_at == 0:
        a = int(rng.integers(3, 10))
        rows += [("<s>", lead, "s"), (marker, marker_frames, "marker"), ("<sil>", a, "sil")]
    else:
        rows.append(("<s>", lead, "s"))
    for i, w in enumerate(words):
        if i > 0:
            g = gaps[i - 1]
            if i == marker_at:
                if g < marker_frames + 4:
                    g = marker_frames + int(rng.integers(4, 20))
                a = int(rng.integers(2, g - marker_frames - 1))
                rows += [
                    ("<sil>", a, "sil"),
                    (marker, marker_frames, "marker"),
                    ("<sil>", g - marker_frames - a, "sil"),
                ]
            elif g > 0:
                rows.append(("<sil>", g, "sil"))
        n_syl = len(syllables(w))
        dur = n_syl / rate + 0.06
        rows.append((w, max(10, int(round(100 * dur * float(np.exp(rng.normal(0, 0.12)))))), "word"))
    rows.append(("</s>", int(rng.integers(8, 35)), "s"))
    # frames: SFrm/EFrm (inclusive) per row, contiguous from 0
    out, f = [], 0
    for tok, nf, kind in rows:
        out.append(dict(token=tok, sfrm=f, efrm=f + nf - 1, kind=kind))
        f += nf
    words_rows = [r for r in out if r["kind"] == "word"]
    return dict(
        rows=out,
        n_frames=f,
        marker=marker,
        marker_at=marker_at,
        first_word=words_rows[0],
        last_word=words_rows[-1],
        rate=rate,
    )


def word_time(u_start: float, frame: int) -> float:
    """Dialog time of a frame boundary: exact on the 0.0001 s grid (the .wdseg time convention of
    docs/EXPERIMENTS.md, "The demo")."""
    return round(u_start + frame / FRAME_RATE, 4)


def next_first_word_start(rng, prev: dict, same_speaker: bool, first_dur: float) -> float:
    """Where the next utterance's first word starts, relative to the previous utterance's words.

    Different speakers may overlap, but only by 0.1-0.4 s and by less than both the previous
    speaker's last word and the next speaker's first word.
    """
    prev_last_start, prev_last_end = prev["last_word_start"], prev["last_word_end"]
    r = rng.random()
    if same_speaker:
        gap = rng.uniform(0.3, 1.3) if r < 0.5 else rng.uniform(1.7, 3.0)
    else:
        max_overlap = min(0.4, prev_last_end - prev_last_start - 0.05, first_dur - 0.05)
        if r < 0.2 and max_overlap >= 0.1:
            gap = -rng.uniform(0.1, max_overlap)
        elif r < 0.85:
            gap = rng.uniform(0.15, 1.3)
        else:
            gap = rng.uniform(1.7, 3.0)
    return prev_last_end + gap


# ---------------------------------------------------------------------------------------------
# Audio synthesis
# ---------------------------------------------------------------------------------------------


def formant_sos(vowel: str, scale: float) -> np.ndarray:
    """Three cascaded 2-pole resonators (second-order sections) at the vowel's formants."""
    sos = []
    for f, bw in zip(VOWELS[vowel], FORMANT_BANDWIDTHS):
        r = np.exp(-np.pi * bw / SR)
        theta = 2 * np.pi * min(f * scale, 0.45 * SR) / SR
        sos.append([1.0, 0.0, 0.0, 1.0, -2 * r * np.cos(theta), r * r])
    return np.array(sos)


def pitch_contour(rng, x: np.ndarray, prosody: dict) -> np.ndarray:
    """Relative f0 over a word (x in [0, 1]) for the emotion's contour shape."""
    e, shape = prosody["excursion"], prosody["contour"]
    if shape == "risefall":
        c = 1 + e * np.sin(np.pi * (2 * x + rng.uniform(-0.5, 0.5)))
    elif shape == "fall":
        c = 1 + e * (0.6 - 1.2 * x)
    elif shape == "rise":
        c = 1 + e * (1.5 * x * x - 0.4)
    else:  # decline, flat
        c = 1 + e * (0.5 - x)
    if prosody["tremor"]:
        c = c * (1 + prosody["tremor"] * np.sin(2 * np.pi * 7.0 * x * len(x) / SR))
    return c


def synth_voiced(
    rng, n: int, word: str, voice: dict, prosody: dict, f0_scale: float, energy: float, breath: float = 0.04
) -> np.ndarray:
    """One word (or a laugh): a voiced source (sawtooth glottal pulses on a pitch contour), cascaded formant
    resonators per syllable (vowel table), syllable-rate amplitude modulation, an unvoiced noise burst at the
    onset of most words, and attack/release envelopes."""
    x = np.arange(n) / n
    f0 = voice["f0"] * f0_scale * pitch_contour(rng, x, prosody)
    f0 *= 1 + 0.01 * np.cumsum(rng.normal(0, 1, n)) / np.sqrt(np.arange(1, n + 1))  # slight jitter
    phase = np.cumsum(f0) / SR
    source = 2 * (phase % 1.0) - 1 + breath * rng.normal(0, 1, n)
    source = lfilter([1 - prosody["tilt"]], [1, -prosody["tilt"]], source)
    groups = syllables(word)
    edges = np.round(np.linspace(0, n, len(groups) + 1)).astype(int)
    out = np.zeros(n)
    for g, a, b in zip(groups, edges[:-1], edges[1:]):
        seg = sosfilt(formant_sos(vowel_of(g), voice["formant_scale"]), source[a:b])
        seg /= np.sqrt(np.mean(seg**2)) + 1e-9
        t = np.arange(b - a) / max(b - a, 1)
        out[a:b] = seg * (0.2 + 0.8 * np.sin(np.pi * t) ** 0.7)  # syllable-rate amplitude modulation
    attack = min(n, max(1, int(prosody["attack"] * SR)))
    release = min(n // 2, int(0.025 * SR))
    env = np.ones(n)
    env[:attack] = np.linspace(0, 1, attack)
    env[n - release :] *= np.linspace(1, 0, release)
    out *= env * energy
    if rng.random() < 0.6:  # unvoiced consonant burst at the onset (high-passed noise)
        nb = min(n // 3, int(rng.uniform(0.03, 0.07) * SR))
        burst = np.diff(rng.normal(0, 1, nb + 1)) * 0.35 * energy * np.hanning(nb)
        out[:nb] += burst
    return out


def synth_breath(rng, n: int, energy: float) -> np.ndarray:
    noise = lfilter([0.1], [1, -0.9], rng.normal(0, 1, n))
    return noise * np.hanning(n) * 0.4 * energy


# ---------------------------------------------------------------------------------------------
# One dialog: plan utterances, place them in time, render the audio
# ---------------------------------------------------------------------------------------------


def build_dialog(seed: int, d: dict, actors: dict, n_utts: int, audio_noise: float, text_noise: float):
    """One dialog -> (utterances, int16 stereo samples, seconds): its lines, the utterances placed in
    time with their cues, their ids and transcripts, then the audio. One random generator per dialog,
    drawn from in this order, so a dialog does not depend on the others."""
    rng = np.random.default_rng([seed, d["session"], 0 if d["kind"] == "impro" else 1, d["index"]])
    lines = dialog_lines(seed, rng, d, n_utts, actors)
    xx_at = int(rng.integers(n_utts)) if d["kind"] == "impro" else -1
    if len(actors) != 2:
        xx_at = -1  # a CSV corpus lists every utterance: none goes unevaluated
    utts = place_utterances(rng, d, lines, xx_at, actors, audio_noise, text_noise)
    name_utterances(rng, d, utts)
    pcm, seconds = render_dialog(rng, utts, actors)
    return utts, pcm, seconds


def dialog_lines(seed: int, rng, d: dict, n_utts: int, actors: dict) -> list[dict]:
    """The dialog's lines [{speaker, code, ...}] among the actors: a script's, or an improvisation on a theme."""
    names = tuple(actors)
    if d["kind"] == "script":
        return script_lines(seed, d["lines_key"], n_utts, names)
    theme = IMPRO_THEMES[(d["session"] + d["index"]) % len(IMPRO_THEMES)]
    speaker, lines = names[rng.integers(len(names))], []
    for _ in range(n_utts):
        lines.append(dict(speaker=speaker, code=next_code(rng, theme, lines, speaker)))
        speaker = next_speaker(rng, speaker, names, lines, n_utts - len(lines))
    return lines


def utterance_cues(rng, kind: str, line: dict, actors: dict, audio_noise: float, text_noise: float):
    """One line performed -> (code, audio cue, text cue, words, prosody)."""
    code = line["code"]
    if kind == "script":
        # The script fixes the words; the performed emotion differs from the line's with text_noise.
        # the performance's emotion is the line's valence twin (any other code outside the four)
        if rng.random() < text_noise:
            twin = VALENCE_TWIN.get(CODE_TO_LABEL.get(code))
            code = twin or _pick(rng, {c: p for c, p in BASE_CODES.items() if c != code})
        text_cue, words = line["text_cue"], line["words"]
    else:
        text_cue = text_emotion_of(rng, code)
        if rng.random() < text_noise:
            text_cue = confusable_emotion(rng, code, VALENCE_TWIN)
        words = make_words(rng, text_cue, int(rng.integers(4, 13)))
    audio_cue = code if code != "xxx" else None
    if rng.random() < audio_noise:
        audio_cue = confusable_emotion(rng, code, AROUSAL_TWIN)
    if audio_cue is None:  # xxx: annotators disagreed -> a blend of two emotions
        a, b = rng.choice(["neu", "ang", "hap", "sad", "fru"], size=2, replace=False)
        w = rng.uniform(0.3, 0.7)
        prosody = {
            k: (w * PROSODY[a][k] + (1 - w) * PROSODY[b][k]) if isinstance(PROSODY[a][k], float) else PROSODY[a][k]
            for k in PROSODY[a]
        }
        audio_cue = "xxx"
    else:
        prosody = dict(PROSODY[audio_cue])
    # per-utterance variation so no single cue is a perfect separator
    prosody["pitch"] *= float(np.exp(rng.normal(0, 0.06)))
    prosody["energy"] *= float(np.exp(rng.normal(0, 0.2))) * actors[line["speaker"]]["loudness"]
    return code, audio_cue, text_cue, words, prosody


def place_utterances(
    rng, d: dict, lines: list[dict], xx_at: int, actors: dict, audio_noise: float, text_noise: float
) -> list[dict]:
    """Each line performed and laid out in time after the previous one (utterance xx_at is never evaluated)."""
    utts, prev = [], None
    for i, line in enumerate(lines):
        spk = line["speaker"]
        code, audio_cue, text_cue, words, prosody = utterance_cues(
            rng, d["kind"], line, actors, audio_noise, text_noise
        )
        lay = plan_utterance(rng, words, prosody, audio_cue)
        first_dur = (lay["first_word"]["efrm"] + 1 - lay["first_word"]["sfrm"]) / FRAME_RATE
        if prev is None:
            w0 = rng.uniform(1.0, 2.5)
        else:
            w0 = next_first_word_start(rng, prev, prev["speaker"] == spk, first_dur)
        u_start = round(w0 - lay["first_word"]["sfrm"] / FRAME_RATE, 4)
        u_end = word_time(u_start, lay["n_frames"])
        utt = dict(
            index=i,
            speaker=spk,
            code=None if i == xx_at else code,
            evaluated=i != xx_at,
            audio_cue=audio_cue,
            text_cue=text_cue,
            words=words,
            prosody=prosody,
            layout=lay,
            start=u_start,
            end=u_end,
            last_word_start=word_time(u_start, lay["last_word"]["sfrm"]),
            last_word_end=word_time(u_start, lay["last_word"]["efrm"] + 1),
        )
        utts.append(utt)
        prev = utt
    return utts


def name_utterances(rng, d: dict, utts: list[dict]):
    """Ids per speaker in time order (F000, F001, ...; M000, ...; XX ids counted apart), transcript
    text and the words spelled as variants (WHAT(2)) in the .wdseg, in place."""
    counters = Counter()
    for u in utts:
        key = (u["speaker"], u["evaluated"])
        sep = "" if u["speaker"] in ("F", "M") else "_"  # Ses01F_impro01_F000; Ses01F_impro01_Ana1_000
        u["id"] = (
            f"{d['name']}_{u['speaker']}{sep}{counters[key]:03d}"
            if u["evaluated"]
            else f"{d['name']}_{u['speaker']}XX{counters[key]}"
        )
        counters[key] += 1
        items, wi = [], 0
        for r in u["layout"]["rows"]:
            if r["kind"] == "word":
                items.append(("word", u["words"][wi]))
                wi += 1
            elif r["kind"] == "marker":
                items.append(("marker", r["token"]))
        u["text"] = transcript_text(items, u["code"])
        u["variants"] = {j: 2 for j, w in enumerate(u["words"]) if w in VARIANT_WORDS and rng.random() < 0.3}


def render_dialog(rng, utts: list[dict], actors: dict) -> tuple[np.ndarray, float]:
    """The utterances' words, laughter and breaths on each actor's track -> (int16 stereo samples, seconds);
    each channel is one actor's track plus 0.3 of the other's, with faint background noise. More than two
    actors: one mono channel, the tracks' sum."""
    duration = max(u["end"] for u in utts) + rng.uniform(1.0, 2.0)
    n_samples = int(np.ceil(duration * SR))
    tracks = {name: np.zeros(n_samples) for name in actors}
    for u in utts:
        voice, pro = actors[u["speaker"]], u["prosody"]
        n_rows = len(u["layout"]["rows"])
        for k, r in enumerate(u["layout"]["rows"]):
            if r["kind"] not in ("word", "marker"):
                continue
            a = int(round(word_time(u["start"], r["sfrm"]) * SR))
            b = int(round(word_time(u["start"], r["efrm"] + 1) * SR))
            pos = k / n_rows  # phrase declination over the utterance
            if r["kind"] == "word":
                sig = synth_voiced(rng, b - a, r["token"], voice, pro, pro["pitch"] * (1 - 0.08 * pos), pro["energy"])
            elif r["token"] == "LAUGHTER":
                sig = synth_voiced(rng, b - a, "ha ha ha", voice, PROSODY["hap"], 1.4, 0.6 * pro["energy"], breath=0.6)
            else:
                sig = synth_breath(rng, b - a, pro["energy"])
            tracks[u["speaker"]][a:b] += sig
    if len(tracks) != 2:  # more than two speakers: one far-field mono mix, as loud as the stereo's mean
        mono = 0.65 * sum(tracks.values()) + rng.normal(0, 0.0015, n_samples)
        return np.clip(np.round(mono * 32767), -32768, 32767).astype(np.int16), round(n_samples / SR, 6)
    noise = rng.normal(0, 0.0015, (2, n_samples))
    stereo = np.stack([tracks["F"] + 0.3 * tracks["M"], tracks["M"] + 0.3 * tracks["F"]], axis=1) + noise.T
    pcm = np.clip(np.round(stereo * 32767), -32768, 32767).astype(np.int16)
    return pcm, round(n_samples / SR, 6)


# ---------------------------------------------------------------------------------------------
# Writers: the IEMOCAP text formats
# ---------------------------------------------------------------------------------------------


def format_emo_evaluation(rng, utts: list[dict]) -> str:
    lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
    for u in utts:
        if not u["evaluated"]:
            continue
        code = u["code"]
        names = list(CATEGORY_NAMES.values())
        if code == "xxx":  # no majority: three different categories
            picks = [names[j] for j in rng.choice(len(names), 3, replace=False)]
        else:
            own = CATEGORY_NAMES[code]
            picks = [own, own, own if rng.random() < 0.5 else names[rng.integers(len(names))]]
        evaluators = sorted(rng.choice(["E1", "E2", "E3", "E4"], 3, replace=False))
        vad = [[int(np.clip(round(m + rng.normal(0, 0.6)), 1, 5)) for m in VAD_MEANS[code]] for _ in range(2)]
        mean = np.mean(vad, axis=0)
        lines.append(
            f"[{u['start']:.4f} - {u['end']:.4f}]\t{u['id']}\t{code}\t[{mean[0]:.4f}, {mean[1]:.4f}, {mean[2]:.4f}]"
        )
        for ev, cat in zip(evaluators, picks):
            extra = f" {names[rng.integers(len(names))]};" if rng.random() < 0.2 else ""
            lines.append(f"C-{ev}:\t{cat};{extra}\t()")
        lines.append(f"C-{u['speaker']}1:\t{picks[rng.integers(3)]};\t()")  # the actor's self-evaluation
        for ev, (v, a, dm) in zip(sorted(rng.choice(["E1", "E2", "E3", "E4"], 2, replace=False)), vad):
            lines.append(f"A-{ev}:\tval {v}; act {a}; dom  {dm};\t()")
        self_vad = [int(np.clip(round(m + rng.normal(0, 0.6)), 1, 5)) for m in VAD_MEANS[code]]
        lines.append(f"A-{u['speaker']}1:\tval {self_vad[0]}; act {self_vad[1]}; dom  {self_vad[2]};\t()")
        lines.append("")
    return "\n".join(lines) + "\n"


def format_transcription(rng, utts: list[dict], kind: str) -> str:
    lines = [f"{u['id']} [{u['start']:08.4f}-{u['end']:08.4f}]: {u['text']}" for u in utts]
    if kind == "script":  # a line that does not start with "Ses": no id, no times, no label
        lines.insert(int(rng.integers(1, len(lines) + 1)), f"{'FM'[rng.integers(2)]}: [BREATHING]")
    return "\n".join(lines) + "\n"


def format_wdseg(rng, u: dict) -> str:
    out = [f"{'SFrm':>6}{'EFrm':>6}{'SegAScr':>11} Word"]
    total, wi = 0, 0
    for r in u["layout"]["rows"]:
        nf = r["efrm"] - r["sfrm"] + 1
        score = -int(nf * rng.integers(4000, 20000))
        total += score
        if r["kind"] == "word":
            tok = r["token"].upper() + (f"({u['variants'][wi]})" if wi in u["variants"] else "")
            wi += 1
        elif r["kind"] == "marker":
            tok = f"++{r['token']}++"
        else:
            tok = r["token"]
        out.append(f"{r['sfrm']:6d}{r['efrm']:6d}{score:11d} {tok}")
    out.append(f" Total score: {total:11d}")
    return "\n".join(out) + "\n"


def wav_bytes(pcm: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, pcm, SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def ground_truth_turns(words: list[dict], max_pause: float = MAX_PAUSE) -> list[dict]:
    """Maximal runs of one speaker's words in time order with no pause > max_pause (Sec. III-A)."""
    turns = []
    for w in words:
        t = turns[-1] if turns else None
        if t is None or t["speaker"] != w["speaker"] or w["start"] - t["end"] > max_pause:
            turns.append(dict(speaker=w["speaker"], start=w["start"], end=w["end"], utterances=[], n_words=0))
            t = turns[-1]
        t["end"] = max(t["end"], w["end"])
        t["n_words"] += 1
        if w["utterance"] not in t["utterances"]:
            t["utterances"].append(w["utterance"])
    return turns


# ---------------------------------------------------------------------------------------------
# The generator
# ---------------------------------------------------------------------------------------------


def _prepare_out(out: Path) -> None:
    """Create out, or clean a previous demo corpus there; never touch anything else."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER_FILE).is_file():
            raise PipelineError(
                f"{out}: exists, is not empty and is not a demo corpus (no {MARKER_FILE}); refusing to write into it"
            )
        for p in out.iterdir():
            if p.is_dir() and p.name.startswith("Session") and p.name[7:].isdigit():
                shutil.rmtree(p)
        (out / "demo_ground_truth.json").unlink(missing_ok=True)
        (out / CSV_FILE).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / MARKER_FILE, "synthetic IEMOCAP-layout corpus written by demo/make_corpus.py\n")


def _check_generate_args(
    sessions, impro_per_session, script_per_session, utterances_per_dialog, audio_noise, text_noise
) -> list[int]:
    """generate's arguments checked -> the session numbers, sorted."""
    sessions = list(range(1, sessions + 1)) if isinstance(sessions, int) else sorted({int(s) for s in sessions})
    if not sessions or min(sessions) < 1 or max(sessions) > 99:
        raise PipelineError(f"sessions must be N >= 1 or a list of session numbers 1-99, got {sessions}")
    if impro_per_session < 0 or script_per_session < 0 or impro_per_session + script_per_session == 0:
        raise PipelineError("need at least one dialog per session (impro_per_session + script_per_session >= 1)")
    if utterances_per_dialog < 2:
        raise PipelineError(f"utterances_per_dialog must be >= 2, got {utterances_per_dialog}")
    if not (0 <= audio_noise <= 1 and 0 <= text_noise <= 1):
        raise PipelineError(f"audio_noise and text_noise are probabilities, got {audio_noise}, {text_noise}")
    return sessions


def _utterance_words(u: dict) -> list[dict]:
    """The ground-truth words of one utterance, with their times in the dialog (from its wdseg rows)."""
    words, wi = [], 0
    for r in u["layout"]["rows"]:
        if r["kind"] == "word":
            words.append(
                dict(
                    word=u["words"][wi],
                    start=word_time(u["start"], r["sfrm"]),
                    end=word_time(u["start"], r["efrm"] + 1),
                    speaker=u["speaker"],
                    utterance=u["id"],
                )
            )
            wi += 1
    return words


def _dialog_truth(d: dict, duration: float, utts: list[dict], words: list[dict]) -> dict:
    """One dialog's entry in demo_ground_truth.json."""
    return dict(
        session=d["session"],
        kind=d["kind"],
        scenario=d["scenario"],
        script=d["script"],
        duration=duration,
        utterances=[
            dict(
                id=u["id"],
                start=u["start"],
                end=u["end"],
                speaker=u["speaker"],
                code=u["code"],
                label=CODE_TO_LABEL.get(u["code"]),
                text=u["text"],
                evaluated=u["evaluated"],
                audio_cue=u["audio_cue"],
                text_cue=u["text_cue"],
            )
            for u in utts
        ],
        words=words,
        turns=ground_truth_turns(words),
    )


def _write_party_dialog(out: Path, seed: int, d: dict, actors: dict, n_utts, audio_noise, text_noise):
    """A dialog of more than two speakers in a CSV corpus: its mono wav and wdsegs -> (ground truth, files
    written, its rows of corpus.csv)."""
    utts, pcm, duration = build_dialog(seed, d, actors, n_utts, audio_noise, text_noise)
    rng = np.random.default_rng([seed, d["session"], 2 if d["kind"] == "impro" else 3, d["index"]])
    ses, name = f"Session{d['session']}", d["name"]
    wav = f"{ses}/dialog/wav/{name}.wav"
    atomic_write_bytes(out / wav, wav_bytes(pcm))
    words, rows = [], []
    for u in utts:
        wdseg = f"{ses}/sentences/ForcedAlignment/{name}/{u['id']}.wdseg"
        atomic_write_text(out / wdseg, format_wdseg(rng, u))
        words += _utterance_words(u)
        row = dict(audio=wav, id=u["id"], start=u["start"], end=u["end"], speaker=u["speaker"], emotion=u["code"])
        rows.append(dict(row, text=u["text"], session=d["session"], dialog=name, wdseg=wdseg))
    words.sort(key=lambda w: w["start"])
    return _dialog_truth(d, duration, utts, words), 1 + len(utts), rows


def _write_dialog(
    out: Path, seed: int, d: dict, utterances_per_dialog, audio_noise, text_noise, speakers: int = 2
) -> tuple[dict, int, list]:
    """Synthesize one planned dialog and write its files (dialog wav, EmoEvaluation, transcription,
    sentence wavs, wdsegs) -> (its ground truth, the number of files written, its corpus.csv rows: none).
    More than two speakers: _write_party_dialog."""
    actors = make_actors(seed, d["session"], speakers)
    if speakers != 2:
        return _write_party_dialog(out, seed, d, actors, utterances_per_dialog, audio_noise, text_noise)
    utts, pcm, duration = build_dialog(seed, d, actors, utterances_per_dialog, audio_noise, text_noise)
    rng = np.random.default_rng([seed, d["session"], 2 if d["kind"] == "impro" else 3, d["index"]])
    ses = out / f"Session{d['session']}"
    name = d["name"]
    atomic_write_bytes(ses / "dialog" / "wav" / f"{name}.wav", wav_bytes(pcm))
    atomic_write_text(ses / "dialog" / "EmoEvaluation" / f"{name}.txt", format_emo_evaluation(rng, utts))
    atomic_write_text(ses / "dialog" / "transcriptions" / f"{name}.txt", format_transcription(rng, utts, d["kind"]))
    words, n_files = [], 3
    for u in utts:
        channel = 0 if u["speaker"] == "F" else 1  # the sentence wav is the actor's own microphone
        a, b = int(round(u["start"] * SR)), int(round(u["end"] * SR))
        atomic_write_bytes(ses / "sentences" / "wav" / name / f"{u['id']}.wav", wav_bytes(pcm[a:b, channel]))
        atomic_write_text(ses / "sentences" / "ForcedAlignment" / name / f"{u['id']}.wdseg", format_wdseg(rng, u))
        n_files += 2
        words += _utterance_words(u)
    words.sort(key=lambda w: w["start"])
    return _dialog_truth(d, duration, utts, words), n_files, []


def generate(
    out,
    seed=0,
    sessions=5,
    impro_per_session=3,
    script_per_session=3,
    utterances_per_dialog=14,
    audio_noise=0.3,
    text_noise=0.3,
    speakers=2,
) -> dict:
    """Write the demo corpus under `out` and return its ground truth (also in demo_ground_truth.json).

    speakers: 2 (default), IEMOCAP's layout, read by step 1; more (up to len(PARTY_NAMES)), a CSV corpus of
    multi-party dialogs: the dialog wavs (mono), wdsegs and corpus.csv, read by corpus_from_csv.py."""
    sessions = _check_generate_args(
        sessions, impro_per_session, script_per_session, utterances_per_dialog, audio_noise, text_noise
    )
    if not 2 <= speakers <= min(len(PARTY_NAMES), utterances_per_dialog):
        raise PipelineError(
            f"speakers must be 2-{len(PARTY_NAMES)} and at most utterances_per_dialog ({utterances_per_dialog}), "
            f"got {speakers}"
        )
    out = Path(out)
    t0 = time.time()
    _prepare_out(out)
    args = dict(
        sessions=sessions,
        impro_per_session=impro_per_session,
        script_per_session=script_per_session,
        utterances_per_dialog=utterances_per_dialog,
        audio_noise=audio_noise,
        text_noise=text_noise,
        **({"speakers": speakers} if speakers != 2 else {}),
    )
    truth = {"seed": seed, "args": args, "dialogs": {}}
    n_files, rows = 0, []
    plan = plan_dialogs(sessions, impro_per_session, script_per_session)
    for d in tqdm(plan, desc="demo dialogs", unit="dialog"):
        truth["dialogs"][d["name"]], n, dialog_rows = _write_dialog(
            out, seed, d, utterances_per_dialog, audio_noise, text_noise, speakers
        )
        n_files, rows = n_files + n, rows + dialog_rows
    if rows:
        atomic_write_text(out / CSV_FILE, _csv_text(rows))
        n_files += 1
    atomic_write_json(out / "demo_ground_truth.json", truth)
    print_summary(truth, out, n_files + 1, time.time() - t0)
    return truth


def _csv_text(rows: list[dict]) -> str:
    """corpus.csv's text: a header and one row per utterance (columns: docs/FORMATS.md)."""
    import csv

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def print_summary(truth: dict, out: Path, n_files: int, seconds: float) -> None:
    dialogs = truth["dialogs"]
    utts = [u for d in dialogs.values() for u in d["utterances"]]
    evaluated = [u for u in utts if u["evaluated"]]
    codes = Counter(u["code"] for u in evaluated)
    labels = Counter(u["label"] for u in evaluated if u["label"])
    duration = sum(d["duration"] for d in dialogs.values())
    kinds = Counter(d["kind"] for d in dialogs.values())
    print(
        f"wrote {out}: {len(dialogs)} dialogs ({kinds['impro']} improvised, {kinds['script']} scripted) in "
        f"{len(truth['args']['sessions'])} sessions, {n_files} files, {duration / 60:.1f} min of audio, {seconds:.1f} s"
    )
    print(
        f"  utterances: {len(utts)} transcribed, {len(evaluated)} evaluated, "
        f"{len(utts) - len(evaluated)} XX (not evaluated)"
    )
    print("  per code:  " + ", ".join(f"{c} {n}" for c, n in codes.most_common()))
    n_target = sum(labels.values())
    print(
        "  4-class:   "
        + ", ".join(f"{lab} {labels[lab]}" for lab in LABELS)
        + f" ({n_target} labelled, {len(evaluated) - n_target} non-target codes = "
        f"{(len(evaluated) - n_target) / max(len(evaluated), 1):.0%})"
    )
    n_words = sum(len(d["words"]) for d in dialogs.values())
    n_turns = sum(len(d["turns"]) for d in dialogs.values())
    print(
        f"  words: {n_words}, ground-truth turns (max pause {MAX_PAUSE} s): {n_turns}; "
        f"ground truth in {out / 'demo_ground_truth.json'}"
    )


def _sessions_arg(text: str):
    """'5' -> 5 (Session1..5); '1,5' -> [1, 5]."""
    try:
        return int(text) if "," not in text else [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected N or a comma-separated list of session numbers, got {text!r}"
        ) from None


def main(argv=None):
    p = argparse.ArgumentParser(description="Write a synthetic corpus in IEMOCAP_full_release's layout (demo data).")
    p.add_argument("--out", default="demo_data/IEMOCAP_full_release", help="corpus folder to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sessions", type=_sessions_arg, default=5, help="N (Session1..N) or a list like 1,5")
    p.add_argument("--impro-per-session", type=int, default=3)
    p.add_argument("--script-per-session", type=int, default=3)
    p.add_argument("--utterances-per-dialog", type=int, default=14, help="transcribed utterances per dialog")
    p.add_argument(
        "--audio-noise", type=float, default=0.3, help="P(an utterance's audio cues come from its arousal twin)"
    )
    p.add_argument(
        "--text-noise", type=float, default=0.3, help="P(an utterance's text cues come from its valence twin)"
    )
    p.add_argument(
        "--speakers",
        type=int,
        default=2,
        help="speakers per dialog: 2 writes IEMOCAP's layout (step 1 reads it); 3 or more a CSV corpus of "
        f"multi-party dialogs (OUT/{CSV_FILE}, for corpus_from_csv.py), at most {len(PARTY_NAMES)}",
    )
    a = p.parse_args(argv)
    generate(
        a.out,
        seed=a.seed,
        sessions=a.sessions,
        impro_per_session=a.impro_per_session,
        script_per_session=a.script_per_session,
        utterances_per_dialog=a.utterances_per_dialog,
        audio_noise=a.audio_noise,
        text_noise=a.text_noise,
        speakers=a.speakers,
    )


if __name__ == "__main__":
    main()
