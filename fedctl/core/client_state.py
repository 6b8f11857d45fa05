"""Per-client state, one owner: what a client keeps between the rounds it takes part in.

What lives here, per client id, as one flat dict of tensors with namespaced names:
  `local/<key>`   tensors that never leave the client (FedBN's BatchNorm, FedPer's `federation.local_keys`);
  `scaffold/<key>` SCAFFOLD's client control variate c_i;
  `optim/<i>/<name>` the client's optimizer state (`federation.keep_optimizer_state`; param_groups are rebuilt
                   from the run's config, so only the tensors are kept).

`ClientStateStore` holds entries in memory up to `memory_bytes` and spills the least recently used ones to
`<run_dir>/client_state/<client>.safetensors` beyond it (a temporary folder for runs kept in memory), so 1,000
clients of a model cost the budget in RAM, not 1,000 models. Spill and reload are bit-exact (safetensors keeps
dtype and bytes), so where an entry sits (memory or file) never changes a result: 1 or N worker processes give
bit-identical runs.

Checkpoints (`snapshot`): the live folder's files are immutable once written (a new version replaces the name
atomically, a new inode), so a checkpoint hard-links every spilled file into `checkpoints/client_state_NNN/` and
writes the in-memory entries beside them, all under a temporary name renamed into place before the round's .pt
that references it is written. A resume (`restore`) rebuilds the live folder from that snapshot by hard links
again: whatever a run killed mid-round had spilled since is discarded, and the snapshot itself is never written to.
Where hard links are not possible (some network or FAT file systems) files are copied.

Where it lives: in the server process for in-process and worker-process clients (the executor carries a client's
entry with its job and brings the new one back); over Flower it would live on the node (`Context.state`) —
not implemented, the Flower backend refuses stateful runs by name (fedctl.flower.server_app).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fedctl.errors import FedctlError
from fedctl.utils.io import atomic_path, make_parents

Entry = dict[str, torch.Tensor]

LIVE_DIR = "client_state"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def entry_nbytes(entry: Entry) -> int:
    return sum(t.numel() * t.element_size() for t in entry.values())


def file_name(client_id: str) -> str:
    """A file name for a client id: ids are task-made (client_0, speaker ids); anything odd is escaped."""
    safe = _SAFE.sub(lambda m: f"%{ord(m.group()):02x}", client_id)
    return f"{safe}.safetensors"


def _client_of(name: str) -> str:
    stem = name[: -len(".safetensors")]
    return re.sub(r"%([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), stem)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class ClientStateStore:
    """Client id → entry (flat dict of CPU tensors); memory up to `memory_bytes`, LRU spill to files beyond."""

    def __init__(self, folder: str | os.PathLike | None, memory_bytes: int) -> None:
        if memory_bytes < 0:
            raise ValueError("memory_bytes must be >= 0")
        self._tmp = None
        if folder is None:  # a run kept in memory: spill to a private temporary folder
            self._tmp = tempfile.TemporaryDirectory(prefix="fedctl-client-state-")
            folder = self._tmp.name
        self.folder = Path(folder)
        self.memory_bytes = memory_bytes
        self._memory: OrderedDict[str, Entry] = OrderedDict()  # least recently used first
        self._spilled: dict[str, Path] = {}
        self.in_memory_bytes = 0
        self.peak_memory_bytes = 0
        self.spills = 0  # entries written to disk so far (tests and benchmarks read it)
        self.dirty = False  # put() since the last commit(): the store no longer matches the last round's end

    def __len__(self) -> int:
        return len(self._memory) + len(self._spilled)

    def __contains__(self, client_id: str) -> bool:
        return client_id in self._memory or client_id in self._spilled

    def clients(self) -> list[str]:
        return sorted({*self._memory, *self._spilled})

    def get(self, client_id: str) -> Entry | None:
        """The client's entry (None when it has none yet); treat it as read-only. Loads a spilled entry into
        memory (it becomes the most recently used)."""
        if client_id in self._memory:
            self._memory.move_to_end(client_id)
            return self._memory[client_id]
        path = self._spilled.get(client_id)
        if path is None:
            return None
        entry = load_file(path)
        self._add(client_id, entry)
        return entry

    def put(self, client_id: str, entry: Entry) -> None:
        """Store the client's new entry (takes ownership of the tensors); spill beyond the budget."""
        entry = {k: v.detach().to("cpu").contiguous() for k, v in entry.items()}
        self.dirty = True
        self._drop(client_id)
        self._add(client_id, entry)

    def commit(self) -> None:
        """Mark the store as matching the end of a completed round (see Run.checkpoint)."""
        self.dirty = False

    def _drop(self, client_id: str) -> None:
        old = self._memory.pop(client_id, None)
        if old is not None:
            self.in_memory_bytes -= entry_nbytes(old)
        path = self._spilled.pop(client_id, None)
        if path is not None:  # a snapshot holds its own link to the file
            path.unlink(missing_ok=True)

    def _add(self, client_id: str, entry: Entry) -> None:
        # a reloaded entry keeps its file: spilling it again unchanged costs nothing
        self._memory[client_id] = entry
        self.in_memory_bytes += entry_nbytes(entry)
        # the entry being added is the one momentary excess over the budget (it may be spilled itself)
        while self.in_memory_bytes > self.memory_bytes and self._memory:
            cid, old = self._memory.popitem(last=False)
            self.in_memory_bytes -= entry_nbytes(old)
            if cid not in self._spilled:
                self._spilled[cid] = self._write(self.folder / file_name(cid), old)
                self.spills += 1
        self.peak_memory_bytes = max(self.peak_memory_bytes, self.in_memory_bytes)

    @staticmethod
    def _write(path: Path, entry: Entry) -> Path:
        make_parents(path)
        with atomic_path(path) as tmp:
            save_file(entry, str(tmp))
        return path

    # -- checkpoints -----------------------------------------------------------------------------
    def snapshot(self, target: Path) -> list[str]:
        """Write every entry into the folder `target` (spilled files hard-linked, in-memory ones written),
        atomically: the folder appears complete or not at all. Returns the client ids it holds."""
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            for cid, path in self._spilled.items():  # a reloaded, unchanged entry: its file is current
                _link_or_copy(path, tmp / file_name(cid))
            for cid, entry in self._memory.items():
                if cid not in self._spilled:
                    save_file(entry, str(tmp / file_name(cid)))
            if target.exists():  # the same round checkpointed again (the round failed): replace it
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return self.clients()

    def restore(self, source: Path, clients: list[str]) -> None:
        """Forget everything and take the entries of snapshot `source` (all on disk; loaded on first use). The
        live folder is rebuilt from the snapshot, whose files are never written to."""
        missing = [c for c in clients if not (source / file_name(c)).is_file()]
        if missing:
            raise FedctlError(f"checkpoint client state {source} lacks the state of client '{missing[0]}'",
                              "the folder beside the checkpoint was altered; resume from another checkpoint")
        self._memory.clear()
        self._spilled.clear()
        self.in_memory_bytes = 0
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True)
        for cid in clients:
            dst = self.folder / file_name(cid)
            _link_or_copy(source / file_name(cid), dst)
            self._spilled[cid] = dst
        self.dirty = False

    def restore_empty(self) -> None:
        """Forget everything (a resume from a checkpoint taken before any client kept state)."""
        self._memory.clear()
        self._spilled.clear()
        self.in_memory_bytes = 0
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self.dirty = False

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


