"""`--local-steps N`: the client shares (θ0 − θN)/lr of N local SGD steps on its batch and the attacker unrolls
the same steps on its dummy features. The unrolled update equals the client's at the true features (float64,
every restart, DS1 and DS2), its derivative w.r.t. the features is exact (finite differences), the attack
inverts a well-posed case, and the CLI takes the flags and refuses bad values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml
from typer.testing import CliRunner

from fedctl.attacks.attack import AttackConfig, _distance_and_grad, reconstruct
from fedctl.attacks.case import client_update, load_victim
from fedctl.attacks.objective import gradient_distance, per_restart_gradients, top_masks, unrolled_updates
from fedctl.attacks.sweep import load_sweep
from fedctl.cli.app import app
from fedctl.errors import FedctlError
from fedctl.tasks.asr.data import collate


def _batch(arch, frames, seed):
    """A client batch of two utterances of different lengths (padding and packing exercised), float64."""
    gen = torch.Generator().manual_seed(seed)
    nfeat, scale = (26, 5.0) if arch == "ds1" else (257, 1.0)
    feats = [torch.randn(f, nfeat, generator=gen, dtype=torch.float64) * scale for f in (frames, frames - 3)]
    return collate(feats, [[3, 4, 5], [7, 8]])


def _two_restarts(arch, frames):
    """x [T, 2·2, F]: restart 0 is the client's true batch, restart 1 another batch of the same shape."""
    x, lengths, targets, tlens = _batch(arch, frames, seed=0)
    other = _batch(arch, frames, seed=1)[0]
    return x, torch.cat([x, other], dim=1), lengths.repeat(2), targets.repeat(2, 1), tlens.repeat(2)


@pytest.mark.parametrize("arch,match,steps", [("ds1", "last", 2), ("ds1", "last", 3), ("ds1", "all", 2),
                                              ("ds1", "all", 3), ("ds2", "last", 2)])
def test_unrolled_update_is_the_clients_local_sgd_update(arch, match, steps):
    model = load_victim(arch, "tiny", seed=0).double()
    x, both, lengths, targets, tlens = _two_restarts(arch, 12 if arch == "ds1" else 16)
    lr = 0.5
    dummy, losses = unrolled_updates(model, both, lengths, targets, tlens, 2, match, local_steps=steps, local_lr=lr)
    first_order, _ = unrolled_updates(model, both, lengths, targets, tlens, 2, match, local_steps=steps,
                                      local_lr=lr, create_graph=False)  # what HFGM uses: the same values
    gradient, grad_losses = per_restart_gradients(model, both, lengths, targets, tlens, 2, match,
                                                  create_graph=False)
    torch.testing.assert_close(losses, grad_losses, rtol=0, atol=1e-12)  # the first step's losses
    for r in range(2):
        cols = slice(2 * r, 2 * r + 2)
        client = client_update(model, both[:, cols], lengths[cols], targets[cols], tlens[cols], match=match,
                               local_steps=steps, local_lr=lr)
        for d, f, c in zip(dummy, first_order, client):
            torch.testing.assert_close(d[r], c, rtol=0, atol=1e-10)
            torch.testing.assert_close(f[r], c, rtol=0, atol=1e-10)
        # the steps matter: the first matched tensor's update is far from N × its FedSGD gradient
        first = steps * gradient[0][r]
        assert float((dummy[0][r] - first).norm() / first.norm()) > 0.3  # measured 0.60-1.33


def test_one_local_step_is_todays_batched_gradient():
    model = load_victim("ds1", "tiny", seed=0).double()
    x, both, lengths, targets, tlens = _two_restarts("ds1", 12)
    for match in ("last", "all"):
        today, _ = per_restart_gradients(model, both, lengths, targets, tlens, 2, match)
        one, _ = unrolled_updates(model, both, lengths, targets, tlens, 2, match, local_steps=1, local_lr=0.5)
        client = client_update(model, x, lengths[:2], targets[:2], tlens[:2], match=match, local_steps=1)
        for t, o, c in zip(today, one, client):
            assert torch.equal(t, o)
            torch.testing.assert_close(o[0], c, rtol=0, atol=1e-10)


def test_feature_derivative_through_the_unroll_matches_finite_differences():
    # second order through all three steps: d/dx of the distance between the unrolled update and the client's
    model = load_victim("ds1", "tiny", seed=0).double()
    x, lengths, targets, tlens = _batch("ds1", 10, seed=0)
    lr = 0.5
    target = client_update(model, x, lengths, targets, tlens, local_steps=3, local_lr=lr)
    gen = torch.Generator().manual_seed(2)
    x_hat = x + torch.randn(x.shape, generator=gen, dtype=torch.float64)
    direction = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    direction[8:, 1] = 0.0  # the padding frames of the shorter utterance do not enter the objective
    cfg = AttackConfig(local_steps=3, local_lr=lr)
    masks = top_masks(target, 1.0)

    def distance(z):
        return _distance_and_grad(model, z, lengths, targets, tlens, 1, target, masks, cfg)

    value, grad_x = distance(x_hat)
    eps = 1e-5
    numeric = (distance(x_hat + eps * direction)[0] - distance(x_hat - eps * direction)[0]) / (2 * eps)
    analytic = float((grad_x * direction).sum())
    assert float(value[0]) > 1e-3  # away from the optimum, where the derivative is not ~0
    assert abs(float(numeric[0]) - analytic) <= 1e-6 * abs(analytic)


