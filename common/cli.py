"""The error path every step script shares: one-line errors, exit statuses, and starting a step as its own
process. Exit statuses and the error format: docs/TESTING.md."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from common import huberrors


class PipelineError(Exception):
    """Bad input: the message names the file (and line) and what was expected."""


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
    hint = {
        errno.EACCES: "check its permissions (inputs must be readable, the --work folder writable)",
        errno.EPERM: "check its permissions (inputs must be readable, the --work folder writable)",
        errno.EROFS: "a read-only file system: point --work at a writable folder",
        errno.ENOSPC: "no space left: free some space or point --work at another disk",
        errno.EDQUOT: "disk quota exceeded: free some space or point --work at another disk",
        errno.ENOENT: "expected an existing file or folder: check the path",
        errno.EISDIR: "expected a file, found a folder",
        errno.ENOTDIR: "a part of the path is a file, expected a folder",
    }.get(error.errno)
    where = str(path) if path is not None else script
    return f"{where}: {what}" + (f"; {hint}" if hint else "")


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
    hub = huberrors.hub_error_line(error)
    if hub is not None:
        return hub, 2
    if isinstance(error, OSError):
        return _os_error_line(error, script), 2
    if isinstance(error, ModuleNotFoundError):
        return (
            f"{script}: the Python package {error.name!r} is not installed: install the pinned requirements "
            f"(make install, or pip install -r requirements.txt)"
        ), 2
    if type(error).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError (CUDA)
        return f"{script}: out of GPU memory ({one_line(str(error))[:200]}): lower --batch-size", 2
    return (
        f"{script}: unexpected {type(error).__name__}: {one_line(str(error))[:500]} (a bug: run the same "
        f"command with --debug for the traceback, and please report it)"
    ), 3


def run_main(main) -> None:
    """The entry point of every step script: `if __name__ == "__main__": cli.run_main(main)`.

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

    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve().parent.parent / script), *argv],
        env=env,
        stdout=stdout,
        stderr=None if stdout is None else subprocess.STDOUT,
        text=True,
    )
