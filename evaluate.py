"""Step 5: classify the test segments of a trained run and score them (paper Section IV-C, Tables I, II, IV).

For WORK/runs/<run>/ this writes
  predictions.json      every test segment: id, dialog, times, speaker, text, true label (or null),
                        predicted label, class probabilities (utils.predict_split)
  metrics.json          on the labelled segments: accuracy (= weighted average recall, WA),
                        unweighted average recall (UA), weighted F1, macro F1, per-class
                        precision / recall / F1 / support, confusion matrix (rows true, columns
                        predicted, order utils.LABELS); plus n_scored, n_segments and coverage
  confusion_matrix.png
Accuracy alone does not compare pipelines: each pipeline cuts the audio into its own segments
(the paper's with- and without-alignment accuracies were computed on test sets of 1618 and 308
segments), so every metrics file also says how many segments were scored and what share of the
reference's labelled speech they cover.

A run with folds (fold<k>/ subfolders, listed in the top-level config.json) is evaluated fold by
fold; the top-level metrics.json holds the mean and std over folds (population std, ddof=0) and
the metrics of all folds' predictions pooled.

    python evaluate.py --work preprocessed_iemocap --run NAME [--device cuda]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import utils
from teer_calculate import fold_dirs, merge_intervals, run_test_dialogs
from utils import LABELS, PipelineError, atomic_write_json, load_labels, read_json

# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def confusion_matrix(y_true, y_pred, labels=LABELS) -> np.ndarray:
    """[n_labels, n_labels] counts, rows = true label, columns = predicted label."""
    index = {lab: i for i, lab in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(y_true, y_pred):
        if t not in index or p not in index:
            raise PipelineError(f"label {t!r} or prediction {p!r} is not one of {tuple(labels)}")
        cm[index[t], index[p]] += 1
    return cm


def classification_metrics(y_true, y_pred, labels=LABELS) -> dict:
    """Accuracy (WA), UA, weighted and macro F1, per-class P/R/F1/support, confusion matrix.

    Conventions (those of scikit-learn with zero_division=0): a ratio with a zero denominator
    is 0; macro F1 averages over all `labels`; weighted F1 weights by support. UA (unweighted
    average recall) averages recall over the classes present in y_true (as
    sklearn.metrics.balanced_accuracy_score), since recall is undefined for an absent class.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    cm = confusion_matrix(y_true, y_pred, labels)
    n = int(cm.sum())
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(axis=1).astype(float), cm.sum(axis=0).astype(float)

    def safe(num, den):
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0)

    precision, recall = safe(tp, predicted), safe(tp, support)
    f1 = safe(2 * tp, support + predicted)  # = 2PR/(P+R), 0 when the class is neither true nor predicted
    present = support > 0
    return {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "ua": float(recall[present].mean()) if present.any() else 0.0,
        "weighted_f1": float((f1 * support).sum() / n) if n else 0.0,
        "macro_f1": float(f1.mean()),
        "per_class": {lab: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                            "support": int(support[i])} for i, lab in enumerate(labels)},
        "labels": list(labels),
        "confusion_matrix": cm.tolist(),
    }


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
    return {"labelled_reference_s": reference, "covered_s": covered,
            "share": covered / reference if reference > 0 else None}


def check_predictions(predictions: dict, where: str) -> list:
    """Validate the predictions.json shape; return its segments."""
    segments = predictions.get("segments") if isinstance(predictions, dict) else None
    if not isinstance(segments, list):
        raise PipelineError(f"{where}: expected {{'segments': [...]}} (predictions.json)")
    for n, s in enumerate(segments):
        missing = [k for k in ("id", "dialog", "start", "end", "speaker", "label", "pred") if k not in s]
        if missing:
            raise PipelineError(f"{where}: segment {n} lacks {missing}")
        if s["pred"] not in LABELS or (s["label"] is not None and s["label"] not in LABELS):
            raise PipelineError(f"{where}: segment {n} ({s['id']}): label {s['label']!r} / pred {s['pred']!r}, "
                                f"expected one of {LABELS} (label may be null)")
    return segments


