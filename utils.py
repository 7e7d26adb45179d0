"""Shared definitions for the SER-with-alignment pipeline.

Three parts, read in order:
  1. Small shared helpers: the label map, atomic file writing, the loaders for labels.json,
     IEMOCAP's text formats, RTTM files, audio and .pt files, the interval helpers, the run-directory
     helpers, the confusion-matrix bootstrap and the paper's printed numbers. Every step uses these;
     none redefines them.
  2. The model of the paper (Section III-B, Fig. 1): text and audio embedders, bidirectional
     cross-attention with forget gates, the Transformer fusion layer and the linear classifier, as
     the authors implemented them; the fusion ablations; the dataset, batching and feature caches.
  3. Preflight checks and offline model copies (--check, --download-models of the steps).

Paper: Wang, Lee, Chen, "Enhancing Speech Emotion Recognition Leveraging Aligning Timestamps
of ASR Transcripts and Speaker Diarization", IALP 2025 (arXiv 2507.19356).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------------------------
# 1. Shared helpers
# ---------------------------------------------------------------------------------------------

SAMPLE_RATE = 16000  # IEMOCAP audio, wav2vec 2.0 and WhisperX all use 16 kHz

# The 4-class task of the paper (Section IV-A), in the order of its Table II.
LABELS = ("hap", "ang", "sad", "neu")
LABEL_NAMES = {"hap": "happy (+excited)", "ang": "angry", "sad": "sad", "neu": "neutral"}
LABEL_INDEX = {name: i for i, name in enumerate(LABELS)}
# IEMOCAP emotion codes -> 4-class label. "exc" (excited) is merged into "hap", as is standard.
# Every other code (fru, sur, fea, dis, oth, xxx) has no 4-class label.
CODE_TO_LABEL = {"hap": "hap", "exc": "hap", "ang": "ang", "sad": "sad", "neu": "neu"}
IEMOCAP_CODES = ("neu", "hap", "exc", "sad", "ang", "fru", "sur", "fea", "dis", "oth", "xxx")


class PipelineError(Exception):
    """Bad input: the message names the file (and line) and what was expected."""


# ---- the one top-level error path of every step script --------------------------------------
#
# Exit statuses: 0 done; 1 some dialogs failed (each listed, the others written) or a --check found
# problems; 2 bad input, arguments, files or models (one line "error: <file>[:<line>]: <what>");
# 3 an unexpected exception, i.e. a bug (one line; the traceback with --debug); 130 interrupted.

class _UsageError(PipelineError):
    """A command-line error reported by argparse, under run_main."""


QUOTE_CHARS = 120  # the most characters of a bad input line an error message quotes


def quote(text, limit: int = QUOTE_CHARS) -> str:
    """repr(text) of at most about `limit` characters: a longer one keeps its start and end, elides the
    middle and says how long it was (a 1 MB line must not make a 1 MB message)."""
    r = repr(text)
    if len(r) <= limit:
        return r
    head, tail = limit * 2 // 3, limit // 4
    return f"{r[:head]}...{r[-tail:]} ({len(text)} characters)"


def one_line(text: str) -> str:
    """A message on one line: its non-blank lines joined with single spaces."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _os_error_line(error: OSError, script: str) -> str:
    """An OSError -> '<path>: <what went wrong>; <what to do>'."""
    import errno

    path = error.filename
    if path is not None:
        p = Path(os.fsdecode(path))
        if p.name.startswith(".") and p.name.endswith(".tmp"):  # a temp file of atomic_write_bytes
            path = f"{p.parent} (writing a temporary file there)"
        if error.filename2 is not None:
            path = f"{path} -> {os.fsdecode(error.filename2)}"
    what = error.strerror or one_line(str(error)) or type(error).__name__
    hint = {errno.EACCES: "check its permissions (inputs must be readable, the --work folder writable)",
            errno.EPERM: "check its permissions (inputs must be readable, the --work folder writable)",
            errno.EROFS: "a read-only file system: point --work at a writable folder",
            errno.ENOSPC: "no space left: free some space or point --work at another disk",
            errno.EDQUOT: "disk quota exceeded: free some space or point --work at another disk",
            errno.ENOENT: "expected an existing file or folder: check the path",
            errno.EISDIR: "expected a file, found a folder",
            errno.ENOTDIR: "a part of the path is a file, expected a folder"}.get(error.errno)
    where = str(path) if path is not None else script
    return f"{where}: {what}" + (f"; {hint}" if hint else "")


def _hub_error_line(error: BaseException) -> str | None:
    """A huggingface_hub error (model not found, gated, not cached offline, HTTP) -> one line, else None."""
    import sys

    if "huggingface_hub" not in sys.modules:
        return None
    from huggingface_hub import errors as hf

    if not isinstance(error, (hf.HfHubHTTPError, hf.OfflineModeIsEnabled)):
        return None
    m = re.search(r"huggingface\.co/(?:api/models/)?([A-Za-z0-9][\w.-]*/[\w.-]+)", str(error))
    repo = m.group(1) if m and not m.group(1).startswith(("settings/", "docs/")) else "hub model"
    detail = one_line(str(error))
    return f"{repo}: {hub_error_message(repo, error, hub_token())}" + (f" ({detail[:300]})" if detail else "")


def describe_error(error: BaseException, script: str = "") -> tuple[str, int]:
    """An exception that ended a step -> (one-line message without 'error: ', exit status).

    Expected failures (status 2): PipelineError (its message names the file and line), bad
    arguments, OSError (a path that cannot be read or written, a model folder that is not there),
    hub errors (a model not found, gated, or not in the cache offline), a missing package, CUDA
    out of memory. Anything else is a bug (status 3).
    """
    if isinstance(error, PipelineError):
        message = one_line(str(error))
        return (f"{script}: {message}" if message.startswith("-") else message), 2  # "--flag: ..." names no file
    hub = _hub_error_line(error)
    if hub is not None:
        return hub, 2
    if isinstance(error, OSError):
        return _os_error_line(error, script), 2
    if isinstance(error, ModuleNotFoundError):
        return (f"{script}: the Python package {error.name!r} is not installed: install the pinned requirements "
                f"(make install, or pip install -r requirements.txt)"), 2
    if type(error).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError (CUDA)
        return f"{script}: out of GPU memory ({one_line(str(error))[:200]}): lower --batch-size", 2
    return (f"{script}: unexpected {type(error).__name__}: {one_line(str(error))[:500]} (a bug: run the same "
            f"command with --debug for the traceback, and please report it)"), 3


def run_main(main) -> None:
    """The entry point of every step script: `if __name__ == "__main__": utils.run_main(main)`.

    Calls main(argv) with the command line. An expected failure (describe_error) prints ONE line
    "error: <file>[:<line>]: <what was wrong and what was expected>" on stderr and exits with status
    2, also for bad arguments (argparse's message, without its usage block: see --help); Ctrl-C
    prints one line and exits 130; anything else is a bug: one line, status 3. A full traceback is
    printed only with --debug anywhere on the command line (removed before argparse sees it; child
    steps started by reproduce.py inherit it through the environment variable PIPELINE_DEBUG=1).
    Exit statuses a step sets itself pass through (1: some dialogs failed, listed; a --check failed).
    """
    import argparse
    import sys
    import traceback

    argv = [a for a in sys.argv[1:] if a != "--debug"]
    debug = len(argv) < len(sys.argv) - 1 or os.environ.get("PIPELINE_DEBUG") == "1"
    if debug:
        os.environ["PIPELINE_DEBUG"] = "1"
    script = Path(sys.argv[0]).name
    parser_error = argparse.ArgumentParser.error

    def usage_error(parser, message):
        raise _UsageError(f"{parser.prog}: {message} (see {parser.prog} --help)")

    argparse.ArgumentParser.error = usage_error
    try:
        main(argv)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"error: {script}: interrupted; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - every failure ends here, as one line
        if debug:
            traceback.print_exc()
        message, status = describe_error(e, script)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(status)
    finally:
        argparse.ArgumentParser.error = parser_error


def start_step(script: str, argv: list[str], env: dict | None = None, stdout=None) -> subprocess.Popen:
    """`python <script> argv` for a script of this folder, as its own process (the command a
    researcher would type); its output to `stdout` (None: this terminal; a file; subprocess.PIPE),
    stderr with it. Every script that runs another goes through here (reproduce.py its steps and
    their --check, predict.py steps 2 and 3, train.py --check step 1), so no step imports another."""
    import sys

    return subprocess.Popen([sys.executable, str(Path(__file__).resolve().parent / script), *argv], env=env,
                            stdout=stdout, stderr=None if stdout is None else subprocess.STDOUT, text=True)


def session_of(dialog: str) -> int:
    """'Ses03M_impro05a' -> 3."""
    if not (dialog.startswith("Ses") and dialog[3:5].isdigit()):
        raise PipelineError(f"not an IEMOCAP dialog or utterance id: {dialog!r}")
    return int(dialog[3:5])


# IEMOCAP's dialog names: "Ses01F_impro01", "Ses03M_impro05a", "Ses01F_script01_1", "Ses05M_script01_1b".
IEMOCAP_DIALOG_RE = re.compile(r"^Ses(\d\d)[FM]_(?:(impro)\d\d[a-z]?|(script)(\d\d)_\d[a-z]?)$")


def iemocap_dialog_meta(dialog: str) -> dict | None:
    """'Ses05M_script01_1b' -> {"kind": "script", "scenario": "script01_1b", "script": "script01"};
    None for a name that is not IEMOCAP's."""
    m = IEMOCAP_DIALOG_RE.match(dialog)
    if m is None:
        return None
    kind = m.group(2) or m.group(3)
    return {"kind": kind, "scenario": dialog.split("_", 1)[1], "script": f"script{m.group(4)}" if kind == "script" else None}


def wav_seconds(path, where: str | None = None) -> float:
    """Length of a dialog wav from its header; it must exist, be complete, decode and be 16 kHz with
    samples (what steps 2-3 read). Errors name `where` (default: the file)."""
    import soundfile as sf

    path = Path(path)
    where = where or str(path)
    if not path.is_file():
        raise PipelineError(f"{where}: audio file {path} not found")
    check_wav_complete(path)
    try:
        info = sf.info(str(path))
    except Exception as e:
        raise PipelineError(f"{where}: cannot decode audio file {path}: {one_line(str(e))}") from e
    if info.samplerate != SAMPLE_RATE or info.frames == 0:
        raise PipelineError(f"{where}: {path}: {info.samplerate} Hz, {info.frames} frames; expected {SAMPLE_RATE} Hz "
                            "audio with samples (resample it first)")
    return info.frames / info.samplerate


def atomic_write_bytes(path, data: bytes) -> None:
    """Write data to path via a temp file in the same folder and a rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The writer's pid in the name lets a later run tell a killed write's leftover from a live one (remove_stale_temp).
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private (0600); the output gets an ordinary file's mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ".<name>.<pid>.<random>.tmp" (atomic_write_bytes); ".<name>.<random>.tmp" from code before the pid was added.
TEMP_NAME_RE = re.compile(r"^\..+?(?:\.(\d+))?\.[A-Za-z0-9_]+\.tmp$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: the process exists (another user's)
        return True
    return True


def remove_stale_temp(*dirs, recursive: bool = True) -> int:
    """Remove the temporary files that atomic_write_bytes left in dirs (and, recursive, below them)
    when its process was killed mid-write: a name of its pattern whose writer pid is no longer
    alive, or this process's own (none of its writes is in flight when a step starts). Returns
    how many were removed; a step calls it on its output folders when it starts."""
    removed = 0
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            continue
        for f in (d.rglob(".*.tmp") if recursive else d.glob(".*.tmp")):
            m = TEMP_NAME_RE.match(f.name)
            if m is None or not f.is_file():
                continue
            pid = int(m.group(1)) if m.group(1) else None
            if pid is None or pid == os.getpid() or not _pid_alive(pid):
                try:
                    f.unlink()
                    removed += 1
                except FileNotFoundError:  # removed meanwhile by its writer or another cleaner
                    pass
    return removed


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj, indent=1) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def read_json(path, what: str = "JSON file"):
    """Load a JSON file, failing with a message that names the file."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: {what} not found")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PipelineError(f"{path}: cannot read {what}: {e.strerror or e}") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise PipelineError(f"{path}:{line}: corrupt {what}: not UTF-8 text (byte 0x{data[e.start]:02X})") from None
    try:
        return json.loads(text)
    except RecursionError:  # e.g. a list nested 100,000 deep
        raise PipelineError(f"{path}: corrupt {what}: nested deeper than Python's recursion limit "
                            f"({__import__('sys').getrecursionlimit()} levels)") from None
    except ValueError as e:  # JSONDecodeError, or an integer of more than 4300 digits
        raise PipelineError(f"{path}: corrupt {what}: {one_line(str(e))}") from e


