"""Write a ready Flower App directory for a fedctl experiment (`fedctl train flower-app`).

The directory holds:
  pyproject.toml       [tool.flwr.app.components] → fedctl's ServerApp and ClientApp, and
                       [tool.flwr.app.config] → the fedctl config and run directory
  fedctl.yaml          the resolved experiment (defaults ← --config ← --set), run.out absolute
  .flwr/config.toml    the SuperLink connection `fedctl-local` for `flwr run` (flwr 1.41 reads
                       connections from $FLWR_HOME/config.toml, no longer from pyproject.toml;
                       .flwr/ is never packed into the app bundle); TLS against the certs' CA
  .flwr/certs/         certificates and node keys when no --certs folder is given
  README.md            the commands that run it
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from fedctl.core.config import dump_yaml, to_dict
from fedctl.errors import FedctlError
from fedctl.flower.security import (
    MANIFEST,
    FlowerCerts,
    connection_toml,
    deployment_commands,
    load_certs,
    make_certs,
)
from fedctl.utils.io import write_text

CONNECTION = "fedctl-local"


@dataclass
class FlowerApp:
    app_dir: Path
    config_path: Path
    run_dir: Path
    commands: list[str] = field(default_factory=list)  # superlink, [register], supernodes, flwr run (one line each)
    certs: Path | None = None  # certificates and node keys; None: written with --insecure


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
                     min_nodes: int = 0, round_timeout: float = 3600.0, certs: str | Path | None = None,
                     insecure: bool = False) -> FlowerApp:
    """Write the Flower App for `exp` (a resolved fedctl Experiment) into `app_dir`.

    Ports: the SuperLink serves its Fleet, Control and Runtime APIs on `superlink_port`;
    SuperNode k serves its ClientApp runtime API on `supernode_port + k`. All bind 127.0.0.1.
    Security: TLS + SuperNode authentication with the certificates and node keys in `certs` (a folder
    from `fedctl train flower-certs`); without `certs`, a fresh set in APP/.flwr/certs (kept and reused
    there; .flwr/ is never packed into the app bundle). `insecure=True`: plain HTTP, no node
    authentication (loopback experiments only).
    """
    from fedctl.run import recipe

    if insecure and certs is not None:
        raise FedctlError("--certs and --insecure contradict each other",
                          "drop --insecure to use the certificates (recommended), or drop --certs")
    check_ports(superlink_port, supernode_port, exp.federation.clients)
    app_dir = Path(app_dir).resolve()
    clients = exp.federation.clients
    pki = None if insecure else _certs_for(app_dir, certs, clients)
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
    flwr_home = app_dir / ".flwr"
    write_text(flwr_home / "config.toml", f"""\
# The SuperLink connection `flwr run` uses: FLWR_HOME={flwr_home} flwr run {app_dir} {CONNECTION}
# (or copy this section into ~/.flwr/config.toml).{'' if pki else INSECURE_NOTE}
[superlink]
default = "{CONNECTION}"

""" + connection_toml(CONNECTION, f"127.0.0.1:{superlink_port}", pki.ca_cert if pki else None))
    node_configs = [f"partition-id={k} num-partitions={clients}" for k in range(clients)]
    if pki is None:
        commands = [f"flower-superlink --insecure --port {superlink_port} --disable-runtime-dependency-installation"]
        commands += [f"flower-supernode --insecure --superlink 127.0.0.1:{superlink_port} --port {supernode_port + k} "
                     f"--node-config '{node_config}'" for k, node_config in enumerate(node_configs)]
    else:
        commands = deployment_commands(pki, superlink="127.0.0.1", port=superlink_port, node_configs=node_configs,
                                       connection=CONNECTION, flwr_home=flwr_home, supernode_port=supernode_port)
    commands.append(f"FLWR_HOME={shlex.quote(str(flwr_home))} flwr run {shlex.quote(str(app_dir))} {CONNECTION} --stream")
    order = ("the SuperLink first, then the `flwr supernode register` lines, the SuperNodes, and `flwr run` last"
             if pki else "the SuperLink first, `flwr run` last")
    security = (f"TLS with the CA {pki.ca_cert}; only SuperNodes whose key is registered are served "
                f"(certificates and keys: {pki.root}, see its certs.json).\n" if pki else
                "WARNING: written with --insecure: plain HTTP and no SuperNode authentication. Anyone who can\n"
                "reach the SuperLink's port can join the federation or submit runs. Loopback experiments only.\n")
    readme = (
        f"# fedctl on Flower: {exp.run.task} with {exp.federation.strategy}\n\n"
        f"Each command in its own terminal ({order}):\n\n```bash\n"
        + "\n".join(commands) + "\n```\n\n" + security + "\n"
        f"The run directory {run_dir} (metrics.jsonl, checkpoints/, final/) is written where the SuperLink runs.\n"
        "On real machines: make certificates for the SuperLink's address with\n"
        "`fedctl train flower-certs --out certs --nodes N --host <superlink address>` and pass `--certs certs`,\n"
        "replace 127.0.0.1 with that address, give each node only ca.crt and its own supernode-K/auth.key,\n"
        "and point each node at its own data with\n"
        "`--node-config 'partition-id=K num-partitions=N fedctl-set=\"task.data=/local/path\"'`.\n"
    )
    write_text(app_dir / "README.md", readme)
    return FlowerApp(app_dir, config_path, run_dir, commands, pki.root if pki else None)


INSECURE_NOTE = "\n# INSECURE (--insecure): plain HTTP; anyone who reaches the port can submit runs."


def _certs_for(app_dir: Path, certs: str | Path | None, clients: int) -> FlowerCerts:
    """The given certs folder (keys for >= `clients` nodes), else APP/.flwr/certs, made on first use."""
    if certs is not None:
        return load_certs(certs, clients)
    default = app_dir / ".flwr" / "certs"
    if (default / MANIFEST).exists():
        return load_certs(default, clients)
    return make_certs(default, clients)
