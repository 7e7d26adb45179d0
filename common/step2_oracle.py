"""Step 2's reference and its oracle backend (--backend oracle): perfect ASR, VAD and diarization.

The reference of a dialog is every spoken utterance (dialog_utterances: labels.json's and the unevaluated XX
ones), its words from the ForcedAlignment .wdseg files or, without one, the transcript spread over the utterance
(reference_words), its turns the utterances (reference_turns). The oracle backend returns exactly this
(oracle_backend); every backend's result is measured against it (preprocess.measure).

Also here, the shape of a step-2 result every backend shares: WhisperX's ASR segments (segment_of, asr_result)
and turns under anonymous labels (anonymise), with their exclusive version (exclusive_turns). The files and
what the readers check: docs/FORMATS.md; the pipelines: docs/EXPERIMENTS.md.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import numpy as np

from common import formats
from common.formats import TRANSCRIPT_RE, parse_wdseg, read_text_lines

VARIANT_RE = re.compile(r"\(\d+\)$")  # WHAT(2) -> WHAT
MARKER_RE = re.compile(r"\[[^\]]*\]")  # [LAUGHTER], [BREATHING] in transcripts
NON_WORD_RE = re.compile(r"[^\w']+")  # punctuation, for comparing words


def is_special_token(token: str) -> bool:
    """Sphinx's sentence/silence tokens <s> </s> <sil> and noise tokens ++LAUGHTER++ carry no word."""
    return (token.startswith("<") and token.endswith(">")) or (token.startswith("++") and token.endswith("++"))


def normalise_token(token: str) -> str:
    """A .wdseg token -> the word: pronunciation variants such as WHAT(2) -> "what", lower case."""
    return VARIANT_RE.sub("", token).lower()


def normalise_for_wer(word: str) -> str:
    """A word in lower case without punctuation. Combining marks are part of the word (NFD accents, Indic vowel
    signs: \\w alone would drop them, "cafe\\u0301" -> "cafe", "हिन्दी" -> "हनद")."""
    word = word.lower()
    if word.isascii():
        return NON_WORD_RE.sub("", word)
    return "".join(c for c in word if c in "'_" or c.isalnum() or unicodedata.category(c).startswith("M"))


def transcript_words(text: str) -> list[str]:
    """Transcript line -> lower-case words without inline markers and punctuation."""
    words = (normalise_for_wer(w) for w in MARKER_RE.sub(" ", text).split())
    return [w for w in words if w]


SPEAKER_RE = re.compile(r"_([FM])(?:\d+|XX\d*)$")  # Ses01F_impro01_M000 and Ses03F_impro06_FXX0


def dialog_utterances(corpus: Path, dialog: str, entry: dict) -> tuple[list[dict], dict]:
    """All spoken reference utterances of a dialog, in time order -> (utterances, counts).

    labels.json lists the utterances that have an EmoEvaluation entry. The transcription file also
    holds utterances that were spoken but never evaluated (XX ids such as Ses03F_impro06_FXX0): they
    are speech all the same, so a perfect VAD, ASR and diarization would find them. They are added
    from the transcription lines (times, text) with their .wdseg file when the corpus has one.
    Transcription lines that are not utterances (not starting with "Ses") are ignored; an extra
    utterance line that does not parse is counted and skipped (step 1 does not validate them either).
    """
    utterances = [dict(u) for u in entry["utterances"]]
    known = {u["id"] for u in utterances}
    session_dir = Path(entry["wav"]).parts[0]
    transcript = corpus / session_dir / "dialog" / "transcriptions" / f"{dialog}.txt"
    counts = {"unevaluated_utterances": 0, "unparsed_transcript_lines": 0}
    if transcript.is_file():
        for line in read_text_lines(transcript):
            if not line.startswith("Ses") or line.split()[0].rstrip(":") in known:
                continue
            m, speaker = TRANSCRIPT_RE.match(line.rstrip()), SPEAKER_RE.search(line.split()[0].rstrip(":"))
            if (
                m is None
                or speaker is None
                or not np.isfinite(float(m.group(3)))
                or float(m.group(3)) <= float(m.group(2))
            ):
                counts["unparsed_transcript_lines"] += 1
                continue
            utt_id = m.group(1)
            wdseg = f"{session_dir}/sentences/ForcedAlignment/{dialog}/{utt_id}.wdseg"
            utterances.append(
                {
                    "id": utt_id,
                    "start": float(m.group(2)),
                    "end": float(m.group(3)),
                    "speaker": speaker.group(1),
                    "text": m.group(4).strip(),
                    "wdseg": wdseg if (corpus / wdseg).is_file() else None,
                }
            )
            known.add(utt_id)
            counts["unevaluated_utterances"] += 1
    utterances.sort(key=lambda u: (u["start"], u["id"]))
    return utterances, counts


