"""One command: run steps 1-6 for every configuration the paper reports, plus the ablations it leaves
open, and write the tables to results/.

    python reproduce.py                      # the embedded demo (synthetic corpus, tiny random models)
    python reproduce.py --iemocap /data/IEMOCAP_full_release --work preprocessed_iemocap   # the real thing

Experiments (paper tables in brackets):
  standard pipeline, with vs without alignment, fine-tuned extractors        [Table I, Table II]
  standard vs VAD-oracle pipeline, with alignment, TEER / sTEER              [Table III]
  frozen vs fine-tuned extractors, with alignment (and without)              [Table IV]
  single-modality baselines (text only, audio only)                          [open question]
  maximum pause 0.5 / 1.0 / 1.5 / 2.0 s, per-emotion F1                       [open question]
On the demo the standard pipeline is step 2's `simulated` backend and the VAD-oracle pipeline its
`oracle` backend; on real data they are `whisperx` and `whisperx --vad oracle`.

Every step is run in this process through its own main(argv). A step whose inputs, arguments and code
are unchanged since it last succeeded is not run again (stamps in WORK/reproduce_stamps.json), so a
re-run with nothing changed only rebuilds the tables, and changing only the pause threshold re-runs
only the alignment of that threshold and what follows from it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import utils
from evaluate import PAPER

HERE = Path(__file__).resolve().parent
DEMO_NOTE = utils.DEMO_NOTE

PAUSES = (0.5, 1.0, 1.5, 2.0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iemocap", default=None,
                   help="IEMOCAP_full_release root. Omitted: the embedded demo (generated on first use).")
    p.add_argument("--work", default=None, help="work directory (default: preprocessed_iemocap, "
                   "or demo_data/preprocessed_iemocap for the demo)")
    p.add_argument("--results", default="results", help="where tables, plots and provenance go")
    p.add_argument("--demo-dir", default="demo_data", help="demo corpus and tiny models live here")
    p.add_argument("--demo-size", choices=["default", "tiny"], default="default",
                   help="tiny: 2 sessions, 2 dialogs each (smoke test)")
    p.add_argument("--text-model", default=None, help="default roberta-base (demo: the tiny local RoBERTa)")
    p.add_argument("--audio-model", default=None, help="default facebook/wav2vec2-base (demo: tiny local wav2vec2)")
    p.add_argument("--asr-model", default="large-v2", help="WhisperX ASR model (real data)")
    p.add_argument("--align-model", default=None, help="WhisperX alignment model (real data; default: whisperx's)")
    p.add_argument("--diar-model", default="pyannote/speaker-diarization-3.1", help="pyannote pipeline (real data)")
    p.add_argument("--folds", choices=["none", "loso", "speaker-script"], default="none",
                   help="none: test on Session 5 (the paper's); loso: leave-one-session-out 5 folds; "
                        "speaker-script: speaker- and script-disjoint 5 folds (see train.py)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="default 20 (the paper's), demo 12")
    p.add_argument("--device", default=None, help="cpu or cuda (default: auto)")
    p.add_argument("--pauses", type=float, nargs="+", default=list(PAUSES),
                   help="maximum pauses (s) of the pause-threshold sweep; 1.5 (the paper's) is always run")
    p.add_argument("--only", nargs="*", default=None,
                   help="run only these experiment groups: main frozen vadoracle modality pause")
    p.add_argument("--force", action="store_true", help="ignore the stamps and run every step again")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Stamps: a step is skipped when the same step, with the same arguments, the same code and the
# same upstream stamps, already succeeded.
# ---------------------------------------------------------------------------------------------

def file_digest(*paths) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:16]


class Runner:
    def __init__(self, work: Path, force: bool):
        self.path = work / "reproduce_stamps.json"
        self.stamps = utils.read_json(self.path, "stamp file") if self.path.is_file() else {}
        self.force = force
        self.timings = []  # (step, argv, seconds, skipped)

    def run(self, name: str, module: str, argv: list[str], upstream: tuple = (), sources: tuple = (),
            redo_flag: str | None = None) -> str:
        """Run module.main(argv) unless an identical run already succeeded; return this run's key.

        The steps keep their own caches (step 2 and 3 skip finished dialogs, step 4 resumes its
        last checkpoint), which is right after an interruption but wrong once the code or an
        upstream output changed. So when the same step with the same arguments succeeded before
        under another key (or with --force), redo_flag (--overwrite / --no-resume) is added.
        """
        code = file_digest(HERE / f"{module}.py", HERE / "utils.py", *[HERE / s for s in sources])
        key = hashlib.sha256(json.dumps([module, argv, code, list(upstream)]).encode()).hexdigest()[:16]
        if key in self.stamps and not self.force:
            self.timings.append({"step": name, "argv": argv, "seconds": 0.0, "skipped": True,
                                 "first_run_seconds": self.stamps[key]["seconds"]})
            return key
        stale = self.force or any(s["module"] == module and s["argv"] == argv for s in self.stamps.values())
        run_argv = argv + ([redo_flag] if stale and redo_flag else [])
        print(f"\n=== {name}: python {module}.py {' '.join(run_argv)}", flush=True)
        t0 = time.time()
        __import__(module).main(run_argv)
        seconds = round(time.time() - t0, 2)
        self.stamps = {k: v for k, v in self.stamps.items() if not (v["module"] == module and v["argv"] == argv)}
        self.stamps[key] = {"step": name, "module": module, "argv": argv, "seconds": seconds,
                            "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        utils.atomic_write_json(self.path, self.stamps)
        self.timings.append({"step": name, "argv": run_argv, "seconds": seconds, "skipped": False, "redone": stale})
        return key


# ---------------------------------------------------------------------------------------------
# The experiment plan
# ---------------------------------------------------------------------------------------------

def setup(args):
    """Resolve corpus, work dir and model identities; build the demo corpus and models if needed."""
    demo = args.iemocap is None
    cfg = {"demo": demo}
    if demo:
        demo_dir = Path(args.demo_dir)
        corpus = demo_dir / ("IEMOCAP_full_release" if args.demo_size == "default" else "IEMOCAP_tiny")
        if not (corpus / "demo_ground_truth.json").is_file():
            from demo.make_corpus import generate

            size = {} if args.demo_size == "default" else dict(sessions=[1, 5], impro_per_session=1,
                                                               script_per_session=1, utterances_per_dialog=8)
            print(f"building the demo corpus in {corpus}", flush=True)
            generate(corpus, seed=0, **size)
        models = demo_dir / "models"
        if not (models / "roberta-tiny").is_dir() or not (models / "wav2vec2-tiny").is_dir():
            from demo.build_ser_models import build

            print(f"building tiny random SER models in {models}", flush=True)
            build(models, seed=0)
        work = demo_dir / ("preprocessed_iemocap" if args.demo_size == "default" else "preprocessed_iemocap_tiny")
        cfg.update(iemocap=str(corpus), work=args.work or str(work),
                   text_model=args.text_model or str(models / "roberta-tiny"),
                   audio_model=args.audio_model or str(models / "wav2vec2-tiny"),
                   epochs=args.epochs or 12, standard_pipe="simulated", oracle_pipe="oracle",
                   # Tiny random-init extractors need larger steps than pretrained ones (2e-5 barely moves them).
                   train_flags=["--lr-extractor", "5e-4", "--lr-head", "1e-3"])
    else:
        cfg.update(iemocap=args.iemocap, work=args.work or "preprocessed_iemocap",
                   text_model=args.text_model or "roberta-base",
                   audio_model=args.audio_model or "facebook/wav2vec2-base",
                   epochs=args.epochs or 20, standard_pipe="whisperx", oracle_pipe="whisperx-vadoracle",
                   train_flags=[])  # the paper's recipe: train.py's defaults
    return cfg


def plan_runs(cfg, only, pauses=PAUSES):
    """The training runs: (group, pipe, variant, mode, modality)."""
    std, orc = cfg["standard_pipe"], cfg["oracle_pipe"]
    runs = [("main", std, "aligned-p1.5", "finetune", "fusion"),
            ("main", std, "baseline", "finetune", "fusion"),
            ("frozen", std, "aligned-p1.5", "frozen", "fusion"),
            ("frozen", std, "baseline", "frozen", "fusion"),
            ("vadoracle", orc, "aligned-p1.5", "finetune", "fusion"),
            ("modality", std, "aligned-p1.5", "finetune", "text"),
            ("modality", std, "aligned-p1.5", "finetune", "audio")]
    runs += [("pause", std, f"aligned-p{p:g}", "finetune", "fusion") for p in sorted(set(pauses)) if p != 1.5]
    return [r for r in runs if only is None or r[0] in only]


def run_name(pipe, variant, mode, modality, seed, folds):
    return f"{pipe}__{variant}__{mode}__{modality}__s{seed}" + ("" if folds == "none" else f"__{folds}")


def run_pipeline(cfg, args, runner: Runner):
    work, iemocap = cfg["work"], cfg["iemocap"]
    k1 = runner.run("step 1 labels", "iemo_lab_with_timestamps", ["--iemocap", iemocap, "--work", work])

    runs = plan_runs(cfg, args.only, args.pauses)
    pipes = sorted({r[1] for r in runs})
    k2 = {}
    for pipe in pipes:
        if cfg["demo"]:
            argv = ["--work", work, "--backend", pipe, "--name", pipe, "--seed", str(args.seed)]
        else:
            argv = ["--work", work, "--backend", "whisperx", "--name", pipe, "--asr-model", args.asr_model,
                    "--diar-model", args.diar_model]
            if args.align_model:
                argv += ["--align-model", args.align_model]
            if pipe.endswith("vadoracle"):
                argv += ["--vad", "oracle"]
        k2[pipe] = runner.run(f"step 2 {pipe}", "preprocess", argv, upstream=(k1,),
                              sources=("iemo_lab_with_timestamps.py",), redo_flag="--overwrite")

    k3 = {}
    for pipe in pipes:
        variants = sorted({r[2] for r in runs if r[1] == pipe})
        for variant in variants:
            if variant == "baseline":
                argv = ["--work", work, "--pipe", pipe, "--variant", "baseline"]
            else:
                argv = ["--work", work, "--pipe", pipe, "--variant", "aligned", "--max-pause", variant.split("-p")[1]]
            k3[pipe, variant] = runner.run(f"step 3 {pipe}/{variant}", "align", argv, upstream=(k2[pipe],),
                                           redo_flag="--overwrite")

    done = []
    for group, pipe, variant, mode, modality in runs:
        name = run_name(pipe, variant, mode, modality, args.seed, args.folds)
        argv = ["--work", work, "--pipe", pipe, "--variant", variant, "--mode", mode, "--modality", modality,
                "--text-model", cfg["text_model"], "--audio-model", cfg["audio_model"], "--run", name,
                "--epochs", str(cfg["epochs"]), "--seed", str(args.seed), *cfg["train_flags"]]
        if args.folds != "none":
            argv += ["--folds", args.folds]
        if args.device:
            argv += ["--device", args.device]
        k4 = runner.run(f"step 4 train {name}", "train", argv, upstream=(k3[pipe, variant],), redo_flag="--no-resume")
        ev = ["--work", work, "--run", name] + (["--device", args.device] if args.device else [])
        k5 = runner.run(f"step 5 evaluate {name}", "evaluate", ev, upstream=(k4,))
        runner.run(f"step 6 TEER {name}", "teer_calculate", ["--work", work, "--run", name], upstream=(k5,))
        runner.run(f"step 6 TEER (authors' option) {name}", "teer_calculate",
                   ["--work", work, "--run", name, "--authors"], upstream=(k5,))
        done.append((group, pipe, variant, mode, modality, name))
    return done


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------

def fmt(x, scale=100.0, nd=2):
    return "-" if x is None else f"{x * scale:.{nd}f}"


def paper(x, nd=2):
    return "-" if x is None else f"{x:.{nd}f}"


def load_results(work: Path, name: str) -> dict:
    run = work / "runs" / name
    out = {"run": name, "metrics_file": str(run / "metrics.json")}
    out["metrics"] = utils.read_json(run / "metrics.json", "metrics file")
    for tag, fname in (("teer", "teer.json"), ("teer_authors", "teer_authors.json")):
        path = run / fname
        out[tag] = utils.read_json(path, "TEER file") if path.is_file() else None
    return out


def flat(res):
    """metrics.json of a run; for a multi-fold run, the metrics of all folds' predictions pooled."""
    m = res["metrics"]
    return m.get("pooled", m)