def atomic_torch_save(obj, path, checksum: bool = True) -> str:
    """torch.save to path atomically -> the sha256 of the bytes written. checksum (default) also
    records that sha256 in the sidecar <path>.sha256 (checksum_path), removed before the write and
    written after it, so that a kill in between leaves a file without a sidecar (unfinished) and
    never a sidecar that belongs to other bytes. load_checked_pt verifies it (step-3 and feature
    caches); checkpoints get one too, unverified by load_pt."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    if checksum:
        checksum_path(path).unlink(missing_ok=True)
    atomic_write_bytes(path, data)
    if checksum:
        atomic_write_text(checksum_path(path), f"{digest}  {Path(path).name}\n")
    return digest


def checksum_path(path) -> Path:
    """The sidecar holding a file's sha256 (as sha256sum writes it): <file>.sha256."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def read_verified(path, what: str, rerun: str) -> tuple[bytes, str]:
    """(bytes, sha256) of a file whose sha256 must equal the one in its sidecar (checksum_path), the
    file read once. PipelineError naming the file, ending with `rerun` (how to rewrite it), when the
    file or its sidecar is missing or the digests differ (flipped, swapped or truncated bytes)."""
    path, side = Path(path), checksum_path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: {what} not found; {rerun}")
    if not side.is_file():
        raise PipelineError(f"{path}: {what} without its checksum file {side.name} (its write did not finish, "
                            f"or an older version wrote it); {rerun}")
    try:
        data, recorded = path.read_bytes(), side.read_text(encoding="utf-8", errors="replace").split()
    except OSError as e:
        raise PipelineError(f"{path}: cannot read {what}: {e.strerror or e}") from e
    digest = hashlib.sha256(data).hexdigest()
    if not recorded or recorded[0] != digest:
        raise PipelineError(f"{path}: corrupt {what}: its sha256 {digest[:16]}... differs from the one recorded in "
                            f"{side.name} when it was written; {rerun}")
    return data, digest


def verified_sha256(path, what: str = "file", rerun: str = "re-run the step that writes it") -> str:
    """A file's sha256, checked against its sidecar (read_verified): a digest of what a run read."""
    return read_verified(path, what, rerun)[1]


def load_checked_pt(path, what: str, rerun: str):
    """(object, sha256) of a .pt written by atomic_torch_save(checksum=True): the bytes read once and
    verified (read_verified), then loaded from memory with weights_only=True."""
    import io

    import torch

    data, digest = read_verified(path, what, rerun)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), digest
    except Exception as e:  # verified bytes that do not load: written by other code
        raise PipelineError(f"{path}: unreadable {what}: {type(e).__name__}: {one_line(str(e))[:200]}; {rerun}") from e


