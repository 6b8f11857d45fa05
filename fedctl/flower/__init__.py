"""fedctl on Flower: the same tasks and strategies, with clients trained on Flower SuperNodes.

The engine's round loop, aggregation, evaluation, checkpoints and metrics run in the ServerApp
(`fedctl.flower.server_app:app`); each SuperNode runs the ClientApp (`fedctl.flower.client_app:app`),
which builds the task from the run's resolved config and trains the clients it is sent.
Needs the `flower` extra: pip install 'fedctl[flower]' (flwr 1.41), on the SuperLink machine and
on every SuperNode, together with fedctl itself.

How to run (flwr 1.41; every command below was checked against the installed CLIs):

    # 1. write a Flower App directory for a fedctl config; it prints these commands with absolute paths.
    #    Secure by default: TLS + SuperNode authentication with the certificates and node keys in
    #    --certs DIR (`fedctl train flower-certs`) or, without it, a set made in flower-app/.flwr/certs (C below)
    fedctl train flower-app --config mamba_tiny --out runs/mamba-flower --app flower-app/

    # 2. the SuperLink (one port serves the Fleet, Control and Runtime HTTP APIs; binds 127.0.0.1)
    flower-superlink --ssl-ca-certfile C/ca.crt --ssl-certfile C/superlink/server.crt \
        --ssl-keyfile C/superlink/server.key --enable-supernode-auth --port 9092 --disable-runtime-dependency-installation

    # 3. register each SuperNode's public key, then start one SuperNode per client
    FLWR_HOME=flower-app/.flwr flwr supernode register C/supernode-0/auth.pub fedctl-local
    flower-supernode --root-certificates C/ca.crt --auth-supernode-private-key C/supernode-0/auth.key \
        --superlink 127.0.0.1:9092 --port 9094 --node-config 'partition-id=0 num-partitions=2'
    (the same for node 1 on port 9095)

    # 4. submit the run (the app ships the SuperLink connection in flower-app/.flwr/config.toml)
    FLWR_HOME=flower-app/.flwr flwr run flower-app fedctl-local --stream

Multi-machine recipe: README "Multi-machine with Flower". fedctl.flower.security makes the PKI,
fedctl.flower.loopback.LoopbackFederation runs all of it on 127.0.0.1 for tests and benchmarks.
The run directory (config.yaml, metrics.jsonl, checkpoints/, final/) is written by the ServerApp
on the SuperLink machine, exactly as `fedctl train` writes it. Node-local data: see
fedctl.flower.client_app. Not supported over Flower: per-client state (federation.keep_optimizer_state, local_keys, scaffold,
fedbn, fedper), refused by name.

flwr is imported only inside this package's modules, so fedctl works without it.
"""

from __future__ import annotations

import importlib.util

from fedctl.errors import FedctlError


def require_flwr() -> None:
    """Raise a FedctlError with the install hint when flwr is missing."""
    if importlib.util.find_spec("flwr") is None:
        raise FedctlError("Flower (flwr) is not installed", "pip install 'fedctl[flower]'")
