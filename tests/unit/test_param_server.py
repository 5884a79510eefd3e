"""Parameter server pure parts: shard plan, gradient wire formats, the staleness gate,
the push optimizer, and the recipe checks (no Ray)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from rayeffi.cli import main
from rayeffi.param_server import StalenessGate, decode_gradients, encode_gradients, shard_plan
from rayeffi.param_server.worker import PushOptimizer
from rayeffi.recipe import validate_recipe


def test_shard_plan_balances_whole_tensors_deterministically():
    sizes = {"a.weight": 8192, "a.bias": 128, "b.weight": 8192, "b.bias": 64, "c.weight": 640, "c.bias": 10}
    plan = shard_plan(sizes, 2)
    assert sorted(n for shard in plan for n in shard) == sorted(sizes)  # each tensor exactly once
    assert plan == shard_plan(dict(sizes), 2)
    loads = [sum(sizes[n] for n in shard) for shard in plan]
    assert abs(loads[0] - loads[1]) <= 640  # greedy LPT: within the third-largest tensor
    assert plan == [["a.weight", "c.weight"], ["a.bias", "b.weight", "b.bias", "c.bias"]]  # model order inside
    with pytest.raises(ValueError, match="num_servers 7"):
        shard_plan(sizes, 7)


def test_bf16_and_fp16_wire_round_trip_in_fp32():
    torch.manual_seed(0)
    grads = {"w": torch.randn(64, 32) * 1e-3, "b": torch.randn(32) * 50}
    for dtype, rtol in (("fp32", 0), ("bf16", 2 ** -8), ("fp16", 2 ** -11)):
        decoded = decode_gradients(encode_gradients(grads, dtype))
        for name, grad in grads.items():
            assert decoded[name].dtype == torch.float32
            torch.testing.assert_close(decoded[name], grad, rtol=rtol, atol=0)


def test_fp16_wire_scaling_keeps_gradients_a_plain_cast_flushes_to_zero():
    tiny = {"w": torch.full((16,), 3e-9)}  # below FP16's smallest subnormal (6e-8)
    assert torch.count_nonzero(tiny["w"].half()) == 0
    encoded = encode_gradients(tiny, "fp16")
    assert encoded["w"][0].dtype == np.float16  # NumPy on the wire
    torch.testing.assert_close(decode_gradients(encoded)["w"], tiny["w"], rtol=2 ** -11, atol=0)


def _simulate(num_workers: int, bound: int | None, steps: int, seed: int) -> list[int]:
    """Workers pull, compute for a random time, push; the gate decides which pushes apply."""
    rng = random.Random(seed)
    gate, version, applied = StalenessGate(bound), 0, []
    base = {}
    for worker in range(num_workers):
        gate.on_pull(worker, version)
        base[worker] = version
    ready = set()  # computed, push waiting for the gate
    while len(applied) < steps:
        computing = [w for w in range(num_workers) if w not in ready]
        if computing:  # a skewed clock: worker 0 is five times as fast
            ready.add(rng.choices(computing, weights=[5 if w == 0 else 1 for w in computing])[0])
        admissible = [w for w in ready if gate.can_apply(w, version)]
        if not admissible:
            assert computing, "deadlock: every worker waits on the gate"
            continue
        worker = rng.choice(admissible)
        applied.append(gate.on_apply(worker, version, base[worker]))
        assert applied[-1] == version - base[worker]
        version += 1
        ready.discard(worker)
        gate.on_pull(worker, version)
        base[worker] = version
    return applied


@pytest.mark.parametrize(("num_workers", "bound"), [(2, 1), (3, 2), (4, 3), (4, 6)])
def test_staleness_gate_holds_its_bound_without_deadlock(num_workers, bound):
    for seed in range(5):
        staleness = _simulate(num_workers, bound, 300, seed)
        assert max(staleness) <= bound
        assert max(staleness) == bound  # the fast worker really was held back at the bound


def test_unbounded_gate_lets_the_fast_worker_run_ahead():
    assert max(_simulate(3, None, 300, 0)) > 6


def test_gate_forgets_a_dead_worker_and_falls_back_to_the_tagged_version():
    gate = StalenessGate(1)
    gate.on_pull(0, 0)
    gate.on_pull(1, 0)
    assert gate.on_apply(0, 0, tagged_base=0) == 0
    gate.on_pull(0, 1)
    assert not gate.can_apply(0, 1)  # worker 1's gradient (base 0) would reach staleness 2
    gate.forget(1)
    assert gate.can_apply(0, 1)
    assert gate.on_apply(1, 5, tagged_base=3) == 2  # unknown to this gate: the worker's own tag


def test_push_optimizer_accrues_gradients_and_makes_the_local_update():
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = PushOptimizer([weight], lr=0.5)
    for grad in (torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 0.0, -1.0])):
        weight.grad = grad.clone()
        optimizer.step()
    torch.testing.assert_close(weight.detach(), torch.tensor([0.0, 0.0, 0.0]))  # 1 - 0.5 * (sum of grads)
    accrued = optimizer.take_accrued()
    torch.testing.assert_close(accrued[weight], torch.tensor([2.0, 2.0, 2.0]))
    assert optimizer.take_accrued() == {}


def _ps_recipe(parallel=None, **sections):
    return {"parallel": {"strategy": "param_server", "num_servers": 2, **(parallel or {})},
            "scaling": {"resources_per_worker": {"CPU": 0.5}}, **sections,
            "stages": [{"name": "train", "kind": "train", "epochs": 1}]}


def test_parallel_num_workers_moves_into_scaling_and_smoke_can_shrink_it():
    from rayeffi.recipe import smoke_recipe

    recipe = validate_recipe({**_ps_recipe({"num_workers": 4}), "data": {"batch_size": 64}})
    stage = recipe.stages[0]
    assert stage.scaling.num_workers == 4 and stage.parallel.num_workers is None
    assert smoke_recipe(recipe).stages[0].scaling.num_workers == 2
    assert stage.parallel.resolved_server_optimizer(0.0) == "sgd"
    assert stage.parallel.resolved_gradient_dtype("bf16") == "bf16"


BAD = {
    "worker counts disagree": (_ps_recipe({"num_workers": 4}, scaling={"num_workers": 2}),
                               "parallel.num_workers 4 and scaling.num_workers 2 disagree"),
    "local mode": (_ps_recipe(scaling={"num_workers": 0}), "param_server' needs worker actors"),
    "staleness in sync": (_ps_recipe({"mode": "sync", "max_staleness": 3}), "max_staleness applies to mode 'async'"),
    "sync with push_every": (_ps_recipe({"mode": "sync", "push_every": 2}), "mode 'sync' pulls and pushes every step"),
    "fetch does not divide push": (_ps_recipe({"fetch_every": 2, "push_every": 3}), "must divide parallel.push_every"),
    "bound below workers": (_ps_recipe({"max_staleness": 0}), "max_staleness 0 is below num_workers - 1"),
    "adam on servers": (_ps_recipe(optimizer={"name": "adam", "lr": 0.01}), "not optimizer.name 'adam'"),
    "momentum without momentum": (_ps_recipe({"server_optimizer": "momentum"}), "needs optimizer.momentum > 0"),
    "fp16-master": (_ps_recipe(precision="fp16-master"), "servers already hold the FP32 masters"),
    "unknown key": (_ps_recipe({"num_shards": 2}), "unknown key 'parallel.num_shards'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_param_server_recipes_exit_2_naming_the_key(case, tmp_path, capsys):
    import yaml

    raw, expected = BAD[case]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