def load_pt(path, what: str = ".pt file"):
    """torch.load with weights_only=True (no pickled code runs), with errors naming the file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt zip, truncated file, unpickling refused
        raise PipelineError(f"{path}: corrupt or unreadable {what}: {type(e).__name__}: {e}") from e


def load_labels(work, require=()) -> dict:
    """Read WORK/labels.json (written by step 1, iemo_lab_with_timestamps.py), its shape checked
    (check_labels) so that no step meets a missing key or a wrong type later. `require`: dialog
    keys this step needs besides "utterances" (steps 2 and 3: "wav")."""
    path = Path(work) / "labels.json"
    if not path.is_file():
        raise PipelineError(f"{path}: not found; run step 1 first: python iemo_lab_with_timestamps.py --work {work}")
    data = read_json(path, "labels file")
    if not isinstance(data, dict) or "dialogs" not in data:
        raise PipelineError(f"{path}: no 'dialogs' key; not a labels.json written by step 1")
    check_labels(data, path, require)
    return data


def count_labels(dialogs: dict, raw_key: str) -> dict:
    """The counts of a labels.json (step 1 and corpus_from_csv.py): dialogs (per session), utterances,
    4-class targets per label and per session, and per raw annotation u[raw_key] (IEMOCAP's code,
    a CSV's emotion) as Counters "per_raw" and "target_per_raw" that the caller names. Session keys
    are strings (JSON round-trips)."""
    per_raw, target_per_raw, per_label = Counter(), Counter(), Counter()
    per_session, dialogs_per_session = {}, Counter()
    for d in dialogs.values():
        s = str(d["session"])
        dialogs_per_session[s] += 1
        row = per_session.setdefault(s, {"utterances": 0, "target": 0, **{lab: 0 for lab in LABELS}})
        for u in d["utterances"]:
            per_raw[u[raw_key]] += 1
            row["utterances"] += 1
            if u["label"] is not None:
                per_label[u["label"]] += 1
                target_per_raw[u[raw_key]] += 1
                row["target"] += 1
                row[u["label"]] += 1
    return {"dialogs": len(dialogs), "dialogs_per_session": dict(sorted(dialogs_per_session.items())),
            "utterances": sum(per_raw.values()), "target": sum(per_label.values()),
            "per_label": {lab: per_label[lab] for lab in LABELS}, "per_raw": per_raw, "target_per_raw": target_per_raw,
            "target_per_session": {s: r["target"] for s, r in sorted(per_session.items())},
            "per_session": dict(sorted(per_session.items()))}


def is_finite_number(x) -> bool:
    """A real number (not a bool) that is finite: no NaN, no infinity, no integer too large for a float."""
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


def check_session_name(dialog: str, session, where: str) -> None:
    """An IEMOCAP-named dialog (Ses02F_...) must be in the session its name gives (the fold follows the
    session); other names (a CSV corpus) may have any session."""
    if session is not None and iemocap_dialog_meta(dialog) is not None and session != session_of(dialog):
        raise PipelineError(f"{where}: 'session' {session} but the IEMOCAP name says session {session_of(dialog)}; "
                            "a dialog's session decides its fold, so they must agree")


def check_labels(data: dict, path, require=()) -> None:
    """The schema of labels.json (docs/FORMATS.md), checked once where it is read (load_labels).

    Errors name labels.json, the dialog and the utterance. Required: "dialogs" an object of dialog
    objects, each with an "utterances" list (and the keys in `require`); each utterance an object
    with a non-empty string "id", unique in its dialog; "start" and "end" finite numbers with
    0 <= start <= end; "speaker" "F" or "M" (IEMOCAP's actors; in an id '<dialog>_<F|M>...' the
    letter must agree); "label" one of utils.LABELS or null. Checked when present: top-level
    "labels" equal to utils.LABELS, "corpus" a string; a dialog's "session" an integer, "wav" a
    string, "kind" impro or script, "script" a string or null; an utterance's "code" one of
    IEMOCAP_CODES, "text" a string, "wdseg" a string (no two utterances share one) or null.
    """
    if "labels" in data and list(data["labels"]) != list(LABELS):
        raise PipelineError(f"{path}: made for the classes {data['labels']!r}, this code uses {list(LABELS)}")
    if "corpus" in data and not isinstance(data["corpus"], str):
        raise PipelineError(f"{path}: 'corpus' must be a string (the corpus root), got {data['corpus']!r:.60}")
    dialogs = data["dialogs"]
    if not isinstance(dialogs, dict):
        raise PipelineError(f"{path}: 'dialogs' must be an object {{dialog: {{...}}}}, got {type(dialogs).__name__}")
    wdsegs = {}
    for d, info in dialogs.items():
        where = f"{path}: dialog {d}"
        if not isinstance(info, dict):
            raise PipelineError(f"{where}: expected an object, got {type(info).__name__}")
        for key in ("utterances", *require):
            if key not in info:
                raise PipelineError(f"{where}: no {key!r} key; expected the dialog record step 1 writes")
        checks = {"session": lambda v: isinstance(v, int) and not isinstance(v, bool),
                  "wav": lambda v: isinstance(v, str) and v != "", "kind": lambda v: v in ("impro", "script"),
                  "script": lambda v: v is None or isinstance(v, str), "scenario": lambda v: isinstance(v, str)}
        for key, ok in checks.items():
            if key in info and not ok(info[key]):
                raise PipelineError(f"{where}: bad {key!r} {info[key]!r:.60}")
        check_session_name(d, info.get("session"), where)
        if not isinstance(info["utterances"], list):
            raise PipelineError(f"{where}: 'utterances' must be a list, got {type(info['utterances']).__name__}")
        ids = set()
        for n, u in enumerate(info["utterances"]):
            if not isinstance(u, dict):
                raise PipelineError(f"{where}: utterance {n}: expected an object, got {type(u).__name__}")
            missing = [k for k in ("id", "start", "end", "speaker", "label") if k not in u]
            if missing:
                raise PipelineError(f"{where}: utterance {n} lacks {missing}")
            if not isinstance(u["id"], str) or not u["id"]:
                raise PipelineError(f"{where}: utterance {n}: 'id' must be a non-empty string, got {u['id']!r:.60}")
            at = f"{where}: utterance {u['id']}"
            if u["id"] in ids:
                raise PipelineError(f"{at}: listed twice (utterance ids must be unique in a dialog)")
            ids.add(u["id"])
            if not (is_finite_number(u["start"]) and is_finite_number(u["end"]) and 0 <= u["start"] <= u["end"]):
                raise PipelineError(f"{at}: start {u['start']!r:.40}, end {u['end']!r:.40}; expected finite "
                                    "seconds with 0 <= start <= end")
            if u["speaker"] not in ("F", "M"):
                raise PipelineError(f"{at}: speaker {u['speaker']!r:.40}, expected 'F' or 'M' (IEMOCAP's actors)")
            suffix = u["id"][len(d) + 1:] if u["id"].startswith(f"{d}_") else ""
            if suffix[:1] in ("F", "M") and suffix[:1] != u["speaker"]:
                raise PipelineError(f"{at}: speaker {u['speaker']!r} but the id names speaker {suffix[0]!r}")
            if u["label"] is not None and u["label"] not in LABELS:
                raise PipelineError(f"{at}: label {u['label']!r:.40}, expected one of {list(LABELS)} or null "
                                    "(other emotion codes have label null)")
            if "code" in u and u["code"] not in IEMOCAP_CODES:
                raise PipelineError(f"{at}: code {u['code']!r:.40}, expected one of {', '.join(IEMOCAP_CODES)}")
            if "text" in u and not isinstance(u["text"], str):
                raise PipelineError(f"{at}: 'text' must be a string, got {type(u['text']).__name__}")
            wdseg = u.get("wdseg")
            if wdseg is not None:
                if not isinstance(wdseg, str) or not wdseg:
                    raise PipelineError(f"{at}: 'wdseg' must be a path or null, got {wdseg!r:.60}")
                if wdseg in wdsegs:
                    raise PipelineError(f"{at}: wdseg {wdseg} is also the file of utterance {wdsegs[wdseg]}")
                wdsegs[wdseg] = u["id"]


# Times (of utterances, words, turns, segments) may pass the end of the dialog audio by this much:
# rounding in the tools that wrote them (IEMOCAP's 4-decimal times, 10 ms frames, 3-decimal JSON).
# Beyond it the time belongs to other audio, and the reader stops with an error naming the file,
# the item and the audio length.
TIME_TOLERANCE_S = 0.05


def check_in_audio(end: float, duration: float | None, where: str, item: str) -> None:
    """PipelineError unless `end` (seconds) is at most the audio's duration + TIME_TOLERANCE_S."""
    if duration is not None and end > duration + TIME_TOLERANCE_S:
        at = f"{end:.3f}" if end < 1e9 else f"{end:.4g}"
        raise PipelineError(f"{where}: {item} ends at {at} s, after the end of the audio ({duration:.3f} s; "
                            f"tolerance {TIME_TOLERANCE_S:g} s): times must lie inside the dialog wav")


def read_rttm(path, dialog: str | None = None, duration: float | None = None,
              counts: dict | None = None) -> list[tuple[float, float, str]]:
    """Read an RTTM file -> [(start, end, speaker)] sorted by start. Errors name file:line.

    Every line must be 'SPEAKER <file> <chan> <start> <dur> <NA> <NA> <label> ...' in UTF-8 with
    finite start >= 0 and duration >= 0. dialog: keep only the lines whose <file> field is this
    recording (a multi-recording RTTM); the others are counted in counts["other_recording_lines"]
    (names in counts["other_recordings"]), and a file with lines but none of this recording is an
    error. duration (seconds of the dialog audio): a turn ending later than duration +
    TIME_TOLERANCE_S is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: RTTM file not found")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PipelineError(f"{path}: cannot read RTTM file: {e.strerror or e}") from e
    turns, others = [], Counter()
    for n, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PipelineError(f"{path}:{n}: not UTF-8 text (byte 0x{raw[e.start]:02X} at column {e.start + 1}); "
                                "expected an RTTM file in UTF-8") from None
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if fields[0] != "SPEAKER" or len(fields) < 8:
            raise PipelineError(f"{path}:{n}: expected 'SPEAKER <file> <chan> <start> <dur> <NA> <NA> <label> ...', "
                                f"got {quote(line.strip())}")
        try:
            start, dur = float(fields[3]), float(fields[4])
        except ValueError:
            raise PipelineError(f"{path}:{n}: start and duration must be numbers, got {fields[3]!r:.40} {fields[4]!r:.40}") from None
        if not (math.isfinite(start) and math.isfinite(dur) and math.isfinite(start + dur)):
            raise PipelineError(f"{path}:{n}: start and duration must be finite numbers of seconds, got "
                                f"{fields[3]!r:.40} {fields[4]!r:.40}")
        if not (start >= 0 and dur >= 0):
            raise PipelineError(f"{path}:{n}: negative start or duration in {quote(line.strip())}")
        if dialog is not None and fields[1] != dialog:
            others[fields[1]] += 1
            continue
        check_in_audio(start + dur, duration, f"{path}:{n}", f"the turn {start:.3f} + {dur:.3f} s")
        turns.append((start, start + dur, fields[7]))
    if dialog is not None and others and not turns:
        raise PipelineError(f"{path}: no turn of the recording {dialog}; the file names "
                            f"{', '.join(sorted(others)[:5])}{' ...' if len(others) > 5 else ''}")
    if counts is not None:
        counts["other_recording_lines"] = counts.get("other_recording_lines", 0) + sum(others.values())
        counts["other_recordings"] = sorted(set(counts.get("other_recordings", [])) | set(others))
    turns.sort()
    return turns


def write_rttm(path, dialog: str, turns) -> None:
    """Write [(start, end, speaker)] as RTTM, atomically."""
    lines = [f"SPEAKER {dialog} 1 {s:.3f} {e - s:.3f} <NA> <NA> {spk} <NA> <NA>\n"
             for s, e, spk in sorted(turns) if e > s]
    atomic_write_text(path, "".join(lines))


AUDIO_CHANNELS = ("mean", "0", "1")  # the --channel choices of align.py


def check_wav_complete(path) -> None:
    """PipelineError if a RIFF/WAVE file is shorter than its header says (a truncated copy).

    libsndfile reads such a file without complaint, returning fewer samples than were recorded.
    The 'data' chunk's declared size is compared with the bytes the file holds; sizes 0 and
    0xFFFFFFFF (streaming writers that never filled the header in) and other formats are not checked.
    """
    import struct

    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if f.read(12)[8:12] != b"WAVE":
                return
            pos = 12
            for _ in range(64):  # a wav has a handful of chunks before 'data'
                header = f.read(8)
                if len(header) < 8:
                    return
                chunk, length = header[:4], struct.unpack("<I", header[4:])[0]
                if chunk == b"data":
                    held = size - (pos + 8)
                    if length not in (0, 0xFFFFFFFF) and held < length:
                        raise PipelineError(f"{path}: truncated: the header declares {length} bytes of audio, the "
                                            f"file holds {held} ({100 * held / length:.1f} %); copy the file again")
                    return
                pos += 8 + length + (length & 1)
                f.seek(pos)
    except OSError as e:
        raise PipelineError(f"{path}: cannot read audio file: {e.strerror or e}") from e


def load_audio(path, sample_rate: int = SAMPLE_RATE, channel: str = "mean") -> np.ndarray:
    """Decode a wav file with soundfile -> float32 mono [samples] in [-1, 1].

    channel: how a multi-channel file (IEMOCAP's stereo dialog wavs) becomes mono. "mean"
    (default) averages the channels, so both actors are heard (each channel favours one actor's
    microphone); "0" or "1" (or the int) takes that channel alone (the authors took channel 0).
    A mono file is returned as it is whatever `channel` says. No resampling: a file at another
    rate is an error, since every IEMOCAP wav is 16 kHz.
    """
    channel = str(channel)
    if channel not in AUDIO_CHANNELS:
        raise ValueError(f"channel must be one of {AUDIO_CHANNELS}, got {channel!r}")
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: audio file not found")
    check_wav_complete(path)
    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        raise PipelineError(f"{path}: cannot decode audio: {e}") from e
    if sr != sample_rate:
        raise PipelineError(f"{path}: sample rate {sr} Hz, expected {sample_rate} Hz")
    if audio.shape[0] == 0:
        raise PipelineError(f"{path}: audio file has no samples")
    if not np.isfinite(audio).all():  # a float wav can hold NaN or infinity; every later step would spread it
        bad = ~np.isfinite(audio).all(axis=1)
        first = int(np.argmax(bad))
        raise PipelineError(f"{path}: {int(bad.sum())} samples are NaN or infinite (the first at "
                            f"{first / sr:.3f} s); expected finite samples")
    if audio.shape[1] == 1:
        return audio[:, 0]
    if channel == "mean":
        return audio.mean(axis=1)
    if int(channel) >= audio.shape[1]:
        raise PipelineError(f"{path}: no channel {channel} in a {audio.shape[1]}-channel file")
    return np.ascontiguousarray(audio[:, int(channel)])


# IEMOCAP's text formats, read by steps 1 and 2 (docs/FORMATS.md).
# "Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me."
TRANSCRIPT_RE = re.compile(r"^(Ses\S+) \[(\d+(?:\.\d*)?)-(\d+(?:\.\d*)?)\]:(.*)$")


def read_text_lines(path, decode_log: Counter | None = None) -> list[str]:
    """Lines of a corpus text file without line ends.

    UTF-8 first, then cp1252, then latin-1 (never fails). Splits on "\\n" only: str.splitlines
    would also split on characters such as U+0085 that a latin-1 decode can produce.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PipelineError(f"{path}: cannot read file: {e}") from e
    for encoding in ("utf-8", "cp1252", "latin-1"):
        try:
            text = data.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    if decode_log is not None:
        decode_log[encoding] += 1
    if text.startswith("\ufeff"):
        text = text[1:]
    return [line.rstrip("\r") for line in text.split("\n")]


MAX_WDSEG_FRAME = 60_000  # 10 minutes at 100 frames/s: far above any utterance (IEMOCAP's are under 35 s)


def parse_wdseg(path, seconds: float | None = None) -> list[tuple[int, int, int, str]]:
    """Parse one ForcedAlignment .wdseg (CMU Sphinx-3) -> [(start_frame, end_frame, score, token)].

    Tokens are returned as written (<s>, <sil>, ++BREATHING++, WHAT(2) ...); frames are 10 ms from
    the start of the utterance wav. Validates the "SFrm EFrm SegAScr Word" header, every row and the
    "Total score: N" trailer. seconds: the utterance's length; a row ending later (frame EFrm ends
    at (EFrm + 1) / 100 s) than seconds + TIME_TOLERANCE_S is an error naming the row: its times
    belong to audio outside the utterance (docs/FORMATS.md).
    """
    path = Path(path)
    lines = read_text_lines(path)
    rows, state, last = [], "header", 0  # header -> rows -> done; last: the last non-blank line
    for n, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        last = n
        where = f"{path}:{n}"
        if state == "header":
            if fields != ["SFrm", "EFrm", "SegAScr", "Word"]:
                raise PipelineError(f"{where}: expected the header 'SFrm EFrm SegAScr Word', got {quote(line)}")
            state = "rows"
        elif state == "rows" and fields[:2] == ["Total", "score:"]:
            if len(fields) != 3 or not re.fullmatch(r"-?\d+", fields[2]):
                raise PipelineError(f"{where}: expected 'Total score: <integer>', got {quote(line)}")
            state = "done"
        elif state == "rows":
            if len(fields) != 4 or not all(re.fullmatch(r"-?\d+", f) for f in fields[:3]):
                raise PipelineError(f"{where}: expected '<start frame> <end frame> <score> <word>', got {quote(line)}")
            if any(len(f.lstrip("-")) > 18 for f in fields[:3]):
                raise PipelineError(f"{where}: a number of {max(len(f) for f in fields[:3])} digits; expected frame "
                                    f"numbers up to {MAX_WDSEG_FRAME} and an integer score")
            start, end, score = int(fields[0]), int(fields[1]), int(fields[2])
            if not 0 <= start <= end:
                raise PipelineError(f"{where}: expected 0 <= start frame <= end frame, got {start} {end}")
            if end > MAX_WDSEG_FRAME:
                raise PipelineError(f"{where}: end frame {end} is {end / 100:.0f} s into the utterance; expected at "
                                    f"most {MAX_WDSEG_FRAME} (10 minutes at 100 frames per second)")
            if seconds is not None and (end + 1) / 100 > seconds + TIME_TOLERANCE_S:
                raise PipelineError(f"{where}: word {quote(fields[3], 60)} ends at frame {end} "
                                    f"({(end + 1) / 100:.2f} s), "
                                    f"past the end of its utterance ({seconds:.2f} s long); expected frames inside "
                                    "the utterance's audio")
            rows.append((start, end, score, fields[3]))
        else:
            raise PipelineError(f"{where}: expected nothing after the 'Total score' line, got {quote(line)}")
    if state == "header":
        raise PipelineError(f"{path}: expected the header 'SFrm EFrm SegAScr Word', got an empty file")
    if state != "done":
        raise PipelineError(f"{path}:{last}: expected a 'Total score: N' line after this line, got end of file")
    if not rows:
        raise PipelineError(f"{path}: no word rows between the header and the 'Total score' line")
    return rows


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def code_version() -> dict:
    """The git commit of this code and whether the tree has uncommitted changes."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    return {"commit": commit or "unknown", "dirty": dirty}


DEMO_NOTE = ("DEMO: these numbers come from the synthetic demo corpus (and, in the default demo setup, tiny "
             "randomly initialised models); they say nothing about IEMOCAP or about the paper's claims.")


def demo_note(labels: dict) -> str | None:
    """DEMO_NOTE if labels.json was made from the generated demo corpus (it leaves its ground truth
    in the corpus root), else None. Every report of a run carries it, so no demo number passes for
    an IEMOCAP one."""
    return DEMO_NOTE if (Path(labels.get("corpus", "")) / "demo_ground_truth.json").is_file() else None


def overlap(a_start: float, a_end: float, b_start: float, b_end: float) -> float:
    """Length of the intersection of two intervals (0 if disjoint)."""
    return max(0.0, min(a_end, b_end) - max(a_start, b_start))


# Interval unions: the one implementation used by align.py (turn merging, purity, coverage),
# teer_calculate.py (scoring regions, collars) and evaluate.py (coverage). An interval is a
# (start, end) pair in seconds; "merged" means sorted, disjoint, non-empty, touching ones joined.

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


# Run directories (WORK/runs/<run>/), read by evaluate.py and teer_calculate.py.

def fold_dirs(run_dir) -> list[Path]:
    """Fold sub-runs of a multi-fold run: config.json "folds" (names or {"name"/"dir"}), else
    fold<k>/ subfolders holding a config.json, in k order; [] for a single run."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    config = read_json(config_path, "run config") if config_path.is_file() else {}
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
    return sorted(d for d, info in labels["dialogs"].items() if info.get("session") == session
                  and (held is None or info.get("kind") != "script" or info.get("script") == held))


def run_test_dialogs(run_dir, predictions: dict, labels: dict) -> tuple[list[str], str]:
    """The run's test dialogs from its config.json split, else the dialogs in predictions.json.
    With the split's test_session recorded, the test dialogs are the recorded list and every
    labels.json dialog the split's rule puts in the test set (split_rule_test_dialogs): a dialog
    step 2 or 3 failed on stays in the test set, its utterances scored as missed.

    Accepted: config["split"]["test"] (or "test_dialogs") as dialog names or session numbers,
    or a dict {"dialogs": [...]} / {"sessions": [...]}. Returns (dialogs, where they came from)."""
    config_path = Path(run_dir) / "config.json"
    config = read_json(config_path, "run config") if config_path.is_file() else {}
    split = config.get("split") or {}
    test = split.get("test", split.get("test_dialogs")) if isinstance(split, dict) else None
    if isinstance(test, dict):  # e.g. {"sessions": [5], "dialogs": [...]}
        test = test.get("dialogs") or test.get("sessions")
    if isinstance(test, list) and test:
        if all(isinstance(t, int) for t in test):
            return sorted(d for d, v in labels["dialogs"].items() if v.get("session") in test), f"{config_path} (sessions {test})"
        by_rule = split_rule_test_dialogs(split, labels)
        if by_rule is not None:  # the dialogs step 2 or 3 failed on are not in the recorded list: put them back
            return sorted({str(t) for t in test} | set(by_rule)), f"{config_path} (its split's rule over labels.json)"
        return sorted(str(t) for t in test), str(config_path)
    dialogs = sorted({s["dialog"] for s in predictions.get("segments", []) if "dialog" in s})
    return dialogs, "predictions.json (no test split in config.json)"


# ---- what a run was trained on (train.py records it; evaluate.py, teer_calculate.py, predict.py and
# train.py --resume check it and refuse, one line, when it changed: --allow-changed-data) ----------

ALLOW_CHANGED_DATA = "--allow-changed-data"  # the override flag of every step that checks a run's data


def file_sha256(path, chunk: int = 1 << 22) -> str:
    """The sha256 of a file's bytes (hex), read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_SHA256_SEEN: dict = {}  # (path, inode, size, mtime, ctime) -> sha256: one process (evaluate.py of many runs)
                        # hashes a cache file once; any rewrite (atomic: a new inode) is hashed again


def _cache_file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _SHA256_SEEN:
        _SHA256_SEEN[key] = file_sha256(path)
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
    config = read_json(manifest, "alignment manifest").get("config") if manifest.is_file() else None
    files = {}
    for name in sorted(f"{d}.pt" for d in set(dialogs)):
        path = variant_dir / "cache" / name
        files[name] = _cache_file_sha256(path) if path.is_file() else None
    overall = hashlib.sha256("".join(f"{n}\0{h}\n" for n, h in files.items()).encode()).hexdigest()
    labels = work / "labels.json"
    return {"work": str(work), "pipe": pipe, "variant": variant,
            "labels_sha256": file_sha256(labels) if labels.is_file() else None,
            "step3_config": config, "step3_config_key": None if config is None else step3_config_key(config),
            "cache_sha256": overall, "cache_files": files}


def data_changes(recorded: dict, current: dict) -> list[str]:
    """What differs between two run_data_identity results, each as a short phrase naming it."""
    changes = []
    if recorded.get("labels_sha256") != current.get("labels_sha256"):
        changes.append(f"labels.json (sha256 {str(recorded.get('labels_sha256'))[:12]} -> "
                       f"{str(current.get('labels_sha256'))[:12]})")
    if recorded.get("step3_config_key") != current.get("step3_config_key"):
        old, new = recorded.get("step3_config") or {}, current.get("step3_config") or {}
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        changes.append(f"step-3 config of {current.get('pipe')}/{current.get('variant')} ("
                       + (", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys) or "no manifest") + ")")
    if recorded.get("cache_sha256") != current.get("cache_sha256"):
        old, new = recorded.get("cache_files") or {}, current.get("cache_files") or {}
        names = sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))
        what = [f"{n} ({'missing' if new.get(n) is None else 'changed'})" for n in names[:5]]
        more = f" and {len(names) - 5} more" if len(names) > 5 else ""
        changes.append(f"step-3 cache files {', '.join(what)}{more}")
    return changes


def changed_data_error(run_dir, changes: list[str], instead: str) -> PipelineError:
    """The one-line refusal of a run whose data changed: what changed, what to do, the override flag."""
    return PipelineError(f"{run_dir}: its data changed since it was trained: {'; '.join(changes)}; {instead} "
                         f"or pass {ALLOW_CHANGED_DATA} to use it anyway (recorded)")


def check_one_run_data(run_dir, labels_path=None) -> dict:
    """{"status": "same" | "changed" | "not recorded", "changed": [...]} of one run dir (not a fold
    parent): its config.json "data" against the data as it is now. labels_path: the labels.json the
    caller scores with (default: the one the run was trained with)."""
    path = Path(run_dir) / "config.json"
    config = read_json(path, "run config") if path.is_file() else {}
    recorded = config.get("data") if isinstance(config, dict) else None
    if not isinstance(recorded, dict):
        return {"status": "not recorded", "changed": []}
    if not all(isinstance(recorded.get(k), str) for k in ("work", "pipe", "variant")) \
            or not isinstance(recorded.get("cache_files"), dict):
        raise PipelineError(f"{path}: 'data' must record the work dir, pipe, variant and cache_files train.py "
                            f"wrote, got {json.dumps(recorded)[:120]}")
    current = run_data_identity(recorded["work"], recorded["pipe"], recorded["variant"],
                                [Path(n).stem for n in recorded.get("cache_files", {})])
    if labels_path is not None:
        current["labels_sha256"] = file_sha256(labels_path) if Path(labels_path).is_file() else None
    changes = data_changes(recorded, current)
    earlier = config.get("data_changed_on_resume") or []
    return {"status": "changed" if changes else "same", "changed": changes,
            **({"changed_on_resume": earlier} if earlier else {})}


def check_run_data(run_dir, labels_path=None, allow: bool = False) -> dict:
    """The "data_check" record (metrics.json, teer.json) of a run dir, a fold run's over its folds:
    {"status", "changed", "allow_changed_data"} (+ "folds": each fold's check_one_run_data). When the
    data changed and not `allow`: a one-line PipelineError naming what changed and the override flag."""
    run_dir = Path(run_dir)
    folds = fold_dirs(run_dir)
    checks = ({f.name: check_one_run_data(f, labels_path) for f in folds} if folds
              else {"": check_one_run_data(run_dir, labels_path)})
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


# ---- confusion matrices and the dialog bootstrap (evaluate.py, reproduce.py) ----------------
#
# Every headline metric is a function of a confusion matrix, so resampling test dialogs needs only
# each dialog's matrix: a resample's matrix is the sum of the drawn dialogs' matrices (a dialog
# drawn twice counts twice). The dialog is the resampling unit because utterances of one dialog
# share speakers, topic and recording, and are not independent.

MISS = "miss"  # confusion column of a reference utterance that no system speech overlaps
HEADLINE = ("accuracy", "ua", "weighted_f1", "macro_f1")


def dialog_confusions(records, dialogs, miss_column: bool = True) -> np.ndarray:
    """Per-dialog confusion matrices [len(dialogs), 4, 5] (miss_column) or [len(dialogs), 4, 4].

    records: dicts with "dialog", "label" (one of LABELS) and "pred" (one of LABELS, or None for a
    miss, which goes to column 4 and needs miss_column). Rows true, columns predicted, order LABELS
    then MISS. Summing over axis 0 gives the confusion matrix of all records.
    """
    row = {d: i for i, d in enumerate(dialogs)}
    cms = np.zeros((len(row), len(LABELS), len(LABELS) + int(miss_column)), dtype=np.int64)
    for r in records:
        if r["dialog"] not in row:
            raise ValueError(f"record {r.get('id', r)} is in dialog {r['dialog']!r}, not one of the dialogs given")
        pred = len(LABELS) if r["pred"] is None and miss_column else LABEL_INDEX.get(r["pred"])
        if r["label"] not in LABEL_INDEX or pred is None:
            raise ValueError(f"record {r.get('id', r)}: label {r['label']!r} / pred {r['pred']!r} not in {LABELS}"
                             + (" (or None for a miss)" if miss_column else ""))
        cms[row[r["dialog"]], LABEL_INDEX[r["label"]], pred] += 1
    return cms


def metrics_from_confusion(cm) -> dict:
    """Headline metrics of one or many confusion matrices, in numpy (fast enough to bootstrap).

    cm: [..., 4, 4], or [..., 4, 5] whose last column counts misses (reference utterances with no
    prediction). Rows true, columns predicted, order LABELS. Returns arrays of shape [...]: n,
    accuracy, ua, weighted_f1, macro_f1; and [..., 4]: precision, recall, f1, support.
    The conventions are scikit-learn's with zero_division=0 (tests/test_evaluate.py checks them
    against sklearn.metrics): a ratio with a zero denominator is 0; a miss is a wrong answer (it
    counts in its row's support and recall, in no column's precision); F1 = 2 TP / (support +
    predicted); UA = mean recall over the classes with support > 0 (balanced accuracy); weighted
    F1 weights by support; macro F1 averages all 4 classes.
    """
    cm = np.asarray(cm, dtype=np.float64)
    k = len(LABELS)
    if cm.ndim < 2 or cm.shape[-2] != k or cm.shape[-1] not in (k, k + 1):
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
    return {"n": n, "accuracy": ratio(tp.sum(-1), n), "ua": ratio((recall * present).sum(-1), present.sum(-1)),
            "weighted_f1": ratio((f1 * support).sum(-1), n), "macro_f1": f1.mean(-1),
            "precision": ratio(tp, predicted), "recall": recall, "f1": f1, "support": support}


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
        raise ValueError(f"per_dialog_cms of shape {cms.shape}: expected [n_dialogs, 4, K] or [n_seeds, n_dialogs, 4, K]")
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
        raise ValueError(f"paired bootstrap needs [n_seeds, n_dialogs, 4, K] arrays over the same dialogs, "
                         f"got {a.shape} and {b.shape}")
    fn = _metric_function(metric)
    obs_a, obs_b = float(fn(a.sum(1)).mean()), float(fn(b.sum(1)).mean())
    diff = obs_a - obs_b
    draws = dialog_draws(a.shape[1], n_samples, seed)
    diffs = (fn(np.einsum("bd,sdij->bsij", draws, a)).mean(-1)
             - fn(np.einsum("bd,sdij->bsij", draws, b)).mean(-1))  # [n_samples]
    flips = 1.0 if diff == 0 else float(np.mean(np.sign(diffs) != np.sign(diff)))
    return {"metric": metric if isinstance(metric, str) else getattr(metric, "__name__", "custom"),
            "diff": diff, "a": obs_a, "b": obs_b, "ci95": percentile_interval(diffs, 0.95),
            "sign_flip_share": flips, "n_dialogs": int(a.shape[1]), "n_seeds": [int(a.shape[0]), int(b.shape[0])],
            "n_samples": int(n_samples), "seed": int(seed)}


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
# 2. The model (paper Section III-B, Fig. 1)
# ---------------------------------------------------------------------------------------------
#
# Read in this order: the two embedders (z_t, z_a), the Cross-Attention Fusion Block
# (CrossModalAttention: a(t,a), a(a,t); ForgetGate: h(t,a), h(a,t)), the Fusion Layer and Linear
# Classifier (FusionClassifier), the whole model (SERModel, with the fusion ablations), then the data
# side (dataset, collate, length-bucketed sampler) and the frozen-feature cache. The head follows the
# authors' implementation (M4RC034/SER-Align) where the paper is silent: at D = 768 it has
# 19,300,868 parameters (tests/test_model.py checks it).
# torch and transformers are imported here, not at the top, only so that this file reads in order.
import functools  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

MODALITIES = ("fusion", "text", "audio")


def extractor_identity(name_or_dir: str) -> dict:
    """What a pretrained extractor *is*: its name or local dir, a hash of its config and, for a
    local dir, a hash of its weight files (a regenerated demo model with the same config differs)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name_or_dir)
    ident = {"name": str(name_or_dir),
             "config_sha256": hashlib.sha256(config.to_json_string(use_diff=False).encode()).hexdigest()}
    path = Path(name_or_dir)
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
            h.update(f.name.encode())
            h.update(f.read_bytes())
        ident["weights_sha256"] = h.hexdigest()
    return ident


TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.json", "vocab.txt", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "spm.model", "sentencepiece.bpe.model")


def tokenizer_digest(name_or_dir: str) -> str | None:
    """sha256 over the tokenizer files of a local model dir (they change the token ids, so the text
    embeddings: utils.feature_key); None for a hub name (its config and name identify it)."""
    path = Path(name_or_dir)
    if not path.is_dir():
        return None
    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        if (path / name).is_file():
            h.update(name.encode())
            h.update((path / name).read_bytes())
    return h.hexdigest()


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of x [B, T, H] counting only positions where mask [B, T] is true -> [B, H]."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class TextEmbedder(nn.Module):
    """Text branch of Fig. 1: RoBERTa (or another encoder) over the segment transcript, mean-pooled over tokens.

    input_ids, attention_mask [B, L] -> z_t [B, H_t]  (H_t = config.hidden_size, 768 for roberta-base).
    Any encoder AutoModel works (RoBERTa, BERT, DeBERTa v1/v2/v3, ...): only input_ids and the
    attention mask are passed, so models with token type ids (BERT) use their all-zero default,
    which is what their tokenizer gives a single sentence. Padding tokens are excluded from the
    mean by the attention mask and the models mask them in attention (their tokenizers pad on the
    right, so absolute positions are unchanged), so a padded sample gives the same z_t as alone
    (tested for RoBERTa, BERT, DeBERTa v1 and v2: tests/test_encoders.py). The pooler head is not built where the model class offers
    that (add_pooling_layer=False: BERT, RoBERTa): it is unused here (and unused parameters would
    upset DistributedDataParallel); classes without that argument (DeBERTa) have no pooler.
    """

    def __init__(self, name_or_dir: str):
        super().__init__()
        import inspect

        from transformers import AutoConfig, AutoModel
        from transformers.models.auto.modeling_auto import MODEL_MAPPING

        config = AutoConfig.from_pretrained(name_or_dir)
        if getattr(config, "is_encoder_decoder", False):
            raise PipelineError(f"{name_or_dir}: {config.model_type} is an encoder-decoder model; "
                                "--text-model needs an encoder (RoBERTa, BERT, DeBERTa, ...)")
        kwargs = {}
        if type(config) in MODEL_MAPPING:
            if "add_pooling_layer" in inspect.signature(MODEL_MAPPING[type(config)].__init__).parameters:
                kwargs["add_pooling_layer"] = False
        self.model = AutoModel.from_pretrained(name_or_dir, **kwargs)
        self.hidden_size = self.model.config.hidden_size

    def gradient_checkpointing_enable(self) -> None:
        """Recompute activations in backward (train.py --gradient-checkpointing), non-reentrant: see AudioEmbedder's."""
        self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return masked_mean(out, attention_mask.bool())


class AudioEmbedder(nn.Module):
    """Audio branch of Fig. 1: wav2vec 2.0 (or HuBERT, WavLM, data2vec-audio) over the segment
    waveform, mean-pooled over frames.

    input_values [B, S] (normalised, zero-padded), lengths [B] (valid samples) -> z_a [B, H_a].

    The four families share one sequence, Wav2Vec2Model.forward's, which forward() below follows:
    CNN feature_extractor [B, S] -> [B, C, T] -> feature_projection -> _mask_hidden_states
    (SpecAugment while training, as configured) -> Transformer encoder -> mean over valid frames.

    Padding must not change a sample's embedding. The valid samples are carried to frame
    resolution with the model's own _get_feat_extract_output_lengths (the same conv arithmetic in
    every family); the encoder gets that frame mask (it zeroes padded frames before its positional
    convolution and masks them in attention) and the mean pool counts only valid frames. Three
    places are not padding-exact in the Hugging Face code and are made so here:

    1. The CNN of base-size models (wav2vec2-base, hubert-base, wavlm-base: feat_extract_norm
       "group") GroupNorm-normalises its first conv layer over the whole time axis, so zeros
       appended to a sample shift the statistics of every frame. That GroupNorm (one group per
       channel, first layer only) is computed here over each sample's valid frames only; the rest
       of the CNN runs batched (a frame past a sample's end never reaches its valid frames). CNNs
       that normalise each frame alone (LayerNorm in every conv layer: the large models and all of
       data2vec-audio, whose config has no feat_extract_norm) run batched as they are; any other
       normalisation falls back to running the CNN sample by sample. Decided from the modules.
    2. The positional convolution(s) must see zeros past a sample's end, as the conv's own zero
       padding gives a sample alone. HF zeroes padded frames once, before the positional
       embedding; data2vec-audio's is a stack of 5 convs (each + LayerNorm + GELU), so from the
       second conv on the padded frames are no longer zero and leak into a sample's last frames
       (measured on a tiny random model: 1.09 max difference); HuBERT with conv_pos_batch_norm
       applies BatchNorm before its conv, which turns zeros into non-zeros. A forward pre-hook on
       every Conv1d of encoder.pos_conv_embed zeroes the padded frames of its input.
    3. feature_projection returns (hidden, normed features) in wav2vec2 / WavLM / data2vec-audio
       and the hidden states alone in HuBERT: both are accepted.

    SpecAugment (training only, as configured by mask_time_prob / mask_time_length) is skipped for a
    batch whose padded length is at most one time mask: Hugging Face raises on it, and length
    bucketing puts the shortest segments (single words of ASR output) in one batch.

    WavLM's gated relative position bias depends on frame distance and each frame's own state,
    and its attention takes the frame mask as key padding mask: exact as it is. Adapters
    (config.add_adapter, a strided conv stack after the encoder) are refused. HuBERT has no
    freeze_feature_encoder(): use this class's freeze_feature_encoder(), which works for all four.
    """

    FAMILIES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio")  # config.model_type of the supported models

    def __init__(self, name_or_dir: str):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        cfg = AutoConfig.from_pretrained(name_or_dir)
        if cfg.model_type not in self.FAMILIES:
            raise PipelineError(f"{name_or_dir}: audio model type {cfg.model_type!r} is not supported "
                                f"(padding-exact pooling is implemented for {', '.join(self.FAMILIES)})")
        if getattr(cfg, "add_adapter", False):
            raise PipelineError(f"{name_or_dir}: {cfg.model_type} models with an adapter (add_adapter) are not supported")
        self.model = AutoModel.from_pretrained(name_or_dir)
        self.hidden_size = cfg.hidden_size
        self._frame_mask = None  # [B, T] valid frames, set by forward while the encoder runs
        for m in self.model.encoder.pos_conv_embed.modules():
            if isinstance(m, nn.Conv1d):
                m.register_forward_pre_hook(self._zero_padded_frames)

    def _zero_padded_frames(self, conv: nn.Module, args: tuple):
        """Forward pre-hook of the positional Conv1d(s): input [B, C, T] -> padded frames set to 0."""
        if self._frame_mask is None:
            return None
        x = args[0]
        return (x * self._frame_mask[:, None, :].to(x.dtype),) + tuple(args[1:])

    def freeze_feature_encoder(self) -> None:
        """Stop training the CNN feature encoder (train.py --freeze-feature-encoder), any family."""
        self.model.feature_extractor._freeze_parameters()

    def gradient_checkpointing_enable(self) -> None:
        """Recompute activations in backward (train.py --gradient-checkpointing), any family.

        Non-reentrant checkpointing, not the Hugging Face default (reentrant): with reentrant
        checkpointing the backward of a tiny WavLM exhausted 23 GB of memory (transformers 4.57.6:
        the relative position bias that WavLM's first layer returns is a keyword input of every later
        layer), and reentrant checkpointing drops the gradients of keyword inputs anyway.
        """
        self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.model._get_feat_extract_output_lengths(lengths).long()

    def cnn_norm(self) -> str:
        """How the CNN normalises: "per-frame" (no norm or LayerNorm over channels, in every conv
        layer), "group-first" (GroupNorm with one group per channel in the first layer only, none
        after: the base models' "group" layout) or "other"."""
        norms = [getattr(layer, "layer_norm", None) for layer in self.model.feature_extractor.conv_layers]
        if all(n is None or isinstance(n, nn.LayerNorm) for n in norms):
            return "per-frame"
        first = norms[0]
        if (isinstance(first, nn.GroupNorm) and first.num_groups == first.num_channels
                and all(n is None for n in norms[1:])):
            return "group-first"
        return "other"

    def _first_layer_masked(self, input_values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The first conv layer with its GroupNorm statistics over each sample's valid frames: [B, S] -> [B, C, T0]."""
        first = self.model.feature_extractor.conv_layers[0]
        norm = first.layer_norm
        h = first.conv(input_values[:, None]).float()  # [B, C, T0]; statistics in fp32 under autocast
        n0 = (lengths.to(h.device) - first.conv.kernel_size[0]) // first.conv.stride[0] + 1
        valid = (torch.arange(h.shape[-1], device=h.device)[None, :] < n0[:, None]).to(h.dtype)[:, None, :]
        count = valid.sum(-1, keepdim=True)
        mean = (h * valid).sum(-1, keepdim=True) / count
        var = (((h - mean) ** 2) * valid).sum(-1, keepdim=True) / count
        h = (h - mean) * torch.rsqrt(var + norm.eps) * norm.weight[:, None] + norm.bias[:, None]
        return first.activation(h)

    def cnn_features(self, input_values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The CNN feature encoder, exact under padding: [B, S] -> [B, C, T]."""
        cnn = self.model.feature_extractor
        kind = self.cnn_norm()
        if kind == "per-frame":  # a valid frame's receptive field lies inside the valid samples
            return cnn(input_values)
        if kind == "group-first":
            first = cnn.conv_layers[0]
            if self.training and getattr(first, "gradient_checkpointing", False):  # as HF checkpoints each conv layer
                from torch.utils.checkpoint import checkpoint

                h = checkpoint(self._first_layer_masked, input_values, lengths, use_reentrant=False)
            else:
                h = self._first_layer_masked(input_values, lengths)
            for layer in cnn.conv_layers[1:]:  # frames past a sample's end never reach its valid frames
                h = layer(h)
            return h
        feats = None  # any other normalisation: run the CNN on each sample's own samples
        t_max = int(self.frame_lengths(lengths).max())
        for n in torch.unique(lengths).tolist():
            rows = (lengths == n).nonzero().flatten()
            f = cnn(input_values[rows, :n])
            if feats is None:
                feats = f.new_zeros(len(lengths), f.shape[1], t_max)
            feats[rows, :, :f.shape[2]] = f
        return feats

    def forward(self, input_values: torch.Tensor | None, lengths: torch.Tensor,
                cnn: torch.Tensor | None = None) -> torch.Tensor:
        """input_values [B, S], lengths [B] -> z_a [B, H]. cnn [B, C, T]: this CNN's features of the
        same samples, computed earlier (cnn_features) while the CNN is frozen; input_values is then unused."""
        n_frames = self.frame_lengths(lengths)
        feats = (self.cnn_features(input_values, lengths) if cnn is None else cnn).transpose(1, 2)  # [B, T, C]
        mask = torch.arange(feats.shape[1], device=feats.device)[None, :] < n_frames.to(feats.device)[:, None]
        hidden = self.model.feature_projection(feats)
        if isinstance(hidden, tuple):  # wav2vec2, WavLM, data2vec-audio: (hidden, normed CNN features)
            hidden = hidden[0]
        if hidden.shape[1] > getattr(self.model.config, "mask_time_length", 0):
            hidden = self.model._mask_hidden_states(hidden, attention_mask=mask)
        # else: a batch of clips shorter than one SpecAugment time mask (wav2vec2-base: 10 frames, 0.2 s;
        # length bucketing puts the shortest segments together) gets no masking; HF would raise.
        self._frame_mask = mask
        try:
            hidden = self.model.encoder(hidden, attention_mask=mask).last_hidden_state
        finally:
            self._frame_mask = None
        return masked_mean(hidden, mask)


class CrossModalAttention(nn.Module):
    """The two cross-attention arrows of Fig. 1's Cross-Attention Fusion Block (Section III-B).

    z_t, z_a [B, 1, D] -> a(t,a), a(a,t) [B, 1, D], each direction with a residual and a LayerNorm:

      a(t,a) = LN_t(MHA_ta(query=z_t, key=z_a, value=z_a) + z_t)       text queries audio
      a(a,t) = LN_a(MHA_at(query=z_a, key=z_t, value=z_t) + z_a)       audio queries text

    The paper describes the block in words; the residual + LayerNorm and the attention dropout p
    follow the authors' implementation (M4RC034/SER-Align, utils.py). Each modality is ONE pooled
    token, so the softmax runs over a single key (its weight is 1) and MHA reduces to its value and
    output projections of the other modality: a learned linear exchange between the embeddings.
    """

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.attn_ta = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.attn_at = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_ta = nn.LayerNorm(dim)
        self.norm_at = nn.LayerNorm(dim)

    def forward(self, z_t: torch.Tensor, z_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a_ta = self.norm_ta(self.attn_ta(z_t, z_a, z_a, need_weights=False)[0] + z_t)
        a_at = self.norm_at(self.attn_at(z_a, z_t, z_t, need_weights=False)[0] + z_a)
        return a_ta, a_at


class ForgetGate(nn.Module):
    """One forget gate of Fig. 1 (after Jiang & Ji 2022, as implemented by the authors).

    z (the modality's own embedding) and a (its attended embedding), both [B, 1, D] -> h [B, 1, D]:

      g = sigmoid(W_g [z ; a] + b_g)            gate, element-wise in (0, 1)      W_g: 2D -> D
      h = ReLU(z + g * (W_v a + b_v))           the gate admits the projected     W_v: D -> D
                                                attended information into z

    h(t,a) = ForgetGate_t(z_t, a(t,a)) and h(a,t) = ForgetGate_a(z_a, a(a,t)). h >= 0 (ReLU).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.gate = nn.Linear(2 * dim, dim)   # W_g, b_g
        self.value = nn.Linear(dim, dim)      # W_v, b_v

    def forward(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate(torch.cat([z, a], dim=-1)))
        return F.relu(z + g * self.value(a))


class PositionalEncoding(nn.Module):
    """Sinusoidal positional encoding (Vaswani et al. 2017) added to a token sequence, then dropout.

    x [B, N, D] -> x + PE[:N] [B, N, D]; PE[n, 2i] = sin(n / 10000^(2i/D)), PE[n, 2i+1] = cos(...).
    In the fusion layer N = 2, so this only tells the encoder which token is h(t,a) and which h(a,t).
    """

    def __init__(self, dim: int, dropout: float, max_len: int = 64):
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float32)[:, None]
        freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
        pe = torch.zeros(max_len, dim)
        pe[:, 0::2] = torch.sin(position * freq)
        pe[:, 1::2] = torch.cos(position * freq[: dim // 2])
        self.register_buffer("pe", pe, persistent=False)  # a constant: not part of checkpoints
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(x + self.pe[: x.shape[1]].to(x.dtype))


class FusionClassifier(nn.Module):
    """Fusion Layer + Linear Classifier of Fig. 1, as the authors implement them.

    tokens [B, N, D] -> logits [B, 4]:
      PositionalEncoding (dropout p) -> TransformerEncoder (layers x [MHA(heads) + FFN(ffn_dim),
      ReLU, dropout p, post-norm]) -> mean over the N tokens [B, D] -> Linear(D -> 4).
    The fused model has N = 2 ([h(t,a); h(a,t)]); the single-modality baselines run the same head on
    their one token (N = 1). Softmax is applied at inference (evaluate.py); training uses
    cross-entropy on the logits. No dropout before the classifier (as the authors).
    """

    def __init__(self, dim: int, heads: int, dropout: float, layers: int = 2, ffn_dim: int = 2048,
                 n_classes: int = len(LABELS)):
        super().__init__()
        self.position = PositionalEncoding(dim, dropout)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=ffn_dim, dropout=dropout,
                                           activation="relu", batch_first=True, norm_first=False)
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        self.classifier = nn.Linear(dim, n_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(self.position(tokens)).mean(dim=1))


class ConcatMLP(nn.Module):
    """Fusion ablation "concat" (not in the paper): an MLP on the concatenated embeddings.

    z_t, z_a [B, D] -> Linear(2D -> D), ReLU, dropout p, Linear(D -> 4) -> logits [B, 4].
    """

    def __init__(self, dim: int, dropout: float, n_classes: int = len(LABELS)):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, n_classes))

    def forward(self, z_t: torch.Tensor, z_a: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([z_t, z_a], dim=-1))


# Fusion of the two pooled embeddings (train.py --fusion). The paper's model is "gated-xattn"; the
# others answer the paper's future-work question with everything else (extractors, data, training)
# equal: "xattn" drops the forget gates (h = a), "concat" replaces the whole fusion block and
# fusion layer by an MLP, "late" averages the logits of the two single-modality heads.
FUSIONS = ("gated-xattn", "xattn", "concat", "late")


class SERModel(nn.Module):
    """The whole classifier of Fig. 1 for one modality setting and fusion variant.

    modality "fusion": z_t = TextEmbedder [B, D], z_a = AudioEmbedder [B, H_a] (projected to the
    text size D by a Linear if H_a != D, else identity), then by `fusion`:
      gated-xattn  CrossModalAttention -> ForgetGate x 2 -> [h(t,a); h(a,t)] [B, 2, D] -> FusionClassifier
      xattn        CrossModalAttention -> [a(t,a); a(a,t)] [B, 2, D] -> FusionClassifier
      concat       ConcatMLP([z_t ; z_a])
      late         (FusionClassifier_t(z_t) + FusionClassifier_a(z_a)) / 2, each on one token
    modality "text" / "audio": the one embedding as a single token [B, 1, D] -> FusionClassifier.
    Sizes come from the extractors' configs (D = the text model's hidden size, as the authors).
    load_extractors=False builds only the head (for training on cached frozen embeddings).
    audio_padding "exact" (ours) makes z_a independent of the padding in the batch (AudioEmbedder);
    "authors" runs the audio model on the padded batch (each row normalised over its padded length,
    normalisation_places) without an attention mask and averages every frame, padding included, as
    the authors' code does for wav2vec2-base.
    """

    def __init__(self, text_model: str | None, audio_model: str | None, modality: str = "fusion",
                 dropout: float = 0.2, heads: int = 8, fusion: str = "gated-xattn", layers: int = 2,
                 ffn_dim: int = 2048, audio_padding: str = "exact", load_extractors: bool = True):
        super().__init__()
        if modality not in MODALITIES:
            raise PipelineError(f"modality must be one of {MODALITIES}, got {modality!r}")
        if fusion not in FUSIONS:
            raise PipelineError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if audio_padding not in ("exact", "authors"):
            raise PipelineError(f"audio_padding must be 'exact' or 'authors', got {audio_padding!r}")
        from transformers import AutoConfig

        self.modality, self.fusion, self.audio_padding = modality, fusion, audio_padding
        use_text, use_audio = modality in ("fusion", "text"), modality in ("fusion", "audio")
        self.text = TextEmbedder(text_model) if use_text and load_extractors else None
        self.audio = AudioEmbedder(audio_model) if use_audio and load_extractors else None
        h_t = AutoConfig.from_pretrained(text_model).hidden_size if use_text else None
        h_a = AutoConfig.from_pretrained(audio_model).hidden_size if use_audio else None
        dim = h_t if use_text else h_a
        if dim % heads:
            raise PipelineError(f"hidden size {dim} is not divisible by --heads {heads}")
        self.dim = dim
        self.proj_a = nn.Linear(h_a, dim) if use_audio and h_a != dim else nn.Identity()
        head = dict(dim=dim, heads=heads, dropout=dropout, layers=layers, ffn_dim=ffn_dim)
        self.cross = self.gate_t = self.gate_a = self.head = self.head_t = self.head_a = self.mlp = None
        if modality != "fusion":
            self.head = FusionClassifier(**head)
        elif fusion in ("gated-xattn", "xattn"):
            self.cross = CrossModalAttention(dim, heads, dropout)
            if fusion == "gated-xattn":
                self.gate_t, self.gate_a = ForgetGate(dim), ForgetGate(dim)
            self.head = FusionClassifier(**head)
        elif fusion == "concat":
            self.mlp = ConcatMLP(dim, dropout)
        else:  # late
            self.head_t, self.head_a = FusionClassifier(**head), FusionClassifier(**head)

    def extractors(self) -> list[nn.Module]:
        return [m for m in (self.text, self.audio) if m is not None]

    def extractor_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.extractors() for p in m.parameters()]

    def head_parameters(self) -> list[nn.Parameter]:
        ext = {id(p) for p in self.extractor_parameters()}
        return [p for p in self.parameters() if id(p) not in ext]

    def head_state_dict(self) -> dict:
        """State of everything but the pretrained extractors (what frozen mode trains)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(("text.", "audio."))}

    def embed(self, batch: dict) -> tuple:
        """batch from Collator -> (z_t [B, H_t] or None, z_a [B, H_a] or None)."""
        z_t = self.text(batch["input_ids"], batch["attention_mask"]) if self.text is not None else None
        z_a = None
        if self.audio is not None and self.audio_padding == "exact":
            z_a = self.audio(batch.get("input_values"), batch["lengths"], batch.get("cnn"))
        elif self.audio is not None:  # the authors': no attention mask, every frame of the padded batch
            z_a = self.audio.model(batch["input_values"]).last_hidden_state.mean(dim=1)
        return z_t, z_a

    def classify(self, z_t, z_a) -> torch.Tensor:
        """Pooled embeddings [B, H] -> logits [B, 4] (everything after the extractors in Fig. 1)."""
        if z_a is not None:
            z_a = self.proj_a(z_a)
        if self.modality != "fusion":
            return self.head((z_t if self.modality == "text" else z_a).unsqueeze(1))
        if self.fusion == "concat":
            return self.mlp(z_t, z_a)
        if self.fusion == "late":
            return (self.head_t(z_t.unsqueeze(1)) + self.head_a(z_a.unsqueeze(1))) / 2
        t, a = z_t.unsqueeze(1), z_a.unsqueeze(1)  # [B, 1, D]: one token per modality
        a_ta, a_at = self.cross(t, a)
        if self.fusion == "gated-xattn":
            a_ta, a_at = self.gate_t(t, a_ta), self.gate_a(a, a_at)  # h(t,a), h(a,t)
        return self.head(torch.cat([a_ta, a_at], dim=1))  # [B, 2, D] -> [B, 4]

    def forward(self, batch: dict) -> torch.Tensor:
        return self.classify(*self.embed(batch))


def build_model(config: dict, load_extractors: bool = True) -> SERModel:
    """SERModel from a run config (the keys train.py writes to config.json)."""
    return SERModel(config["text_model"], config["audio_model"], config["modality"], config["dropout"],
                    config["heads"], fusion=config.get("fusion", "gated-xattn"),
                    layers=config.get("fusion_layers", 2), ffn_dim=config.get("ffn_dim", 2048),
                    audio_padding=config.get("audio_padding", "exact"), load_extractors=load_extractors)


# ---- data: the step-3 segment caches as batches ---------------------------------------------

MIN_AUDIO_SAMPLES = 400  # 25 ms: wav2vec 2.0's CNN receptive field, the shortest input giving one frame


def zero_mean_unit_var(x: torch.Tensor) -> torch.Tensor:
    """Per-utterance normalisation, as Wav2Vec2FeatureExtractor does when do_normalize is set."""
    return (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)


def normalisation_places(audio_padding: str, do_normalize: bool) -> tuple[bool, bool]:
    """Where zero-mean unit-variance normalisation happens (when the feature extractor's config says
    do_normalize): (each segment over its own samples, in SegmentDataset; each row of the padded
    batch over its padded length, in Collator). "exact" normalises each segment alone, then pads
    with zeros. "authors" pads first and normalises each row as Wav2Vec2FeatureExtractor does
    without an attention mask (the authors' Wav2Vec2Processor with padding="longest"): the zeros
    enter the row's mean and variance, and the padding becomes non-zero."""
    if audio_padding not in ("exact", "authors"):
        raise PipelineError(f"audio_padding must be 'exact' or 'authors', got {audio_padding!r}")
    per_row = bool(do_normalize) and audio_padding == "authors"
    return bool(do_normalize) and not per_row, per_row


def check_cache(cache, path, sample_rate: int = SAMPLE_RATE) -> None:
    """The top level of a step-3 cache (docs/FORMATS.md): dialog (the file's name), sample rate, segments."""
    if not isinstance(cache, dict) or "segments" not in cache or "dialog" not in cache:
        raise PipelineError(f"{path}: not a step-3 segment cache (expected keys dialog, segments)")
    if cache["dialog"] != Path(path).stem:
        raise PipelineError(f"{path}: holds dialog {cache['dialog']!r:.60}, expected {Path(path).stem!r} (the file's name)")
    rate = cache.get("sample_rate", sample_rate)
    if isinstance(rate, bool) or rate != sample_rate:
        raise PipelineError(f"{path}: sample_rate {rate!r:.40}, expected {sample_rate}")
    if not isinstance(cache["segments"], list):
        raise PipelineError(f"{path}: 'segments' must be a list, got {type(cache['segments']).__name__}")


def check_cache_segment(seg, where: str, sample_rate: int = SAMPLE_RATE) -> int:
    """One segment of a step-3 cache -> its label index; PipelineError (prefixed `where`) otherwise.

    id, speaker and text strings; start, end finite seconds with 0 <= start <= end; label an integer
    in -1..3 (index into LABELS, -1 = none; not a bool, a float or a name); audio a 1-D floating
    tensor of finite samples, no longer than the segment's times at sample_rate (+ 2 samples of
    rounding). Audio shorter than its times (by more than TIME_TOLERANCE_S) is counted by SegmentDataset.
    """
    if not isinstance(seg, dict):
        raise PipelineError(f"{where}: expected a segment record, got {type(seg).__name__}")
    missing = {"id", "start", "end", "speaker", "text", "label", "audio"} - set(seg)
    if missing:
        raise PipelineError(f"{where} lacks {sorted(missing)}")
    for key in ("id", "speaker", "text"):
        if not isinstance(seg[key], str):
            raise PipelineError(f"{where}: {key} must be a string, got {type(seg[key]).__name__} {seg[key]!r:.40}")
    where = f"{where} ({seg['id']})"
    start, end = seg["start"], seg["end"]
    if not (is_finite_number(start) and is_finite_number(end) and 0 <= start <= end):
        raise PipelineError(f"{where}: start {start!r:.40}, end {end!r:.40}; expected finite seconds, 0 <= start <= end")
    label = seg["label"]
    if isinstance(label, torch.Tensor) and label.ndim == 0 and not label.is_floating_point() and label.dtype != torch.bool:
        label = int(label)
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)) or not -1 <= label < len(LABELS):
        raise PipelineError(f"{where}: label {label!r:.40}, expected an integer in -1..{len(LABELS) - 1} "
                            f"(the index into {list(LABELS)}, -1 = no label)")
    audio = seg["audio"]
    if not isinstance(audio, torch.Tensor) or audio.ndim != 1 or not audio.is_floating_point():
        kind = (f"a {audio.ndim}-D {audio.dtype} tensor" if isinstance(audio, torch.Tensor) else type(audio).__name__)
        raise PipelineError(f"{where}: audio is {kind}; expected a 1-D float tensor of mono samples")
    if not bool(torch.isfinite(audio).all()):
        raise PipelineError(f"{where}: audio holds {int((~torch.isfinite(audio)).sum())} NaN or infinite samples")
    expected = (end - start) * sample_rate
    if audio.numel() > expected + 2:
        raise PipelineError(f"{where}: {audio.numel()} samples for {end - start:.3f} s; expected at most {expected:.0f} "
                            f"at {sample_rate} Hz (audio of another segment, or another sample rate)")
    return int(label)


