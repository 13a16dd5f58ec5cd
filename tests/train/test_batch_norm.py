"""GlobalBatchNorm: two gloo processes, each with part of a batch, train exactly as one
process with the whole batch does (outputs, gradients and running statistics)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from medray.train.models.batch_norm import GlobalBatchNorm, global_batch_norm

ROWS = (5, 3)  # unequal shares: the moments must weigh each worker by its rows


def network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 6), nn.BatchNorm1d(6), nn.Linear(6, 1))


def batch() -> torch.Tensor:
    return torch.randn(sum(ROWS), 2, 6, 6, generator=torch.Generator().manual_seed(1)) * 3 + 1


def one_step(model: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    out = model(inputs)
    (out ** 2).sum().backward()  # summed over rows: the workers' losses add up to the whole batch's
    return out.detach(), [p.grad for p in model.parameters()]


def _worker(rank: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=len(ROWS))
    model = global_batch_norm(network())
    shard = batch().split(list(ROWS))[rank]
    out, grads = one_step(model, shard)
    for grad in grads:
        dist.all_reduce(grad)  # what DDP does with the gradients (as a sum here)
    torch.save({"out": out, "grads": grads, "state": model.state_dict()}, f"{out_file}.{rank}")
    dist.destroy_process_group()


def test_two_workers_with_global_batch_norm_match_one_process_with_the_whole_batch(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path / "result")), nprocs=len(ROWS), join=True)
    reference = network()
    expected_out, expected_grads = one_step(reference, batch())
    results = [torch.load(tmp_path / f"result.{rank}") for rank in range(len(ROWS))]
    torch.testing.assert_close(torch.cat([r["out"] for r in results]), expected_out, rtol=1e-5, atol=1e-5)
    for result in results:
        for grad, expected in zip(result["grads"], expected_grads):
            torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-5)
        for key, value in reference.state_dict().items():  # running moments, same keys as plain BatchNorm
            torch.testing.assert_close(result["state"][key], value, rtol=1e-5, atol=1e-6)


def test_without_a_process_group_it_is_plain_batch_norm_and_swaps_in_place():
    model = network()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    swapped = global_batch_norm(network())
    assert sum(isinstance(m, GlobalBatchNorm) for m in swapped.modules()) == 2
    assert not any(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) for m in swapped.modules())
    assert swapped.state_dict().keys() == before.keys()
    torch.testing.assert_close(swapped(batch()), model(batch()))
    model.eval(), swapped.eval()
    torch.testing.assert_close(swapped(batch()), model(batch()))
