"""Step 3: align ASR words with speaker turns and build the labelled segments the classifier sees.

The paper's contribution (Section III-A, Fig. 2 and Fig. 3), read top to bottom: each word of step 2's
asr/<dialog>.json gets the diarization speaker (RTTM) whose turns overlap it most; the words of all ASR
segments form one time-ordered stream, grouped while the speaker stays the same and the pause is at most
--max-pause; one segment per group. The without-alignment baseline (Section IV-B) keeps WhisperX's own
segments, each given its most-overlapping speaker. Every segment gets the reference utterances of
labels.json it overlaps and a 4-class label.

Writes, per variant, WORK/<pipe>/<variant>/segments/<dialog>.json and .txt, cache/<dialog>.pt (audio slices
for step 4) and manifest.json, then WORK/<pipe>/alignment_report.{json,md} comparing the variants. Variant
names, the files and the checks on bad input: docs/FORMATS.md. Where this follows the paper rather than the
authors' code (1.5 s pause, no word lost, ties, channel, long words, labels, loudness), each with the flag
for theirs: docs/DEPARTURES.md. A dialog with bad input fails alone; the run then exits with status 1.

    python align.py --work preprocessed_iemocap --pipe whisperx                 # both variants
    python align.py --work W --pipe simulated --variant aligned --max-pause 1.0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common import cli, defaults, fileio, formats, intervals, rundirs
from common.cli import PipelineError
from common.formats import LABELS

# Overlaps shorter than this (seconds) count as no overlap: they are floating-point noise of the
# interval arithmetic below, far below anything audible (one sample at 16 kHz is 62.5 us).
EPS = 1e-7


# ---------------------------------------------------------------------------------------------
# 1. Reading step 2's output
# ---------------------------------------------------------------------------------------------

# A word longer than this (seconds) is clamped to it when the pause after it is measured
# (--max-word-seconds; 0 = never, as the paper and the authors): WhisperX's alignment sometimes
# stretches a word over many seconds of silence (22 s seen in public outputs), which would hide
# the pauses the grouping relies on. The segment keeps the word's real times.
MAX_WORD_SECONDS = 3.0
# A dialog where more than this share of the words got the nearest turn's speaker (no diarization
# turn overlaps them) is reported as a warning: the RTTM hardly covers the speech (another
# recording's RTTM, a failed diarization).
NEAREST_WARN_SHARE = 0.5


def _time(value, where):
    """A timestamp from WhisperX JSON -> float, or None when absent (missing, null, or NaN: WhisperX
    leaves words it could not align untimed, and NaN from its pandas tables means the same). Any
    other value that is not a finite number (infinity, a string, a bool) is an error."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if not formats.is_finite_number(value):
        raise PipelineError(f"{where}: expected a finite number of seconds (or null), got {value!r:.40}")
    return float(value)


def _in_audio(t, duration, where, counts, what):
    """A time (`what`: "start" or "end") checked against the audio: negative or beyond duration +
    TIME_TOLERANCE_S is an error; within the tolerance past the end it is clamped to the end
    (counted in counts["times_clamped"])."""
    if t is None:
        return None
    if t < 0:
        raise PipelineError(f"{where}: negative {what} {t}; expected seconds from the start of the dialog wav")
    if duration is None or t <= duration:
        return t
    if t > duration + formats.TIME_TOLERANCE_S:
        at = f"{t:.3f}" if t < 1e9 else f"{t:.4g}"
        raise PipelineError(
            f"{where}: {what} {at} s is after the end of the audio ({duration:.3f} s; tolerance "
            f"{formats.TIME_TOLERANCE_S:g} s): times must lie inside the dialog wav"
        )
    counts["times_clamped"] = counts.get("times_clamped", 0) + 1
    return duration


def read_asr(path, duration: float | None = None, counts: dict | None = None) -> list[dict]:
    """Read asr/<dialog>.json (WhisperX's result shape) -> its segments, validated.

    Returns [{"start", "end", "text", "words": [{"word", "start", "end"}]}] in file order, where a
    word's start/end are None when WhisperX left it untimed. A segment whose "words" list is missing
    or empty but whose text is not gets its words from the text (all untimed), so no text is lost.
    Every time is a finite number >= 0 (or absent), start <= end; with the dialog's duration (s),
    every time lies inside the audio (common.formats.TIME_TOLERANCE_S past the end is clamped to the end and
    counted in counts["times_clamped"]). Whitespace-only words carry nothing: dropped and counted in
    counts["blank_words"].
    """
    path = Path(path)
    counts = {} if counts is None else counts
    counts.setdefault("times_clamped", 0)
    counts.setdefault("blank_words", 0)
    data = fileio.read_json(path, "ASR result (step 2)")
    if not isinstance(data, dict) or not isinstance(data.get("segments"), list):
        raise PipelineError(f"{path}: expected a WhisperX result {{'segments': [...]}}, got {type(data).__name__}")
    segments = []
    for i, seg in enumerate(data["segments"]):
        if not isinstance(seg, dict):
            raise PipelineError(f"{path}: segment {i}: expected an object, got {seg!r:.80}")
        where = f"{path}: segment {i}"
        start = _in_audio(_time(seg.get("start"), where), duration, where, counts, "start")
        end = _in_audio(_time(seg.get("end"), where), duration, where, counts, "end")
        if start is not None and end is not None and end < start:
            raise PipelineError(f"{path}: segment {i}: end {end} before start {start}")
        text = seg.get("text") or ""
        if not isinstance(text, str):
            raise PipelineError(f"{path}: segment {i}: 'text' must be a string, got {text!r:.80}")
        raw_words = seg.get("words") or []
        if not isinstance(raw_words, list):
            raise PipelineError(f"{path}: segment {i}: 'words' must be a list, got {type(raw_words).__name__}")
        words = []
        for j, w in enumerate(raw_words):
            if not isinstance(w, dict) or not isinstance(w.get("word"), str):
                raise PipelineError(
                    f"{path}: segment {i} word {j}: expected {{'word': str, 'start', 'end'}}, got {w!r:.80}"
                )
            at = f"{path}: segment {i} word {j} {w['word']!r:.40}"
            ws, we = _time(w.get("start"), at), _time(w.get("end"), at)
            if ws is None or we is None:
                ws = we = None  # half-timed words are re-timed like untimed ones
            elif we < ws or ws < 0:
                raise PipelineError(f"{at}: bad times start={ws} end={we}")
            words.append(
                {
                    "word": w["word"].strip(),
                    "start": _in_audio(ws, duration, at, counts, "start"),
                    "end": _in_audio(we, duration, at, counts, "end"),
                }
            )
        counts["blank_words"] += sum(1 for w in words if not w["word"])
        words = [w for w in words if w["word"]]  # whitespace-only "words" carry nothing
        if not words and text.strip():
            words = [{"word": t, "start": None, "end": None} for t in text.split()]
        text = text.strip() or " ".join(w["word"] for w in words)
        segments.append({"start": start, "end": end, "text": text, "words": words})
    return segments


# ---------------------------------------------------------------------------------------------
# 2. Word-to-speaker attribution
# ---------------------------------------------------------------------------------------------


