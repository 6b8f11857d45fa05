"""Aggregation strategies, one file per algorithm; `build_strategy` makes one from a name and options."""

from __future__ import annotations

import difflib
import inspect
import math
import typing
from typing import Any

from fedctl.core.strategies.base import Aggregator, ClientUpdate, Strategy, innermost
from fedctl.core.strategies.bulyan import Bulyan
from fedctl.core.strategies.fedadagrad import FedAdagrad
from fedctl.core.strategies.fedadam import FedAdam
from fedctl.core.strategies.fedavg import FedAvg
from fedctl.core.strategies.fedavgm import FedAvgM
from fedctl.core.strategies.fedbn import FedBN
from fedctl.core.strategies.fedentropy import FedEntropy
from fedctl.core.strategies.fedfisher import FedFisher
from fedctl.core.strategies.fedmedian import FedMedian
from fedctl.core.strategies.fednova import FedNova
from fedctl.core.strategies.fedper import FedPer
from fedctl.core.strategies.fedprox import FedProx
from fedctl.core.strategies.fedtrimmedavg import FedTrimmedAvg
from fedctl.core.strategies.fedyogi import FedYogi
from fedctl.core.strategies.krum import Krum
from fedctl.core.strategies.qfedavg import QFedAvg
from fedctl.core.strategies.scaffold import Scaffold
from fedctl.errors import FedctlError

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (FedAvg, FedAvgM, FedAdam, FedYogi, FedAdagrad, FedProx, FedMedian, FedTrimmedAvg, Krum,
                FedEntropy, FedFisher, Bulyan, QFedAvg, Scaffold, FedNova, FedBN, FedPer)
}

__all__ = ["STRATEGIES", "Aggregator", "ClientUpdate", "Strategy", "build_strategy", "innermost", "strategy_options"]


def strategy_options(name: str) -> dict[str, Any]:
    """The keyword options a strategy takes, with their defaults."""
    cls = _lookup(name)
    return {
        p.name: p.default
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def _lookup(name: str) -> type[Strategy]:
    key = name.lower().replace("-", "").replace("_", "")
    if key not in STRATEGIES:
        close = difflib.get_close_matches(key, STRATEGIES, n=1)
        raise FedctlError(
            f"unknown strategy '{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""),
            f"choose one of: {', '.join(STRATEGIES)}",
        )
    return STRATEGIES[key]


def build_strategy(name: str, options: dict[str, Any] | None = None) -> Strategy:
    """Construct a strategy, checking option names and types against its constructor."""
    cls = _lookup(name)
    options = dict(options or {})
    valid = strategy_options(cls.name)
    hints = typing.get_type_hints(cls.__init__)
    for key, value in options.items():
        if key not in valid:
            raise FedctlError(
                f"unknown option '{key}' for strategy {cls.name}",
                f"valid options: {', '.join(valid) or '(none)'}; set them with --set federation.strategy_args.KEY=VALUE",
            )
        expected = hints.get(key)
        if isinstance(value, str) and expected is not None and _type_ok(True, expected) and value.lower() in ("true", "false"):
            value = options[key] = value.lower() == "true"
        if expected is not None and not _type_ok(value, expected):
            raise FedctlError(
                f"strategy option {cls.name}.{key} = {value!r} is not a valid {_type_name(expected)}",
                f"give a number, e.g. --set federation.strategy_args.{key}={valid[key]!r}",
            )
        if expected in (float, float | None) and isinstance(value, int) and not isinstance(value, bool):
            try:
                value = options[key] = float(value)
            except OverflowError:
                value = math.inf
        if isinstance(value, float) and not math.isfinite(value):
            raise FedctlError(
                f"strategy option {cls.name}.{key} = {value} is not a finite number",
                f"give a finite number, e.g. --set federation.strategy_args.{key}={valid[key]!r}",
            )
    try:
        return cls(**options)
    except ValueError as exc:
        raise FedctlError(
            f"strategy {cls.name}: {exc}",
            f"fix federation.strategy_args (defaults: {', '.join(f'{k}={v!r}' for k, v in valid.items()) or 'none'})",
        ) from None


def _type_ok(value: Any, expected: Any) -> bool:
    args = typing.get_args(expected)
    if args:  # X | None
        return any(_type_ok(value, a) for a in args)
    if expected is type(None):
        return value is None
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _type_name(expected: Any) -> str:
    return getattr(expected, "__name__", str(expected))
