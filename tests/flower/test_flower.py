"""fedctl on Flower: the ServerApp executor and the ClientApp give the in-process engine's numbers.

(a) In process: a Grid that serialises every message to protobuf bytes and hands it to the real
    ClientApp object; final weights must equal `run_federated` in-process bit for bit (float32 and
    seeds are preserved, and replies are folded in sampling order).
A real loopback deployment (flower-superlink + 2 flower-supernode + flwr run, TLS + node authentication) is
checked in tests/flower/test_security.py and by `python scripts/flower_deploy_check.py`.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from flwr.app import Context, Message, RecordDict  # noqa: E402
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto  # noqa: E402
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from fedctl.core.config import FederationConfig  # noqa: E402
from fedctl.core.engine import run_federated  # noqa: E402
from fedctl.core.events import ClientFailed  # noqa: E402
from fedctl.core.instructions import ClientInstructions  # noqa: E402
from fedctl.core.strategies import build_strategy  # noqa: E402
from fedctl.errors import FedctlError  # noqa: E402
from fedctl.flower import codec  # noqa: E402
from fedctl.flower.client_app import make_client_app  # noqa: E402
from fedctl.flower.server_app import FlowerExecutor  # noqa: E402
from tests.core.linear_task import LinearTask, PersonalLinearTask  # noqa: E402
from tests.core.toy_classifier import ToyClassifier  # noqa: E402


@pytest.fixture(autouse=True)
def serverapp_identity(monkeypatch):
    """What a ServerApp process has set before main() runs: Message() reads it for new messages."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)


def _wire(content: RecordDict) -> RecordDict:
    """Through protobuf bytes and back, as the SuperLink carries it."""
    proto = ProtoRecordDict()
    proto.ParseFromString(recorddict_to_proto(content).SerializeToString())
    return recorddict_from_proto(proto)


class InProcessGrid(Grid):
    """SuperNodes in this process: each pulled message is run through `client_app` on its node."""

    def __init__(self, client_app, node_configs):
        self.client_app = client_app
        self.contexts = {1001 + i: Context(run_id=1, node_id=1001 + i, node_config=cfg, state=RecordDict(),
                                           run_config={}) for i, cfg in enumerate(node_configs)}
        self.inbox: dict[str, Message] = {}
        self.sent: list[tuple[int, str]] = []  # (node, message type)
        self.wire_bytes = 0
        self.instructions: list[str] = []  # the ClientInstructions JSON of every train message

    def set_run(self, run):
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            received = Message(_wire(msg.content), dst_node_id=msg.metadata.dst_node_id,
                               message_type=msg.metadata.message_type, group_id=msg.metadata.group_id)
            mid = f"m{len(self.sent)}"
            received.metadata.__dict__["_message_id"] = mid
            self.inbox[mid] = received
            self.sent.append((msg.metadata.dst_node_id, msg.metadata.message_type))
            if "config" in msg.content.config_records and "instructions" in msg.content.config_records["config"]:
                self.instructions.append(msg.content.config_records["config"]["instructions"])
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids):
        replies = []
        for mid in message_ids:
            msg = self.inbox.pop(mid, None)
            if msg is None:
                continue
            reply = self.client_app(msg, self.contexts[msg.metadata.dst_node_id])
            if reply.has_content():
                self.wire_bytes += len(recorddict_to_proto(reply.content).SerializeToString())
                reply = Message(_wire(reply.content), reply_to=msg)
            replies.append(reply)
        return replies

    def send_and_receive(self, messages, *, timeout=None):
        return self.pull_messages(self.push_messages(messages))


def fed(**kw):
    base = dict(rounds=3, clients=3, fraction=1.0, min_fit_clients=1, checkpoint_every=100)
    base.update(kw)
    return FederationConfig(**base)


def flower_run(make_task, strategy, federation, node_configs, **executor_kw):
    grid = InProcessGrid(make_client_app(lambda config, sets: make_task()), node_configs)
    events = []
    result = run_federated(make_task(), strategy, federation, seed=7, on_event=events.append,
                           executor=FlowerExecutor(grid, poll_seconds=0.0, **executor_kw))
    return result, grid, events