def step3_rerun(path) -> str:
    """How to rewrite the step-3 cache WORK/<pipe>/<variant>/cache/<dialog>.pt (for error messages)."""
    path = Path(path)
    if len(path.parents) < 4:
        return "re-run step 3 (align.py --overwrite) to rewrite it"
    work, pipe, variant = path.parents[3], path.parents[2].name, path.parents[1].name
    return (f"re-run step 3 to rewrite it: python align.py --work {work} --pipe {pipe} --overwrite "
            f"--dialogs {path.stem} (with the switches that made {variant})")


class SegmentDataset(torch.utils.data.Dataset):
    """All segments of the given step-3 caches (WORK/<pipe>/<variant>/cache/<dialog>.pt).

    labelled_only=True keeps the segments with a 4-class label (training, validation); False
    keeps every segment (prediction: TEER scores all system speech). Audio is prepared once, here:
    segments longer than max_audio_seconds are centre-cropped (the middle of a long turn; 0 = no
    crop), audio is normalised zero-mean unit-variance if the feature extractor's config says
    do_normalize, and audio shorter than 25 ms is zero-padded to one wav2vec2 frame. Counts of
    what was kept, cropped and padded are in .counts.
    """

    def __init__(self, cache_paths, labelled_only: bool, max_audio_seconds: float = 0.0,
                 do_normalize: bool = True, sample_rate: int = SAMPLE_RATE):
        self.segments = []
        self.counts = {"dialogs": 0, "segments": 0, "unlabelled_skipped": 0, "cropped": 0, "padded_short": 0,
                       "audio_shorter_than_times": 0}
        max_samples = int(max_audio_seconds * sample_rate) if max_audio_seconds else 0
        seen = {}  # segment id -> the cache holding it
        self.sha256 = {}  # dialog -> the verified sha256 of its cache file (what was read)
        for path in cache_paths:
            cache, self.sha256[Path(path).stem] = load_checked_pt(path, "segment cache", step3_rerun(path))
            check_cache(cache, path, sample_rate)
            self.counts["dialogs"] += 1
            for n, seg in enumerate(cache["segments"]):
                label = check_cache_segment(seg, f"{path}: segment {n}", sample_rate)
                if seg["id"] in seen:
                    raise PipelineError(f"{path}: segment {n}: id {seg['id']!r} is also a segment of {seen[seg['id']]}; "
                                        "expected unique segment ids")
                seen[seg["id"]] = path
                if labelled_only and label < 0:
                    self.counts["unlabelled_skipped"] += 1
                    continue
                audio = seg["audio"].to(torch.float32)
                if audio.numel() < (seg["end"] - seg["start"] - TIME_TOLERANCE_S) * sample_rate - 2:
                    self.counts["audio_shorter_than_times"] += 1  # e.g. a cache made before step 3 checked times
                if max_samples and audio.numel() > max_samples:
                    off = (audio.numel() - max_samples) // 2
                    audio = audio[off:off + max_samples]
                    self.counts["cropped"] += 1
                if do_normalize and audio.numel() > 1:
                    audio = zero_mean_unit_var(audio)
                if audio.numel() < MIN_AUDIO_SAMPLES:
                    audio = F.pad(audio, (0, MIN_AUDIO_SAMPLES - audio.numel()))
                    self.counts["padded_short"] += 1
                self.segments.append({"id": seg["id"], "dialog": cache["dialog"], "start": float(seg["start"]),
                                      "end": float(seg["end"]), "speaker": seg["speaker"], "text": seg["text"],
                                      "label": label, "audio": audio.contiguous()})
        self.counts["segments"] = len(self.segments)
        self.lengths = [s["audio"].numel() for s in self.segments]

    def __len__(self):
        return len(self.segments)

    def __getitem__(self, i):
        return {"index": i, **self.segments[i]}


