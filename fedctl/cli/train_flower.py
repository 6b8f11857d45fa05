"""`fedctl train flower-app`: write a Flower App that runs a fedctl experiment on SuperNodes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedctl.cli.console import out, print_json, saved
from fedctl.cli.options import (
    ClientsOpt,
    ConfigOpt,
    JsonOpt,
    OutDirOpt,
    RoundsOpt,
    SeedOpt,
    SetOpt,
    StrategyOpt,
)

AppDirOpt = Annotated[Path | None, typer.Option("--app", help="Flower App directory to write (default: RUN_DIR/flower-app).")]
TaskOpt = Annotated[str | None, typer.Option("--task", help="Workload when --config does not name one (default mamba).")]
PortOpt = Annotated[int, typer.Option("--superlink-port", help="Port of the SuperLink's HTTP APIs on 127.0.0.1.")]
NodePortOpt = Annotated[int, typer.Option("--supernode-port", help="Runtime API port of SuperNode 0 (node k: +k).")]


EPILOG = (
    "Examples:\n\n  fedctl train flower-app --config mamba_tiny --out runs/mamba-flower\n\n"
    "  fedctl train flower-app --config mamba_tiny --clients 2 --rounds 3 --app flower-app/\n\n"
    "  fedctl train flower-app --config ssm_study_fedfisher --set federation.clients=2")


def flower_app(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    task: TaskOpt = None,
    rounds: RoundsOpt = None,
    clients: ClientsOpt = None,
    strategy: StrategyOpt = None,
    seed: SeedOpt = None,
    out_dir: OutDirOpt = None,
    app_dir: AppDirOpt = None,
    superlink_port: PortOpt = 9092,
    supernode_port: NodePortOpt = 9094,
    as_json: JsonOpt = False,
) -> None:
    """Write a Flower App (ServerApp + ClientApp) for a fedctl config, and print how to run it."""
    from fedctl.flower import require_flwr

    require_flwr()
    from fedctl.core.config import load_yaml
    from fedctl.flower.project import write_flower_app
    from fedctl.run import recipe
    from fedctl.utils.templates import resolve_template

    if task is None:
        task = (load_yaml(resolve_template(config)).get("run") or {}).get("task") if config else None
    exp = recipe.resolve(
        task or "mamba", config,
        flags={"run": {"seed": seed, "out": str(out_dir) if out_dir else None},
               "federation": {"rounds": rounds, "clients": clients, "strategy": strategy}},
        sets=sets,
    )
    target = app_dir if app_dir is not None else recipe.run_dir_of(exp) / "flower-app"
    written = write_flower_app(exp, target, superlink_port=superlink_port, supernode_port=supernode_port)
    if as_json:
        print_json({"app_dir": str(written.app_dir), "config": str(written.config_path),
                    "run_dir": str(written.run_dir), "commands": written.commands})
        return
    out.print("Run each in its own terminal (SuperLink first, `flwr run` last):\n", highlight=False)
    for line in written.commands:
        out.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
    out.print()
    saved(written.app_dir, "Flower App")


NODE_EPILOG = (
    "Examples:\n\n  fedctl train flower-node --superlink 10.0.0.5:9092 --root-certificates certs/ca.crt "
    "--auth-key certs/node0.key --partition-id 0 --num-partitions 4 --set task.data=/srv/corpus\n\n"
    "  fedctl train flower-node --superlink 127.0.0.1:9092 --insecure --port 9095")


def flower_node(
    superlink: Annotated[str, typer.Option("--superlink", help="The SuperLink's Fleet API, HOST:PORT.")],
    partition_id: Annotated[int | None, typer.Option("--partition-id", help="The client index this node trains.")] = None,
    num_partitions: Annotated[int | None, typer.Option("--num-partitions", help="The federation's clients.")] = None,
    sets: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE for this node only, e.g. task.data=/srv/corpus.")] = None,
    root_certificates: Annotated[Path | None, typer.Option("--root-certificates", help="CA certificate of the SuperLink's TLS certificate.")] = None,
    auth_key: Annotated[Path | None, typer.Option("--auth-key", help="This node's private key (SuperNode authentication).")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="No TLS (loopback tests only); prints a warning.")] = False,
    port: Annotated[int, typer.Option("--port", help="This SuperNode's Runtime API port on 127.0.0.1.")] = 9094,
    connect_timeout: Annotated[float, typer.Option("--connect-timeout", help="Give up after this many seconds without the SuperLink.")] = 60.0,
    cold: Annotated[bool, typer.Option("--cold", help="flwr's stock SuperNode: a fresh ClientApp process per message.")] = False,
    logs: Annotated[Path, typer.Option("--logs", help="Directory for the SuperNode's and executor's logs.")] = Path("flower-node-logs"),
) -> None:
    """Run one Flower SuperNode for this host, with a long-running ClientApp (Ctrl-C stops it)."""
    import signal

    from fedctl.cli.console import err, warn
    from fedctl.flower import require_flwr

    require_flwr()
    from fedctl.flower.node import Node, NodeSpec

    spec = NodeSpec(superlink=superlink, partition_id=partition_id, num_partitions=num_partitions,
                    node_sets=list(sets or []), root_certificates=root_certificates, auth_key=auth_key,
                    insecure=insecure, port=port, connect_timeout=connect_timeout, cold=cold)
    if insecure:
        warn("--insecure: weights and data statistics travel unencrypted; use only on a trusted loopback")

    def terminate(signum, frame):  # SIGTERM stops the node's processes like Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    node = Node(spec, logs)
    try:
        node.start()
        err.print(f"SuperNode up (Runtime API 127.0.0.1:{port}, "
                  f"{'stock per-message ClientApps' if cold else 'warm ClientApp executor'}), "
                  f"connecting to {superlink}; logs in {logs}. Ctrl-C stops it.", highlight=False)
        node.wait()
    except KeyboardInterrupt:
        node.stop()
        err.print("SuperNode stopped.", highlight=False)
