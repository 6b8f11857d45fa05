"""Config values (classes 4, 5, 9): numbers in any notation are numbers, non-finite or out-of-range values are
refused when the config is resolved, strategy options are checked when the strategy is built, and a server
step that turns the model non-finite stops the run instead of reporting NaN weights as success."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedctl.core.config import FederationConfig, RunConfig, apply_mapping, parse_set, yaml_load
from fedctl.core.engine import run_federated
from fedctl.core.strategies import STRATEGIES, build_strategy, strategy_options
from fedctl.errors import FedctlError
from tests.core.linear_task import LinearTask
from tests.reliability.helpers import assert_user_error, tree_state

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300)


def _sci(x: float, upper: bool, plus: bool) -> str:
    text = f"{x:e}" if not upper else f"{x:E}"
    return text if plus else text.replace("e+", "e").replace("E+", "E")


# ------------------------------------------------------------------------------------- class 5: notation


@SETTINGS
@given(x=finite, upper=st.booleans(), plus=st.booleans())
def test_scientific_notation_is_a_number_in_set_and_yaml(x, upper, plus):
    text = _sci(x, upper, plus)
    assert parse_set([f"task.lr={text}"]) == {"task": {"lr": float(text)}}
    assert yaml_load(f"lr: {text}\n") == {"lr": float(text)}
    fed = FederationConfig()
    apply_mapping(fed, yaml_load(f"strategy_args: {{eta: {text}}}\nfraction: {text}\n"), "federation")
    assert fed.fraction == float(text) and fed.strategy_args == {"eta": float(text)}


def test_scientific_notation_through_the_cli(linear_cli, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("run: {task: mamba}\nfederation: {rounds: 1, clients: 2}\ntask: {lr: 1e-3}\n")
    res = linear_cli("train", "mamba", "--config", cfg, "--set", "task.lr=2E-3", "--set", "federation.rounds=1e0",
                     "--out", tmp_path / "run", "--json")
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["task"]["lr"] == 2e-3 and saved["federation"]["rounds"] == 1
    res = linear_cli("train", "mamba", "--config", cfg, "--lr", "5e-4", "--rounds", "2e0", "--clients", "3E0",
                     "--out", tmp_path / "run2", "--json")
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((tmp_path / "run2" / "config.yaml").read_text())
    assert saved["task"]["lr"] == 5e-4 and saved["federation"]["rounds"] == 2 and saved["federation"]["clients"] == 3


# ------------------------------------------------------------------------------ class 9: finite at config time


@SETTINGS
@given(text=st.sampled_from([".nan", ".NaN", ".inf", "-.inf", "+.inf", "1e999", "-1e999", "nan", "inf"]),
       key=st.sampled_from(["task.lr", "federation.fraction"]))
def test_non_finite_floats_are_refused_when_resolved(text, key):
    with pytest.raises(FedctlError) as info:
        _resolve_linear([f"{key}={text}"])
    assert key in info.value.message and info.value.hint


def _resolve_linear(sets):
    from fedctl.run import recipe, registry

    registry.WORKLOADS.setdefault("linear", registry.Workload(
        "linear", "tests.reliability.linear_workload", "LinearConfig", "LinearWorkloadTask"))
    return recipe.resolve("linear", sets=sets)


def test_lr_inf_fails_before_any_round(linear_cli, tmp_path):
    for value in ("inf", "nan", "-inf"):
        res = linear_cli("train", "mamba", "--lr", value, "--out", tmp_path / "run")
        assert "task.lr" in assert_user_error(res)
    assert not (tmp_path / "run").exists()  # refused at config time: no run directory, no round trained


@pytest.mark.parametrize("value", ["1", "1.5", "-0.1"])
def test_prune_outside_0_1_is_one_error_naming_the_key(linear_cli, tmp_path, value):
    res = linear_cli("train", "mamba", "--set", f"federation.prune={value}", "--out", tmp_path / "run")
    assert "federation.prune" in assert_user_error(res)
    assert not (tmp_path / "run").exists()


@SETTINGS
@given(seed=st.one_of(st.integers(min_value=2**63, max_value=2**80), st.integers(max_value=-1, min_value=-(2**80))))
def test_seeds_outside_64_bits_are_refused(seed):
    with pytest.raises(FedctlError, match="run.seed"):
        apply_mapping(RunConfig(), {"seed": seed}, "run")


def test_seed_2_pow_70_is_an_error_not_a_traceback(linear_cli, tmp_path):
    assert "run.seed" in assert_user_error(linear_cli("train", "mamba", "--seed", 2**70, "--out", tmp_path / "r"))
    assert "run.seed" in assert_user_error(linear_cli("train", "mamba", "--set", f"run.seed={2**70}",
                                                      "--out", tmp_path / "r"))


@SETTINGS
@given(name=st.one_of(
    st.sampled_from(["..", ".", "", "../../x", "a/b", "/etc", "..\\x", ".hidden", "x\0y"]),
    st.text(min_size=1, max_size=12).map(lambda t: t + "/x"),
))
def test_run_names_that_are_paths_are_refused(name):
    with pytest.raises(FedctlError, match="run.name"):
        apply_mapping(RunConfig(), {"name": name}, "run")


@SETTINGS
@given(name=st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True))
def test_plain_run_names_stay_under_runs(name):
    from fedctl.run.recipe import run_dir_of

    run = RunConfig()
    apply_mapping(run, {"name": name}, "run")
    exp = type("E", (), {"run": run})()
    assert run_dir_of(exp).resolve().parent == (Path("runs")).resolve()


# --------------------------------------------------------------------------- class 4: strategy options


_option_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(), st.none(), st.text(max_size=5),
)


@SETTINGS
@given(name=st.sampled_from(sorted(STRATEGIES)), data=st.data())
def test_strategy_options_are_checked_when_built(name, data):
    options = strategy_options(name)
    if not options:
        return
    key = data.draw(st.sampled_from(sorted(options)))
    value = data.draw(_option_values)
    try:
        strategy = build_strategy(name, {key: value})
    except FedctlError as exc:
        assert key in exc.message or "strategy" in exc.message and exc.hint
        return
    built = getattr(strategy, key, value)
    if isinstance(built, float):
        assert math.isfinite(built)
    # a built strategy takes a finite step from a finite state
    state = {"w": torch.ones(3)}
    new = strategy.step(1, state, {"w": torch.full((3,), 0.5)})
    assert all(bool(torch.isfinite(t).all()) for t in new.values())


@pytest.mark.parametrize("args", [
    {"server_learning_rate": float("nan")}, {"server_learning_rate": float("inf")}, {"server_learning_rate": -1.0},
    {"server_momentum": 1.0}, {"server_momentum": -0.1},
])
def test_fedavgm_refuses_bad_options(args):
    with pytest.raises(FedctlError):
        build_strategy("fedavgm", args)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
@pytest.mark.parametrize("args", [{"eta": -1.0, "tau": 0.0}, {"tau": 0.0}, {"eta": float("nan")}, {"eta_l": -1.0},
                                  {"beta_1": 1.0}, {"beta_2": 1.5}])
def test_fedopt_family_refuses_bad_options(name, args):
    if name == "fedadagrad":
        args = {k: v for k, v in args.items() if not k.startswith("beta")} or {"tau": -1.0}
    with pytest.raises(FedctlError):
        build_strategy(name, args)


def test_nan_server_lr_via_cli_is_an_error(linear_cli, tmp_path):
    res = linear_cli("train", "mamba", "--strategy", "fedavgm", "--set",
                     "federation.strategy_args.server_learning_rate=.nan", "--out", tmp_path / "run")
    assert "server_learning_rate" in assert_user_error(res)
    res = linear_cli("train", "mamba", "--strategy", "fedadam", "--set", "federation.strategy_args.eta=-1",
                     "--set", "federation.strategy_args.tau=0", "--out", tmp_path / "run")
    assert_user_error(res)
    assert not (tmp_path / "run").exists()


def test_non_finite_server_step_stops_and_keeps_the_last_good_checkpoint(linear_cli, tmp_path):
    """Valid options can still diverge (a huge server lr overflows float32 when it multiplies the update): the run must stop with an
    error, not exit 0 with NaN/Inf weights, and the checkpoint on disk must be the last finite state."""
    run = tmp_path / "run"
    res = linear_cli("train", "mamba", "--rounds", "3", "--clients", "2", "--strategy", "fedavgm",
                     "--set", "federation.strategy_args.server_learning_rate=1e300",
                     "--set", "federation.checkpoint_every=1", "--out", run)
    msg = assert_user_error(res)
    assert "non-finite" in msg
    for path in (run / "checkpoints").glob("round_*.pt"):
        ckpt = torch.load(path, weights_only=True)
        assert all(bool(torch.isfinite(t).all()) for t in ckpt["model"].values())


def test_engine_keeps_global_state_when_step_is_non_finite(tmp_path):
    from fedctl.core.checkpoint import load_checkpoint
    from fedctl.core.strategies.fedavg import FedAvg

    class DivergesInRound2(FedAvg):
        def step(self, server_round, global_state, aggregated):
            return {k: v * (math.inf if server_round == 2 else 1.0) for k, v in aggregated.items()}

    with pytest.raises(FedctlError, match="non-finite") as info:
        run_federated(LinearTask(num_clients=2), DivergesInRound2(),
                      FederationConfig(rounds=3, clients=2, checkpoint_every=1), seed=0, run_dir=tmp_path)
    assert "round 2" in info.value.message and info.value.hint
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpts == ["best.pt", "round_001.pt"]  # round 2 never reached disk (best.pt is round 1's)
    model = load_checkpoint(tmp_path / "checkpoints" / "round_001.pt")["model"]
    assert all(bool(torch.isfinite(t).all()) for t in model.values())


# ------------------------------------------------------------------------- class 8: YAML of any shape


yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
                         st.floats(), st.text(max_size=8))
yaml_keys = st.one_of(st.sampled_from(["run", "federation", "task", "name", "seed", "rounds", "lr", "strategy",
                                       "strategy_args", "fraction", "out"]), yaml_scalars.filter(lambda k: k == k))
yaml_docs = st.recursive(yaml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(yaml_keys, inner, max_size=4)), max_leaves=10)


@SETTINGS
@given(doc=yaml_docs)
def test_any_yaml_document_resolves_or_is_a_fedctl_error(doc):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(yaml.safe_dump(doc, allow_unicode=True))
        try:
            _resolve_yaml(path)
        except FedctlError as exc:
            assert exc.message and exc.hint


def _resolve_yaml(path):
    from fedctl.run import recipe, registry

    registry.WORKLOADS.setdefault("linear", registry.Workload(
        "linear", "tests.reliability.linear_workload", "LinearConfig", "LinearWorkloadTask"))
    return recipe.resolve("linear", path)


@SETTINGS
@given(data=st.binary(min_size=1, max_size=64))
def test_any_bytes_as_yaml_config_resolve_or_are_a_fedctl_error(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_bytes(data)
        try:
            _resolve_yaml(path)
        except FedctlError as exc:
            assert exc.message and exc.hint


@pytest.mark.parametrize("text", [b"1: 2\n", b"run: {1: x}\n", b"true: 1\n", b"task:\n  ? [a]\n  : 1\n",
                                  b"run:\n  name: \xff\xfe\n", b"\x00\x01\x02", b"run: {name: !!python/name:os.system}\n"])
def test_bad_yaml_via_cli_is_one_error(linear_cli, tmp_path, text):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(text)
    before = tree_state(tmp_path)
    assert_user_error(linear_cli("train", "mamba", "--config", cfg, "--out", tmp_path / "run"))
    assert tree_state(tmp_path) == before