class Collator:
    """List of dataset items -> one batch: audio zero-padded [B, S] with lengths [B], text
    tokenised with the extractor's own tokenizer (padded, truncated to max_tokens), labels [B].
    normalize_rows (normalisation_places, --audio-padding authors): each padded row is then
    normalised zero-mean unit-variance over all S samples, as the authors' processor does; the
    dataset must then hold un-normalised audio (its zero-padding of segments under 25 ms only
    matters for a batch with no longer segment, which wav2vec2's CNN could not take at all)."""

    def __init__(self, tokenizer, max_tokens: int = 512, normalize_rows: bool = False):
        self.tokenizer = tokenizer
        self.max_tokens = min(max_tokens, getattr(tokenizer, "model_max_length", max_tokens))
        self.normalize_rows = normalize_rows

    def __call__(self, items: list[dict]) -> dict:
        lengths = torch.tensor([it["audio"].numel() for it in items])
        if "cnn" in items[0]:  # CNN features cached while the CNN is frozen (cache_cnn_features): no audio needed
            cnn = torch.zeros(len(items), items[0]["cnn"].shape[0], max(it["cnn"].shape[1] for it in items))
            for i, it in enumerate(items):
                cnn[i, :, :it["cnn"].shape[1]] = it["cnn"]
            batch = {"cnn": cnn}
        else:
            audio = torch.zeros(len(items), int(lengths.max()))
            for i, it in enumerate(items):
                audio[i, :lengths[i]] = it["audio"]
            if self.normalize_rows:
                audio = torch.stack([zero_mean_unit_var(row) for row in audio])
            batch = {"input_values": audio}
        batch |= {"lengths": lengths,
                 "labels": torch.tensor([it["label"] for it in items]),
                 "index": torch.tensor([it["index"] for it in items])}
        if self.tokenizer is not None:
            tok = self.tokenizer([it["text"] for it in items], padding=True, truncation=True,
                                 max_length=self.max_tokens, return_tensors="pt")
            batch["input_ids"], batch["attention_mask"] = tok["input_ids"], tok["attention_mask"]
        return batch