def attribute_speakers(start, end, turns, prefer=None, ties="earliest-turn"):
    """Give each interval [start[i], end[i]] the diarization speaker that overlaps it most.

    Used for words (the alignment) and for whole ASR segments (the baseline). turns: the RTTM,
    [(start, end, speaker)]. Returns (speakers, nearest): speakers[i] is a label, nearest[i] is
    True when interval i overlaps no turn and got the speaker of the nearest turn instead (smallest
    gap between the intervals; a tie goes to the earlier turn).

    How it runs in O((words + turns) log turns): a speaker's turns are merged into disjoint
    intervals and C(t) = "seconds of this speaker's speech before time t" is tabulated, so the
    overlap of [s, e] with the speaker is C(e) - C(s), found by binary search. The largest overlap
    wins; overlaps within 0.1 us (EPS) of the largest count as tied. A tie (overlapping speech
    covering the whole word) goes to prefer[i] if that speaker is among the tied ones
    (align_dialog passes the speaker of the word's ASR segment: the context the word was heard
    in), else by `ties`: "earliest-turn" = the speaker whose overlapping turn began first
    (whisperX 3.8.6), "alphabetical" = the first tied label in string order (whisperX 3.2.0).

    How whisperx.diarize.assign_word_speakers breaks an exact tie (both sum the intersections of
    the word with every turn per speaker, then take the largest sum):
      * 3.2.0, the version the authors pinned (read in the 3.2.0 wheel's whisperx/diarize.py):
        pandas groupby("speaker").sum() (labels in sorted order), sort_values(ascending=False),
        index[0]: the descending sort keeps tied labels in their sorted order, so the
        alphabetically first label wins ("SPEAKER_00" over "SPEAKER_01"; as strings, so
        "SPEAKER_10" before "SPEAKER_2"). The segment-level speaker is chosen the same way;
      * 3.8.6 (installed here): the sums are collected in a dict in the order of the turns sorted
        by start, and max() returns the first largest: the speaker of the earliest-starting
        overlapping turn.

    Compared with whisperx.diarize.assign_word_speakers (the tests check this):
      * the same speaker for every word with a positive overlap and a unique largest overlap;
      * ties: see above; align.py's default (--tie-break asr-segment) prefers the ASR segment's
        speaker, then the earliest-starting turn (ties are common where diarization turns
        overlap, e.g. turns with trailing silence); --tie-break whisperx = 3.2.0's rule;
      * a speaker's own overlapping turns: WhisperX adds the intersections (counting shared time
        twice), here they are merged first (pyannote does not emit such turns);
      * no overlap: WhisperX leaves the word without a speaker (fill_nearest=False) or takes the
        turn whose midpoint is nearest the word's midpoint (fill_nearest=True); here the turn with
        the smallest gap, so a word just after a long turn gets that turn's speaker;
      * untimed words: WhisperX gives them no speaker; here they are re-timed first (flatten_words).
    """
    if ties not in ("earliest-turn", "alphabetical"):
        raise ValueError(f"ties must be 'earliest-turn' or 'alphabetical', got {ties!r}")
    start, end = np.asarray(start, dtype=np.float64), np.asarray(end, dtype=np.float64)
    if len(start) == 0:
        return np.array([], dtype=object), np.zeros(0, dtype=bool)
    if not turns:
        raise PipelineError("no speaker turns to attribute speech to (empty diarization)")
    names = sorted({spk for _, _, spk in turns})  # string order: the "alphabetical" tie rule uses it
    overlap = np.zeros((len(names), len(start)))
    began = np.full((len(names), len(start)), np.inf)  # when the speaker's overlapping turn began
    for k, name in enumerate(names):
        merged = intervals.merge_intervals([(a, b) for a, b, spk in turns if spk == name])
        if len(merged) == 0:  # only zero-length turns: no speech to overlap
            continue
        s, e = merged[:, 0], merged[:, 1]
        overlap[k] = _speech_before(end, s, e) - _speech_before(start, s, e)
        first = np.minimum(np.searchsorted(e, start, side="right"), len(s) - 1)  # first turn ending after start
        began[k] = np.where(overlap[k] > EPS, s[first], np.inf)
    most = overlap.max(axis=0)
    tied = overlap >= most - EPS
    if ties == "earliest-turn":
        best = np.argmin(np.where(tied, began, np.inf), axis=0)  # of the tied: whose turn began first
    else:
        best = np.argmax(tied, axis=0)  # of the tied: the first label in sorted order
    if prefer is not None:
        index = {name: k for k, name in enumerate(names)}
        pref = np.array([index.get(p, -1) for p in prefer], dtype=np.int64)
        use = (pref >= 0) & tied[np.maximum(pref, 0), np.arange(len(start))]
        best = np.where(use, pref, best)
    nearest = most <= EPS
    speakers = np.array(names, dtype=object)[best]
    if nearest.any():
        speakers[nearest] = _nearest_turn_speaker(start[nearest], end[nearest], turns)
    return speakers, nearest


def _speech_before(t, s, e):
    """C(t): seconds of speech before time(s) t, for disjoint sorted turns [s[i], e[i]]."""
    covered_before = np.concatenate([[0.0], np.cumsum(e - s)])  # speech before turn i starts
    i = np.maximum(np.searchsorted(s, t, side="right") - 1, 0)  # the last turn starting at or before t
    return np.where(t > s[0], covered_before[i] + np.clip(t - s[i], 0.0, e[i] - s[i]), 0.0)


def _nearest_turn_speaker(start, end, turns):
    """For intervals overlapping no turn: the speaker of the turn with the smallest gap."""
    by_start = sorted(turns)
    t_start = np.array([t[0] for t in by_start])
    t_end = np.array([t[1] for t in by_start])
    t_spk = np.array([t[2] for t in by_start], dtype=object)
    # Before: among the turns starting at or before the interval's end, the one reaching furthest.
    reach = np.maximum.accumulate(t_end)
    reach_turn = np.maximum.accumulate(np.where(t_end >= reach, np.arange(len(t_end)), 0))
    n_before = np.searchsorted(t_start, end, side="right")
    b = np.maximum(n_before - 1, 0)
    gap_before = np.where(n_before > 0, np.maximum(start - reach[b], 0.0), np.inf)
    # After: the first turn starting after the interval's end.
    a = np.minimum(n_before, len(t_start) - 1)
    gap_after = np.where(n_before < len(t_start), t_start[a] - end, np.inf)
    return np.where(gap_before <= gap_after, t_spk[reach_turn[b]], t_spk[a])


# ---------------------------------------------------------------------------------------------
# 3. The alignment (paper Section III-A, Fig. 2): flatten, group, construct
# ---------------------------------------------------------------------------------------------


def flatten_words(asr_segments):
    """Stage 1 of Fig. 2: the words of all ASR segments as one time-ordered stream.

    Returns (words, start, end, retimed, segment): word strings and numpy arrays, sorted by start
    time (ties keep file order); segment[i] is the index of word i's ASR segment. Untimed words get
    times interpolated between their timed neighbours in the same ASR segment (the segment's
    start/end at its edges): a run of k untimed words shares that gap equally; retimed[i] marks them.
    """
    words, start, end, retimed, segment = [], [], [], [], []
    for n, seg in enumerate(asr_segments):
        times = _interpolate_untimed(seg["words"], seg["start"], seg["end"])
        for w, (s, e) in zip(seg["words"], times):
            words.append(w["word"])
            start.append(s)
            end.append(e)
            retimed.append(w["start"] is None)
            segment.append(n)
    start, end = np.array(start, dtype=np.float64), np.array(end, dtype=np.float64)
    order = np.argsort(start, kind="stable")
    return (
        [words[i] for i in order],
        start[order],
        end[order],
        np.array(retimed, dtype=bool)[order],
        np.array(segment, dtype=np.int64)[order],
    )


def _interpolate_untimed(words, seg_start, seg_end):
    """[(start, end)] for each word: timed words keep theirs, runs of untimed ones share the gap."""
    times = [(w["start"], w["end"]) for w in words]
    i = 0
    while i < len(words):
        if words[i]["start"] is not None:
            i += 1
            continue
        j = i
        while j < len(words) and words[j]["start"] is None:
            j += 1
        left = times[i - 1][1] if i > 0 else seg_start  # end of the previous timed word
        right = times[j][0] if j < len(words) else seg_end  # start of the next timed word
        if left is None and right is None:
            raise PipelineError(
                f"untimed words {[w['word'] for w in words[i:j]]} in an ASR segment without start/end times"
            )
        left = right if left is None else left
        right = left if right is None or right < left else right
        step = (right - left) / (j - i)
        for k in range(i, j):
            times[k] = (left + (k - i) * step, left + (k - i + 1) * step)
        i = j
    return times


def group_words(speaker_ids, start, end, max_pause):
    """Stage 2 of Fig. 2: where each turn begins in the time-ordered word stream.

    A new turn begins at word i when its speaker differs from word i-1's, or when the pause
    (word i's start minus word i-1's end) exceeds max_pause. Returns the index of each turn's first
    word (an array starting with 0; empty for an empty stream).
    """
    speaker_ids, start, end = np.asarray(speaker_ids), np.asarray(start), np.asarray(end)
    if len(start) == 0:
        return np.zeros(0, dtype=np.int64)
    new_turn = (speaker_ids[1:] != speaker_ids[:-1]) | (start[1:] - end[:-1] > max_pause)
    return np.concatenate([[0], np.flatnonzero(new_turn) + 1])


