"""`lion-hf push` without a network: the dry run lists exactly the folder, a push commits exactly its files (HfApi
mocked), an unchanged folder makes no commit, and every refusal comes before any work."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
from helpers import randomized, tiny_text_config
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils.sha import git_hash
from transformers import AutoTokenizer

import lion_hf.hub
from lion_hf import LionForMaskedLM, export_folder
from lion_hf.cli import main as lion_hf_main

REPO_ID = "lion-hf-tests/lion-s-mlm"
HUB_METHODS = ("create_repo", "create_branch", "list_repo_tree", "create_commit", "upload_folder", "upload_file")


class FakeHub:
    """HfApi's methods replaced: what a push asks of the Hub is recorded; the repo holds ``remote`` files."""

    def __init__(self, monkeypatch, remote=()):
        self.calls, self.remote = [], list(remote)
        for name in HUB_METHODS:
            monkeypatch.setattr(HfApi, name, self._method(name))

    def _method(self, name):
        def method(api, *args, **kwargs):
            self.calls.append((name, args, kwargs))
            if name == "list_repo_tree":
                return iter(self.remote)
            if name == "create_commit":
                return SimpleNamespace(commit_url=f"https://huggingface.co/{args[0]}/commit/0123abc")
            return None

        return method

    def called(self, name):
        return [(args, kwargs) for called, args, kwargs in self.calls if called == name]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, data_dir):
    tokenizer = AutoTokenizer.from_pretrained(data_dir / "tokenizers" / "bert-base-uncased")
    model = randomized(LionForMaskedLM(tiny_text_config("d", vocab_size=30522, max_position_embeddings=64)))
    return export_folder(model, tmp_path_factory.mktemp("push") / "lion-d-mlm", tokenizer=tokenizer, progress=False).folder


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    assert huggingface_hub.get_token() is None


def uploaded_card(folder: Path) -> bytes:
    """The folder's card showing and loading the repo, as the push uploads it."""
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert card.count('model_id = "lion-d-mlm"') == 1 and card.count("\n# lion-d-mlm\n") == 1
    card = card.replace('model_id = "lion-d-mlm"', f'model_id = "{REPO_ID}"')
    return card.replace("\n# lion-d-mlm\n", "\n# lion-s-mlm\n").encode()


def folder_contents(folder: Path) -> dict[str, bytes]:
    return {**{p.name: p.read_bytes() for p in folder.iterdir()}, "README.md": uploaded_card(folder)}


