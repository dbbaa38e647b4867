import pytest
import torch

from cissl.config import ModelConfig
from cissl.models import BACKBONES, HEAD_STREAM, build_model, register_backbone
from cissl.models.wrn import WideResNet


def _model(k=10, heads=("main",), channels=3):
    return build_model(ModelConfig(), channels, k, (0.5,) * channels, (0.25,) * channels, 0, heads)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_wrn28_2_parameter_counts_match_spec():
    assert n_params(_model()) == 1_467_610
    assert n_params(_model(heads=("main", "balanced"))) == 1_468_900
    assert n_params(_model(100, ("main", "balanced"))) == 1_492_120


def test_shapes_features_and_logits_any_channels():
    for channels, size in ((3, 32), (1, 28), (1, 8)):
        model = _model(channels=channels, heads=("main", "balanced"))
        out = model(torch.rand(4, channels, size, size))
        assert out.features.shape == (4, 128)
        assert set(out.logits) == {"main", "balanced"} and out.logits["main"].shape == (4, 10)


def test_wrn_depth_and_width_general():
    net = WideResNet(in_channels=1, depth=16, widen=4)
    assert net.feature_dim == 256 and len(net.block1) == 2
    assert net(torch.rand(2, 1, 16, 16)).shape == (2, 256)


def test_wide_resnet_defaults_are_the_papers_wrn_28_2_and_a_bad_depth_is_named():
    net = WideResNet()  # RGB, depth 28, width 2, LeakyReLU(0.1), BN momentum 0.001 (spec 3.1)
    assert net.conv1.in_channels == 3 and len(net.block1) == 4 and net.feature_dim == 128
    assert n_params(net) == 1_467_610 - (128 * 10 + 10)  # the spec's count less the 10-class head
    assert net.act.negative_slope == 0.1 and net.block1[0].act.negative_slope == 0.1
    assert {m.momentum for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.001}
    with pytest.raises(ValueError, match=r"WRN depth must be 6n \+ 4, got 27"):
        WideResNet(depth=27)


def test_bn_momentum_and_block_quirks():
    model = _model()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(bn.momentum == 0.001 for bn in bns)
    model(torch.rand(4, 3, 32, 32)).logits["main"].sum().backward()
    backbone = model.backbone
    # group 1, first block: activated input feeds conv and shortcut -> its bn1 learns
    assert backbone.block1[0].bn1.weight.grad is not None
    # groups 2 and 3, first block: the pre-activation is discarded -> no gradient (reference quirk)
    assert backbone.block2[0].bn1.weight.grad is None and backbone.block3[0].bn1.weight.grad is None
    assert backbone.block2[1].bn1.weight.grad is not None


def test_extra_heads_do_not_change_shared_initialisation():
    single, double = _model(), _model(heads=("main", "balanced"))
    shared = double.state_dict()
    for key, value in single.state_dict().items():
        assert torch.equal(value, shared[key]), key


def test_initialisation_leaves_global_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    _model()
    assert torch.equal(torch.rand(3), expected)


def test_normalisation_inside_wrapper():
    model = _model(channels=1)
    x = torch.full((1, 1, 8, 8), 0.75)
    normalised = (x - 0.5) / 0.25
    assert torch.allclose(model.embed(x), model.backbone(normalised))


def test_float64_statistics_normalise_in_float32():
    """A data set's mean / std may come as float64 numpy arrays: the buffers stay float32, so the
    network sees float32 images (float64 ones would not pass its float32 convolutions)."""
    import numpy as np

    model = build_model(ModelConfig(), 3, 10, np.array([0.4, 0.5, 0.6]), np.array([0.2, 0.25, 0.3]), 0)
    assert model.mean.dtype == model.inv_std.dtype == torch.float32
    out = model(torch.rand(2, 3, 32, 32))
    assert out.features.dtype == torch.float32 and out.logits["main"].dtype == torch.float32