def same_weights(a, b):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name,args", [("fedavg", {}), ("fedadam", {"eta": 0.05}), ("fedprox", {"proximal_mu": 0.1})])
def test_flower_equals_in_process_bit_for_bit(name, args):
    nodes = [{"partition-id": k, "num-partitions": 3} for k in range(3)]
    local = run_federated(ToyClassifier(), build_strategy(name, args), fed(), seed=7)
    remote, grid, _ = flower_run(ToyClassifier, build_strategy(name, args), fed(), nodes)
    assert same_weights(local, remote)
    fits = lambda r: [(h["clients"], h["num_examples"], h["train_loss"]) for h in r.history if h["type"] == "fit"]  # noqa: E731
    assert fits(local) == fits(remote) and [c for c, _, _ in fits(remote)] == [3, 3, 3]
    vals = lambda r: [h["val_loss"] for h in r.history if h["type"] == "eval"]  # noqa: E731
    assert vals(local) == vals(remote)
    # one partition query per node, then one train message per client and round, to its own node
    assert grid.sent[:3] == [(1001, "query"), (1002, "query"), (1003, "query")]
    assert grid.sent[3:] == [(1001 + k, "train") for _ in range(3) for k in range(3)]
    # a reply carries the 212 float32 parameters (4 bytes each) plus small headers
    assert 9 * 212 * 4 < grid.wire_bytes < 9 * (212 * 4 + 2000)


def test_federation_prune_is_applied_by_flower_clients():
    nodes = [{"partition-id": k, "num-partitions": 3} for k in range(3)]
    local = run_federated(ToyClassifier(), build_strategy("fedavg"), fed(rounds=1, prune=0.5), seed=7)
    remote, _, _ = flower_run(ToyClassifier, build_strategy("fedavg"), fed(rounds=1, prune=0.5), nodes)
    assert same_weights(local, remote)  # the prune fraction travels in the instructions; the ClientApp prunes
    assert not same_weights(local, run_federated(ToyClassifier(), build_strategy("fedavg"), fed(rounds=1), seed=7))


@pytest.mark.parametrize("mode", ["server", "client"])
def test_differential_privacy_is_the_same_on_flower(mode):
    """federation.dp on the Flower backend: the ServerApp builds the strategy with recipe.train, so the wrapper
    clips and noises on the server (server mode); in client mode the clip and noise travel in the instructions and
    the ClientApp applies them before its reply leaves the node. Both give the in-process weights bit for bit."""
    from fedctl.core.strategies.dp import wrap_dp

    nodes = [{"partition-id": k} for k in range(4)]
    federation = fed(clients=4, fraction=0.5, min_fit_clients=2)

    def strategy():
        return wrap_dp(build_strategy("fedadam", {"eta": 0.05}), {"mode": mode, "noise_multiplier": 0.8,
                       "clipping_norm": 0.05}, num_clients=4, fraction=0.5, min_fit_clients=2, seed=7)

    local = run_federated(LinearTask(), strategy(), federation, seed=7)
    remote, grid, _ = flower_run(LinearTask, strategy(), federation, nodes)
    assert same_weights(local, remote)
    assert not same_weights(local, run_federated(LinearTask(), build_strategy("fedadam", {"eta": 0.05}), federation,
                                                 seed=7))
    eps = lambda r: [h["dp_epsilon"] for h in r.history if h["type"] == "fit"]  # noqa: E731
    assert eps(local) == eps(remote) and all(math.isfinite(e) for e in eps(remote))
    if mode == "client":  # what left the nodes was already clipped and noised
        sent = [json.loads(m) for m in grid.instructions]
        assert sent and all(i["dp_clipping_norm"] == 0.05 and i["dp_noise_std"] == pytest.approx(0.04) for i in sent)


@pytest.mark.parametrize("reply_order", ["sampled", "arrival"])
def test_sampling_and_shared_nodes_match_in_process(reply_order):
    # 4 clients, half sampled per round, on 2 nodes without partition-id: round-robin over nodes
    federation = fed(rounds=4, clients=4, fraction=0.5, min_fit_clients=2)
    local = run_federated(LinearTask(), build_strategy("fedavgm", {"server_momentum": 0.5}), federation, seed=7)
    remote, grid, _ = flower_run(LinearTask, build_strategy("fedavgm", {"server_momentum": 0.5}), federation,
                                 [{}, {}], min_nodes=2, reply_order=reply_order)
    assert same_weights(local, remote)
    trained = [node for node, kind in grid.sent if kind == "train"]
    assert len(trained) == 8 and set(trained) == {1001, 1002}