def metric(res, key):
    return flat(res).get(key)


def cell(res, key):
    """A headline metric in %; for a multi-fold run the pooled value, then mean +- std over folds."""
    text = fmt(metric(res, key))
    spread = res["metrics"].get("mean_std", {}).get(key)
    if spread:
        text += f" ({100 * spread['mean']:.2f} ± {100 * spread['std']:.2f})"
    return text


def class_f1(res, label):
    return flat(res)["per_class"][label]["f1"]


def teer_value(res, key, authors=False):
    """TEER or sTEER (fractions) from teer.json / teer_authors.json (folds are pooled at top level)."""
    t = res["teer_authors" if authors else "teer"]
    return None if t is None else t.get(key)


def scored(res):
    m = flat(res)
    return f"{m.get('n_scored', '-')}", fmt(m["coverage"]["share"], 100, 1)


def classification_row(label, res, paper_row):
    """| label | ours: acc, WF1, MF1 | n | cov | paper: acc, WF1, MF1 | the metrics file |"""
    n, cov = scored(res)
    ours = " | ".join(cell(res, k) for k in ("accuracy", "weighted_f1", "macro_f1"))
    theirs = " | ".join(paper(paper_row[k]) for k in ("accuracy", "weighted_f1", "macro_f1"))
    return f"| {label} | {ours} | {n} | {cov} | {theirs} | `{res['metrics_file']}` |"