TIE_BREAKS = ("asr-segment", "whisperx")  # align.py --tie-break


def attribute_words(asr_segments, turns, tie_break="asr-segment"):
    """Flatten the words (stage 1 of Fig. 2) and give each its speaker.

    Returns (words, start, end, speakers, retimed, nearest), in time order. A word lying equally
    inside two speakers' turns goes, with tie_break "asr-segment", to its ASR segment's speaker
    (segment-level overlap) if that is one of the tied, else to the earliest-starting turn; with
    "whisperx", to the alphabetically first tied label (whisperX 3.2.0, the authors' version).
    """
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {tie_break!r}")
    words, start, end, retimed, segment = flatten_words(asr_segments)
    if tie_break == "whisperx":
        speakers, nearest = attribute_speakers(start, end, turns, ties="alphabetical")
        return words, start, end, speakers, retimed, nearest
    lo, hi = np.full(len(asr_segments), np.inf), np.full(len(asr_segments), -np.inf)
    np.minimum.at(lo, segment, start)
    np.maximum.at(hi, segment, end)
    for n, seg in enumerate(asr_segments):  # the segment's own bounds where it has them
        if seg["start"] is not None and seg["end"] is not None and np.isfinite(lo[n]):
            lo[n], hi[n] = seg["start"], seg["end"]
    used = np.unique(segment)
    context = np.empty(len(asr_segments), dtype=object)
    context[used] = attribute_speakers(lo[used], hi[used], turns)[0]
    speakers, nearest = attribute_speakers(start, end, turns, prefer=context[segment])
    return words, start, end, speakers, retimed, nearest


WORD_POLICIES = ("keep", "authors")  # align.py --word-policy


def pause_ends(start, end, max_word_seconds=MAX_WORD_SECONDS):
    """Word ends for measuring pauses: a word longer than max_word_seconds ends max_word_seconds
    after its start (0 or None: no clamp, the paper's rule)."""
    start, end = np.asarray(start, dtype=np.float64), np.asarray(end, dtype=np.float64)
    return np.minimum(end, start + max_word_seconds) if max_word_seconds else end


def count_long_words(asr_segments, max_word_seconds=MAX_WORD_SECONDS) -> int:
    """How many words (re-timed ones included) are longer than max_word_seconds (0: none counted)."""
    if not max_word_seconds:
        return 0
    _, start, end, _, _ = flatten_words(asr_segments)
    return int(np.sum(end - start > max_word_seconds))


def align_dialog(
    asr_segments, turns, max_pause, tie_break="asr-segment", word_policy="keep", max_word_seconds=MAX_WORD_SECONDS
):
    """The full alignment block (Fig. 2) for one dialog -> segments in time order.

    Each segment: start = its first word's start, end = the latest word end in it (the last word's
    end unless ASR words overlap), speaker, text = the words joined with spaces, n_words, flags
    (how many of its words were re-timed / got the nearest turn's speaker). tie_break: see
    attribute_words. word_policy "authors" replaces the grouping by the authors' (authors_turns).
    max_word_seconds: longer words count as this long when the pause after them is measured
    (pause_ends; 0 = the paper's rule); segments keep the real times.
    """
    words, start, end, speakers, retimed, nearest = attribute_words(asr_segments, turns, tie_break)
    if word_policy == "authors":
        return authors_turns(
            words, start, end, speakers, retimed, nearest, max_pause, pause_ends(start, end, max_word_seconds)
        )
    if word_policy != "keep":
        raise ValueError(f"word_policy must be one of {WORD_POLICIES}, got {word_policy!r}")
    bounds = group_words(speakers, start, pause_ends(start, end, max_word_seconds), max_pause)
    return construct_segments(words, start, end, speakers, retimed, nearest, bounds)


def authors_turns(words, start, end, speakers, retimed, nearest, max_pause, pause_end=None):
    """The authors' grouping (TimestampAligner in their utils.py, after whisperX 3.2.0's
    assign_word_speakers), for --word-policy authors. whisperX gives no speaker to an untimed word
    (ours: re-timed) nor to one outside every turn (ours: nearest). Their loop compares each word
    with the LAST KEPT word and skips the word when either has no speaker: an unattributed word
    drops only itself, but an unattributed FIRST word stays the turn's last kept word for ever, so
    every later word of the dialog is dropped. A turn's start/end come from its timed words (none:
    the turn is dropped); its speaker is its first word's, "UNKNOWN" if that has none.
    """
    if len(words) == 0:
        return []
    pause_end = end if pause_end is None else pause_end  # word ends for the pause (align_dialog clamps long words)
    attributed = ~(retimed | nearest)
    groups, current = [], [0]
    for i in range(1, len(words)):
        prev = current[-1]
        if not (attributed[prev] and attributed[i]):
            continue  # dropped
        if speakers[i] != speakers[prev] or start[i] - pause_end[prev] > max_pause:
            groups.append(current)
            current = [i]
        else:
            current.append(i)
    groups.append(current)
    segments = []
    for g in groups:
        timed = [i for i in g if not retimed[i]]
        if not timed:
            continue
        segments.append(
            {
                "start": float(min(start[i] for i in timed)),
                "end": float(max(end[i] for i in timed)),
                "speaker": str(speakers[g[0]]) if attributed[g[0]] else "UNKNOWN",
                "text": " ".join(words[i] for i in g),
                "n_words": len(g),
                "flags": {"retimed_words": int(retimed[g].sum()), "nearest_speaker_words": int(nearest[g].sum())},
            }
        )
    return segments


def construct_segments(words, start, end, speakers, retimed, nearest, bounds):
    """Stage 3 of Fig. 2: one segment per group of words (bounds = first word of each group)."""
    stops = np.append(bounds[1:], len(words)).astype(np.int64)
    if len(bounds) == 0:
        return []
    seg_end = np.maximum.reduceat(end, bounds)
    n_retimed = np.add.reduceat(retimed.astype(np.int64), bounds)
    n_nearest = np.add.reduceat(nearest.astype(np.int64), bounds)
    return [
        {
            "start": float(start[a]),
            "end": float(seg_end[g]),
            "speaker": str(speakers[a]),
            "text": " ".join(words[a:b]),
            "n_words": int(b - a),
            "flags": {"retimed_words": int(n_retimed[g]), "nearest_speaker_words": int(n_nearest[g])},
        }
        for g, (a, b) in enumerate(zip(bounds.tolist(), stops.tolist()))
    ]


# ---------------------------------------------------------------------------------------------
# 4. The without-alignment baseline (paper Section IV-B)
# ---------------------------------------------------------------------------------------------


def baseline_dialog(asr_segments, turns, tie_break="asr-segment"):
    """WhisperX's segments as they come, each given the speaker with the largest segment-level overlap.

    No word-level attribution and no regrouping. A segment overlapping no turn gets the nearest
    turn's speaker (all its words counted in flags.nearest_speaker_words). ASR segments with
    neither words nor text are dropped (the caller counts them): there is nothing to classify.
    A tie between speakers goes to the earliest-starting turn ("asr-segment": the segment is its
    own context) or to the alphabetically first label ("whisperx", as whisperX 3.2.0).
    """
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {tie_break!r}")
    segs = []
    for i, s in enumerate(asr_segments):
        if not s["words"]:
            continue
        if s["start"] is None or s["end"] is None:  # fall back on the extent of its timed words
            timed = [w for w in s["words"] if w["start"] is not None]
            if not timed:
                raise PipelineError(f"ASR segment {i} ({s['text']!r:.40}) has no start/end times and no timed words")
            s = dict(s, start=min(w["start"] for w in timed), end=max(w["end"] for w in timed))
        segs.append(s)
    segs.sort(key=lambda s: s["start"])
    speakers, nearest = attribute_speakers(
        [s["start"] for s in segs],
        [s["end"] for s in segs],
        turns,
        ties="alphabetical" if tie_break == "whisperx" else "earliest-turn",
    )
    return [
        {
            "start": s["start"],
            "end": s["end"],
            "speaker": str(spk),
            "text": s["text"],
            "n_words": len(s["words"]),
            "flags": {"retimed_words": 0, "nearest_speaker_words": len(s["words"]) if near else 0},
        }
        for s, spk, near in zip(segs, speakers, nearest)
    ]


