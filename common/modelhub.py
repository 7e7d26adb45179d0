"""Models by hub name or local folder: where a model is, checks of a folder or hub repository, offline
copies (--download-models), and what an extractor is (hashes of its config, weights and tokenizer, which a
run records). What hub errors mean: huberrors."""

from __future__ import annotations

import hashlib
import re as _re
from pathlib import Path

from common import checklist, cli, huberrors

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


def check_local_model(name: str, path, required=()) -> checklist.CheckItem:
    """A model folder: it exists and holds the files its loader opens. An entry of `required` may
    list alternatives separated by '|' (e.g. 'model.safetensors|pytorch_model.bin')."""
    path = Path(path)
    if not path.exists():
        return checklist.CheckItem(name, False, f"{path}: not found; copy the model there, or give its hub name")
    missing = [r for r in required if not any((path / alt).exists() for alt in r.split("|"))]
    if missing:
        return checklist.CheckItem(name, False, f"{path}: incomplete, missing {', '.join(missing)}")
    return checklist.CheckItem(name, True, f"{path} (local)")


def check_hub_model(
    name: str, repo_id: str, files=(), token: str | None = None, cache_dir=None, offline: bool | None = None
) -> checklist.CheckItem:
    """A hub repository. Offline (HF_HUB_OFFLINE=1, or offline=True for a cache-only run): are
    `files` in the local hub cache? Online: does the hub grant access with the token in HF_TOKEN
    (HfApi.auth_check: one small request, nothing downloaded)? Gated without access, unknown, or
    unreachable each give a FAIL line saying what to do."""
    from huggingface_hub import HfApi, try_to_load_from_cache

    if huberrors.hub_offline() if offline is None else offline:
        missing = [f for f in files if not isinstance(try_to_load_from_cache(repo_id, f, cache_dir=cache_dir), str)]
        if files and not missing:
            return checklist.CheckItem(name, True, f"{repo_id} in the local hub cache (HF_HUB_OFFLINE=1)")
        return checklist.CheckItem(
            name,
            False,
            f"offline and {repo_id} is not in the local hub cache"
            + (f" ({', '.join(missing)} missing)" if missing else "")
            + ": copy it with `python preprocess.py --download-models DIR` on a machine with "
            "internet and pass --model-dir DIR, or unset HF_HUB_OFFLINE",
        )
    try:
        HfApi().auth_check(repo_id, token=token)
    except Exception as e:  # gated, not found, HTTP error, no network: all become a line, not a crash
        return checklist.CheckItem(name, False, f"{repo_id}: {huberrors.hub_error_message(repo_id, e, token)}")
    return checklist.CheckItem(
        name, True, f"{repo_id} on the hub, access granted" + (" with HF_TOKEN" if token else "")
    )


def snapshot_repo(repo_id: str, dest_root, allow_patterns, token: str | None = None) -> Path:
    """Download the files of a hub repository that match `allow_patterns` into dest_root/<repo_id>
    (huggingface_hub.snapshot_download) -> that folder. Hub errors become a PipelineError saying
    what to do (gated: accept the conditions; offline: no network)."""
    from huggingface_hub import snapshot_download

    local = Path(dest_root) / repo_id
    try:
        snapshot_download(repo_id=repo_id, local_dir=str(local), allow_patterns=list(allow_patterns), token=token)
    except Exception as e:
        raise cli.PipelineError(
            f"downloading {repo_id} ({', '.join(allow_patterns)}): {huberrors.hub_error_message(repo_id, e, token)}"
        ) from e
    return local


# What a transformers model loads from its folder: config, tokenizer or feature-extractor files, and
# one weights file (model.safetensors when the repository has it, else pytorch_model.bin).
TRANSFORMERS_FILES = (
    "config.json",
    "preprocessor_config.json",
    "tokenizer_config.json",
    "tokenizer.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
)
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
TRANSFORMERS_REQUIRED = ("config.json", "|".join(TRANSFORMERS_WEIGHTS))  # for check_local_model


def snapshot_transformers_model(repo_id: str, dest_root, token: str | None = None) -> Path:
    """A transformers model (RoBERTa, wav2vec 2.0, ...) into dest_root/<repo_id>, without the TF, Flax
    or ONNX copies a repository may also hold -> that folder (pass it as the model name)."""
    local = snapshot_repo(repo_id, dest_root, TRANSFORMERS_FILES + TRANSFORMERS_WEIGHTS[:1], token)
    if not (local / TRANSFORMERS_WEIGHTS[0]).is_file():  # an older repository: PyTorch weights only
        snapshot_repo(repo_id, dest_root, TRANSFORMERS_WEIGHTS[1:], token)
    return local


def extractor_identity(name_or_dir: str) -> dict:
    """What a pretrained extractor *is*: its name or local dir, a hash of its config and, for a
    local dir, a hash of its weight files (a regenerated demo model with the same config differs)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name_or_dir)
    ident = {
        "name": str(name_or_dir),
        "config_sha256": hashlib.sha256(config.to_json_string(use_diff=False).encode()).hexdigest(),
    }
    path = Path(name_or_dir)
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
            h.update(f.name.encode())
            h.update(f.read_bytes())
        ident["weights_sha256"] = h.hexdigest()
    return ident


TOKENIZER_FILES = (
    "tokenizer_config.json",
    "tokenizer.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "spm.model",
    "sentencepiece.bpe.model",
)


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


# What an exported model folder (export.py) must hold for predict.py --model to load it.
MODEL_FOLDER_REQUIRED = ("config.json", "model.safetensors")


def resolve_model_dir(name, model_dir=None, *, token: str | None = None, cache_dir=None, allow_patterns=None) -> Path:
    """predict.py --model NAME -> the exported model folder on disk, found as the extractors are: NAME itself
    when it is a folder, its offline copy model_dir/<org>/<name> (--model-dir; no request), else the hub
    repository NAME downloaded into the hub cache (huggingface_hub.snapshot_download, token from HF_TOKEN;
    with HF_HUB_OFFLINE=1 only the cache is read). A missing folder, a hub error or a folder without
    config.json and model.safetensors is one PipelineError line."""
    local = local_model_path(name, model_dir)
    if local is None and not is_hub_name(name):
        under = f", nor under --model-dir {model_dir}" if model_dir else ""
        raise cli.PipelineError(f"--model {name}: no such folder{under}, and not a hub name org/name")
    if local is None:
        from huggingface_hub import snapshot_download

        token = token if token is not None else huberrors.hub_token()
        try:
            local = Path(
                snapshot_download(
                    repo_id=str(name),
                    token=token,
                    cache_dir=cache_dir,
                    allow_patterns=allow_patterns,
                    local_files_only=huberrors.hub_offline(),
                )
            )
        except Exception as e:  # gated, not found, offline and not cached, no network: one line
            raise cli.PipelineError(f"--model {name}: {huberrors.hub_error_message(str(name), e, token)}") from e
    item = check_local_model(f"--model {name}", local, MODEL_FOLDER_REQUIRED)
    if not item.ok:
        raise cli.PipelineError(f"--model {name}: not an exported model folder (export.py): {item.message}")
    return local


def download_model_dir(name: str, dest_root, token: str | None = None) -> Path:
    """An offline copy of the exported model `name` (every file of the hub repository) into
    dest_root/<org>/<name>, which `--model NAME --model-dir DEST_ROOT` then reads without the hub -> that folder."""
    return snapshot_repo(name, dest_root, ["*"], token if token is not None else huberrors.hub_token())
