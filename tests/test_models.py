"""FlexNet / FlexTCN as timm models: architecture facts, the timm model API and input checks."""
import warnings

import pytest
import timm
import torch
from timm.data import resolve_data_config
from timm.models._manipulate import group_parameters

import flexconv_zoo  # noqa: F401  (registers the models)
from flexconv_zoo.layers import FlexConv1d, FlexConv2d

FLEXNETS = ['flexnet8', 'flexnet12', 'flexnet16']
FLEXTCNS = ['flextcn2', 'flextcn4', 'flextcn6']


def test_all_paper_models_are_registered():
    names = set(timm.list_models('flex*'))
    assert set(FLEXNETS + FLEXTCNS) <= names


@pytest.mark.parametrize('name,kwargs,expected', [
    ('flexnet16', dict(num_classes=10), 671_650),
    ('flexnet12', dict(num_classes=10), 454_046),
    ('flextcn2', dict(in_chans=1, num_classes=10), 105_548),
    ('flextcn4', dict(in_chans=1, num_classes=10), 239_436),
    ('flextcn6', dict(in_chans=1, num_classes=10), 373_324),
])
def test_parameter_counts_match_the_paper(name, kwargs, expected):
    model = timm.create_model(name, **kwargs)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_flexnet16_layout():
    model = timm.create_model('flexnet16')
    # FlexNet-L counts L = 2N + 2 layers: the stem FlexConv, 2 FlexConvs per block and the linear head
    assert len(list(model.flexconv_layers())) == 1 + 2 * 7
    assert [b.conv2.out_channels for b in model.blocks] == [24, 24, 36, 36, 36, 48, 48]
    assert all(isinstance(m, FlexConv2d) for m in model.flexconv_layers())
    assert model.kernel_sizes()[0] == (5, 5)


@pytest.mark.parametrize('name', FLEXNETS)
@pytest.mark.parametrize('size', [(32, 32), (24, 20)])
def test_flexnet_forward_backward(name, size):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=7)
    out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize('name', FLEXTCNS)
@pytest.mark.parametrize('shape', [(2, 1, 64), (2, 1, 1, 100)])
def test_flextcn_forward_backward(name, shape):
    torch.manual_seed(0)
    model = timm.create_model(name, in_chans=1, num_classes=10, seq_len=128)
    assert all(isinstance(m, FlexConv1d) and m.causal for m in model.flexconv_layers())
    out = model(torch.randn(*shape))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_flextcn_sequence_and_image_row_layouts_agree():
    model = timm.create_model('flextcn2', in_chans=3, num_classes=5, seq_len=50).eval()
    x = torch.randn(2, 3, 50)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x.unsqueeze(2)))
        assert model.forward_features(x).shape == (2, 30, 50)
        assert model.forward_features(x.unsqueeze(2)).shape == (2, 30, 1, 50)


def test_flextcn_is_causal_end_to_end():
    torch.manual_seed(0)
    # float64: FFT rounding noise from the changed future would otherwise blur the exact comparison
    model = timm.create_model('flextcn4', in_chans=2, seq_len=60).eval().double()
    model.set_mask_width(0.5)  # kernels over the whole history
    x = torch.randn(1, 2, 60, dtype=torch.float64)
    x2 = x.clone()
    x2[..., 31:] += 1.0
    with torch.no_grad():
        f, f2 = model.forward_features(x), model.forward_features(x2)
    torch.testing.assert_close(f[..., :31], f2[..., :31])
    assert not torch.allclose(f[..., 31:], f2[..., 31:])


