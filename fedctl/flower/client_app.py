"""The fedctl ClientApp: one SuperNode trains the clients the ServerApp sends it.

`app` builds the task ONCE per process from the resolved run config that arrives with every
train message ("fedctl-config", YAML text; a few KB), then for each message: loads the global
tensors, seeds exactly like the in-process executor, runs the one client trainer
(`fedctl.core.local.train_client`: local training, update pruning, the task's after-training hook and
the statistics the strategy asked for), and replies with the trained shared tensors (see
fedctl.flower.codec).

Cost: flwr 1.41's SuperNode (default `--isolation subprocess`) starts a fresh ClientApp process
for every message, so in a deployment the import + task build is paid per client and round
(mamba_tiny shrunk to 400 sentences: ~25 s per round on 2 shared cores, mostly importing torch and
transformers); the in-process cache pays off in simulation and with long-lived ClientApp processes.

Which data a client trains on:
- the server sends `client-index`; the task shards its corpus and trains shard `client-index`
  (simulation, loopback tests, or nodes that all see the same corpus);
- a real node that holds its own data says so in its node config, Flower's convention:
    flower-supernode ... --node-config 'partition-id=0 num-partitions=2 fedctl-set="task.data=/srv/my_corpus"'
  `partition-id` is this node's client index (the server sends it only that client);
  `fedctl-set` holds space-separated KEY=VALUE overrides of the run config applied on this node
  only (as `--set` does), e.g. where `task.data` lives here. A node whose data is its whole
  shard sets `federation.clients=1` there and keeps partition-id as its index on the server.
  Tokenizers must match across nodes: point `task.tokenizer` at the server run's tokenizer.json.

Not supported over Flower: per-client state — `federation.keep_optimizer_state`, `federation.local_keys` and the
strategies that keep state on clients (scaffold, fedbn, fedper); clients keep no state between rounds here and the
ServerApp refuses such a config by name (fedctl.flower.server_app.refuse_client_state).
"""

from __future__ import annotations

import hashlib
import shlex
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from fedctl.core import local
from fedctl.core.engine import prepare_client
from fedctl.core.parallel import resolve_threads
from fedctl.core.task import Task
from fedctl.errors import FedctlError
from fedctl.flower import codec

# (resolved run config as a dict, node-local overrides ["task.data=…", …]) -> a built task
TaskFactory = Callable[[dict[str, Any], list[str]], Task]


def build_task_from_config(config: dict[str, Any], node_sets: list[str]) -> Task:
    """The task a run config describes, with this node's --set overrides (see fedctl.run.rebuild)."""
    from fedctl.run.rebuild import rebuild_task

    return rebuild_task(config, sets=node_sets)


@dataclass
class _Worker:
    """A built task with its working model (kept for the life of the process)."""

    task: Task
    model: nn.Module
    keys: list[str]
    params: dict[str, torch.Tensor]


def _node_sets(node_config: dict[str, Any]) -> list[str]:
    return shlex.split(str(node_config.get("fedctl-set", "")))


def _partition_id(node_config: dict[str, Any]) -> int | None:
    value = node_config.get("partition-id")
    return None if value is None else int(value)


def make_client_app(task_factory: TaskFactory | None = None) -> ClientApp:
    """A ClientApp training tasks built by `task_factory` (default: from the fedctl run config).
    Tests pass a factory to run small in-memory tasks through the real message encoding."""
    import yaml

    factory = task_factory or build_task_from_config
    cache: dict[str, _Worker] = {}  # one entry: the task of the current run

    def worker_for(config_yaml: str, node_sets: list[str]) -> _Worker:
        key = hashlib.sha256((config_yaml + "\0" + "\0".join(node_sets)).encode()).hexdigest()
        if key not in cache:
            cache.clear()
            config = yaml.safe_load(config_yaml) or {}
            threads = int((config.get("run") or {}).get("threads") or 0)
            # as the in-process engine: same thread count, same floating-point results; 0: this node's cores
            torch.set_num_threads(resolve_threads(threads))
            task = factory(config, node_sets)
            model = task.build_model()
            cache[key] = _Worker(task, model, list(task.shared_keys(model)), model.state_dict())
        return cache[key]

    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        pid = _partition_id(context.node_config)
        parts = context.node_config.get("num-partitions")
        content = RecordDict({"node": ConfigRecord({
            "partition-id": -1 if pid is None else pid,
            "num-partitions": -1 if parts is None else int(parts),
        })})
        return Message(content, reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        try:
            job = codec.read_instruction_config(msg.content.config_records["config"])
            worker = worker_for(job["config_yaml"], _node_sets(context.node_config))
            index = job["client_index"]
            pid = _partition_id(context.node_config)
            if pid is not None and pid != index:
                raise FedctlError(f"this node holds partition {pid} but was sent client {index}",
                                  "give every SuperNode a distinct partition-id")
            client_ids = worker.task.client_ids()
            if not 0 <= index < len(client_ids):
                raise FedctlError(f"client index {index} is outside this node's {len(client_ids)} clients",
                                  "use the same federation.clients on server and nodes")
            global_state = codec.record_to_state(msg.content.array_records["arrays"],
                                                 {k: worker.params[k] for k in worker.keys})
        except Exception as exc:  # this node cannot serve the message at all
            return Message(Error(codec.BAD_INSTRUCTION, f"{type(exc).__name__}: {exc}"), reply_to=msg)

        cid = client_ids[index]
        instructions = job["instructions"]
        server_round = job["server_round"]
        with torch.no_grad():
            for k in worker.keys:
                worker.params[k].copy_(global_state[k])
        # the decoded global state is a private copy, untouched by training: it can be the proximal anchor
        cfg = prepare_client(job["seed"], server_round, index, instructions, global_state)
        try:
            result = local.train_client(worker.task, worker.model, cid, cfg, worker.keys)
            content = codec.reply_content({k: worker.params[k] for k in worker.keys},
                                          result.num_examples, result.metrics, result.stats)
        except Exception as exc:  # a failing client is left out by the server, not fatal
            where = traceback.extract_tb(exc.__traceback__)[-1]
            reason = f"raised {type(exc).__name__}: {exc} (at {where.filename}:{where.lineno})"
            return Message(Error(codec.CLIENT_FAILED, reason), reply_to=msg)
        return Message(content, reply_to=msg)

    return app


app = make_client_app()
