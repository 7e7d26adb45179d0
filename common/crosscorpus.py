"""One corpus tested against another: a run trained on work dir A scored on work dir B's labels and step-3 data.

evaluate.py and teer_calculate.py take --eval-work B (and the flags of add_eval_flags). B's label set (its
labels.json "labels") must equal A's, or a --label-map must take each of B's labels to one of A's (or to none:
not scored). The outputs go to WORK/runs/<run>/eval/<name>/<split>/ (split "test": the dialogs of B that the
run's split rule puts in its test set; "all": every dialog of B), never over the run's own files. The layout
and the "cross_corpus" record: docs/FORMATS.md ("Cross-corpus evaluation").
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

from common import fileio, formats, rundirs
from common.cli import PipelineError

EVAL_SPLITS = ("test", "all")  # B's test split (the run's split rule over B's labels.json) and all of B
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def add_eval_flags(p) -> None:
    """The cross-corpus flags of evaluate.py and teer_calculate.py."""
    p.add_argument(
        "--eval-work",
        default=None,
        metavar="DIR",
        help="score the run on ANOTHER work directory's labels.json and step-3 data (cross-corpus); outputs go "
        "to WORK/runs/<run>/eval/<name>/<split>/ (docs/FORMATS.md), the run's own files are left alone",
    )
    p.add_argument("--eval-name", default=None, help="with --eval-work: the name of the evaluation (default: DIR's)")
    p.add_argument("--eval-pipe", default=None, help="with --eval-work: DIR's pipe (default: the run's)")
    p.add_argument("--eval-variant", default=None, help="with --eval-work: DIR's step-3 variant (default: the run's)")
    p.add_argument(
        "--label-map",
        default=None,
        metavar="MAP",
        help="with --eval-work: DIR's labels -> the run's, 'exc=hap,fru=' (empty: not scored) or a JSON file "
        "{label: label or null}; needed when the two label sets differ",
    )
    p.add_argument(
        "--eval-split",
        choices=(*EVAL_SPLITS, "both"),
        default="both",
        help="with --eval-work: DIR's dialogs in the run's test split, all of DIR, or both (default: %(default)s)",
    )


def check_eval_args(p, args) -> None:
    """argparse errors for cross-corpus flags given without --eval-work, or a bad --eval-name."""
    given = [f for f in ("eval_name", "eval_pipe", "eval_variant", "label_map") if getattr(args, f) is not None]
    if args.eval_work is None and given:
        p.error(f"--{given[0].replace('_', '-')} needs --eval-work")
    if args.eval_work is not None:
        args.eval_name = args.eval_name or Path(args.eval_work).resolve().name
        if not NAME_RE.match(args.eval_name):
            p.error(f"--eval-name {args.eval_name!r}: expected letters, digits, '_', '.', '-'")


def eval_splits(choice: str) -> tuple[str, ...]:
    """--eval-split -> the splits scored."""
    return EVAL_SPLITS if choice == "both" else (choice,)


def label_set(labels: dict) -> list[str]:
    """A labels.json's classes: its top-level "labels", else the paper's four (common.formats.LABELS)."""
    return list(labels.get("labels") or formats.LABELS)


def parse_label_map(spec: str | None) -> dict | None:
    """--label-map -> {B label: A label or None}: a JSON file's object, or 'a=b,c=' (empty: None); None if not given."""
    if spec is None:
        return None
    if Path(spec).is_file():
        data = fileio.read_json(Path(spec), "label map")
        if not isinstance(data, dict) or not all(isinstance(v, (str, type(None))) for v in data.values()):
            raise PipelineError(f"{spec}: a label map must be a JSON object {{label: label or null}}")
        return {str(k): v or None for k, v in data.items()}
    out = {}
    for part in (s.strip() for s in spec.split(",")):
        if part.count("=") != 1 or not part.split("=")[0].strip():
            raise PipelineError(f"--label-map {spec!r}: {part!r} is not 'label=label' (or 'label=' for not scored)")
        src, dst = (x.strip() for x in part.split("="))
        if src in out:
            raise PipelineError(f"--label-map {spec!r}: {src!r} is mapped twice")
        out[src] = dst or None
    return out


def resolve_label_map(train: list, other: list, given: dict | None, where: str) -> dict:
    """{B label: A label or None} for every label of B's set `other` onto A's `train`: the identity when the sets
    are equal and no map is given; else `given`, which must cover B's labels and name only A's."""
    if given is None:
        if set(other) != set(train):
            raise PipelineError(
                f"{where}: its labels {other} differ from the run's {train}; pass --label-map "
                f"(e.g. '{','.join(f'{x}={train[0]}' for x in other[:2])}') to score it"
            )
        return {lab: lab for lab in other}
    unknown = sorted(set(given) - set(other))
    uncovered = [lab for lab in other if lab not in given]
    wrong = sorted({v for v in given.values() if v is not None} - set(train))
    if unknown or uncovered or wrong:
        raise PipelineError(
            f"{where}: --label-map "
            + "; ".join(
                msg
                for msg, bad in (
                    (f"names {unknown}, not labels of it ({other})", unknown),
                    (f"leaves {uncovered} of its labels unmapped", uncovered),
                    (f"maps onto {wrong}, not labels of the run ({train})", wrong),
                )
                if bad
            )
        )
    return dict(given)


