"""The hub path of an exported model folder, against a local HTTP server that answers as huggingface.co does
(repository creation, preupload, the LFS batch API and upload, commit, repository info, file resolution):
common.hubpush.push_folder / push_if_asked (export.py --push-to-hub) and common.modelhub.resolve_model_dir
(predict.py --model org/name), with huggingface_hub's endpoint pointed at the server."""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest

from common import cli, hubpush, modelhub

TOKEN = "hf_TestTokenNeverPrinted123"
REPO, GATED, MISSING = "someone/ser-model", "someone/gated-model", "someone/no-such-model"
READONLY = "other/their-model"  # a namespace the token cannot write to


class FakeHub(http.server.BaseHTTPRequestHandler):
    """The part of the hub's HTTP API huggingface_hub uses to push and fetch a model. Class attributes hold
    what it saw: `requests` ((method, path, Authorization header)), `repos` ({repo: {path: bytes}}), `lfs`
    ({sha256: bytes} uploaded through the LFS batch API)."""

    requests, repos, lfs, created, validated = [], {}, {}, [], []

    def _reply(self, status=200, body=b"{}", headers=None):
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status=200):
        self._reply(status, json.dumps(obj).encode())

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _seen(self):
        FakeHub.requests.append((self.command, self.path, self.headers.get("Authorization")))

    def do_POST(self):  # noqa: N802
        self._seen()
        body, path = self._body(), self.path.split("?")[0]
        if path == "/api/repos/create":
            req = json.loads(body)
            FakeHub.created.append(req)
            repo = f"{req['organization']}/{req['name']}"
            if repo == READONLY:
                message = {"X-Error-Message": "You don't have the rights to create a model under this namespace"}
                return self._reply(403, b"{}", message)
            if repo in FakeHub.repos:
                return self._json({"error": "You already created this model repo", "url": ""}, 409)
            FakeHub.repos[repo] = {}
            return self._json({"url": f"http://{self.headers['Host']}/{repo}"})
        if path == "/api/validate-yaml":  # the model card's YAML header, checked before the commit
            FakeHub.validated.append(json.loads(body))
            return self._json({"errors": [], "warnings": []})
        if "/preupload/" in path:
            files = json.loads(body)["files"]
            modes = [
                {"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(".safetensors") else "regular"}
                for f in files
            ]
            return self._json({"files": [{**m, "shouldIgnore": False} for m in modes]})
        if path.endswith(".git/info/lfs/objects/batch"):
            objects = json.loads(body)["objects"]
            base = f"http://{self.headers['Host']}/lfs-upload"
            actions = [{**o, "actions": {"upload": {"href": f"{base}/{o['oid']}"}}} for o in objects]
            return self._json({"transfer": "basic", "objects": actions})
        if "/commit/" in path:
            repo = path.split("/api/models/")[1].split("/commit/")[0]
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    FakeHub.repos[repo][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] == "lfsFile":
                    FakeHub.repos[repo][item["value"]["path"]] = FakeHub.lfs[item["value"]["oid"]]
            url = f"http://{self.headers['Host']}/{repo}/commit/{'c' * 40}"
            return self._json({"commitUrl": url, "commitOid": "c" * 40})
        self._json({"error": "not found"}, 404)

    def do_PUT(self):  # noqa: N802
        self._seen()
        data = self._body()
        FakeHub.lfs[self.path.rsplit("/", 1)[1]] = data
        self._reply(200, b"")

    def _refuse(self, repo) -> bool:
        """Answer as the hub does for a gated repository without access, or one that does not exist."""
        if repo == GATED:
            self._reply(401, b"{}", {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access is restricted."})
        elif repo not in FakeHub.repos:
            self._reply(404, b"{}", {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
        else:
            return False
        return True

    def do_GET(self):  # noqa: N802
        self._seen()
        path = self.path.split("?")[0]
        if path.startswith("/api/models/"):
            repo = "/".join(path.split("/")[3:5])
            if not self._refuse(repo):
                files = [{"rfilename": name} for name in sorted(FakeHub.repos[repo])]
                self._json({"id": repo, "sha": "c" * 40, "siblings": files})
            return
        repo, rest = "/".join(path.split("/")[1:3]), path.split("/resolve/", 1)[-1]
        if self._refuse(repo):
            return
        name = rest.split("/", 1)[1]
        data = FakeHub.repos[repo].get(name)
        if data is None:
            return self._reply(404, b"{}", {"X-Error-Code": "EntryNotFound"})
        etag = hashlib.sha256(data).hexdigest()
        self._reply(200, data, {"X-Repo-Commit": "c" * 40, "ETag": f'"{etag}"', "Content-Type": "application/octet"})

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The fake hub on a free port, huggingface_hub pointed at it (online, a private cache), HF_TOKEN set."""
    import huggingface_hub.constants
    import huggingface_hub.file_download
    import requests
    from huggingface_hub.utils import reset_sessions

    FakeHub.requests, FakeHub.repos, FakeHub.lfs, FakeHub.created, FakeHub.validated = [], {}, {}, [], []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for key, value in dict(HF_HUB_OFFLINE="0", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    endpoint = f"http://127.0.0.1:{server.server_port}"
    template = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)  # both are HF_ENDPOINT read at import
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(huggingface_hub.file_download, "HUGGINGFACE_CO_URL_TEMPLATE", template)  # a copy
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub_cache"))
    send = requests.adapters.HTTPAdapter.send

    def only_the_fake_hub(adapter, request, *args, **kwargs):
        assert request.url.startswith(endpoint + "/"), f"a request left the fake hub: {request.url}"
        return send(adapter, request, *args, **kwargs)

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", only_the_fake_hub)
    reset_sessions()  # a session made offline by another test would refuse the requests
    yield FakeHub
    server.shutdown()
    reset_sessions()


def model_folder(path: Path) -> dict:
    """A small model folder as export.py lays one out -> {relative path: bytes}."""
    files = {
        "config.json": json.dumps({"labels": ["hap", "ang", "sad", "neu"]}).encode(),
        "model.safetensors": bytes(range(256)) * 40,
        "README.md": b"---\ntags:\n- audio-classification\n---\n# A model\n",
        "text/tokenizer.json": b'{"version": "1.0"}',
    }
    for rel, data in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)
    return files


def tree(path: Path) -> dict:
    """{relative path: bytes} of every file under path, without the download metadata huggingface_hub keeps
    in a local copy's .cache/huggingface."""
    files = {p.relative_to(path).as_posix(): p for p in sorted(path.rglob("*")) if p.is_file()}
    return {rel: p.read_bytes() for rel, p in files.items() if not rel.startswith(".cache/huggingface/")}


def test_push_sends_every_file_with_the_token_and_download_returns_them(hub, tmp_path, capsys):
    import huggingface_hub.constants

    files = model_folder(tmp_path / "model")
    parser = argparse.ArgumentParser()
    hubpush.add_hub_flags(parser)
    url = hubpush.push_if_asked(parser.parse_args(["--push-to-hub", REPO, "--private"]), tmp_path / "model")
    assert url == f"{huggingface_hub.constants.ENDPOINT}/{REPO}/commit/{'c' * 40}"
    assert hub.created == [{"name": "ser-model", "organization": "someone", "private": True, "type": "model"}]
    assert hub.repos[REPO] == files  # the regular files inline in the commit, the weights through LFS
    assert list(hub.lfs.values()) == [files["model.safetensors"]]
    assert hub.validated and all(
        v == {"content": files["README.md"].decode(), "repoType": "model"} for v in hub.validated
    )
    kinds = [(method, path.split("?")[0].split("/")[-2]) for method, path, _ in hub.requests]
    assert kinds[0] == ("POST", "repos") and kinds[-1] == ("POST", "commit")
    assert ("POST", "preupload") in kinds and ("PUT", "lfs-upload") in kinds
    assert {auth for _, path, auth in hub.requests if not path.startswith("/lfs-upload")} == {f"Bearer {TOKEN}"}
    # pushing again to the existing repository (409 from create) is a new commit, not an error
    assert hubpush.push_folder(tmp_path / "model", REPO) == url

    hub.requests.clear()
    got = modelhub.resolve_model_dir(REPO)
    assert tree(got) == files
    assert got.is_relative_to(tmp_path / "hub_cache")
    assert hub.requests[0][:2] == ("GET", f"/api/models/{REPO}/revision/main")
    assert {auth for *_, auth in hub.requests} == {f"Bearer {TOKEN}"}
    out, err = capsys.readouterr()
    assert f"pushed {tmp_path / 'model'} to the hub: {url}" in out
    assert TOKEN not in out + err


def test_offline_copies_and_the_cache_resolve_without_a_request(hub, tmp_path, monkeypatch):
    files = model_folder(tmp_path / "model")
    hubpush.push_folder(tmp_path / "model", REPO)
    copy = modelhub.download_model_dir(REPO, tmp_path / "models")
    assert copy == tmp_path / "models" / REPO and tree(copy) == files
    cached = modelhub.resolve_model_dir(REPO)

    hub.requests.clear()
    assert modelhub.resolve_model_dir(REPO, model_dir=tmp_path / "models") == copy
    assert modelhub.resolve_model_dir(str(tmp_path / "model"), model_dir=tmp_path / "models") == tmp_path / "model"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert modelhub.resolve_model_dir(REPO) == cached  # offline: the hub cache only
    assert hub.requests == []
    with pytest.raises(cli.PipelineError, match=f"--model {MISSING}: not available offline"):
        modelhub.resolve_model_dir(MISSING)
    assert hub.requests == []


def test_gated_missing_and_incomplete_are_one_line(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(cli.PipelineError) as gated:
        modelhub.resolve_model_dir(GATED)
    assert cli.describe_error(gated.value, "predict.py") == (
        f"predict.py: --model {GATED}: gated repository and HF_TOKEN is not set: accept its conditions at "
        f"https://huggingface.co/{GATED}, create a read token at https://huggingface.co/settings/tokens and "
        "export HF_TOKEN",
        2,
    )
    with pytest.raises(cli.PipelineError, match=f"^--model {MISSING}: no such repository on the hub"):
        modelhub.resolve_model_dir(MISSING)
    with pytest.raises(cli.PipelineError, match="^--model ./nowhere: no such folder, nor under --model-dir"):
        modelhub.resolve_model_dir("./nowhere", model_dir=tmp_path)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(cli.PipelineError, match="not an exported model folder.*missing model.safetensors"):
        modelhub.resolve_model_dir(str(tmp_path / "half"))

    model_folder(tmp_path / "model")
    hub.requests.clear()
    with pytest.raises(cli.PipelineError, match=f"--push-to-hub {REPO}: HF_TOKEN is not set"):
        hubpush.push_folder(tmp_path / "model", REPO)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(cli.PipelineError, match="--push-to-hub: .*half: incomplete, missing model.safetensors"):
        hubpush.push_folder(tmp_path / "half", REPO)
    assert hub.requests == []  # checked before any request
    with pytest.raises(cli.PipelineError) as refused:
        hubpush.push_folder(tmp_path / "model", READONLY)
    message, status = cli.describe_error(refused.value, "export.py")
    assert status == 2 and TOKEN not in message
    assert message.startswith(f"export.py: --push-to-hub {READONLY}: the hub answered HTTP 403 for ")
    assert "You don't have the rights" in message
    assert hub.requests[0][:2] == ("POST", "/api/repos/create") and READONLY not in hub.repos
    assert not any("/commit/" in path or "/preupload/" in path for _, path, _ in hub.requests)  # nothing sent
    assert TOKEN not in "".join(capsys.readouterr())
