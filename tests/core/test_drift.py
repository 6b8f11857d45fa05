"""Client-drift strategies (SCAFFOLD, FedNova, FedBN, FedPer) against hand-computed values, and the per-client state
store they live on: memory budget and spill, bit-exact reload, checkpoint/resume, worker processes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedctl.core.client_state import ClientStateStore, entry_nbytes
from fedctl.core.config import FederationConfig
from fedctl.core.engine import is_volatile, run_federated, sample_clients
from fedctl.core.stateful import fednova_normaliser
from fedctl.core.strategies import build_strategy
from fedctl.core.task import LocalTraining
from fedctl.errors import FedctlError
from tests.core.bn_task import BatchNormTask
from tests.core.linear_task import LinearTask


class OneRowTask(LinearTask):
    """Client k holds n_k copies of one row (x_k, y_k): every micro-batch has the same gradient, so local SGD can be
    computed by hand whatever the data order. Client k has 16 + 8k items; plain SGD in float64."""

    def __init__(self, num_clients=3, dim=3, lr=0.1, steps=2, local_epochs=0.0, batch_size=8, momentum=0.0):
        super().__init__(num_clients=num_clients, dim=dim, n_per_client=16, steps=steps, lr=lr)
        g = torch.Generator().manual_seed(5)
        rows = torch.randn(num_clients, dim, generator=g, dtype=torch.float64)
        self.rows = rows
        self.targets = rows @ torch.randn(dim, 1, generator=g, dtype=torch.float64)
        self.x = [rows[k].expand(16 + 8 * k, dim).clone() for k in range(num_clients)]
        self.y = [self.targets[k].expand(16 + 8 * k, 1).clone() for k in range(num_clients)]
        self.xv, self.yv = rows, self.targets
        self.training = LocalTraining(lr=lr, batch_size=batch_size, local_updates=steps if not local_epochs else 0,
                                      local_epochs=local_epochs or 1.0, optimizer="sgd", momentum=momentum)

    def build_model(self):
        torch.manual_seed(self.seed)
        return nn.Linear(self.dim, 1).double()


def grad(w, b, x, y):
    """∇ of (x·w + b − y)² for one row (the mean over identical rows), by hand."""
    r = (x @ w.T + b - y).item()
    return 2 * r * x.reshape(1, -1), torch.tensor([2 * r], dtype=torch.float64)


def fed(**kw):
    return FederationConfig(**{**dict(rounds=2, clients=3, fraction=1.0, min_fit_clients=1, checkpoint_every=1,
                                      best_metric=None), **kw})


def init_wb(task):
    m = task.build_model()
    return m.weight.detach().clone(), m.bias.detach().clone()


# -- SCAFFOLD -----------------------------------------------------------------------------------------------------

def test_scaffold_control_variates_after_two_rounds_match_hand_computation():
    task = OneRowTask(num_clients=3, steps=2, lr=0.1)
    f = fed(rounds=2, fraction=0.5, min_fit_clients=2)  # |S| = 2 of N = 3 clients per round
    strategy = build_strategy("scaffold", {"server_learning_rate": 0.5})
    res = run_federated(task, strategy, f, seed=3)

    w, b = init_wb(task)
    c = [torch.zeros_like(w), torch.zeros_like(b)]
    ci = {k: [torch.zeros_like(w), torch.zeros_like(b)] for k in range(3)}
    lr, K, n = 0.1, 2, [16, 24, 32]
    for rnd in (1, 2):
        S = sample_clients(3, 0.5, 2, 3, rnd)
        assert len(S) == 2
        ys, dcs = {}, {}
        for k in S:
            yw, yb = w.clone(), b.clone()
            for _ in range(K):  # y ← y − η(g − c_i + c)
                gw, gb = grad(yw, yb, task.rows[k], task.targets[k])
                yw, yb = yw - lr * (gw - ci[k][0] + c[0]), yb - lr * (gb - ci[k][1] + c[1])
            new = [ci[k][0] - c[0] + (w - yw) / (K * lr), ci[k][1] - c[1] + (b - yb) / (K * lr)]  # option II
            dcs[k] = [new[0] - ci[k][0], new[1] - ci[k][1]]
            ci[k] = new
            ys[k] = (yw, yb)
        tot = sum(n[k] for k in S)
        mean_y = [sum(n[k] * ys[k][j] for k in S) / tot for j in (0, 1)]
        mean_dc = [sum(n[k] * dcs[k][j] for k in S) / tot for j in (0, 1)]
        w, b = w + 0.5 * (mean_y[0] - w), b + 0.5 * (mean_y[1] - b)
        c = [c[j] + (2 / 3) * mean_dc[j] for j in (0, 1)]
    state = res.model.state_dict()
    torch.testing.assert_close(state["weight"], w, rtol=0, atol=1e-12)
    torch.testing.assert_close(state["bias"], b, rtol=0, atol=1e-12)
    torch.testing.assert_close(strategy.c["weight"], c[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(strategy.c["bias"], c[1], rtol=0, atol=1e-12)
    assert float(c[0].abs().sum()) > 0.1  # the check is not vacuous
    trained = set(sample_clients(3, 0.5, 2, 3, 1)) | set(sample_clients(3, 0.5, 2, 3, 2))
    assert len(trained) == 3  # every client trained at least once; the store holds exactly their c_i
    # (the store itself is closed with the run; its entries were checked through c, which sums them)


def test_scaffold_with_dp_client_mode_runs_and_server_mode_is_refused():
    from fedctl.core.strategies.dp import wrap_dp

    with pytest.raises(FedctlError, match="cannot wrap strategy scaffold: it also averages each client's control"):
        wrap_dp(build_strategy("scaffold"), {"mode": "server"}, num_clients=3, fraction=1.0, min_fit_clients=1, seed=0)
    strategy = wrap_dp(build_strategy("scaffold"), {"mode": "client", "noise_multiplier": 0.5, "clipping_norm": 1.0},
                       num_clients=3, fraction=1.0, min_fit_clients=1, seed=0)
    res = run_federated(OneRowTask(), strategy, fed(prune=0.3), seed=0)
    fits = [r for r in res.history if r["type"] == "fit"]
    assert [r["clients"] for r in fits] == [3, 3] and fits[-1]["dp_epsilon"] > 0
    assert all(torch.isfinite(v).all() for v in strategy.inner.c.values())
    assert any(float(v.abs().sum()) > 0 for v in strategy.inner.c.values())


# -- FedNova ------------------------------------------------------------------------------------------------------

def test_fednova_normaliser_closed_forms():
    assert fednova_normaliser(3) == 3.0
    counter, a = 0.0, 0.0
    for _ in range(3):  # Flower Baselines' fednova recursion: counter ← ρ·counter + 1; a += counter
        counter = 0.9 * counter + 1
        a += counter
    assert fednova_normaliser(3, momentum=0.9) == pytest.approx(a, rel=1e-12) == pytest.approx(5.61, rel=1e-12)
    a = 0.0
    for _ in range(4):  # ProxSGD: a ← (1 − ημ)·a + 1
        a = (1 - 0.05) * a + 1
    assert fednova_normaliser(4, proximal=0.05) == pytest.approx(a, rel=1e-12)
    with pytest.raises(FedctlError, match="momentum and a proximal term"):
        fednova_normaliser(4, momentum=0.9, proximal=0.05)


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_fednova_with_different_local_step_counts_matches_hand_computation(momentum):
    # one local epoch in micro-batches of 8: client k (16 + 8k items) takes τ_k = 2, 3, 4 steps
    task = OneRowTask(num_clients=3, local_epochs=1.0, batch_size=8, lr=0.05, momentum=momentum)
    res = run_federated(task, build_strategy("fednova"), fed(rounds=2), seed=1)
    w, b = init_wb(task)
    n = [16, 24, 32]
    taus = [2, 3, 4]
    for _ in (1, 2):
        d, a = {}, {}
        for k in range(3):
            yw, yb = w.clone(), b.clone()
            vw, vb = torch.zeros_like(w), torch.zeros_like(b)
            for _ in range(taus[k]):  # torch's SGD momentum: v ← ρv + g; y ← y − ηv
                gw, gb = grad(yw, yb, task.rows[k], task.targets[k])
                vw, vb = momentum * vw + gw, momentum * vb + gb
                yw, yb = yw - 0.05 * vw, yb - 0.05 * vb
            rho, t = momentum, taus[k]
            a[k] = t if rho == 0 else (t - rho * (1 - rho**t) / (1 - rho)) / (1 - rho)
            d[k] = ((w - yw) / a[k], (b - yb) / a[k])
        p = [nk / sum(n) for nk in n]
        tau_eff = sum(p[k] * a[k] for k in range(3))
        w = w - tau_eff * sum(p[k] * d[k][0] for k in range(3))
        b = b - tau_eff * sum(p[k] * d[k][1] for k in range(3))
    fits = [r for r in res.history if r["type"] == "fit"]
    assert fits[0]["local_steps"] == 2 + 3 + 4
    assert fits[-1]["fednova_tau_eff"] == pytest.approx(tau_eff, rel=1e-12)
    torch.testing.assert_close(res.model.weight.detach(), w, rtol=0, atol=1e-12)
    torch.testing.assert_close(res.model.bias.detach(), b, rtol=0, atol=1e-12)
    fedavg = run_federated(OneRowTask(num_clients=3, local_epochs=1.0, batch_size=8, lr=0.05, momentum=momentum),
                           build_strategy("fedavg"), fed(rounds=2), seed=1)
    assert (fedavg.model.weight - res.model.weight).abs().max() > 1e-4  # unequal τ: not FedAvg


def test_fednova_with_equal_step_counts_is_fedavg():
    a = run_federated(OneRowTask(steps=3), build_strategy("fednova"), fed(), seed=2)
    b = run_federated(OneRowTask(steps=3), build_strategy("fedavg"), fed(), seed=2)
    torch.testing.assert_close(a.model.weight, b.model.weight, rtol=0, atol=1e-14)


# -- FedBN / FedPer -----------------------------------------------------------------------------------------------

BN_KEYS = ["0.weight", "0.bias", "0.running_mean", "0.running_var", "0.num_batches_tracked"]


def store_entries(run_dir):
    from safetensors.torch import load_file

    folder = run_dir / "client_state"
    return {p.name: load_file(p) for p in sorted(folder.iterdir())} if folder.is_dir() else {}


def snapshot_entries(run_dir, r):
    from safetensors.torch import load_file

    folder = run_dir / "checkpoints" / f"client_state_{r:03d}"
    return {p.name: load_file(p) for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("name,task_cls,local", [("fedbn", BatchNormTask, []), ("fedper", LinearTask, ["bias"])])
def test_local_tensors_stay_local_differ_per_client_and_survive_resume_bit_for_bit(tmp_path, name, task_cls, local):
    from fedctl.core.checkpoint import load_checkpoint

    keys = BN_KEYS if name == "fedbn" else ["bias"]
    f = dict(rounds=4, clients=3, local_keys=local, client_state_memory=0, eval_clients=True)
    full = run_federated(task_cls(num_clients=3, steps=3), build_strategy(name), fed(**f), seed=4,
                         run_dir=tmp_path / "full")
    init = task_cls(num_clients=3).build_model().state_dict()
    # never on the server: the global state (checkpoint "model") lacks them, and the final model keeps the init values
    ckpt = load_checkpoint(tmp_path / "full" / "checkpoints" / "round_004.pt")
    assert not set(keys) & set(ckpt["model"]) and set(ckpt["model"])
    for k in keys:
        assert torch.equal(full.model.state_dict()[k], init[k])
    # differ per client, and moved away from the init
    snap = snapshot_entries(tmp_path / "full", 4)
    assert len(snap) == 3
    for k in keys:
        values = [e[f"local/{k}"] for e in snap.values()]
        if values[0].is_floating_point():
            assert not torch.equal(values[0], values[1]) and not torch.equal(values[1], values[2])
            assert not any(torch.equal(v, init[k]) for v in values)
    # personalised evaluation: the global record is the example-weighted mean of the client rows
    evals = [r for r in full.history if r["type"] == "eval" and r["round"] == 4]
    head, rows = evals[0], evals[1:]
    assert head["personalised"] is True and len(rows) == 3
    task = task_cls(num_clients=3)
    n = [task.num_examples(r["client_id"]) for r in rows]
    assert head["val_loss"] == pytest.approx(sum(ni * r["val_loss"] for ni, r in zip(n, rows)) / sum(n), rel=1e-12)
    # resume after round 2 reaches the same state bit for bit (global, client tensors, metrics)
    run_federated(task_cls(num_clients=3, steps=3), build_strategy(name), fed(**{**f, "rounds": 2}), seed=4,
                  run_dir=tmp_path / "half")
    resumed = run_federated(task_cls(num_clients=3, steps=3), build_strategy(name), fed(**f), seed=4,
                            run_dir=tmp_path / "half", resume=True)
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    other = snapshot_entries(tmp_path / "half", 4)
    assert snap.keys() == other.keys()
    for cid in snap:
        for k in snap[cid]:
            assert torch.equal(snap[cid][k], other[cid][k]) and snap[cid][k].dtype == other[cid][k].dtype
    strip = lambda h: [{k: v for k, v in r.items() if not is_volatile(k)} for r in h]  # noqa: E731
    assert strip(full.history) == strip(resumed.history)


def test_bad_local_keys_and_fedbn_without_batchnorm_are_refused_by_name():
    with pytest.raises(FedctlError, match="local_keys pattern 'head.\\*' matches no shared tensor") as exc:
        run_federated(LinearTask(), build_strategy("fedper"), fed(local_keys=["head.*"]), seed=0)
    assert "weight, bias" in exc.value.hint
    with pytest.raises(FedctlError, match="fedper needs federation.local_keys"):
        run_federated(LinearTask(), build_strategy("fedper"), fed(), seed=0)
    with pytest.raises(FedctlError, match="fedbn: the model has no BatchNorm layer") as exc:
        run_federated(LinearTask(), build_strategy("fedbn"), fed(), seed=0)
    assert "fedavg" in exc.value.hint
    with pytest.raises(FedctlError, match="nothing would travel"):
        run_federated(LinearTask(), build_strategy("fedavg"), fed(local_keys=["*"]), seed=0)


# -- the store ----------------------------------------------------------------------------------------------------

def test_store_respects_its_memory_budget_and_reloads_bit_identically(tmp_path):
    g = torch.Generator().manual_seed(0)
    entries = {f"c{i}": {"scaffold/w": torch.randn(100, generator=g), "local/n": torch.tensor(7 * i),
                         "local/h": torch.randn(10, generator=g).to(torch.bfloat16)} for i in range(5)}
    size = entry_nbytes(entries["c0"])
    store = ClientStateStore(tmp_path / "cs", memory_bytes=int(2.5 * size))
    for cid, e in entries.items():
        store.put(cid, {k: v.clone() for k, v in e.items()})
        assert store.in_memory_bytes <= store.memory_bytes
    assert store.spills == 3 and store.peak_memory_bytes <= int(2.5 * size)
    assert sorted(p.name for p in (tmp_path / "cs").iterdir()) == [f"c{i}.safetensors" for i in range(3)]
    for cid, e in entries.items():  # reload (c0..c2 from disk), spilling others in turn
        got = store.get(cid)
        assert got.keys() == e.keys()
        for k in e:
            assert got[k].dtype == e[k].dtype and torch.equal(got[k], e[k])
        assert store.in_memory_bytes <= store.memory_bytes
    # a snapshot holds every entry; later puts do not change it; restore rebuilds from it
    store.snapshot(tmp_path / "snap")
    store.put("c0", {"scaffold/w": torch.zeros(100)})
    (tmp_path / "cs" / "junk.safetensors").write_bytes(b"killed mid-round")
    store.restore(tmp_path / "snap", [f"c{i}" for i in range(5)])
    assert not (tmp_path / "cs" / "junk.safetensors").exists()
    assert torch.equal(store.get("c0")["scaffold/w"], entries["c0"]["scaffold/w"])
    zero = ClientStateStore(tmp_path / "z", memory_bytes=0)
    zero.put("a", entries["c1"])
    assert zero.in_memory_bytes == 0 and torch.equal(zero.get("b") or torch.tensor(1), torch.tensor(1))


def test_scaffold_checkpoint_resume_with_spilled_state_is_bit_exact_even_after_a_kill_mid_round(tmp_path):
    f = dict(rounds=4, clients=4, fraction=0.5, min_fit_clients=2, client_state_memory=0)  # spills every entry
    full = run_federated(LinearTask(steps=3), build_strategy("scaffold"), fed(**f), seed=7, run_dir=tmp_path / "a")
    run_federated(LinearTask(steps=3), build_strategy("scaffold"), fed(**{**f, "rounds": 2}), seed=7,
                  run_dir=tmp_path / "b")
    live = tmp_path / "b" / "client_state"
    assert len(list(live.iterdir())) >= 2  # spilled to files
    for p in live.iterdir():  # a run killed mid-round 3 left newer client files behind (written atomically:
        p.unlink()             # a new file replaces the name; fedctl never writes a client file in place)
        p.write_bytes(b"partial")
    (live / "client_9.safetensors").write_bytes(b"partial")
    resumed = run_federated(LinearTask(steps=3), build_strategy("scaffold"), fed(**f), seed=7,
                            run_dir=tmp_path / "b", resume=True)
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    sa, sb = store_entries(tmp_path / "a"), store_entries(tmp_path / "b")
    assert sa.keys() == sb.keys() and sa
    for cid in sa:
        assert all(torch.equal(sa[cid][k], sb[cid][k]) for k in sa[cid])


def test_kept_optimizer_state_lives_in_the_store_and_resumes(tmp_path):
    f = dict(rounds=3, clients=2, keep_optimizer_state=True, client_state_memory=0)
    full = run_federated(LinearTask(num_clients=2), build_strategy("fedavg"), fed(**f), seed=1, run_dir=tmp_path / "a")
    entries = snapshot_entries(tmp_path / "a", 3)
    assert set(next(iter(entries.values()))) == {"optim/0/step", "optim/0/exp_avg", "optim/0/exp_avg_sq",
                                                 "optim/1/step", "optim/1/exp_avg", "optim/1/exp_avg_sq"}
    run_federated(LinearTask(num_clients=2), build_strategy("fedavg"), fed(**{**f, "rounds": 1}), seed=1,
                  run_dir=tmp_path / "b")
    resumed = run_federated(LinearTask(num_clients=2), build_strategy("fedavg"), fed(**f), seed=1,
                            run_dir=tmp_path / "b", resume=True)
    assert all(torch.equal(v, resumed.model.state_dict()[k]) for k, v in full.model.state_dict().items())


def test_scaffold_workers_1_and_2_are_bit_identical():
    from tests.core.test_parallel import assert_same, parallel_run

    torch.set_num_threads(1)
    f = fed(rounds=3, clients=4, fraction=0.5, min_fit_clients=2, client_state_memory=30)  # one entry in memory
    reference = run_federated(LinearTask(steps=3), build_strategy("scaffold"), f, seed=11)
    res = parallel_run(LinearTask(steps=3), build_strategy("scaffold"), f, 2)
    assert_same(reference, res)
    fedbn = fed(rounds=2, clients=3, client_state_memory=0)
    assert_same(run_federated(BatchNormTask(num_clients=3), build_strategy("fedbn"), fedbn, seed=11),
                parallel_run(BatchNormTask(num_clients=3), build_strategy("fedbn"), fedbn, 2))