def test_raising_client_is_left_out_with_its_reason():
    nodes = [{"partition-id": k} for k in range(4)]
    federation = fed(clients=4, min_fit_clients=2)
    local = run_federated(LinearTask(fail={"client_1"}), build_strategy("fedavg"), federation, seed=7)
    remote, _, events = flower_run(lambda: LinearTask(fail={"client_1"}), build_strategy("fedavg"), federation, nodes)
    failed = [e for e in events if isinstance(e, ClientFailed)]
    assert [(e.server_round, e.client_id) for e in failed] == [(1, "client_1"), (2, "client_1"), (3, "client_1")]
    assert "raised RuntimeError: simulated client crash" in failed[0].reason and "on SuperNode 1002" in failed[0].reason
    assert all(h["clients"] == 3 and h["failed"] == ["client_1"] for h in remote.history if h["type"] == "fit")
    assert same_weights(local, remote)


def test_fedfisher_fisher_travels_and_matches():
    nodes = [{"partition-id": k} for k in range(3)]
    strategy = lambda: build_strategy("fedfisher", {"max_examples": 16})  # noqa: E731
    local = run_federated(ToyClassifier(), strategy(), fed(rounds=2), seed=7)
    remote, _, _ = flower_run(ToyClassifier, strategy(), fed(rounds=2), nodes)
    assert same_weights(local, remote)
    # and the reply really holds the Fisher: decode one by hand
    task = ToyClassifier()
    model = task.build_model()
    app = make_client_app(lambda config, sets: ToyClassifier())
    global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    msg = Message(RecordDict({"arrays": codec.state_to_record(global_state), "config": codec.instruction_config(
        server_round=1, client_index=2, seed=7, instructions=strategy().configure_fit(1), config_yaml="{}")}),
        dst_node_id=1, message_type="train")
    reply = app(msg, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={}))
    state, num_examples, metrics, stats = codec.read_reply(_wire(reply.content), global_state)
    assert num_examples == 96 + 32 and metrics["steps"] == 6.0
    assert set(stats["fisher"]) == set(global_state)
    assert all(v.shape == global_state[k].shape and (v >= 0).all() for k, v in stats["fisher"].items())
    assert sum(float(v.sum()) for v in stats["fisher"].values()) > 0


def test_node_refuses_a_client_it_does_not_hold_and_reads_node_overrides():
    from flwr.common.config import parse_config_args

    from fedctl.flower.client_app import _node_sets

    app = make_client_app(lambda config, sets: LinearTask())
    model = LinearTask().build_model()
    state = dict(model.state_dict())
    msg = Message(RecordDict({"arrays": codec.state_to_record(state), "config": codec.instruction_config(
        server_round=1, client_index=2, seed=0, instructions=ClientInstructions(), config_yaml="{}")}), dst_node_id=1, message_type="train")
    node_config = parse_config_args(['partition-id=1 num-partitions=4 fedctl-set="task.data=/srv/text task.lr=0.1"'])
    reply = app(msg, Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={}))
    assert reply.has_error() and reply.error.code == codec.BAD_INSTRUCTION
    assert "holds partition 1 but was sent client 2" in reply.error.reason
    assert _node_sets(node_config) == ["task.data=/srv/text", "task.lr=0.1"]


def test_codec_keeps_bfloat16_bits_and_dtype():
    # a 3-byte tensor first: every later tensor sits at an odd offset of the packed buffer
    state = {"b": torch.tensor([1, 2, 3], dtype=torch.uint8), "w": torch.randn(3, 4).to(torch.bfloat16),
             "n": torch.arange(5), "h": torch.randn(2).half(), "e": torch.empty(0, 4), "s": torch.tensor(2.5)}
    record = codec.state_to_record(state)
    assert len(record) == 2  # one buffer + its layout, whatever the number of tensors
    back = codec.record_to_state(_wire(RecordDict({"a": record})).array_records["a"], state)
    assert all(back[k].dtype == state[k].dtype and back[k].shape == state[k].shape and torch.equal(back[k], state[k])
               for k in state)
    with pytest.raises(ValueError, match="tensor 'w' is torch.bfloat16, the model's torch.float32"):
        codec.record_to_state(record, {**state, "w": torch.zeros(3, 4)})
    with pytest.raises(ValueError, match="missing \\['x'\\]"):
        codec.record_to_state(record, {**state, "x": torch.zeros(1)})