# ---------------------------------------------------------------------------------------------
# 5. Ground truth for each segment
# ---------------------------------------------------------------------------------------------

LABEL_RULES = ("sum", "authors")  # align.py --label-rule


def authors_candidate(utterance) -> bool:
    """Whether the authors' labels file would hold this utterance: a 4-class code (hap, exc, sad, ang,
    neu) and a transcript line with text (their step 1 drops an utterance whose transcript line has
    none; ours refuses an utterance with no line at all, so labels.json's text is then ""). An
    utterance without a "text" key (a hand-made list) counts as transcribed."""
    text = utterance.get("text")
    return utterance["label"] is not None and (text is None or bool(str(text).strip()))


def label_segments(segments, utterances, dialog, min_label_overlap=0.1, rule="sum", classes=LABELS):
    """Attach the reference to each segment (in place) and give it an id "<dialog>-<NNNN>".

    utterances: labels.json's utterances of the dialog; classes: labels.json's classes, in order (the default: the
    paper's 4). Rule (docs/DEPARTURES.md, "How a segment gets its label"):
      * utterances: every reference utterance the segment overlaps (any emotion code);
      * label (rule "sum"): the 4-class label with the largest total overlap, if that overlap
        exceeds min_label_overlap seconds, else None; ties go to the first in classes;
        (rule "authors", their preprocess.py get_label_for_segment over the labels file of their
        iemo_lab_with_timestamps.py, which holds only 4-class utterances with transcript text): the
        label of the ONE utterance that overlaps the segment most among the authors_candidates (on a
        tie the earliest, i.e. the first in labels.json's time order, as the first in their file
        wins), if that overlap exceeds min_label_overlap, else None;
      * purity: the share of the segment's duration covered by reference speech carrying that
        label (0.0 without a label or for a zero-length segment);
      * ref_speaker: the reference speaker (a name; F/M on IEMOCAP) with the most overlap, None if it overlaps nothing.
    """
    u_start = np.array([u["start"] for u in utterances], dtype=np.float64)
    u_end = np.array([u["end"] for u in utterances], dtype=np.float64)
    for n, seg in enumerate(segments):
        ov = np.clip(np.minimum(u_end, seg["end"]) - np.maximum(u_start, seg["start"]), 0.0, None)
        hits = [(utterances[i], float(ov[i])) for i in np.flatnonzero(ov > EPS)]
        by_label, by_speaker = {}, {}
        for u, o in hits:
            if u["label"] is not None:
                by_label[u["label"]] = by_label.get(u["label"], 0.0) + o
            by_speaker[u["speaker"]] = by_speaker.get(u["speaker"], 0.0) + o
        # max over the classes' order makes ties deterministic (the first of classes wins)
        if rule == "sum":
            label = max((lab for lab in classes if lab in by_label), key=lambda lab: by_label[lab], default=None)
            if label is not None and by_label[label] <= min_label_overlap:
                label = None
        elif rule == "authors":  # the largest overlap; on a tie the earliest start, then the first listed
            top = min((h for h in hits if authors_candidate(h[0])), key=lambda h: (-h[1], h[0]["start"]), default=None)
            label = top[0]["label"] if top is not None and top[1] > min_label_overlap else None
        else:
            raise ValueError(f"rule must be one of {LABEL_RULES}, got {rule!r}")
        duration = seg["end"] - seg["start"]
        purity = 0.0
        if label is not None and duration > 0:
            covered = intervals.union_length(
                [(max(u["start"], seg["start"]), min(u["end"], seg["end"])) for u, _ in hits if u["label"] == label]
            )
            purity = covered / duration
        seg.update(
            {
                "id": f"{dialog}-{n:04d}",
                "utterances": [
                    {"id": u["id"], "overlap": round(o, 4), "label": u["label"], "speaker": u["speaker"]}
                    for u, o in hits
                ],
                "label": label,
                "purity": round(purity, 4),
                "ref_speaker": max(sorted(by_speaker), key=lambda s: by_speaker[s], default=None),
            }
        )
    return segments


def record(seg) -> dict:
    """A segment in the key order of docs/FORMATS.md."""
    keys = ("id", "start", "end", "speaker", "text", "n_words", "utterances", "label", "purity", "ref_speaker", "flags")
    out = {k: seg[k] for k in keys}
    out["start"], out["end"] = round(seg["start"], 4), round(seg["end"], 4)
    return out


# ---------------------------------------------------------------------------------------------
# 6. Outputs: readable transcript, the segment cache, the alignment report
# ---------------------------------------------------------------------------------------------


def transcript_text(dialog, variant, segments) -> str:
    """A readable transcript in the style of the paper's Fig. 3, with the reference label."""
    lines = [f"# {dialog}  variant={variant}  segments={len(segments)}"]
    for s in segments:
        ref = f"ref={s['label'] or '-'} purity={s['purity']:.2f} ref_speaker={s['ref_speaker'] or '-'}"
        lines.append(f"[{s['start']:.2f}s -> {s['end']:.2f}s] {s['speaker']}: {s['text']}    ({ref})")
    return "\n".join(lines) + "\n"


PEAK_NORMALIZE = ("none", "authors")  # align.py --peak-normalize
AUTHORS_PEAK, AUTHORS_PEAK_FLOOR = 0.95, 0.01  # their preprocess.py: scale to this peak if the peak exceeds the floor


def peak_normalize(audio, rule="none"):
    """The dialog's audio before segments are cut from it. "none": unchanged. "authors" (their
    preprocess.py): divided by its peak |sample| and multiplied by 0.95 when that peak exceeds 0.01,
    in float32 as they compute it; one factor for the whole dialog."""
    if rule not in PEAK_NORMALIZE:
        raise ValueError(f"rule must be one of {PEAK_NORMALIZE}, got {rule!r}")
    peak = np.float32(np.max(np.abs(audio))) if len(audio) else np.float32(0)
    if rule == "none" or not peak > np.float32(AUTHORS_PEAK_FLOOR):  # compared in float32, as torch does
        return audio
    return (audio / peak * np.float32(AUTHORS_PEAK)).astype(np.float32)


def segment_cache(
    dialog, session, segments, audio, sample_rate=formats.SAMPLE_RATE, channel="mean", classes=LABELS
) -> dict:
    """The cache step 4 reads: per segment its audio slice of the (decoded once) dialog, and its text/label (the
    label's index in classes, labels.json's; -1 = none).

    audio: the dialog as common.formats.load_audio(..., channel=channel) returned it; `channel` is recorded.
    Slices are copied so that each tensor owns only its own samples (torch.save would otherwise
    store the whole dialog's buffer with every slice). A zero-length segment (a word whose ASR
    start equals its end) gets the one sample at its time, so no segment has empty audio; main
    counts them (zero_length_segments).
    """
    import torch

    out, index = [], {lab: i for i, lab in enumerate(classes)}
    for s in segments:
        a = min(max(0, int(round(s["start"] * sample_rate))), len(audio) - 1)
        b = min(len(audio), max(a + 1, int(round(s["end"] * sample_rate))))  # at least one sample: never empty
        out.append(
            {
                "id": s["id"],
                "start": float(s["start"]),
                "end": float(s["end"]),
                "speaker": s["speaker"],
                "text": s["text"],
                "label": index.get(s["label"], -1),
                "audio": torch.from_numpy(np.array(audio[a:b], dtype=np.float32, copy=True)),
            }
        )
    return {
        "dialog": dialog,
        "session": int(session),
        "sample_rate": int(sample_rate),
        "channel": str(channel),
        "segments": out,
    }