def reference_words(
    corpus: Path, utterances: list[dict], duration: float | None = None, counts: dict | None = None
) -> tuple[list[dict], int]:
    """Every utterance's words in dialog time -> ([{word, start, end, speaker, utterance}], utterances without .wdseg).

    A word spans frames SFrm..EFrm of 10 ms from the utterance start, so it starts at
    utt_start + SFrm/100 and ends at utt_start + (EFrm+1)/100. An utterance without a .wdseg file
    gets its transcript words spread uniformly over [start, end]. duration (seconds of the dialog
    audio): a word ending later than duration + common.formats.TIME_TOLERANCE_S is an error naming the .wdseg
    file. A token that normalises to nothing (e.g. "(2)") is dropped and counted in
    counts["empty_wdseg_tokens"]: an empty word would vanish in step 3 and break words in = words out.
    """
    words, no_wdseg = [], 0
    for utt in utterances:
        base = {"speaker": utt["speaker"], "utterance": utt["id"]}
        if utt.get("wdseg"):
            path = corpus / utt["wdseg"]
            for row, (start_frame, end_frame, _, token) in enumerate(parse_wdseg(path, utt["end"] - utt["start"]), 1):
                end = utt["start"] + (end_frame + 1) / 100
                formats.check_in_audio(
                    end,
                    duration,
                    f"{path}: word row {row}",
                    f"{token!r:.40} (frames {start_frame}-{end_frame} from the utterance start {utt['start']:.3f} s)",
                )
                if is_special_token(token):
                    continue
                if not normalise_token(token):
                    if counts is not None:
                        counts["empty_wdseg_tokens"] = counts.get("empty_wdseg_tokens", 0) + 1
                    continue
                words.append(
                    {
                        "word": normalise_token(token),
                        "start": round(utt["start"] + start_frame / 100, 6),
                        "end": round(end, 6),
                        **base,
                    }
                )
        else:
            no_wdseg += 1
            tokens = transcript_words(utt.get("text") or "")
            step = (utt["end"] - utt["start"]) / max(len(tokens), 1)
            for i, token in enumerate(tokens):
                words.append(
                    {
                        "word": token,
                        "start": round(utt["start"] + i * step, 6),
                        "end": round(utt["start"] + (i + 1) * step, 6),
                        **base,
                    }
                )
    return words, no_wdseg


def reference_turns(utterances: list[dict]) -> list[tuple[float, float, str]]:
    """The reference turns: one per utterance of positive length, under its speaker name (F/M on IEMOCAP)."""
    return [(u["start"], u["end"], u["speaker"]) for u in utterances if u["end"] > u["start"]]


def anonymise(turns, names: dict | None = None) -> list[tuple[float, float, str]]:
    """Relabel speakers SPEAKER_00, SPEAKER_01, ... in order of first speech (labels carry no identity).

    `names` (filled in place) maps original labels to anonymous ones: pass the dict used for the
    overlapping turns when relabelling the exclusive turns of the same dialog, so both agree.
    """
    names = {} if names is None else names
    for _, _, spk in sorted(turns):
        names.setdefault(spk, f"SPEAKER_{len(names):02d}")
    return sorted((s, e, names[spk]) for s, e, spk in turns)


def exclusive_turns(turns) -> list[tuple[float, float, str]]:
    """Turns that may overlap -> turns that do not (one speaker at any instant), for the backends
    whose diarization has no exclusive version of its own (oracle, simulated).

    pyannote 4 makes its exclusive diarization by keeping, in each frame, the most active speaker.
    Without activations the rule here is: every instant covered by several turns goes to the turn
    that started last (the newest speaker holds the floor; ties: the shorter turn, then the label),
    and the turn it interrupted resumes after it if it lasts longer. Pieces of one turn that touch
    are joined. Speech time is kept (the union of the turns does not change) and turns that do not
    overlap come out unchanged.
    """
    turns = sorted(turns)
    bounds = sorted({t for s, e, _ in turns for t in (s, e)})
    pieces = []  # [start, end, turn index]
    for a, b in zip(bounds, bounds[1:]):
        active = [i for i, (s, e, _) in enumerate(turns) if s <= a and e >= b]
        if not active:
            continue
        i = min(active, key=lambda j: (-turns[j][0], turns[j][1] - turns[j][0], turns[j][2]))
        if pieces and pieces[-1][2] == i and pieces[-1][1] == a:
            pieces[-1][1] = b
        else:
            pieces.append([a, b, i])
    return [(s, e, turns[i][2]) for s, e, i in pieces]


def asr_result(dialog: str, backend: str, segments: list[dict]) -> dict:
    return {"segments": segments, "language": "en", "backend": backend, "dialog": dialog}


def segment_of(words: list[dict], start=None, end=None) -> dict:
    """An ASR segment in WhisperX's shape from words (bounds default to the timed words' extent)."""
    timed = [w for w in words if "start" in w]
    out_words = [{k: w[k] for k in ("word", "start", "end", "score") if k in w} for w in words]
    return {
        "start": start if start is not None else timed[0]["start"],
        "end": end if end is not None else max(w["end"] for w in timed),
        "text": " ".join(w["word"] for w in words),
        "words": out_words,
    }


def oracle_backend(dialog, utterances, ref_words):
    """Perfect ASR, VAD and diarization: one segment per reference utterance, the reference turns.

    The turns come under anonymous labels (anonymise), as a real diarization's do, so the speaker mapping of
    later steps is exercised.
    """
    by_utt = {}
    for w in ref_words:
        by_utt.setdefault(w["utterance"], []).append(w)
    segments = [segment_of(by_utt[u["id"]], u["start"], u["end"]) for u in utterances if u["id"] in by_utt]
    stats = {"utterances_without_words": len(utterances) - len(by_utt)}
    return asr_result(dialog, "oracle", segments), anonymise(reference_turns(utterances)), stats
