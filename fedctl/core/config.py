"""One config surface: dataclass sections with defaults, filled from a YAML file, flags and
`--set section.key=value` overrides. Unknown keys and wrong types are errors that name the valid keys."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fedctl.errors import FedctlError

INT_LIMIT = 2**63  # any int setting beyond int64 is a typo, and torch/numpy would overflow on it
SEED_LIMIT = 2**63  # torch.manual_seed takes at most a 64-bit seed; negative seeds are refused as typos


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading numbers as YAML 1.2 does: `1e-3` and `5E+2` are floats.

    YAML 1.1 (what PyYAML implements) reads a float only with a dot (`1.0e-3`), so `lr: 1e-3`
    arrived as the string '1e-3' and was refused as "not a valid float"."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def yaml_load(text: str) -> Any:
    """Parse YAML text with fedctl's loader (safe; YAML 1.2 numbers)."""
    return yaml.load(text, Loader=YamlLoader)  # noqa: S506 - YamlLoader is a SafeLoader


def describe(key: str) -> str:
    """How an error names a setting: `option --seeds` for a command-line flag, `config key 'a.b'` otherwise."""
    return f"option {key}" if key.startswith("-") else f"config key '{key}'"


def _example(key: str, value: str) -> str:
    return f"{key} {value}" if key.startswith("-") else f"--set {key}={value}"


def check_range(*, low: float | None = None, high: float | None = None, low_open: bool = False,
                high_open: bool = False, finite: bool = True, hint: str) -> typing.Callable[[Any, str], None]:
    """A field check (`metadata={"check": ...}`): the value lies in the interval, else a FedctlError naming the
    key or flag, the value and the interval, with `hint`. NaN is never in range, nor ±inf unless `finite` is false. One declaration serves a
    config key, a command-line flag and a sweep file alike (the message names whichever was given)."""
    if low is not None and high is not None:
        want = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        want = f"{'>' if low_open else '>='} {low:g}"
    else:
        want = f"{'<' if high_open else '<='} {high:g}"

    def check(value: Any, key: str) -> None:
        ok = not (isinstance(value, float) and (math.isnan(value) or (finite and math.isinf(value))))
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            raise FedctlError(f"{describe(key)} = {value!r} is out of range: it must be {want}", hint)

    check.want = want  # type: ignore[attr-defined]
    return check


def check_choice(*choices: str, hint: str | None = None) -> typing.Callable[[Any, str], None]:
    """A field check: the value is one of `choices`."""

    def check(value: Any, key: str) -> None:
        if value not in choices:
            close = difflib.get_close_matches(str(value), choices, n=1)
            raise FedctlError(f"{describe(key)} = {value!r} is not one of {', '.join(choices)}"
                              + (f" (did you mean '{close[0]}'?)" if close else ""),
                              hint or f"e.g. {_example(key, choices[0])}")

    return check


def check_fields(obj: Any, prefix: str = "", label: typing.Callable[[str], str] | None = None) -> None:
    """Run every field check of dataclass `obj` (and of the dataclasses inside it) on its current values:
    the same checks `apply_mapping` runs on the values it sets, for an object built in code."""
    for f in dataclasses.fields(obj):
        full = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_fields(value, full, label)
        elif f.metadata.get("check") is not None and value is not None:
            f.metadata["check"](value, label(full) if label else full)


# probabilities of dropping: 1 would drop everything (training and the attack's client refuse it alike)
check_dropout = check_range(low=0, high=1, high_open=True, hint="a probability in [0, 1), e.g. 0.2; 0 disables it")
check_prune = check_range(low=0, high=1, high_open=True,
                          hint="the fraction of each update tensor zeroed, e.g. 0.9 keeps the top 10%; 0 is off")


def check_plain_name(value: str, key: str) -> None:
    """A run name becomes a folder under runs/: no path separators, no '..', nothing hidden or empty."""
    if (not value or value in (".", "..") or "/" in value or "\\" in value or "\0" in value
            or value.startswith(".")):
        raise FedctlError(
            f"config key '{key}' = {value!r} is not a plain name",
            "use letters, digits, '-' or '_' (the run goes to runs/<name>); to write elsewhere use --out DIR",
        )


def check_out_path(value: str, key: str) -> None:
    """A run directory must be a folder or not exist yet, and no folder above it may be a file."""
    if "\0" in value:
        raise FedctlError(f"config key '{key}' = {value!r} holds a NUL byte", "pass a plain path, e.g. --out runs/exp1")
    probe = Path(value).expanduser()
    while not os.path.lexists(probe) and probe.parent != probe:
        probe = probe.parent
    if os.path.lexists(probe) and not probe.is_dir():
        raise FedctlError(
            f"config key '{key}' = {value!r}: {probe} is a file, not a folder",
            "choose an --out folder that is not a file and does not lie under one",
        )