def test_each_extra_head_is_drawn_from_its_own_seed():
    """Extra head i (in the order asked for, ``main`` left out) is Xavier-normal from the seed
    seed * 1_000_003 + HEAD_STREAM + i, so a run's heads are the same whatever else it asks for."""
    seed = 3
    model = build_model(ModelConfig(), 3, 10, (0.5,) * 3, (0.25,) * 3, seed, ("main", "aux", "balanced"))
    for i, name in enumerate(("aux", "balanced")):
        torch.manual_seed(seed * 1_000_003 + HEAD_STREAM + i)
        expected = torch.nn.init.xavier_normal_(torch.nn.Linear(128, 10).weight)  # after Linear's own draws
        assert torch.equal(model.heads[name].weight, expected), name
        assert not model.heads[name].bias.any()
    assert not torch.equal(model.heads["aux"].weight, model.heads["balanced"].weight)


def test_build_model_gives_the_backbone_the_configs_slope_and_momentum():
    model = build_model(ModelConfig(leaky_slope=0.2, bn_momentum=0.01), 3, 10, (0.5,) * 3, (0.25,) * 3, 0)
    assert {m.negative_slope for m in model.modules() if isinstance(m, torch.nn.LeakyReLU)} == {0.2}
    assert {m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.01}
    grey_resnet = build_model(ModelConfig(name="resnet50", bn_momentum=0.01), 1, 10, (0.5,), (0.25,), 0)
    assert grey_resnet.backbone.stem[0].in_channels == 1 and grey_resnet.feature_dim == 2048
    assert {m.momentum for m in grey_resnet.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.01}


def test_wrn_keeps_the_resolution_in_group_1_and_halves_it_in_groups_2_and_3():
    """WRN-16 (two blocks per group) on 32 x 32 images: 32, 32, 16, 8 after the stem and each group; only
    a group's first block strides."""
    net = WideResNet(depth=16, widen=2)
    shapes = {}
    for name in ("conv1", "block1", "block2", "block3"):
        getattr(net, name).register_forward_hook(lambda module, args, out, name=name: shapes.update({name: out.shape}))
    net(torch.rand(2, 3, 32, 32))
    assert shapes == {"conv1": (2, 16, 32, 32), "block1": (2, 32, 32, 32), "block2": (2, 64, 16, 16),
                      "block3": (2, 128, 8, 8)}


def test_convolutions_are_kaiming_normal_over_their_fan_out_and_batch_norms_start_at_one_and_zero():
    """std sqrt(2 / fan_out), fan_out = out channels x 3 x 3: checked on group 2's first convolution (32 -> 64,
    18 432 weights), where fan_in would give a std sqrt(2) times larger."""
    net = WideResNet(depth=28, widen=2)
    weight = net.block2[0].conv1.weight
    assert weight.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.03)
    assert abs(weight.mean().item()) < 0.002
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(bool((m.weight == 1).all() and (m.bias == 0).all()) for m in norms)


def test_each_kind_of_wrn_block_adds_its_shortcut_to_its_conv_path():
    """The three kinds of block (module docstring), in eval mode: group 1's first block activates its input
    for both paths; a later group's first block feeds the raw input to both; other blocks add the raw
    input to the conv path of the activated input."""
    net = WideResNet(depth=16, widen=2).eval()
    x = torch.randn(2, 16, 8, 8)

    def conv_path(block, h):
        return block.conv2(block.act(block.bn2(block.conv1(h))))

    first = net.block1[0]
    activated = first.act(first.bn1(x))
    y = first(x)
    assert torch.allclose(y, first.shortcut(activated) + conv_path(first, activated), atol=1e-6)
    later = net.block1[1]
    assert torch.allclose(later(y), y + conv_path(later, later.act(later.bn1(y))), atol=1e-6)
    down = net.block2[0]
    assert torch.allclose(down(y), down.shortcut(y) + conv_path(down, y), atol=1e-6)


def test_the_normalisation_constants_are_not_part_of_a_checkpoint():
    """mean / std come from the data set, so the state dict (checkpoints, EMA) holds weights only."""
    keys = set(_model().state_dict())
    assert not {"mean", "inv_std"} & keys and all(k.startswith(("backbone.", "heads.")) for k in keys)


def test_a_backbone_name_cannot_be_registered_twice():
    with pytest.raises(ValueError, match="^backbone 'wrn' registered twice$"):
        register_backbone("wrn")(lambda model_config, in_channels: None)
    assert BACKBONES["wrn"].__name__ == "_wide_resnet"
