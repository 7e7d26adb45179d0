"""Confusion matrices, the paper's metrics, the dialog bootstrap, the paired test, and the paper's
printed numbers (for the tables, beside ours)."""

from __future__ import annotations

import numpy as np

from common import formats

MISS = "miss"  # confusion column of a reference utterance that no system speech overlaps
HEADLINE = ("accuracy", "ua", "weighted_f1", "macro_f1")


def dialog_confusions(records, dialogs, miss_column: bool = True, labels=formats.LABELS) -> np.ndarray:
    """Per-dialog confusion matrices [len(dialogs), C, C + 1] (miss_column) or [len(dialogs), C, C] over the C
    classes of labels (labels.json's; default the paper's 4).

    records: dicts with "dialog", "label" (one of labels) and "pred" (one of labels, or None for a
    miss, which goes to column C and needs miss_column). Rows true, columns predicted, order labels
    then MISS. Summing over axis 0 gives the confusion matrix of all records.
    """
    row = {d: i for i, d in enumerate(dialogs)}
    index = {lab: i for i, lab in enumerate(labels)}
    cms = np.zeros((len(row), len(labels), len(labels) + int(miss_column)), dtype=np.int64)
    for r in records:
        if r["dialog"] not in row:
            raise ValueError(f"record {r.get('id', r)} is in dialog {r['dialog']!r}, not one of the dialogs given")
        pred = len(labels) if r["pred"] is None and miss_column else index.get(r["pred"])
        if r["label"] not in index or pred is None:
            raise ValueError(
                f"record {r.get('id', r)}: label {r['label']!r} / pred {r['pred']!r} not in {tuple(labels)}"
                + (" (or None for a miss)" if miss_column else "")
            )
        cms[row[r["dialog"]], index[r["label"]], pred] += 1
    return cms


def metrics_from_confusion(cm) -> dict:
    """Headline metrics of one or many confusion matrices, in numpy (fast enough to bootstrap).

    cm: [..., C, C], or [..., C, C + 1] whose last column counts misses (reference utterances with no
    prediction); C classes (the paper's 4 or any label set's). Rows true, columns predicted, order the set's.
    Returns arrays of shape [...]: n,
    accuracy, ua, weighted_f1, macro_f1; and [..., 4]: precision, recall, f1, support.
    The conventions are scikit-learn's with zero_division=0 (tests/test_evaluate.py checks them
    against sklearn.metrics): a ratio with a zero denominator is 0; a miss is a wrong answer (it
    counts in its row's support and recall, in no column's precision); F1 = 2 TP / (support +
    predicted); UA = mean recall over the classes with support > 0 (balanced accuracy); weighted
    F1 weights by support; macro F1 averages all C classes.
    """
    cm = np.asarray(cm, dtype=np.float64)
    k = cm.shape[-2] if cm.ndim >= 2 else 0
    if cm.ndim < 2 or k < 1 or cm.shape[-1] not in (k, k + 1):
        raise ValueError(f"confusion matrix of shape {cm.shape}: expected [..., {k}, {k}] or [..., {k}, {k + 1}]")

    def ratio(num, den):
        num, den = np.broadcast_arrays(np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64))
        return np.divide(num, den, out=np.zeros(num.shape), where=den > 0)

    tp = np.diagonal(cm[..., :k], axis1=-2, axis2=-1)  # [..., 4]
    support = cm.sum(-1)  # true count per class, misses included
    predicted = cm[..., :k].sum(-2)  # predicted count per class
    n = support.sum(-1)
    recall, f1 = ratio(tp, support), ratio(2 * tp, support + predicted)
    present = support > 0
    return {
        "n": n,
        "accuracy": ratio(tp.sum(-1), n),
        "ua": ratio((recall * present).sum(-1), present.sum(-1)),
        "weighted_f1": ratio((f1 * support).sum(-1), n),
        "macro_f1": f1.mean(-1),
        "precision": ratio(tp, predicted),
        "recall": recall,
        "f1": f1,
        "support": support,
    }


def _metric_function(metric):
    """A metric name from HEADLINE, or a function cm [..., 4, K] -> [...]."""
    if callable(metric):
        return metric
    if metric not in HEADLINE:
        raise ValueError(f"unknown metric {metric!r}: expected one of {HEADLINE} or a function of a confusion matrix")
    return lambda cm: metrics_from_confusion(cm)[metric]


def dialog_draws(n_dialogs: int, n_samples: int, seed: int) -> np.ndarray:
    """[n_samples, n_dialogs]: how often each dialog is drawn in each bootstrap resample of
    n_dialogs draws with replacement (a multinomial with equal probabilities), seeded."""
    if n_dialogs < 1 or n_samples < 1:
        raise ValueError(f"cannot bootstrap {n_dialogs} dialogs with {n_samples} samples")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_dialogs, np.full(n_dialogs, 1.0 / n_dialogs), size=n_samples)


def percentile_interval(values, level: float = 0.95) -> list[float]:
    """[lo, hi]: the (1-level)/2 and (1+level)/2 quantiles of values (numpy's linear interpolation)."""
    lo, hi = np.percentile(np.asarray(values, dtype=np.float64), [50 * (1 - level), 50 * (1 + level)])
    return [float(lo), float(hi)]


