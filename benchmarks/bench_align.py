"""Benchmark of step 3: align one million synthetic words and print the time of each stage.

    python benchmarks/bench_align.py                 # 1,000,000 words
    python benchmarks/bench_align.py --words 200000 --speakers 4
    python benchmarks/bench_align.py --small         # 2,000 words: a smoke test in a second

The synthetic dialog: speakers take turns of 1-30 words; words last 0.1-0.6 s with pauses of
0-2 s; diarization turns cover each speaker's run of words with +-0.2 s of jitter (so turns
overlap and some words fall in gaps); ASR segments of 1-25 words cut across speaker changes;
1% of the words are untimed. Stages timed separately: flatten (incl. re-timing untimed words),
word-to-speaker attribution (alone, and with flattening and the ASR-segment tie-breaker),
grouping, constructing the segments, and align.align_dialog end to end.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import align  # noqa: E402


def synthetic_dialog(n_words: int, n_speakers: int, seed: int):
    """(asr_segments in read_asr's shape, RTTM turns) of a long synthetic dialog."""
    rng = np.random.default_rng(seed)
    dur = rng.uniform(0.1, 0.6, n_words)
    pause = np.where(rng.random(n_words) < 0.1, rng.uniform(0.5, 2.0, n_words), rng.uniform(0.0, 0.3, n_words))
    start = np.cumsum(pause + np.concatenate([[0.0], dur[:-1]]))
    end = start + dur
    # speaker runs of 1-30 words
    run_len = rng.integers(1, 31, n_words)
    run_of_word = np.repeat(np.arange(n_words), run_len)[:n_words]
    speaker = run_of_word % n_speakers  # consecutive runs alternate between speakers
    bounds = np.flatnonzero(np.diff(run_of_word)) + 1
    firsts, lasts = np.concatenate([[0], bounds]), np.concatenate([bounds, [n_words]]) - 1
    jitter = rng.uniform(-0.2, 0.2, (len(firsts), 2))
    turns = [
        (max(0.0, float(start[a] + j0)), float(end[b] + j1), f"SPEAKER_{speaker[a]:02d}")
        for a, b, (j0, j1) in zip(firsts, lasts, jitter)
    ]
    untimed = rng.random(n_words) < 0.01
    cuts = np.cumsum(rng.integers(1, 26, n_words))
    cuts = np.concatenate([[0], cuts[cuts < n_words], [n_words]])
    segments = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        words = [
            {
                "word": f"w{i}",
                "start": None if untimed[i] else float(start[i]),
                "end": None if untimed[i] else float(end[i]),
            }
            for i in range(a, b)
        ]
        segments.append({"start": float(start[a]), "end": float(end[b - 1]), "text": "", "words": words})
    return segments, turns


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--words", type=int, default=1_000_000)
    p.add_argument("--speakers", type=int, default=2)
    p.add_argument("--max-pause", type=float, default=1.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--small", action="store_true", help="2,000 words (a smoke test that runs in a second)")
    args = p.parse_args(argv)
    if args.small:
        args.words = 2000

    t = time.perf_counter()
    asr, turns = synthetic_dialog(args.words, args.speakers, args.seed)
    print(
        f"synthetic dialog: {args.words} words in {len(asr)} ASR segments, {len(turns)} speaker turns, "
        f"{args.speakers} speakers (built in {time.perf_counter() - t:.1f} s)"
    )

    times = {}
    t = time.perf_counter()
    words, start, end, retimed, _ = align.flatten_words(asr)
    times["flatten (incl. re-timing)"] = time.perf_counter() - t
    t = time.perf_counter()
    align.attribute_speakers(start, end, turns)
    times["attribution (word level only)"] = time.perf_counter() - t
    t = time.perf_counter()
    words, start, end, speakers, retimed, nearest = align.attribute_words(asr, turns)
    times["attribute_words (flatten + segment + word level)"] = time.perf_counter() - t
    t = time.perf_counter()
    bounds = align.group_words(speakers, start, end, args.max_pause)
    times["grouping"] = time.perf_counter() - t
    t = time.perf_counter()
    segs = align.construct_segments(words, start, end, speakers, retimed, nearest, bounds)
    times["constructing segments"] = time.perf_counter() - t
    t = time.perf_counter()
    align.align_dialog(asr, turns, args.max_pause)
    times["align_dialog end to end"] = time.perf_counter() - t

    for name, sec in times.items():
        print(f"  {name:<48s} {sec:7.2f} s")
    print(
        f"result: {len(segs)} segments, {int(retimed.sum())} words re-timed, "
        f"{int(nearest.sum())} words given the nearest turn's speaker"
    )
    return times


if __name__ == "__main__":
    main()
