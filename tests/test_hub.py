"""Pretrained weights: Hub download (local stand-in), offline cache, bundled fallback, folders, cards, errors.

The weights used here are random, seeded models written to tmp_path by :func:`flexconv_zoo.hub.write_hub_folder`
(test fixtures only, never committed). The Hub paths run in subprocesses (tests/hub_server.py) because
huggingface_hub reads its environment when imported.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
from huggingface_hub import ModelCard

import flexconv_zoo  # noqa: F401
from flexconv_zoo.hub import (
    CardInfo, EvalRow, HubFolderError, PretrainedWeightsError, create_model_for_tag, pretrained_tags,
    read_card_results, validate_hub_folder, write_hub_folder,
)

REPO = Path(__file__).resolve().parent.parent
INFO = CardInfo(dataset='cifar10', dataset_name='CIFAR-10', summary='TEST FIXTURE: random weights.',
                recipe=['none (random init, seed 0)'], train_command='pytest', training_cost='none',
                limitations=['random weights'])


def _write(model, folder, name, test_input_size=None):
    rows = [EvalRow('cifar10', 'test[:2]', int(model.pretrained_cfg['input_size'][-1]), 50.0, 2, 'pytest')]
    return write_hub_folder(model, folder, name=name, info=INFO, results=rows, test_input_size=test_input_size)


def _fixture_model(name, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = create_model_for_tag(name, **kwargs) if '.' in name else timm.create_model(name, **kwargs)
    model.set_mask_width(0.2)  # 13x13 kernels: weights that matter beyond the initial 5x5 crop
    size = model.pretrained_cfg['input_size']
    shape = (8, size[0], size[-1]) if name.startswith('flextcn') else (8, *size)
    with torch.no_grad():  # calibrate the BN statistics so that activations (and logits) stay O(1)
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.momentum = None  # cumulative average
        for _ in range(2):
            model(torch.randn(shape))
    return model.eval()


@pytest.fixture(scope='module')
def tag_folders(tmp_path_factory):
    """A Hub folder of random weights for every registered pretrained tag: {tag: (repo_id, folder)}."""
    root = tmp_path_factory.mktemp('tags')
    out = {}
    for i, tag in enumerate(pretrained_tags()):
        cfg = timm.models.get_pretrained_cfg(tag)
        model = _fixture_model(tag, seed=i)
        test_size = cfg.test_input_size if cfg.test_input_size and cfg.test_input_size != cfg.input_size else None
        out[tag] = (cfg.hf_hub_id, _write(model, root / cfg.hf_hub_id.split('/')[-1], tag, test_size))
    return out


@pytest.fixture(scope='module')
def small_folder(tmp_path_factory):
    model = _fixture_model('flexnet8', seed=3)
    folder = _write(model, tmp_path_factory.mktemp('small') / 'flexnet8.test', 'flexnet8.test')
    return model, folder


def _run_scenario(scenario, spec, tmp_path):
    spec_file = tmp_path / f'{scenario}.json'
    spec_file.write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if not k.startswith('HF_')}
    proc = subprocess.run([sys.executable, str(REPO / 'tests' / 'hub_server.py'), scenario, str(spec_file)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('SCENARIO-RESULT ')]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][len('SCENARIO-RESULT '):])


def _assert_loaded(result, repo_id=None):
    assert result['ok'], result
    assert result['value']['max_abs_err'] < 1e-4, result
    if repo_id:
        assert result['value']['source'] == repo_id


# ---------------------------------------------------------------------------------------------- Hub stand-ins
def test_every_tag_through_local_hub_server(tag_folders, small_folder, tmp_path):
    """Real huggingface_hub download code against a 127.0.0.1 Hub: every tag, hf-hub:, adaptation, errors."""
    assert set(tag_folders) == {'flexnet16.cifar10', 'flexnet16.cifar10_16px_alias_free'} | set(tag_folders)
    first = 'flexnet16.cifar10'
    corrupt, truncated = tmp_path / 'corrupt', tmp_path / 'truncated'
    for folder in (corrupt, truncated):
        folder.mkdir()
        for f in tag_folders[first][1].iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
    (corrupt / 'model.safetensors').write_bytes(b'<html>502 Bad Gateway</html>' * 4)
    data = (truncated / 'model.safetensors').read_bytes()
    (truncated / 'model.safetensors').write_bytes(data[:len(data) // 2])
    repos = {repo: str(folder) for repo, folder in tag_folders.values()}
    repos.update({'flexconv-zoo/corrupt': str(corrupt), 'flexconv-zoo/truncated': str(truncated),
                  'flexconv-zoo/mismatch': str(small_folder[1])})
    spec = dict(
        cache=str(tmp_path / 'cache'), bundled=str(tmp_path / 'no-bundle'), repos=repos,
        tags={tag: str(folder / 'reference_logits.safetensors') for tag, (_, folder) in tag_folders.items()},
        hf_hub=[tag_folders[first][0], str(tag_folders[first][1] / 'reference_logits.safetensors')],
        adapt=[first, str(tag_folders[first][1] / 'model.safetensors')],
        broken={'corrupt': [first, 'flexconv-zoo/corrupt'], 'truncated': [first, 'flexconv-zoo/truncated'],
                'mismatch': [first, 'flexconv-zoo/mismatch'], 'unpublished': [first, 'flexconv-zoo/not-there']},
    )
    out = _run_scenario('server', spec, tmp_path)
    assert sorted(out['tags_registered']) == sorted(tag_folders)
    for tag, (repo, _) in tag_folders.items():
        _assert_loaded(out['tags'][tag], repo)
        assert not out['tags'][tag]['warnings']  # came from the Hub, not from a fallback
    _assert_loaded(out['hf_hub'], tag_folders[first][0])
    assert out['adapt']['ok'], out['adapt']
    assert out['adapt']['value'] == {'head': [100, 48], 'logits': [2, 100], 'stem_ok': True, 'body_ok': True}
    for label in ('corrupt', 'truncated'):
        res = out[label]
        assert res['type'] == 'PretrainedWeightsError', res
        assert 'corrupt or truncated' in res['error'] and 'models--flexconv-zoo--' + label in res['error']
    assert out['mismatch']['type'] == 'PretrainedWeightsError'
    assert 'flexconv-zoo/mismatch' in out['mismatch']['error'] and 'do not fit flexnet16' in out['mismatch']['error']
    assert out['unpublished']['type'] == 'WeightsUnavailableError'
    assert 'flexconv-zoo/not-there' in out['unpublished']['error']
    assert out['requests'] > len(tag_folders)
    assert list((tmp_path / 'cache').glob('models--flexconv-zoo--flexnet16.cifar10/snapshots/*/model.safetensors'))


def test_every_tag_from_warm_offline_cache(tag_folders, tmp_path):
    """HF_HUB_OFFLINE=1 with a pre-populated cache (refs/main + snapshots/<sha>): no network, no fallback."""
    first = 'flexnet16.cifar10'
    spec = dict(
        cache=str(tmp_path / 'cache'), bundled=str(tmp_path / 'no-bundle'),
        repos={repo: str(folder) for repo, folder in tag_folders.values()},
        tags={tag: str(folder / 'reference_logits.safetensors') for tag, (_, folder) in tag_folders.items()},
        hf_hub=[tag_folders[first][0], str(tag_folders[first][1] / 'reference_logits.safetensors')],
    )
    out = _run_scenario('offline', spec, tmp_path)
    for tag, (repo, _) in tag_folders.items():
        _assert_loaded(out['tags'][tag], repo)
        assert not out['tags'][tag]['warnings']
    _assert_loaded(out['hf_hub'], tag_folders[first][0])


def test_offline_without_cache_falls_back_to_bundled_or_says_what_to_do(tag_folders, tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    bundle_root = next(iter(tag_folders.values()))[1].parent
    cases = {f'none/{tag}': [str(empty), tag, str(folder / 'reference_logits.safetensors')]
             for tag, (_, folder) in tag_folders.items()}
    cases.update({f'bundled/{tag}': [str(bundle_root), tag, str(folder / 'reference_logits.safetensors')]
                  for tag, (_, folder) in tag_folders.items()})
    spec = dict(cache=str(tmp_path / 'cache'), bundled=str(empty), tags={}, bundled_env=cases)
    out = _run_scenario('offline', spec, tmp_path)
    for tag, (repo, _) in tag_folders.items():
        none = out[f'none/{tag}']
        assert none['type'] == 'WeightsUnavailableError', none
        for hint in ('HF_HUB_OFFLINE', 'pretrained_cfg_overlay=dict(file=', f'local-dir:hub_configs/{repo.split("/")[1]}',
                     repo):
            assert hint in none['error'], (hint, none['error'])
        bundled = out[f'bundled/{tag}']
        _assert_loaded(bundled)
        assert any('BundledWeightsWarning' in w and 'copy shipped with flexconv_zoo' in w for w in bundled['warnings'])


# ---------------------------------------------------------------------------------------------- local routes
def test_local_dir_and_file_routes_reproduce_logits(small_folder):
    model, folder = small_folder
    ref = safetensors.torch.load_file(str(folder / 'reference_logits.safetensors'))
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    via_file = timm.create_model('flexnet8', pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(folder / 'model.safetensors'))).eval()
    with torch.no_grad():
        for m in (loaded, via_file):
            torch.testing.assert_close(m(ref['input']), ref['logits'], atol=1e-5, rtol=1e-5)
    assert loaded.kernel_sizes() == model.kernel_sizes() == via_file.kernel_sizes()


def test_alias_free_tag_gets_its_training_grid(tag_folders):
    """The 16 px tag builds with FlexNet's default img_size=32; loading its weights puts it on the 17-point grid."""
    _, folder = tag_folders['flexnet16.cifar10_16px_alias_free']
    model = timm.create_model('flexnet16.cifar10_16px_alias_free', pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(folder / 'model.safetensors'))).eval()
    assert model.stem.conv.source_grid == (17, 17)
    ref = safetensors.torch.load_file(str(folder / 'reference_logits.safetensors'))
    with torch.no_grad():
        torch.testing.assert_close(model(ref['input']), ref['logits'], atol=1e-5, rtol=1e-5)
        model.set_input_size(32)
        torch.testing.assert_close(model(ref['input_test']), ref['logits_test'], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('damage', ['corrupt', 'truncated', 'empty', 'mismatch'])
@pytest.mark.parametrize('route', ['file', 'local-dir'])
def test_broken_weight_files_raise_naming_the_file(small_folder, tmp_path, damage, route):
    _, folder = small_folder
    bad = tmp_path / 'bad'
    bad.mkdir()
    for f in folder.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    weights = bad / 'model.safetensors'
    data = weights.read_bytes()
    if damage == 'corrupt':
        weights.write_bytes(b'\x00' * 8 + data[8:])
    elif damage == 'truncated':
        weights.write_bytes(data[:len(data) - 100])
    elif damage == 'empty':
        weights.write_bytes(b'')
    else:  # a flexnet12 checkpoint where flexnet8 weights belong
        safetensors.torch.save_file(timm.create_model('flexnet12').state_dict(), str(weights))
    with pytest.raises(PretrainedWeightsError) as info:
        if route == 'file':
            timm.create_model('flexnet8', pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)))
        else:
            timm.create_model(f'local-dir:{bad}', pretrained=True)
    assert str(weights) in str(info.value)
    assert ('do not fit flexnet8' if damage == 'mismatch' else 'corrupt or truncated') in str(info.value)


