"""One command: run steps 1-6 for every configuration the paper reports, plus the ablations it leaves
open, with several seeds, and write the tables to results/.

    python reproduce.py                      # the embedded demo (synthetic corpus, tiny random models)
    python reproduce.py --iemocap /data/IEMOCAP_full_release --work preprocessed_iemocap   # the real thing
    python reproduce.py --check [--iemocap ...]   # preflight in seconds, writing nothing (preflight())

Experiment groups (--only; paper tables in brackets):
  main       standard pipeline, with vs without alignment, fine-tuned extractors     [Tables I, II]
  vadoracle  standard vs VAD-oracle pipeline, with alignment, TEER / sTEER            [Table III]
  frozen     frozen vs fine-tuned extractors, with alignment (and without)            [Table IV]
  modality   single-modality baselines (text only, audio only)                        [open question]
  pause      maximum pause 0.5 / 1.0 / 1.5 / 2.0 s, per-emotion F1                     [open question]
  fusion     gated cross-attention vs no gate, concatenation MLP, late fusion          [the paper's future work]
  wu6        Wu et al.'s six classes (step 1 --label-set wu6, its own work dir WORK_wu6): standard pipeline with
             alignment, fine-tuned, TEER / sTEER, beside Wu et al.'s printed numbers (IEMOCAP corpora only)

Every step runs as its own process, printed before it runs; a step item unchanged since it last succeeded is
not run again, so a re-run with nothing changed only rebuilds the tables. The demo ends with step 7 on a
held-out dialog (results/predict/). The pipelines, seeds, how the table cells and intervals are computed:
docs/EXPERIMENTS.md; running on IEMOCAP: docs/REAL_DATA.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import utils
from common import checklist, cli, defaults, fileio, formats, modelhub, rundirs, scoring
from common.cli import PipelineError
from common.formats import LABELS
from common.scoring import PAPER

HERE = Path(__file__).resolve().parent
PAUSES = (0.5, 1.0, 1.5, 2.0)
GROUPS = ("main", "vadoracle", "frozen", "modality", "pause", "fusion", "wu6")
WU6_WORK_SUFFIX = "_wu6"  # the wu6 group's work directory: WORK + this (its own labels.json, steps 2-6)
HEADLINE_GROUPS = ("main", "vadoracle", "frozen")
DEFAULT_FUSION = utils.FUSIONS[0]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for add_flags in (
        add_corpus_flags,
        add_output_flags,
        add_model_flags,
        add_training_flags,
        add_runtime_flags,
        add_experiment_flags,
        add_control_flags,
        add_cross_flags,
    ):
        add_flags(p)
    args = p.parse_args(argv)
    if args.seeds < 1 or (args.ablation_seeds is not None and args.ablation_seeds < 1):
        p.error("--seeds and --ablation-seeds must be at least 1")
    if args.epochs is not None and args.epochs < 1:  # not "0 means the default"
        p.error(f"--epochs must be at least 1, got {args.epochs}")
    if min(args.pauses) < 0:
        p.error(f"--pauses must be >= 0 s, got {min(args.pauses):g}")
    return args


def add_corpus_flags(p: argparse.ArgumentParser) -> None:
    """The corpus: IEMOCAP, any corpus as a CSV (with its audio root and emotion map), or the demo."""
    p.add_argument(
        "--iemocap",
        default=None,
        help="IEMOCAP_full_release root. Omitted: the embedded demo (generated on first use).",
    )
    p.add_argument(
        "--corpus-csv",
        default=None,
        metavar="CSV",
        help="any corpus: step 1 is corpus_from_csv.py on this CSV instead of iemo_lab_with_timestamps.py "
        "(docs/FORMATS.md); the audio is under --audio-root (default: the CSV's folder). With "
        "--iemocap absent the demo's backends and tiny models are used, as for the demo corpus",
    )
    p.add_argument("--audio-root", default=None, help="with --corpus-csv: the folder the CSV's audio paths start from")
    p.add_argument(
        "--emotion-map", default=None, help="with --corpus-csv: its labels -> the four classes (corpus_from_csv.py)"
    )


def add_output_flags(p: argparse.ArgumentParser) -> None:
    """Where the run writes: the work directory, the results, the demo corpus and its size."""
    p.add_argument(
        "--work",
        default=None,
        help="work directory (default: preprocessed_iemocap, or demo_data/preprocessed_iemocap for the demo)",
    )
    p.add_argument("--results", default="results", help="where tables, plots and provenance go")
    p.add_argument("--demo-dir", default="demo_data", help="demo corpus and tiny models live here")
    p.add_argument(
        "--demo-size",
        choices=["default", "tiny"],
        default="default",
        help="tiny: 2 sessions, 2 dialogs each (smoke test)",
    )


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """The models: the two extractors and step 2's ASR, alignment and diarization models."""
    p.add_argument("--text-model", default=None, help="default roberta-base (demo: the tiny local RoBERTa)")
    p.add_argument("--audio-model", default=None, help="default facebook/wav2vec2-base (demo: tiny local wav2vec2)")
    p.add_argument("--asr-model", default=defaults.ASR_MODEL, help="WhisperX ASR model (real data)")
    p.add_argument("--align-model", default=None, help="WhisperX alignment model (real data; default: whisperx's)")
    p.add_argument("--diar-model", default=defaults.DIAR_MODEL, help="pyannote pipeline (real data)")
    p.add_argument(
        "--model-dir",
        default=None,
        help="real data: local model copies made by preprocess.py --download-models (passed to step 2)",
    )
    p.add_argument("--cache-only", action="store_true", help="real data: step 2 never reaches for the network")


def add_training_flags(p: argparse.ArgumentParser) -> None:
    """How each configuration trains: folds, seeds, epochs, the ablation groups' extractors."""
    p.add_argument(
        "--folds",
        choices=["none", "loso", "speaker-script"],
        default="none",
        help="none: test on Session 5 (the paper's); loso: leave-one-session-out 5 folds; "
        "speaker-script: speaker- and script-disjoint 5 folds (see train.py)",
    )
    p.add_argument("--seed", type=int, default=0, help="the first seed; seeds are seed, seed+1, ...")
    p.add_argument("--seeds", type=int, default=3, help="seeds per configuration of the headline groups")
    p.add_argument(
        "--ablation-seeds",
        type=int,
        default=None,
        help="seeds per configuration of the ablation groups (default: --seeds; the demo: 1)",
    )
    p.add_argument("--epochs", type=int, default=None, help="default 20 (the authors'), demo 8")
    p.add_argument(
        "--ablation-mode",
        choices=["frozen", "finetune"],
        default="finetune",
        help="extractors of the ablation groups modality and pause (default: fine-tuned, as the headline runs)",
    )
    p.add_argument(
        "--fusion-mode",
        choices=["frozen", "finetune"],
        default="finetune",
        help="extractors of the fusion group (default: fine-tuned, as the headline runs; frozen trains "
        "on cached embeddings only)",
    )


def add_runtime_flags(p: argparse.ArgumentParser) -> None:
    """Where and how many at once: the device and the parallel step invocations."""
    p.add_argument("--device", default=None, help="cpu or cuda (default: auto)")
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="step invocations run at once (pipelines, train.py sweeps, evaluation shares; see Runner), "
        "each with cores/jobs threads; default: the CPU cores on the demo (one thread each, so its "
        "numbers do not depend on the machine's core count), 1 on real data (one GPU)",
    )


def add_experiment_flags(p: argparse.ArgumentParser) -> None:
    """Which experiments run and how they are scored: pauses, groups, bootstrap."""
    p.add_argument(
        "--pauses",
        type=float,
        nargs="+",
        default=list(PAUSES),
        help="maximum pauses (s) of the pause-threshold sweep; 1.5 (the paper's) is always run",
    )
    p.add_argument(
        "--only",
        nargs="*",
        default=None,
        choices=GROUPS,
        metavar="GROUP",
        help=f"run only these experiment groups: {' '.join(GROUPS)}",
    )
    p.add_argument(
        "--bootstrap-samples", type=int, default=1000, help="resamples of the dialogs for intervals and paired tests"
    )
    p.add_argument(
        "--bootstrap-seed", type=int, default=0, help="seed of every bootstrap (the tables are reproducible)"
    )


def add_control_flags(p: argparse.ArgumentParser) -> None:
    """Run everything again (--force) or only check (--check)."""
    p.add_argument("--force", action="store_true", help="ignore the stamps and run every step again")
    p.add_argument(
        "--check",
        action="store_true",
        help="preflight only, writing nothing: the --check of step 1, of step 2 for each pipeline and of "
        "train.py for the extractors, with the flags this run would pass (see preflight()); "
        "exit status 1 on any problem",
    )


# ---------------------------------------------------------------------------------------------
# Running steps: one process per invocation, stamps per item
# ---------------------------------------------------------------------------------------------


def file_digest(*paths) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:16]


def variant_data(work, pipe: str, variant: str) -> str:
    """What step 3 last wrote for a variant, cheaply: labels.json's digest, the manifest's config and
    each dialog's key (align.py gives a dialog a new key whenever it rewrites it from other inputs or
    settings). A train item's upstream, so a step-1 or step-3 re-run outside this command that changes a
    run's data retrains the run (--no-resume) instead of leaving evaluate.py to refuse it
    (common.rundirs.check_run_data); unchanged data keeps the stamps."""
    work = Path(work)
    manifest = work / pipe / variant / "manifest.json"
    m = fileio.read_json(manifest, "alignment manifest") if manifest.is_file() else {}
    m = m if isinstance(m, dict) else {}
    keys = {d: e.get("key") for d, e in (m.get("dialogs") or {}).items() if isinstance(e, dict)}
    labels = file_digest(work / "labels.json") if (work / "labels.json").is_file() else ""
    return hashlib.sha256(json.dumps([labels, m.get("config"), keys], sort_keys=True).encode()).hexdigest()[:16]