def score_predictions(predictions: dict, labels: dict, dialogs, where: str = "predictions") -> dict:
    """metrics.json content for one predictions dict over the test `dialogs`."""
    segments = check_predictions(predictions, where)
    scored = [s for s in segments if s["label"] is not None]
    metrics = classification_metrics([s["label"] for s in scored], [s["pred"] for s in scored])
    utterances = {d: labels["dialogs"][d]["utterances"] for d in dialogs if d in labels["dialogs"]}
    missing = sorted(set(dialogs) - set(utterances))
    if missing:
        raise PipelineError(f"labels.json lacks test dialogs {missing[:5]}{'...' if len(missing) > 5 else ''}")
    return {"n_segments": len(segments), "n_scored": len(scored), "n_unlabelled": len(segments) - len(scored),
            "n_dialogs": len(dialogs), "coverage": coverage(scored, utterances), **metrics}


HEADLINE = ("accuracy", "ua", "weighted_f1", "macro_f1")


def aggregate(per_fold: dict) -> dict:
    """Mean and population std over folds of the headline metrics, per-class F1 and coverage."""
    def stats(values):
        values = [v for v in values if v is not None]
        return {"mean": float(np.mean(values)), "std": float(np.std(values))} if values else None

    folds = list(per_fold.values())
    out = {k: stats([m[k] for m in folds]) for k in HEADLINE}
    out["per_class_f1"] = {lab: stats([m["per_class"][lab]["f1"] for m in folds]) for lab in LABELS}
    out["coverage_share"] = stats([m["coverage"]["share"] for m in folds])
    out["n_scored"] = sum(m["n_scored"] for m in folds)
    out["n_segments"] = sum(m["n_segments"] for m in folds)
    return out


# The paper's reported numbers (Wang, Lee, Chen, IALP 2025, Tables I-IV), quoted for comparison only:
# reproduce.py prints them beside ours where the configuration matches. Percentages, F1 in Table II as
# fractions, as printed in the paper.
PAPER = {
    "table1": {"wu2023": {"accuracy": 49.49, "weighted_f1": None, "macro_f1": None},
               "without-alignment": {"accuracy": 56.82, "weighted_f1": 53.87, "macro_f1": 47.10},
               "aligned": {"accuracy": 66.81, "weighted_f1": 66.88, "macro_f1": 66.48}},
    "table2": {"without-alignment": {"hap": 0.64, "ang": 0.38, "sad": 0.26, "neu": 0.61},
               "aligned": {"hap": 0.73, "ang": 0.64, "sad": 0.67, "neu": 0.62}},
    "table3": {"wu2023": {"TEER": 66.03, "sTEER": 65.17}, "standard": {"TEER": 89.35, "sTEER": 90.96},
               "vad-oracle": {"TEER": 53.90, "sTEER": 62.54}},
    "table4": {"frozen": {"accuracy": 56.82, "weighted_f1": 53.87, "macro_f1": 47.10},
               "finetune": {"accuracy": 66.81, "weighted_f1": 66.81, "macro_f1": 66.48}},
    # Test-set sizes behind the authors' Table I accuracies (their evaluation outputs).
    "test_segments": {"aligned": 1618, "without-alignment": 308},
}


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------


def plot_confusion(metrics: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.array(metrics["confusion_matrix"])
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    fig, ax = plt.subplots(figsize=(4.6, 4))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]}\n{100 * share[i, j]:.0f}%", ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(LABELS)), LABELS)
    ax.set_yticks(range(len(LABELS)), LABELS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}\nacc {100 * metrics['accuracy']:.2f}%  UA {100 * metrics['ua']:.2f}%", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def report(name: str, m: dict) -> None:
    cov = m["coverage"]
    share = "n/a" if cov["share"] is None else f"{100 * cov['share']:.1f}%"
    print(f"{name}: scored {m['n_scored']} labelled of {m['n_segments']} segments "
          f"({m['n_unlabelled']} without a 4-class label not scored) in {m['n_dialogs']} dialogs; "
          f"they cover {share} of {cov['labelled_reference_s']:.1f} s labelled reference speech")
    print(f"  accuracy (WA) {100 * m['accuracy']:.2f}%  UA {100 * m['ua']:.2f}%  "
          f"weighted F1 {100 * m['weighted_f1']:.2f}%  macro F1 {100 * m['macro_f1']:.2f}%")
    print("  class  precision  recall     F1  support")
    for lab, c in m["per_class"].items():
        print(f"  {lab:5s}  {c['precision']:9.3f}  {c['recall']:6.3f}  {c['f1']:5.3f}  {c['support']:7d}")
    print("  confusion (rows true, cols pred " + " ".join(LABELS) + "):")
    for lab, row in zip(LABELS, m["confusion_matrix"]):
        print(f"    {lab:5s} " + " ".join(f"{x:5d}" for x in row))