def test_unknown_tag_is_a_clear_error():
    with pytest.raises(RuntimeError, match=r'Invalid pretrained tag \(nope\) for flexnet16'):
        timm.create_model('flexnet16.nope', pretrained=True)
    with pytest.raises(ValueError, match='Unknown pretrained tag .flexnet16.nope.*flexnet16.cifar10'):
        create_model_for_tag('flexnet16.nope')


# ---------------------------------------------------------------------------------------------- original layout
def _to_original_layout(model, grid):
    """This package's state dict in the original FlexConv code's layout (1x1-conv kernel nets, mask_params)."""
    renames = [('stem.conv.', 'cconv1.'), ('stem.norm.', 'norm1.'), ('head.fc.', 'out_layer.'),
               ('.kernel_net.filters.', '.Kernel.filters.'), ('.kernel_net.linears.', '.Kernel.linear.'),
               ('.kernel_net.output.', '.Kernel.output_linear.'), ('.shortcut.', '.shortcut.0.')]
    out, masks = {}, {}
    for key, value in model.state_dict().items():
        if key.endswith(('mask.mean', 'mask.sigma')):
            masks.setdefault(key.rsplit('.', 2)[0], {})[key.rsplit('.', 1)[1]] = value
            continue
        new = key
        for a, b in renames:
            new = new.replace(a, b)
        new = new.replace('blocks.', 'backbone.').replace('.conv1.', '.cconv1.').replace('.conv2.', '.cconv2.')
        if ('.Kernel.' in new or new.startswith('out_layer.')) and new.endswith('.weight') and value.dim() == 2:
            value = value[:, :, None, None]  # original kernel nets are 1x1 convolutions
        out[new] = value.clone()
    for layer, mv in masks.items():
        prefix = layer.replace('stem.conv', 'cconv1').replace('blocks.', 'backbone.')
        prefix = prefix.replace('.conv1', '.cconv1').replace('.conv2', '.cconv2')
        out[prefix + '.mask_params'] = torch.stack([mv['mean'], mv['sigma']], dim=1)  # (D, 2)
        out[prefix + '.train_length'] = torch.tensor([grid], dtype=torch.int32)
        out[prefix + '.mask_threshold'] = torch.tensor([0.1])
        out[prefix + '.temperature'] = torch.tensor([15.0])
    return {'model': out}


