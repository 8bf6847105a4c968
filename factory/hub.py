"""Upload an exported dataset folder (factory/cards.py) to the Hugging Face Hub: what `factory
export NAME --format hf --output DIR --push USER/NAME` does after writing DIR.

    from factory.hub import push_folder
    url = push_folder(Path("quickstart-hf"), "me/quickstart", message="factory export quickstart@1")

One dataset repository (created when missing, private when asked), one commit holding every file
of the folder (README.md and the Parquet shards), made with `huggingface_hub`'s create_commit:
the Hub decides per file whether it goes as a regular blob or through large-file storage. The
token is the one `huggingface_hub` finds (`HF_TOKEN`, or `hf auth login`); the endpoint is
`HF_ENDPOINT` (default the public Hub). Nothing is uploaded unless asked: this is the only
place the factory talks to the Hub, and `HF_HUB_OFFLINE=1` (the tests' and the CLI's default
for model loading) refuses it up front with a message saying so.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from storage.errors import BadInput, FactoryError


class PushFailed(FactoryError):
    """The Hub failed the upload for a reason not the user's (a 5xx, a dropped connection): exit 1."""

_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def check_repo(repo: str) -> str:
    """`repo` when it is USER/NAME (or ORG/NAME) as the Hub spells repository ids, else BadInput."""
    if not _REPO.match(repo) or ".." in repo or repo.endswith((".git", ".")):
        raise BadInput(f"--push {repo!r}: expected a Hub dataset id USER/NAME (letters, digits, '-', '_', '.')")
    return repo


def preflight(repo: str) -> str:
    """Everything `push_folder` needs that a user can get wrong, checked before any work: the
    repository id, offline mode, huggingface_hub, a token. Returns the token."""
    check_repo(repo)
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise BadInput("--push: HF_HUB_OFFLINE is set, so nothing may be uploaded; unset it for this command to push")
    try:
        from huggingface_hub import get_token
    except ImportError:
        raise BadInput("--push needs huggingface_hub: pip install huggingface_hub") from None
    token = get_token()
    if not token:
        raise BadInput("--push: no Hugging Face token; set HF_TOKEN or run `hf auth login` (a token with write access)")
    return token


def push_folder(folder: Path, repo: str, *, message: str, private: bool = False, token: str | None = None,
                endpoint: str | None = None) -> str:
    """Upload every file under `folder` to dataset repository `repo` in one commit; returns the
    commit's URL. BadInput when `preflight` fails or the Hub refuses (4xx: the status and the
    Hub's message are named); PushFailed (exit 1) when the Hub or the network fails."""
    token = token or preflight(repo)
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    files = sorted(p for p in folder.rglob("*") if p.is_file())
    api = HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None, token=token)
    try:
        api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
        info = api.create_commit(
            repo, repo_type="dataset", commit_message=message,
            operations=[CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p)) for p in files],
        )
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if 400 <= status < 500:  # a bad token, no write access, a bad name: the user's to fix
            raise BadInput(f"--push {repo}: the Hub refused the upload (HTTP {status}): {first}") from None
        raise PushFailed(f"--push {repo}: the upload failed (HTTP {status or '?'}): {first}; the folder {folder} is written "
                         f"whole: upload it again with `hf upload {repo} {folder} --repo-type dataset`") from None
    except ValueError as exc:  # the Hub found the card's metadata invalid: the card is ours, so it is a failure
        raise PushFailed(f"--push {repo}: the Hub refused the card's metadata: {exc}") from None
    except OSError as exc:  # no route to the endpoint, a reset connection
        raise PushFailed(f"--push {repo}: could not reach the Hub at {api.endpoint}: {exc}") from None
    return str(info.commit_url)