def check_seed(value: int, key: str) -> None:
    if not 0 <= value < SEED_LIMIT:
        raise FedctlError(f"{describe(key)} = {value} is out of range", "use a seed between 0 and 2**63 - 1, e.g. --seed 0")


@dataclass
class RunConfig:
    name: str = field(default="run", metadata={"check": check_plain_name})  # run name; the run directory defaults to runs/<name>
    out: str | None = field(default=None, metadata={"check": check_out_path})  # run directory (overrides runs/<name>)
    seed: int = field(default=0, metadata={"check": check_seed})  # seeds model init, client sampling and every client's data order
    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:N
    threads: int = 0  # torch threads per process; 0 = auto: 1 per process with several workers, else the cores
                      # this process may use (affinity mask, cgroup CPU quota); 1 is fastest for tiny models
    workers: int = 0  # client worker processes: 0 = auto (one per core the threads allow), 1 = sequential
    task: str = "mamba"  # workload: set by the command (`train mamba`, `train central --task …`)
    track: list[str] = field(default_factory=list)  # experiment trackers, offline: tensorboard, wandb, mlflow (pip install 'fedctl[tracking]')


@dataclass
class FederationConfig:
    rounds: int = 10  # federated rounds
    clients: int = 4  # clients the training data is split across
    fraction: float = 1.0  # fraction of clients sampled each round, in (0, 1]
    min_fit_clients: int = 1  # fewest clients sampled, and fewest successful updates for a round to count
    strategy: str = "fedavg"  # fedavg fedavgm fedadam fedyogi fedadagrad fedprox fedmedian fedtrimmedavg krum bulyan qfedavg fedentropy fedfisher scaffold fednova fedbn fedper
    strategy_args: dict = field(default_factory=dict)  # options of the strategy, Flower's names (e.g. server_momentum)
    eval_every: int = 1  # evaluate the global model every N rounds (and after the last)
    eval_clients: bool = False  # also evaluate on clients' own data (slower): a sample of them, see below
    fraction_evaluate: float = field(default=1.0, metadata={"check": check_range(
        low=0, high=1, low_open=True, hint="the fraction of clients evaluated per round, e.g. 0.5; 1 is all")})  # with eval_clients: fraction of clients evaluated per evaluation round, in (0, 1] (Flower's name)
    min_evaluate_clients: int = 1  # fewest clients evaluated per evaluation round (Flower's name); ≤ clients
    evaluate_aggregation: str = field(default="weighted", metadata={"check": check_choice(
        "weighted", "mean", "median", hint="weighted (by each client's evaluation examples), mean or median")})  # how the client metrics of a round are aggregated
    checkpoint_every: int = 5  # checkpoint every N rounds (and after the last)
    keep_checkpoints: int = 0  # how many newest checkpoints to keep; 0 keeps all (never deletes best.pt)
    best_metric: str | None = "val_loss"  # global eval metric that picks checkpoints/best.pt; null: no best.pt
    best_mode: str = "min"  # min (losses, perplexity) or max (accuracy)
    keep_optimizer_state: bool = False  # clients keep optimizer state across rounds (in the client-state store)
    local_keys: list[str] = field(default_factory=list)  # glob patterns of tensors that stay on each client (FedPer)
    client_state_memory: int = field(default=512 * 2**20, metadata={"check": check_range(low=0, hint="bytes, e.g. 536870912 (512 MiB); 0 keeps every client's state on disk")})  # bytes of per-client state held in RAM; beyond: spilled to client_state/
    save_deltas_every: int = 0  # save parameter deltas every N rounds into deltas/ (0 = never)
    save_deltas_entity: str = "server"  # server (global_t − global_t−1), clients (client − global_t−1) or all
    dp: dict = field(default_factory=dict)  # client-level DP: {mode, clip, clipping_norm, noise_multiplier, ...}; {} = off
    prune: float = field(default=0.0, metadata={"check": check_prune})  # each client shares only the largest-|Δ| (1 − prune) of every tensor of its update; 0 = off