def test_convert_original_checkpoint_gives_identical_outputs(tmp_path):
    model = _fixture_model('flexnet8', seed=5)
    ckpt = _to_original_layout(model, grid=33)
    assert any('.Kernel.output_linear.weight' in k for k in ckpt['model'])
    torch.save(ckpt, tmp_path / 'orig.pt')
    folder = tmp_path / 'flexnet8.original'
    proc = subprocess.run([sys.executable, str(REPO / 'scripts' / 'convert_original.py'), str(tmp_path / 'orig.pt'),
                           str(folder), '--model', 'flexnet8', '--img-size', '32'],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    converted = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(converted(x), model(x))
    via_filter = timm.create_model('flexnet8', pretrained=True,
                                   pretrained_cfg_overlay=dict(file=str(tmp_path / 'orig.pt'))).eval()
    with torch.no_grad():
        assert torch.equal(via_filter(x), model(x))


def test_original_checkpoint_on_another_grid_is_refused(tmp_path):
    model = _fixture_model('flexnet8', seed=6)
    torch.save(_to_original_layout(model, grid=17), tmp_path / 'orig16.pt')
    with pytest.raises(PretrainedWeightsError, match=r'17-point kernel grid.*img_size=16'):
        timm.create_model('flexnet8', pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / 'orig16.pt')))
    ok = timm.create_model('flexnet8', pretrained=True, img_size=16,
                           pretrained_cfg_overlay=dict(file=str(tmp_path / 'orig16.pt')))
    assert ok.stem.conv.source_grid == (17, 17)