# ----------------------------------------------------------------------------- timm API
def test_features_only_and_forward_intermediates_flexnet():
    model = timm.create_model('flexnet8', features_only=True)
    feats = model(torch.randn(2, 3, 20, 20))
    assert [f.shape[1] for f in feats] == model.feature_info.channels() == [24, 36, 48]
    assert all(f.shape[-2:] == (20, 20) for f in feats)

    net = timm.create_model('flexnet16').eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        final, inter = net.forward_intermediates(x, indices=2)
        assert len(inter) == 2 and inter[-1].shape == (1, 48, 16, 16)
        torch.testing.assert_close(final, net.forward_features(x))
        only = net.forward_intermediates(x, indices=[0, 3], intermediates_only=True, stop_early=True)
        assert [t.shape[1] for t in only] == [24, 36]
    net.prune_intermediate_layers([0, 3])
    assert len(net.blocks) == 4 and net.num_classes == 0


def test_features_only_flextcn_has_two_taps_per_block():
    model = timm.create_model('flextcn2', features_only=True, seq_len=32)
    feats = model(torch.randn(2, 1, 32))
    assert len(feats) == 4 and all(f.shape == (2, 30, 1, 32) for f in feats)
    net = timm.create_model('flextcn2', seq_len=32)
    assert [t.shape for t in net.forward_intermediates(torch.randn(2, 1, 32), intermediates_only=True)] == \
        [torch.Size([2, 30, 32])] * 4


@pytest.mark.parametrize('name,x', [('flexnet8', torch.randn(2, 3, 12, 12)), ('flextcn2', torch.randn(2, 1, 40))])
def test_head_reset_and_pooling(name, x):
    model = timm.create_model(name).eval()
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        model.reset_classifier(5)
        assert model(x).shape == (2, 5)
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pre)
        model.reset_classifier(0, '')
        assert model(x).dim() == x.dim()


def test_flextcn_unpooled_classifier_gives_per_step_logits():
    """global_pool='' with a classifier classifies every step (channels, never across time): the last step's
    logits are those of the paper's 'last' pooling, and torch.fx traces the head without a data-dependent branch."""
    pooled = timm.create_model('flextcn2', num_classes=5, seq_len=40).eval()
    unpooled = timm.create_model('flextcn2', num_classes=5, seq_len=40, global_pool='').eval()
    unpooled.load_state_dict(pooled.state_dict())
    x = torch.randn(2, 1, 40)
    with torch.no_grad():
        steps = unpooled(x)
        assert steps.shape == (2, 5, 40)
        torch.testing.assert_close(steps[..., -1], pooled(x))
        assert unpooled(x.unsqueeze(2)).shape == (2, 5, 1, 40)
        traced = torch.fx.symbolic_trace(unpooled.head, concrete_args={'pre_logits': False})
        torch.testing.assert_close(traced(unpooled.forward_features(x)), steps)
        # timm's reset sequence: no classifier and no pooling, then a classifier again (the pooling stays '')
        pooled.reset_classifier(0, '')
        pooled.reset_classifier(3)
        assert pooled(x).shape == (2, 3, 40)


@pytest.mark.parametrize('name,x', [('flexnet8', torch.randn(2, 3, 12, 12)), ('flextcn2', torch.randn(2, 1, 40))])
def test_grad_checkpointing_gives_identical_outputs_and_gradients(name, x):
    grads = []
    for enable in (False, True):
        torch.manual_seed(0)
        model = timm.create_model(name).eval()
        model.set_grad_checkpointing(enable)
        model(x).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g0, g1)


@pytest.mark.parametrize('name', ['flexnet16', 'flextcn6'])
def test_group_matcher_and_no_weight_decay(name):
    model = timm.create_model(name)
    groups = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    assert len(set(groups.values())) > 1
    nwd = model.no_weight_decay()
    names = dict(model.named_parameters())
    assert nwd and all(n in names for n in nwd)
    assert len(nwd) == 2 * len(list(model.flexconv_layers()))  # mean and sigma of each mask