class LengthBucketSampler(torch.utils.data.Sampler):
    """Batches of similar audio length (less padding), in a seeded, deterministic order.

    shuffle=True: each epoch (set_epoch) permutes the indices with seed + epoch, cuts the
    permutation into pools of batch_size * pool_batches, sorts each pool by length, cuts it into
    batches and permutes the batches. shuffle=False: batches of the length-sorted indices.
    Distributed: the batch list is padded by repetition to a multiple of world_size and each rank
    takes every world_size-th batch (the same role as DistributedSampler, at batch level).
    """

    def __init__(self, lengths, batch_size: int, shuffle: bool = True, seed: int = 0,
                 pool_batches: int = 50, rank: int = 0, world_size: int = 1):
        self.lengths, self.batch_size, self.shuffle, self.seed = list(lengths), batch_size, shuffle, seed
        self.pool, self.rank, self.world_size, self.epoch = batch_size * pool_batches, rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        n = len(self.lengths)
        if not self.shuffle:
            order = sorted(range(n), key=lambda i: self.lengths[i])
            batches = [order[i:i + self.batch_size] for i in range(0, n, self.batch_size)]
        else:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            perm = torch.randperm(n, generator=g).tolist()
            batches = []
            for p in range(0, n, self.pool):
                pool = sorted(perm[p:p + self.pool], key=lambda i: self.lengths[i])
                batches += [pool[i:i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        if self.world_size > 1 and batches:
            batches += batches[:(-len(batches)) % self.world_size]
            batches = batches[self.rank::self.world_size]
        return batches

    def __iter__(self):
        return iter(self.batches())

    def __len__(self):
        return len(self.batches())


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def autocast(device, bf16: bool):
    """bf16 autocast on CUDA when asked; a no-op context elsewhere."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")


@torch.no_grad()
def cache_cnn_features(audio: AudioEmbedder, dataset: SegmentDataset, batch_size: int, device) -> int:
    """With the CNN feature encoder frozen (train.py --freeze-feature-encoder), compute each segment's
    CNN features once, [C, T_i] on the CPU in dataset.segments[i]["cnn"]; the Collator then batches
    those instead of the audio and every epoch (and every seed sharing the dataset) skips the CNN.
    Exact: the CNN has no dropout and, computed by cnn_features, does not depend on the batch.
    Returns how many segments were computed (those already cached are skipped)."""
    todo = [i for i, s in enumerate(dataset.segments) if "cnn" not in s]
    for b in LengthBucketSampler([dataset.lengths[i] for i in todo], batch_size, shuffle=False).batches():
        rows = [todo[j] for j in b]
        lengths = torch.tensor([dataset.lengths[i] for i in rows])
        x = torch.zeros(len(rows), int(lengths.max()))
        for r, i in enumerate(rows):
            x[r, :lengths[r]] = dataset.segments[i]["audio"]
        feats = audio.cnn_features(x.to(device), lengths.to(device)).float().cpu()
        for r, (i, n) in enumerate(zip(rows, audio.frame_lengths(lengths).tolist())):
            dataset.segments[i]["cnn"] = feats[r, :, :n].clone()
    return len(todo)


# ---- frozen mode: pooled embeddings cached on disk ------------------------------------------

@functools.lru_cache(maxsize=None)
def embedding_code_digest() -> str:
    """Hash of the source code that turns a segment into a pooled embedding: cached features
    computed by other code are not reused. (Once per process: inspect parses utils.py for it.)"""
    import inspect

    parts = (masked_mean, zero_mean_unit_var, TextEmbedder, AudioEmbedder, SegmentDataset, Collator)
    return hashlib.sha256("".join(inspect.getsource(p) for p in parts).encode()).hexdigest()[:16]


def feature_key(kind: str, identity: dict, settings: dict) -> str:
    """Folder name under WORK/features/ for one frozen extractor: readable name + hash of the
    extractor identity, the input settings (crop length, normalisation, token limit) and the
    embedding code (embedding_code_digest)."""
    blob = json.dumps({"kind": kind, "identity": identity, "settings": settings,
                       "code": embedding_code_digest()}, sort_keys=True)
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(identity["name"]).name)
    return f"{kind}-{name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


@torch.no_grad()
def cached_embeddings(model: SERModel, dataset: SegmentDataset, collator: Collator, feature_dirs: dict,
                      cache_dir, batch_size: int, device, bf16: bool, num_workers: int = 0) -> dict:
    """Frozen mode: pooled embeddings of every segment of dataset, per extractor, from the cache
    WORK/features/<key>/<pipe>/<variant>/<dialog>.pt ({"source_sha256", "emb": {segment id: [H]}})
    or computed now (extractors in eval mode) for the segments that miss, then saved.

    feature_dirs: {"text": dir, "audio": dir} for the extractors the model has. The cache of a
    dialog is valid for the step-3 cache file it was computed from (its sha256). Returns
    {"text": [N, H_t] or None, "audio": [N, H_a] or None, "computed": n, "reused": n}.
    """
    out = {"text": None, "audio": None, "computed": 0, "reused": 0}
    dialogs = sorted({s["dialog"] for s in dataset.segments})
    for kind, folder in feature_dirs.items():
        embedder = model.text if kind == "text" else model.audio
        store = {}
        for d in dialogs:
            source_path = Path(cache_dir) / f"{d}.pt"
            source = (getattr(dataset, "sha256", {}).get(d)  # verified when the dataset read it
                      or verified_sha256(source_path, "segment cache", step3_rerun(source_path)))
            path = Path(folder) / f"{d}.pt"
            # Without its sidecar a feature cache is unfinished (killed mid-write) or older: computed anew.
            old = (load_checked_pt(path, "feature cache", f"delete it (and {checksum_path(path).name}); step 4 then "
                                   "recomputes it")[0] if path.is_file() and checksum_path(path).is_file() else None)
            store[d] = {"source_sha256": source, "emb": dict(old["emb"]) if old and old.get("source_sha256") == source else {}}
        missing = [i for i, s in enumerate(dataset.segments) if s["id"] not in store[s["dialog"]]["emb"]]
        out["reused"] += len(dataset) - len(missing)
        out["computed"] += len(missing)
        if missing:
            was_training = embedder.training
            embedder.eval()
            sampler = LengthBucketSampler([dataset.lengths[i] for i in missing], batch_size, shuffle=False)
            subset = torch.utils.data.Subset(dataset, missing)
            loader = torch.utils.data.DataLoader(subset, batch_sampler=sampler, collate_fn=collator, num_workers=num_workers)
            # the loader draws from the global RNG: restored below, so that training (dropout, order) is the
            # same whether the embeddings are computed now or read from the cache
            rng_state = torch.get_rng_state()
            from tqdm import tqdm

            for batch in tqdm(loader, desc=f"frozen {kind} embeddings", leave=False):
                batch = to_device(batch, device)
                with autocast(device, bf16):
                    emb = (embedder(batch["input_ids"], batch["attention_mask"]) if kind == "text"
                           else embedder(batch["input_values"], batch["lengths"]))
                for i, e in zip(batch["index"].tolist(), emb.float().cpu()):
                    seg = dataset.segments[i]
                    store[seg["dialog"]]["emb"][seg["id"]] = e.clone()
            embedder.train(was_training)
            torch.set_rng_state(rng_state)
            for d in sorted({dataset.segments[i]["dialog"] for i in missing}):
                atomic_torch_save(store[d], Path(folder) / f"{d}.pt")
        out[kind] = torch.stack([store[s["dialog"]]["emb"][s["id"]] for s in dataset.segments])
    return out


# ---- inference: load a trained run, predict a dataset (evaluate.py, predict.py) ----------------

def load_run(run_dir, device=None, load_extractors: bool = True) -> tuple[SERModel, dict]:
    """(model with the best-validation weights, config) of a train.py run dir."""
    run_dir = Path(run_dir)
    config = read_json(run_dir / "config.json", "run config")
    if "folds" in config:
        raise PipelineError(f"{run_dir}: a cross-validation run; load one of its fold dirs {config['folds']}")
    for kind, ident in config["extractors"].items():
        # a frozen run keeps no extractor weights: they must still be the ones it was trained on
        if ident is not None and extractor_identity(ident["name"]) != ident:
            raise PipelineError(f"{run_dir / 'config.json'}: the {kind} extractor {ident['name']} has changed since "
                                f"this run was trained (config or weights hash differs)")
    model = build_model(config, load_extractors=load_extractors)
    state = load_pt(run_dir / "checkpoint_best.pt", "best checkpoint")
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    if unexpected or (missing and config["mode"] == "finetune") or \
            any(not k.startswith(("text.", "audio.")) for k in missing):
        raise PipelineError(f"{run_dir / 'checkpoint_best.pt'}: does not match the model of config.json "
                            f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.to(device or "cpu").eval()
    return model, config


def run_dataset(model: SERModel, dataset: SegmentDataset, collator: Collator, batch_size: int,
                device, bf16: bool, num_workers: int = 0) -> torch.Tensor:
    """Logits [N, 4] of every segment of dataset, in dataset order (model in eval mode)."""
    logits = torch.zeros(len(dataset), len(LABELS))
    sampler = LengthBucketSampler(dataset.lengths, batch_size, shuffle=False)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collator, num_workers=num_workers)
    model.eval()
    with torch.no_grad():
        for batch in loader:
            batch = to_device(batch, device)
            with autocast(device, bf16):
                logits[batch["index"].cpu()] = model(batch).float().cpu()
    return logits


# ---------------------------------------------------------------------------------------------
# Preflight checks and offline model copies (preprocess.py --check / --download-models / --shard;
# reproduce.py --check and train.py call the same functions)
# ---------------------------------------------------------------------------------------------
# Every check returns a CheckItem (name, ok, message): one line of the preflight report, "OK" with
# what was found or "FAIL" with what to do. Checks read; they never write a file, never download,
# and never print the hub token (it is read from HF_TOKEN only).

import re as _re  # noqa: E402
import shutil as _shutil  # noqa: E402
from dataclasses import dataclass as _dataclass  # noqa: E402


@_dataclass(frozen=True)
class CheckItem:
    """One preflight line: what was checked, whether it is fine, what was found or what to do."""
    name: str
    ok: bool
    message: str

    def line(self) -> str:
        return f"{'OK  ' if self.ok else 'FAIL'} {self.name}: {self.message}"


def report_checks(items, title: str = "preflight") -> bool:
    """Print one line per item and a closing line -> True when every item is OK."""
    items = list(items)
    for item in items:
        print(item.line())
    bad = [i.name for i in items if not i.ok]
    print(f"{title}: " + (f"{len(bad)} of {len(items)} checks failed ({', '.join(bad)})" if bad
                          else f"all {len(items)} checks OK"))
    return not bad


def hub_offline() -> bool:
    """HF_HUB_OFFLINE set to a true value (read now, not at import, so tests and callers can change it)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_token() -> str | None:
    """The Hugging Face token, from the HF_TOKEN environment variable only. Never print or store it."""
    return os.environ.get("HF_TOKEN") or None


HUB_NAME_RE = _re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # org/name; a local path has more parts or a ./ ~ /


def is_hub_name(name: str) -> bool:
    """True for 'org/name' that is not an existing local path (a hub repository id)."""
    return bool(HUB_NAME_RE.fullmatch(str(name))) and not Path(name).exists()


def local_model_path(name, model_dir=None) -> Path | None:
    """Where a model is on disk: `name` itself when it exists, or the hub name mirrored under
    model_dir/<org>/<name> (what `preprocess.py --download-models DIR` writes) -> path, else None."""
    path = Path(str(name)).expanduser()
    if path.exists():
        return path
    if model_dir and HUB_NAME_RE.fullmatch(str(name)) and (Path(model_dir) / str(name)).exists():
        return Path(model_dir) / str(name)
    return None


def hub_error_message(repo_id: str, error: BaseException, token: str | None) -> str:
    """A hub error -> what it means and what to do (the token itself never appears)."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    url = f"https://huggingface.co/{repo_id}"
    if type(error).__name__ in ("OfflineModeIsEnabled", "LocalEntryNotFoundError"):  # before HfHubHTTPError: a subclass
        return ("not available offline (HF_HUB_OFFLINE=1 or no network, and not in the local cache): download it "
                "with HF_HUB_OFFLINE=0 on a machine with internet (`python preprocess.py --download-models DIR`)")
    if isinstance(error, GatedRepoError):
        if token is None:
            return (f"gated repository and HF_TOKEN is not set: accept its conditions at {url}, create a read "
                    f"token at https://huggingface.co/settings/tokens and export HF_TOKEN")
        return (f"gated repository and the token in HF_TOKEN has no access: accept its conditions at {url} "
                f"with the account that owns the token")
    if isinstance(error, RepositoryNotFoundError):
        return "no such repository on the hub (or a private one HF_TOKEN cannot see): check the name"
    if isinstance(error, HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", "?")
        return f"the hub answered HTTP {status} for {url}: {str(error).splitlines()[0]}"
    if hub_offline() or type(error).__name__ in ("OfflineModeIsEnabled", "LocalEntryNotFoundError"):
        return ("not available offline (HF_HUB_OFFLINE=1 or no network, and not in the local cache): download it "
                "with HF_HUB_OFFLINE=0 on a machine with internet (`python preprocess.py --download-models DIR`)")
    return (f"cannot reach huggingface.co ({type(error).__name__}): check the network or proxy, or copy the "
            f"models with `python preprocess.py --download-models DIR` elsewhere and pass --model-dir DIR")


def check_local_model(name: str, path, required=()) -> CheckItem:
    """A model folder: it exists and holds the files its loader opens. An entry of `required` may
    list alternatives separated by '|' (e.g. 'model.safetensors|pytorch_model.bin')."""
    path = Path(path)
    if not path.exists():
        return CheckItem(name, False, f"{path}: not found; copy the model there, or give its hub name")
    missing = [r for r in required if not any((path / alt).exists() for alt in r.split("|"))]
    if missing:
        return CheckItem(name, False, f"{path}: incomplete, missing {', '.join(missing)}")
    return CheckItem(name, True, f"{path} (local)")


def check_hub_model(name: str, repo_id: str, files=(), token: str | None = None, cache_dir=None,
                    offline: bool | None = None) -> CheckItem:
    """A hub repository. Offline (HF_HUB_OFFLINE=1, or offline=True for a cache-only run): are
    `files` in the local hub cache? Online: does the hub grant access with the token in HF_TOKEN
    (HfApi.auth_check: one small request, nothing downloaded)? Gated without access, unknown, or
    unreachable each give a FAIL line saying what to do."""
    from huggingface_hub import HfApi, try_to_load_from_cache

    if hub_offline() if offline is None else offline:
        missing = [f for f in files if not isinstance(try_to_load_from_cache(repo_id, f, cache_dir=cache_dir), str)]
        if files and not missing:
            return CheckItem(name, True, f"{repo_id} in the local hub cache (HF_HUB_OFFLINE=1)")
        return CheckItem(name, False, f"offline and {repo_id} is not in the local hub cache"
                         + (f" ({', '.join(missing)} missing)" if missing else "")
                         + ": copy it with `python preprocess.py --download-models DIR` on a machine with "
                           "internet and pass --model-dir DIR, or unset HF_HUB_OFFLINE")
    try:
        HfApi().auth_check(repo_id, token=token)
    except Exception as e:  # gated, not found, HTTP error, no network: all become a line, not a crash
        return CheckItem(name, False, f"{repo_id}: {hub_error_message(repo_id, e, token)}")
    return CheckItem(name, True, f"{repo_id} on the hub, access granted" + (" with HF_TOKEN" if token else ""))


def check_cuda(required: bool = False, min_free_gib: float = 0.0, purpose: str = "") -> CheckItem:
    """CUDA devices and their free memory. Without CUDA: FAIL when `required`, else OK (CPU run)."""
    import torch

    if not torch.cuda.is_available():
        return CheckItem("CUDA", not required, "no CUDA device" + (
            ": a GPU is required here (--device cuda)" if required else "; this run uses the CPU (see the time estimate)"))
    parts, ok = [], True
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        parts.append(f"cuda:{i} {torch.cuda.get_device_name(i)}, {free / 2**30:.1f} of {total / 2**30:.1f} GiB free")
        ok = ok and free >= min_free_gib * 2**30
    need = f"; needs about {min_free_gib:g} GiB free per device" + (f" ({purpose})" if purpose else "") if min_free_gib else ""
    return CheckItem("CUDA", ok, "; ".join(parts) + need + ("" if ok else ": free GPU memory or lower the batch size"))


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def format_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def check_disk(path, need_bytes: float, what: str = "outputs") -> CheckItem:
    """Free space on the file system that holds `path` (or its nearest existing parent) vs an estimate."""
    p = Path(path).resolve()
    while not p.exists():
        p = p.parent
    free = _shutil.disk_usage(p).free
    ok = free >= need_bytes
    return CheckItem(f"disk ({what})", ok, f"{format_bytes(free)} free at {p}, estimate needed {format_bytes(need_bytes)}"
                     + ("" if ok else ": free some space or point the run elsewhere"))


# Dense bf16/fp16 tensor-core peaks (FLOP/s) from the vendors' datasheets, matched against the CUDA
# device name; anything else counts as 100 TFLOP/s.
GPU_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12,
                  "V100": 125e12, "T4": 65e12, "4090": 165e12, "3090": 71e12, "A6000": 155e12}
GPU_INFERENCE_EFFICIENCY = 0.03  # share of the peak that batched inference sustains (see estimate_time)
CPU_FLOPS_PER_CORE = 2e10         # sustained fp32 FLOP/s per core (AVX2/AVX-512 FMA in PyTorch/CTranslate2)


def transformer_flops(params: float, tokens: float, training: bool = False) -> float:
    """FLOPs of a dense network over `tokens` positions: 2*N per position forward, 6*N when trained
    (forward + backward), N the parameter count (Kaplan et al. 2020); attention over long contexts
    is not included."""
    return (6.0 if training else 2.0) * params * tokens


def estimate_time(name: str, flops: float, device: str = "auto", efficiency: float = GPU_INFERENCE_EFFICIENCY,
                  detail: str = "") -> CheckItem:
    """An ESTIMATE of wall time: a FLOP count divided by an assumed sustained throughput.

    GPU: the device's dense bf16/fp16 peak (GPU_PEAK_FLOPS) times `efficiency`. The default 0.03
    for inference is calibrated on WhisperX's published speed (large-v2 about 70x real time on an
    A100: 1 h of audio is ~4.3e14 FLOP of Whisper with preprocess.py's counts, done in ~51 s, i.e.
    ~8.5e12 FLOP/s, about 3 % of 312 TFLOP/s: beam search decodes a token at a time); training
    sustains more (pass about 0.3). CPU: CPU_FLOPS_PER_CORE per core.
    Data loading, decoding and Python overheads are not modelled: read it as an order of magnitude.
    Always OK: it informs, it does not gate.
    """
    import torch

    use_cuda = torch.cuda.is_available() if device == "auto" else str(device).startswith("cuda")
    if use_cuda and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
        peak = next((v for k, v in GPU_PEAK_FLOPS.items() if k in gpu), 100e12)
        rate, where = peak * efficiency, f"{gpu} ({efficiency:.0%} of {peak / 1e12:.0f} TFLOP/s assumed sustained)"
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        rate, where = cores * CPU_FLOPS_PER_CORE, f"CPU, {cores} cores ({CPU_FLOPS_PER_CORE / 1e9:.0f} GFLOP/s per core assumed)"
    return CheckItem(name, True, f"estimate {format_seconds(flops / rate)} on {where}: {flops:.2g} FLOP"
                     + (f" ({detail})" if detail else ""))


def parse_shard(spec: str | None, environ=None) -> tuple[int, int]:
    """'K/N' -> (K, N): this process takes every N-th item from the K-th (0 <= K < N). Without a
    spec, torchrun's RANK and WORLD_SIZE are used when set (one shard per process), else (0, 1)."""
    environ = os.environ if environ is None else environ
    if spec is None:
        if "RANK" in environ and "WORLD_SIZE" in environ:
            spec, source = f"{environ['RANK']}/{environ['WORLD_SIZE']}", "RANK/WORLD_SIZE"
        else:
            return 0, 1
    else:
        source = "--shard"
    m = _re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(spec))
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise PipelineError(f"{source}: expected K/N with 0 <= K < N, got {spec!r}")
    return int(m.group(1)), int(m.group(2))


