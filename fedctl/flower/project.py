"""Write a ready Flower App directory for a fedctl experiment (`fedctl train flower-app`).

The directory holds:
  pyproject.toml       [tool.flwr.app.components] → fedctl's ServerApp and ClientApp, and
                       [tool.flwr.app.config] → the fedctl config and run directory
  fedctl.yaml          the resolved experiment (defaults ← --config ← --set), run.out absolute
  .flwr/config.toml    the SuperLink connection `fedctl-local` for `flwr run` (flwr 1.41 reads
                       connections from $FLWR_HOME/config.toml, no longer from pyproject.toml;
                       .flwr/ is never packed into the app bundle)
  README.md            the commands that run it
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from fedctl.core.config import dump_yaml, to_dict
from fedctl.errors import FedctlError
from fedctl.utils.io import write_text

CONNECTION = "fedctl-local"


@dataclass
class FlowerApp:
    app_dir: Path
    config_path: Path
    run_dir: Path
    commands: list[str] = field(default_factory=list)  # superlink, supernodes, flwr run (one shell line each)


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def check_ports(superlink_port: int, supernode_port: int, clients: int) -> None:
    """The SuperLink's port and SuperNode k's port (supernode_port + k) must be valid TCP ports and distinct."""
    if not 1 <= superlink_port <= 65535:
        raise FedctlError(f"--superlink-port {superlink_port} is not a TCP port", "use a port in 1-65535, e.g. 9092")
    last = supernode_port + clients - 1
    if not (1 <= supernode_port and last <= 65535):
        raise FedctlError(
            f"--supernode-port {supernode_port} gives SuperNode ports {supernode_port}-{last} for {clients} clients, "
            "outside 1-65535",
            "use a port in 1-65535 with room for one port per client, e.g. 9094",
        )
    if supernode_port <= superlink_port <= last:
        raise FedctlError(
            f"--superlink-port {superlink_port} collides with the SuperNode ports {supernode_port}-{last}",
            f"use different ports, e.g. --superlink-port 9092 --supernode-port {max(superlink_port + 2, 9094)}",
        )


def write_flower_app(exp, app_dir: str | Path, *, superlink_port: int = 9092, supernode_port: int = 9094,
                     min_nodes: int = 0, round_timeout: float = 3600.0) -> FlowerApp:
    """Write the Flower App for `exp` (a resolved fedctl Experiment) into `app_dir`.

    Ports: the SuperLink serves its Fleet, Control and Runtime APIs on `superlink_port`;
    SuperNode k serves its ClientApp runtime API on `supernode_port + k`. All bind 127.0.0.1.
    """
    from fedctl.run import recipe

    check_ports(superlink_port, supernode_port, exp.federation.clients)
    app_dir = Path(app_dir).resolve()
    run_dir = recipe.run_dir_of(exp).resolve()
    exp.run.out = str(run_dir)
    config_path = app_dir / "fedctl.yaml"
    header = (f"# flwr run {app_dir} {CONNECTION}   (see README.md; written by `fedctl train flower-app`)\n"
              "# The resolved fedctl experiment this Flower App runs.\n")
    write_text(config_path, header + dump_yaml(to_dict(exp)))

    name = "fedctl-" + (re.sub(r"[^a-z0-9]+", "-", exp.run.name.lower()).strip("-") or "run")
    write_text(app_dir / "pyproject.toml", f"""\
# A Flower App that runs one fedctl experiment: `flwr run {app_dir} {CONNECTION}`.
# fedctl and flwr must already be installed wherever the SuperLink and SuperNodes run
# (pip install 'fedctl[flower]'); the app itself lists no dependencies to install.
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "1.0.0"
description = "fedctl {exp.run.task} with {exp.federation.strategy} on Flower"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "fedctl"

[tool.flwr.app.components]
serverapp = "fedctl.flower.server_app:app"
clientapp = "fedctl.flower.client_app:app"

[tool.flwr.app.config]
fedctl-config = {_toml_str(str(config_path))}   # absolute: the ServerApp runs in the SuperLink's directory
fedctl-out = {_toml_str(str(run_dir))}          # config.yaml, metrics.jsonl, checkpoints/, final/
fedctl-set = ""                  # extra KEY=VALUE overrides, space-separated (as --set)
fedctl-resume = false            # true: continue fedctl-out from its newest checkpoint
fedctl-min-nodes = {int(min_nodes)}              # SuperNodes to wait for; 0 = federation.clients ({exp.federation.clients})
fedctl-node-timeout = 120.0      # seconds to wait for them
fedctl-round-timeout = {float(round_timeout)}   # seconds a round waits; a silent client is left out
fedctl-reply-order = "sampled"   # sampled: bitwise reproducible; arrival: fold replies as they come
fedctl-events = "text"           # json: machine-readable event lines (fedctl train --backend flower)
""")
    write_text(app_dir / ".flwr" / "config.toml", f"""\
# The SuperLink connection `flwr run` uses: FLWR_HOME={app_dir / '.flwr'} flwr run {app_dir} {CONNECTION}
# (or copy this section into ~/.flwr/config.toml).
[superlink]
default = "{CONNECTION}"

[superlink.{CONNECTION}]
address = "127.0.0.1:{superlink_port}"
insecure = true
""")
    clients = exp.federation.clients
    commands = [f"flower-superlink --insecure --port {superlink_port} --disable-runtime-dependency-installation"]
    for k in range(clients):
        commands.append(
            f"flower-supernode --insecure --superlink 127.0.0.1:{superlink_port} --port {supernode_port + k} "
            f"--node-config 'partition-id={k} num-partitions={clients}'"
        )
    commands.append(f"FLWR_HOME={app_dir / '.flwr'} flwr run {app_dir} {CONNECTION} --stream")
    readme = (
        f"# fedctl on Flower: {exp.run.task} with {exp.federation.strategy}\n\n"
        "Each command in its own terminal (the SuperLink first, `flwr run` last):\n\n```bash\n"
        + "\n".join(commands) + "\n```\n\n"
        f"The run directory {run_dir} (metrics.jsonl, checkpoints/, final/) is written where the SuperLink runs.\n"
        "On real machines, replace 127.0.0.1 with the SuperLink's address, drop `--insecure` in favour of TLS\n"
        "certificates, and point each node at its own data with\n"
        "`--node-config 'partition-id=K num-partitions=N fedctl-set=\"task.data=/local/path\"'`.\n"
    )
    write_text(app_dir / "README.md", readme)
    return FlowerApp(app_dir, config_path, run_dir, commands)