def write_tables(cfg, done, results: Path, work: Path, args_pauses=PAUSES):
    by = {(g, p, v, mo, md): n for g, p, v, mo, md, n in done}
    R = {key: load_results(work, name) for key, name in by.items()}
    std, orc = cfg["standard_pipe"], cfg["oracle_pipe"]

    def get(pipe, variant, mode="finetune", modality="fusion"):
        for (g, p, v, mo, md), res in R.items():
            if (p, v, mo, md) == (pipe, variant, mode, modality):
                return res
        return None

    lines = ["# Reproduction of Wang, Lee, Chen (IALP 2025), Tables I-IV and ablations", ""]
    if cfg["demo"]:
        lines += [f"> **{DEMO_NOTE}**", ""]
    lines += ["Ours: numbers computed by this repository's runs (each row names the metrics file it comes from). "
              "Paper: the numbers printed in the paper, for reference. `n` = segments scored, "
              "`cov` = share (%) of the labelled reference speech of the test dialogs that the scored segments cover: "
              f"the paper's with- and without-alignment accuracies were computed on {PAPER['test_segments']['aligned']} "
              f"and {PAPER['test_segments']['without-alignment']} test segments, "
              "so accuracy alone does not compare pipelines."]
    if any("mean_std" in r["metrics"] for r in R.values()):
        lines += ["", "Fold runs: the metric of all folds' test predictions pooled, then (mean ± std over folds)."]
    lines.append("")

    al, bl = get(std, "aligned-p1.5"), get(std, "baseline")
    if al and bl:
        lines += ["## Table I: overall results (standard pipeline, fine-tuned extractors)", "",
                  "| Setup | Acc ours | WF1 ours | MF1 ours | n | cov % | Acc paper | WF1 paper | MF1 paper | source |",
                  "|---|---|---|---|---|---|---|---|---|---|",
                  f"| Wu et al. (6 classes) | - | - | - | - | - | {paper(PAPER['table1']['wu2023']['accuracy'])} | - | - | paper |"]
        lines += [classification_row(label, res, PAPER["table1"][pk]) for label, res, pk in (
            ("Without alignment", bl, "without-alignment"), ("Proposed (with alignment)", al, "aligned"))]
        lines += ["", "## Table II: per-emotion F1 without vs with alignment", "",
                  "| Emotion | without (ours) | with (ours) | without (paper) | with (paper) |", "|---|---|---|---|---|"]
        for lab in utils.LABELS:
            pw, pa = PAPER["table2"]["without-alignment"][lab], PAPER["table2"]["aligned"][lab]
            lines.append(f"| {utils.LABEL_NAMES[lab]} | {class_f1(bl, lab):.2f} | {class_f1(al, lab):.2f} | {pw:.2f} | {pa:.2f} |")
        lines += ["", f"Sources: `{bl['metrics_file']}`, `{al['metrics_file']}`.", ""]

    ora = get(orc, "aligned-p1.5")
    if al and ora:
        lines += ["## Table III: TEER and sTEER across pipelines (with alignment, fine-tuned)", "",
                  "Default scoring follows the original definition (emotions compared by identity, collar 0.25 s, "
                  "reference extent); the authors' option maps labels optimally (DiarizationErrorRate), collar 0, "
                  "union of extents.", "",
                  "| Pipeline | TEER % | sTEER % | TEER % (authors' scoring) | sTEER % (authors' scoring) | TEER paper | sTEER paper | source |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| Wu et al. (6 classes) | - | - | - | - | {PAPER['table3']['wu2023']['TEER']:.2f} | {PAPER['table3']['wu2023']['sTEER']:.2f} | paper |"]
        for label, res, pk in (("Standard", al, "standard"), ("VAD-oracle", ora, "vad-oracle")):
            lines.append(f"| {label} ({res['run'].split('__')[0]}) | {fmt(teer_value(res, 'TEER'))} | {fmt(teer_value(res, 'sTEER'))} | "
                         f"{fmt(teer_value(res, 'TEER', True))} | {fmt(teer_value(res, 'sTEER', True))} | "
                         f"{PAPER['table3'][pk]['TEER']:.2f} | {PAPER['table3'][pk]['sTEER']:.2f} | `{Path(res['metrics_file']).parent}/teer*.json` |")
        lines.append("")

    fz = get(std, "aligned-p1.5", "frozen")
    if al and fz:
        lines += ["## Table IV: frozen vs fine-tuned extractors (with alignment)", "",
                  "| Strategy | Acc ours | WF1 ours | MF1 ours | n | cov % | Acc paper | WF1 paper | MF1 paper | source |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        lines += [classification_row(label, res, PAPER["table4"][pk]) for label, res, pk in (
            ("Frozen embeddings", fz, "frozen"), ("Fine-tuned embeddings", al, "finetune"))]
        p1, p4 = PAPER["table1"], PAPER["table4"]
        if p4["frozen"] == p1["without-alignment"]:
            lines += ["", "Note: the paper's frozen row repeats its Table I without-alignment row exactly."]
        if p4["finetune"]["weighted_f1"] != p1["aligned"]["weighted_f1"]:
            lines += ["", f"Note: the paper's fine-tuned weighted F1 here ({p4['finetune']['weighted_f1']:.2f}) differs "
                      f"from its Table I ({p1['aligned']['weighted_f1']:.2f})."]
        lines.append("")

    extra = [(lab, get(std, v, mo, md)) for lab, v, mo, md in (
        ("fusion, fine-tuned, with alignment", "aligned-p1.5", "finetune", "fusion"),
        ("text only, fine-tuned, with alignment", "aligned-p1.5", "finetune", "text"),
        ("audio only, fine-tuned, with alignment", "aligned-p1.5", "finetune", "audio"),
        ("fusion, frozen, without alignment", "baseline", "frozen", "fusion"))]
    extra = [(lab, res) for lab, res in extra if res]
    if len(extra) > 1:
        lines += ["## Ablation: single-modality baselines and the frozen baseline (not in the paper)", "",
                  "| Configuration | Acc | WF1 | MF1 | UA | n | cov % | source |", "|---|---|---|---|---|---|---|---|"]
        for lab, res in extra:
            n, cov = scored(res)
            lines.append(f"| {lab} | {fmt(metric(res, 'accuracy'))} | {fmt(metric(res, 'weighted_f1'))} | "
                         f"{fmt(metric(res, 'macro_f1'))} | {fmt(metric(res, 'ua'))} | {n} | {cov} | `{res['metrics_file']}` |")
        lines.append("")

    sweep = [(p, get(std, f"aligned-p{p:g}")) for p in sorted({1.5, *args_pauses})]
    sweep = [(p, r) for p, r in sweep if r]
    if len(sweep) > 1:
        lines += ["## Ablation: maximum pause of the alignment (not in the paper; the paper uses 1.5 s, the authors' code 1.0 s)", "",
                  "| max pause (s) | Acc | MF1 | " + " | ".join(f"F1 {lab}" for lab in utils.LABELS) + " | n | cov % | TEER % | source |",
                  "|---|---|---|" + "---|" * len(utils.LABELS) + "---|---|---|---|"]
        for p, res in sweep:
            n, cov = scored(res)
            lines.append(f"| {p:g} | {fmt(metric(res, 'accuracy'))} | {fmt(metric(res, 'macro_f1'))} | "
                         + " | ".join(f"{class_f1(res, lab):.2f}" for lab in utils.LABELS)
                         + f" | {n} | {cov} | {fmt(teer_value(res, 'TEER'))} | `{res['metrics_file']}` |")
        lines += ["", "![per-emotion F1 vs maximum pause](pause_sweep.png)", ""]
        plot_sweep(sweep, results / "pause_sweep.png", cfg["demo"])

    report = work / cfg["standard_pipe"] / "alignment_report.md"
    if report.is_file():
        lines += ["## Alignment report (standard pipeline)", "", f"From `{report}`:", "", report.read_text(), ""]
    utils.atomic_write_text(results / "tables.md", "\n".join(lines) + "\n")
    for key, res in R.items():
        png = Path(res["metrics_file"]).parent / "confusion_matrix.png"
        if png.is_file():
            (results / "confusion_matrices").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, results / "confusion_matrices" / f"{res['run']}.png")
    return R