def test_device_dtype_meta_and_bf16():
    model = timm.create_model('flexnet8', device='meta', dtype=torch.float64)
    assert all(p.device.type == 'meta' and p.dtype == torch.float64 for p in model.parameters())
    out = model(torch.randn(2, 3, 32, 32, device='meta', dtype=torch.float64))
    assert out.shape == (2, 10)

    torch.manual_seed(0)
    model = timm.create_model('flexnet8').eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            amp = model(x)
        model.to(torch.bfloat16)
        low = model(x.bfloat16())
    assert low.dtype == torch.bfloat16
    # bf16 keeps ~3 significant digits: logits agree to a few percent of their scale
    scale = ref.abs().max()
    assert (amp.float() - ref).abs().max() < 0.05 * scale
    assert (low.float() - ref).abs().max() < 0.1 * scale


def test_fx_feature_extraction_matches_eager():
    torch.manual_seed(0)
    fx = timm.create_model('flexnet8', features_only=True, feature_cls='fx').eval()
    torch.manual_seed(0)
    eager = timm.create_model('flexnet8', features_only=True).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        for a, b in zip(fx(x), eager(x)):
            torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------- resolution & regulariser
def test_set_input_size_resamples_kernels_and_data_config():
    model = timm.create_model('flexnet8', img_size=16)
    assert all(layer.kernel_size == (17, 17) for layer in model.flexconv_layers())
    assert resolve_data_config(model=model)['input_size'] == (3, 16, 16)  # the data config follows img_size
    model.set_input_size(img_size=32)
    assert all(layer.kernel_size == (33, 33) and layer.source_grid == (17, 17) for layer in model.flexconv_layers())
    assert resolve_data_config(model=model)['input_size'] == (3, 32, 32)
    model.set_input_size(img_size=(24, 20))
    assert resolve_data_config(model=model)['input_size'] == (3, 24, 20)
    with pytest.raises(TypeError):
        model.set_input_size(patch_size=4)


def test_alias_free_penalty():
    model = timm.create_model('flexnet8', img_size=16)
    penalty = model.alias_free_penalty()
    assert penalty.dim() == 0 and penalty.item() >= 0
    # higher frequencies than a 17-point grid can hold are penalised, and the penalty has gradients
    with torch.no_grad():
        for layer in model.flexconv_layers():
            layer.kernel_net.filters[0].linear.weight.mul_(10)
    big = model.alias_free_penalty()
    assert big.item() > penalty.item()
    big.backward()
    assert model.stem.conv.kernel_net.filters[0].linear.weight.grad.abs().sum() > 0
    # the same kernels on a denser (33-point) training grid alias less
    dense = timm.create_model('flexnet8', img_size=32)
    dense.load_state_dict(model.state_dict())
    assert dense.alias_free_penalty().item() < big.item()
    with pytest.raises(ValueError, match='multiplicative filter'):
        timm.create_model('flexnet8', kernel_net='siren').alias_free_penalty()


