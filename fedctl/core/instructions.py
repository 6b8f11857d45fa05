"""What a strategy tells every sampled client for one round (Flower's fit config, typed)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class EntropyRequest:
    """FedEntropy asks each client for its model's mean predictive entropy on up to `max_examples`."""

    max_examples: int = 64


@dataclass(frozen=True)
class FisherRequest:
    """FedFisher asks each client for the diagonal Fisher of its trained parameters."""

    mode: str = "true"  # "true": labels sampled from the model; "empirical": observed labels
    max_examples: int = 64
    chunk: int = 8  # examples per vmap(grad) call


@dataclass(frozen=True)
class ClientInstructions:
    """What a strategy tells every sampled client for one round (Flower's fit config, typed)."""

    proximal_mu: float = 0.0  # FedProx: add (mu/2)·||w − w_global||² to the local loss
    client_lr: float | None = None  # FedOpt's eta_l: overrides the workload's learning rate
    entropy: EntropyRequest | None = None  # statistics to measure after training
    fisher: FisherRequest | None = None
    prune: float = 0.0  # federation.prune: zero this fraction of each shared tensor's update, smallest |Δ| first
    dp_clipping_norm: float | None = None  # federation.dp mode client: clip the update to this L2 norm, then
    dp_noise_std: float = 0.0  # add N(0, dp_noise_std²) to every entry, before the update leaves the client
    scaffold: bool = False  # SCAFFOLD: correct each step's gradient by c − c_i, report Δc_i (fedctl.core.stateful)
    fednova: bool = False  # FedNova: report the local normaliser a_i of the steps taken
    local_keys: tuple[str, ...] = ()  # tensors the client keeps between rounds (FedBN, FedPer): never uploaded
    evaluate_personal: bool = False  # federation.eval_clients on an evaluation round: report Task.personal_evaluate

    @property
    def wants_stats(self) -> bool:
        return self.entropy is not None or self.fisher is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (Flower messages carry them as text)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClientInstructions:
        return cls(
            proximal_mu=float(data.get("proximal_mu", 0.0)),
            client_lr=None if data.get("client_lr") is None else float(data["client_lr"]),
            entropy=EntropyRequest(**data["entropy"]) if data.get("entropy") else None,
            fisher=FisherRequest(**data["fisher"]) if data.get("fisher") else None,
            prune=float(data.get("prune", 0.0)),
            dp_clipping_norm=None if data.get("dp_clipping_norm") is None else float(data["dp_clipping_norm"]),
            dp_noise_std=float(data.get("dp_noise_std", 0.0)),
            scaffold=bool(data.get("scaffold", False)),
            fednova=bool(data.get("fednova", False)),
            local_keys=tuple(data.get("local_keys") or ()),
            evaluate_personal=bool(data.get("evaluate_personal", False)),
        )