def remote_copy(contents: dict[str, bytes]) -> list[RepoFile]:
    """RepoFile entries of a repo holding ``contents``: safetensors in LFS (sha256), the rest by git blob id."""
    entries = []
    for name, data in contents.items():
        lfs = {"size": len(data), "oid": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
        oid = hashlib.sha1(b"pointer of " + data).hexdigest() if name.endswith(".safetensors") else git_hash(data)
        entries.append(RepoFile(path=name, size=len(data), oid=oid, lfs=lfs if name.endswith(".safetensors") else None))
    return entries


def test_dry_run_lists_exactly_the_folders_files_and_the_card_and_contacts_nothing(folder, monkeypatch, no_token, capsys):
    hub = FakeHub(monkeypatch)
    assert lion_hf_main(["push", str(folder), "--repo-id", REPO_ID, "--dry-run", "--no-check"]) == 0
    assert hub.calls == []
    out = capsys.readouterr().out
    listed = {name: int(size.replace(",", "")) for size, name in re.findall(r"^ +([\d,]+)  (\S+)$", out, flags=re.M)}
    expected = {name: len(data) for name, data in folder_contents(folder).items()}
    assert listed == expected
    assert uploaded_card(folder).decode() in out


def test_a_push_commits_exactly_the_folders_files(folder, monkeypatch, token, capsys):
    hub = FakeHub(monkeypatch)
    status = lion_hf_main(
        ["push", str(folder), "--repo-id", REPO_ID, "--private", "--revision", "v1", "--commit-message", "First"]
    )
    assert status == 0, capsys.readouterr().err
    assert "load check passed (fresh process, no lion_hf): model AutoModelForMaskedLM -> LionForMaskedLM" in capsys.readouterr().out
    assert [name for name, _, _ in hub.calls] == ["create_repo", "create_branch", "list_repo_tree", "create_commit"]
    assert hub.called("create_repo") == [((REPO_ID,), {"private": True, "exist_ok": True})]
    assert hub.called("create_branch") == [((REPO_ID,), {"branch": "v1", "exist_ok": True})]
    (args, kwargs), = hub.called("create_commit")
    assert args == (REPO_ID,) and kwargs["revision"] == "v1" and kwargs["commit_message"] == "First"
    operations = kwargs["operations"]
    assert all(isinstance(operation, CommitOperationAdd) for operation in operations)
    sent = {}
    for operation in operations:
        with operation.as_file() as file:
            sent[operation.path_in_repo] = file.read()
    assert sent == folder_contents(folder)


def test_pushing_an_unchanged_folder_makes_no_commit_and_a_change_sends_only_itself(folder, monkeypatch, token, capsys):
    contents = folder_contents(folder)
    hub = FakeHub(monkeypatch, remote=remote_copy(contents))
    assert lion_hf_main(["push", str(folder), "--repo-id", REPO_ID, "--no-check"]) == 0
    assert hub.called("create_commit") == []
    assert "nothing to push, no commit made" in capsys.readouterr().out

    # The repo has an older card and a shard of an earlier, sharded export: the card goes up, the stale shards go.
    stale = {**contents, "README.md": b"old card", "model-00001-of-00002.safetensors": b"old shard"}
    hub = FakeHub(monkeypatch, remote=remote_copy(stale))
    assert lion_hf_main(["push", str(folder), "--repo-id", REPO_ID, "--no-check"]) == 0
    (_, kwargs), = hub.called("create_commit")
    additions = [op.path_in_repo for op in kwargs["operations"] if isinstance(op, CommitOperationAdd)]
    deletions = [op.path_in_repo for op in kwargs["operations"] if isinstance(op, CommitOperationDelete)]
    assert (additions, deletions) == (["README.md"], ["model-00001-of-00002.safetensors"])


def test_a_push_without_a_token_stops_with_how_to_log_in_before_any_work(folder, monkeypatch, no_token, capsys):
    hub = FakeHub(monkeypatch)
    monkeypatch.setattr(lion_hf.hub, "check_loads", lambda folder: pytest.fail("the load check ran without a token"))
    assert lion_hf_main(["push", str(folder), "--repo-id", REPO_ID]) == 2
    err = capsys.readouterr().err
    assert "No Hugging Face token found" in err and "`hf auth login`" in err and "HF_TOKEN" in err
    assert hub.calls == []


def test_a_folder_that_does_not_load_is_not_pushed_unless_no_check(folder, tmp_path, monkeypatch, token, capsys):
    broken = tmp_path / "lion-d-mlm"
    broken.mkdir()
    for path in folder.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / "config.json").write_text(json.dumps({**json.loads((folder / "config.json").read_text()), "hidden_size": 48}))
    hub = FakeHub(monkeypatch)
    assert lion_hf_main(["push", str(broken), "--repo-id", REPO_ID]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: not pushed:") and "does not load with plain transformers" in err
    assert hub.calls == []
    assert lion_hf_main(["push", str(broken), "--repo-id", REPO_ID, "--no-check"]) == 0
    assert len(hub.called("create_commit")) == 1


@pytest.mark.parametrize("repo_id", ["lion-s-mlm", "a/b/c", "me/", "/name", "me/bad name", "me/-bad.."])
def test_a_repo_id_must_be_namespace_slash_name(folder, monkeypatch, token, capsys, repo_id):
    hub = FakeHub(monkeypatch)
    assert lion_hf_main(["push", str(folder), "--repo-id", repo_id, "--dry-run", "--no-check"]) == 2
    err = capsys.readouterr().err
    assert f"--repo-id {repo_id!r}" in err and "namespace/name" in err
    assert hub.calls == []


def test_only_an_exported_folder_is_pushed(folder, tmp_path, monkeypatch, token, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for path in folder.iterdir():
        if path.name != "README.md":
            (run / path.name).write_bytes(path.read_bytes())
    (run / "optimizer.pt").write_bytes(b"state")
    (run / "training_args.bin").write_bytes(b"args")
    hub = FakeHub(monkeypatch)
    assert lion_hf_main(["push", str(run), "--repo-id", REPO_ID, "--no-check"]) == 2
    err = capsys.readouterr().err
    assert "is not an exported LION folder: no README.md (the model card)" in err
    assert "files an exported folder does not hold: optimizer.pt, training_args.bin" in err
    assert "lion-hf export SRC DST" in err
    assert hub.calls == []
