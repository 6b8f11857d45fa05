"""The fedctl ServerApp: the engine's round loop, with clients trained on Flower SuperNodes.

Sampling, streaming aggregation, the server optimizer step, global evaluation, checkpoints,
metrics.jsonl, --resume and events stay in fedctl.core.engine; `FlowerExecutor` only decides
where sampled clients train: it sends one "train" message per sampled client to the SuperNode
that holds it and turns the replies back into ClientOutcomes (see fedctl.flower.codec).

Run config keys (`[tool.flwr.app.config]` of the app's pyproject.toml, or `flwr run -c`):
  fedctl-config         path to a fedctl YAML (absolute: the ServerApp runs in the SuperLink's
                        working directory) or a shipped template name; required
  fedctl-out            run directory ("" → runs/<run.name>)
  fedctl-set            space-separated KEY=VALUE overrides, as `--set`
  fedctl-resume         continue the run in fedctl-out from its newest checkpoint
  fedctl-min-nodes      SuperNodes to wait for before round 1 (0 → federation.clients)
  fedctl-node-timeout   seconds to wait for them
  fedctl-round-timeout  seconds a round waits for replies; a client without one is left out
  fedctl-events         text (default): readable log lines; json: one `fedctl-event {...}` line per
                        engine event, which `fedctl train --backend flower` renders as its round table
  fedctl-reply-order    sampled (default): fold replies in sampling order, so a run is bitwise
                        reproducible and equals the in-process engine; arrival: as they come
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from flwr.app import Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedctl.core.config import dump_yaml
from fedctl.core.engine import ClientOutcome, Run
from fedctl.core.events import CheckpointSaved, ClientFailed, RoundFinished, RunFinished, RunStarted
from fedctl.core.events import Message as EventMessage
from fedctl.core.instructions import ClientInstructions
from fedctl.core.strategies import ClientUpdate
from fedctl.errors import FedctlError
from fedctl.flower import codec
from fedctl.utils.io import dumps_json


class FlowerExecutor:
    """An engine executor (see fedctl.core.engine.Executor) that trains clients on SuperNodes.

    Client index i goes to the SuperNode whose node config says `partition-id=i`; nodes without
    a partition-id serve the remaining indices round-robin (in node-id order), sharding the
    corpus by the `client-index` they are sent. Memory: with reply_order="sampled" the server
    pulls one reply at a time, so it holds O(model) beyond the engine's own state.
    """

    def __init__(self, grid: Grid, *, min_nodes: int | None = None, node_timeout: float = 120.0,
                 round_timeout: float = 3600.0, reply_order: str = "sampled", poll_seconds: float = 0.05,
                 log: Callable[[str], None] | None = None) -> None:
        if reply_order not in ("sampled", "arrival"):
            raise FedctlError(f"fedctl-reply-order = '{reply_order}' is unknown", "use sampled or arrival")
        self.grid = grid
        self.min_nodes = min_nodes
        self.node_timeout = node_timeout
        self.round_timeout = round_timeout
        self.reply_order = reply_order
        self.poll_seconds = poll_seconds
        self.log = log or (lambda text: None)
        self.nodes: dict[int, int | None] = {}  # client index -> node id (None: nobody holds it)
        self._node_set: frozenset[int] = frozenset()
        self._config_yaml: str | None = None

    # -- nodes ----------------------------------------------------------------------------------
    def _wait_for_nodes(self, need: int) -> list[int]:
        deadline = time.monotonic() + self.node_timeout
        while True:
            node_ids = sorted(self.grid.get_node_ids())
            if len(node_ids) >= need:
                return node_ids
            if time.monotonic() >= deadline:
                raise FedctlError(
                    f"only {len(node_ids)} of {need} Flower SuperNodes connected within {self.node_timeout:g} s",
                    "start more SuperNodes (flower-supernode --insecure --superlink HOST:PORT ...), or lower "
                    "fedctl-min-nodes / raise fedctl-node-timeout in the run config",
                )
            time.sleep(self.poll_seconds)

    def _exchange(self, messages: list[Message], timeout: float) -> list[Message | None]:
        """Push `messages`, pull until every reply is in or `timeout` s passed; replies in message order."""
        ids = list(self.grid.push_messages(messages))
        pending, replies = {i for i in ids if i}, {}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for reply in self.grid.pull_messages(list(pending)):
                replies[reply.metadata.reply_to_message_id] = reply
                pending.discard(reply.metadata.reply_to_message_id)
            if pending:
                time.sleep(self.poll_seconds)
        return [replies.get(i) if i else None for i in ids]

    def _partition_ids(self, node_ids: list[int]) -> dict[int, int | None]:
        messages = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY, ttl=self.node_timeout)
                    for n in node_ids]
        out: dict[int, int | None] = {}
        for node, reply in zip(node_ids, self._exchange(messages, self.node_timeout)):
            if reply is None or reply.has_error():
                why = "no reply" if reply is None else reply.error.reason
                self.log(f"SuperNode {node} did not answer the partition query ({why}); it gets no clients")
                continue
            pid = int(reply.content.config_records["node"]["partition-id"])
            out[node] = None if pid < 0 else pid
        return out

    def assign(self, num_clients: int) -> dict[int, int | None]:
        """Client index -> SuperNode id; recomputed when the set of connected nodes changes."""
        if self.nodes:  # later rounds: whoever is connected now; a lost node's clients are left out
            node_ids = sorted(self.grid.get_node_ids())
        else:  # round 1 waits for the federation to assemble
            node_ids = self._wait_for_nodes(self.min_nodes or num_clients)
        if frozenset(node_ids) == self._node_set and self.nodes:
            return self.nodes
        partitions = self._partition_ids(node_ids)
        holders: dict[int, int] = {}
        for node, pid in partitions.items():
            if pid is None:
                continue
            if not 0 <= pid < num_clients:
                raise FedctlError(f"SuperNode {node} has partition-id={pid}, but federation.clients = {num_clients}",
                                  f"use partition-id 0..{num_clients - 1} in --node-config")
            if pid in holders:
                raise FedctlError(f"SuperNodes {holders[pid]} and {node} both have partition-id={pid}",
                                  "give every SuperNode its own partition-id")
            holders[pid] = node
        free = [n for n, pid in partitions.items() if pid is None]
        nodes: dict[int, int | None] = {}
        unheld = [i for i in range(num_clients) if i not in holders]
        for index in range(num_clients):
            if index in holders:
                nodes[index] = holders[index]
            else:  # round-robin over the nodes that hold no partition of their own
                nodes[index] = free[unheld.index(index) % len(free)] if free else None
        self.nodes, self._node_set = nodes, frozenset(node_ids)
        spread = ", ".join(f"{i}→{n}" for i, n in nodes.items())
        self.log(f"{len(node_ids)} SuperNodes; client index → node: {spread}")
        return nodes

    # -- one round ------------------------------------------------------------------------------
    def __call__(self, run: Run, server_round: int, sampled: list[int],
                 instructions: ClientInstructions) -> Iterator[ClientOutcome]:
        if run.fed.keep_optimizer_state:
            raise FedctlError("federation.keep_optimizer_state is not supported over Flower",
                              "set federation.keep_optimizer_state=false (clients keep no state between rounds)")
        refuse_client_state(run.stateful())
        if self._config_yaml is None:
            self._config_yaml = dump_yaml(run.config)
        nodes = self.assign(len(run.client_ids))
        arrays = codec.state_to_record(run.global_state)  # encoded once, shared by every message
        messages, slots = [], []  # slots: (client index, message position or None)
        for index in sampled:
            node = nodes.get(index)
            if node is None:
                slots.append((index, None))
                continue
            config = codec.instruction_config(server_round=server_round, client_index=index, seed=run.seed,
                                              instructions=instructions, config_yaml=self._config_yaml)
            messages.append(Message(RecordDict({"arrays": arrays, "config": config}), dst_node_id=node,
                                    message_type=MessageType.TRAIN, group_id=str(server_round),
                                    ttl=self.round_timeout))
            slots.append((index, len(messages) - 1))
        pushed = list(self.grid.push_messages(messages)) if messages else []
        deadline = time.monotonic() + self.round_timeout
        by_id = {}  # message id -> (client index, node)
        order = []
        for index, pos in slots:
            if pos is None or pos >= len(pushed) or not pushed[pos]:
                why = "no SuperNode holds this client" if pos is None else "the SuperLink refused the message"
                yield ClientOutcome(run.client_ids[index], failure=f"{why} (client index {index})")
                continue
            by_id[pushed[pos]] = (index, messages[pos].metadata.dst_node_id)
            order.append(pushed[pos])
        del messages, arrays
        for mid, reply in self._replies(order, deadline):
            index, node = by_id[mid]
            yield self._outcome(run, index, node, reply)

    def _replies(self, order: list[str], deadline: float) -> Iterator[tuple[str, Message | None]]:
        """(message id, reply or None on timeout), in sampling order or as replies arrive."""
        pending = list(order)
        while pending:
            wanted = pending[:1] if self.reply_order == "sampled" else pending
            got = {r.metadata.reply_to_message_id: r for r in self.grid.pull_messages(wanted)}
            for mid in [m for m in wanted if m in got]:
                pending.remove(mid)
                yield mid, got[mid]
            if pending and not got:
                if time.monotonic() >= deadline:
                    for mid in pending:
                        yield mid, None
                    return
                time.sleep(self.poll_seconds)

    def _outcome(self, run: Run, index: int, node: int, reply: Message | None) -> ClientOutcome:
        cid = run.client_ids[index]
        if reply is None:
            return ClientOutcome(cid, failure=f"no reply from SuperNode {node} within {self.round_timeout:g} s")
        if reply.has_error():
            return ClientOutcome(cid, failure=f"on SuperNode {node}: {reply.error.reason}")
        try:
            state, num_examples, metrics, stats = codec.read_reply(reply.content, run.global_state)
        except (KeyError, ValueError, TypeError) as exc:
            return ClientOutcome(cid, failure=f"sent an unreadable reply from SuperNode {node}: {exc}")
        return ClientOutcome(cid, ClientUpdate(cid, state, num_examples, metrics, stats))


# -- the ServerApp --------------------------------------------------------------------------------
def format_event(event: object) -> str | None:
    """A plain log line for an engine event (the ServerApp's output goes to `flwr log`)."""
    if isinstance(event, RunStarted):
        return (f"fedctl: {event.task} with {event.strategy}, rounds {event.start_round}..{event.rounds}, "
                f"{event.num_clients} clients, {event.shared_bytes / 1e6:.2f} MB shared per client")
    if isinstance(event, RoundFinished):
        shown = {k: v for k, v in event.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()]
        return f"[round {event.server_round}] " + " ".join(parts)
    if isinstance(event, ClientFailed):
        return f"[round {event.server_round}] client {event.client_id} left out: {event.reason}"
    if isinstance(event, CheckpointSaved):
        return f"[round {event.server_round}] checkpoint {event.path}"
    if isinstance(event, EventMessage):
        return event.text
    if isinstance(event, RunFinished):
        return f"fedctl: finished after round {event.rounds_done}"
    return None


def _print_event(event: object) -> None:
    line = format_event(event)
    if line:
        print(line, file=sys.stderr, flush=True)


EVENT_PREFIX = "fedctl-event "  # `fedctl-events = "json"`: one such line per engine event in the ServerApp log
_EVENT_TYPES = {cls.__name__: cls for cls in (RunStarted, RoundFinished, ClientFailed, CheckpointSaved, EventMessage,
                                               RunFinished)}


def event_line(event: object) -> str | None:
    """The ServerApp log line carrying `event` to `fedctl train --backend flower`, or None for unshipped types."""
    import dataclasses
    import math

    name = type(event).__name__
    if _EVENT_TYPES.get(name) is not type(event):
        return None

    def plain(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, (str, int, float, bool)) or value is None:
            return value
        return str(value)  # paths

    fields = {f.name: plain(getattr(event, f.name)) for f in dataclasses.fields(event)}
    return EVENT_PREFIX + dumps_json({"type": name, **fields})


def parse_event_line(line: str) -> object | None:
    """The engine event an `event_line` carries (None for any other line, or a line that is not one)."""
    import json
    from pathlib import Path

    start = line.find(EVENT_PREFIX)
    if start < 0:
        return None
    try:
        data = json.loads(line[start + len(EVENT_PREFIX):])
        cls = _EVENT_TYPES[data.pop("type")]
        for key in ("run_dir", "path"):
            if data.get(key) is not None:
                data[key] = Path(data[key])
        return cls(**data)
    except (ValueError, KeyError, TypeError):
        return None


def _print_event_json(event: object) -> None:
    line = event_line(event)
    if line:
        print(line, file=sys.stderr, flush=True)


def experiment_from_run_config(run_config: dict[str, Any]):
    """The fedctl experiment a Flower run config names (see the module docstring for the keys)."""
    from fedctl.core.config import load_yaml
    from fedctl.run import recipe
    from fedctl.utils.templates import resolve_template

    config = str(run_config.get("fedctl-config") or "")
    out = str(run_config.get("fedctl-out") or "")
    if bool(run_config.get("fedctl-resume", False)):
        if not out:
            raise FedctlError("fedctl-resume needs fedctl-out", "set fedctl-out to the run directory to continue")
        from pathlib import Path

        # the app's own config may raise the round count (fedctl train --resume --rounds N writes it so)
        rounds = (load_yaml(resolve_template(config)).get("federation") or {}).get("rounds") if config else None
        return recipe.load_run_config(Path(out), rounds)
    if not config:
        raise FedctlError("the Flower run config has no fedctl-config",
                          "write the app with `fedctl train flower-app --config ...`, or pass -c 'fedctl-config=\"PATH\"'")
    task_name = (load_yaml(resolve_template(config)).get("run") or {}).get("task", "mamba")
    sets = shlex.split(str(run_config.get("fedctl-set") or ""))
    return recipe.resolve(task_name, config, flags={"run": {"out": out or None}}, sets=sets)


def refuse_client_state(reason: str | None) -> None:
    """Per-client state (fedctl.core.client_state) lives in the server process in simulation; over Flower it would
    have to live on each node (Context.state), which is not implemented: refuse such a run by name."""
    if reason is not None:
        raise FedctlError(f"{reason}, which the Flower backend does not support (client state would have to stay "
                          "on each node between rounds)",
                          "train it with `fedctl train …` (in process or --workers N), or choose a strategy that keeps "
                          "no client state (e.g. fedavg, fedprox)")


def run_server(grid: Grid, run_config: dict[str, Any], on_event: Callable[[object], None] | None = None):
    """What the ServerApp does: build task and strategy like `fedctl train`, then run the engine
    with clients on the grid's SuperNodes. Returns the engine's RunResult."""
    from fedctl.run import recipe

    emit = on_event or (_print_event_json if str(run_config.get("fedctl-events", "text")) == "json" else _print_event)
    resume = bool(run_config.get("fedctl-resume", False))
    exp = experiment_from_run_config(run_config)
    if exp.federation.keep_optimizer_state:
        raise FedctlError("federation.keep_optimizer_state is not supported over Flower",
                          "set federation.keep_optimizer_state=false")
    from fedctl.core.strategies import STRATEGIES

    inner = STRATEGIES.get(str(exp.federation.strategy).lower().replace("-", "").replace("_", ""))
    if inner is not None and inner.client_state is not None:
        refuse_client_state(f"strategy {inner.name} keeps {inner.client_state} on every client")
    if exp.federation.local_keys:
        refuse_client_state("federation.local_keys keeps tensors on every client")
    executor = FlowerExecutor(
        grid,
        min_nodes=int(run_config.get("fedctl-min-nodes", 0)) or None,
        node_timeout=float(run_config.get("fedctl-node-timeout", 120.0)),
        round_timeout=float(run_config.get("fedctl-round-timeout", 3600.0)),
        reply_order=str(run_config.get("fedctl-reply-order", "sampled")),
        log=lambda text: emit(EventMessage(text)),
    )
    outcome = recipe.train(exp, on_event=emit, resume=resume, executor=executor,
                           resume_hint="continue it with fedctl-resume=true, or choose another fedctl-out")
    result = outcome.result
    return result


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from fedctl.flower.latency import shorten_pull_backoff

    shorten_pull_backoff()  # this is the ServerApp's own process (flwr-serverapp)
    try:
        run_server(grid, dict(context.run_config))
    except FedctlError as exc:  # one readable line in `flwr log`, then fail the run
        print(f"Error: {exc.message}" + (f"\nHint: {exc.hint}" if exc.hint else ""), file=sys.stderr, flush=True)
        raise
