"""A stand-in for the Hub's side of a push: each commit lands where a download of it would, in the Hub cache.

`HfApi.create_repo` and `HfApi.upload_folder` (what `Trainer.push_to_hub` and the checkpoint pushes call) are
replaced; everything else is the real client. A commit applies the upload's own filters (huggingface_hub's
`filter_repo_objects` with its default ignores, ``path_in_repo``, ``delete_patterns``) to the repository's files and
writes the result as the cache lays out a snapshot (``models--owner--name/refs/main``, ``snapshots/<commit>/``,
``blobs/``), so that ``from_pretrained("owner/name")`` with HF_HUB_OFFLINE=1 reads the pushed repository through
the same code path a download takes.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
from pathlib import Path

from huggingface_hub import CommitInfo, HfApi, RepoUrl, constants
from huggingface_hub.utils import filter_repo_objects
from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS

USER = "retina-tester"


class LocalHub:
    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.files: dict[str, dict[str, bytes]] = {}  # repo id -> {path in repo: content}
        self.commits: dict[str, list[str]] = {}  # repo id -> commit messages, oldest first

    def install(self, monkeypatch) -> LocalHub:
        hub = self

        def create_repo(api, repo_id, *args, exist_ok=False, **kwargs):
            repo_id = repo_id if "/" in repo_id else f"{USER}/{repo_id}"
            if repo_id in hub.files and not exist_ok:
                raise ValueError(f"{repo_id} exists")
            hub.files.setdefault(repo_id, {})
            hub.commits.setdefault(repo_id, [])
            return RepoUrl(f"{constants.ENDPOINT}/{repo_id}")

        def upload_folder(api, *, repo_id, folder_path, path_in_repo=None, commit_message=None, run_as_future=False,
                          allow_patterns=None, ignore_patterns=None, delete_patterns=None, **kwargs):  # fmt: skip
            info = hub.commit(repo_id, Path(folder_path), path_in_repo or "", commit_message or "Upload folder",
                              allow_patterns, ignore_patterns, delete_patterns)  # fmt: skip
            if not run_as_future:
                return info
            future = concurrent.futures.Future()
            future.set_result(info)
            return future

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(self.cache))
        return self

    def commit(self, repo_id, folder, prefix, message, allow, ignore, delete) -> CommitInfo:
        if repo_id not in self.files:
            raise ValueError(f"Repository {repo_id} not found: create it first.")
        ignore = [*(ignore if isinstance(ignore, list) else [ignore] if ignore else []), *DEFAULT_IGNORE_PATTERNS]
        local = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        uploaded = list(filter_repo_objects(local, allow_patterns=allow, ignore_patterns=ignore))
        prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        files = self.files[repo_id]
        if delete:
            under = [path[len(prefix) :] for path in files if path.startswith(prefix)]
            for path in filter_repo_objects(under, allow_patterns=delete):
                if path not in uploaded:
                    del files[prefix + path]
        for path in uploaded:
            files[prefix + path] = (folder / path).read_bytes()
        self.commits[repo_id].append(message)
        sha = self._write_snapshot(repo_id)
        return CommitInfo(
            commit_url=f"{constants.ENDPOINT}/{repo_id}/commit/{sha}",
            commit_message=message,
            commit_description="",
            oid=sha,
        )

    def _write_snapshot(self, repo_id: str) -> str:
        files = self.files[repo_id]
        digest = hashlib.sha1()
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
        digest.update(str(len(self.commits[repo_id])).encode())
        sha = digest.hexdigest()
        root = self.cache / f"models--{repo_id.replace('/', '--')}"
        for path, content in files.items():
            blob = root / "blobs" / hashlib.sha256(content).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(content)
            target = root / "snapshots" / sha / path
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(blob, target.parent), target)
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / "main").write_text(sha)
        return sha

    def snapshot(self, repo_id: str) -> Path:
        """The folder a download of the repository's main branch gives."""
        root = self.cache / f"models--{repo_id.replace('/', '--')}"
        return root / "snapshots" / (root / "refs" / "main").read_text()

    def paths(self, repo_id: str) -> set[str]:
        return set(self.files[repo_id])
