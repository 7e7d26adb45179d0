"""Interval arithmetic on (start, end) pairs in seconds: the one implementation used by step 3 (turn
merging, purity), step 5 (coverage) and step 6 (scoring regions, collars)."""

from __future__ import annotations

import numpy as np


def overlap(a_start: float, a_end: float, b_start: float, b_end: float) -> float:
    """Length of the intersection of two intervals (0 if disjoint)."""
    return max(0.0, min(a_end, b_end) - max(a_start, b_start))


def merge_intervals(intervals) -> np.ndarray:
    """Union of intervals -> sorted disjoint [k, 2] float64 array.

    Intervals with end <= start are dropped; intervals that overlap or touch ([0, 1] and [1, 2])
    become one. Sort by start, then a new run begins where a start lies beyond every end so far.
    """
    a = np.asarray(intervals, dtype=np.float64).reshape(-1, 2)
    a = a[a[:, 1] > a[:, 0]]
    if len(a) == 0:
        return a
    a = a[np.argsort(a[:, 0], kind="stable")]
    reach = np.maximum.accumulate(a[:, 1])  # the furthest end among intervals 0..i
    first = np.flatnonzero(np.concatenate([[True], a[1:, 0] > reach[:-1]]))  # first interval of each run
    return np.stack([a[first, 0], np.maximum.reduceat(a[:, 1], first)], axis=1)


def cover_counts(points: np.ndarray, starts, ends) -> np.ndarray:
    """How many of the intervals [starts[i], ends[i]) cover each elementary piece [points[k], points[k+1]).

    points: sorted unique [P] boundaries that include every start and end -> int64 [P - 1].
    A +1 at each start and a -1 at each end, summed cumulatively (exact: no float comparisons).
    """
    delta = np.zeros(len(points), dtype=np.int64)
    np.add.at(delta, np.searchsorted(points, starts), 1)
    np.add.at(delta, np.searchsorted(points, ends), -1)
    return np.cumsum(delta)[:-1]


def subtract_intervals(a, b) -> np.ndarray:
    """The parts of intervals `a` not covered by intervals `b` -> merged [k, 2] array."""
    a, b = merge_intervals(a), merge_intervals(b)
    if len(a) == 0 or len(b) == 0:
        return a
    points = np.unique(np.concatenate([a.ravel(), b.ravel()]))
    keep = (cover_counts(points, a[:, 0], a[:, 1]) > 0) & (cover_counts(points, b[:, 0], b[:, 1]) == 0)
    edges = np.diff(np.concatenate([[0], keep.astype(np.int8), [0]]))  # +1 where a kept run starts, -1 after it
    return np.stack([points[np.flatnonzero(edges == 1)], points[np.flatnonzero(edges == -1)]], axis=1)


def union_length(intervals) -> float:
    """Seconds covered by at least one of the intervals (overlaps counted once)."""
    m = merge_intervals(intervals)
    return float(np.sum(m[:, 1] - m[:, 0]))
