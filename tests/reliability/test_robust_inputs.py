"""Bad input for Bulyan, q-FedAvg and federated evaluation: one Error and one Hint line, exit 1, nothing written."""

from __future__ import annotations

import pytest

from tests.reliability.helpers import assert_user_error


@pytest.mark.parametrize("args,names", [
    # Bulyan needs n ≥ 4f + 3 clients per round: 4 clients, f = 1 → 7 needed
    (["--clients", "4", "--strategy", "bulyan", "--set", "federation.strategy_args.num_malicious_clients=1"],
     ["bulyan", "4·f + 3 = 7", "samples 4"]),
    # 10 clients, but a fraction of 0.5 samples 5 < 7
    (["--clients", "10", "--fraction", "0.5", "--strategy", "bulyan",
      "--set", "federation.strategy_args.num_malicious_clients=1"], ["bulyan", "samples 5"]),
    (["--strategy", "qfedavg", "--set", "federation.strategy_args.q=-0.5"], ["qfedavg", "q = -0.5"]),
    (["--set", "federation.fraction_evaluate=0"], ["federation.fraction_evaluate", "(0, 1]"]),
    (["--set", "federation.fraction_evaluate=1.5"], ["federation.fraction_evaluate", "(0, 1]"]),
    (["--set", "federation.fraction_evaluate=-0.1"], ["federation.fraction_evaluate"]),
    (["--clients", "3", "--set", "federation.min_evaluate_clients=4"], ["federation.min_evaluate_clients = 4", "(3)"]),
    (["--set", "federation.min_evaluate_clients=0"], ["federation.min_evaluate_clients = 0"]),
    (["--set", "federation.evaluate_aggregation=avg"], ["federation.evaluate_aggregation", "weighted"]),
])
def test_bad_robust_and_evaluation_settings_are_one_error_line(linear_cli, tmp_path, args, names):
    run = tmp_path / "run"
    res = linear_cli("train", "mamba", "--rounds", "1", *args, "--out", run)
    message = assert_user_error(res)
    for name in names:
        assert name in message, message
    assert not run.exists()


def test_bulyan_with_enough_clients_and_qfedavg_train(linear_cli, tmp_path):
    res = linear_cli("train", "mamba", "--rounds", "2", "--clients", "7", "--strategy", "bulyan",
                     "--set", "federation.strategy_args.num_malicious_clients=1", "--out", tmp_path / "b")
    assert res.exit_code == 0, res.output
    res = linear_cli("train", "mamba", "--rounds", "2", "--clients", "3", "--strategy", "qfedavg",
                     "--set", "federation.strategy_args.q=1", "--set", "federation.strategy_args.train_loss_key=train_initial_loss",
                     "--out", tmp_path / "q")
    assert res.exit_code == 0, res.output


def test_weighted_evaluation_on_a_task_without_example_counts_is_one_error_line(tmp_path):
    from fedctl.core.config import FederationConfig
    from fedctl.core.engine import run_federated
    from fedctl.core.strategies import build_strategy
    from fedctl.errors import FedctlError
    from tests.core.linear_task import LinearTask

    class NoCounts(LinearTask):
        eval_examples = LinearTask.__base__.eval_examples  # the Task default: not declared

    with pytest.raises(FedctlError, match="evaluate_aggregation=mean") as exc:
        run_federated(NoCounts(num_clients=2, steps=1), build_strategy("fedavg"),
                      FederationConfig(rounds=1, clients=2, eval_clients=True), seed=0)
    assert "does not say how many examples" in exc.value.message


def test_fedavgm_records_its_momentum_and_an_older_run_resumes_with_the_old_default(linear_cli, tmp_path):
    """The default server_momentum changed from 0.0 (Flower's) to 0.9: a new run writes 0.9 into config.yaml, and a
    run whose config.yaml has none was started before the change, so --resume keeps its 0.0."""
    import yaml

    from fedctl.run.recipe import load_run_config

    run = tmp_path / "new"
    res = linear_cli("train", "mamba", "--rounds", "1", "--strategy", "fedavgm", "--out", run)
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["federation"]["strategy_args"] == {"server_momentum": 0.9}
    assert load_run_config(run, rounds=2).federation.strategy_args == {"server_momentum": 0.9}
    saved["federation"]["strategy_args"] = {}  # as fedctl wrote it before the change
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.yaml").write_text(yaml.safe_dump(saved))
    assert load_run_config(old, rounds=2).federation.strategy_args == {"server_momentum": 0.0}