@pytest.mark.parametrize('kernel_net', ['magnet', 'gabor', 'fourier'])
def test_band_limit_projects_onto_alias_free_set(kernel_net):
    model = timm.create_model('flexnet8', img_size=16, kernel_net=kernel_net)
    assert model.alias_free_penalty().item() > 0.1  # the paper's init is above a 17-point grid's Nyquist
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    before = model(x)
    model.band_limit_()
    assert model.alias_free_penalty().item() < 1e-9
    for layer in model.flexconv_layers():
        share = (17 - 1) / 4 / len(layer.kernel_net.filters)
        assert layer.kernel_net.layer_frequencies().max().item() <= share * (1 + 2e-6)
    assert not torch.allclose(model(x), before)  # the eval kernel cache saw the new parameters
    params = {k: v.clone() for k, v in model.state_dict().items()}
    model.band_limit_()  # a projection: feasible kernels stay as they are
    assert all(torch.equal(params[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match='multiplicative filter'):
        timm.create_model('flexnet8', kernel_net='siren').band_limit_()


def test_band_limit_with_masks_widens_narrow_masks():
    model = timm.create_model('flexnet8', img_size=16)
    model.band_limit_()
    assert model.alias_free_penalty(include_mask=True).item() > 0  # sigma 0.075 is too sharp for 17 points
    model.band_limit_(include_mask=True)
    assert model.alias_free_penalty(include_mask=True).item() < 1e-9
    for layer in model.flexconv_layers():
        assert (layer.mask.sigma >= 2 / (torch.pi * 4) - 1e-7).all()  # the mask keeps at most half the band


def test_set_mask_width_controls_kernel_sizes():
    model = timm.create_model('flexnet8')
    model.set_mask_width(0.5)
    assert set(model.kernel_sizes()) == {(33, 33)}
    model.set_mask_width(0.075)
    assert set(model.kernel_sizes()) == {(5, 5)}


@pytest.mark.parametrize('edit', ['set_mask_width', 'band_limit_', 'rebase_input_size'])
def test_mask_edits_outside_the_optimizer_reach_the_lagged_crop(edit):
    """The 'lagged' crop reads a copy of the mask made one forward earlier: a jump of the mask outside the optimizer
    (set_mask_width, band_limit_(include_mask=True)) gave the next training forward the old, smaller crop,
    silently (1.8 off the exact crop). The model's in-place editors now drop that copy."""
    # 10 px: the 11-point grid's lagged window (3 taps) is smaller than the band-limited crop (5 taps)
    size = 10 if edit == 'band_limit_' else 16
    x, x32 = torch.randn(2, 3, size, size), torch.randn(2, 3, 32, 32)
    outs = {}
    for mode in ('exact', 'lagged'):
        torch.manual_seed(0)
        model = timm.create_model('flexnet8', widths=(6, 8), num_classes=3, img_size=size).train()
        for layer in model.flexconv_layers():
            layer.crop_mode = mode
        model(x)  # records the lagged copy of the initial masks
        if edit == 'set_mask_width':
            model.set_mask_width(0.3)
        elif edit == 'band_limit_':
            model.band_limit_(include_mask=True)  # sigma 0.075 -> 0.255
        else:
            model.rebase_input_size(32)
            x = x32
        torch.manual_seed(1)  # same dropout masks
        with warnings.catch_warnings():
            warnings.simplefilter('error')  # nor one step late ("the mask grew past the lagged crop")
            outs[mode] = model(x)
            model(x)
    torch.testing.assert_close(outs['lagged'], outs['exact'], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- bad input
def test_models_reject_wrong_inputs_with_clear_errors():
    net = timm.create_model('flexnet8')
    with pytest.raises(ValueError, match='expects images.*FlexTCN'):
        net(torch.randn(2, 3, 32))
    with pytest.raises(ValueError, match='expects 3 input channels, got 1'):
        net(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match='at least 2 samples'):
        net(torch.randn(2, 3, 1, 1))
    tcn = timm.create_model('flextcn2', seq_len=32)
    with pytest.raises(ValueError, match='expects sequences.*FlexNet'):
        tcn(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match='expects 1 input channels, got 3'):
        tcn(torch.randn(2, 3, 32))
    with pytest.raises(ValueError, match='at least 2 samples'):
        tcn(torch.randn(2, 1, 1))


def test_unknown_arguments_and_models_raise():
    with pytest.raises(TypeError):
        timm.create_model('flexnet16', not_a_model_arg=1)
    with pytest.raises(RuntimeError, match='Unknown model'):
        timm.create_model('flexnet17')
    with pytest.raises(ValueError, match='global_pool'):
        timm.create_model('flextcn2', global_pool='max')


def test_torch_export_matches_eager():
    torch.manual_seed(0)
    model = timm.create_model('flexnet8').eval()
    x = torch.randn(2, 3, 32, 32)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        ref = model(x)
        out = exported.module()(x)
    # the exported graph may pick the other (FFT vs direct) path: float32 rounding only
    assert out.shape == ref.shape
    assert (out - ref).abs().max() < 1e-3 * ref.abs().max()


# ------------------------------------------------------------------------------------------------ issue 12
@pytest.mark.parametrize('name,x', [('flexnet8', torch.randn(2, 3, 16, 16)), ('flextcn2', torch.randn(2, 1, 40))])
def test_models_pickle_and_torch_save(name, x, tmp_path):
    import pickle
    model = timm.create_model(name, kernel_hidden=8).eval()
    with torch.no_grad():
        ref = model(x)  # the kernel cache is filled: it must not stop pickling
        assert torch.equal(pickle.loads(pickle.dumps(model))(x), ref)
        torch.save(model, tmp_path / 'model.pt')
        loaded = torch.load(tmp_path / 'model.pt', weights_only=False)
        assert torch.equal(loaded(x), ref)
        # the load_state_dict hook survives pickling: new weights replace the cached kernels
        other = timm.create_model(name, kernel_hidden=8).eval()
        loaded.load_state_dict(other.state_dict())
        assert torch.equal(loaded(x), other(x)) and not torch.equal(loaded(x), ref)


@pytest.mark.parametrize('name,x', [('flexnet8', torch.zeros(0, 3, 16, 16)), ('flextcn2', torch.zeros(0, 1, 40))])
def test_empty_batch_is_a_clear_error(name, x):
    model = timm.create_model(name, kernel_hidden=8).eval()
    with pytest.raises(ValueError, match='empty batch'):
        model(x)


@pytest.mark.parametrize('dtype', [torch.uint8, torch.int64, torch.bool])
def test_integer_and_bool_images_are_a_clear_error(dtype):
    model = timm.create_model('flexnet8', img_size=16, widths=(8,), kernel_hidden=8).eval()
    with pytest.raises(TypeError, match=f'floating-point input, got {dtype}'):
        model(torch.ones(2, 3, 16, 16, dtype=dtype))


@pytest.mark.parametrize('name,bad', [('flexnet8', 2.5), ('flexnet8', '32'), ('flexnet8', True),
                                      ('flexnet8', (16, 2.0)), ('flextcn2', 2.5), ('flextcn2', '40'),
                                      ('flextcn2', (1, 40.0))])
def test_set_input_size_rejects_non_integers_and_changes_nothing(name, bad):
    model = timm.create_model(name, kernel_hidden=8)
    grids = [layer.grid for layer in model.flexconv_layers()]
    cfg = dict(model.pretrained_cfg)
    with pytest.raises(TypeError, match='must be an int'):
        model.set_input_size(img_size=bad) if name.startswith('flexnet') else model.set_input_size(seq_len=bad)
    assert [layer.grid for layer in model.flexconv_layers()] == grids and model.pretrained_cfg == cfg
    with pytest.raises(TypeError, match='must be an int'):
        next(model.flexconv_layers()).set_input_size(bad)


@pytest.mark.parametrize('name, kwargs, channels', [
    ('flextcn4.japanese_vowels', {}, 12), ('flextcn4.japanese_vowels', dict(in_chans=3), 3),
    ('flexnet16.cifar10', dict(in_chans=1), 1), ('flextcn2.mnist1d', {}, 1),
])
def test_cfg_input_size_has_the_models_channels(name, kwargs, channels):
    # the channel count may come from the tag's cfg (12 for JapaneseVowels) or from the caller
    model = timm.create_model(name, **kwargs)
    assert model.in_chans == channels == model.pretrained_cfg['input_size'][0] == model.default_cfg['input_size'][0]


@pytest.mark.parametrize('in_chans', [2, 3])
def test_pretrained_flextcn_adapts_its_input_shortcut_to_in_chans(in_chans):
    """FlexTCN's first block reads the input twice: through the FlexConv (stem, adapted) and through its 1x1
    shortcut, which kept its (30, 1, 1) weight, so the load failed. Both follow timm's rule (repeat, scale by
    1 / in_chans): the model computes on a channel repeated in_chans times what the original computes on it."""
    original = timm.create_model('flextcn2.mnist1d', pretrained=True).eval()
    model = timm.create_model('flextcn2.mnist1d', pretrained=True, in_chans=in_chans).eval()
    assert model.blocks[0].shortcut.weight.shape == (30, in_chans, 1)
    x = torch.randn(2, 1, 40)
    with torch.no_grad():
        torch.testing.assert_close(model(x.repeat(1, in_chans, 1)), original(x), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------- the redesign's single homes
def test_flexconv_options_travel_as_one_config():
    from flexconv_zoo.layers import MAGNet, SIREN, FlexConvConfig
    cfg = FlexConvConfig(kernel_net='siren', mask_init_sigma=0.1)
    model = timm.create_model('flexnet8', config=cfg, kernel_hidden=16)  # flat options update the config
    layers = list(model.flexconv_layers())
    assert all(isinstance(layer.kernel_net, SIREN) and layer.mask.init_sigma == 0.1 for layer in layers)
    assert layers[0].kernel_net.output.in_features == 16
    assert isinstance(next(timm.create_model('flextcn2').flexconv_layers()).kernel_net, MAGNet)
    with pytest.raises(TypeError, match=r"unexpected arguments \['kernl_net'\].*kernel_net"):
        timm.create_model('flexnet8', kernl_net='siren')
    with pytest.raises(TypeError, match='config must be a FlexConvConfig'):
        timm.create_model('flextcn2', config={'kernel_net': 'siren'})


def test_source_and_input_size_of_both_model_kinds():
    net = timm.create_model('flexnet8', img_size=16)
    assert net.source_input_size == net.input_size == (3, 16, 16) and net.source_size_kwargs() == {'img_size': [16, 16]}
    net.set_input_size((3, 24, 24))  # timm's full input_size is accepted too
    assert net.input_size == (3, 24, 24) and net.source_input_size == (3, 16, 16)
    assert net.pretrained_cfg['input_size'] == (3, 24, 24)
    with pytest.raises(ValueError, match='channels'):
        net.set_input_size((1, 24, 24))
    with pytest.raises(TypeError, match='takes images'):
        net.set_input_size(seq_len=24)
    tcn = timm.create_model('flextcn2', in_chans=3, seq_len=50)
    assert tcn.size_unit == 'steps' and tcn.source_input_size == (3, 1, 50) and tcn.source_size_kwargs() == {'seq_len': 50}
    tcn.set_input_size(100)
    assert tcn.input_size == (3, 1, 100) and all(layer.grid == (100,) for layer in tcn.flexconv_layers())


@pytest.mark.parametrize('name', ['flexnet8', 'flextcn2'])
def test_prune_keeps_the_head_only_when_asked_and_nothing_was_cut(name):
    model = timm.create_model(name)
    last = len(model.feature_info) - 1
    model.prune_intermediate_layers([last], prune_head=False)
    assert model.num_classes == 10 and isinstance(model.get_classifier(), torch.nn.Linear)
    model.prune_intermediate_layers([0], prune_head=False)  # blocks are cut: the head no longer fits
    assert model.num_classes == 0 and len(model.blocks) == 1


@pytest.mark.parametrize('name,kwargs', [
    ('flexnet8', dict(kernel_net='siren', mask_init_sigma=0.1, img_size=20)),
    ('flextcn2', dict(in_chans=3, seq_len=40, kernel_layers=2, mask_threshold=0.2)),
])
def test_construction_args_rebuild_the_same_function(name, kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    args = model.construction_args()
    assert 'conv_method' not in args and all(k in args for k in kwargs if k != 'in_chans')
    rebuilt = timm.create_model(name, in_chans=model.in_chans, **args).eval()
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, *model.source_input_size) if name.startswith('flexnet') else torch.randn(2, 3, 40)
    torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)