def seconds_inside(utterance, segments) -> float:
    """Seconds of the utterance covered by the given segments (overlaps between segments counted once)."""
    u = utterance
    return intervals.union_length(
        [
            (max(s["start"], u["start"]), min(s["end"], u["end"]))
            for s in segments
            if intervals.overlap(u["start"], u["end"], s["start"], s["end"]) > 0
        ]
    )


def variant_stats(segment_files, labels, min_label_overlap) -> dict:
    """The alignment report's numbers for one variant over the given dialogs (segment json paths).

    label purity: duration-weighted mean purity of the labelled segments. speaker purity: of the
    reference speech inside segments, the share spoken by each segment's majority reference speaker.
    fragmentation: for each labelled reference utterance, the number of segments overlapping it by
    more than min_label_overlap (utterances no segment reaches are left out; coverage counts them).
    coverage: share of labelled reference speech inside labelled segments (and inside segments
    carrying the utterance's own label).
    """
    segs = []
    pieces, covered, covered_same, ref_total = [], 0.0, 0.0, 0.0
    for path in segment_files:
        data = fileio.read_json(path, "segments file")
        segs += data["segments"]
        labelled = [s for s in data["segments"] if s["label"] is not None]
        for u in labels["dialogs"][data["dialog"]]["utterances"]:
            if u["label"] is None:
                continue
            pieces.append(
                sum(
                    intervals.overlap(u["start"], u["end"], s["start"], s["end"]) > min_label_overlap
                    for s in data["segments"]
                )
            )
            covered += seconds_inside(u, labelled)
            covered_same += seconds_inside(u, [s for s in labelled if s["label"] == u["label"]])
            ref_total += u["end"] - u["start"]
    dur = np.array([s["end"] - s["start"] for s in segs])
    is_lab = np.array([s["label"] is not None for s in segs], dtype=bool)
    purity = np.array([s["purity"] for s in segs])
    ref_speech = sum(u["overlap"] for s in segs for u in s["utterances"])
    majority = sum(u["overlap"] for s in segs for u in s["utterances"] if u["speaker"] == s["ref_speaker"])
    pieces = np.array([k for k in pieces if k > 0])

    def r(x, n=4):
        return None if x is None or not np.isfinite(x) else round(float(x), n)

    def q(p):
        return r(np.percentile(dur, p), 3) if len(dur) else None

    return {
        "dialogs": len(segment_files),
        "segments": len(segs),
        "labelled_segments": int(is_lab.sum()),
        "unlabelled_segments": int((~is_lab).sum()),
        "duration_mean": r(dur.mean(), 3) if len(dur) else None,
        "duration_median": q(50),
        "duration_p10": q(10),
        "duration_p90": q(90),
        "words_per_segment": r(np.mean([s["n_words"] for s in segs]), 2) if segs else None,
        "label_purity": r(np.sum(purity[is_lab] * dur[is_lab]) / np.sum(dur[is_lab]))
        if dur[is_lab].sum() > 0
        else None,
        "speaker_purity": r(majority / ref_speech) if ref_speech > 0 else None,
        "fragmentation_mean": r(pieces.mean(), 3) if len(pieces) else None,
        "fragmentation_split_share": r(np.mean(pieces > 1)) if len(pieces) else None,
        "labelled_ref_coverage": r(covered / ref_total) if ref_total > 0 else None,
        "labelled_ref_coverage_same_label": r(covered_same / ref_total) if ref_total > 0 else None,
        "words": sum(s["n_words"] for s in segs),
        "retimed_words": sum(s["flags"]["retimed_words"] for s in segs),
        "nearest_speaker_words": sum(s["flags"]["nearest_speaker_words"] for s in segs),
    }


REPORT_ROWS = [
    ("dialogs", "dialogs compared"),
    ("segments", "segments"),
    ("labelled_segments", "labelled segments"),
    ("unlabelled_segments", "segments without a 4-class label"),
    ("duration_mean", "duration mean (s)"),
    ("duration_median", "duration median (s)"),
    ("duration_p10", "duration p10 (s)"),
    ("duration_p90", "duration p90 (s)"),
    ("words_per_segment", "words per segment"),
    ("label_purity", "label purity (duration-weighted, labelled segments)"),
    ("speaker_purity", "speaker purity (share of reference speech from the majority speaker)"),
    ("fragmentation_mean", "segments per labelled reference utterance"),
    ("fragmentation_split_share", "share of labelled utterances split across >1 segment"),
    ("labelled_ref_coverage", "labelled reference speech covered by labelled segments"),
    ("labelled_ref_coverage_same_label", "... covered by segments with the same label"),
    ("words", "words"),
    ("retimed_words", "words re-timed (untimed in ASR)"),
    ("nearest_speaker_words", "words given the nearest turn's speaker"),
]


def alignment_report(pipe_dir, labels, min_label_overlap) -> dict:
    """Compare every variant present under WORK/<pipe>/ on the dialogs they all have.

    "adjusted" (only when something was): per variant, the SUMMARY_COUNTS over those dialogs;
    "warnings" (only when any): {dialog: [what looks wrong in its inputs]} from the manifests.
    """
    variants, entries = {}, {}
    for manifest in sorted(Path(pipe_dir).glob("*/manifest.json")):
        m = fileio.read_json(manifest, "alignment manifest")
        if m.get("step") == "align":
            entries[m["variant"]] = m["dialogs"]
            variants[m["variant"]] = {d for d, e in m["dialogs"].items() if e.get("status") in ("done", "ok")}
    common = sorted(set.intersection(*variants.values())) if variants else []
    stats = {
        v: variant_stats([Path(pipe_dir) / v / "segments" / f"{d}.json" for d in common], labels, min_label_overlap)
        for v in sorted(variants)
    }
    report = {"pipe": Path(pipe_dir).name, "dialogs": common, "min_label_overlap": min_label_overlap, "variants": stats}
    adjusted = {
        v: {f: n for f in SUMMARY_COUNTS if (n := sum(entries[v][d].get(f, 0) for d in common))}
        for v in sorted(variants)
    }
    if any(adjusted.values()):
        report["adjusted"] = {v: a for v, a in adjusted.items() if a}
    warnings = {d: sorted({w for v in sorted(variants) for w in entries[v][d].get("warnings", [])}) for d in common}
    if any(warnings.values()):
        report["warnings"] = {d: w for d, w in warnings.items() if w}
    return report


def report_markdown(report) -> str:
    names = list(report["variants"])

    def fmt(x):
        return "-" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))

    lines = [
        f"Alignment report, pipeline `{report['pipe']}`, {len(report['dialogs'])} dialogs common to all variants.",
        "",
        "| measure | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    lines += [
        f"| {title} | " + " | ".join(fmt(report["variants"][v][key]) for v in names) + " |"
        for key, title in REPORT_ROWS
    ]
    for v, counts in report.get("adjusted", {}).items():
        lines.append(f"\n{v}: " + "; ".join(f"{n} {SUMMARY_COUNTS[f]}" for f, n in counts.items()))
    for d, messages in report.get("warnings", {}).items():
        lines += [f"\nWARNING {d}: {m}" for m in messages]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# main: which dialogs, skip what is done, run the variants, write everything
# ---------------------------------------------------------------------------------------------

# Manifest status words, the same as step 2's (preprocess.py): "done" or "failed" (with "error").
OLD_STATUS = {"ok": "done", "error": "failed"}  # what manifests written before said
# Per-dialog counts of what was adjusted or dropped in a variant's inputs, summed in the manifest summary.
SUMMARY_COUNTS = {
    "long_words": "words longer than --max-word-seconds (clamped for the pause)",
    "zero_length_segments": "zero-length segments (one sample of audio)",
    "blank_words_dropped": "whitespace-only ASR words dropped",
    "times_clamped_to_audio_end": f"times clamped to the end of the audio (<= {formats.TIME_TOLERANCE_S:g} s past it)",
    "rttm_other_recording_lines": "RTTM lines of other recordings ignored",
}


def variant_name(kind, max_pause) -> str:
    return f"aligned-p{max_pause:g}" if kind == "aligned" else "baseline"


