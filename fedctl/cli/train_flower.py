"""`fedctl train flower-app` (a Flower App that runs a fedctl experiment on SuperNodes) and
`fedctl train flower-certs` (the certificates and node keys that secure it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedctl.cli.console import out, print_json, saved, warn
from fedctl.cli.options import (
    ClientsOpt,
    ConfigOpt,
    JsonOpt,
    OutDirOpt,
    RoundsOpt,
    SeedOpt,
    SetOpt,
    StrategyOpt,
    WholeNumber,
)

AppDirOpt = Annotated[Path | None, typer.Option("--app", help="Flower App directory to write (default: RUN_DIR/flower-app).")]
TaskOpt = Annotated[str | None, typer.Option("--task", help="Workload when --config does not name one (default mamba).")]
PortOpt = Annotated[int, typer.Option("--superlink-port", help="Port of the SuperLink's HTTP APIs on 127.0.0.1.")]
NodePortOpt = Annotated[int, typer.Option("--supernode-port", help="Runtime API port of SuperNode 0 (node k: +k).")]
CertsOpt = Annotated[Path | None, typer.Option(
    "--certs", help="Certificates and node keys from `fedctl train flower-certs` (default: made in APP/.flwr/certs).")]
InsecureOpt = Annotated[bool, typer.Option(
    "--insecure", help="Plain HTTP and no SuperNode authentication: anyone reaching the port can join. Loopback only.")]


EPILOG = (
    "Examples:\n\n  fedctl train flower-app --config mamba_tiny --out runs/mamba-flower\n\n"
    "  fedctl train flower-app --config mamba_tiny --clients 2 --rounds 3 --app flower-app/\n\n"
    "  fedctl train flower-app --config ssm_study_fedfisher --set federation.clients=2\n\n"
    "  fedctl train flower-app --config mamba_tiny --certs certs/   (from `fedctl train flower-certs`)")


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
    certs: CertsOpt = None,
    insecure: InsecureOpt = False,
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
    written = write_flower_app(exp, target, superlink_port=superlink_port, supernode_port=supernode_port,
                               certs=certs, insecure=insecure)
    if insecure:
        warn("--insecure: plain HTTP and no SuperNode authentication; anyone who reaches the SuperLink's port "
             "can join the federation or submit runs. Use it on loopback only.")
    if as_json:
        print_json({"app_dir": str(written.app_dir), "config": str(written.config_path),
                    "run_dir": str(written.run_dir), "certs": written.certs, "insecure": insecure,
                    "commands": written.commands})
        return
    out.print("Run each in its own terminal (SuperLink first, then node registrations and SuperNodes, "
              "`flwr run` last):\n", highlight=False)
    for line in written.commands:
        out.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
    out.print()
    saved(written.app_dir, "Flower App")


NODE_EPILOG = (
    "Examples:\n\n  fedctl train flower-node --superlink 10.0.0.5:9092 --root-certificates certs/ca.crt "
    "--auth-key certs/supernode-0/auth.key --partition-id 0 --num-partitions 4 --set task.data=/srv/corpus\n\n"
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


NodesOpt = Annotated[int, typer.Option("--nodes", click_type=WholeNumber(), help="SuperNodes: one key pair each.")]
CertsOutOpt = Annotated[Path, typer.Option("--out", help="Folder to write (new files only; never overwrites).")]
HostOpt = Annotated[list[str] | None, typer.Option(
    "--host", help="Address SuperNodes dial: IP or DNS name, repeatable (default 127.0.0.1, ::1, localhost).")]

CERTS_EPILOG = (
    "Examples:\n\n  fedctl train flower-certs --out certs --nodes 2\n\n"
    "  fedctl train flower-certs --out certs --nodes 4 --host 10.0.0.5 --host superlink.lab")


def flower_certs(
    out_dir: CertsOutOpt,
    nodes: NodesOpt,
    hosts: HostOpt = None,
    superlink_port: PortOpt = 9092,
    as_json: JsonOpt = False,
) -> None:
    """Make a CA, the SuperLink's TLS certificate and one authentication key pair per SuperNode."""
    from fedctl.flower.security import (
        DEFAULT_HOSTS,
        connection_toml,
        deployment_commands,
        host_port,
        make_certs,
    )

    certs = make_certs(out_dir, nodes, hosts or DEFAULT_HOSTS)
    node_configs = [f"partition-id={k} num-partitions={nodes}" for k in range(nodes)]
    commands = deployment_commands(certs, superlink=certs.hosts[0], port=superlink_port, node_configs=node_configs,
                                   connection="fedctl")
    if as_json:
        print_json({"certs": certs.root, "hosts": certs.hosts, "nodes": nodes, "manifest": certs.manifest,
                    "commands": commands})
        return
    text = [f"Certificates for {', '.join(certs.hosts)} and keys for {nodes} SuperNode{'s' if nodes != 1 else ''} "
            f"({certs.manifest} lists who holds which file; *.key stay on their host):", "",
            "SuperLink host:", f"  {commands[0]}", "",
            "The connection `flwr` uses (add it to $FLWR_HOME/config.toml, by default ~/.flwr/config.toml):"]
    address = host_port(certs.hosts[0], superlink_port)
    text += [f"  {line}" for line in connection_toml("fedctl", address, certs.ca_cert).splitlines()]
    text += ["", "Register each node's public key (wherever `flwr` runs):"]
    text += [f"  {line}" for line in commands[1:1 + nodes]]
    text += ["", "SuperNode K on its own host (holding ca.crt and its supernode-K/auth.key only):"]
    text += [f"  {line}" for line in commands[1 + nodes:]]
    for line in text + [""]:
        out.print(line, highlight=False, markup=False, soft_wrap=True)
    saved(certs.root, "Flower certificates")
