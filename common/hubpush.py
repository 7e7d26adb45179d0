"""Publishing an exported model folder on the Hugging Face hub (`export.py RUN OUT --push-to-hub REPO`):
the flags, the upload (huggingface_hub create_repo + upload_folder, token from HF_TOKEN, never printed)
and its errors as one line. Fetching a folder back by its hub name: modelhub.resolve_model_dir."""

from __future__ import annotations

from pathlib import Path

from common import cli, huberrors, modelhub

# What a folder must hold to be pushed: the model, its configuration and its model card (export.py writes them).
PUSH_REQUIRED = ("config.json", "model.safetensors", "README.md")


def add_hub_flags(parser) -> None:
    """--push-to-hub REPO and --private on `parser` (export.py's command line)."""
    parser.add_argument(
        "--push-to-hub",
        metavar="REPO",
        default=None,
        help="upload the model folder to this hub repository (org/name; created if missing) with the "
        "write token in HF_TOKEN",
    )
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository as private")


def push_if_asked(args, folder) -> str | None:
    """After export: push `folder` when --push-to-hub was given -> the commit's URL (printed), else None."""
    repo_id = getattr(args, "push_to_hub", None)
    if not repo_id:
        return None
    url = push_folder(folder, repo_id, private=getattr(args, "private", False))
    print(f"pushed {folder} to the hub: {url}")
    return url


def check_push(folder: Path, repo_id: str, token: str | None) -> None:
    """What can be checked before any request: a hub name, a complete model folder, a token, not offline."""
    if not modelhub.HUB_NAME_RE.fullmatch(str(repo_id)):
        raise cli.PipelineError(f"--push-to-hub {repo_id}: not a hub repository name org/name")
    item = modelhub.check_local_model("model folder", folder, PUSH_REQUIRED)
    if not item.ok:
        raise cli.PipelineError(f"--push-to-hub: {item.message}")
    if token is None:
        raise cli.PipelineError(
            f"--push-to-hub {repo_id}: HF_TOKEN is not set: create a token with write access at "
            "https://huggingface.co/settings/tokens and export HF_TOKEN"
        )
    if huberrors.hub_offline():
        raise cli.PipelineError(f"--push-to-hub {repo_id}: HF_HUB_OFFLINE is set; pushing needs the hub: unset it")


def push_error_message(repo_id: str, error: BaseException, token: str | None) -> str:
    """A failed push -> what it means: a hub answer or no network as huberrors says it, anything else
    (e.g. a model card the hub rejects) with its own first line."""
    import requests
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(error, (HfHubHTTPError, requests.ConnectionError, requests.Timeout)):
        return huberrors.hub_error_message(repo_id, error, token)
    return f"{type(error).__name__}: {cli.one_line(str(error))[:300]}"


def push_folder(folder, repo_id: str, token: str | None = None, private: bool = False, endpoint=None) -> str:
    """Upload every file of the model folder `folder` to the hub model repository `repo_id` (created when
    missing, kept when it exists) in one commit -> the commit's URL. The token is `token`, else HF_TOKEN;
    it goes only into the request headers. Hub errors become one PipelineError line (huberrors)."""
    from huggingface_hub import HfApi

    folder, token = Path(folder), token or huberrors.hub_token()
    check_push(folder, repo_id, token)
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            commit_message=f"Upload {folder.name} (export.py)",
        )
    except Exception as e:  # HTTP, permissions, network: one line naming the repository, never the token
        raise cli.PipelineError(f"--push-to-hub {repo_id}: {push_error_message(repo_id, e, token)}") from e
    return str(getattr(commit, "commit_url", None) or commit)