def plot_sweep(sweep, path: Path, demo: bool):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    xs = [p for p, _ in sweep]
    for lab in utils.LABELS:
        ax.plot(xs, [class_f1(r, lab) for _, r in sweep], marker="o", label=utils.LABEL_NAMES[lab])
    ax.set_xlabel("maximum pause inside a turn (s)")
    ax.set_ylabel("F1 (test)")
    ax.set_title("Per-emotion F1 vs pause threshold" + (" (DEMO data)" if demo else ""))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    t0 = time.time()
    cfg = setup(args)
    work, results = Path(cfg["work"]), Path(args.results)
    work.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    runner = Runner(work, args.force)
    done = run_pipeline(cfg, args, runner)
    write_tables(cfg, done, results, work, args.pauses)

    ran = [t for t in runner.timings if not t["skipped"]]
    provenance = {
        "note": DEMO_NOTE if cfg["demo"] else "real-data run",
        "code": utils.code_version(), "command": [sys.executable, *sys.argv],
        "python": platform.python_version(), "platform": platform.platform(),
        "config": cfg, "seed": args.seed, "folds": args.folds,
        "runs": {name: f"{cfg['work']}/runs/{name}" for *_, name in done},
        "steps": runner.timings, "total_seconds": round(time.time() - t0, 2),
    }
    labels = utils.load_labels(work)
    provenance["corpus"] = {"path": labels["corpus"], "dialogs": len(labels["dialogs"]),
                            "utterances": sum(len(d["utterances"]) for d in labels["dialogs"].values()),
                            "labelled_4class": sum(u["label"] is not None for d in labels["dialogs"].values()
                                                   for u in d["utterances"])}
    if cfg["demo"]:
        truth = utils.read_json(Path(cfg["iemocap"]) / "demo_ground_truth.json", "demo ground truth")
        provenance["corpus"].update(kind="demo", seed=truth.get("seed"), generator_args=truth.get("args"))
    provenance["models"] = {"text": utils.extractor_identity(cfg["text_model"]),
                            "audio": utils.extractor_identity(cfg["audio_model"])}
    utils.atomic_write_json(results / "provenance.json", provenance)
    print(f"\n{len(ran)} steps ran, {len(runner.timings) - len(ran)} were up to date; "
          f"{time.time() - t0:.1f} s in all")
    print(f"tables: {results / 'tables.md'}   provenance: {results / 'provenance.json'}")
    if cfg["demo"]:
        print(DEMO_NOTE)


if __name__ == "__main__":
    main()
