import math

import numpy as np
import torch

from train.steps import augment_images, class_weights, epoch_metrics, warmup_cosine


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


def test_epoch_metrics_match_hand_computation():
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    labels = np.array([0, 1, 0, 1])
    metrics = epoch_metrics(logits, labels)
    assert metrics["val_accuracy"] == 0.5
    # positive scores: p1 = [0.12, 0.88, 0.73, 0.27]; pairs (pos, neg): 0.88>0.12, 0.88>0.73, 0.27>0.12, 0.27<0.73
    assert metrics["val_auroc"] == 0.75
    expected = float(torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)))
    assert math.isclose(metrics["val_loss"], expected, rel_tol=1e-6)