# ---------------------------------------------------------------------------------------------- folders and cards
def test_written_folder_is_complete_and_validates(small_folder):
    _, folder = small_folder
    report = validate_hub_folder(folder)
    assert report['architecture'] == 'flexnet8' and report['max_abs_error']['logits'] < 1e-4
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == 'flexnet8'
    assert config['model_args']['img_size'] == [32, 32] and config['model_args']['widths'] == [24, 36, 48]
    assert config['pretrained_cfg']['input_size'] == [3, 32, 32]
    assert 'label_names' not in config  # the fixture model has no class names; none are invented
    with pytest.raises(ValueError, match='3 label names'):
        write_hub_folder(small_folder[0], folder.parent / 'labels', name='flexnet8.test', info=None, results=[],
                         label_names=['a', 'b', 'c'])
    card = ModelCard.load(folder / 'README.md')
    meta = card.data.to_dict()
    assert meta['license'] == 'mit' and meta['library_name'] == 'timm'
    assert 'cifar10' in meta['datasets'] and 'accuracy' in meta['metrics'] and 'flexconv' in meta['tags']
    assert [(r.split, r.input_size, r.top1) for r in read_card_results(folder)] == [('test[:2]', 32, 50.0)]
    for section in ('## Training recipe', '## Results', '## Limitations', '## Citation', '| `pytest` |'):
        assert section in card.text


