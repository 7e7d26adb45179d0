"""Run directories: folds, a run's test dialogs, the code version and seeding a run."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
from pathlib import Path

import numpy as np

from common import cli, fileio


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def code_version() -> dict:
    """The git commit of this code and whether the tree has uncommitted changes."""
    here = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=here,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    return {"commit": commit or "unknown", "dirty": dirty}


def fold_dirs(run_dir) -> list[Path]:
    """Fold sub-runs of a multi-fold run: config.json "folds" (names or {"name"/"dir"}), else
    fold<k>/ subfolders holding a config.json, in k order; [] for a single run."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    config = fileio.read_json(config_path, "run config") if config_path.is_file() else {}
    folds = config.get("folds")
    if isinstance(folds, list) and folds:
        names = [f if isinstance(f, str) else f.get("dir") or f.get("name") for f in folds]
        return [run_dir / str(n) for n in names]

    def fold_number(p):
        k = p.name[4:]
        return int(k) if p.name.startswith("fold") and k.isascii() and k.isdigit() else None

    subs = [p for p in run_dir.iterdir() if p.is_dir() and fold_number(p) is not None and (p / "config.json").is_file()]
    return sorted(subs, key=fold_number)


def split_rule_test_dialogs(split: dict, labels: dict) -> list[str] | None:
    """Every labels.json dialog that a run's split puts in its test set, whether or not step 2 or 3
    produced its segments (train.py splits only the dialogs that have a step-3 cache, so the
    recorded split["test"] lacks the dialogs a step failed on). The rule is train.make_folds': the
    dialogs of split["test_session"]; with a "held_script" (--folds speaker-script) only its
    improvisations and the sessions' dialogs of that script. None when the split records no
    test_session (a split written by hand or by an older train.py)."""
    session, held = split.get("test_session"), split.get("held_script")
    if not isinstance(session, int) or isinstance(session, bool):
        return None
    return sorted(
        d
        for d, info in labels["dialogs"].items()
        if info.get("session") == session
        and (held is None or info.get("kind") != "script" or info.get("script") == held)
    )


def run_test_dialogs(run_dir, predictions: dict, labels: dict) -> tuple[list[str], str]:
    """The run's test dialogs from its config.json split, else the dialogs in predictions.json.
    With the split's test_session recorded, the test dialogs are the recorded list and every
    labels.json dialog the split's rule puts in the test set (split_rule_test_dialogs): a dialog
    step 2 or 3 failed on stays in the test set, its utterances scored as missed.

    Accepted: config["split"]["test"] (or "test_dialogs") as dialog names or session numbers,
    or a dict {"dialogs": [...]} / {"sessions": [...]}. Returns (dialogs, where they came from)."""
    config_path = Path(run_dir) / "config.json"
    config = fileio.read_json(config_path, "run config") if config_path.is_file() else {}
    split = config.get("split") or {}
    test = split.get("test", split.get("test_dialogs")) if isinstance(split, dict) else None
    if isinstance(test, dict):  # e.g. {"sessions": [5], "dialogs": [...]}
        test = test.get("dialogs") or test.get("sessions")
    if isinstance(test, list) and test:
        if all(isinstance(t, int) for t in test):
            return sorted(
                d for d, v in labels["dialogs"].items() if v.get("session") in test
            ), f"{config_path} (sessions {test})"
        by_rule = split_rule_test_dialogs(split, labels)
        if by_rule is not None:  # the dialogs step 2 or 3 failed on are not in the recorded list: put them back
            return sorted({str(t) for t in test} | set(by_rule)), f"{config_path} (its split's rule over labels.json)"
        return sorted(str(t) for t in test), str(config_path)
    dialogs = sorted({s["dialog"] for s in predictions.get("segments", []) if "dialog" in s})
    return dialogs, "predictions.json (no test split in config.json)"


ALLOW_CHANGED_DATA = "--allow-changed-data"  # the override flag of every step that checks a run's data


_SHA256_SEEN: dict = {}  # (path, inode, size, mtime, ctime) -> sha256: one process (evaluate.py of many runs)


def _cache_file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _SHA256_SEEN:
        _SHA256_SEEN[key] = fileio.file_sha256(path)
    return _SHA256_SEEN[key]