class file_lock:
    """An exclusive advisory lock on `path` (created if needed) for a with-block: processes that
    merge the same file (shards merging their manifest parts) take turns. POSIX only; elsewhere
    (no fcntl) it does nothing."""

    def __init__(self, path):
        self.path = Path(path)

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a")
        try:
            import fcntl
            fcntl.flock(self.handle, fcntl.LOCK_EX)
        except ImportError:
            pass
        return self

    def __exit__(self, *exc):
        self.handle.close()  # closing releases the lock
        return False


def snapshot_repo(repo_id: str, dest_root, allow_patterns, token: str | None = None) -> Path:
    """Download the files of a hub repository that match `allow_patterns` into dest_root/<repo_id>
    (huggingface_hub.snapshot_download) -> that folder. Hub errors become a PipelineError saying
    what to do (gated: accept the conditions; offline: no network)."""
    from huggingface_hub import snapshot_download

    local = Path(dest_root) / repo_id
    try:
        snapshot_download(repo_id=repo_id, local_dir=str(local), allow_patterns=list(allow_patterns), token=token)
    except Exception as e:
        raise PipelineError(f"downloading {repo_id} ({', '.join(allow_patterns)}): {hub_error_message(repo_id, e, token)}") from e
    return local


# What a transformers model loads from its folder: config, tokenizer or feature-extractor files, and
# one weights file (model.safetensors when the repository has it, else pytorch_model.bin).
TRANSFORMERS_FILES = ("config.json", "preprocessor_config.json", "tokenizer_config.json", "tokenizer.json",
                      "vocab.json", "vocab.txt", "merges.txt", "special_tokens_map.json", "added_tokens.json")
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
TRANSFORMERS_REQUIRED = ("config.json", "|".join(TRANSFORMERS_WEIGHTS))  # for check_local_model


def snapshot_transformers_model(repo_id: str, dest_root, token: str | None = None) -> Path:
    """A transformers model (RoBERTa, wav2vec 2.0, ...) into dest_root/<repo_id>, without the TF, Flax
    or ONNX copies a repository may also hold -> that folder (pass it as the model name)."""
    local = snapshot_repo(repo_id, dest_root, TRANSFORMERS_FILES + TRANSFORMERS_WEIGHTS[:1], token)
    if not (local / TRANSFORMERS_WEIGHTS[0]).is_file():  # an older repository: PyTorch weights only
        snapshot_repo(repo_id, dest_root, TRANSFORMERS_WEIGHTS[1:], token)
    return local