# Every setting besides --variant, --max-pause and --diarization that changes step 3's outputs:
# {argparse dest: (default, tag, the kinds it applies to)}. The defaults are the paper's and the
# argparse defaults read them from here. A variant keeps the paper's name (aligned-p1.5, baseline)
# while every setting that applies to it is at its default; each other value appends -<tag>_<value>
# in this table's order (e.g. aligned-p1.5-words_authors-ch_0), before the -exclusive suffix, so
# no setting overwrites another's variant (docs/FORMATS.md). Adding a setting is one line here.
BOTH = ("aligned", "baseline")
STEP3_SETTINGS = {
    "word_policy": ("keep", "words", ("aligned",)),
    "tie_break": ("asr-segment", "tie", BOTH),
    "label_rule": ("sum", "label", BOTH),
    "channel": ("mean", "ch", BOTH),
    "max_word_seconds": (MAX_WORD_SECONDS, "maxword", ("aligned",)),
    "min_label_overlap": (0.1, "overlap", BOTH),
    "peak_normalize": ("none", "peak", BOTH),
}
# Settings that every config records (they were there before the table): the others enter a variant's
# config only when not at their default, so the default variants' keys, and their outputs, stay as they were.
ALWAYS_IN_CONFIG = ("min_label_overlap", "tie_break", "channel", "max_word_seconds")


def _departures(kind, settings: dict) -> dict:
    """{setting: value} of the table's settings that apply to `kind` and differ from their default."""
    return {
        name: settings[name]
        for name, (default, _, kinds) in STEP3_SETTINGS.items()
        if kind in kinds and settings[name] != default
    }


def variant_dir_name(kind, max_pause, settings: dict, diarization: str = "overlap") -> str:
    """The directory of a variant under WORK/<pipe>/: variant_name, then -<tag>_<value> per departure
    from STEP3_SETTINGS' defaults, then -exclusive for --diarization exclusive."""
    tags = "".join(
        f"-{STEP3_SETTINGS[name][1]}_{value:g}" if isinstance(value, float) else f"-{STEP3_SETTINGS[name][1]}_{value}"
        for name, value in _departures(kind, settings).items()
    )
    return variant_name(kind, max_pause) + tags + ("-exclusive" if diarization == "exclusive" else "")


def variant_config(kind, max_pause, settings: dict, diarization: str = "overlap") -> dict:
    """Everything that changes a variant's outputs (manifest.json "config"; hashed into each dialog's
    key and, whole, into the variant's config key common.rundirs.step3_config_key, which trained runs record)."""
    config = {"kind": kind, "max_pause": max_pause, "sample_rate": formats.SAMPLE_RATE}
    config.update({name: settings[name] for name in ALWAYS_IN_CONFIG if kind in STEP3_SETTINGS[name][2]})
    config.update(_departures(kind, settings))
    return config | ({"diarization": diarization} if diarization != "overlap" else {})


