"""``lion-hf push``: an exported folder to a Hub model repo, through ``huggingface_hub.HfApi``.

The folder must be what :func:`lion_hf.export.export_folder` writes, and (unless told not to) must load in a fresh
process without lion_hf. Only files that differ from the repo's are sent, so pushing an unchanged folder again
makes no commit; weight and tokenizer files the repo has but the folder does not (old shards) are deleted, so that
transformers never picks up a stale copy (the code files are always sent, so stale ones are replaced).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, ModelCard, get_token
from huggingface_hub.errors import HFValidationError
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import validate_repo_id
from huggingface_hub.utils.sha import git_hash

from .cards import ORIGINAL_LICENSE_NAME, retarget_card
from .export import CARD, DATA_FILES, folder_problems
from .load_check import check_loads

LOGIN_HELP = "log in with `hf auth login`, or set the HF_TOKEN environment variable to a token with write access"


class NoTokenError(PermissionError):
    """No Hugging Face token is available to push with."""


@dataclass
class PushPlan:
    """What a push sends: every file of the folder, the card as uploaded."""

    uploads: dict[str, bytes | Path]
    card: str

    def size(self, name: str) -> int:
        content = self.uploads[name]
        return len(content) if isinstance(content, bytes) else content.stat().st_size


def check_repo_id(repo_id: str) -> None:
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"--repo-id {repo_id!r} is not of the form namespace/name (e.g. my-org/lion-s-mlm).")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"--repo-id {repo_id!r} is not a valid Hub repo id namespace/name: {error}") from None


def plan_push(folder: str | Path, repo_id: str) -> PushPlan:
    """The files a push of ``folder`` to ``repo_id`` uploads; refuses a folder that is not an exported one.

    The card is made to show and load ``repo_id`` (title, model-index name, usage snippet), so that it runs as
    written on the Hub.
    """
    check_repo_id(repo_id)
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{str(folder)!r} is not a folder.")
    problems = folder_problems(folder)
    if problems:
        raise ValueError(
            f"{str(folder)!r} is not an exported LION folder: {'; '.join(problems)}. Write one with "
            "`lion-hf export SRC DST` (or lion_hf.export_folder)."
        )
    card = retarget_card((folder / CARD).read_text(encoding="utf-8"), repo_id)
    uploads: dict[str, bytes | Path] = {p.name: p for p in sorted(folder.iterdir())}
    uploads[CARD] = card.encode("utf-8")
    return PushPlan(uploads, card)


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    dry_run: bool = False,
    check: bool = True,
    token: str | None = None,
    echo: Callable[[str], None] = print,
) -> str | None:
    """Push an exported folder to the Hub model repo ``repo_id`` (``namespace/name``); return the commit URL, or
    None when nothing was sent (a dry run, or a repo already holding these files).

    ``private``: create the repo private (an existing repo keeps its visibility). ``revision``: a branch, created
    when missing. ``dry_run``: print the files with their sizes and the card, contact nothing. ``check``: first load
    the folder in a fresh process without lion_hf (:func:`lion_hf.load_check.check_loads`).
    """
    check_repo_id(repo_id)
    if not dry_run:
        token = token or get_token()
        if token is None:
            raise NoTokenError(f"No Hugging Face token found: {LOGIN_HELP}. Nothing was checked or sent.")
    plan = plan_push(folder, repo_id)
    if ModelCard(plan.card).data.get("license_name") == ORIGINAL_LICENSE_NAME:
        echo(
            "note: these weights come from the original LION code; its licence (EPFL, non-commercial) forbids "
            "distributing EPFL's weights without EPFL's written permission. See the card's Licence section."
        )
    if check:
        loaded = check_loads(folder)
        echo("load check passed (fresh process, no lion_hf): " + ", ".join(f"{k} {v}" for k, v in loaded.items()))
    if dry_run:
        echo(f"dry run: would push {len(plan.uploads)} files to {repo_id}" + (f" ({revision})" if revision else ""))
        for name in plan.uploads:
            echo(f"  {plan.size(name):>14,d}  {name}")
        echo(f"\n--- {CARD} as uploaded ---\n{plan.card}")
        return None

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    remote = {
        entry.path: entry
        for entry in api.list_repo_tree(repo_id, revision=revision, recursive=True)
        if isinstance(entry, RepoFile)
    }
    additions = []
    for name, content in plan.uploads.items():
        operation = CommitOperationAdd(path_in_repo=name, path_or_fileobj=content)
        if not _unchanged(operation, remote.get(name)):
            additions.append(operation)
    deletions = [
        CommitOperationDelete(path_in_repo=path)
        for path in sorted(remote)
        if path not in plan.uploads and any(fnmatch.fnmatch(path, pattern) for pattern in DATA_FILES)
    ]
    if not additions and not deletions:
        echo(f"{repo_id} already holds exactly these files: nothing to push, no commit made.")
        return None
    info = api.create_commit(
        repo_id,
        operations=[*additions, *deletions],
        commit_message=commit_message or f"Upload {Path(folder).name} with lion-hf",
        revision=revision,
    )
    echo(
        f"pushed {len(additions)} changed file(s)"
        + (f" and deleted {len(deletions)} stale one(s)" if deletions else "")
        + f": {info.commit_url}"
    )
    return info.commit_url


def _unchanged(operation: CommitOperationAdd, remote: RepoFile | None) -> bool:
    """Whether the repo's file has this content: LFS files by sha256, others by their git blob id."""
    if remote is None:
        return False
    if remote.lfs is not None:
        return operation.upload_info.sha256.hex() == remote.lfs.sha256
    with operation.as_file() as file:
        return git_hash(file.read()) == remote.blob_id
