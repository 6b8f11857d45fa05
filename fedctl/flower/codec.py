"""What travels in a fedctl Flower message, and how tensors and instructions are encoded.

Train instruction (ServerApp → ClientApp), message type "train", group_id = the server round:
  "arrays"  ArrayRecord   the global shared tensors, packed: one byte buffer ("fedctl.packed") and
                          its layout ("fedctl.layout": JSON [key, dtype, shape, offset, bytes] per
                          tensor), so dtype (bfloat16 too), shape and bits are kept exactly
  "config"  ConfigRecord  server-round, client-index, seed (the run seed), instructions (the
                          strategy's ClientInstructions as JSON), fedctl-config (the run's
                          resolved config as YAML text)

Train reply (ClientApp → ServerApp):
  "arrays"        ArrayRecord   the trained shared tensors
  "metrics"       MetricRecord  num-examples, then the task's numeric metrics (train_loss, steps, ...)
  "stats"         MetricRecord  scalar client statistics (entropy)
  "stats.<name>"  ArrayRecord   tensor client statistics (stats.fisher: the diagonal Fisher)
A client that raised replies with a flwr `Error` (code CLIENT_FAILED) instead of content.

Query (message type "query"), sent once before round 1 so the server can map client indices
to SuperNodes: the reply's "node" ConfigRecord holds partition-id and num-partitions from the
node's --node-config (-1 when not set).
"""

from __future__ import annotations

import json
from typing import Any

import torch

from fedctl.core.instructions import ClientInstructions

CLIENT_FAILED = 7001  # flwr Error code: the client's task raised; the server leaves the client out
BAD_INSTRUCTION = 7002  # flwr Error code: the message does not fit this node (wrong partition, bad config)


_PACKED, _LAYOUT = "fedctl.packed", "fedctl.layout"


def state_to_record(state: dict[str, torch.Tensor]):
    """An ArrayRecord holding `state` bit for bit, as ONE byte buffer plus its layout.

    One Array per tensor would make every message dozens of Flower objects (an Array and its chunks
    per tensor), each pulled with its own HTTP request at every hop; packed, a message is a handful.
    Raw bytes also keep dtypes numpy lacks (bfloat16) without conversion."""
    import numpy as np
    from flwr.app import Array, ArrayRecord

    layout, parts, offset = [], [], 0
    for key, value in state.items():
        tensor = value.detach().cpu().contiguous()
        raw = tensor.reshape(-1).view(torch.uint8) if tensor.numel() else torch.empty(0, dtype=torch.uint8)
        layout.append([key, str(tensor.dtype).removeprefix("torch."), list(tensor.shape), offset, raw.numel()])
        parts.append(raw)
        offset += raw.numel()
    packed = torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8)
    record = ArrayRecord()
    record[_PACKED] = Array.from_numpy_ndarray(packed.numpy())
    record[_LAYOUT] = Array.from_numpy_ndarray(np.frombuffer(json.dumps(layout).encode(), dtype=np.uint8))
    return record


def record_to_state(record, like: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Tensors from a state_to_record ArrayRecord. With `like`, keys, dtypes and shapes must match it."""
    if _PACKED not in record or _LAYOUT not in record:
        raise ValueError(f"the arrays are not a fedctl state (no '{_PACKED}'/'{_LAYOUT}')")
    packed = torch.from_numpy(record[_PACKED].numpy())
    try:
        layout = json.loads(record[_LAYOUT].numpy().tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"the arrays' layout is unreadable: {exc}") from exc
    state: dict[str, torch.Tensor] = {}
    for key, dtype_name, shape, offset, nbytes in layout:
        dtype = getattr(torch, dtype_name, None)
        if not isinstance(dtype, torch.dtype) or offset < 0 or offset + nbytes > packed.numel():
            raise ValueError(f"tensor '{key}' has a bad layout entry ({dtype_name}, {offset}+{nbytes} bytes)")
        chunk = packed[offset:offset + nbytes].clone()  # its own storage: aligned for any dtype
        state[key] = (chunk.view(dtype) if nbytes else torch.empty(0, dtype=dtype)).reshape(shape)
    if like is None:
        return state
    if set(state) != set(like):
        missing, extra = sorted(set(like) - set(state)), sorted(set(state) - set(like))
        raise ValueError(f"arrays do not match the model: missing {missing[:3]}, unexpected {extra[:3]}")
    for key, ref in like.items():
        tensor = state[key]
        if tensor.shape != ref.shape:
            raise ValueError(f"tensor '{key}' has shape {tuple(tensor.shape)}, the model {tuple(ref.shape)}")
        if tensor.dtype != ref.dtype:
            raise ValueError(f"tensor '{key}' is {tensor.dtype}, the model's {ref.dtype}")
    return state


def instruction_config(*, server_round: int, client_index: int, seed: int, instructions: ClientInstructions,
                       config_yaml: str):
    from flwr.app import ConfigRecord

    return ConfigRecord({
        "server-round": int(server_round),
        "client-index": int(client_index),
        "seed": int(seed),
        "instructions": json.dumps(instructions.to_dict(), sort_keys=True),
        "fedctl-config": config_yaml,
    })


def read_instruction_config(record) -> dict[str, Any]:
    return {
        "server_round": int(record["server-round"]),
        "client_index": int(record["client-index"]),
        "seed": int(record["seed"]),
        "instructions": ClientInstructions.from_dict(json.loads(record["instructions"])),
        "config_yaml": str(record["fedctl-config"]),
    }


def reply_content(state: dict[str, torch.Tensor], num_examples: int, metrics: dict[str, Any],
                  stats: dict[str, Any]):
    """The reply RecordDict of a client that trained."""
    from flwr.app import MetricRecord, RecordDict

    content = RecordDict()
    content["arrays"] = state_to_record(state)
    numeric = {k: float(v) for k, v in metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "num-examples"}
    content["metrics"] = MetricRecord({"num-examples": int(num_examples), **numeric})
    scalars: dict[str, float] = {}
    for name, value in stats.items():
        if isinstance(value, dict):
            content[f"stats.{name}"] = state_to_record(value)
        else:
            scalars[name] = float(value)
    content["stats"] = MetricRecord(scalars)
    return content


def read_reply(content, like: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int, dict[str, float], dict[str, Any]]:
    """(state, num_examples, metrics, stats) from a train reply; `like` is the global state."""
    state = record_to_state(content.array_records["arrays"], like)
    metrics = dict(content.metric_records["metrics"])
    num_examples = int(metrics.pop("num-examples"))
    stats: dict[str, Any] = dict(content.metric_records["stats"]) if "stats" in content.metric_records else {}
    for name, record in content.array_records.items():
        if name.startswith("stats."):
            stats[name.removeprefix("stats.")] = record_to_state(record)
    return state, num_examples, metrics, stats