def _cos(a, b):
    return float(F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def test_two_local_steps_are_inverted_on_a_well_posed_case():
    # DS1 without activations, untrained, hidden 128, 4 random unit frames, 2 labels: 29 × 129 = 3741 matched
    # output-layer entries for 104 unknowns (36×). lr 1 makes the two steps matter: they move the weights by
    # 8% of their norm and the output-layer update's cosine to the FedSGD gradient is 0.64.
    gen = torch.Generator().manual_seed(0)
    x, lengths, targets, tlens = collate([torch.randn(4, 26, generator=gen)], [[20, 8]])
    model = load_victim("ds1", "tiny", overrides={"n_hidden": 128})
    everything = client_update(model, x, lengths, targets, tlens, match="all", local_steps=2, local_lr=1.0)
    theta = torch.cat([p.detach().flatten() for p in model.parameters()])
    moved = float(torch.cat([u.flatten() for u in everything]).norm() / theta.norm())  # lr = 1
    shared = everything[-2:]  # out.weight, out.bias
    fedsgd = client_update(model, x, lengths, targets, tlens)
    assert moved > 0.05  # measured 0.081
    assert _cos(shared[0], fedsgd[0]) < 0.8  # measured 0.635
    # an attacker that ignores the local steps cannot match the update even at the true features
    at_truth = gradient_distance(per_restart_gradients(model, x, lengths, targets, tlens, 1,
                                                       create_graph=False)[0], shared)
    assert float(at_truth[0]) > 0.2  # measured 0.366 (the unrolled attacker's is 0 there)

    cfg = AttackConfig(restarts=1, max_iter=15, patience=10**6, local_steps=2, local_lr=1.0)
    near = x + 0.1 * x.std() * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))  # 10% noise
    result = reconstruct(model, shared, tuple(x.shape), lengths, targets, tlens, cfg, x_init=near)
    assert _cos(result.features, x) >= 0.999  # the start's is 0.995; measured 0.9994
    assert float((result.features - x).abs().mean()) < 0.5 * float((near - x).abs().mean())  # measured 0.34

    cfg.max_iter = 40
    result = reconstruct(model, shared, tuple(x.shape), lengths, targets, tlens, cfg)  # from U[-1, 1]
    assert _cos(result.features, x) >= 0.97  # measured 0.992
    assert float((result.features - x).abs().mean()) < 0.2 * float((result.init - x).abs().mean())  # 0.090


runner = CliRunner()
CLI = ["--min-dur", "1000", "--max-dur", "2000", "--batch-end", "1", "--max-frames", "9", "--crop-transcript",
       "--max-iter", "3", "--seeds", "2", "--preset", "tiny"]


def test_cli_attacks_a_two_step_client(corpus, tmp_path):
    out = tmp_path / "atk"
    res = runner.invoke(app, ["attack", "ds1", "--corpus", str(corpus), *CLI, "--local-steps", "2",
                              "--local-lr", "0.5", "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2
    row = dict(zip(rows[0].split(","), rows[1].split(",")))
    assert int(row["iterations"]) == 3 and 0 < float(row["grad_distance"]) < 2
    settings = (out / "attack.log").read_text()
    assert '"local_steps": 2, "local_lr": 0.5' in settings  # the attacker's settings, as it ran them


@pytest.mark.parametrize("args,message", [
    (["--local-steps", "0"], "option --local-steps = 0 is out of range: it must be >= 1"),
    (["--local-steps", "-2"], "option --local-steps = -2 is out of range: it must be >= 1"),
    (["--local-lr", "0"], "option --local-lr = 0.0 is out of range: it must be > 0"),
    (["--local-lr", "-1"], "option --local-lr = -1.0 is out of range: it must be > 0"),
    (["--local-lr", "inf"], "option --local-lr = inf is not a finite number"),
    (["--local-steps", "2", "--run", "nowhere", "--round", "1", "--client", "c0"], "the run's config sets its client"),
    (["--local-steps", "2", "--no-transcripts"], "--no-transcripts with --local-steps > 1 is not implemented"),
])
def test_cli_refuses_bad_local_training(corpus, tmp_path, args, message):
    res = runner.invoke(app, ["attack", "ds1", "--corpus", str(corpus), *CLI, "--out", str(tmp_path / "x"), *args])
    assert res.exit_code == 1
    lines = res.output.splitlines()
    assert sum(ln.startswith("Error:") for ln in lines) == 1 and sum(ln.startswith("Hint:") for ln in lines) == 1
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x").exists()  # refused before any work


def test_sweep_takes_local_training_at_the_top_level_only(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"arch": "ds1", "local_steps": 2, "local_lr": 0.5}))
    assert load_sweep(path)["local_steps"] == 2
    path.write_text(yaml.safe_dump({"arch": "ds1", "attack": {"local_steps": 2}}))
    with pytest.raises(FedctlError, match="unknown attack setting") as info:
        load_sweep(path)
    assert "top level" in info.value.hint
