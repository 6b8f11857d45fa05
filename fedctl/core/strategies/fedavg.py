"""FedAvg — McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data": the new global model is the client models' mean weighted by num_examples."""

from __future__ import annotations

from fedctl.core.strategies.base import Strategy


class FedAvg(Strategy):
    name = "fedavg"

    def __init__(self) -> None:
        pass