# ------------------------------------------------------------------------------- entry helpers


def split(entry: Entry | None, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors of one namespace, without the prefix: split(entry, "local") → {key: tensor}."""
    if not entry:
        return {}
    p = prefix + "/"
    return {k[len(p):]: v for k, v in entry.items() if k.startswith(p)}


def join(**parts: dict[str, torch.Tensor]) -> Entry:
    """The entry of several namespaces: join(local={...}, scaffold={...})."""
    return {f"{ns}/{k}": v for ns, tensors in parts.items() for k, v in tensors.items()}


def flatten_optimizer_state(state_dict: dict[str, Any]) -> dict[str, torch.Tensor]:
    """torch optimizer state_dict()["state"] → {"<param index>/<name>": tensor}; non-tensor values are refused."""
    out = {}
    for index, per_param in state_dict["state"].items():
        for name, value in per_param.items():
            if not isinstance(value, torch.Tensor):
                value = torch.tensor(value)
            out[f"{index}/{name}"] = value.detach().clone()
    return out


def unflatten_optimizer_state(flat: dict[str, torch.Tensor], param_groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The inverse, with the param_groups of a freshly built optimizer (the run's config: same hyperparameters)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = value.clone()
    return {"state": state, "param_groups": param_groups}


def clients_in(folder: Path) -> list[str]:
    return sorted(_client_of(p.name) for p in folder.iterdir() if p.name.endswith(".safetensors"))