def load_eval_labels(eval_work, train_labels: dict, spec: str | None) -> tuple[dict, dict]:
    """B's labels.json with its labels mapped into A's label set, schema-checked -> (labels, record). record: the
    "cross_corpus" part every output carries (eval_work, both label sets, the map, the cache label names)."""
    path = Path(eval_work) / "labels.json"
    if not path.is_file():
        raise PipelineError(f"{path}: not found; run step 1 for the evaluation corpus first (--eval-work)")
    raw = fileio.read_json(path, "labels file")
    if not isinstance(raw, dict) or not isinstance(raw.get("dialogs"), dict):
        raise PipelineError(f"{path}: no 'dialogs' object; not a labels.json written by step 1")
    train, other = label_set(train_labels), label_set(raw)
    mapping = resolve_label_map(train, other, parse_label_map(spec), str(path))
    labels = copy.deepcopy(raw)
    labels["labels"] = train
    labels.pop("label_set", None)  # B's labels are A's now: A's set, named when A's labels.json names it
    labels.update({"label_set": train_labels["label_set"]} if "label_set" in train_labels else {})
    for d in labels["dialogs"].values():
        for u in d.get("utterances", []) if isinstance(d, dict) else []:
            if isinstance(u, dict) and u.get("label") is not None:
                if u["label"] not in mapping:
                    raise PipelineError(f"{path}: utterance {u.get('id')}: label {u['label']!r} not in {other}")
                u["label"] = mapping[u["label"]]
    formats.check_labels(labels, path)
    record = {
        "eval_work": str(eval_work),
        "labels_run": train,
        "labels_eval": other,
        "label_map": None if spec is None else mapping,
        "labels_sha256": fileio.file_sha256(path),
    }
    return labels, record


def split_dialogs(run_config: dict, labels: dict, split: str, where: str) -> tuple[list, str]:
    """(B's dialogs of a split, how they were chosen): "test" = the run's split rule (its test session, and a
    held-out script) over B's labels.json (common.rundirs.split_rule_test_dialogs); "all" = every dialog."""
    if split == "all":
        return sorted(labels["dialogs"]), "every dialog of labels.json"
    rule = run_config.get("split") or {}
    dialogs = rundirs.split_rule_test_dialogs(rule, labels)
    if dialogs is None:
        raise PipelineError(f"{where}: the run's split records no test_session; score --eval-split all")
    if not dialogs:
        sessions = sorted({d.get("session") for d in labels["dialogs"].values()}, key=str)
        raise PipelineError(
            f"{where}: no dialog of session {rule['test_session']} (the run's test session); its sessions are "
            f"{sessions}; score --eval-split all"
        )
    return dialogs, f"the run's split rule (test session {rule['test_session']}) over labels.json"


def eval_dir(run_dir, name: str, split: str) -> Path:
    """Where a cross-corpus evaluation of a run writes: RUN/eval/<name>/<split>/."""
    return Path(run_dir) / "eval" / name / split


def predict_overrides(config: dict, eval_work, pipe: str, variant: str, dialogs: list) -> dict:
    """The run config's entries that make evaluate.predict_split read B: its work dir, pipe, variant, the dialogs
    (as the "test" split) and, for a frozen run, feature caches under B (same extractor keys)."""
    features = {
        kind: str(Path(eval_work) / "features" / Path(folder).parent.parent.name / pipe / variant)
        for kind, folder in (config.get("feature_dirs") or {}).items()
    }
    return {
        "work": str(eval_work),
        "pipe": pipe,
        "variant": variant,
        "split": {"test": list(dialogs)},
        **({"feature_dirs": features} if features else {}),
    }


def relabel_segments(predictions: dict, datasets: dict, cache_dir, names: list, mapping: dict) -> set:
    """Set each predicted segment's "label" from B's step-3 cache: its label index names a class of B's set
    (`names`), mapped into A's (`mapping`; None = not scored). The cache indices come from the datasets
    predict_split read for `cache_dir`. Returns the (dialog, id) of the segments whose label the map dropped."""
    index = {
        (s["dialog"], s["id"]): s["label"]
        for key, ds in datasets.items()
        if key[0] == str(cache_dir)
        for s in ds.segments
    }
    dropped = set()
    for seg in predictions["segments"]:
        i = index[seg["dialog"], seg["id"]]
        seg["label"] = mapping[names[i]] if i >= 0 else None
        if i >= 0 and seg["label"] is None:
            dropped.add((seg["dialog"], seg["id"]))
    return dropped


def eval_identity(eval_work, pipe: str, variant: str, dialogs) -> dict:
    """B's data identity (common.rundirs.run_data_identity) over the dialogs scored."""
    return rundirs.run_data_identity(eval_work, pipe, variant, dialogs)


def check_same_eval_data(recorded: dict, current: dict, where: str) -> None:
    """Step 6 scores the predictions step 5 made: B's data must not have changed in between."""
    changes = rundirs.data_changes(recorded, current)
    if changes:
        raise PipelineError(
            f"{where}: the evaluation corpus changed since these predictions were made: {'; '.join(changes)}; "
            "run evaluate.py with the same --eval-work again"
        )


def short(record: dict) -> str:
    """One line naming a cross-corpus evaluation, for the console."""
    mapped = "" if record["label_map"] is None else f", labels mapped {json.dumps(record['label_map'])}"
    return f"cross-corpus: scored on {record['eval_work']}{mapped}"
