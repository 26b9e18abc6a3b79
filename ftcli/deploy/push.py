"""`ftcli push RUN_DIR --repo-id ID`: upload the model folder (with its card, thresholds and
calibration) and the run's ONNX exports to the Hugging Face Hub, in one commit, through
huggingface_hub. `--dry-run` lists what would be uploaded without a network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftcli.deploy.artifacts import locate_run, upload_plan
from ftcli.errors import FtcliError, first_line


def push(run_dir: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
         dry_run: bool = False, message: str | None = None) -> dict[str, Any]:
    """Upload what `upload_plan` lists to `repo_id` (created when missing, `private` then), on
    `revision` (default: main). Returns the repository, the files (`path_in_repo`, bytes) and,
    after an upload, the commit's URL. Offline, without a token, or with the Hub out of reach:
    one line saying which."""
    import re

    run = locate_run(run_dir, "push")
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", repo_id or "") or ".." in repo_id:
        raise FtcliError(f"--repo-id {repo_id!r}: give a Hub repository id, like your-name/model-name")
    plan = upload_plan(run)
    files = [{"path_in_repo": name, "bytes": path.stat().st_size} for path, name in plan]
    summary: dict[str, Any] = {"repo_id": repo_id, "model": str(run.model), "files": files,
                               "bytes": sum(f["bytes"] for f in files), "dry_run": dry_run}
    if dry_run:
        return summary
    from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise FtcliError("push: the Hugging Face Hub is switched off here (HF_HUB_OFFLINE=1); run it where the Hub "
                         "can be reached, without HF_HUB_OFFLINE (--dry-run lists what would be uploaded)")
    if not get_token():
        raise FtcliError("push: no Hugging Face token; run `hf auth login` or set HF_TOKEN")
    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.create_commit(
            repo_id, repo_type="model", revision=revision,
            operations=[CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for path, name in plan],
            commit_message=message or f"Upload {run.model.name} with ftcli push")
    except Exception as exc:  # noqa: BLE001 - network, auth and Hub errors all end the same way: one line
        raise FtcliError(f"push: the upload to {constants.ENDPOINT} failed: {first_line(exc)}") from None
    summary.update(url=str(url), commit=getattr(commit, "commit_url", str(commit)))
    return summary
