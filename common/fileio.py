"""Files that are never half-written: atomic text, JSON and .pt writes, checked reads, a file lock."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

from common import cli


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
        for f in d.rglob(".*.tmp") if recursive else d.glob(".*.tmp"):
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
        raise cli.PipelineError(f"{path}: {what} not found")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise cli.PipelineError(f"{path}: cannot read {what}: {e.strerror or e}") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise cli.PipelineError(f"{path}:{line}: corrupt {what}: not UTF-8 text (byte 0x{data[e.start]:02X})") from None
    try:
        return json.loads(text)
    except RecursionError:  # e.g. a list nested 100,000 deep
        raise cli.PipelineError(
            f"{path}: corrupt {what}: nested deeper than Python's recursion limit "
            f"({__import__('sys').getrecursionlimit()} levels)"
        ) from None
    except ValueError as e:  # JSONDecodeError, or an integer of more than 4300 digits
        raise cli.PipelineError(f"{path}: corrupt {what}: {cli.one_line(str(e))}") from e


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
        raise cli.PipelineError(f"{path}: {what} not found; {rerun}")
    if not side.is_file():
        raise cli.PipelineError(
            f"{path}: {what} without its checksum file {side.name} (its write did not finish, "
            f"or an older version wrote it); {rerun}"
        )
    try:
        data, recorded = path.read_bytes(), side.read_text(encoding="utf-8", errors="replace").split()
    except OSError as e:
        raise cli.PipelineError(f"{path}: cannot read {what}: {e.strerror or e}") from e
    digest = hashlib.sha256(data).hexdigest()
    if not recorded or recorded[0] != digest:
        raise cli.PipelineError(
            f"{path}: corrupt {what}: its sha256 {digest[:16]}... differs from the one recorded in "
            f"{side.name} when it was written; {rerun}"
        )
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
        raise cli.PipelineError(
            f"{path}: unreadable {what}: {type(e).__name__}: {cli.one_line(str(e))[:200]}; {rerun}"
        ) from e


def load_pt(path, what: str = ".pt file"):
    """torch.load with weights_only=True (no pickled code runs), with errors naming the file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise cli.PipelineError(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt zip, truncated file, unpickling refused
        raise cli.PipelineError(f"{path}: corrupt or unreadable {what}: {type(e).__name__}: {e}") from e


def file_sha256(path, chunk: int = 1 << 22) -> str:
    """The sha256 of a file's bytes (hex), read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


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