def test_missing_nodes_fail_with_a_clear_error():
    grid = InProcessGrid(make_client_app(lambda c, s: LinearTask()), [{}])
    with pytest.raises(FedctlError, match="only 1 of 4 Flower SuperNodes connected within 0.2 s"):
        run_federated(LinearTask(), build_strategy("fedavg"), fed(clients=4), seed=0,
                      executor=FlowerExecutor(grid, node_timeout=0.2, poll_seconds=0.05))


def test_duplicate_partition_and_keep_optimizer_state_are_refused():
    grid = InProcessGrid(make_client_app(lambda c, s: LinearTask()), [{"partition-id": 0}, {"partition-id": 0}])
    with pytest.raises(FedctlError, match="both have partition-id=0"):
        run_federated(LinearTask(num_clients=2), build_strategy("fedavg"), fed(clients=2), seed=0,
                      executor=FlowerExecutor(grid, poll_seconds=0.0))
    grid = InProcessGrid(make_client_app(lambda c, s: LinearTask()), [{}])
    with pytest.raises(FedctlError, match="keep_optimizer_state is not supported over Flower"):
        run_federated(LinearTask(), build_strategy("fedavg"), fed(keep_optimizer_state=True), seed=0,
                      executor=FlowerExecutor(grid, poll_seconds=0.0))


@pytest.mark.parametrize("name,fed_args,message", [
    ("scaffold", {}, "strategy scaffold keeps a control variate c_i per client on every client"),
    ("fedper", {"local_keys": ["bias"]}, "strategy fedper keeps its personal layers"),
    ("fedavg", {"local_keys": ["bias"]}, "federation.local_keys keeps tensors on every client"),
])
def test_strategies_that_keep_client_state_are_refused_by_name(name, fed_args, message):
    grid = InProcessGrid(make_client_app(lambda c, s: LinearTask()), [{}])
    with pytest.raises(FedctlError, match=message) as exc:
        run_federated(LinearTask(), build_strategy(name), fed(**fed_args), seed=0,
                      executor=FlowerExecutor(grid, poll_seconds=0.0))
    assert "which the Flower backend does not support" in exc.value.message and "fedavg" in exc.value.hint