def test_validate_rejects_incomplete_or_tampered_folder(small_folder, tmp_path):
    _, folder = small_folder
    copy = tmp_path / 'copy'
    copy.mkdir()
    for f in folder.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    sd = safetensors.torch.load_file(str(copy / 'model.safetensors'))
    sd['head.fc.bias'] = sd['head.fc.bias'] + 1.0  # loads fine, computes something else
    safetensors.torch.save_file(sd, str(copy / 'model.safetensors'))
    with pytest.raises(HubFolderError, match='logits differ'):
        validate_hub_folder(copy)
    (copy / 'README.md').unlink()
    with pytest.raises(HubFolderError, match="missing \\['README.md'\\]"):
        validate_hub_folder(copy)


def test_push_to_hub_dry_run_validates_first(small_folder, tmp_path):
    _, folder = small_folder
    cmd = [sys.executable, str(REPO / 'scripts' / 'push_to_hub.py'), str(folder), '--repo-id', 'me/flexnet8.test',
           '--dry-run']
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ('config.json', 'model.safetensors', 'README.md', 'reference_logits.safetensors'):
        assert name in proc.stdout
    assert 'would upload to https://huggingface.co/me/flexnet8.test' in proc.stdout
    (tmp_path / 'config.json').write_text('{}')
    proc = subprocess.run(cmd[:2] + [str(tmp_path)] + cmd[3:], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 1 and 'not ready to upload' in proc.stderr


def test_hub_configs_ship_as_package_data():
    pyproject = (REPO / 'pyproject.toml').read_text()
    assert 'hub_configs' in pyproject
    link = REPO / 'flexconv_zoo' / 'hub_configs'
    assert link.is_dir() and link.resolve() == (REPO / 'hub_configs').resolve()


HUB_CONFIGS = sorted(p for p in (REPO / 'hub_configs').glob('*') if p.is_dir())


def _find_rows(obj, size):
    """Rows ``{'img_size': size, 'top1': ...}`` anywhere in validate.py's JSON output."""
    if isinstance(obj, dict):
        if obj.get('img_size') == size and 'top1' in obj:
            return [obj]
        return [r for v in obj.values() for r in _find_rows(v, size)]
    if isinstance(obj, list):
        return [r for v in obj for r in _find_rows(v, size)]
    return []


@pytest.mark.parametrize('folder', HUB_CONFIGS, ids=[p.name for p in HUB_CONFIGS])
def test_published_hub_configs_folder(folder, tmp_path):
    """Every shipped folder is complete, loads, reproduces its logits, and its CI-sample results match validate.py.

    CI-sample rows are the card results with at most 512 samples: ``scripts/validate.py --subset N`` (seeded)
    must give the same top-1 (within one sample) at the same resolution.
    """
    report = validate_hub_folder(folder)
    assert report['results'], 'the card has no measured results'
    assert folder.name in pretrained_tags(), f'add a default_cfgs entry with hf_hub_id for {folder.name}'
    cfg = timm.models.get_pretrained_cfg(folder.name)
    assert cfg.hf_hub_id.endswith('/' + folder.name)
    # class names travel with the weights (timm reads config.json's label_names) and agree with the tag's cfg
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True)
    assert list(loaded.pretrained_cfg['label_names']) == list(cfg.label_names)
    assert len(cfg.label_names) == loaded.num_classes
    samples = [r for r in read_card_results(folder) if 0 < r.num_samples <= 512]
    assert samples, 'the card has no CI-sample row (a result on <= 512 test samples) to re-measure'
    for row in samples:
        out = tmp_path / f'validate_{row.input_size}'
        cmd = [sys.executable, str(REPO / 'scripts' / 'validate.py'), '--checkpoint', str(folder),
               '--data', row.dataset, '--split', row.split.split('[')[0], '--subset', str(row.num_samples),
               '--device', 'cpu', '--output', str(out)]
        if not folder.name.startswith('flextcn'):  # sequence models are evaluated at their training length
            cmd += ['--img-size', str(row.input_size)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-2000:]
        measured = [r for f in out.glob('*.json') for r in _find_rows(json.loads(f.read_text()), row.input_size)]
        assert measured, f'validate.py wrote no result for size {row.input_size}'
        assert abs(float(measured[0]['top1']) - row.top1) <= 100.0 / row.num_samples + 1e-6, (row, measured[0])
