import math

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from medray.train.modalities.image import augment_images
from medray.train.modalities.signal import augment_signals
from medray.train.steps import (class_weights, epoch_metrics, gather_predictions, predict, share_of_rows,
                                warmup_cosine)


def test_warmup_then_cosine():
    factor = warmup_cosine(total_steps=10, warmup_steps=2)
    assert [round(factor(s), 4) for s in (0, 1)] == [0.5, 1.0]
    assert factor(2) == 1.0
    assert math.isclose(factor(6), 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factor(10) == 0.0


def test_class_weights_are_inverse_frequency():
    torch.testing.assert_close(class_weights([30, 10]), torch.tensor([40 / 60, 40 / 20]))


def test_augmentation_keeps_shape_and_content():
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    out = augment_images(images, torch.Generator().manual_seed(0), max_shift=1)
    assert out.shape == images.shape
    # Shifts by at most one pixel: the centre 4x4 of each image is preserved up to a flip/shift.
    assert set(out[0, 0, 2:4, 2:4].flatten().tolist()) <= set(images[0].flatten().tolist())


def test_signal_augmentation_keeps_shape_and_repeats_under_a_seed():
    signals = torch.randn(4, 20, 2, generator=torch.Generator().manual_seed(1))

    def augmented(seed):
        return augment_signals(signals, torch.Generator().manual_seed(seed))

    out = augmented(0)
    assert out.shape == signals.shape and out.dtype == signals.dtype
    assert torch.equal(out, augmented(0))
    assert not torch.equal(out, augmented(1))
    assert not torch.equal(out, signals)


def test_signal_shift_moves_each_series_within_max_shift_and_repeats_its_edges():
    ramp = torch.arange(10, dtype=torch.float32)[None, :, None].repeat(3, 1, 2)
    out = augment_signals(ramp, torch.Generator().manual_seed(0), max_scale=0.0, max_shift=2,
                          noise_std=0.0)
    for series in out:
        shift = int(series[5, 0] - 5)
        assert abs(shift) <= 2
        torch.testing.assert_close(series[:, 1], series[:, 0])  # leads move together
        torch.testing.assert_close(series[:, 0], (torch.arange(10) + shift).clamp(0, 9).float())


def test_signal_gain_is_one_factor_per_series_within_max_scale():
    ones = torch.ones(50, 8, 1)
    out = augment_signals(ones, torch.Generator().manual_seed(0), max_scale=0.1, max_shift=0,
                          noise_std=0.0)
    gains = out[:, 0, 0]
    assert torch.equal(out, gains[:, None, None].expand_as(out))
    assert gains.min() >= 0.9 and gains.max() <= 1.1 and gains.std() > 0


def test_epoch_metrics_match_hand_computation():
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    labels = np.array([0, 1, 0, 1])
    metrics = epoch_metrics(logits, labels)
    assert metrics["val_accuracy"] == 0.5
    # positive scores: p1 = [0.12, 0.88, 0.73, 0.27]; pairs (pos, neg): 0.88>0.12, 0.88>0.73, 0.27>0.12, 0.27<0.73
    assert metrics["val_auroc"] == 0.75
    expected = float(torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)))
    assert math.isclose(metrics["val_loss"], expected, rel_tol=1e-6)


# Validation shared across workers -----------------------------------------------------
VAL_ROWS = 11  # odd, with a last batch of 1 row: one worker's share of it is empty


def _val_batches():
    inputs = torch.arange(VAL_ROWS * 3, dtype=torch.float32).reshape(VAL_ROWS, 3) / 10
    labels = torch.arange(VAL_ROWS) % 2
    return [(inputs[i:i + 5], labels[i:i + 5]) for i in range(0, VAL_ROWS, 5)]


def _scorer() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(3, 2)


def _validation_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    logits, labels = gather_predictions(*predict(_scorer(), share_of_rows(_val_batches(), rank, 2),
                                                 torch.device("cpu")))
    np.savez(f"{out_dir}/rank{rank}.npz", logits=logits, labels=labels)
    dist.destroy_process_group()


def test_two_workers_each_score_a_share_and_both_get_every_validation_row(tmp_path):
    expected_logits, expected_labels = predict(_scorer(), _val_batches(), torch.device("cpu"))
    mine = list(share_of_rows(_val_batches(), 1, 2))
    assert [len(y) for _, y in mine] == [2, 2]  # rows 1, 3 | 6, 8; the last batch's one row is rank 0's
    mp.spawn(_validation_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    order = np.argsort(np.r_[np.arange(0, 5, 2), np.arange(5, 10, 2), [10], np.arange(1, 5, 2), np.arange(6, 10, 2)])
    for rank in (0, 1):
        gathered = np.load(tmp_path / f"rank{rank}.npz")
        assert gathered["labels"].shape == (VAL_ROWS,)
        np.testing.assert_allclose(gathered["logits"][order], expected_logits, rtol=1e-6)
        np.testing.assert_array_equal(gathered["labels"][order], expected_labels)
    # Without a process group: one worker, the rows as given.
    alone = gather_predictions(*predict(_scorer(), share_of_rows(_val_batches(), 0, 1), torch.device("cpu")))
    np.testing.assert_array_equal(alone[1], expected_labels)