def test_cli_writes_a_runnable_flower_app(tmp_path):
    import tomllib

    from fedctl.cli.app import app

    args = ["train", "flower-app", "--config", "mamba_tiny", "--clients", "2", "--rounds", "2",
            "--out", str(tmp_path / "run"), "--app", str(tmp_path / "fa"), "--superlink-port", "19192", "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    project = tomllib.loads((tmp_path / "fa" / "pyproject.toml").read_text())
    assert project["tool"]["flwr"]["app"]["components"] == {
        "serverapp": "fedctl.flower.server_app:app", "clientapp": "fedctl.flower.client_app:app"}
    cfg = project["tool"]["flwr"]["app"]["config"]
    assert cfg["fedctl-config"] == str(tmp_path / "fa" / "fedctl.yaml") and cfg["fedctl-out"] == str(tmp_path / "run")
    # secure by default: TLS against a fresh CA in .flwr/certs (never packed into the app bundle), node keys registered
    certs = tmp_path / "fa" / ".flwr" / "certs"
    conn = tomllib.loads((tmp_path / "fa" / ".flwr" / "config.toml").read_text())["superlink"]
    assert conn["default"] == "fedctl-local"
    assert conn["fedctl-local"] == {"address": "127.0.0.1:19192", "root-certificates": str(certs / "ca.crt")}
    assert info["certs"] == str(certs) and info["insecure"] is False
    assert info["commands"][0] == (
        f"flower-superlink --ssl-ca-certfile {certs}/ca.crt --ssl-certfile {certs}/superlink/server.crt "
        f"--ssl-keyfile {certs}/superlink/server.key --enable-supernode-auth --port 19192 "
        "--disable-runtime-dependency-installation")
    assert info["commands"][1:3] == [f"FLWR_HOME={tmp_path}/fa/.flwr flwr supernode register "
                                     f"{certs}/supernode-{k}/auth.pub fedctl-local" for k in range(2)]
    assert info["commands"][4] == (
        f"flower-supernode --root-certificates {certs}/ca.crt --auth-supernode-private-key "
        f"{certs}/supernode-1/auth.key --superlink 127.0.0.1:19192 --port 9095 "
        "--node-config 'partition-id=1 num-partitions=2'")
    assert len(info["commands"]) == 6 and " flwr run " in info["commands"][5]
    assert "--insecure" not in (tmp_path / "fa" / "README.md").read_text()
    from fedctl.core.config import load_yaml

    resolved = load_yaml(tmp_path / "fa" / "fedctl.yaml")
    assert resolved["federation"]["clients"] == 2 and resolved["run"]["out"] == str(tmp_path / "run")
    # written again: the same certificates are reused, not replaced
    ca = (certs / "ca.crt").read_bytes()
    assert CliRunner().invoke(app, args).exit_code == 0 and (certs / "ca.crt").read_bytes() == ca


def test_cli_insecure_only_when_asked_and_with_a_warning(tmp_path):
    import tomllib

    from fedctl.cli.app import app

    res = CliRunner().invoke(app, ["train", "flower-app", "--config", "mamba_tiny", "--clients", "2", "--out",
                                   str(tmp_path / "run"), "--app", str(tmp_path / "fa"), "--superlink-port", "19192",
                                   "--insecure", "--json"])
    assert res.exit_code == 0, res.output
    assert "Warning: --insecure: plain HTTP and no SuperNode authentication" in res.stderr
    info = json.loads(res.stdout)
    assert info["insecure"] is True and info["certs"] is None and not (tmp_path / "fa" / ".flwr" / "certs").exists()
    conn = tomllib.loads((tmp_path / "fa" / ".flwr" / "config.toml").read_text())["superlink"]
    assert conn["fedctl-local"] == {"address": "127.0.0.1:19192", "insecure": True}
    assert info["commands"][0] == "flower-superlink --insecure --port 19192 --disable-runtime-dependency-installation"
    assert info["commands"][2].endswith("--port 9095 --node-config 'partition-id=1 num-partitions=2'")
    assert "WARNING: written with --insecure" in (tmp_path / "fa" / "README.md").read_text()
    res = CliRunner().invoke(app, ["train", "flower-app", "--config", "mamba_tiny", "--app", str(tmp_path / "fb"),
                                   "--out", str(tmp_path / "run2"), "--insecure", "--certs", str(tmp_path / "c")])
    assert res.exit_code == 1 and "Error: --certs and --insecure contradict each other" in res.output


def test_cli_without_flwr_says_how_to_install(monkeypatch):
    import importlib.util

    from fedctl.cli.app import app

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flwr" else real(name, *a))
    res = CliRunner().invoke(app, ["train", "flower-app", "--config", "mamba_tiny"])
    assert res.exit_code == 1 and "Error: Flower (flwr) is not installed" in res.output
    # the exact hint (fedctl.cli.app renders hints as Rich markup, which drops "[flower]" on screen)
    from fedctl.flower import require_flwr

    with pytest.raises(FedctlError) as info:
        require_flwr()
    assert info.value.hint == "pip install 'fedctl[flower]'"


@pytest.mark.parametrize("name,args", [("bulyan", {"num_malicious_clients": 0}), ("qfedavg", {"q": 1.0})])
def test_robust_strategies_and_sampled_evaluation_are_the_same_on_flower(name, args):
    """Bulyan, q-FedAvg, the sampled client evaluation (server side, with the task's data) and the personalised
    evaluation (on the node: the instruction travels, the metrics come back) give the in-process records."""
    nodes = [{"partition-id": k} for k in range(4)]
    federation = fed(clients=4, fraction=0.75, eval_clients=True, fraction_evaluate=0.5)
    local = run_federated(PersonalLinearTask(), build_strategy(name, args), federation, seed=7)
    remote, grid, _ = flower_run(PersonalLinearTask, build_strategy(name, args), federation, nodes)
    assert same_weights(local, remote)
    evals = lambda r: [h for h in r.history if h["type"] == "eval"]  # noqa: E731
    assert evals(local) == evals(remote)
    scopes = [h["scope"] for h in evals(remote) if h["round"] == 3]
    assert scopes.count("client") == 2 and scopes.count("clients") == 1  # fraction_evaluate 0.5 of 4
    assert scopes.count("personal") == 3 and scopes.count("personals") == 1  # the 3 trained clients
    assert all(json.loads(m)["evaluate_personal"] for m in grid.instructions)