def _sha(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def parse_args(argv=None) -> argparse.Namespace:
    """Step 3's command line; a bad value is a usage error (exit status 2)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for add_flags in (
        add_source_flags,
        add_segmentation_flags,
        add_attribution_flags,
        add_audio_flags,
        add_selection_flags,
        add_timing_flags,
    ):
        add_flags(parser)
    args = parser.parse_args(argv)
    if min(args.max_pause) < 0 or args.min_label_overlap < 0 or args.max_word_seconds < 0:
        parser.error("--max-pause, --min-label-overlap and --max-word-seconds must be >= 0")
    if not all(math.isfinite(x) for x in (*args.max_pause, args.min_label_overlap, args.max_word_seconds)):
        parser.error("--max-pause, --min-label-overlap and --max-word-seconds must be finite numbers")
    return args


def add_source_flags(p: argparse.ArgumentParser) -> None:
    """Where step 3 reads: the work directory and the step-2 run."""
    p.add_argument("--work", default=defaults.WORK_DIR, help="work directory (labels.json, step 2 output)")
    p.add_argument("--pipe", default=defaults.PIPE, help="which step-2 run to align: WORK/<pipe>/")


def add_segmentation_flags(p: argparse.ArgumentParser) -> None:
    """Which variants are made: aligned and/or baseline, the pause(s), the label overlap."""
    p.add_argument(
        "--variant",
        choices=("aligned", "baseline", "both"),
        default="both",
        help="the alignment (Fig. 2), the without-alignment baseline, or both",
    )
    p.add_argument(
        "--max-pause",
        type=float,
        nargs="+",
        default=[1.5],
        help="longest pause (s) inside a turn; paper: 1.5, the authors' code: 1.0. Several values "
        "make one aligned variant each (aligned-p<value>) from one reading of each dialog's "
        "audio",
    )
    p.add_argument(
        "--min-label-overlap",
        type=float,
        default=STEP3_SETTINGS["min_label_overlap"][0],
        help="a segment's label needs more than this overlap (s) with reference speech of that label",
    )


def add_attribution_flags(p: argparse.ArgumentParser) -> None:
    """How words and segments get speakers and labels: tie-break, word policy, label rule."""
    p.add_argument(
        "--tie-break",
        choices=TIE_BREAKS,
        default=STEP3_SETTINGS["tie_break"][0],
        help="a word (or baseline segment) lying equally inside two speakers' turns goes to: "
        "asr-segment (default) = its ASR segment's speaker, else the earliest-starting turn; "
        "whisperx = the alphabetically first speaker label, as whisperX 3.2.0 (the authors' "
        "version) does (3.8.6 takes the earliest-starting turn)",
    )
    p.add_argument(
        "--word-policy",
        choices=WORD_POLICIES,
        default=STEP3_SETTINGS["word_policy"][0],
        help="keep (default): no word is lost, untimed words are re-timed and words outside every "
        "turn get the nearest speaker (both flagged); authors: their grouping, which drops such "
        "words, and every later word of the dialog when its first word has no speaker",
    )
    p.add_argument(
        "--label-rule",
        choices=LABEL_RULES,
        default=STEP3_SETTINGS["label_rule"][0],
        help="a segment's label: sum (default) = the 4-class label with the largest summed overlap; "
        "authors = the label of the single most-overlapping 4-class utterance with transcript "
        "text (the first on a tie), as the authors' code",
    )


def add_audio_flags(p: argparse.ArgumentParser) -> None:
    """The audio cut into the caches: channel, peak normalization, the corpus root."""
    p.add_argument(
        "--channel",
        choices=formats.AUDIO_CHANNELS,
        default=STEP3_SETTINGS["channel"][0],
        help="the audio the classifier sees, cut into cache/<dialog>.pt: mean = the average of the "
        "stereo channels, both actors (default); 0 or 1 = that channel only (the authors: 0); "
        "mono wavs ignore it",
    )
    p.add_argument(
        "--peak-normalize",
        choices=PEAK_NORMALIZE,
        default=STEP3_SETTINGS["peak_normalize"][0],
        help="none (default): the dialog's samples as decoded; authors: each dialog scaled to a peak "
        "of 0.95 when its peak exceeds 0.01 before segments are cut, as the authors' code",
    )
    p.add_argument("--iemocap", default=None, help="corpus root for the dialog wavs (default: the one in labels.json)")


def add_selection_flags(p: argparse.ArgumentParser) -> None:
    """Which dialogs are (re)done."""
    p.add_argument("--dialogs", nargs="+", default=None, help="only these dialogs (default: all with ASR output)")
    p.add_argument("--overwrite", action="store_true", help="redo dialogs already aligned with the same config")


def add_timing_flags(p: argparse.ArgumentParser) -> None:
    """Which diarization attributes words, and how long a word may count when pauses are measured."""
    p.add_argument(
        "--diarization",
        choices=("overlap", "exclusive"),
        default="overlap",
        help="which step-2 RTTM attributes words to speakers: overlap = diarization/ (default, "
        "what the authors' whisperX used), exclusive = diarization_exclusive/ (one speaker at a "
        "time, pyannote 4's exclusive diarization); exclusive variants are named "
        "<variant>-exclusive, so the alignment report compares both",
    )
    p.add_argument(
        "--max-word-seconds",
        type=float,
        default=STEP3_SETTINGS["max_word_seconds"][0],
        help="a word longer than this (s) counts as this long when the pause after it is measured "
        "(WhisperX can stretch a word over seconds of silence, hiding the pause); segments keep "
        "the real times; such words are counted. 0 = never, as the paper and the authors",
    )


@dataclass
class Run:
    """One run of step 3: what its stages share (the plan) and what the dialogs did (filled in as they go)."""

    args: argparse.Namespace
    labels: dict  # labels.json
    corpus: Path  # the corpus root the dialog wavs are read from
    pipe_dir: Path  # WORK/<pipe>/
    variants: dict  # variant key (e.g. "aligned-p1.5", "baseline") -> its directory under pipe_dir
    configs: dict  # variant key -> its config (variant_config)
    manifests: dict = field(default_factory=dict)  # variant key -> its manifest.json, earlier dialogs' entries kept
    done_before: dict = field(default_factory=dict)  # variant key -> dialogs kept, done with the same config
    written: dict = field(default_factory=dict)  # variant key -> dialogs written by this run
    warnings: dict = field(default_factory=dict)  # dialog -> what looks wrong in its inputs
    errors: dict = field(default_factory=dict)  # dialog -> its one-line error


def read_work(args):
    """(work dir, labels.json, corpus root, WORK/<pipe>/), each checked to be there."""
    work = Path(args.work)
    labels = formats.load_labels(work, require=("wav",))
    if not (args.iemocap or labels.get("corpus")):
        raise PipelineError(f"{work / 'labels.json'}: no 'corpus' recorded; pass the corpus root with --iemocap DIR")
    corpus = Path(args.iemocap or labels["corpus"])
    pipe_dir = work / args.pipe
    if not (pipe_dir / "asr").is_dir():
        raise PipelineError(
            f"{pipe_dir / 'asr'}: not found; run step 2 first: python preprocess.py --work {work} --name {args.pipe}"
        )
    return work, labels, corpus, pipe_dir


def plan_variants(args):
    """({variant key: directory name}, {variant key: config}), one variant per (kind, max pause); the
    keys are their names, e.g. "aligned-p1.5", "baseline"."""
    specs = ([("aligned", p) for p in dict.fromkeys(args.max_pause)] if args.variant in ("aligned", "both") else []) + (
        [("baseline", None)] if args.variant in ("baseline", "both") else []
    )
    kinds = [variant_name(kind, p) for kind, p in specs]
    settings = {name: getattr(args, name) for name in STEP3_SETTINGS}
    # Each variant's directory is named by every setting that changes its outputs (variant_dir_name), and
    # its config, hashed into each dialog's key, holds them all: changing any of them (e.g. --channel)
    # writes another variant and never rewrites this one.
    variants = {k: variant_dir_name(kind, p, settings, args.diarization) for k, (kind, p) in zip(kinds, specs)}
    configs = {k: variant_config(kind, p, settings, args.diarization) for k, (kind, p) in zip(kinds, specs)}
    return variants, configs


def choose_dialogs(args, work, labels, pipe_dir):
    """(dialogs to consider, {dialog: why skipped}): those asked for explicitly (each must exist), or
    every labelled dialog step 2 transcribed. Removes what a killed run left under pipe_dir."""
    skipped = {}
    if args.dialogs:
        unknown = [d for d in args.dialogs if d not in labels["dialogs"]]
        if unknown:
            raise PipelineError(f"{work / 'labels.json'}: no such dialogs: {unknown}")
        dialogs = list(args.dialogs)
    else:
        dialogs = []
        for d in labels["dialogs"]:
            if (pipe_dir / "asr" / f"{d}.json").is_file():
                dialogs.append(d)
            else:
                skipped[d] = "no ASR output from step 2"
    stale = fileio.remove_stale_temp(pipe_dir)  # left under it by a killed run (of this step or step 2)
    if stale:
        print(f"[align] removed {stale} unfinished temporary file(s) of an interrupted run under {pipe_dir}")
    print(
        f"[align] read {work / 'labels.json'} ({len(labels['dialogs'])} dialogs); pipe {args.pipe}: "
        f"{len(dialogs)} dialogs to consider, {len(skipped)} without ASR output (skipped)"
    )
    return dialogs, skipped


def open_manifests(run: Run) -> None:
    """Start each variant's manifest from the one on disk: its dialogs' entries are kept (and read
    again to decide what is done), in step 2's status words."""
    for k, v in run.variants.items():
        path = run.pipe_dir / v / "manifest.json"
        old = fileio.read_json(path, "alignment manifest") if path.is_file() else {}
        old_dialogs = old.get("dialogs", {}) if isinstance(old, dict) and isinstance(old.get("dialogs"), dict) else {}
        for e in old_dialogs.values():  # manifests written before step 3 used step 2's status words
            if isinstance(e, dict) and e.get("status") in OLD_STATUS:
                e["status"] = OLD_STATUS[e["status"]]
        run.manifests[k] = {
            "step": "align",
            "pipe": run.args.pipe,
            "variant": v,
            "config": run.configs[k],
            "config_key": rundirs.step3_config_key(run.configs[k]),
            "corpus": str(run.corpus),
            "code": rundirs.code_version(),
            "dialogs": old_dialogs,
        }
        run.done_before[k] = run.written[k] = 0


def variants_to_do(run: Run, d, info, asr_path, rttm_path) -> dict:
    """{variant key: the key of its config and inputs} for the variants dialog d must be (re)done in.
    A variant is done when its outputs exist and were made from the same config and inputs."""
    todo = {}
    inputs = [p.read_bytes() if p.is_file() else b"" for p in (asr_path, rttm_path)]
    for k, v in run.variants.items():
        key = _sha(run.configs[k], info, str(run.corpus), *inputs)
        entry = run.manifests[k]["dialogs"].get(d, {})
        out_ok = all(
            (run.pipe_dir / v / sub / f"{d}{ext}").is_file() for sub, ext in (("segments", ".json"), ("cache", ".pt"))
        )
        out_ok = out_ok and fileio.checksum_path(run.pipe_dir / v / "cache" / f"{d}.pt").is_file()  # write finished
        if not run.args.overwrite and entry.get("status") == "done" and entry.get("key") == key and out_ok:
            run.done_before[k] += 1
        else:
            todo[k] = key
    return todo


def read_dialog(run: Run, d, info, asr_path, rttm_path) -> dict:
    """A dialog's audio (decoded once, shared by its variants), ASR words and speaker turns, checked
    against the audio's length, with the counts of what reading them adjusted."""
    args, wav = run.args, run.corpus / info["wav"]
    audio = formats.load_audio(wav, channel=args.channel)
    audio = peak_normalize(audio, args.peak_normalize)
    duration = len(audio) / formats.SAMPLE_RATE
    for u in info["utterances"]:
        formats.check_in_audio(
            u["end"], duration, str(wav), f"utterance {u['id']} of labels.json ({u['start']:.3f}-{u['end']:.3f} s)"
        )
    counts = {}
    asr = read_asr(asr_path, duration, counts)
    turns = formats.read_rttm(rttm_path, dialog=d, duration=duration, counts=counts)
    try:
        long_words = count_long_words(asr, args.max_word_seconds)
    except PipelineError as e:
        raise PipelineError(f"{asr_path}: {e}") from None
    return {
        "audio": audio,
        "asr": asr,
        "turns": turns,
        "counts": counts,
        "long_words": long_words,
        "asr_path": asr_path,
        "rttm_path": rttm_path,
    }


def align_variant(run: Run, k, key, d, info, inputs) -> None:
    """Dialog d in variant k: its segments, labelled, written (segments .json and .txt, cache .pt) and
    entered in the variant's manifest."""
    args, kind, vdir = run.args, run.configs[k]["kind"], run.pipe_dir / run.variants[k]
    asr, turns = inputs["asr"], inputs["turns"]
    try:
        segs = (
            align_dialog(
                asr, turns, run.configs[k]["max_pause"], args.tie_break, args.word_policy, args.max_word_seconds
            )
            if kind == "aligned"
            else baseline_dialog(asr, turns, args.tie_break)
        )
    except PipelineError as e:
        raise PipelineError(f"{inputs['asr_path']} / {inputs['rttm_path']}: {e}") from None
    classes = formats.labels_of(run.labels)
    label_segments(segs, info["utterances"], d, args.min_label_overlap, args.label_rule, classes)
    fileio.atomic_write_json(
        vdir / "segments" / f"{d}.json",
        {
            "dialog": d,
            "session": info["session"],
            "pipe": args.pipe,
            "variant": run.variants[k],
            "segments": [record(s) for s in segs],
        },
    )
    fileio.atomic_write_text(vdir / "segments" / f"{d}.txt", transcript_text(d, run.variants[k], segs))
    fileio.atomic_torch_save(
        segment_cache(d, info["session"], segs, inputs["audio"], channel=args.channel, classes=classes),
        vdir / "cache" / f"{d}.pt",
    )
    run.manifests[k]["dialogs"][d] = dialog_entry(run, d, kind, key, segs, inputs)
    run.written[k] += 1


def dialog_entry(run: Run, d, kind, key, segs, inputs) -> dict:
    """A done dialog's manifest entry: what its segments hold and what its inputs had adjusted or
    dropped; a warning (also kept for the run's output) when most words overlap no turn."""
    asr, counts = inputs["asr"], inputs["counts"]
    n_words = sum(s["n_words"] for s in segs)
    n_nearest = sum(s["flags"]["nearest_speaker_words"] for s in segs)
    entry_warnings = []
    if n_words and n_nearest / n_words > NEAREST_WARN_SHARE:
        entry_warnings.append(
            f"{100 * n_nearest / n_words:.0f} % of the words ({n_nearest} of {n_words}) overlap no turn "
            f"of {inputs['rttm_path']} and got the nearest turn's speaker: does the RTTM belong to this audio?"
        )
        run.warnings.setdefault(d, entry_warnings[-1])
    return {
        "status": "done",
        "key": key,
        "segments": len(segs),
        "labelled": sum(s["label"] is not None for s in segs),
        "words": sum(s["n_words"] for s in segs),
        "dropped_words": (
            sum(len(a["words"]) for a in asr) - sum(s["n_words"] for s in segs) if kind == "aligned" else 0
        ),
        "retimed_words": sum(s["flags"]["retimed_words"] for s in segs),
        "nearest_speaker_words": sum(s["flags"]["nearest_speaker_words"] for s in segs),
        "empty_asr": not asr,
        "asr_segments_without_words_dropped": sum(1 for s in asr if not s["words"]),
        "long_words": inputs["long_words"] if kind == "aligned" else 0,
        "zero_length_segments": sum(1 for s in segs if s["end"] <= s["start"]),
        "blank_words_dropped": counts["blank_words"],
        "times_clamped_to_audio_end": counts["times_clamped"],
        "rttm_other_recording_lines": counts.get("other_recording_lines", 0),
        **({"warnings": entry_warnings} if entry_warnings else {}),
    }


def align_one_dialog(run: Run, d) -> None:
    """Every variant of dialog d not already done, from one reading of its audio; a bad input fails
    the dialog in those variants (run.errors) and the run goes on."""
    info = run.labels["dialogs"][d]
    # preprocess.DIARIZATION_DIRS
    rttm_dir = "diarization" if run.args.diarization == "overlap" else "diarization_exclusive"
    asr_path, rttm_path = run.pipe_dir / "asr" / f"{d}.json", run.pipe_dir / rttm_dir / f"{d}.rttm"
    todo = {}  # variant key -> the key of its config and inputs, for the variants to (re)do
    try:
        todo = variants_to_do(run, d, info, asr_path, rttm_path)
        if not todo:
            return
        inputs = read_dialog(run, d, info, asr_path, rttm_path)
        for k, key in todo.items():
            align_variant(run, k, key, d, info, inputs)
    except PipelineError as e:
        run.errors[d] = cli.one_line(str(e))
        for k in todo:
            run.manifests[k]["dialogs"][d] = {"status": "failed", "error": run.errors[d]}


def manifest_summary(dialogs: dict, skipped: dict) -> dict:
    """A variant manifest's "summary": its dialogs' entries counted and summed."""
    ok = {d: e for d, e in dialogs.items() if e.get("status") == "done"}
    return {
        "dialogs_done": len(ok),
        "dialogs_failed": sum(e.get("status") == "failed" for e in dialogs.values()),
        "dialogs_without_asr": len(skipped),
        "dialogs_empty_asr": sum(e["empty_asr"] for e in ok.values()),
        **{
            f: sum(e[f] for e in ok.values())
            for f in (
                "segments",
                "labelled",
                "words",
                "retimed_words",
                "nearest_speaker_words",
                "asr_segments_without_words_dropped",
            )
        },
        "dropped_words": sum(e.get("dropped_words", 0) for e in ok.values()),
        **{f: sum(e.get(f, 0) for e in ok.values()) for f in SUMMARY_COUNTS},
        "dialogs_with_warnings": sorted(d for d, e in ok.items() if e.get("warnings")),
    }


def write_manifests(run: Run, skipped: dict) -> None:
    """Each variant's manifest.json, with its summary, and a line of totals per variant."""
    for k, m in run.manifests.items():
        m["summary"] = manifest_summary(m["dialogs"], skipped)
        m["skipped"] = skipped
        fileio.atomic_write_json(run.pipe_dir / run.variants[k] / "manifest.json", m)
        s = m["summary"]
        print(
            f"[align] {run.variants[k]}: wrote {run.written[k]} dialogs, "
            f"kept {run.done_before[k]} already done with the same config; totals over {s['dialogs_done']} "
            f"dialogs: {s['segments']} segments ({s['labelled']} labelled, {s['segments'] - s['labelled']} "
            f"without a 4-class label), {s['words']} words ({s['dropped_words']} dropped), "
            f"{s['retimed_words']} re-timed, {s['nearest_speaker_words']} nearest-speaker, "
            f"{s['dialogs_empty_asr']} dialogs with empty ASR output, "
            f"{s['asr_segments_without_words_dropped']} empty ASR segments dropped -> "
            f"{run.pipe_dir / run.variants[k]}"
        )
        noted = [f"{s[f]} {what}" for f, what in SUMMARY_COUNTS.items() if s[f]]
        if noted:
            print(f"[align] {run.variants[k]}: also " + ", ".join(noted))


def write_report(run: Run, t0: float) -> dict:
    """alignment_report.{json,md} over every variant under the pipe, printed, then the warnings."""
    report = alignment_report(run.pipe_dir, run.labels, run.args.min_label_overlap)
    fileio.atomic_write_json(run.pipe_dir / "alignment_report.json", report)
    md = report_markdown(report)
    fileio.atomic_write_text(run.pipe_dir / "alignment_report.md", md)
    print(md, end="")
    print(f"[align] wrote {run.pipe_dir / 'alignment_report.json'} and .md in {time.time() - t0:.1f} s")
    for d, message in run.warnings.items():
        print(f"[align] WARNING {d}: {message}")
    return report


def report_failures(run: Run, dialogs: list) -> None:
    """List the failed dialogs and exit with status 1 if there are any."""
    if run.errors:
        for d, message in run.errors.items():
            print(f"FAILED {d}: {message}")
        raise SystemExit(
            f"step 3: {len(run.errors)} of {len(dialogs)} dialogs failed (listed above and in "
            f"{run.pipe_dir}/<variant>/manifest.json; the others were written)"
        )


def main(argv=None):
    """Step 3: plan the variants, align each dialog in those where it is not done yet, write the manifests
    and the report; exits with status 1 listing the dialogs that failed."""
    args = parse_args(argv)
    t0 = time.time()
    work, labels, corpus, pipe_dir = read_work(args)
    variants, configs = plan_variants(args)
    run = Run(args, labels, corpus, pipe_dir, variants, configs)
    dialogs, skipped = choose_dialogs(args, work, labels, pipe_dir)
    open_manifests(run)

    from tqdm import tqdm

    for d in tqdm(dialogs, desc="align", unit="dialog"):
        align_one_dialog(run, d)
    write_manifests(run, skipped)
    report = write_report(run, t0)
    report_failures(run, dialogs)
    return report


if __name__ == "__main__":
    cli.run_main(main)