class Runner:
    """Runs step scripts as subprocesses and remembers what already succeeded.

    A step is invoked for items (e.g. the runs to train): each item has a key, the hash of the
    script, the item's own argv (what a run of that item alone would be), the code of the script and
    utils.py (and `sources`) and the keys of the upstream items it reads. An item whose key has a
    stamp is up to date. The items that are not are passed to as few invocations of the script as
    `split` allows (default: one; e.g. one per pipeline, or one per train.py sweep). Steps keep
    their own caches (steps 2 and 3 skip finished dialogs, step 4 resumes its last checkpoint),
    right after an interruption but wrong once the code or an upstream output changed: when an item
    succeeded before under another key (or with --force), redo_flag (--overwrite / --no-resume) is
    added to its invocation.

    The invocations of one step are independent; up to `jobs` of them run at once (longest first,
    by `cost`), each with its share of the CPU cores (OMP_NUM_THREADS) and its output in
    WORK/logs/, printed whole when it ends. With one at a time the output streams as it comes.
    """

    def __init__(self, work: Path, force: bool, jobs: int = 1):
        self.work = work
        self.path = work / "reproduce_stamps.json"
        self.stamps = fileio.read_json(self.path, "stamp file") if self.path.is_file() else {}
        self.force = force
        self.jobs = max(1, jobs)
        self.timings = []  # one entry per invocation, and one per up-to-date item
        self.wall = {}  # step name -> wall-clock seconds of its invocations (run side by side)

    def step(
        self,
        name: str,
        script: str,
        items: list[tuple[str, list, tuple]],
        argv_for,
        sources=(),
        redo_flag: str | None = None,
        split=None,
        cost=None,
    ) -> dict:
        """items: [(item id, unique per script; the item's own argv; upstream keys)]; argv_for(item
        ids) -> one invocation's argv; split(stale ids) -> [[ids of one invocation], ...]; cost(ids)
        -> its relative duration. Returns {item id: key}."""
        code = file_digest(HERE / script, HERE / "utils.py", *[HERE / s for s in sources])
        keys, stale = {}, []
        for item, item_argv, upstream in items:
            keys[item] = hashlib.sha256(json.dumps([script, item_argv, code, list(upstream)]).encode()).hexdigest()[:16]
            if keys[item] in self.stamps and not self.force:
                self.timings.append(
                    {
                        "step": name,
                        "item": item,
                        "argv": item_argv,
                        "seconds": 0.0,
                        "skipped": True,
                        "first_run_seconds": self.stamps[keys[item]]["seconds"],
                    }
                )
            else:
                stale.append(item)
        if not stale:
            return keys
        groups = split(stale) if split else [stale]
        if cost:
            groups = sorted(groups, key=cost, reverse=True)
        calls = []
        for i, ids in enumerate(groups):
            redo = self.force or any(s["script"] == script and s["item"] in ids for s in self.stamps.values())
            label = name if len(groups) == 1 else f"{name} [{i + 1}/{len(groups)}]"
            calls.append((label, ids, argv_for(ids) + ([redo_flag] if redo and redo_flag else []), redo))
        t0 = time.time()
        self._execute(name, script, calls, keys)
        self.wall[name] = round(time.time() - t0, 2)
        return keys

    def _execute(self, name, script, calls, keys) -> None:
        parallel = min(self.jobs, len(calls))
        env = None
        if self.jobs > 1:
            # Share the cores: each invocation gets cores // jobs threads (torch, numpy), however many run at
            # once, so that a run's numbers do not depend on which other runs were due (float sums over a
            # different number of threads round differently).
            threads = str(max(1, (os.cpu_count() or 1) // self.jobs))
            env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        if parallel > 1:
            print(
                f"\n=== {name}: {len(calls)} invocations, {parallel} at a time ({threads} thread(s) each); "
                f"logs in {self.work / 'logs'}",
                flush=True,
            )

        def run(call):
            label, ids, argv, redo = call
            t0 = time.time()
            if parallel == 1:
                print(f"\n=== {label}: python {script} {' '.join(argv)}", flush=True)
                rc, log = cli.start_step(script, argv, env).wait(), None
            else:
                log = self.work / "logs" / (re.sub(r"[^\w.-]+", "_", label).strip("_") + ".log")
                log.parent.mkdir(parents=True, exist_ok=True)
                print(f"  started {label}: python {script} {' '.join(argv)}", flush=True)
                with open(log, "w", encoding="utf-8") as f:
                    rc = cli.start_step(script, argv, env, f).wait()
            return call, rc, round(time.time() - t0, 2), log

        failed = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
            futures = [pool.submit(run, c) for c in calls]
            for future in concurrent.futures.as_completed(futures):
                (label, ids, argv, redo), rc, seconds, log = future.result()
                if log is not None:
                    print(
                        f"\n=== {label}: python {script} {' '.join(argv)} ({seconds:.1f} s)\n{printable_log(log)}",
                        flush=True,
                    )
                if rc != 0:
                    failed.append(
                        f"{label} failed (exit status {rc}); its message is above. The command was:\n"
                        f"  python {script} {' '.join(argv)}"
                    )
                    for f in futures:  # let the running ones finish, start no more
                        f.cancel()
                    continue
                finished = time.strftime("%Y-%m-%d %H:%M:%S")
                self.stamps = {k: v for k, v in self.stamps.items() if not (v["script"] == script and v["item"] in ids)}
                for item in ids:
                    self.stamps[keys[item]] = {
                        "step": name,
                        "script": script,
                        "item": item,
                        "seconds": seconds,
                        "finished": finished,
                    }
                fileio.atomic_write_json(self.path, self.stamps)
                self.timings.append(
                    {
                        "step": name,
                        "items": ids,
                        "argv": argv,
                        "seconds": seconds,
                        "skipped": False,
                        "redone": redo,
                        "parallel": parallel,
                    }
                )
        if failed:
            raise PipelineError("\n".join(failed))


def printable_log(path: Path) -> str:
    """A step's captured output without progress-bar redraws (what follows the last carriage return)."""
    lines = [
        line.rsplit("\r", 1)[-1].rstrip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
    ]
    return "\n".join(line for line in lines if line)


# ---------------------------------------------------------------------------------------------
# The experiment plan
# ---------------------------------------------------------------------------------------------


def setup(args, build: bool = True):
    """Resolve corpus, work dir and models; build the demo corpus and models if needed (build=False:
    only resolve the paths, as --check does)."""
    demo = args.iemocap is None
    cfg = {"demo": demo}
    if demo:
        demo_dir = Path(args.demo_dir)
        corpus = demo_dir / ("IEMOCAP_full_release" if args.demo_size == "default" else "IEMOCAP_tiny")
        if args.corpus_csv:  # the corpus is the CSV's audio; nothing is generated
            corpus = Path(args.audio_root or Path(args.corpus_csv).resolve().parent)
        elif build and not (corpus / "demo_ground_truth.json").is_file():
            from demo.make_corpus import generate

            size = (
                {}
                if args.demo_size == "default"
                else dict(sessions=[1, 5], impro_per_session=1, script_per_session=1, utterances_per_dialog=8)
            )
            print(f"building the demo corpus in {corpus}", flush=True)
            generate(corpus, seed=0, **size)
        models = demo_dir / "models"
        if build and (not (models / "roberta-tiny").is_dir() or not (models / "wav2vec2-tiny").is_dir()):
            from demo.build_ser_models import build as build_models

            print(f"building tiny random SER models in {models}", flush=True)
            build_models(models, seed=0)
        work = demo_dir / (defaults.WORK_DIR + ("" if args.demo_size == "default" else "_tiny"))
        cfg.update(
            iemocap=str(corpus),
            work=args.work or str(work),
            text_model=args.text_model or str(models / "roberta-tiny"),
            audio_model=args.audio_model or str(models / "wav2vec2-tiny"),
            epochs=args.epochs or 8,
            standard_pipe="simulated",
            oracle_pipe="oracle",
            ablation_seeds=args.ablation_seeds or 1,
            ablation_mode=args.ablation_mode,
            fusion_mode=args.fusion_mode,
            jobs=args.jobs or os.cpu_count() or 1,
            # Tiny random-init extractors need larger steps than pretrained ones (2e-5 barely moves them; with
            # a head step of 1e-3 the authors' post-norm fusion encoder collapses to the majority class);
            # the tiny batches need no loader processes (on 2 cores they only compete with training); the
            # filterbank CNN stays fixed, so its features are computed once (train.py --freeze-feature-encoder).
            train_flags=[
                "--lr-extractor",
                "1e-3",
                "--lr-head",
                "3e-4",
                "--num-workers",
                "0",
                "--freeze-feature-encoder",
            ],
        )
    else:
        cfg.update(
            iemocap=(args.audio_root or args.iemocap) if args.corpus_csv else args.iemocap,
            work=args.work or defaults.WORK_DIR,
            text_model=args.text_model or defaults.TEXT_MODEL,
            audio_model=args.audio_model or defaults.AUDIO_MODEL,
            epochs=args.epochs or 20,
            standard_pipe="whisperx",
            oracle_pipe="whisperx-vadoracle",
            ablation_seeds=args.ablation_seeds or args.seeds,
            ablation_mode=args.ablation_mode,
            fusion_mode=args.fusion_mode,
            jobs=args.jobs or 1,
            train_flags=[],
        )  # the authors' recipe: train.py's defaults
    return cfg


def plan_configs(cfg, args) -> list[dict]:
    """The training configurations: {"groups", "pipe", "variant", "mode", "modality", "fusion", "seeds"}.
    A configuration that two groups need (e.g. the frozen gated model of `frozen` and `fusion`) is
    trained once, with the larger number of seeds."""
    std, orc = cfg["standard_pipe"], cfg["oracle_pipe"]
    wanted = [
        ("main", std, "aligned-p1.5", "finetune", "fusion", DEFAULT_FUSION),
        ("main", std, "baseline", "finetune", "fusion", DEFAULT_FUSION),
        ("vadoracle", orc, "aligned-p1.5", "finetune", "fusion", DEFAULT_FUSION),
        ("frozen", std, "aligned-p1.5", "frozen", "fusion", DEFAULT_FUSION),
        ("frozen", std, "baseline", "frozen", "fusion", DEFAULT_FUSION),
        *[
            ("modality", std, "aligned-p1.5", cfg["ablation_mode"], m, DEFAULT_FUSION)
            for m in ("fusion", "text", "audio")
        ],
    ]
    wanted += [
        ("pause", std, f"aligned-p{p:g}", cfg["ablation_mode"], "fusion", DEFAULT_FUSION)
        for p in sorted({1.5, *args.pauses})
    ]
    wanted += [("fusion", std, "aligned-p1.5", cfg["fusion_mode"], "fusion", f) for f in utils.FUSIONS]
    configs = {}
    for group, *key in wanted:
        if args.only is not None and group not in args.only:
            continue
        seeds = args.seeds if group in HEADLINE_GROUPS else cfg["ablation_seeds"]
        c = configs.setdefault(
            tuple(key), dict(zip(("pipe", "variant", "mode", "modality", "fusion"), key), groups=[], n_seeds=0)
        )
        c["groups"].append(group)
        c["n_seeds"] = max(c["n_seeds"], seeds)
    for c in configs.values():
        c["seeds"] = list(range(args.seed, args.seed + c.pop("n_seeds")))
        c["name"] = config_name(c, args.folds)
    return list(configs.values())


def config_name(c: dict, folds: str) -> str:
    """Run-name template of a configuration; '{seed}' becomes the seed."""
    return (
        f"{c['pipe']}__{c['variant']}__{c['mode']}__{c['modality']}"
        + (f"__{c['fusion']}" if c["fusion"] != DEFAULT_FUSION else "")
        + "__s{seed}"
        + ("" if folds == "none" else f"__{folds}")
    )


def run_names(c: dict) -> list[str]:
    return [c["name"].replace("{seed}", str(s)) for s in c["seeds"]]


def config_runs(c: dict) -> list[dict]:
    """The runs of a configuration, one per seed: {"name", "pipe", "variant", "mode", "modality", "fusion", "seed"}."""
    return [
        {"name": name, "seed": seed, **{k: c[k] for k in ("pipe", "variant", "mode", "modality", "fusion")}}
        for name, seed in zip(run_names(c), c["seeds"])
    ]


def sweep_argv(runs: list[dict]) -> dict:
    """The train.py sweep flags that train exactly these runs ({"variant", "modality", "fusion", "seed",
    "name"} each, one sweep's worth: see train_sweeps), with --run naming each in train.py's sweep order."""
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    modalities = list(dict.fromkeys(r["modality"] for r in runs))
    fusions = list(dict.fromkeys(r["fusion"] for r in runs))
    seeds = sorted({r["seed"] for r in runs})
    name = {(r["variant"], r["modality"], r["fusion"], r["seed"]): r["name"] for r in runs}
    order = [
        (v, m, f, s)
        for v in variants
        for m in modalities
        for f in (fusions if m == "fusion" else fusions[:1])
        for s in seeds
    ]  # train.py's sweep order
    return [
        "--variant",
        *variants,
        "--modality",
        *modalities,
        "--fusion",
        *fusions,
        "--seed",
        *map(str, seeds),
        "--run",
        *[name[k] for k in order],
    ]


def train_sweeps(runs: list[dict]) -> list[list[dict]]:
    """Partition runs of one pipeline and extractor mode into train.py sweeps, each a full product
    variants x (modality, fusion) arms x seeds, so that each sweep trains exactly its runs: first the
    arms each (variant, seed) needs (fused and single-modality arms apart), then the seeds that share
    those arms for a variant, then the variants that share arms and seeds."""
    arms = {}
    for r in runs:
        arms.setdefault((r["variant"], r["seed"], r["modality"] == "fusion"), set()).add((r["modality"], r["fusion"]))
    seeds = {}
    for (variant, seed, fused), a in arms.items():
        seeds.setdefault((fused, frozenset(a), variant), []).append(seed)
    variants = {}
    for (_fused, a, variant), ss in seeds.items():
        variants.setdefault((a, tuple(sorted(ss))), []).append(variant)
    by_key = {(r["variant"], r["modality"], r["fusion"], r["seed"]): r for r in runs}
    return [[by_key[v, m, f, s] for v in vs for m, f in sorted(a) for s in ss] for (a, ss), vs in variants.items()]


def step1_labels(cfg, args, runner: Runner) -> str:
    """Step 1: labels.json from IEMOCAP, or from a CSV (any corpus: its own step 1) -> its stamp key."""
    work, iemocap = cfg["work"], cfg["iemocap"]
    if args.corpus_csv:  # any corpus: labels.json from a CSV (its own step 1)
        argv1 = [args.corpus_csv, "--work", work, "--audio-root", iemocap]
        argv1 += ["--emotion-map", args.emotion_map] if args.emotion_map else []
        step1, sources = "corpus_from_csv.py", ()
    else:
        argv1, step1, sources = ["--iemocap", iemocap, "--work", work], "iemo_lab_with_timestamps.py", ()
        argv1 += ["--label-set", cfg["label_set"]] if cfg.get("label_set") else []  # the wu6 group's work dir
    csv_digest = file_digest(args.corpus_csv) if args.corpus_csv else ""
    return runner.step("step 1 labels", step1, [("labels", argv1, (csv_digest,))], lambda _: argv1, sources=sources)[
        "labels"
    ]


def step2_asr(cfg, args, runner: Runner, configs: list[dict], k1: str) -> dict:
    """Step 2: one invocation per pipeline (they are independent) -> {pipe: stamp key}."""
    work = cfg["work"]
    pipes = sorted({c["pipe"] for c in configs})
    argv2 = {}
    for pipe in pipes:
        if cfg["demo"]:
            argv2[pipe] = ["--work", work, "--backend", pipe, "--name", pipe, "--seed", str(args.seed)]
        else:
            argv2[pipe] = [
                "--work",
                work,
                "--backend",
                "whisperx",
                "--name",
                pipe,
                "--asr-model",
                args.asr_model,
                "--diar-model",
                args.diar_model,
            ]
            if args.align_model:
                argv2[pipe] += ["--align-model", args.align_model]
            if pipe.endswith("vadoracle"):
                argv2[pipe] += ["--vad", "oracle"]
            argv2[pipe] += (["--model-dir", args.model_dir] if args.model_dir else []) + (
                ["--cache-only"] if args.cache_only else []
            )
    return runner.step(
        "step 2 ASR + diarization",
        "preprocess.py",
        [(pipe, argv2[pipe], (k1,)) for pipe in pipes],
        lambda todo: argv2[todo[0]],
        redo_flag="--overwrite",
        split=lambda stale: [[p] for p in stale],
    )


def step3_align(cfg, runner: Runner, configs: list[dict], k2: dict) -> dict:
    """Step 3: one invocation per pipeline for its variants that are out of date (each dialog's audio is
    read once for all of them) -> {(pipe, variant): stamp key}."""
    work = cfg["work"]

    def align_argv(todo):  # todo: item ids "<pipe>/<variant>" of one pipeline
        pipe = todo[0].split("/", 1)[0]
        variants = [t.split("/", 1)[1] for t in todo]
        pauses = [v.split("-p")[1] for v in variants if v != "baseline"]
        kind = "both" if pauses and "baseline" in variants else ("aligned" if pauses else "baseline")
        return ["--work", work, "--pipe", pipe, "--variant", kind] + (["--max-pause", *pauses] if pauses else [])

    cached = sorted({(c["pipe"], c["variant"]) for c in configs})
    labels_digest = file_digest(Path(work) / "labels.json") if (Path(work) / "labels.json").is_file() else ""
    keys = runner.step(
        "step 3 align",
        "align.py",
        [(f"{pipe}/{v}", align_argv([f"{pipe}/{v}"]), (k2[pipe], labels_digest)) for pipe, v in cached],
        align_argv,
        redo_flag="--overwrite",
        split=lambda stale: [
            [t for t in stale if t.startswith(p + "/")] for p in dict.fromkeys(t.split("/")[0] for t in stale)
        ],
    )
    return {(pipe, v): keys[f"{pipe}/{v}"] for pipe, v in cached}


def step4_train(cfg, args, runner: Runner, runs: dict, k3: dict) -> dict:
    """Step 4: the runs out of date, as few train.py sweeps as train exactly them (train_sweeps: data
    read once per sweep), several at a time -> {run name: stamp key}."""
    work = cfg["work"]
    common = [
        "--work",
        work,
        "--text-model",
        cfg["text_model"],
        "--audio-model",
        cfg["audio_model"],
        "--epochs",
        str(cfg["epochs"]),
        *cfg["train_flags"],
    ]
    common += (["--folds", args.folds] if args.folds != "none" else []) + (
        ["--device", args.device] if args.device else []
    )

    def train_argv(names):
        first = runs[names[0]]
        return ["--pipe", first["pipe"], "--mode", first["mode"]] + sweep_argv([runs[n] for n in names]) + common

    def sweeps(stale):
        groups = {}
        for n in stale:
            groups.setdefault((runs[n]["pipe"], runs[n]["mode"]), []).append(runs[n])
        return [[r["name"] for r in sweep] for group in groups.values() for sweep in train_sweeps(group)]

    def train_cost(names):  # relative: a fine-tuned fused run = 1
        return 0.5 + sum(
            (1.0 if runs[n]["mode"] == "finetune" else 0.3)
            * {"fusion": 1.0, "audio": 0.7, "text": 0.5}[runs[n]["modality"]]
            for n in names
        )  # 0.5: starting the process (imports, data)

    return runner.step(
        "step 4 train",
        "train.py",
        [
            (n, train_argv([n]), (k3[r["pipe"], r["variant"]], variant_data(work, r["pipe"], r["variant"])))
            for n, r in runs.items()
        ],
        train_argv,
        redo_flag="--no-resume",
        split=sweeps,
        cost=train_cost,
    )


def steps56_score(cfg, args, runner: Runner, names: list[str], k4: dict) -> None:
    """Steps 5 and 6: the runs out of date, split evenly over the jobs."""
    work = cfg["work"]

    def chunks(stale):  # contiguous, so that the seeds of a configuration share one process (and its data)
        size = -(-len(stale) // min(runner.jobs, len(stale)))
        return [stale[i : i + size] for i in range(0, len(stale), size)]

    ev = [
        "--work",
        work,
        "--bootstrap-samples",
        str(args.bootstrap_samples),
        "--bootstrap-seed",
        str(args.bootstrap_seed),
    ]
    ev += ["--device", args.device] if args.device else []
    k5 = runner.step(
        "step 5 evaluate",
        "evaluate.py",
        [(r, ev + ["--run", r], (k4[r],)) for r in names],
        lambda todo: ev + ["--run", *todo],
        split=chunks,
    )
    runner.step(
        "step 6 TEER",
        "teer_calculate.py",
        [(r, ["--work", work, "--also-authors", "--run", r], (k5[r],)) for r in names],
        lambda todo: ["--work", work, "--also-authors", "--run", *todo],
        split=chunks,
    )


def run_pipeline(cfg, args, runner: Runner, configs: list[dict]):
    """Steps 1-6 for every configuration, each step's items through the runner (or preflight's recorder)."""
    k1 = step1_labels(cfg, args, runner)
    k2 = step2_asr(cfg, args, runner, configs, k1)
    k3 = step3_align(cfg, runner, configs, k2)
    runs = {r["name"]: r for c in configs for r in config_runs(c)}
    k4 = step4_train(cfg, args, runner, runs, k3)
    steps56_score(cfg, args, runner, list(runs), k4)


def wu6_plan(cfg, args) -> tuple[dict, list[dict]] | None:
    """The wu6 group (Wu et al.'s six classes) -> (its cfg: work dir WORK + WU6_WORK_SUFFIX, step 1 --label-set
    wu6; its one configuration: the standard pipeline with alignment, fine-tuned, the paper's fusion, with the
    ablation groups' seeds, the demo's 1); None when --only leaves it out or the corpus is a CSV (wu6 maps
    IEMOCAP's emotion codes; a CSV corpus keeps its classes with corpus_from_csv.py --emotion-map)."""
    if (args.only is not None and "wu6" not in args.only) or args.corpus_csv:
        return None
    cfg6 = {**cfg, "work": str(cfg["work"]) + WU6_WORK_SUFFIX, "label_set": "wu6"}
    key = (cfg["standard_pipe"], "aligned-p1.5", "finetune", "fusion", DEFAULT_FUSION)
    c = dict(zip(("pipe", "variant", "mode", "modality", "fusion"), key), groups=["wu6"])
    c["seeds"] = list(range(args.seed, args.seed + cfg["ablation_seeds"]))
    c["name"] = config_name(c, args.folds)
    return cfg6, [c]


def run_wu6(cfg, args, results_dir: Path, runner: Runner) -> tuple[list[str], dict] | None:
    """The wu6 group end to end (wu6_plan): steps 1-6 in its own work dir (its step timings added to runner's),
    its confusion matrices copied to results_dir/confusion_matrices/wu6_<run>.png -> (its table's lines, its
    provenance), or None (not run)."""
    plan = wu6_plan(cfg, args)
    if plan is None:
        return None
    cfg6, configs6 = plan
    work6 = Path(cfg6["work"])
    work6.mkdir(parents=True, exist_ok=True)
    runner6 = Runner(work6, args.force, cfg["jobs"])
    run_pipeline(cfg6, args, runner6, configs6)
    runner.timings += runner6.timings
    for name, seconds in runner6.wall.items():
        runner.wall[name] = runner.wall.get(name, 0.0) + seconds
    c = configs6[0]
    res = load_results(work6, c)
    copy_confusion_matrices(work6, [res], results_dir, "wu6_")
    lines = Tables(cfg6, args, {}).wu6_table(res)
    return lines, {"work": str(work6), "seeds": {c["name"]: c["seeds"]}, "label_set": "wu6"}


def copy_confusion_matrices(work: Path, results, results_dir: Path, prefix: str = "") -> None:
    """Each run's confusion_matrix.png (step 5) -> results_dir/confusion_matrices/<prefix><run>.png."""
    for res in results:
        for r in res["runs"]:
            png = work / "runs" / r["name"] / "confusion_matrix.png"
            if png.is_file():
                (results_dir / "confusion_matrices").mkdir(parents=True, exist_ok=True)
                shutil.copyfile(png, results_dir / "confusion_matrices" / f"{prefix}{r['name']}.png")


# ---------------------------------------------------------------------------------------------
# Tables: every number is read from the runs' metrics.json / teer*.json, over seeds (and folds)
# ---------------------------------------------------------------------------------------------


def load_results(work: Path, c: dict) -> dict:
    runs = []
    for name in run_names(c):
        d = work / "runs" / name
        runs.append(
            {
                "name": name,
                "metrics": fileio.read_json(d / "metrics.json", "metrics file"),
                **{
                    tag: fileio.read_json(d / f, "TEER file") if (d / f).is_file() else None
                    for tag, f in (("teer", "teer.json"), ("teer_authors", "teer_authors.json"))
                },
            }
        )
    seeds = ",".join(str(s) for s in c["seeds"])
    source = str(work / "runs" / c["name"].replace("{seed}", f"{{{seeds}}}" if len(c["seeds"]) > 1 else seeds))
    return {**c, "runs": runs, "source": source}


def parts(m: dict) -> list[dict]:
    """The metrics of each fold of a run's metrics.json, or the run's own."""
    return list(m["folds"].values()) if "folds" in m else [m]


def flat(m: dict) -> dict:
    """A run's metrics over its whole test set: all folds pooled for a fold run."""
    return m.get("pooled", m)


def values(res: dict, get) -> list[float]:
    """get(metrics of one run over its whole test set, folds pooled) for every seed of a configuration:
    the values of a table cell, whose interval is that of the same pooled quantity (Tables.projected)."""
    return [get(flat(r["metrics"])) for r in res["runs"]]


def fold_values(res: dict, get) -> list[float]:
    """get(metrics of one fold) for every seed and fold of a configuration (the spread over folds)."""
    return [get(p) for r in res["runs"] for p in parts(r["metrics"])]


def metric_getter(key: str, level: str):
    """level "utterance" (reference-projected) or "segment"; key a HEADLINE metric or "f1:<label>"."""

    def get(m):
        m = m["utterance"] if level == "utterance" else m
        return m["per_class"][key[3:]]["f1"] if key.startswith("f1:") else m[key]

    return get


def mean_std(vals, scale=100.0, nd=2) -> str:
    """ "mean ± sample std (ddof=1)" of the values that are not None; one value alone, without ±."""
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{scale * vals[0]:.{nd}f}"
    return f"{scale * np.mean(vals):.{nd}f} ± {scale * np.std(vals, ddof=1):.{nd}f}"


def scored_dialogs(res: dict) -> set:
    """The dialogs of the reference-projected utterances of any seed of a configuration."""
    return {u["dialog"] for r in res["runs"] for u in flat(r["metrics"])["utterance"]["utterances"]}


def missed_records(records: list, dialogs, labels: dict | None) -> list:
    """Miss records (pred None) of the labelled utterances of the `dialogs` that `records` lack: a test
    dialog a pipeline has no utterance of (another pipeline's test set, an older metrics.json).
    labels: labels.json's content, or a function returning it (called only when a dialog lacks records)."""
    have = {r["dialog"] for r in records}
    absent = [d for d in dialogs if d not in have]
    if absent and labels is None:
        raise ValueError(f"dialogs {absent[:5]} have no utterance record and no labels.json was given")
    labels = labels() if absent and callable(labels) else labels
    return [
        {"id": u["id"], "dialog": d, "label": u["label"], "pred": None}
        for d in absent
        for u in labels["dialogs"][d]["utterances"]
        if u.get("label") is not None
    ]


def seed_confusions(res: dict, dialogs=None, labels=None, classes=LABELS) -> tuple[np.ndarray, list]:
    """[n_seeds, n_dialogs, C, C + 1] confusion matrices of the reference-projected utterances over the C classes
    (labels.json's; each seed's run over its whole test set, folds pooled). dialogs: the dialog axis (default:
    every dialog a seed scored); a dialog a seed has no record of counts its labelled utterances (labels.json) as
    misses."""
    per_seed = [flat(r["metrics"])["utterance"]["utterances"] for r in res["runs"]]
    dialogs = dialogs or sorted(scored_dialogs(res))
    per_seed = [utts + missed_records(utts, dialogs, labels) for utts in per_seed]
    return np.stack([scoring.dialog_confusions(utts, dialogs, labels=classes) for utts in per_seed]), dialogs


def result_classes(res: dict) -> tuple:
    """A configuration's classes, in order: those its metrics.json scored (labels.json's label set; a metrics file
    written before label sets existed: the paper's four)."""
    m = flat(res["runs"][0]["metrics"]) if res["runs"] else {}
    return tuple(m.get("utterance", {}).get("labels") or m.get("labels") or LABELS)


def table_head(cells: list[str]) -> list[str]:
    """A Markdown table's header row and its delimiter row, with as many cells."""
    return ["| " + " | ".join(cells) + " |", "|---" * len(cells) + "|"]


class Tables:
    def __init__(self, cfg, args, results: dict):
        self.cfg, self.args, self.R = cfg, args, results
        self._labels = None

    def labels(self) -> dict:
        """WORK/labels.json, read on first use (misses of dialogs a pipeline has no record of)."""
        if self._labels is None:
            self._labels = formats.load_labels(self.cfg["work"])
        return self._labels

    def get(self, pipe, variant, mode="finetune", modality="fusion", fusion=DEFAULT_FUSION):
        return self.R.get((pipe, variant, mode, modality, fusion))

    def projected(self, res, key) -> str:
        """mean ± sample std over seeds [95 % bootstrap interval of the seed mean, over test dialogs];
        each seed's value and the interval are of the same quantity: the run's pooled test utterances."""
        text = mean_std(values(res, metric_getter(key, "utterance")))
        if self.args.bootstrap_samples:
            cms = seed_confusions(res, labels=self.labels, classes=result_classes(res))[0]
            lo, hi = scoring.bootstrap_ci(cms, key, self.args.bootstrap_samples, self.args.bootstrap_seed)
            text += f" [{100 * lo:.1f}, {100 * hi:.1f}]"
        return text

    def segment(self, res, key) -> str:
        return mean_std(values(res, metric_getter(key, "segment")))

    @staticmethod
    def n(res) -> int:
        """How many values a cell's mean ± std is over: the seeds."""
        return len(res["runs"])

    @staticmethod
    def dialogs(res) -> str:
        """ "test dialogs (failed)": failed = test dialogs without any system segment (step 2 or 3 failed on
        them): their utterances are misses. Seeds that disagree are joined with '/'."""
        cells = []
        for r in res["runs"]:
            m = flat(r["metrics"])
            missing = m.get("missing_dialogs")
            cell = f"{m['utterance']['n_dialogs']} ({'?' if missing is None else len(missing)})"
            cells += [] if cell in cells else [cell]
        return "/".join(cells)

    @staticmethod
    def counts(res) -> tuple[str, str, str]:
        """(utterances scored (missed), segments scored, coverage %) of the first seed (the same for all)."""
        m = flat(res["runs"][0]["metrics"])
        u = m["utterance"]
        cov = m["coverage"]["share"]
        return f"{u['n']} ({u['n_missed']})", str(m["n_scored"]), "-" if cov is None else f"{100 * cov:.1f}"

    def classification_row(self, label, res, paper_row=None) -> str:
        utt, seg, cov = self.counts(res)
        ours = (
            [self.projected(res, k) for k in scoring.HEADLINE]
            + [utt, self.dialogs(res)]
            + [self.segment(res, k) for k in ("accuracy", "weighted_f1", "macro_f1")]
            + [seg, cov, str(self.n(res))]
        )
        theirs = [
            "-" if paper_row is None or paper_row[k] is None else f"{paper_row[k]:.2f}"
            for k in ("accuracy", "weighted_f1", "macro_f1")
        ]
        return "| " + " | ".join([label, *ours, *theirs, f"`{res['source']}/metrics.json`"]) + " |"

    def majority_row(self, res) -> str | None:
        """The floor every model must clear: each test reference utterance gets the label most
        frequent among the 4-class reference utterances of the run's training dialogs."""
        run_dir = Path(self.cfg["work"]) / "runs" / res["runs"][0]["name"]
        config = fileio.read_json(run_dir / "config.json", "run config")
        if "split" not in config:  # cross-validation: each fold has its own training dialogs
            return None
        labels = formats.load_labels(self.cfg["work"])
        train = config["split"]["train"]
        classes = formats.labels_of(labels)
        counts = {
            lab: sum(u["label"] == lab for d in train for u in labels["dialogs"][d]["utterances"]) for lab in classes
        }
        majority = max(classes, key=lambda lab: counts[lab])
        utts = flat(res["runs"][0]["metrics"])["utterance"]["utterances"]
        dialogs = sorted({u["dialog"] for u in utts})
        cms = scoring.dialog_confusions([{**u, "pred": majority} for u in utts], dialogs, labels=classes)
        m = scoring.metrics_from_confusion(cms.sum(0))
        cells = []
        for key in scoring.HEADLINE:
            cell = f"{100 * float(m[key]):.2f}"
            if self.args.bootstrap_samples:
                lo, hi = scoring.bootstrap_ci(cms, key, self.args.bootstrap_samples, self.args.bootstrap_seed)
                cell += f" [{100 * lo:.1f}, {100 * hi:.1f}]"
            cells.append(cell)
        return (
            f"| majority class ({majority}: the most frequent training label) | "
            + " | ".join(cells)
            + f" | - | - | - | - | `{run_dir}/config.json` (training dialogs), labels.json |"
        )

    CLASSIFICATION_HEADER = table_head(
        [
            "Setup",
            "Acc",
            "UA",
            "WF1",
            "MF1",
            "utterances (missed)",
            "dialogs (failed)",
            "Acc (seg.)",
            "WF1 (seg.)",
            "MF1 (seg.)",
            "segments",
            "cov %",
            "n",
            "Acc paper",
            "WF1 paper",
            "MF1 paper",
            "source",
        ]
    )

    def paired(self, label, a, b) -> list[str]:
        """Rows of the paired bootstrap of A - B on the same reference-projected utterances."""
        if not self.args.bootstrap_samples:
            return []
        dialogs = sorted(scored_dialogs(a) | scored_dialogs(b))  # a dialog one of them lacks: misses for it
        cms_a, _ = seed_confusions(a, dialogs, self.labels, result_classes(a))
        cms_b, _ = seed_confusions(b, dialogs, self.labels, result_classes(b))
        rows = []
        for key in scoring.HEADLINE:
            r = scoring.paired_bootstrap(cms_a, cms_b, key, self.args.bootstrap_samples, self.args.bootstrap_seed)
            lo, hi = r["ci95"]
            rows.append(
                f"| {label} | {key} | {100 * r['a']:.2f} | {100 * r['b']:.2f} | "
                f"{100 * r['diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | {r['sign_flip_share']:.3f} | "
                f"{r['n_dialogs']} | {r['n_seeds'][0]}/{r['n_seeds'][1]} |"
            )
        return rows

    def teer(self, res, key, authors=False) -> str:
        tag = "teer_authors" if authors else "teer"
        return mean_std([r[tag][key] if r[tag] else None for r in res["runs"]])

    def fold_spread(self) -> list[str]:
        """Fold runs: the spread over folds of the reference-projected headline metrics, apart from the
        cells (which are of the pooled folds): mean ± sample std over every fold of every seed."""
        if self.args.folds == "none" or not self.R:
            return []
        L = [
            f"## Spread over folds ({self.args.folds}; reference-projected)",
            "",
            "Each fold's own metrics, mean ± sample standard deviation (ddof = 1) over every fold of every seed "
            "(`values` = folds × seeds). These are not the cells of the tables above, which score all folds' "
            "predictions pooled.",
            "",
            *table_head(["Configuration", "Acc", "UA", "WF1", "MF1", "values", "source"]),
        ]
        for res in sorted(self.R.values(), key=lambda r: r["name"]):
            L.append(
                f"| {res['name'].replace('__s{seed}', '')} | "
                + " | ".join(mean_std(fold_values(res, metric_getter(k, "utterance"))) for k in scoring.HEADLINE)
                + f" | {len(fold_values(res, metric_getter('accuracy', 'utterance')))} | "
                f"`{res['source']}/metrics.json` |"
            )
        return L + [""]

    def write(self, results_dir: Path, work: Path) -> str:
        """tables.md: the introduction, each table whose runs exist, the spread over folds, the alignment report."""
        std, orc = self.cfg["standard_pipe"], self.cfg["oracle_pipe"]
        al, bl = self.get(std, "aligned-p1.5"), self.get(std, "baseline")
        fz, fzb = self.get(std, "aligned-p1.5", "frozen"), self.get(std, "baseline", "frozen")
        ora = self.get(orc, "aligned-p1.5")
        L = self.introduction()
        if al and bl:
            L += self.table_1(al, bl) + self.table_2(al, bl)
        L += self.paired_differences(al, bl, ora, fz, fzb)
        if al and ora:
            L += self.table_3(al, ora)
        if al and fz:
            L += self.table_4(al, fz)
        L += self.modality_ablation() + self.fusion_ablation() + self.pause_ablation(results_dir)
        L += self.fold_spread() + self.alignment_report(work)
        return "\n".join(L) + "\n"

    def introduction(self) -> list[str]:
        """The title, the demo note, and how to read the tables."""
        cfg, args = self.cfg, self.args
        L = ["# Reproduction of Wang, Lee, Chen (IALP 2025), Tables I-IV and ablations", ""]
        if cfg["demo"]:
            L += [f"> **{formats.DEMO_NOTE}**", ""]
        L += [
            "How to read these tables. Every number is computed by this repository's runs; each row names the "
            "metrics files it comes from (`{0,1,2}` = the seeds). A cell is the mean ± sample standard deviation "
            "(ddof = 1) over seeds of the metric of each seed's run on all its test dialogs"
            + (
                " (all folds' predictions pooled: the value, its ± and its interval are of that pooled quantity; "
                "the spread over folds is the last table)"
                if args.folds != "none"
                else ""
            )
            + " (`n` = how many seeds); a single value has no ± . "
            "**dialogs (failed)**: the test dialogs of the split, and how many of them have no system segment "
            "(step 2 or 3 failed on them): they stay in the test set, their utterances counted as misses. "
            "**Acc, UA, WF1, MF1** are reference-projected: every 4-class reference utterance of the test dialogs "
            "takes the emotion predicted for the system speech covering most of it (an utterance no system speech "
            "covers is a miss, counted wrong), so every pipeline is scored on the same utterances; the brackets are "
            "the 95 % bootstrap interval of that same seed mean over test dialogs "
            f"({args.bootstrap_samples} resamples, seed "
            f"{args.bootstrap_seed}). **(seg.)** columns score the pipeline's own labelled segments, as the paper "
            f"does: their number differs per pipeline (the paper's with- and without-alignment accuracies were "
            f"computed on {PAPER['test_segments']['aligned']} and {PAPER['test_segments']['without-alignment']} test "
            "segments), `cov` = share (%) of the labelled reference speech those segments cover. Paper: the paper's "
            "printed numbers, for reference.",
            "",
        ]
        return L

    def table_1(self, al, bl) -> list[str]:
        """Table I: overall results with and without alignment (standard pipeline, fine-tuned)."""
        header = self.CLASSIFICATION_HEADER
        return [
            "## Table I: overall results (standard pipeline, fine-tuned extractors)",
            "",
            *header,
            "| Wu et al. (6 classes) | "
            + "- | " * (len(header[0].split(" | ")) - 5)
            + f"{PAPER['table1']['wu2023']['accuracy']:.2f} | - | - | paper |",
            self.classification_row("Without alignment", bl, PAPER["table1"]["without-alignment"]),
            self.classification_row("Proposed (with alignment)", al, PAPER["table1"]["aligned"]),
            "",
        ]

    def table_2(self, al, bl) -> list[str]:
        """Table II: per-emotion F1 without vs with alignment."""
        L = [
            "## Table II: per-emotion F1 without vs with alignment",
            "",
            "| Emotion | without | with | without (seg.) | with (seg.) | without (paper) | with (paper) |",
            "|---|---|---|---|---|---|---|",
        ]
        paper = [PAPER["table2"][k] for k in ("without-alignment", "aligned")]
        for lab, name in formats.label_names(result_classes(al)).items():
            L.append(
                f"| {name} | "
                + " | ".join(
                    mean_std(values(r, metric_getter(f"f1:{lab}", level)), 1.0)
                    for level in ("utterance", "segment")
                    for r in (bl, al)
                )
                + "".join(f" | {p[lab]:.2f}" if lab in p else " | -" for p in paper)
                + " |"
            )
        return L + ["", f"Sources: `{bl['source']}/metrics.json`, `{al['source']}/metrics.json`.", ""]

    def paired_differences(self, al, bl, ora, fz, fzb) -> list[str]:
        """The paired bootstrap of each headline comparison whose two systems exist."""
        args = self.args
        comparisons = [
            (lbl, a, b)
            for lbl, a, b in (
                ("with − without alignment (fine-tuned)", al, bl),
                ("VAD-oracle − standard pipeline", ora, al),
                ("fine-tuned − frozen extractors", al, fz),
                ("with − without alignment (frozen)", fz, fzb),
            )
            if a and b
        ]
        if not (comparisons and args.bootstrap_samples):
            return []
        L = [
            "## Paired differences of the headline comparisons (reference-projected, percentage points)",
            "",
            "Both systems are scored on the same reference utterances, so their difference is paired: each of "
            f"{args.bootstrap_samples} resamples draws test dialogs with replacement and applies the same draw to "
            "both (each system's value is its mean over seeds). Over the union of both systems' test "
            "dialogs: a dialog one system has no utterance of counts as missed for it. `other sign` = share of "
            "resamples whose difference is zero or has the opposite sign.",
            "",
            "| comparison (A − B) | metric | A | B | A − B [95 % CI] | other sign | dialogs | seeds A/B |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for lbl, a, b in comparisons:
            L += self.paired(lbl, a, b)
        return L + [""]

    def table_3(self, al, ora) -> list[str]:
        """Table III: TEER and sTEER of the standard and VAD-oracle pipelines (with alignment, fine-tuned)."""
        L = [
            "## Table III: TEER and sTEER across pipelines (with alignment, fine-tuned)",
            "",
            "Default scoring follows the original definition (emotions compared by identity, collar 0.25 s, "
            "reference extent, non-target reference time excluded); the authors' scoring maps labels optimally "
            "(DiarizationErrorRate), collar 0, union of extents, unlabelled segments as UNK (teer_calculate.py).",
            "",
            *table_head(
                [
                    "Pipeline",
                    "TEER %",
                    "sTEER %",
                    "TEER % (authors' scoring)",
                    "sTEER % (authors' scoring)",
                    "n",
                    "dialogs (failed)",
                    "TEER paper",
                    "sTEER paper",
                    "source",
                ]
            ),
            f"| Wu et al. (6 classes) | - | - | - | - | - | - | {PAPER['table3']['wu2023']['TEER']:.2f} | "
            f"{PAPER['table3']['wu2023']['sTEER']:.2f} | paper |",
        ]
        for label, res, pk in (("Standard", al, "standard"), ("VAD-oracle", ora, "vad-oracle")):
            L.append(
                f"| {label} ({res['pipe']}) | {self.teer(res, 'TEER')} | {self.teer(res, 'sTEER')} | "
                f"{self.teer(res, 'TEER', True)} | {self.teer(res, 'sTEER', True)} | {len(res['runs'])} | "
                f"{self.dialogs(res)} | "
                f"{PAPER['table3'][pk]['TEER']:.2f} | {PAPER['table3'][pk]['sTEER']:.2f} | "
                f"`{res['source']}/teer*.json` |"
            )
        return L + [""]

    def table_4(self, al, fz) -> list[str]:
        """Table IV: frozen vs fine-tuned extractors (with alignment), with notes on the paper's own numbers."""
        L = [
            "## Table IV: frozen vs fine-tuned extractors (with alignment)",
            "",
            *self.CLASSIFICATION_HEADER,
            self.classification_row("Frozen embeddings", fz, PAPER["table4"]["frozen"]),
            self.classification_row("Fine-tuned embeddings", al, PAPER["table4"]["finetune"]),
        ]
        p1, p4 = PAPER["table1"], PAPER["table4"]
        if p4["frozen"] == p1["without-alignment"]:
            L += ["", "Note: the paper's frozen row repeats its Table I without-alignment row exactly."]
        if p4["finetune"]["weighted_f1"] != p1["aligned"]["weighted_f1"]:
            L += [
                "",
                f"Note: the paper's fine-tuned weighted F1 here ({p4['finetune']['weighted_f1']:.2f}) differs "
                f"from its Table I ({p1['aligned']['weighted_f1']:.2f}).",
            ]
        return L + [""]

    def ablation_row(self, label, r) -> str:
        """A row of the ablation tables (ABLATION_COLUMNS)."""
        return (
            f"| {label} | "
            + " | ".join(self.projected(r, k) for k in scoring.HEADLINE)
            + " | "
            + " | ".join(self.segment(r, k) for k in ("accuracy", "macro_f1"))
            + f" | {self.n(r)} | {self.dialogs(r)} | `{r['source']}/metrics.json` |"
        )

    def modality_ablation(self) -> list[str]:
        """Single-modality baselines against the fused model, and the majority class, when trained."""
        std, mode = self.cfg["standard_pipe"], self.cfg["ablation_mode"]
        extra = [
            (f"{m}, {mode}, with alignment", self.get(std, "aligned-p1.5", mode, m))
            for m in ("fusion", "text", "audio")
        ]
        extra = [(lbl, r) for lbl, r in extra if r]
        if len(extra) <= 1:
            return []
        L = [
            f"## Ablation: single-modality baselines ({mode} extractors; not in the paper)",
            "",
            *table_head(["Configuration", *ABLATION_COLUMNS]),
        ]
        L += [self.ablation_row(lbl, r) for lbl, r in extra]
        return L + [row for row in [self.majority_row(extra[0][1])] if row] + [""]

    def fusion_ablation(self) -> list[str]:
        """The fusions of the two embeddings (utils.FUSIONS), when more than one was trained."""
        std, fusion_mode = self.cfg["standard_pipe"], self.cfg["fusion_mode"]
        fusion_rows = [(f, self.get(std, "aligned-p1.5", fusion_mode, "fusion", f)) for f in utils.FUSIONS]
        fusion_rows = [(f, r) for f, r in fusion_rows if r]
        if len(fusion_rows) <= 1:
            return []
        L = [
            f"## Ablation: fusion of the two embeddings ({fusion_mode} extractors, with alignment; "
            "the paper's future work)",
            "",
            "gated-xattn = the paper's model; xattn = cross-attention without the forget gates (h = a); "
            "concat = an MLP on [z_t ; z_a]; late = the mean of the two single-modality heads' logits "
            "(utils.SERModel). Everything else is equal.",
            "",
            *table_head(["Fusion", *ABLATION_COLUMNS]),
        ]
        L += [self.ablation_row(f, r) for f, r in fusion_rows]
        return L + [""]

    def pause_ablation(self, results_dir: Path) -> list[str]:
        """The maximum-pause sweep, per-emotion F1, and its plot (results_dir/pause_sweep.png), when more than one
        pause was trained."""
        std, mode = self.cfg["standard_pipe"], self.cfg["ablation_mode"]
        sweep = [(p, self.get(std, f"aligned-p{p:g}", mode)) for p in sorted({1.5, *self.args.pauses})]
        sweep = [(p, r) for p, r in sweep if r]
        if len(sweep) <= 1:
            return []
        L = [
            f"## Ablation: maximum pause of the alignment ({mode} extractors; not in the paper; the paper uses "
            "1.5 s, the authors' code 1.0 s)",
            "",
            *table_head(
                [
                    "max pause (s)",
                    "Acc",
                    "MF1",
                    *(f"F1 {lab}" for lab in result_classes(sweep[0][1])),
                    "Acc (seg.)",
                    "segments",
                    "cov %",
                    "TEER %",
                    "n",
                    "dialogs (failed)",
                    "source",
                ]
            ),
        ]
        for p, r in sweep:
            _, seg, cov = self.counts(r)
            L.append(
                f"| {p:g} | {self.projected(r, 'accuracy')} | {self.projected(r, 'macro_f1')} | "
                + " | ".join(
                    mean_std(values(r, metric_getter(f"f1:{lab}", "utterance")), 1.0) for lab in result_classes(r)
                )
                + f" | {self.segment(r, 'accuracy')} | {seg} | {cov} | {self.teer(r, 'TEER')} | {self.n(r)} | "
                f"{self.dialogs(r)} | `{r['source']}/metrics.json` |"
            )
        plot_sweep(sweep, results_dir / "pause_sweep.png", self.cfg["demo"], result_classes(sweep[0][1]))
        return L + ["", "![per-emotion F1 vs maximum pause](pause_sweep.png)", ""]

    def alignment_report(self, work: Path) -> list[str]:
        """Step 3's alignment report of the standard pipeline, when there is one."""
        report = work / self.cfg["standard_pipe"] / "alignment_report.md"
        if not report.is_file():
            return []
        return ["## Alignment report (standard pipeline)", "", f"From `{report}`:", "", report.read_text(), ""]

    def wu6_table(self, res) -> list[str]:
        """The wu6 group's table: Wu et al.'s six classes through the standard pipeline with alignment (fine-tuned),
        TEER and sTEER in both scorings, Wu et al.'s printed numbers beside ours; then the F1 of each class."""
        wu = {**PAPER["table1"]["wu2023"], **PAPER["table3"]["wu2023"]}
        names = formats.label_names(result_classes(res))
        L = [
            f"## Wu et al.'s six classes (wu6; {res['pipe']} pipeline with alignment, fine-tuned extractors)",
            "",
            f"Step 1 `--label-set wu6` (`{self.cfg['work']}/labels.json`): "
            + "; ".join(f"{lab} = {name}" for lab, name in names.items())
            + ". Every labelled utterance has a class, so every reference utterance is scored and is a TEER target. "
            "Columns as in Tables I and III. Wu et al.: the numbers the paper prints for them (Table I accuracy, "
            "Table III TEER / sTEER), from their own system, for reference.",
            "",
            *table_head(
                [
                    "Setup",
                    "Acc",
                    "UA",
                    "WF1",
                    "MF1",
                    "utterances (missed)",
                    "dialogs (failed)",
                    "TEER %",
                    "sTEER %",
                    "TEER % (authors' scoring)",
                    "sTEER % (authors' scoring)",
                    "n",
                    "source",
                ]
            ),
            f"| Wu et al. (6 classes; paper) | {wu['accuracy']:.2f} | - | - | - | - | - | {wu['TEER']:.2f} | "
            f"{wu['sTEER']:.2f} | - | - | - | paper |",
            f"| Ours (wu6, {res['pipe']}, with alignment) | "
            + " | ".join(self.projected(res, k) for k in scoring.HEADLINE)
            + f" | {self.counts(res)[0]} | {self.dialogs(res)} | "
            f"{self.teer(res, 'TEER')} | {self.teer(res, 'sTEER')} | "
            f"{self.teer(res, 'TEER', True)} | {self.teer(res, 'sTEER', True)} | {self.n(res)} | "
            f"`{res['source']}/metrics.json`, `{res['source']}/teer*.json` |",
            "",
            "| Class | F1 | F1 (seg.) |",
            "|---|---|---|",
        ]
        for lab, name in names.items():
            L.append(
                f"| {name} | "
                + " | ".join(
                    mean_std(values(res, metric_getter(f"f1:{lab}", lv)), 1.0) for lv in ("utterance", "segment")
                )
                + " |"
            )
        return L + ["", f"Source: `{res['source']}/metrics.json`.", ""]


ABLATION_COLUMNS = ["Acc", "UA", "WF1", "MF1", "Acc (seg.)", "MF1 (seg.)", "n", "dialogs (failed)", "source"]


def plot_sweep(sweep, path: Path, demo: bool, classes=LABELS):
    """The pause sweep's per-class F1 (reference-projected, mean over seeds) against the maximum pause."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    xs = [p for p, _ in sweep]
    for lab, name in formats.label_names(classes).items():
        ax.plot(
            xs,
            [np.mean(values(r, metric_getter(f"f1:{lab}", "utterance"))) for _, r in sweep],
            marker="o",
            label=name,
        )
    ax.set_xlabel("maximum pause inside a turn (s)")
    ax.set_ylabel("F1 (test, reference-projected)")
    ax.set_title("Per-emotion F1 vs pause threshold" + (" (DEMO data)" if demo else ""))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def demo_readiness(cfg, args, corpus: Path) -> tuple[bool, bool, list]:
    """(corpus ready, models ready, summary items): on the demo, a corpus or tiny models not built yet are
    reported as to be built by the first run (and the checks that need them wait for it)."""
    summary = []
    corpus_ready = models_ready = True
    if cfg["demo"]:
        models = Path(args.demo_dir) / "models"
        corpus_ready = (
            Path(args.corpus_csv).is_file() if args.corpus_csv else (corpus / "demo_ground_truth.json").is_file()
        )
        models_ready = (args.text_model and args.audio_model) or all(
            (models / m).is_dir() for m in ("roberta-tiny", "wav2vec2-tiny")
        )
        if not corpus_ready:
            summary.append(
                checklist.CheckItem(
                    "demo corpus",
                    True,
                    f"{corpus} will be built by the first run "
                    "(demo/make_corpus.py); steps 1-3 are checked once it exists",
                )
            )
        if not models_ready:
            summary.append(
                checklist.CheckItem(
                    "demo models",
                    True,
                    f"{models} will be built by the first run "
                    "(demo/build_ser_models.py); train.py is checked once they exist",
                )
            )
    return corpus_ready, models_ready, summary


class Recorder:  # stands in for the Runner in preflight: records each step's command instead of running it
    def __init__(self):
        self.calls = []

    jobs = 1

    def step(self, name, script, items, argv_for, sources=(), redo_flag=None, split=None, cost=None):
        ids = [item for item, _, _ in items]
        groups = split(ids) if split else [ids]
        for i, group in enumerate(groups):
            self.calls.append(
                (name if len(groups) == 1 else f"{name} [{i + 1}/{len(groups)}]", script, argv_for(group), len(group))
            )
        return {item: name for item in ids}


def preflight_checks(
    cfg, configs: list[dict], calls: list, corpus: Path, corpus_ready: bool, models_ready
) -> list[tuple]:
    """The --check commands of steps 1, 2 and 4 made from the recorded commands -> [(label, script, argv)]."""
    checks = []  # (label, script, argv)
    for name, script, argv, _ in calls:
        if script == "iemo_lab_with_timestamps.py" and corpus_ready:
            checks.append((name, script, argv + ["--check"] + ([] if cfg["demo"] else ["--expect-standard", "yes"])))
        elif script == "preprocess.py" and corpus_ready:
            pipe = argv[argv.index("--name") + 1]
            checks.append((f"step 2 {pipe}", script, argv + ["--check", "--planned", "--iemocap", str(corpus)]))
    sweeps = [(argv, n) for _, script, argv, n in calls if script == "train.py"]
    for mode in dict.fromkeys(c["mode"] for c in configs):
        if not models_ready:
            break
        of_mode = [(argv, n) for argv, n in sweeps if argv[argv.index("--mode") + 1] == mode]
        # the largest sweep of this mode stands for all: --check-runs = every run of the mode (extractors,
        # CUDA, disk and time are the same kind of check for each sweep)
        argv = max(of_mode, key=lambda a: a[1])[0] + [
            "--check",
            "--planned",
            "--check-runs",
            str(sum(n for _, n in of_mode)),
        ]
        checks.append(
            (f"step 4 train ({mode})", "train.py", argv + (["--iemocap", str(corpus)] if corpus_ready else []))
        )
    return checks


def step3_disk_check(cfg, configs: list[dict], corpus: Path) -> checklist.CheckItem:
    """Step 3's caches hold speech audio: at most the dialogs' audio as float32, once per pipeline and variant."""
    import soundfile as sf

    caches = {(c["pipe"], c["variant"]) for c in configs}
    seconds = sum(sf.info(str(p)).duration for p in corpus.glob("Session*/dialog/wav/Ses*.wav"))
    item = checklist.check_disk(cfg["work"], seconds * formats.SAMPLE_RATE * 4 * len(caches), "step-3 segment caches")
    return checklist.CheckItem(
        "step 3 align (disk)",
        item.ok,
        f"{len(caches)} pipeline/variant caches of {seconds / 3600:.2f} h of dialog audio: {item.message}",
    )


def finish_check(label: str, script: str, argv: list, proc) -> checklist.CheckItem:
    """A check's output printed whole -> its summary item (the last line of its output)."""
    out = proc.communicate()[0].rstrip()
    print(f"\n=== {label}: python {script} {' '.join(argv)}\n{out}", flush=True)
    last = out.splitlines()[-1] if out else "(no output)"
    if proc.returncode in (0, 1):
        last = last.split(" preflight: ", 1)[-1]  # "step 2 preflight: all 5 checks OK" -> "all 5 checks OK"
    else:
        last = f"exit status {proc.returncode}: {last}"
    return checklist.CheckItem(label, proc.returncode == 0, last)


def preflight(cfg, args) -> bool:
    """--check: each step's own preflight, as this run would invoke the step, writing nothing -> True
    when every check passes. One summary line per step at the end; non-zero exit status otherwise.

    The commands are exactly those run_pipeline would run (it is called with a recorder in place of
    the Runner) with --check added:
      step 1    the corpus and its counts; on real data with --expect-standard yes: the paper's tables
                need the full release, so a corpus whose counts differ from the standard ones fails
                here (a run, and step 1 alone, only report the differences);
      step 2    for each pipeline of the plan: labels, audio, models (hub access, gated: HF_TOKEN),
                CUDA, disk, time;
      step 4    train.py once per extractor mode of the plan (finetune, frozen; the extractors are
                the same in every configuration), --check-runs = the runs of that mode: extractors,
                CUDA, disk for the checkpoints, time.
    Steps 2 and 4 get --planned: before a first run labels.json and the step-3 caches do not exist
    yet; they are reported as to be made, and the estimates read the corpus (--iemocap) instead.
    Steps 3, 5 and 6 load no model; the step-3 segment caches hold speech audio, so they get a disk
    line here (at most the dialogs' audio as float32, once per pipeline and variant). The checks run
    concurrently, each printed whole. On the demo, a corpus or tiny models not built yet are reported
    as to be built by the first run (and the checks that need them wait for it)."""
    t0 = time.time()
    configs = plan_configs(cfg, args)
    corpus = Path(cfg["iemocap"])
    corpus_ready, models_ready, summary = demo_readiness(cfg, args, corpus)
    recorder = Recorder()
    run_pipeline(cfg, args, recorder, configs)
    checks = preflight_checks(cfg, configs, recorder.calls, corpus, corpus_ready, models_ready)
    procs = [
        (label, script, argv, cli.start_step(script, argv, stdout=subprocess.PIPE)) for label, script, argv in checks
    ]
    if corpus_ready:  # step 3's caches, while the checks run
        summary.append(step3_disk_check(cfg, configs, corpus))
    for label, script, argv, proc in procs:
        summary.append(finish_check(label, script, argv, proc))
    print(
        f"\nreproduce.py --check ({'demo' if cfg['demo'] else 'real data'}, work {cfg['work']}), "
        f"{time.time() - t0:.1f} s:"
    )
    step_number = lambda item: int(item.name.split()[1]) if item.name.startswith("step ") else 0  # noqa: E731
    return checklist.report_checks(sorted(summary, key=step_number), "reproduce preflight")


def predict_demo(cfg, runner: Runner, configs: list[dict], results_dir: Path) -> None:
    """Step 7 on the demo: predict.py on one held-out test dialog with the first seed of the standard
    aligned fine-tuned model and the pipeline's own step-2 outputs -> results/predict/ (an
    emotion-annotated transcript, RTTM, WebVTT and timeline of a recording, as for any audio)."""
    std = cfg["standard_pipe"]
    c = next(
        (
            c
            for c in configs
            if (c["pipe"], c["variant"], c["mode"], c["modality"], c["fusion"])
            == (std, "aligned-p1.5", "finetune", "fusion", DEFAULT_FUSION)
        ),
        None,
    )
    if c is None:  # not in this plan (--only)
        return
    work = Path(cfg["work"])
    run_dir = work / "runs" / run_names(c)[0]
    dialog = fileio.read_json(run_dir / "config.json", "run config")["split"]["test"][0]
    labels = formats.load_labels(work, require=("wav",))
    wav = Path(labels["corpus"]) / labels["dialogs"][dialog]["wav"]
    argv = [
        str(wav),
        "--run",
        str(run_dir),
        "--asr-json",
        str(work / std / "asr" / f"{dialog}.json"),
        "--rttm",
        str(work / std / "diarization" / f"{dialog}.rttm"),
        "--out",
        str(results_dir / "predict"),
    ]
    runner.step(
        "step 7 predict",
        "predict.py",
        [(f"predict/{dialog}", argv, (file_digest(run_dir / "checkpoint_best.pt"),))],
        lambda _: argv,
    )


# ---------------------------------------------------------------------------------------------
# Cross-corpus: the main runs (trained on this corpus) tested on another (--eval-corpus-csv)
# ---------------------------------------------------------------------------------------------


DEMO_CROSS_SEED = 1  # the demo's second corpus (the first is seed 0)


def add_cross_flags(p: argparse.ArgumentParser) -> None:
    """The second corpus of the cross-corpus table: a CSV (steps 1-3 run on it in its own work dir), or on the
    demo a generated one."""
    p.add_argument(
        "--eval-corpus-csv",
        default=None,
        metavar="CSV",
        help="also test the main runs on this corpus (corpus_from_csv.py, steps 2-3 with the same backend and "
        "settings, into WORK__<name>): its test split and all of it, the 'Cross-corpus' table",
    )
    p.add_argument(
        "--eval-audio-root", default=None, help="with --eval-corpus-csv: its audio root (default: its folder)"
    )
    p.add_argument("--eval-emotion-map", default=None, help="with --eval-corpus-csv: its corpus_from_csv.py map")
    p.add_argument(
        "--eval-label-map", default=None, help="with --eval-corpus-csv: its classes -> this corpus's (evaluate.py)"
    )
    p.add_argument(
        "--eval-demo-seed",
        type=int,
        default=None,
        help="demo: the seed of the second demo corpus the main runs are tested on (three-party dialogs, a CSV "
        f"corpus of 4 dialogs, made once as for --eval-corpus-csv; default {DEMO_CROSS_SEED})",
    )
    p.add_argument("--no-cross-corpus", action="store_true", help="demo: no second corpus, no cross-corpus table")


def demo_eval_csv(args) -> str:
    """--eval-demo-seed: the second demo corpus (generated once under --demo-dir) -> its corpus.csv."""
    from demo.make_corpus import CSV_FILE, generate

    seed = DEMO_CROSS_SEED if args.eval_demo_seed is None else args.eval_demo_seed
    root = Path(args.demo_dir) / f"cross_corpus_seed{seed}"
    if not (root / CSV_FILE).is_file():
        print(f"building the cross-corpus demo corpus in {root}", flush=True)
        generate(root, seed=seed, sessions=[1, 5], impro_per_session=1, script_per_session=1,
                 utterances_per_dialog=8, speakers=3)  # fmt: skip
    return str(root / CSV_FILE)


def cross_setup(cfg, args) -> tuple[dict, argparse.Namespace, str] | None:
    """(the other corpus's cfg, args and evaluation name) of --eval-corpus-csv / --eval-demo-seed, else None."""
    if args.eval_demo_seed is not None and (not cfg["demo"] or args.eval_corpus_csv or args.corpus_csv):
        raise PipelineError("--eval-demo-seed makes the demo's second corpus: not with --iemocap or a CSV corpus")
    if args.eval_corpus_csv is None and (args.no_cross_corpus or not cfg["demo"] or args.corpus_csv):
        return None
    if args.folds != "none":  # the demo's default second corpus is left out; one asked for is refused
        if args.eval_corpus_csv or args.eval_demo_seed is not None:
            raise PipelineError("--eval-corpus-csv and --eval-demo-seed test single runs; use them with --folds none")
        return None
    csv = args.eval_corpus_csv or demo_eval_csv(args)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(csv).stem if args.eval_corpus_csv else Path(csv).parent.name)
    work = Path(cfg["work"])
    cfg_b = {**cfg, "work": str(work.parent / f"{work.name}__{name}"), "iemocap": args.eval_audio_root
             or str(Path(csv).resolve().parent)}  # fmt: skip
    args_b = argparse.Namespace(
        **{**vars(args), "corpus_csv": csv, "audio_root": cfg_b["iemocap"], "emotion_map": args.eval_emotion_map}
    )
    return cfg_b, args_b, name


def cross_corpus(cfg, args, configs: list[dict], runner: Runner) -> str:
    """--eval-corpus-csv / --eval-demo-seed: steps 1-3 on the other corpus (its own work dir and stamps), then
    evaluate.py and teer_calculate.py --eval-work of this corpus's main runs -> the "Cross-corpus" section of
    tables.md ("" without a second corpus). Its steps' timings join `runner`'s; cfg["cross_corpus"] (in
    provenance.json's config) names its work dir."""
    main = [c for c in configs if "main" in c["groups"]]
    if not main and (args.eval_corpus_csv or args.eval_demo_seed is not None):
        print("no cross-corpus table: it tests the main group's runs, which this plan (--only) leaves out")
    found = cross_setup(cfg, args) if main else None
    if found is None:
        return ""
    cfg_b, args_b, name = found
    Path(cfg_b["work"]).mkdir(parents=True, exist_ok=True)
    main_runner, runner = runner, Runner(Path(cfg_b["work"]), args.force, cfg["jobs"])
    k1 = step1_labels(cfg_b, args_b, runner)
    k3 = step3_align(cfg_b, runner, main, step2_asr(cfg_b, args_b, runner, main, k1))
    flags = ["--work", cfg["work"], "--eval-work", cfg_b["work"], "--eval-name", name]
    flags += ["--label-map", args.eval_label_map] if args.eval_label_map else []
    ev = flags + ["--bootstrap-samples", str(args.bootstrap_samples), "--bootstrap-seed", str(args.bootstrap_seed)]
    ev += ["--device", args.device] if args.device else []
    runs = [r for c in main for r in config_runs(c)]
    trained = {r["name"]: file_digest(*(Path(cfg["work"]) / "runs" / r["name"] / f for f in (
        "checkpoint_best.pt", "config.json"))) for r in runs}  # fmt: skip
    k5 = runner.step(
        "step 5 cross-corpus evaluate",
        "evaluate.py",
        [(r["name"], ev + ["--run", r["name"]], (k3[r["pipe"], r["variant"]], trained[r["name"]])) for r in runs],
        lambda todo: ev + ["--run", *todo],
        sources=("common/crosscorpus.py",),
    )
    runner.step(
        "step 6 cross-corpus TEER",
        "teer_calculate.py",
        [(n, flags + ["--also-authors", "--run", n], (k,)) for n, k in k5.items()],
        lambda todo: flags + ["--also-authors", "--run", *todo],
        sources=("common/crosscorpus.py",),
    )
    main_runner.timings += [{**t, "cross_corpus": True} for t in runner.timings]
    main_runner.wall.update({f"{k} (cross-corpus)": v for k, v in runner.wall.items()})
    cfg["cross_corpus"] = {"work": cfg_b["work"], "name": name, "csv": args_b.corpus_csv}
    return "\n".join(cross_corpus_table(Path(cfg["work"]), {**cfg["cross_corpus"], "configs": main}))


def write_tables(cfg, args, results: dict, results_dir: Path, work: Path, extra: str = "") -> None:
    """results_dir/tables.md: the Tables of `results`, then `extra` (the cross-corpus section)."""
    fileio.atomic_write_text(results_dir / "tables.md", Tables(cfg, args, results).write(results_dir, work) + extra)


def cross_corpus_table(work: Path, cross: dict | None) -> list[str]:
    """The "Cross-corpus" table: each main configuration on its own test set, then on the other corpus's test
    split and all of it; every cell the mean ± std over seeds of the metrics files its row names."""
    if cross is None:
        return []
    L = [
        f"## Cross-corpus: trained on this corpus, tested on `{cross['work']}` ({cross['name']})",
        "",
        "The main configurations' runs, unchanged, score the other corpus (evaluate.py / teer_calculate.py "
        "--eval-work): its test split (the runs' split rule over its labels.json) and all its dialogs. Cells as "
        "in Table I (reference-projected, mean ± std over seeds); `utterances` = the labelled reference "
        "utterances scored (the denominator).",
        "",
        *table_head(["Configuration", "tested on", "Acc", "UA", "WF1", "MF1", "Acc (seg.)", "TEER %", "sTEER %",
                     "utterances", "n", "source"]),
    ]  # fmt: skip
    for c in cross["configs"]:
        label = f"{c['pipe']}, {c['variant']}, {c['mode']}"
        for tested, sub in (("own test set", ""), ("other: test split", "test"), ("other: all", "all")):
            L.append(cross_row(work, c, label, tested, f"eval/{cross['name']}/{sub}/" if sub else ""))
    return L + [""]


def cross_row(work: Path, c: dict, label: str, tested: str, sub: str) -> str:
    """One row of the cross-corpus table: the metrics.json and teer.json at runs/<run>/<sub> of every seed."""
    dirs = [work / "runs" / name / sub for name in run_names(c)]
    metrics = [fileio.read_json(d / "metrics.json", "metrics file") for d in dirs]
    teers = [fileio.read_json(d / "teer.json", "TEER file") if (d / "teer.json").is_file() else None for d in dirs]
    cells = [mean_std([m["utterance"][k] for m in metrics]) for k in scoring.HEADLINE]
    cells.append(mean_std([m["accuracy"] for m in metrics]))
    cells += [mean_std([t[k] if t else None for t in teers]) for k in ("TEER", "sTEER")]
    cells.append("/".join(str(n) for n in dict.fromkeys(m["utterance"]["n"] for m in metrics)))
    seeds = ",".join(str(s) for s in c["seeds"])
    source = str(work / "runs" / c["name"].replace("{seed}", f"{{{seeds}}}" if len(c["seeds"]) > 1 else seeds))
    return f"| {label} | {tested} | " + " | ".join(cells) + f" | {len(metrics)} | `{source}/{sub}metrics.json` |"


def main(argv=None):
    args = parse_args(argv)
    t0 = time.time()
    cfg = setup(args, build=not args.check)
    setup_seconds = time.time() - t0  # the demo corpus and models, when built now
    if args.check:
        sys.exit(0 if preflight(cfg, args) else 1)
    work, results_dir = Path(cfg["work"]), Path(args.results)
    work.mkdir(parents=True, exist_ok=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    fileio.remove_stale_temp(results_dir)  # temporary files of a killed run
    configs = plan_configs(cfg, args)
    runner = Runner(work, args.force, cfg["jobs"])
    run_pipeline(cfg, args, runner, configs)

    if cfg["demo"] and not args.corpus_csv:
        predict_demo(cfg, runner, configs, results_dir)

    results = {
        tuple(c[k] for k in ("pipe", "variant", "mode", "modality", "fusion")): load_results(work, c) for c in configs
    }
    wu6 = run_wu6(cfg, args, results_dir, runner)  # its own work dir; its table after the others
    extra = cross_corpus(cfg, args, configs, runner) + ("\n".join(wu6[0]) + "\n" if wu6 else "")
    write_tables(cfg, args, results, results_dir, work, extra)
    copy_confusion_matrices(work, results.values(), results_dir)

    ran = [t for t in runner.timings if not t["skipped"]]
    per_step, busy = {}, {}  # wall clock; and the sum over invocations, which may overlap (--jobs)
    for name, seconds in runner.wall.items():
        kind = " ".join(name.split()[:2])
        per_step[kind] = round(per_step.get(kind, 0.0) + seconds, 2)
    for t in ran:
        kind = " ".join(t["step"].split()[:2])
        busy[kind] = round(busy.get(kind, 0.0) + t["seconds"], 2)
    labels = formats.load_labels(work)
    provenance = {
        "note": formats.DEMO_NOTE if cfg["demo"] else "real-data run",
        "code": rundirs.code_version(),
        "command": [sys.executable, *sys.argv],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "config": cfg,
        "seeds": {c["name"]: c["seeds"] for c in configs},
        "folds": args.folds,
        "bootstrap": {"samples": args.bootstrap_samples, "seed": args.bootstrap_seed},
        "configurations": configs,
        "runs": {r: f"{cfg['work']}/runs/{r}" for c in configs for r in run_names(c)},
        "jobs": cfg["jobs"],
        "steps": runner.timings,
        "seconds_per_step": per_step,
        "invocation_seconds_per_step": busy,
        "setup_seconds": round(setup_seconds, 2),
        "total_seconds": round(time.time() - t0, 2),
        "corpus": {
            "path": labels["corpus"],
            "dialogs": len(labels["dialogs"]),
            "utterances": sum(len(d["utterances"]) for d in labels["dialogs"].values()),
            "labelled_4class": sum(u["label"] is not None for d in labels["dialogs"].values() for u in d["utterances"]),
        },
    }
    if wu6:
        provenance["wu6"] = wu6[1]
    if args.corpus_csv:
        provenance["corpus"].update(kind="csv", csv=str(args.corpus_csv), csv_sha256=file_digest(args.corpus_csv))
    elif cfg["demo"]:
        truth = fileio.read_json(Path(cfg["iemocap"]) / "demo_ground_truth.json", "demo ground truth")
        provenance["corpus"].update(kind="demo", seed=truth.get("seed"), generator_args=truth.get("args"))
    provenance["models"] = {
        "text": modelhub.extractor_identity(cfg["text_model"]),
        "audio": modelhub.extractor_identity(cfg["audio_model"]),
    }
    fileio.atomic_write_json(results_dir / "provenance.json", provenance)
    print(
        f"\n{len(ran)} step invocations ran ({', '.join(f'{k} {v:.1f} s' for k, v in per_step.items()) or 'none'}), "
        f"{len(runner.timings) - len(ran)} items were up to date; {time.time() - t0:.1f} s in all"
    )
    print(f"tables: {results_dir / 'tables.md'}   provenance: {results_dir / 'provenance.json'}")
    if cfg["demo"]:
        print(formats.DEMO_NOTE)


if __name__ == "__main__":
    cli.run_main(main)