def evaluate_run(run_dir: Path, labels: dict, device, reuse: bool) -> tuple[dict, dict]:
    """Predict (or reuse) and score one run dir; writes its predictions, metrics and plot."""
    pred_path = run_dir / "predictions.json"
    if reuse and pred_path.is_file():
        predictions = read_json(pred_path, "predictions file")
        print(f"  reused {pred_path} (--reuse-predictions)")
    else:
        predictions = utils.predict_split(run_dir, split="test", device=device)
        check_predictions(predictions, f"utils.predict_split({run_dir}) -> {pred_path}")
        atomic_write_json(pred_path, predictions)
        print(f"  wrote {pred_path}")
    dialogs, source = run_test_dialogs(run_dir, predictions, labels)
    note = utils.demo_note(labels)
    metrics = {"run": str(run_dir.name), "split": predictions.get("split", "test"), "test_dialogs_from": source,
               **({"note": note} if note else {}), **score_predictions(predictions, labels, dialogs, where=str(pred_path))}
    atomic_write_json(run_dir / "metrics.json", metrics)
    title = str(run_dir.relative_to(run_dir.parent.parent)) + (" (DEMO data)" if note else "")
    plot_confusion(metrics, run_dir / "confusion_matrix.png", title=title)
    print(f"  wrote {run_dir / 'metrics.json'}, {run_dir / 'confusion_matrix.png'}")
    return predictions, metrics


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--work", default="preprocessed_iemocap", help="work directory (default: %(default)s)")
    p.add_argument("--run", required=True, help="run name: WORK/runs/<run>/ written by train.py")
    p.add_argument("--device", default=None, help="torch device for prediction (default: cuda if available, else cpu)")
    p.add_argument("--reuse-predictions", action="store_true",
                   help="score an existing predictions.json instead of running the model again")
    args = p.parse_args(argv)

    work, run_dir = Path(args.work), Path(args.work) / "runs" / args.run
    if not run_dir.is_dir():
        raise PipelineError(f"{run_dir}: run directory not found; train it first: python train.py --run {args.run}")
    labels = load_labels(work)
    print(f"read {work / 'labels.json'} ({len(labels['dialogs'])} dialogs)")

    folds = fold_dirs(run_dir)
    if not folds:
        _, metrics = evaluate_run(run_dir, labels, args.device, args.reuse_predictions)
        report(args.run, metrics)
        if "note" in metrics:
            print(metrics["note"])
        return metrics

    per_fold, pooled_segments, pooled_dialogs = {}, [], []
    for f in folds:
        print(f"fold {f.name}:")
        predictions, per_fold[f.name] = evaluate_run(f, labels, args.device, args.reuse_predictions)
        pooled_segments += predictions["segments"]
        pooled_dialogs += run_test_dialogs(f, predictions, labels)[0]
    note = utils.demo_note(labels)
    metrics = {"run": args.run, "split": "test", **({"note": note} if note else {}), "folds": per_fold,
               "mean_std": aggregate(per_fold),
               "pooled": score_predictions({"segments": pooled_segments}, labels, sorted(set(pooled_dialogs)))}
    atomic_write_json(run_dir / "metrics.json", metrics)
    plot_confusion(metrics["pooled"], run_dir / "confusion_matrix.png",
                   title=f"{args.run} (all folds pooled)" + (" (DEMO data)" if note else ""))
    for name, m in per_fold.items():
        report(name, m)
    report(f"{args.run} pooled", metrics["pooled"])
    agg = metrics["mean_std"]
    print(f"{args.run} over {len(folds)} folds (mean ± std): "
          + "  ".join(f"{k} {100 * agg[k]['mean']:.2f} ± {100 * agg[k]['std']:.2f}%" for k in HEADLINE))
    print(f"wrote {run_dir / 'metrics.json'}, {run_dir / 'confusion_matrix.png'}")
    if note:
        print(note)
    return metrics


if __name__ == "__main__":
    main()
