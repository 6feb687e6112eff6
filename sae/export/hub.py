"""Upload an exported SAE to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path

from sae.core.errors import ConfigError
from sae.export.write import MARKER


def push_to_hub(folder: Path, repo_id: str, path_in_repo: str | None = None, private: bool = False):
    """Upload the exported folder; the token comes from HF_TOKEN or `hf auth login` and is never written."""
    from huggingface_hub import HfApi, get_token

    if get_token() is None:
        raise ConfigError("no Hugging Face token: run `hf auth login` or export HF_TOKEN=..., then push again.")
    api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    return api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        path_in_repo=path_in_repo,
        commit_message=f"Add SAE {path_in_repo or ''}".strip(),
        ignore_patterns=[MARKER],  # the export's own bookkeeping, not part of the SAE
    )