def step3_config_key(config: dict) -> str:
    """The key of a step-3 variant's config (align.py's manifest.json "config" and "config_key")."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def run_data_identity(work, pipe: str, variant: str, dialogs) -> dict:
    """config.json "data" of a run: what it was trained (and is tested) on. "labels_sha256": labels.json;
    "step3_config" and "step3_config_key": the variant's manifest.json config (None without a manifest);
    "cache_sha256": over the cache files of `dialogs` in sorted order, each its name and its sha256, which
    "cache_files" lists ({file name: sha256, or None when missing})."""
    work = Path(work)
    variant_dir = work / pipe / variant
    manifest = variant_dir / "manifest.json"
    config = fileio.read_json(manifest, "alignment manifest").get("config") if manifest.is_file() else None
    files = {}
    for name in sorted(f"{d}.pt" for d in set(dialogs)):
        path = variant_dir / "cache" / name
        files[name] = _cache_file_sha256(path) if path.is_file() else None
    overall = hashlib.sha256("".join(f"{n}\0{h}\n" for n, h in files.items()).encode()).hexdigest()
    labels = work / "labels.json"
    return {
        "work": str(work),
        "pipe": pipe,
        "variant": variant,
        "labels_sha256": fileio.file_sha256(labels) if labels.is_file() else None,
        "step3_config": config,
        "step3_config_key": None if config is None else step3_config_key(config),
        "cache_sha256": overall,
        "cache_files": files,
    }


def data_changes(recorded: dict, current: dict) -> list[str]:
    """What differs between two run_data_identity results, each as a short phrase naming it."""
    changes = []
    if recorded.get("labels_sha256") != current.get("labels_sha256"):
        changes.append(
            f"labels.json (sha256 {str(recorded.get('labels_sha256'))[:12]} -> "
            f"{str(current.get('labels_sha256'))[:12]})"
        )
    if recorded.get("step3_config_key") != current.get("step3_config_key"):
        old, new = recorded.get("step3_config") or {}, current.get("step3_config") or {}
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        changes.append(
            f"step-3 config of {current.get('pipe')}/{current.get('variant')} ("
            + (", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys) or "no manifest")
            + ")"
        )
    if recorded.get("cache_sha256") != current.get("cache_sha256"):
        old, new = recorded.get("cache_files") or {}, current.get("cache_files") or {}
        names = sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))
        what = [f"{n} ({'missing' if new.get(n) is None else 'changed'})" for n in names[:5]]
        more = f" and {len(names) - 5} more" if len(names) > 5 else ""
        changes.append(f"step-3 cache files {', '.join(what)}{more}")
    return changes


def changed_data_error(run_dir, changes: list[str], instead: str) -> cli.PipelineError:
    """The one-line refusal of a run whose data changed: what changed, what to do, the override flag."""
    return cli.PipelineError(
        f"{run_dir}: its data changed since it was trained: {'; '.join(changes)}; {instead} "
        f"or pass {ALLOW_CHANGED_DATA} to use it anyway (recorded)"
    )


def check_one_run_data(run_dir, labels_path=None) -> dict:
    """{"status": "same" | "changed" | "not recorded", "changed": [...]} of one run dir (not a fold
    parent): its config.json "data" against the data as it is now. labels_path: the labels.json the
    caller scores with (default: the one the run was trained with)."""
    path = Path(run_dir) / "config.json"
    config = fileio.read_json(path, "run config") if path.is_file() else {}
    recorded = config.get("data") if isinstance(config, dict) else None
    if not isinstance(recorded, dict):
        return {"status": "not recorded", "changed": []}
    if not all(isinstance(recorded.get(k), str) for k in ("work", "pipe", "variant")) or not isinstance(
        recorded.get("cache_files"), dict
    ):
        raise cli.PipelineError(
            f"{path}: 'data' must record the work dir, pipe, variant and cache_files train.py "
            f"wrote, got {json.dumps(recorded)[:120]}"
        )
    current = run_data_identity(
        recorded["work"], recorded["pipe"], recorded["variant"], [Path(n).stem for n in recorded.get("cache_files", {})]
    )
    if labels_path is not None:
        current["labels_sha256"] = fileio.file_sha256(labels_path) if Path(labels_path).is_file() else None
    changes = data_changes(recorded, current)
    earlier = config.get("data_changed_on_resume") or []
    return {
        "status": "changed" if changes else "same",
        "changed": changes,
        **({"changed_on_resume": earlier} if earlier else {}),
    }


def check_run_data(run_dir, labels_path=None, allow: bool = False) -> dict:
    """The "data_check" record (metrics.json, teer.json) of a run dir, a fold run's over its folds:
    {"status", "changed", "allow_changed_data"} (+ "folds": each fold's check_one_run_data). When the
    data changed and not `allow`: a one-line PipelineError naming what changed and the override flag."""
    run_dir = Path(run_dir)
    folds = fold_dirs(run_dir)
    checks = (
        {f.name: check_one_run_data(f, labels_path) for f in folds}
        if folds
        else {"": check_one_run_data(run_dir, labels_path)}
    )
    changed = [f"{name}: {c}" if name else c for name, r in checks.items() for c in r["changed"]]
    statuses = {r["status"] for r in checks.values()}
    status = "changed" if changed else ("not recorded" if "not recorded" in statuses else "same")
    if changed and not allow:
        raise changed_data_error(run_dir, changed, "retrain it (train.py --no-resume)")
    record = {"status": status, "changed": changed, "allow_changed_data": bool(allow)}
    if folds:
        record["folds"] = checks
    elif checks[""].get("changed_on_resume"):
        record["changed_on_resume"] = checks[""]["changed_on_resume"]
    return record
