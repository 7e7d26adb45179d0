"""Time the TEER scorer (teer_calculate.py) on an IEMOCAP-sized synthetic test: 151 dialogs,
about 10,000 reference utterances and as many system segments, both with overlapping speech.

    python benchmarks/bench_teer.py [--dialogs 151] [--per-dialog 66] [--seed 0]
    python benchmarks/bench_teer.py --small     # 3 dialogs of 10 utterances, once (a smoke test)
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import teer_calculate as tc  # noqa: E402
from common.formats import LABELS  # noqa: E402


def synthetic(n_dialogs: int, per_dialog: int, seed: int):
    """labels.json-like reference and predictions.json-like system output: alternating F/M turns
    with pauses and some overlap; the system's boundaries jittered, 20% of labels wrong."""
    rng = np.random.default_rng(seed)
    labels, segments = {"dialogs": {}}, []
    for d in range(n_dialogs):
        dialog = f"Ses{1 + d % 5:02d}F_impro{d:03d}"
        durations = rng.uniform(1.0, 8.0, per_dialog)
        starts = np.maximum(np.cumsum(durations + rng.uniform(-0.5, 1.5, per_dialog)) - durations, 0.0)
        codes = rng.choice(list(LABELS) + [None], per_dialog, p=[0.2, 0.2, 0.2, 0.2, 0.2])
        utts = [
            {
                "id": f"{dialog}_{'FM'[i % 2]}{i:03d}",
                "start": float(s),
                "end": float(s + du),
                "speaker": "FM"[i % 2],
                "label": c,
            }
            for i, (s, du, c) in enumerate(zip(starts, durations, codes))
        ]
        labels["dialogs"][dialog] = {"session": 1 + d % 5, "utterances": utts}
        for i, u in enumerate(utts):
            pred = u["label"] if (u["label"] and rng.random() < 0.8) else str(rng.choice(LABELS))
            # jittered boundaries, kept valid (0 <= start < end: the scorer refuses others)
            start = max(0.0, u["start"] + rng.normal(0, 0.3))
            end = max(start + 0.01, u["end"] + rng.normal(0, 0.3))
            segments.append(
                {
                    "id": f"{dialog}-{i:04d}",
                    "dialog": dialog,
                    "start": start,
                    "end": end,
                    "speaker": f"SPEAKER_0{(i + d) % 2}",
                    "label": u["label"],
                    "pred": pred,
                }
            )
    return labels, {"segments": segments}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dialogs", type=int, default=151)
    p.add_argument("--per-dialog", type=int, default=66)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--small", action="store_true", help="3 dialogs of 10 utterances, scored once: runs in a second")
    args = p.parse_args(argv)
    if args.small:
        args.dialogs, args.per_dialog, args.repeats = 3, 10, 1
    labels, predictions = synthetic(args.dialogs, args.per_dialog, args.seed)
    dialogs = sorted(labels["dialogs"])
    n_ref = sum(len(v["utterances"]) for v in labels["dialogs"].values())
    print(
        f"synthetic test set: {len(dialogs)} dialogs, {n_ref} reference utterances, "
        f"{len(predictions['segments'])} system segments"
    )
    flags = argparse.Namespace(collar=0.25, uem="extent", nontarget="exclude", empty_dialogs="missed", authors=False)
    presets = {
        "default (Wu et al.)": tc.settings_from_args(flags),
        "--authors": tc.settings_from_args(argparse.Namespace(**{**vars(flags), "authors": True})),
    }
    results = {}
    for name, settings in presets.items():
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            r = tc.score_predictions(predictions, labels, dialogs, settings)
            times.append(time.perf_counter() - t0)
        print(
            f"{name:20s} best of {args.repeats}: {min(times):.3f} s  "
            f"(TEER {100 * r['TEER']:.2f}%, sTEER {100 * r['sTEER']:.2f}%)"
        )
        results[name] = {"seconds": min(times), "TEER": r["TEER"], "sTEER": r["sTEER"]}
    return results


if __name__ == "__main__":
    main()
