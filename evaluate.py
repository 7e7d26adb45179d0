"""Step 5: classify the test segments of a trained run and score them (paper Section IV-C, Tables I, II, IV).

For WORK/runs/<run>/ (each fold of a fold run, then all folds pooled) this writes
  predictions.json      every segment of the test dialogs, labelled or not, with its prediction
  metrics.json          "utterance": the reference-projected metrics, comparable across pipelines;
                        top level: the segment-level metrics (what the paper reports); 95 % intervals
  confusion_matrix.png  both confusion matrices, the reference-projected one first

The reference-projected metrics score every pipeline on the same items, the labelled reference utterances
of the test dialogs, each taking the emotion predicted for the system speech covering most of it; the
segment-level ones score the pipeline's own labelled segments. Intervals are a bootstrap over test
dialogs, seeded. The rule, the intervals and why there are two levels: docs/EXPERIMENTS.md ("How every run is
scored"); the file formats, the test dialogs and the fold rule: docs/FORMATS.md ("runs/<run>/"). A run whose
data changed since training is refused unless --allow-changed-data.

    python evaluate.py --work preprocessed_iemocap --run NAME [--device cuda]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn import metrics as skm

import utils
from common import cli, crosscorpus, defaults, fileio, formats, rundirs, scoring
from common.cli import PipelineError
from common.fileio import atomic_write_json, read_json
from common.formats import LABELS, load_labels
from common.intervals import merge_intervals
from common.rundirs import fold_dirs, run_test_dialogs
from utils import load_run, run_dataset

# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

HEADLINE = scoring.HEADLINE  # accuracy, ua, weighted_f1, macro_f1
MISS = scoring.MISS


def classification_metrics(y_true, y_pred, labels=LABELS, miss_column: bool = False) -> dict:
    """Accuracy (WA), UA, weighted and macro F1, per-class P/R/F1/support, confusion matrix,
    computed by sklearn.metrics.

    y_true: labels from `labels`; y_pred: labels from `labels`, or None for a miss (a reference
    utterance with no prediction) when miss_column. Conventions: zero_division=0 (a ratio with a
    zero denominator is 0); a miss is a wrong answer (it counts in its class's support and recall,
    in no class's precision); macro F1 averages over all `labels`; weighted F1 weights by support;
    UA averages recall over the classes present in y_true (balanced accuracy: recall is undefined
    for an absent class). The confusion matrix has rows = true label, columns = predicted label in
    the order of `labels`, plus a last column "miss" when miss_column ([4, 5], else [4, 4]).
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    labels = list(labels)
    for t, p in zip(y_true, y_pred):
        if t not in labels or not (p in labels or (p is None and miss_column)):
            raise PipelineError(
                f"label {t!r} or prediction {p!r} is not one of {tuple(labels)}"
                + (" (or None for a miss)" if miss_column else "")
            )
    columns = labels + ([MISS] if miss_column else [])
    y_pred = [MISS if p is None else p for p in y_pred]
    n = len(y_true)
    if n:
        cm = skm.confusion_matrix(y_true, y_pred, labels=columns)[: len(labels)]  # rows of the true classes
        precision, recall, f1, support = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=labels, zero_division=0
        )
        present = support > 0
        head = {
            "accuracy": float(skm.accuracy_score(y_true, y_pred)),
            "ua": float(recall[present].mean()),
            "weighted_f1": float(skm.f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
            "macro_f1": float(skm.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        }
    else:  # scikit-learn refuses empty inputs; every ratio is 0 by convention
        cm = np.zeros((len(labels), len(columns)), dtype=np.int64)
        precision = recall = f1 = np.zeros(len(labels))
        support = np.zeros(len(labels), dtype=np.int64)
        head = {k: 0.0 for k in HEADLINE}
    return {
        "n": n,
        **head,
        "per_class": {
            lab: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, lab in enumerate(labels)
        },
        "labels": labels,
        **({"columns": columns} if miss_column else {}),
        "confusion_matrix": cm.tolist(),
    }


def dialog_intervals(per_dialog_cms, n_samples: int, seed: int) -> dict | None:
    """{"accuracy": [lo, hi], ...}: 95 % bootstrap intervals over dialogs (common.scoring.bootstrap_ci), or
    None when n_samples is 0 or there is no dialog."""
    if n_samples <= 0 or len(per_dialog_cms) == 0:
        return None
    return {k: scoring.bootstrap_ci(per_dialog_cms, k, n_samples, seed) for k in HEADLINE}


def project_dialog(segments: list[dict], utterances: list[dict], classes=LABELS) -> list:
    """The predicted label (or None: a miss) of each reference utterance of one dialog, from the
    system segments of that dialog: the time-weighted vote of docs/EXPERIMENTS.md (steps 1-5 of "The
    reference-projected rule").

    overlap [U, S] in whole microseconds; votes [U, C] = overlap @ one-hot(pred) [S, C] over the C classes
    (labels.json's, in order).
    """
    if not segments or not utterances:
        return [None] * len(utterances)
    seg = np.array([[s["start"], s["end"]] for s in segments], dtype=np.float64)  # [S, 2]
    utt = np.array([[u["start"], u["end"]] for u in utterances], dtype=np.float64)  # [U, 2]
    seconds = np.minimum(utt[:, None, 1], seg[None, :, 1]) - np.maximum(utt[:, None, 0], seg[None, :, 0])
    overlap = np.rint(np.clip(seconds, 0.0, None) * 1e6).astype(np.int64)  # [U, S] microseconds
    index = {lab: i for i, lab in enumerate(classes)}
    onehot = np.array([index[s["pred"]] for s in segments])[:, None] == np.arange(len(classes))  # [S, 4]
    votes = overlap @ onehot.astype(np.int64)  # [U, 4]
    longest = (overlap[:, :, None] * onehot[None]).max(axis=1)  # [U, 4]: the largest single overlap per label
    preds = []
    for v, m in zip(votes, longest):
        if v.max() == 0:
            preds.append(None)
            continue
        tied = np.where(v == v.max(), m, -1)  # tie rule: largest single segment, then LABELS order
        preds.append(classes[int(np.argmax(tied))])  # argmax takes the first of equal values
    return preds


def coverage(segments, utterances_by_dialog: dict) -> dict:
    """Share of the reference's labelled speech that the scored segments cover.

    Per dialog: (union of the scored segments' intervals) intersected with (union of the
    labelled reference utterances), over the duration of the latter; summed over dialogs.
    """
    covered = reference = 0.0
    by_dialog: dict[str, list] = {}
    for s in segments:
        by_dialog.setdefault(s["dialog"], []).append((s["start"], s["end"]))
    for dialog, utterances in utterances_by_dialog.items():
        ref = merge_intervals([(u["start"], u["end"]) for u in utterances if u["label"] is not None])
        hyp = merge_intervals(by_dialog.get(dialog, []))
        reference += float((ref[:, 1] - ref[:, 0]).sum()) if len(ref) else 0.0
        if len(ref) and len(hyp):
            # Both are sorted and disjoint: the intersection length is a sum over the overlapping pairs,
            # found with searchsorted instead of a quadratic loop.
            for s, e in ref:
                lo, hi = np.searchsorted(hyp[:, 1], s, "right"), np.searchsorted(hyp[:, 0], e, "left")
                part = hyp[lo:hi]
                covered += float((np.minimum(part[:, 1], e) - np.maximum(part[:, 0], s)).clip(min=0).sum())
    return {
        "labelled_reference_s": reference,
        "covered_s": covered,
        "share": covered / reference if reference > 0 else None,
    }


def check_predictions(predictions: dict, where: str, classes=LABELS) -> list:
    """Validate the predictions.json shape (labels and preds among classes, labels.json's); return its segments."""
    segments = predictions.get("segments") if isinstance(predictions, dict) else None
    if not isinstance(segments, list):
        raise PipelineError(f"{where}: expected {{'segments': [...]}} (predictions.json)")
    for n, s in enumerate(segments):
        missing = [k for k in ("id", "dialog", "start", "end", "speaker", "label", "pred") if k not in s]
        if missing:
            raise PipelineError(f"{where}: segment {n} lacks {missing}")
        if s["pred"] not in classes or (s["label"] is not None and s["label"] not in classes):
            raise PipelineError(
                f"{where}: segment {n} ({s['id']}): label {s['label']!r} / pred {s['pred']!r}, "
                f"expected one of {tuple(classes)} (label may be null)"
            )
        if not (isinstance(s["start"], (int, float)) and isinstance(s["end"], (int, float)) and s["end"] >= s["start"]):
            raise PipelineError(
                f"{where}: segment {n} ({s['id']}): start {s['start']!r}, end {s['end']!r}; "
                f"expected numbers with end >= start"
            )
    return segments


def reference_utterances(labels: dict, dialogs) -> dict:
    """{dialog: its reference utterances} from labels.json for the test dialogs, checked."""
    missing = sorted(set(dialogs) - set(labels["dialogs"]))
    if missing:
        raise PipelineError(f"labels.json lacks test dialogs {missing[:5]}{'...' if len(missing) > 5 else ''}")
    out, classes = {}, formats.labels_of(labels)
    for d in dialogs:
        utterances = labels["dialogs"][d].get("utterances", [])
        for u in utterances:
            if u.get("label") is not None and u["label"] not in classes:
                raise PipelineError(
                    f"labels.json: utterance {u.get('id')} of {d}: label {u['label']!r}, "
                    f"expected one of {classes} or null"
                )
            if not (
                isinstance(u.get("start"), (int, float))
                and isinstance(u.get("end"), (int, float))
                and u["end"] >= u["start"]
            ):
                raise PipelineError(
                    f"labels.json: utterance {u.get('id')} of {d}: start {u.get('start')!r}, "
                    f"end {u.get('end')!r}; expected numbers with end >= start"
                )
        out[d] = utterances
    return out


def score_utterances(segments: list, utterances: dict, n_samples: int = 1000, seed: int = 0, classes=LABELS) -> dict:
    """The "utterance" part of metrics.json: reference-projected metrics (docs/EXPERIMENTS.md) of the
    labelled reference utterances of `utterances` ({test dialog: utterances}), from all system
    `segments` (those of other dialogs are not used)."""
    by_dialog: dict[str, list] = {}
    for s in segments:
        by_dialog.setdefault(s["dialog"], []).append(s)
    records = []
    for d, utts in utterances.items():
        scored = [u for u in utts if u.get("label") is not None]
        for u, pred in zip(scored, project_dialog(by_dialog.get(d, []), scored, classes)):
            records.append({"id": u["id"], "dialog": d, "label": u["label"], "pred": pred})
    m = classification_metrics([r["label"] for r in records], [r["pred"] for r in records], classes, miss_column=True)
    dialogs = list(utterances)
    test_segments = [s for d in dialogs for s in by_dialog.get(d, [])]
    return {
        "n_dialogs": len(dialogs),
        "n_missed": sum(r["pred"] is None for r in records),
        "coverage": coverage(test_segments, utterances),
        **m,
        "ci95": dialog_intervals(
            scoring.dialog_confusions(records, dialogs, miss_column=True, labels=classes), n_samples, seed
        ),
        "utterances": records,
    }


def score_predictions(
    predictions: dict, labels: dict, dialogs, where: str = "predictions", n_samples: int = 1000, seed: int = 0
) -> dict:
    """metrics.json content for one predictions dict over the test `dialogs`: the segment-level
    metrics at top level, the reference-projected ones under "utterance", intervals in "ci95"."""
    classes = formats.labels_of(labels)
    segments = check_predictions(predictions, where, classes)
    utterances = reference_utterances(labels, dialogs)
    scored = [s for s in segments if s["label"] is not None]
    metrics = classification_metrics([s["label"] for s in scored], [s["pred"] for s in scored], classes)
    seg_dialogs = list(utterances) + sorted({s["dialog"] for s in scored} - set(utterances))
    with_segments = {s["dialog"] for s in segments}
    return {
        "n_segments": len(segments),
        "n_scored": len(scored),
        "n_unlabelled": len(segments) - len(scored),
        "n_dialogs": len(dialogs),
        "missing_dialogs": [d for d in utterances if d not in with_segments],
        "coverage": coverage(scored, utterances),
        **metrics,
        "ci95": dialog_intervals(
            scoring.dialog_confusions(scored, seg_dialogs, miss_column=False, labels=classes), n_samples, seed
        ),
        "bootstrap": {"unit": "dialog", "method": "percentile", "level": 0.95, "samples": n_samples, "seed": seed},
        "utterance": score_utterances(segments, utterances, n_samples, seed, classes),
    }


def aggregate(per_fold: dict) -> dict:
    """Mean and sample std (ddof=1; null for one fold) over folds of the headline metrics, per-class
    F1 and coverage, segment-level and (under "utterance") reference-projected; n = folds."""

    def stats(values):
        values = [v for v in values if v is not None]
        std = float(np.std(values, ddof=1)) if len(values) > 1 else None
        return {"mean": float(np.mean(values)), "std": std, "n": len(values)} if values else None

    def summary(folds):
        out = {k: stats([m[k] for m in folds]) for k in HEADLINE}
        classes = folds[0].get("labels", LABELS) if folds else LABELS  # every fold scores labels.json's classes
        out["per_class_f1"] = {lab: stats([m["per_class"][lab]["f1"] for m in folds]) for lab in classes}
        out["coverage_share"] = stats([m["coverage"]["share"] for m in folds])
        return out

    folds = list(per_fold.values())
    out = summary(folds)
    out["n_scored"] = sum(m["n_scored"] for m in folds)
    out["n_segments"] = sum(m["n_segments"] for m in folds)
    utt = [m["utterance"] for m in folds]
    out["utterance"] = {**summary(utt), "n": sum(m["n"] for m in utt), "n_missed": sum(m["n_missed"] for m in utt)}
    return out


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------


def plot_confusion(metrics: dict, path: Path, title: str) -> None:
    """Two panels: the reference-projected confusion matrix [4, 5] (with the miss column), then the
    segment-level one [4, 4]; counts and row shares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = list(metrics.get("labels", LABELS))
    panels = [
        ("reference utterances", metrics["utterance"], classes + [MISS]),
        ("labelled segments", metrics, classes),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 4.2), gridspec_kw={"width_ratios": [5, 4]})
    for ax, (what, m, columns) in zip(axes, panels):
        cm = np.array(m["confusion_matrix"])
        rows = cm.sum(axis=1, keepdims=True)
        share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(
                    j,
                    i,
                    f"{cm[i, j]}\n{100 * share[i, j]:.0f}%",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black",
                )
        ax.set_xticks(range(len(columns)), columns)
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{what} (n={m['n']})\nacc {100 * m['accuracy']:.2f}%  UA {100 * m['ua']:.2f}%", fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def _headline(m: dict) -> str:
    ci = m.get("ci95") or {}

    def one(k, name):
        interval = f" [{100 * ci[k][0]:.2f}, {100 * ci[k][1]:.2f}]" if k in ci else ""
        return f"{name} {100 * m[k]:.2f}%{interval}"

    return "  ".join(one(k, name) for k, name in zip(HEADLINE, ("accuracy (WA)", "UA", "weighted F1", "macro F1")))


def _table(m: dict) -> None:
    print("    class  precision  recall     F1  support")
    for lab, c in m["per_class"].items():
        print(f"    {lab:5s}  {c['precision']:9.3f}  {c['recall']:6.3f}  {c['f1']:5.3f}  {c['support']:7d}")
    classes = list(m.get("labels", LABELS))
    columns = m.get("columns", classes)
    print("    confusion (rows true, cols pred " + " ".join(columns) + "):")
    for lab, row in zip(classes, m["confusion_matrix"]):
        print(f"      {lab:5s} " + " ".join(f"{x:5d}" for x in row))


def report(name: str, m: dict) -> None:
    """Print the reference-projected metrics, then the segment-level ones (95 % intervals in brackets)."""
    u, cu, cov = m["utterance"], m["utterance"]["coverage"], m["coverage"]

    def share(c):
        return "n/a" if c["share"] is None else f"{100 * c['share']:.1f}%"

    print(f"{name}:")
    print(
        f"  reference-projected: {u['n']} labelled reference utterances in {u['n_dialogs']} test dialogs, "
        f"{u['n_missed']} missed (no system speech); system speech covers {share(cu)} of "
        f"{cu['labelled_reference_s']:.1f} s labelled reference speech"
    )
    if m.get("missing_dialogs"):
        print(
            f"  {len(m['missing_dialogs'])} test dialogs have no segment (step 2 or 3 failed on them, or no system "
            f"speech): {', '.join(m['missing_dialogs'][:5])}{' ...' if len(m['missing_dialogs']) > 5 else ''}; "
            "their utterances are misses"
        )
    print("    " + _headline(u))
    _table(u)
    print(
        f"  segment-level: scored {m['n_scored']} labelled of {m['n_segments']} segments "
        f"({m['n_unlabelled']} without a {len(m.get('labels', LABELS))}-class label not scored); they cover "
        f"{share(cov)} of the labelled "
        f"reference speech"
    )
    print("    " + _headline(m))
    _table(m)


def evaluate_run(
    run_dir: Path,
    labels: dict,
    device,
    reuse: bool,
    n_samples: int = 1000,
    seed: int = 0,
    datasets: dict | None = None,
    data_check: dict | None = None,
) -> tuple[dict, dict]:
    """Predict (or reuse) and score one run dir; writes its predictions, metrics and plot. data_check:
    the run's common.rundirs.check_run_data record, kept in metrics.json "data_check"."""
    pred_path = run_dir / "predictions.json"
    fileio.remove_stale_temp(run_dir, recursive=False)  # temporary files of a killed run
    if reuse and pred_path.is_file():
        predictions = read_json(pred_path, "predictions file")
        print(f"  reused {pred_path} (--reuse-predictions)")
    else:
        predictions = predict_split(run_dir, split="test", device=device, datasets=datasets)
        check_predictions(predictions, f"predict_split({run_dir}) -> {pred_path}", formats.labels_of(labels))
        atomic_write_json(pred_path, predictions)
        print(f"  wrote {pred_path}")
    dialogs, source = run_test_dialogs(run_dir, predictions, labels)
    note = formats.demo_note(labels)
    metrics = {
        "run": str(run_dir.name),
        "split": predictions.get("split", "test"),
        "test_dialogs_from": source,
        **({"note": note} if note else {}),
        **({"data_check": data_check} if data_check else {}),
        **score_predictions(predictions, labels, dialogs, where=str(pred_path), n_samples=n_samples, seed=seed),
    }
    atomic_write_json(run_dir / "metrics.json", metrics)
    title = str(run_dir.relative_to(run_dir.parent.parent)) + (" (DEMO data)" if note else "")
    plot_confusion(metrics, run_dir / "confusion_matrix.png", title=title)
    print(f"  wrote {run_dir / 'metrics.json'}, {run_dir / 'confusion_matrix.png'}")
    return predictions, metrics


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("--work", default=defaults.WORK_DIR, help="work directory (default: %(default)s)")
    p.add_argument(
        "--run",
        required=True,
        nargs="+",
        help="run name(s): WORK/runs/<run>/ written by train.py; several runs are evaluated in turn",
    )
    p.add_argument("--device", default=None, help="torch device for prediction (default: cuda if available, else cpu)")
    p.add_argument(
        "--reuse-predictions",
        action="store_true",
        help="score an existing predictions.json instead of running the model again",
    )
    p.add_argument(
        "--bootstrap-samples",
        type=int,
        default=1000,
        help="resamples of the test dialogs for the 95%% intervals; 0 = no intervals (default: %(default)s)",
    )
    p.add_argument(
        "--bootstrap-seed", type=int, default=0, help="seed of the bootstrap resampling (default: %(default)s)"
    )
    p.add_argument(
        rundirs.ALLOW_CHANGED_DATA,
        action="store_true",
        help="score a run even when labels.json, its step-3 config or cache files changed since it was "
        "trained (refused otherwise); metrics.json data_check records it",
    )
    crosscorpus.add_eval_flags(p)
    args = p.parse_args(argv)
    crosscorpus.check_eval_args(p, args)
    if args.bootstrap_samples < 0:
        p.error(f"--bootstrap-samples {args.bootstrap_samples}: expected 0 or more")
    if args.bootstrap_seed < 0:
        p.error(f"--bootstrap-seed {args.bootstrap_seed}: expected 0 or more (a numpy seed)")
    boot = {"n_samples": args.bootstrap_samples, "seed": args.bootstrap_seed}
    if args.eval_work is not None:
        return evaluate_cross(args, boot)

    torch.set_flush_denormal(True)  # as train.py: subnormal floats are slow on CPUs
    work = Path(args.work)
    for name in args.run:
        if not (work / "runs" / name).is_dir():
            raise PipelineError(
                f"{work / 'runs' / name}: run directory not found; train it first: python train.py --run {name}"
            )
    labels = load_labels(work)
    print(f"read {work / 'labels.json'} ({len(labels['dialogs'])} dialogs)")
    # every run is bound to the data it was trained on: checked for all of them before any is scored
    checks = {
        name: rundirs.check_run_data(work / "runs" / name, work / "labels.json", args.allow_changed_data)
        for name in args.run
    }
    for name, check in checks.items():
        if check["changed"]:
            print(
                f"WARNING {name}: scored on changed data ({rundirs.ALLOW_CHANGED_DATA}): {'; '.join(check['changed'])}"
            )
    datasets = {}  # test segments read once per variant, for all the runs given
    results = {name: evaluate_named_run(work, name, labels, args, boot, datasets, checks[name]) for name in args.run}
    return results[args.run[0]] if len(args.run) == 1 else results


def evaluate_named_run(
    work: Path, name: str, labels: dict, args, boot: dict, datasets: dict | None = None, data_check: dict | None = None
) -> dict:
    """Evaluate WORK/runs/<name>/ (each fold of a fold run, then all folds pooled); metrics.json content.
    data_check: common.rundirs.check_run_data's record, in each metrics.json (a fold's: its own part)."""
    run_dir = work / "runs" / name
    folds = fold_dirs(run_dir)
    if not folds:
        _, metrics = evaluate_run(
            run_dir, labels, args.device, args.reuse_predictions, **boot, datasets=datasets, data_check=data_check
        )
        report(name, metrics)
        if "note" in metrics:
            print(metrics["note"])
        return metrics

    per_fold, pooled_segments, pooled_dialogs = {}, [], []
    for f in folds:
        print(f"fold {f.name}:")
        fold_check = data_check and {
            **data_check["folds"][f.name],
            "allow_changed_data": data_check["allow_changed_data"],
        }
        predictions, per_fold[f.name] = evaluate_run(
            f, labels, args.device, args.reuse_predictions, **boot, datasets=datasets, data_check=fold_check
        )
        pooled_segments += predictions["segments"]
        pooled_dialogs += run_test_dialogs(f, predictions, labels)[0]
    note = formats.demo_note(labels)
    metrics = {
        "run": name,
        "split": "test",
        **({"note": note} if note else {}),
        **({"data_check": data_check} if data_check else {}),
        "folds": per_fold,
        "mean_std": aggregate(per_fold),
        "pooled": score_predictions({"segments": pooled_segments}, labels, sorted(set(pooled_dialogs)), **boot),
    }
    atomic_write_json(run_dir / "metrics.json", metrics)
    plot_confusion(
        metrics["pooled"],
        run_dir / "confusion_matrix.png",
        title=f"{name} (all folds pooled)" + (" (DEMO data)" if note else ""),
    )
    for fold_name, fold_metrics in per_fold.items():
        report(fold_name, fold_metrics)
    report(f"{name} pooled", metrics["pooled"])
    agg = metrics["mean_std"]
    for what, a in (("reference-projected", agg["utterance"]), ("segment-level", agg)):
        print(
            f"{name} spread over {len(folds)} folds (mean ± sample std of the per-fold values; the pooled "
            f"values above carry the intervals), {what}: "
            + "  ".join(
                f"{k} {100 * a[k]['mean']:.2f}" + ("" if a[k]["std"] is None else f" ± {100 * a[k]['std']:.2f}") + "%"
                for k in HEADLINE
            )
        )
    print(f"wrote {run_dir / 'metrics.json'}, {run_dir / 'confusion_matrix.png'}")
    if note:
        print(note)
    return metrics


# ---------------------------------------------------------------------------------------------
# Cross-corpus: a run scored on another work directory (common.crosscorpus)
# ---------------------------------------------------------------------------------------------


def evaluate_cross(args, boot: dict) -> dict:
    """--eval-work: each --run (trained on --work, its data checked as for step 5) scored on the other work dir's
    labels and step-3 data, written under RUN/eval/<name>/<split>/ -> {run: {split: metrics}} (one run: its own)."""
    torch.set_flush_denormal(True)
    work = Path(args.work)
    for name in args.run:
        run_dir = work / "runs" / name
        if not run_dir.is_dir():
            raise PipelineError(f"{run_dir}: run directory not found; train it first: python train.py --run {name}")
        if fold_dirs(run_dir):
            raise PipelineError(f"{run_dir}: a cross-validation run; cross-corpus evaluation takes single runs")
    train_labels = load_labels(work)
    labels, record = crosscorpus.load_eval_labels(args.eval_work, train_labels, args.label_map)
    checks = {
        name: rundirs.check_run_data(work / "runs" / name, work / "labels.json", args.allow_changed_data)
        for name in args.run
    }
    print(crosscorpus.short(record))
    datasets = {}
    results = {name: evaluate_cross_run(work / "runs" / name, labels, record, args, boot, datasets, checks[name])
               for name in args.run}  # fmt: skip
    return results[args.run[0]] if len(args.run) == 1 else results


def evaluate_cross_run(run_dir: Path, labels: dict, record: dict, args, boot: dict, datasets, check) -> dict:
    """One run on the other work dir: predict its dialogs of every split asked for once, then per split write
    predictions.json, metrics.json ("cross_corpus": what was scored) and confusion_matrix.png -> {split: metrics}."""
    config = read_json(run_dir / "config.json", "run config")
    pipe, variant = args.eval_pipe or config["pipe"], args.eval_variant or config["variant"]
    cache_dir = Path(args.eval_work) / pipe / variant / "cache"
    if not cache_dir.is_dir():
        raise PipelineError(
            f"{cache_dir}: not found; run steps 2 and 3 on the evaluation corpus: python align.py --work "
            f"{args.eval_work} --pipe {pipe} (the variant {variant}), or name another with --eval-pipe/--eval-variant"
        )
    where = str(Path(args.eval_work) / "labels.json")
    splits = {s: crosscorpus.split_dialogs(config, labels, s, where) for s in crosscorpus.eval_splits(args.eval_split)}
    union = sorted({d for dialogs, _ in splits.values() for d in dialogs})
    overrides = crosscorpus.predict_overrides(config, args.eval_work, pipe, variant, union)
    predictions = predict_split(run_dir, "test", args.device, datasets, overrides=overrides)
    names = crosscorpus.label_set(read_json(Path(args.eval_work) / "labels.json", "labels file"))
    mapping = record["label_map"] or {lab: lab for lab in names}
    dropped = crosscorpus.relabel_segments(predictions, datasets, cache_dir, names, mapping)
    out = {}
    for split, (dialogs, source) in splits.items():
        chosen = set(dialogs)
        part = {
            **predictions,
            "split": split,
            "dialogs": dialogs,
            "missing_dialogs": [d for d in predictions["missing_dialogs"] if d in chosen],
            "segments": [s for s in predictions["segments"] if s["dialog"] in chosen],
        }
        cross = {
            **record,
            "name": args.eval_name,
            "split": split,
            "pipe": pipe,
            "variant": variant,
            "segment_labels_dropped_by_map": sum((s["dialog"], s["id"]) in dropped for s in part["segments"]),
            "eval_data": crosscorpus.eval_identity(args.eval_work, pipe, variant, dialogs),
        }
        folder = crosscorpus.eval_dir(run_dir, args.eval_name, split)
        atomic_write_json(folder / "predictions.json", {**part, "cross_corpus": cross})
        note = formats.demo_note(labels)
        metrics = {
            "run": run_dir.name,
            "split": split,
            "test_dialogs_from": f"{where} ({source})",
            "cross_corpus": cross,
            **({"note": note} if note else {}),
            "data_check": check,
            **score_predictions(part, labels, dialogs, where=str(folder / "predictions.json"), **boot),
        }
        atomic_write_json(folder / "metrics.json", metrics)
        title = f"{run_dir.name} on {args.eval_name} ({split})" + (" (DEMO data)" if note else "")
        plot_confusion(metrics, folder / "confusion_matrix.png", title=title)
        report(f"{run_dir.name} on {args.eval_name} ({split})", metrics)
        print(f"  wrote {folder / 'predictions.json'}, {folder / 'metrics.json'}, {folder / 'confusion_matrix.png'}")
        out[split] = metrics
    return out


# ---------------------------------------------------------------------------------------------
# Inference: load a run, predict a split (only this step runs the model on the test split)
# ---------------------------------------------------------------------------------------------


# load_run and run_dataset live in utils (predict.py uses them too).


def predict_split(
    run_dir, split: str = "test", device=None, datasets: dict | None = None, overrides: dict | None = None
) -> dict:
    """predictions.json content (docs/FORMATS.md) for every segment of the split's dialogs,
    labelled or not: id, dialog, start, end, speaker, text, label (str or None), pred, probs.
    Frozen runs read (or fill) the same feature cache as training (utils.cached_embeddings).
    datasets: a dict kept across calls, so that runs of one variant (seeds, modalities, fusions)
    read their test segments once. overrides: run config entries replaced (cross-corpus: another work dir's
    data, common.crosscorpus.predict_overrides)."""
    from transformers import AutoFeatureExtractor, AutoTokenizer

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, config = load_run(run_dir, device)
    config = {**config, **(overrides or {})}
    mc = utils.ModelConfig.from_run_config(config, f"{run_dir}/config.json")
    classes = formats.labels_of(config)  # the classes it was trained on (labels.json's, train.py)
    # the caches' label indices index their own work dir's classes (another corpus's under overrides)
    data_classes = formats.labels_of(load_labels(config["work"])) if overrides else classes
    cache_dir = Path(config["work"]) / config["pipe"] / config["variant"] / "cache"
    # A dialog whose cache is absent (step 2 or 3 failed on it) is listed, not read; its utterances are misses.
    absent = [d for d in config["split"][split] if not (cache_dir / f"{d}.pt").is_file()]
    dialogs = [d for d in config["split"][split] if d not in absent]
    paths = [cache_dir / f"{d}.pt" for d in dialogs]
    do_norm = getattr(AutoFeatureExtractor.from_pretrained(mc.audio_model), "do_normalize", True)
    norm_segment, norm_row = utils.normalisation_places(mc.audio_padding, do_norm)
    key = (str(cache_dir), tuple(dialogs), mc.max_audio_seconds, norm_segment)
    datasets = {} if datasets is None else datasets
    if key not in datasets:
        datasets[key] = utils.SegmentDataset(
            paths,
            labelled_only=False,
            max_audio_seconds=mc.max_audio_seconds,
            do_normalize=norm_segment,
            labels=data_classes,
        )
    dataset = datasets[key]
    tokenizer = AutoTokenizer.from_pretrained(mc.text_model) if model.modality != "audio" else None
    collator = utils.Collator(tokenizer, mc.max_text_tokens, normalize_rows=norm_row)
    bf16 = bool(config.get("bf16")) and device.type == "cuda"
    if config["mode"] == "frozen":
        feats = utils.cached_embeddings(
            model, dataset, collator, config["feature_dirs"], cache_dir, config["batch_size"], device, bf16
        )
        with torch.no_grad():
            z_t = feats["text"].to(device) if feats["text"] is not None else None
            z_a = feats["audio"].to(device) if feats["audio"] is not None else None
            logits = model.classify(z_t, z_a).float().cpu()
    else:
        logits = run_dataset(model, dataset, collator, config["batch_size"], device, bf16)
    probs = logits.softmax(-1)
    segments = []
    for seg, p in zip(dataset.segments, probs):
        segments.append(
            {
                "id": seg["id"],
                "dialog": seg["dialog"],
                "start": seg["start"],
                "end": seg["end"],
                "speaker": seg["speaker"],
                "text": seg["text"],
                "label": data_classes[seg["label"]] if seg["label"] >= 0 else None,
                "pred": classes[int(p.argmax())],
                "probs": {lab: float(v) for lab, v in zip(classes, p)},
            }
        )
    return {"run": Path(run_dir).name, "split": split, "missing_dialogs": absent, "segments": segments}


if __name__ == "__main__":
    cli.run_main(main)
