"""Model families: shapes, parameter counts, values against independent references,
learning, rebuilding from a stored config, attention weights, and config errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medray.cluster.errors import ConfigError
from support.training import train_to_accuracy
from medray.train.models import (
    FAMILIES,
    InputSpec,
    ModelConfigError,
    build_model,
    build_model_from_config,
    model_config_for,
)

IMAGE_SMALL = InputSpec("image", (1, 28, 28))  # BreastMNIST
IMAGE_RGB = InputSpec("image", (3, 64, 64))
SIGNAL_1 = InputSpec("signal", (96, 1))  # ECG200
SIGNAL_3 = InputSpec("signal", (96, 3))
TABLE_13 = InputSpec("tabular", (13,))
TABLE_30 = InputSpec("tabular", (30,))
ICU_6 = InputSpec("timeseries", (48, 6, 3))  # 48 hourly steps of 6 variables
ICU_10 = InputSpec("timeseries", (12, 10, 3))

SPECS = {
    "image": [IMAGE_SMALL, IMAGE_RGB],
    "signal": [SIGNAL_1, SIGNAL_3],
    "tabular": [TABLE_13, TABLE_30],
    "timeseries": [ICU_6, ICU_10],
    "text": [InputSpec("text", (24,), 50), InputSpec("text", (16,), 300)],  # token ids, vocabularies
}
ALL_PRESETS = [(family, preset) for family, f in FAMILIES.items() for preset in f.presets]


def _specs(family, preset):
    """Inputs of every modality the preset takes."""
    return [spec for name in FAMILIES[family].preset_modalities[preset] for spec in SPECS[name]]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    # On a shared 2-core runner, two intra-op threads stall whenever another process
    # holds a core (a 0.1 s training step was seen taking 3 s); one thread is steady.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(family, preset, spec, num_classes=2, overrides=None, seed=0):
    torch.manual_seed(seed)
    return build_model(family, preset, spec, num_classes, overrides)


def _batch(spec, n, seed=0):
    if spec.modality == "text":  # token ids, the last quarter padding
        ids = torch.randint(1, spec.vocabulary, (n, *spec.shape), generator=torch.Generator().manual_seed(seed))
        ids[:, -spec.shape[0] // 4:] = 0
        return ids.float()
    x = torch.randn(n, *spec.shape, generator=torch.Generator().manual_seed(seed))
    if spec.modality == "timeseries":  # (value, mask, delta): a 0/1 mask, delta >= 0
        x[..., 1] = (x[..., 1] > 0).float()
        x[..., 2] = x[..., 2].abs()
    return x


def _randomize(model, seed=0):
    """Seeded random values for every parameter and BatchNorm statistic, in float64, so a
    reference that wires anything differently cannot match by accident."""
    gen = torch.Generator().manual_seed(seed)
    model.double().eval()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen, dtype=tensor.dtype) + 0.5)
            else:
                tensor.copy_(0.3 * torch.randn(tensor.shape, generator=gen, dtype=tensor.dtype))
    return model


def _param_count(model):
    return sum(p.numel() for p in model.parameters())


# --- Shapes and sizes -------------------------------------------------------------


@pytest.mark.parametrize("family,preset", ALL_PRESETS)
def test_logits_have_one_row_per_example_and_one_column_per_class(family, preset):
    for spec in _specs(family, preset):
        model = _model(family, preset, spec, num_classes=3).eval()
        with torch.no_grad():
            logits = model(_batch(spec, 5))
        assert logits.shape == (5, 3), (spec, logits.shape)
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize("preset", ["seed", "resnet"])
@pytest.mark.parametrize("shape", [(3, 224, 224), (1, 28, 40), (1, 8, 8)])
def test_cnn_takes_large_small_and_non_square_images(preset, shape):
    model = _model("cnn", preset, InputSpec("image", shape)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, *shape)).shape == (2, 2)


def test_seed_cnn_pools_only_maps_larger_than_max_spatial():
    small = _model("cnn", "seed", IMAGE_SMALL)  # 28 -> 14 -> 7 -> 3: flattened as is
    large = _model("cnn", "seed", InputSpec("image", (3, 224, 224)))  # 28x28 map -> 4x4
    assert not hasattr(small.features, "shrink")
    assert small.head[1].in_features == 128 * 3 * 3
    assert large.features.shrink.output_size == (4, 4)
    assert large.head[1].in_features == 128 * 4 * 4


def test_resnet_stem_downsamples_only_images_that_stay_at_least_28_wide():
    def stem(side):
        return model_config_for("cnn", "resnet", InputSpec("image", (3, side, side)), 2).stem

    assert (stem(28), stem(64), stem(111), stem(112), stem(224)) == (
        "plain", "plain", "plain", "strided", "strided"
    )
    forced = model_config_for("cnn", "resnet", IMAGE_SMALL, 2, {"stem": "strided"})
    assert forced.stem == "strided"


# Counted by hand from the layer list (weights + biases; BatchNorm: 2 per channel).
# cnn seed 28x28: conv 1*32*9+32, 32*64*9+64, 64*128*9+128; dense 1152*512+512; head 512*2+2.
# cnn seed 64x64 RGB: conv1 3*32*9+32; the 8x8 map is pooled to 4x4: dense 2048*512+512.
# cnn resnet: stem 288+64; stage1 2*(2*9216+128); stage2 (18432+36864+256+2048+128)
#   + (73728+256); stage3 (73728+147456+512+8192+256) + (294912+512); head 258.
# rnn seed: LSTM 4*128*(C+128) + 8*128; dense 128*64+64; head 130.
# rnn bigru: GRU layer1 2*(3*64*(C+64)+6*64), layer2 2*(3*64*(128+64)+6*64);
#   dense 256*64+64; head 130.
# attention seed: tokenizer 2*F*128; MHA(128) 4*128*128+4*128; LN 256; dense 128*64+64;
#   MHA(64) 4*64*64+4*64; LN 128; head 130.
# attention ft: tokenizer 2*F*64 + CLS 64; 3 blocks of MHA 16640 + FFN (64*170+170 +
#   85*64+64) + LNs (128 in the first block, 256 in the others); readout LN 128; head 130.
# cnn inception_time (C=1): block 1 module 1 has no bottleneck (one channel): convs
#   32*(39+19+9) + pool conv 32 + BN 256; modules 2-3 bottleneck 128*32, convs
#   32*32*67, pool conv 128*32, BN 256 (77,056 each); shortcut 128+256; block 2: three
#   modules of 77,056 and a 128*128+256 shortcut; head 258. C=3: module 1 gains a
#   3*32 bottleneck (convs 32*32*67), pool conv 96, shortcut 384+256.
# Time series (T, V, 3) with V=6: rnn seed and bigru read 18 channels per step, as above.
# rnn grud (H=64): input decay 2*V; hidden decay V*64+64; GRUCell 3*64*2V + 3*64*64 +
#   6*64; dense 64*64+64; head 130.
# attention time_transformer: tokenizer 3V*64+64; time embedding T*64; CLS 64; 2 blocks
#   as ft's (16640 + 11050 + 5504, LNs 128 then 256); readout LN 128; head 130.
EXPECTED_PARAMS = {
    ("cnn", "seed", IMAGE_SMALL): 684_034,
    ("cnn", "seed", IMAGE_RGB): 1_143_362,
    ("cnn", "resnet", IMAGE_SMALL): 695_010,
    ("cnn", "resnet", IMAGE_RGB): 695_586,
    ("cnn", "inception_time", SIGNAL_1): 404_994,
    ("cnn", "inception_time", SIGNAL_3): 471_874,
    ("rnn", "seed", SIGNAL_1): 75_458,
    ("rnn", "seed", SIGNAL_3): 76_482,
    ("rnn", "bigru", SIGNAL_1): 116_802,
    ("rnn", "bigru", SIGNAL_3): 117_570,
    ("attention", "seed", TABLE_13): 94_786,
    ("attention", "seed", TABLE_30): 99_138,
    ("attention", "ft_transformer", TABLE_13): 102_208,
    ("attention", "ft_transformer", TABLE_30): 104_384,
    ("rnn", "seed", ICU_6): 84_162,
    ("rnn", "bigru", ICU_6): 123_330,
    ("rnn", "grud", ICU_6): 19_726,
    ("attention", "time_transformer", ICU_6): 71_382,
}


@pytest.mark.parametrize("family,preset,spec", list(EXPECTED_PARAMS))
def test_parameter_count_matches_the_architecture(family, preset, spec):
    assert _param_count(_model(family, preset, spec)) == EXPECTED_PARAMS[family, preset, spec]


# --- Values under fixed weights ---------------------------------------------------


def test_seed_cnn_value_with_constant_weights():
    model = _model("cnn", "seed", IMAGE_SMALL).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(0.0 if name.endswith("bias") else 0.01 if "features" in name else 0.001)
        model.head[-1].bias.copy_(torch.tensor([0.0, 0.5]))
        logits = model(torch.ones(1, 1, 28, 28))
    # By hand: with all-ones input and positive weights, each 3x3 conv gives an interior
    # pixel (in_channels * 9) * input * w, and every 2x2 max-pool window holds an interior
    # pixel, so the pooled maps are uniform:
    #   9*0.01 = 0.09 -> 32*9*0.09*0.01 = 0.2592 -> 64*9*0.2592*0.01 = 1.492992 (3x3 map).
    # dense: 128*3*3 * 1.492992 * 0.001 = 1.719926784; head: 512 * that * 0.001 + bias.
    expected = 512 * 0.001 * 1.719926784
    torch.testing.assert_close(logits, torch.tensor([[expected, expected + 0.5]]))


def _resnet_reference(model, x):
    sd, blocks = model.state_dict(), model.config.blocks_per_stage

    def bn(h, prefix):
        return F.batch_norm(
            h, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"],
            sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], training=False, eps=1e-5,
        )

    h = F.relu(bn(F.conv2d(x, sd["features.stem.0.weight"], padding=1), "features.stem.1"))
    for stage in (1, 2, 3):
        for b in range(blocks):
            p = f"features.stage{stage}.{b}"
            stride = 2 if stage > 1 and b == 0 else 1
            out = F.conv2d(h, sd[f"{p}.conv1.weight"], stride=stride, padding=1)
            out = F.relu(bn(out, f"{p}.bn1"))
            out = bn(F.conv2d(out, sd[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
            if f"{p}.shortcut.0.weight" in sd:
                h = bn(F.conv2d(h, sd[f"{p}.shortcut.0.weight"], stride=stride), f"{p}.shortcut.1")
            h = F.relu(out + h)
    return F.linear(h.mean(dim=(2, 3)), sd["head.3.weight"], sd["head.3.bias"])


def test_resnet_matches_a_functional_reference():
    model = _randomize(_model("cnn", "resnet", IMAGE_SMALL))
    x = _batch(IMAGE_SMALL, 3).double()
    with torch.no_grad():
        torch.testing.assert_close(model(x), _resnet_reference(model, x))


def _inception_time_reference(model, x):
    """InceptionTime written out with torch.nn.functional from the state dict: per module
    a bottleneck (skipped on one channel), three long convolutions and a max-pooled 1x1
    branch, concatenated, BatchNorm, ReLU; a shortcut around every three modules."""
    sd = model.state_dict()

    def bn(h, prefix):
        return F.batch_norm(h, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"],
                            sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], training=False, eps=1e-5)

    h = x.transpose(1, 2)
    for block in (1, 2):
        p = f"features.block{block}"
        block_input = h
        for m in range(3):
            q = f"{p}.inception.{m}"
            narrowed = F.conv1d(h, sd[f"{q}.bottleneck.weight"]) if f"{q}.bottleneck.weight" in sd else h
            branches = [F.conv1d(narrowed, sd[f"{q}.convs.{i}.weight"], padding=k // 2)
                        for i, k in enumerate((39, 19, 9))]
            branches.append(F.conv1d(F.max_pool1d(h, 3, stride=1, padding=1), sd[f"{q}.pool_conv.weight"]))
            h = F.relu(bn(torch.cat(branches, dim=1), f"{q}.bn"))
        h = F.relu(h + bn(F.conv1d(block_input, sd[f"{p}.shortcut.0.weight"]), f"{p}.shortcut.1"))
    return F.linear(h.mean(dim=2), sd["head.3.weight"], sd["head.3.bias"])


@pytest.mark.parametrize("spec", [SIGNAL_1, SIGNAL_3])
def test_inception_time_matches_a_functional_reference(spec):
    model = _randomize(_model("cnn", "inception_time", spec))
    assert ("features.block1.inception.0.bottleneck.weight" in model.state_dict()) == (spec.shape[1] > 1)
    x = _batch(spec, 3).double()
    with torch.no_grad():
        torch.testing.assert_close(model(x), _inception_time_reference(model, x))
        # Convolutions and global pooling take any length, not only the trained one.
        shorter = x[:, :50]
        torch.testing.assert_close(model(shorter), _inception_time_reference(model, shorter))


def test_inception_time_groups_a_depth_that_is_not_a_multiple_of_three_into_a_last_shorter_block():
    model = _model("cnn", "inception_time", SIGNAL_1, overrides={"depth": 4})
    blocks = [len(model.features.block1.inception), len(model.features.block2.inception)]
    assert blocks == [3, 1] and not hasattr(model.features, "block3")
    assert model(_batch(SIGNAL_1, 2)).shape == (2, 2)


def _lstm_last_hidden(x, w_ih, w_hh, b_ih, b_hh):
    h = c = x.new_zeros(x.shape[0], w_hh.shape[1])
    for t in range(x.shape[1]):
        i, f, g, o = (x[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
    return h


def test_rnn_seed_reads_the_lstm_state_after_the_last_step():
    model = _randomize(_model("rnn", "seed", InputSpec("signal", (12, 2))))
    sd, x = model.state_dict(), _batch(InputSpec("signal", (12, 2)), 3).double()
    h = _lstm_last_hidden(
        x, *(sd[f"encoder.lstm.{k}_l0"] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    )
    dense = F.relu(F.linear(h, sd["head.0.weight"], sd["head.0.bias"]))
    expected = F.linear(dense, sd["head.3.weight"], sd["head.3.bias"])
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)


def _gru_outputs(x, w_ih, w_hh, b_ih, b_hh):
    h, outputs = x.new_zeros(x.shape[0], w_hh.shape[1]), []
    for t in range(x.shape[1]):
        xr, xz, xn = (x[:, t] @ w_ih.T + b_ih).chunk(3, dim=-1)
        hr, hz, hn = (h @ w_hh.T + b_hh).chunk(3, dim=-1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        h = (1 - z) * torch.tanh(xn + r * hn) + z * h
        outputs.append(h)
    return torch.stack(outputs, dim=1)


def test_bigru_pools_both_directions_of_every_step():
    spec = InputSpec("signal", (10, 3))
    model = _randomize(_model("rnn", "bigru", spec, overrides={"input_proj_size": 4}))
    sd, x = model.state_dict(), _batch(spec, 3).double()
    h = F.relu(F.linear(x, sd["encoder.project.0.weight"], sd["encoder.project.0.bias"]))
    for layer in range(2):
        def weights(suffix):
            keys = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            return [sd[f"encoder.gru.{k}_l{layer}{suffix}"] for k in keys]

        forward = _gru_outputs(h, *weights(""))
        backward = _gru_outputs(h.flip(1), *weights("_reverse")).flip(1)
        h = torch.cat([forward, backward], dim=-1)
    pooled = torch.cat([h.mean(dim=1), h.amax(dim=1)], dim=-1)
    dense = F.relu(F.linear(pooled, sd["head.0.weight"], sd["head.0.bias"]))
    expected = F.linear(dense, sd["head.3.weight"], sd["head.3.bias"])
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)


def test_bigru_conv_front_end_pools_time_before_the_gru():
    spec = InputSpec("signal", (12, 2))
    overrides = {"conv_channels": 5, "conv_kernel": 3, "conv_pool": 2}
    model = _randomize(_model("rnn", "bigru", spec, overrides=overrides))
    sd, x = model.state_dict(), _batch(spec, 3).double()
    h = F.conv1d(x.transpose(1, 2), sd["encoder.conv.0.weight"], sd["encoder.conv.0.bias"], padding=1)
    h = F.batch_norm(h, sd["encoder.conv.1.running_mean"], sd["encoder.conv.1.running_var"],
                     sd["encoder.conv.1.weight"], sd["encoder.conv.1.bias"])
    h = F.max_pool1d(F.relu(h), 2).transpose(1, 2)  # (3, 6, 5): half the steps
    seen = {}
    model.encoder.gru.register_forward_hook(lambda m, inputs, out: seen.update(x=inputs[0]))
    with torch.no_grad():
        model(x)
    torch.testing.assert_close(seen["x"], h)
    # conv 2*5*3+5, BatchNorm 2*5; the first GRU layer reads 5 channels instead of 2.
    plain = _model("rnn", "bigru", spec)
    assert _param_count(model) - _param_count(plain) == 35 + 10 + 2 * 3 * 64 * (5 - 2)


def test_bigru_stacks_conv_layers_before_one_pool():
    spec = InputSpec("signal", (12, 2))
    conv = {"conv_channels": 5, "conv_kernel": 3, "conv_pool": 2}
    one = _model("rnn", "bigru", spec, overrides=conv)
    two = _randomize(_model("rnn", "bigru", spec, overrides={**conv, "conv_layers": 2}))
    # The second layer reads 5 channels: conv 5*5*3+5, BatchNorm 2*5.
    assert _param_count(two) - _param_count(one) == 80 + 10
    sd, x = two.state_dict(), _batch(spec, 3).double()
    h = x.transpose(1, 2)
    for conv, norm in ((0, 1), (3, 4)):
        h = F.conv1d(h, sd[f"encoder.conv.{conv}.weight"], sd[f"encoder.conv.{conv}.bias"], padding=1)
        h = F.relu(F.batch_norm(h, sd[f"encoder.conv.{norm}.running_mean"], sd[f"encoder.conv.{norm}.running_var"],
                                sd[f"encoder.conv.{norm}.weight"], sd[f"encoder.conv.{norm}.bias"]))
    seen = {}
    two.encoder.gru.register_forward_hook(lambda m, inputs, out: seen.update(x=inputs[0]))
    with torch.no_grad():
        two(x)
    torch.testing.assert_close(seen["x"], F.max_pool1d(h, 2).transpose(1, 2))


def test_bigru_projects_the_conv_channels_when_both_are_on():
    spec = InputSpec("signal", (12, 2))
    model = _model("rnn", "bigru", spec, overrides={"conv_channels": 5, "input_proj_size": 4})
    assert model.encoder.project[0].in_features == 5
    assert model(_batch(spec, 3)).shape == (3, 2)


def _self_attention(h, sd, prefix, n_heads):
    """Multi-head self-attention over tokens (dim 1); returns output and head-mean weights."""
    B, T, D = h.shape
    q, k, v = F.linear(h, sd[f"{prefix}.in_proj_weight"], sd[f"{prefix}.in_proj_bias"]).chunk(3, -1)

    def heads(t):
        return t.reshape(B, T, n_heads, D // n_heads).transpose(1, 2)

    weights = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / (D // n_heads) ** 0.5, dim=-1)
    mixed = (weights @ heads(v)).transpose(1, 2).reshape(B, T, D)
    out = F.linear(mixed, sd[f"{prefix}.out_proj.weight"], sd[f"{prefix}.out_proj.bias"])
    return out, weights.mean(dim=1)


def _layer_norm(h, sd, prefix):
    return F.layer_norm(h, h.shape[-1:], sd[f"{prefix}.weight"], sd[f"{prefix}.bias"])


def test_attention_seed_matches_a_reference_with_features_as_tokens():
    model = _randomize(_model("attention", "seed", TABLE_13))
    sd, x = model.state_dict(), _batch(TABLE_13, 4).double()
    s0, s1 = "encoder.stages.0", "encoder.stages.1"
    tokens = x[:, :, None] * sd[f"{s0}.embed.weight"] + sd[f"{s0}.embed.bias"]  # (B, 13, 128)
    attended, _ = _self_attention(tokens, sd, f"{s0}.attention", 4)
    h = _layer_norm(tokens + attended, sd, f"{s0}.norm")
    h = F.relu(F.linear(h, sd[f"{s1}.embed.0.weight"], sd[f"{s1}.embed.0.bias"]))  # (B, 13, 64)
    attended, weights = _self_attention(h, sd, f"{s1}.attention", 4)
    h = _layer_norm(h + attended, sd, f"{s1}.norm")
    expected = F.linear(h.mean(dim=1), sd["head.weight"], sd["head.bias"])
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)
        torch.testing.assert_close(model.attention_weights(x), weights.mean(dim=1))


def test_ft_transformer_matches_a_reference_reading_the_cls_token():
    model = _randomize(_model("attention", "ft_transformer", TABLE_13))
    sd, x = model.state_dict(), _batch(TABLE_13, 4).double()
    tokens = x[:, :, None] * sd["encoder.tokenizer.weight"] + sd["encoder.tokenizer.bias"]
    h = torch.cat([tokens, sd["encoder.cls"].expand(4, 1, 64)], dim=1)  # CLS last
    for i in range(3):
        p = f"encoder.blocks.{i}"
        normed = h if i == 0 else _layer_norm(h, sd, f"{p}.attention_norm")
        attended, weights = _self_attention(normed, sd, f"{p}.attention", 8)
        h = h + attended
        value, gate = F.linear(_layer_norm(h, sd, f"{p}.ffn_norm"), sd[f"{p}.ffn.0.weight"],
                               sd[f"{p}.ffn.0.bias"]).chunk(2, dim=-1)
        h = h + F.linear(value * F.relu(gate), sd[f"{p}.ffn.3.weight"], sd[f"{p}.ffn.3.bias"])
    cls = F.relu(_layer_norm(h[:, -1], sd, "encoder.readout.0"))
    expected = F.linear(cls, sd["head.weight"], sd["head.bias"])
    from_cls = weights[:, -1, :-1]
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)
        torch.testing.assert_close(
            model.attention_weights(x), from_cls / from_cls.sum(dim=-1, keepdim=True)
        )


# --- Behaviour --------------------------------------------------------------------


@pytest.mark.parametrize("family,preset", ALL_PRESETS)
def test_same_seed_builds_the_same_model(family, preset):
    spec = _specs(family, preset)[0]
    a, b = _model(family, preset, spec, seed=7), _model(family, preset, spec, seed=7)
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(ta, tb), name
    other_seed = _model(family, preset, spec, seed=8)
    if family == "linear":
        # Logistic regression is convex: it starts at zero whatever the seed, so the
        # optimum it reaches does not depend on the draw.
        assert all(not p.any() for p in other_seed.parameters())
        return
    assert not torch.equal(next(a.parameters()), next(other_seed.parameters()))


# bigru trains on shorter series: its cost is per time step, and the length does not
# change the architecture.
OVERFIT_SPECS = {
    ("cnn", "seed"): IMAGE_SMALL,
    ("cnn", "resnet"): IMAGE_SMALL,
    ("cnn", "inception_time"): InputSpec("signal", (32, 1)),
    ("rnn", "seed"): SIGNAL_1,
    ("rnn", "bigru"): InputSpec("signal", (32, 1)),
    ("attention", "seed"): TABLE_13,
    ("attention", "ft_transformer"): TABLE_13,
    ("rnn", "grud"): InputSpec("timeseries", (16, 4, 3)),
    ("attention", "time_transformer"): InputSpec("timeseries", (16, 4, 3)),
}


@pytest.mark.parametrize("family,preset", list(OVERFIT_SPECS))
def test_overfits_a_tiny_batch(family, preset):
    """16 random examples with arbitrary labels: a model that can learn memorises them."""
    spec = OVERFIT_SPECS[family, preset]
    model = _model(family, preset, spec)
    x, y = _batch(spec, 16, seed=1), torch.arange(16) % 2
    accuracy, step = train_to_accuracy(model, x, y, lr=3e-3, target=1.0)
    assert accuracy == 1.0, f"{family}/{preset}: {accuracy:.0%} after {step} steps"


@pytest.mark.parametrize("family,preset", ALL_PRESETS)
def test_rebuilds_from_its_stored_config_and_weights(family, preset):
    spec = _specs(family, preset)[-1]
    model = _model(family, preset, spec)
    model.train()
    with torch.no_grad():
        model(_batch(spec, 8))  # moves BatchNorm statistics away from their initial values
    stored = json.loads(json.dumps(dataclasses.asdict(model.config)))  # as a checkpoint holds it
    torch.manual_seed(123)  # the rebuilt model must not depend on the seed it is built under
    rebuilt = build_model_from_config(family, stored)
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.config == model.config
    x = _batch(spec, 4, seed=2)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), rebuilt.eval()(x))


@pytest.mark.parametrize("preset", ["seed", "ft_transformer"])
def test_attention_weights_are_a_distribution_over_features_per_example(preset):
    model = _model("attention", preset, TABLE_30).eval()
    x = _batch(TABLE_30, 6)
    with torch.no_grad():
        weights = model.attention_weights(x)
    assert weights.shape == (6, 30)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(6))
    assert not torch.allclose(weights[0], weights[1])  # each example gets its own


@pytest.mark.parametrize("preset", ["seed", "resnet"])
def test_grad_cam_layer_yields_the_last_feature_map_and_its_gradient(preset):
    model = _model("cnn", preset, IMAGE_SMALL).eval()
    captured = {}

    def keep(module, inputs, output):
        output.retain_grad()
        captured["map"] = output

    model.grad_cam_layer().register_forward_hook(keep)
    model(_batch(IMAGE_SMALL, 2))[:, 1].sum().backward()
    assert captured["map"].shape == (2, 128, 7, 7)
    assert captured["map"].grad is not None and captured["map"].grad.abs().sum() > 0


def test_overrides_are_stored_as_plain_json_values():
    # As a search space or a YAML file may hand them over: numpy scalars, lists.
    overrides = {
        "channels": [np.int64(16), 32], "dropout": np.float32(0.25), "blocks_per_stage": np.int64(1)
    }
    config = model_config_for("cnn", "resnet", IMAGE_SMALL, 2, overrides)
    assert (config.channels, config.blocks_per_stage, config.dropout) == ((16, 32), 1, 0.25)
    assert json.loads(json.dumps(dataclasses.asdict(config)))["channels"] == [16, 32]
    model = build_model("cnn", "resnet", IMAGE_SMALL, 2, overrides)
    assert model(_batch(IMAGE_SMALL, 2)).shape == (2, 2)


# --- Errors a user can act on -----------------------------------------------------


RNN_SEED_96 = {"preset": "seed", "seq_len": 96, "in_channels": 1, "num_classes": 2}
CNN_SEED_28 = {"preset": "seed", "in_channels": 1, "height": 28, "width": 28, "num_classes": 2}


def _bad(id, call, *needles):
    return pytest.param(call, needles, id=id)


@pytest.mark.parametrize(
    "call,needles",
    [
        _bad("unknown family", lambda: build_model("transformer", "seed", TABLE_13, 2),
             "'transformer'", "cnn, rnn, attention"),
        _bad("unknown preset", lambda: build_model("cnn", "vgg", IMAGE_SMALL, 2),
             "'vgg'", "seed, resnet"),
        _bad("cnn on tabular", lambda: build_model("cnn", "seed", TABLE_13, 2),
             "'cnn'", "tabular", "attention"),
        _bad("rnn on images", lambda: build_model("rnn", "bigru", IMAGE_SMALL, 2),
             "'rnn'", "image", "cnn"),
        _bad("unknown override",
             lambda: build_model("cnn", "seed", IMAGE_SMALL, 2, {"dropuot": 0.1}),
             "'dropuot'", "channels, dense_units, max_spatial, dropout"),
        _bad("override of another preset",
             lambda: build_model("cnn", "seed", IMAGE_SMALL, 2, {"blocks_per_stage": 3}),
             "'blocks_per_stage'", "allowed"),
        _bad("dropout out of range",
             lambda: build_model("cnn", "seed", IMAGE_SMALL, 2, {"dropout": 1.5}),
             "dropout", "1.5"),
        _bad("zero width", lambda: build_model("rnn", "seed", SIGNAL_1, 2, {"hidden_size": 0}),
             "hidden_size", "0"),
        _bad("even conv kernel",
             lambda: build_model("rnn", "bigru", SIGNAL_1, 2, {"conv_channels": 8, "conv_kernel": 4}),
             "conv_kernel", "odd", "4"),
        _bad("even inception kernel",
             lambda: build_model("cnn", "inception_time", SIGNAL_1, 2, {"kernel_sizes": [40, 20, 10]}),
             "kernel_sizes", "odd", "40"),
        _bad("inception on images",
             lambda: build_model("cnn", "inception_time", IMAGE_SMALL, 2), "'inception_time'", "signal", "image"),
        _bad("stored image config without its width",
             lambda: build_model_from_config("cnn", {k: v for k, v in CNN_SEED_28.items() if k != "width"}),
             "height, width", "height"),
        _bad("conv on the seed preset",
             lambda: build_model("rnn", "seed", SIGNAL_1, 2, {"conv_channels": 8}),
             "'conv_channels'", "allowed"),
        _bad("heads do not divide width",
             lambda: build_model("attention", "ft_transformer", TABLE_13, 2, {"n_heads": 5}),
             "n_heads=5", "64"),
        _bad("one class", lambda: build_model("cnn", "seed", IMAGE_SMALL, 1), "num_classes", "1"),
        _bad("image too small for seed",
             lambda: build_model("cnn", "seed", InputSpec("image", (1, 4, 4)), 2), "4x4", "8"),
        _bad("image shape without channels", lambda: InputSpec("image", (28, 28)),
             "channels, height, width", "(28, 28)"),
        _bad("unknown modality", lambda: InputSpec("video", (1,)),
             "'video'", "image, signal, tabular"),
        _bad("stored config with unknown field",
             lambda: build_model_from_config("rnn", {**RNN_SEED_96, "hiden_size": 3}),
             "'hiden_size'", "hidden_size"),
        _bad("stored config missing sizes",
             lambda: build_model_from_config("rnn", {"preset": "seed", "num_classes": 2}),
             "'seq_len'"),
        _bad("stored config with a field its preset does not use",
             lambda: build_model_from_config("cnn", {**CNN_SEED_28, "stem": "plain"}),
             "stem", "'seed'"),
    ],
)
def test_bad_choices_raise_model_config_error_naming_them(call, needles):
    with pytest.raises(ModelConfigError) as raised:
        call()
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, ConfigError)
    for needle in needles:
        assert needle in str(raised.value), (needle, str(raised.value))