@dataclass(frozen=True)
class Flag:
    """A command-line flag of a workload command, declared next to the config key it sets.

    `key` is `section.name` (e.g. `task.lr`, `federation.eval_clients`); `type` is str, int, float, bool
    (an on/off pair `--x/--no-x`) or list (several values after one flag); `const` makes a bool flag a switch
    that sets `key` to that value when given."""

    key: str
    flag: str
    help: str
    type: type = str
    const: Any = None


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if typing.get_origin(tp) is list:
        return f"list of {_type_name(args[0])}" if args else "list"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` (int accepted for float); return the typed value."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return coerce(value, arg, key)
            except FedctlError:
                continue
        raise _type_error(key, value, tp)
    if tp is type(None):
        if value is None:
            return None
        raise _type_error(key, value, tp)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(key, value, tp)
    if tp is int:
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            value = int(value)  # `1e3` (a YAML 1.2 float) where a count is expected
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) >= INT_LIMIT:
                raise FedctlError(f"{describe(key)} = {value} is out of range", "use a value below 2**63")
            return value
        raise _type_error(key, value, tp)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:
                value = math.inf
            if not math.isfinite(value):
                raise FedctlError(
                    f"{describe(key)} = {value} is not a finite number",
                    f"give a finite number, e.g. {_example(key, '0.1')}",
                )
            return value
        raise _type_error(key, value, tp)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _type_error(key, value, tp)
    if origin is list or tp is list:
        if isinstance(value, str):  # --set modules=query,value
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, value, tp)
        (arg,) = typing.get_args(tp) or (Any,)
        return [coerce(v, arg, key) for v in value]
    if origin is dict or tp is dict:
        if isinstance(value, dict):
            return dict(value)
        raise _type_error(key, value, tp)
    raise _type_error(key, value, tp)


def _type_error(key: str, value: Any, tp: Any) -> FedctlError:
    return FedctlError(
        f"{describe(key)} = {value!r} is not a valid {_type_name(tp)}",
        f"set it to a {_type_name(tp)}, e.g. {_example(key, '...')}",
    )


def apply_mapping(obj: Any, mapping: dict[str, Any], prefix: str,
                  label: typing.Callable[[str], str] | None = None) -> None:
    """Set fields of dataclass `obj` from `mapping`, strictly (unknown key or wrong type → FedctlError).

    `label(key)` names a setting in errors where it came from elsewhere than a config key (a command-line
    flag such as `--seeds` for `attack.restarts`)."""
    name = label or (lambda k: k)
    types_ = _field_types(type(obj))
    checks = {f.name: f.metadata.get("check") for f in dataclasses.fields(obj)}
    for key, value in mapping.items():
        if not isinstance(key, str):  # YAML reads `1:` or `true:` as an int / bool key
            where = f" in '{prefix}'" if prefix else ""
            raise FedctlError(
                f"config key {key!r}{where} is not a name (a {type(key).__name__})",
                f"valid keys{where}: {', '.join(types_)}",
            )
        full = f"{prefix}.{key}" if prefix else key
        if key not in types_:
            raise unknown_key_error(name(full), list(types_), prefix)
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise FedctlError(f"config key '{name(full)}' must be a mapping",
                                  f"valid keys: {', '.join(_field_types(type(current)))}")
            apply_mapping(current, value, full, label)
        elif types_[key] is dict and isinstance(value, dict) and isinstance(current, dict):
            setattr(obj, key, {**current, **value} if prefix else dict(value))
        else:
            value = coerce(value, types_[key], name(full))
            if checks.get(key) is not None and value is not None:
                checks[key](value, name(full))
            setattr(obj, key, value)


def unknown_key_error(full: str, valid: list[str], prefix: str) -> FedctlError:
    last = full.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(last, valid, n=1)
    where = f" in '{prefix}'" if prefix else ""
    return FedctlError(
        f"unknown config key '{full}'" + (f" (did you mean '{close[0]}'?)" if close else ""),
        f"valid keys{where}: {', '.join(valid)}",
    )


def require_in_range(checks: list[tuple[str, bool, str]], value_of: Any, section: str = "task") -> None:
    """Raise for the first (key, ok, hint) whose `ok` is false, naming `section.key`, its value and the hint.

    `value_of(key)` gives the value to show (a task may merge a preset into its config section).
    """
    for key, ok, hint in checks:
        if not ok:
            raise FedctlError(f"{section}.{key} = {value_of(key)!r} is out of range", hint)


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """Turn ['a.b=1', 'c=x'] into a nested mapping; values are parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise FedctlError(f"--set '{item}' is not KEY=VALUE", "write e.g. --set federation.fraction=0.5")
        key, raw = item.split("=", 1)
        try:
            value = yaml_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise FedctlError(f"--set '{item}' conflicts with another --set of '{part}'", "set each key once")
        node[parts[-1]] = value
    return nested


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FedctlError(f"config file not found: {path}", "check the path; shipped templates: `fedctl train templates`")
    try:
        data = yaml_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise FedctlError(
            f"config file {path} is not UTF-8 text (byte {exc.start} cannot be decoded)",
            "is it a YAML file? save it as UTF-8 text",
        ) from None
    except OSError as exc:
        raise FedctlError(f"cannot read config file {path}: {exc.strerror or exc}", "check the path and its permissions") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise FedctlError(f"config file {path} is not valid YAML{where}", "fix the syntax (indentation, colons)") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FedctlError(f"config file {path} must be a mapping of sections", "see templates/ for the layout")
    return data


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain dicts, lists and scalars (safe for YAML, JSON and weights_only checkpoints)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)
