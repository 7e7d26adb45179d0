"""What a Hugging Face hub error means and what to do, in one line; the token (HF_TOKEN) and offline mode
(HF_HUB_OFFLINE) as read from the environment. Imports nothing of this package: the error path (cli) and
the model lookups (modelhub) both use it."""

from __future__ import annotations

import os
import re


def hub_offline() -> bool:
    """HF_HUB_OFFLINE set to a true value (read now, not at import, so tests and callers can change it)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_token() -> str | None:
    """The Hugging Face token, from the HF_TOKEN environment variable only. Never print or store it."""
    return os.environ.get("HF_TOKEN") or None


def hub_error_message(repo_id: str, error: BaseException, token: str | None) -> str:
    """A hub error -> what it means and what to do (the token itself never appears)."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    url = f"https://huggingface.co/{repo_id}"
    if type(error).__name__ in ("OfflineModeIsEnabled", "LocalEntryNotFoundError"):  # before HfHubHTTPError: a subclass
        return (
            "not available offline (HF_HUB_OFFLINE=1 or no network, and not in the local cache): download it "
            "with HF_HUB_OFFLINE=0 on a machine with internet (`python preprocess.py --download-models DIR`)"
        )
    if isinstance(error, GatedRepoError):
        if token is None:
            return (
                f"gated repository and HF_TOKEN is not set: accept its conditions at {url}, create a read "
                f"token at https://huggingface.co/settings/tokens and export HF_TOKEN"
            )
        return (
            f"gated repository and the token in HF_TOKEN has no access: accept its conditions at {url} "
            f"with the account that owns the token"
        )
    if isinstance(error, RepositoryNotFoundError):
        return "no such repository on the hub (or a private one HF_TOKEN cannot see): check the name"
    if isinstance(error, HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", "?")
        return f"the hub answered HTTP {status} for {url}: {str(error).splitlines()[0]}"
    if hub_offline() or type(error).__name__ in ("OfflineModeIsEnabled", "LocalEntryNotFoundError"):
        return (
            "not available offline (HF_HUB_OFFLINE=1 or no network, and not in the local cache): download it "
            "with HF_HUB_OFFLINE=0 on a machine with internet (`python preprocess.py --download-models DIR`)"
        )
    return (
        f"cannot reach huggingface.co ({type(error).__name__}): check the network or proxy, or copy the "
        f"models with `python preprocess.py --download-models DIR` elsewhere and pass --model-dir DIR"
    )


def hub_error_line(error: BaseException) -> str | None:
    """A huggingface_hub error (model not found, gated, not cached offline, HTTP) -> one line, else None."""
    import sys

    if "huggingface_hub" not in sys.modules:
        return None
    from huggingface_hub import errors as hf

    if not isinstance(error, (hf.HfHubHTTPError, hf.OfflineModeIsEnabled)):
        return None
    m = re.search(r"huggingface\.co/(?:api/models/)?([A-Za-z0-9][\w.-]*/[\w.-]+)", str(error))
    repo = m.group(1) if m and not m.group(1).startswith(("settings/", "docs/")) else "hub model"
    detail = " ".join(part.strip() for part in str(error).splitlines() if part.strip())  # one line
    return f"{repo}: {hub_error_message(repo, error, hub_token())}" + (f" ({detail[:300]})" if detail else "")