def bootstrap_ci(per_dialog_cms, metric, n_samples: int = 1000, seed: int = 0, level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval [lo, hi] of a metric, resampling dialogs with replacement.

    per_dialog_cms [n_dialogs, 4, K] (dialog_confusions), or [n_seeds, n_dialogs, 4, K] for the
    interval of the mean over seeds (as paired_bootstrap); metric: a HEADLINE name or a function of
    confusion matrices. Each of n_samples resamples draws n_dialogs dialogs with replacement
    (dialog_draws(n_dialogs, n_samples, seed)), sums their matrices and computes the metric.
    (scipy.stats.bootstrap would resample the same way given dialog indices; summing the matrices
    as one matrix product is simpler and makes 1000 resamples take milliseconds.)
    """
    cms = np.asarray(per_dialog_cms, dtype=np.float64)
    if cms.ndim == 4:  # [n_seeds, n_dialogs, 4, K]: the interval of the mean over seeds, same draws for all seeds
        draws = dialog_draws(cms.shape[1], n_samples, seed)
        return percentile_interval(_metric_function(metric)(np.einsum("bd,sdij->bsij", draws, cms)).mean(-1), level)
    if cms.ndim != 3:
        raise ValueError(
            f"per_dialog_cms of shape {cms.shape}: expected [n_dialogs, 4, K] or [n_seeds, n_dialogs, 4, K]"
        )
    draws = dialog_draws(len(cms), n_samples, seed)
    values = _metric_function(metric)(np.tensordot(draws, cms, axes=1))  # [n_samples]
    return percentile_interval(values, level)


def paired_bootstrap(cms_a, cms_b, metric, n_samples: int = 1000, seed: int = 0) -> dict:
    """Paired bootstrap of the difference A - B of a metric between two systems scored on the SAME
    dialogs (e.g. reference-projected utterances of an aligned and a baseline run).

    cms_a, cms_b: [n_seeds, n_dialogs, 4, K] per-seed, per-dialog confusion matrices (a single run may
    be given as [n_dialogs, 4, K]); the dialog axis must be in the same order in both. A system's
    metric is the mean over its seeds of the metric of each seed's matrix summed over dialogs.
    Each resample draws dialogs with replacement (dialog_draws(n_dialogs, n_samples, seed)) and
    applies the same draw to A and B (pairing by dialog).
    Returns {"metric", "diff" (observed A - B), "a", "b" (observed), "ci95": [lo, hi] (percentile),
    "sign_flip_share" (share of resamples whose difference is zero or of the opposite sign to the
    observed one; 1.0 when the observed difference is 0), "n_dialogs", "n_seeds": [a, b],
    "n_samples", "seed"}.
    """
    a, b = (np.asarray(x, dtype=np.float64) for x in (cms_a, cms_b))
    a, b = (x[None] if x.ndim == 3 else x for x in (a, b))
    if a.ndim != 4 or b.ndim != 4 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"paired bootstrap needs [n_seeds, n_dialogs, 4, K] arrays over the same dialogs, "
            f"got {a.shape} and {b.shape}"
        )
    fn = _metric_function(metric)
    obs_a, obs_b = float(fn(a.sum(1)).mean()), float(fn(b.sum(1)).mean())
    diff = obs_a - obs_b
    draws = dialog_draws(a.shape[1], n_samples, seed)
    diffs = fn(np.einsum("bd,sdij->bsij", draws, a)).mean(-1) - fn(np.einsum("bd,sdij->bsij", draws, b)).mean(
        -1
    )  # [n_samples]
    flips = 1.0 if diff == 0 else float(np.mean(np.sign(diffs) != np.sign(diff)))
    return {
        "metric": metric if isinstance(metric, str) else getattr(metric, "__name__", "custom"),
        "diff": diff,
        "a": obs_a,
        "b": obs_b,
        "ci95": percentile_interval(diffs, 0.95),
        "sign_flip_share": flips,
        "n_dialogs": int(a.shape[1]),
        "n_seeds": [int(a.shape[0]), int(b.shape[0])],
        "n_samples": int(n_samples),
        "seed": int(seed),
    }


# The paper's reported numbers (Wang, Lee, Chen, IALP 2025, Tables I-IV), quoted for comparison only:
# reproduce.py prints them beside ours where the configuration matches. Percentages, F1 in Table II as
# fractions, as printed in the paper.
PAPER = {
    "table1": {
        "wu2023": {"accuracy": 49.49, "weighted_f1": None, "macro_f1": None},
        "without-alignment": {"accuracy": 56.82, "weighted_f1": 53.87, "macro_f1": 47.10},
        "aligned": {"accuracy": 66.81, "weighted_f1": 66.88, "macro_f1": 66.48},
    },
    "table2": {
        "without-alignment": {"hap": 0.64, "ang": 0.38, "sad": 0.26, "neu": 0.61},
        "aligned": {"hap": 0.73, "ang": 0.64, "sad": 0.67, "neu": 0.62},
    },
    "table3": {
        "wu2023": {"TEER": 66.03, "sTEER": 65.17},
        "standard": {"TEER": 89.35, "sTEER": 90.96},
        "vad-oracle": {"TEER": 53.90, "sTEER": 62.54},
    },
    "table4": {
        "frozen": {"accuracy": 56.82, "weighted_f1": 53.87, "macro_f1": 47.10},
        "finetune": {"accuracy": 66.81, "weighted_f1": 66.81, "macro_f1": 66.48},
    },
    # Test-set sizes behind the authors' Table I accuracies (their evaluation outputs).
    "test_segments": {"aligned": 1618, "without-alignment": 308},
}
