"""Pretrained weights: the one loading path, bounded Hub waits (local stand-in), verified bytes, folders, cards.

The Hub cases run in subprocesses (tests/hub_server.py) because huggingface_hub reads its environment when imported;
each asserts the outcome and an upper bound on the wait. The stand-in serves the shipped hub_configs folders (the
bytes that will be published); damaged variants and the flexnet8 fixture (random, seeded weights written by
:func:`flexconv_zoo.hub_folder.write_hub_folder`) live in tmp_path only.
"""
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
from huggingface_hub import ModelCard

import flexconv_zoo  # noqa: F401
from flexconv_zoo.hub_folder import (
    HubFolderError, create_model_for_tag, pretrained_tags, validate_hub_folder, write_hub_folder,
)
from flexconv_zoo.loading import (
    READ_TIMEOUT, SHIPPED_ROOT, PretrainedWeightsError, file_sha256, sha256_note, weights_sha256,
)
from flexconv_zoo.model_card import CardInfo, EvalRow, read_card_results

REPO = Path(__file__).resolve().parent.parent
SHIPPED = {tag: REPO / 'hub_configs' / tag for tag in pretrained_tags() if (REPO / 'hub_configs' / tag).is_dir()}
FIRST = 'flexnet16.cifar10'
INFO = CardInfo(dataset='cifar10', dataset_name='CIFAR-10', summary='TEST FIXTURE: random weights.',
                recipe=['none (random init, seed 0)'], train_command='pytest', training_cost='none',
                limitations=['random weights'])
# How long a load may choose to wait, as the seconds it asks time.sleep for (retry back-off, resume pauses), which
# does not depend on how busy the machine is; one hung request's read timeout is checked by its request count.
NO_SLEEP = 0.0              # refused, unreachable, HTTP 500, a bad file, a read timeout: no retries, no back-off
RESUME_SLEEPS = 5.0         # a body cut short: huggingface_hub's 5 resume attempts, 1 s apart, then the error


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
def small_folder(tmp_path_factory):
    model = _fixture_model('flexnet8', seed=3)
    folder = _write(model, tmp_path_factory.mktemp('small') / 'flexnet8.test', 'flexnet8.test')
    return model, folder


def _copy(folder, dest):
    dest.mkdir(parents=True)
    for f in Path(folder).iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    return dest


def _flip_bytes(path, count=64):
    """Flip ``count`` bytes in the tensor data (past the header): the file still parses."""
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], 'little')
    for i in range(count):
        data[header + 1000 + 997 * i] ^= 0xFF
    path.write_bytes(bytes(data))


def _run_scenario(scenario, spec, tmp_path, env=None):
    spec_file = tmp_path / f'{scenario}-{len(list(tmp_path.glob("*.json")))}.json'
    spec_file.write_text(json.dumps(spec))
    base = {k: v for k, v in os.environ.items() if not k.startswith('HF_')}
    proc = subprocess.run([sys.executable, str(REPO / 'tests' / 'hub_server.py'), scenario, str(spec_file)],
                          capture_output=True, text=True, timeout=300, env=dict(base, **(env or {})), cwd=REPO)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('SCENARIO-RESULT ')]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][len('SCENARIO-RESULT '):])


def _assert_loaded(result, no_sleep=False):
    assert result['ok'], result
    assert result['value']['max_abs_err'] < 1e-4, result
    if no_sleep:
        assert result['sleeps'] == [], result


def _assert_fails(result, error_type, max_sleep, *phrases):
    assert not result['ok'] and result['type'] == error_type, result
    assert sum(result['sleeps']) <= max_sleep, result
    for phrase in phrases:
        assert phrase in result['error'], (phrase, result['error'])


def _hub_overlay(repo=None, tag=FIRST):
    """Skip the shipped copy and use the Hub repo (``repo`` in place of the tag's), keeping the tag's sha256."""
    cfg = timm.models.get_pretrained_cfg(tag)
    return dict(file=None, hf_hub_id=repo or cfg.hf_hub_id, notes=list(cfg.notes))


def _ref(tag=FIRST):
    return str(SHIPPED[tag] / 'reference_logits.safetensors')


# ---------------------------------------------------------------------------------------------- where weights come from
def test_published_tags_use_the_shipped_copy_with_sha256():
    """While unpublished, a tag's cfg points at the shipped copy (file) and records the sha256 of its bytes."""
    assert set(SHIPPED) >= {FIRST, 'flexnet16.cifar10_16px_alias_free', 'flextcn6.mnist1d'}
    for tag, folder in SHIPPED.items():
        cfg = timm.models.get_pretrained_cfg(tag)
        assert cfg.hf_hub_id == f'flexconv-zoo/{tag}'
        assert Path(cfg.file) == SHIPPED_ROOT / tag / 'model.safetensors' and Path(cfg.file).resolve().is_file()
        config = json.loads((folder / 'config.json').read_text())
        assert weights_sha256(cfg.to_dict()) == weights_sha256(config['pretrained_cfg']) \
            == file_sha256(folder / 'model.safetensors'), tag


def test_tag_declared_with_hf_hub_id_only_uses_its_shipped_folder():
    """A tag written the plain timm way (hf_hub_id, no file) still loads its shipped copy, checked by the sha256
    in that folder's config.json; without a shipped folder it goes to the Hub."""
    cfg = timm.models.get_pretrained_cfg(FIRST).to_dict()
    for key in ('file', 'notes'):
        cfg.pop(key)
    model = timm.create_model('flexnet16', pretrained=True, pretrained_cfg=cfg)
    assert Path(model.pretrained_cfg['file']) == SHIPPED_ROOT / FIRST / 'model.safetensors'
    msg = _quick_error(lambda: timm.create_model('flexnet16', pretrained=True, pretrained_cfg=dict(
        cfg, hf_hub_id='flexconv-zoo/not-shipped', tag='cifar10'), cache_dir=str(REPO / 'no-such-cache')),
        error=PretrainedWeightsError)
    assert "'flexconv-zoo/not-shipped'" in msg


def test_default_load_without_network_is_offline_and_quiet(tmp_path):
    """The README snippet on a machine without network: no connection attempt, at most one line on stderr.

    No environment variable is set. The Hub route (file=None) then fails without retrying, with what to do,
    or loads from a warm cache passed as cache_dir.
    """
    warm = tmp_path / 'warm'
    spec = dict(cache=str(tmp_path / 'unused'), block_network=True, warm={}, loads={
        'default': dict(name='flexnet16', reference=_ref()),
        'tcn': dict(name='flextcn6.mnist1d', reference=_ref('flextcn6.mnist1d')),
        'hub_cold': dict(name=FIRST, repo=f'flexconv-zoo/{FIRST}',
                         kwargs=dict(pretrained_cfg_overlay=_hub_overlay(), cache_dir=str(tmp_path / 'empty'))),
        'hub_warm': dict(name=FIRST, reference=_ref(), repo=f'flexconv-zoo/{FIRST}',
                         kwargs=dict(pretrained_cfg_overlay=_hub_overlay(), cache_dir=str(warm))),
    })
    sys.path.insert(0, str(REPO / 'tests'))
    from hub_server import populate_cache
    populate_cache(warm, {f'flexconv-zoo/{FIRST}': str(SHIPPED[FIRST])})
    out = _run_scenario('client', spec, tmp_path)
    default = out['default']
    _assert_loaded(default)
    # No connection attempt means no timeout to wait for: the shipped copy loads without touching the network
    # (how long that takes is a benchmark question, not a test's)
    assert default['connect_attempts'] == 0, default
    assert len(default['stderr']) <= 1, default['stderr']
    assert Path(default['value']['file']).resolve() == (SHIPPED[FIRST] / 'model.safetensors').resolve()
    _assert_loaded(out['tcn'])
    assert out['tcn']['connect_attempts'] == 0, out['tcn']
    assert out['hub_cold']['connect_attempts'] >= 1  # the blocked socket is really in the way (the hub_cold load tried)
    _assert_fails(out['hub_cold'], 'WeightsUnavailableError', NO_SLEEP, f"'flexconv-zoo/{FIRST}'", 'ConnectError',
                  'HF_HUB_OFFLINE', "pretrained_cfg_overlay=dict(file=", f'local-dir:hub_configs/{FIRST}')
    assert out['hub_cold']['cache'] == []
    _assert_loaded(out['hub_warm'], no_sleep=True)
    assert str(warm) in out['hub_warm']['value']['file']


def test_default_load_makes_no_connection(tmp_path):
    spec = dict(cache=str(tmp_path / 'unused'), block_network=True, loads={
        'default': dict(name='flexnet16.cifar10_16px_alias_free', reference=_ref('flexnet16.cifar10_16px_alias_free'))})
    out = _run_scenario('client', spec, tmp_path)
    _assert_loaded(out['default'])
    assert out['default']['connect_attempts'] == 0, out['default']
    assert out['connect_attempts'] == 0  # nor did importing timm and flexconv_zoo


def test_refused_port_fails_fast_or_uses_the_cache(tmp_path):
    sock = socket.socket()
    sock.bind(('127.0.0.1', 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now: connection refused
    warm = tmp_path / 'warm'
    spec = dict(cache=str(tmp_path / 'cache'), loads={
        'cold': dict(name=FIRST, repo=f'flexconv-zoo/{FIRST}', kwargs=dict(pretrained_cfg_overlay=_hub_overlay())),
        'warm': dict(name=FIRST, reference=_ref(), repo=f'flexconv-zoo/{FIRST}',
                     kwargs=dict(pretrained_cfg_overlay=_hub_overlay(), cache_dir=str(warm))),
    })
    sys.path.insert(0, str(REPO / 'tests'))
    from hub_server import populate_cache
    populate_cache(warm, {f'flexconv-zoo/{FIRST}': str(SHIPPED[FIRST])})
    out = _run_scenario('client', spec, tmp_path, env=dict(HF_ENDPOINT=f'http://127.0.0.1:{port}',
                                                           HF_HUB_CACHE=str(tmp_path / 'cache')))
    _assert_fails(out['cold'], 'WeightsUnavailableError', NO_SLEEP, 'ConnectError', 'model.safetensors')
    assert out['cold']['cache'] == []
    _assert_loaded(out['warm'], no_sleep=True)


def test_local_hub_server_every_tag_and_every_failure(tmp_path):
    """Real huggingface_hub download code against a 127.0.0.1 Hub: every tag, hf-hub:, then HTTP 500, an endpoint
    that never answers, a body cut short and flipped bytes, each with its outcome and an upper bound on the wait."""
    flipped = _copy(SHIPPED[FIRST], tmp_path / 'flipped')
    _flip_bytes(flipped / 'model.safetensors')
    repos = {f'flexconv-zoo/{tag}': str(folder) for tag, folder in SHIPPED.items()}
    repos.update({f'flexconv-zoo/{name}': str(SHIPPED[FIRST]) for name in ('err500', 'hang', 'cut')})
    repos['flexconv-zoo/flipped'] = str(flipped)
    # A Hub repo whose config.json disagrees with its weights: the Hub route checks it as a folder would.
    repos['flexconv-zoo/badconfig'] = str(_consistent_copy(
        SHIPPED[FIRST], tmp_path / 'badconfig', edit_config=lambda c: c.update(num_classes=100)))
    loads = {tag: dict(name=tag, reference=_ref(tag), repo=f'flexconv-zoo/{tag}',
                       kwargs=dict(pretrained_cfg_overlay=_hub_overlay(tag=tag))) for tag in SHIPPED}
    loads['hf_hub_form'] = dict(name=f'hf-hub:flexconv-zoo/{FIRST}', reference=_ref())
    for name in ('err500', 'hang', 'cut', 'flipped', 'badconfig'):
        loads[name] = dict(name=FIRST, repo=f'flexconv-zoo/{name}',
                           kwargs=dict(pretrained_cfg_overlay=_hub_overlay(f'flexconv-zoo/{name}')))
    # The Hub fails after the file was cached: the cache answers, within one timeout.
    loads['warm_500'] = dict(name=FIRST, reference=_ref(), repo=f'flexconv-zoo/{FIRST}',
                             behaviour={f'flexconv-zoo/{FIRST}': '500'},
                             kwargs=dict(pretrained_cfg_overlay=_hub_overlay()))
    loads['warm_hang'] = dict(name=FIRST, reference=_ref(), repo=f'flexconv-zoo/{FIRST}',
                              behaviour={f'flexconv-zoo/{FIRST}': 'hang'},
                              kwargs=dict(pretrained_cfg_overlay=_hub_overlay()))
    # The same, with only the weights in the cache: the companions add no second wait for the hanging Hub.
    sys.path.insert(0, str(REPO / 'tests'))
    from hub_server import populate_cache
    weights_only = _copy(SHIPPED[FIRST], tmp_path / 'weights_only')
    for f in weights_only.iterdir():
        if f.name != 'model.safetensors':
            f.unlink()
    populate_cache(tmp_path / 'weights_only_cache', {f'flexconv-zoo/{FIRST}': str(weights_only)})
    loads['warm_hang_weights_only'] = dict(name=FIRST, reference=_ref(), repo=f'flexconv-zoo/{FIRST}', kwargs=dict(
        pretrained_cfg_overlay=_hub_overlay(), cache_dir=str(tmp_path / 'weights_only_cache')))
    spec = dict(cache=str(tmp_path / 'cache'), repos=repos, loads=loads,
                behaviour={'flexconv-zoo/err500': '500', 'flexconv-zoo/hang': 'hang', 'flexconv-zoo/cut': 'cut'})
    out = _run_scenario('server', spec, tmp_path, env=dict(HF_HUB_CACHE=str(tmp_path / 'cache')))
    for tag in SHIPPED:
        _assert_loaded(out[tag])
        assert 'snapshots/' in out[tag]['value']['file'] and str(tmp_path / 'cache') in out[tag]['value']['file']
        # the checks' companions came with the weights
        assert {f.rsplit('/', 1)[-1] for f in out[tag]['cache'] if f.startswith('snapshots/')} == {
            'model.safetensors', 'config.json', 'reference_logits.safetensors'}, out[tag]['cache']
        # the weights' probe said the Hub answers: each companion costs one HEAD (huggingface_hub's) and one GET
        for companion in ('config.json', 'reference_logits.safetensors'):
            asked = [r.split()[0] for r in out[tag]['requests'] if r.endswith('/' + companion)]
            assert asked == ['HEAD', 'GET'], (tag, companion, out[tag]['requests'])
    _assert_loaded(out['hf_hub_form'])
    _assert_fails(out['err500'], 'WeightsUnavailableError', NO_SLEEP, "'flexconv-zoo/err500'", '500')
    assert len(out['err500']['requests']) == 1, out['err500']['requests']  # no retry of a server error
    _assert_fails(out['hang'], 'WeightsUnavailableError', NO_SLEEP, "'flexconv-zoo/hang'", 'Timeout')
    assert out['hang']['seconds'] > READ_TIMEOUT - 0.5  # it did wait for the read timeout
    assert len(out['hang']['requests']) == 1, out['hang']['requests']  # once: no second request to wait for
    _assert_fails(out['cut'], 'PretrainedWeightsError', RESUME_SLEEPS, 'model.safetensors', "'flexconv-zoo/cut'",
                  'nothing was stored in the cache')
    assert not [f for f in out['cut']['cache'] if f.startswith(('blobs/', 'snapshots/'))], out['cut']['cache']
    _assert_fails(out['flipped'], 'PretrainedWeightsError', NO_SLEEP, 'model.safetensors', 'sha256',
                  'removed from the cache')
    # the bad weights left the cache (link and blob); the repo's intact companions may stay
    snapshots = [f for f in out['flipped']['cache'] if f.startswith('snapshots/')]
    blobs = [f for f in out['flipped']['cache'] if f.startswith('blobs/')]
    assert not [f for f in snapshots if f.endswith('model.safetensors')] and len(blobs) == len(snapshots), \
        out['flipped']['cache']
    _assert_fails(out['badconfig'], 'PretrainedWeightsError', NO_SLEEP, 'config.json', 'num_classes',
                  'config.json 100')
    for label in ('warm_500', 'warm_hang', 'warm_hang_weights_only'):  # one failing request, then the cache
        _assert_loaded(out[label], no_sleep=True)
        assert len(out[label]['requests']) == 1, (label, out[label]['requests'])
    assert out['warm_hang_weights_only']['seconds'] < 2 * READ_TIMEOUT  # one wait, not one per file
    assert out['requests'] > len(SHIPPED)


def test_offline_mode_uses_the_warm_cache(tmp_path):
    """HF_HUB_OFFLINE=1 with a pre-populated cache: every tag from the Hub route, hf-hub:, no warnings; a repo not
    in the cache fails at once with what to do."""
    loads = {tag: dict(name=tag, reference=_ref(tag), kwargs=dict(pretrained_cfg_overlay=_hub_overlay(tag=tag)))
             for tag in SHIPPED}
    loads['hf_hub_form'] = dict(name=f'hf-hub:flexconv-zoo/{FIRST}', reference=_ref())
    # The 16 px tag asked for at 32 px from the Hub: built on its training grid, then resampled, as from the copy.
    alias_free = 'flexnet16.cifar10_16px_alias_free'
    ref = safetensors.torch.load_file(_ref(alias_free))
    safetensors.torch.save_file(dict(input=ref['input_test'], logits=ref['logits_test']), tmp_path / 'ref32.st')
    loads['hub_at_32px'] = dict(name=alias_free, reference=str(tmp_path / 'ref32.st'),
                                kwargs=dict(img_size=32, pretrained_cfg_overlay=_hub_overlay(tag=alias_free)))
    loads['not_cached'] = dict(name=FIRST, kwargs=dict(pretrained_cfg_overlay=_hub_overlay('flexconv-zoo/elsewhere')))
    spec = dict(cache=str(tmp_path / 'cache'), loads=loads,
                warm={f'flexconv-zoo/{tag}': str(folder) for tag, folder in SHIPPED.items()})
    out = _run_scenario('client', spec, tmp_path, env=dict(HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(tmp_path / 'cache')))
    for tag in SHIPPED:
        _assert_loaded(out[tag], no_sleep=True)
        assert not out[tag]['stderr'], out[tag]['stderr']
    _assert_loaded(out['hf_hub_form'], no_sleep=True)
    _assert_loaded(out['hub_at_32px'], no_sleep=True)
    _assert_fails(out['not_cached'], 'WeightsUnavailableError', NO_SLEEP, 'OfflineModeIsEnabled', 'HF_HUB_OFFLINE',
                  "'flexconv-zoo/elsewhere'")


# ---------------------------------------------------------------------------------------------- verified bytes
def _quick_error(fn, error=PretrainedWeightsError):
    """The error ``fn`` raises, which must come without a retry back-off (no ``time.sleep``)."""
    from hub_server import counted_sleeps
    with counted_sleeps() as slept, pytest.raises(error) as info:
        fn()
    assert slept == [], slept
    return str(info.value)


@pytest.mark.parametrize('pretrained', [True, False])
def test_exports_of_tag_models_carry_no_stale_sha256(tmp_path, pretrained):
    """A model created from a tag (then trained) exports with timm's save_for_hf; the tag's hash must not travel
    into that export's config.json, where it would refuse the new weights."""
    from timm.models import save_for_hf
    model = timm.create_model(FIRST, pretrained=pretrained)
    assert weights_sha256(model.pretrained_cfg) is None
    assert weights_sha256(timm.models.get_pretrained_cfg(FIRST).to_dict())  # the registry keeps it
    with torch.no_grad():
        model.head.fc.bias.add_(1.0)  # "trained"
    save_for_hf(model, tmp_path / 'export', safe_serialization=True)
    config = json.loads((tmp_path / 'export' / 'config.json').read_text())
    assert weights_sha256(config['pretrained_cfg']) is None
    reloaded = timm.create_model(f'local-dir:{tmp_path / "export"}', pretrained=True)
    assert torch.equal(reloaded.head.fc.bias, model.head.fc.bias)


def test_flipped_bytes_in_the_shipped_copy_are_refused(tmp_path):
    """The tag's sha256 is checked before any tensor is read (a copy stands in for a damaged install)."""
    copy = _copy(SHIPPED[FIRST], tmp_path / FIRST)
    _flip_bytes(copy / 'model.safetensors')
    cfg = timm.models.get_pretrained_cfg(FIRST)
    msg = _quick_error(lambda: timm.create_model(FIRST, pretrained=True, pretrained_cfg_overlay=dict(
        file=str(copy / 'model.safetensors'), notes=list(cfg.notes))))
    assert str(copy / 'model.safetensors') in msg and weights_sha256(cfg.to_dict()) in msg
    # without the tag's hash, the hash in the folder's config.json applies
    msg = _quick_error(lambda: timm.create_model(f'local-dir:{copy}', pretrained=True))
    assert str(copy / 'model.safetensors') in msg and 'sha256' in msg


def test_damaged_local_folder_is_refused_and_left_alone(tmp_path):
    """A user's folder that merely has 'snapshots' in its path is not the HF cache: nothing is deleted."""
    copy = _copy(SHIPPED[FIRST], tmp_path / 'snapshots' / 'mine')
    _flip_bytes(copy / 'model.safetensors')
    msg = _quick_error(lambda: timm.create_model(f'local-dir:{copy}', pretrained=True))
    assert 'sha256' in msg and 'Restore it' in msg and 'removed from the cache' not in msg
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in SHIPPED[FIRST].iterdir())


def _consistent_copy(folder, dest, edit_weights=None, edit_config=None):
    """A copy whose config.json records the sha256 of its (edited) weights: only the edit is wrong."""
    copy = _copy(folder, dest)
    if edit_weights:
        sd = safetensors.torch.load_file(str(copy / 'model.safetensors'))
        edit_weights(sd)
        safetensors.torch.save_file(sd, str(copy / 'model.safetensors'))
    config = json.loads((copy / 'config.json').read_text())
    config['pretrained_cfg']['notes'] = [sha256_note(file_sha256(copy / 'model.safetensors'))]
    if edit_config:
        edit_config(config)
    (copy / 'config.json').write_text(json.dumps(config))
    return copy


def test_nan_weights_are_refused(small_folder, tmp_path):
    def nan(sd):
        sd['blocks.1.conv1.kernel_net.output.weight'][0, :4] = float('nan')
    copy = _consistent_copy(small_folder[1], tmp_path / 'nan', edit_weights=nan)
    msg = _quick_error(lambda: timm.create_model(f'local-dir:{copy}', pretrained=True))
    assert str(copy / 'model.safetensors') in msg and 'NaN' in msg and 'blocks.1.conv1.kernel_net.output.weight' in msg
    # training / evaluation read checkpoints with the same checks (train.py --initial-checkpoint, validate.py)
    from flexconv_zoo.checkpoints import load_weights
    from flexconv_zoo.cli import UserError
    with pytest.raises(UserError, match='non-finite.*blocks.1.conv1.kernel_net.output.weight'):
        load_weights(timm.create_model('flexnet8'), copy / 'model.safetensors')


@pytest.mark.parametrize('field', ['num_classes', 'img_size', 'architecture'])
def test_inconsistent_config_names_the_fields(small_folder, tmp_path, field):
    def edit(config):
        if field == 'num_classes':
            config['model_args']['num_classes'] = 100
        elif field == 'img_size':
            config['pretrained_cfg']['input_size'] = [3, 16, 16]
        else:
            config['architecture'] = 'flexnet12'
    copy = _consistent_copy(small_folder[1], tmp_path / field, edit_config=edit)
    weights = str(copy / 'model.safetensors')
    msg = _quick_error(lambda: timm.create_model('flexnet8', pretrained=True,
                                                 pretrained_cfg_overlay=dict(file=weights)))
    assert str(copy / 'config.json') in msg
    expected = {'num_classes': ['num_classes:', 'model_args 100', 'config.json 10', 'head.fc.weight rows 10'],
                'img_size': ['img_size:', 'model_args (32, 32)', 'input_size[1:] (16, 16)'],
                'architecture': ['architecture: config.json flexnet12, model being built flexnet8']}[field]
    for phrase in expected:
        assert phrase in msg, (phrase, msg)


def test_model_arguments_that_change_the_function_must_match_the_weights(small_folder):
    """Same tensor shapes, another function: a mask threshold other than the config's is refused, while the same
    value in another form (img_size 32 for (32, 32)) loads."""
    weights = str(small_folder[1] / 'model.safetensors')
    msg = _quick_error(lambda: timm.create_model('flexnet8', pretrained=True, mask_threshold=0.2,
                                                 pretrained_cfg_overlay=dict(file=weights)))
    assert 'mask_threshold: model_args 0.1, model 0.2' in msg, msg
    model = timm.create_model('flexnet8', pretrained=True, img_size=32, pretrained_cfg_overlay=dict(file=weights))
    torch.testing.assert_close(model.state_dict(), small_folder[0].state_dict())


def test_malformed_config_names_the_file(small_folder, tmp_path):
    copy = _copy(small_folder[1], tmp_path / 'malformed')
    (copy / 'config.json').write_text('{"architecture": "flexnet8", "num_classes": 10,,}')
    msg = _quick_error(lambda: timm.create_model('flexnet8', pretrained=True, pretrained_cfg_overlay=dict(
        file=str(copy / 'model.safetensors'))))
    assert str(copy / 'config.json') in msg and 'not valid JSON' in msg and 'line 1' in msg
    proc = subprocess.run([sys.executable, str(REPO / 'scripts' / 'validate.py'), '--checkpoint', str(copy)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and str(copy / 'config.json') in proc.stderr and 'Traceback' not in proc.stderr


def test_reference_logits_are_checked_on_load(small_folder, tmp_path):
    copy = _copy(small_folder[1], tmp_path / 'ref')
    ref = safetensors.torch.load_file(str(copy / 'reference_logits.safetensors'))
    ref['logits'] = ref['logits'] + 0.5
    safetensors.torch.save_file(ref, str(copy / 'reference_logits.safetensors'))
    msg = _quick_error(lambda: timm.create_model(f'local-dir:{copy}', pretrained=True))
    assert 'do not reproduce' in msg and str(copy / 'reference_logits.safetensors') in msg
    # adapted models (another head) are not compared with the published logits
    assert timm.create_model(f'local-dir:{copy}', pretrained=True, num_classes=3).num_classes == 3


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


def test_alias_free_tag_gets_its_training_grid():
    """The 16 px tag builds on its 17-point grid (FlexNet's default is 32 px) and reproduces both references."""
    folder = SHIPPED['flexnet16.cifar10_16px_alias_free']
    model = timm.create_model('flexnet16.cifar10_16px_alias_free', pretrained=True).eval()
    assert model.stem.conv.source_grid == (17, 17)
    ref = safetensors.torch.load_file(str(folder / 'reference_logits.safetensors'))
    with torch.no_grad():
        torch.testing.assert_close(model(ref['input']), ref['logits'], atol=1e-4, rtol=1e-4)
        model.set_input_size(32)
        torch.testing.assert_close(model(ref['input_test']), ref['logits_test'], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('damage', ['corrupt', 'truncated', 'empty', 'mismatch'])
def test_broken_bare_weight_files_raise_naming_the_file(tmp_path, damage, small_folder):
    """A weight file without a config.json or hash beside it: read and fit checks still name the file."""
    weights = tmp_path / 'model.safetensors'
    data = (small_folder[1] / 'model.safetensors').read_bytes()
    if damage == 'corrupt':
        weights.write_bytes(b'\x00' * 8 + data[8:])
    elif damage == 'truncated':
        weights.write_bytes(data[:len(data) - 100])
    elif damage == 'empty':
        weights.write_bytes(b'')
    else:  # a flexnet12 checkpoint where flexnet8 weights belong
        safetensors.torch.save_file(timm.create_model('flexnet12').state_dict(), str(weights))
    msg = _quick_error(lambda: timm.create_model('flexnet8', pretrained=True,
                                                 pretrained_cfg_overlay=dict(file=str(weights))))
    assert str(weights) in msg
    assert ('do not fit flexnet8' if damage == 'mismatch' else 'corrupt or truncated') in msg


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


def test_card_keeps_each_evaluated_size_apart(small_folder, tmp_path):
    """Results at several sizes on one split stay separate entries in the model-index (the Hub merges entries that
    share task, dataset, config and split, which would file every number under the first entry's input size)."""
    model, _ = small_folder
    rows = [EvalRow('cifar10', 'test', size, top1, 10, 'pytest') for size, top1 in ((16, 50.0), (24, 40.0), (32, 30.0))]
    folder = write_hub_folder(model, tmp_path / 'sizes', name='flexnet8.test', info=INFO, results=rows)
    assert [(r.input_size, r.top1) for r in read_card_results(folder)] == [(16, 50.0), (24, 40.0), (32, 30.0)]
    index = ModelCard.load(folder / 'README.md').data.to_dict()['model-index'][0]['results']
    assert [entry['dataset']['args']['input_size'] for entry in index] == [16, 24, 32]


def test_validate_rejects_incomplete_or_tampered_folder(small_folder, tmp_path):
    _, folder = small_folder
    copy = tmp_path / 'copy'
    copy.mkdir()
    for f in folder.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    sd = safetensors.torch.load_file(str(copy / 'model.safetensors'))
    sd['head.fc.bias'] = sd['head.fc.bias'] + 1.0  # loads fine, computes something else
    safetensors.torch.save_file(sd, str(copy / 'model.safetensors'))
    with pytest.raises(HubFolderError, match='sha256'):
        validate_hub_folder(copy)
    rehashed = _consistent_copy(copy, tmp_path / 'rehashed')  # the hash follows the edit: the logits catch it
    with pytest.raises(HubFolderError, match='do not reproduce'):
        validate_hub_folder(rehashed)
    config = json.loads((rehashed / 'config.json').read_text())
    config['pretrained_cfg'].pop('notes')
    (rehashed / 'config.json').write_text(json.dumps(config))
    with pytest.raises(HubFolderError, match='records no .sha256'):
        validate_hub_folder(rehashed)
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
    assert weights_sha256(cfg.to_dict()) == report['files']['model.safetensors'], \
        f"record the sha256 in {folder.name}'s default_cfgs entry: hub_weights(name, sha256)"
    # class names travel with the weights (timm reads config.json's label_names) and agree with the tag's cfg
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True)
    assert list(loaded.pretrained_cfg['label_names']) == list(cfg.label_names)
    assert len(cfg.label_names) == loaded.num_classes
    # the card's validate commands work for a user of this folder: they name it, not a run folder of the trainer
    shown = re.findall(r'--checkpoint (\S+)', (folder / 'README.md').read_text())
    assert shown and set(shown) == {f'hub_configs/{folder.name}'}, shown
    samples = [r for r in read_card_results(folder) if 0 < r.num_samples <= 512]
    assert samples, 'the card has no CI-sample row (a result on <= 512 test samples) to re-measure'
    for row in samples:
        out = tmp_path / f'validate_{row.input_size}'
        cmd = [sys.executable, str(REPO / 'scripts' / 'validate.py'), '--checkpoint', str(folder),
               '--data', row.dataset, '--split', row.split.split(' ')[0], '--subset', str(row.num_samples),
               '--device', 'cpu', '--output', str(out)]
        if not folder.name.startswith('flextcn'):  # sequence models are evaluated at their training length
            cmd += ['--img-size', str(row.input_size)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-2000:]
        measured = [r for f in out.glob('*.json') for r in _find_rows(json.loads(f.read_text()), row.input_size)]
        assert measured, f'validate.py wrote no result for size {row.input_size}'
        assert abs(float(measured[0]['top1']) - row.top1) <= 100.0 / row.num_samples + 1e-6, (row, measured[0])


def test_card_shows_kernel_size_figure_and_training_curves(tmp_path):
    from flexconv_zoo.plots import plot_training_curves
    model = _fixture_model('flexnet8')
    curves = plot_training_curves([dict(epoch=e, train_loss=1.0 / e, val_top1=10.0 * e, lr=0.01) for e in (1, 2)],
                                  tmp_path / 'curves.png')
    rows = [EvalRow('cifar10', 'test[:2]', 32, 50.0, 2, 'pytest')]
    folder = write_hub_folder(model, tmp_path / 'with', name='flexnet8.test', info=INFO, results=rows,
                              training_curves=curves)
    card = (folder / 'README.md').read_text()
    assert '![learned kernel size per layer](kernel_sizes.png)' in card
    assert '![training curves](training_curves.png)' in card
    for name in ('kernel_sizes.png', 'training_curves.png'):
        assert (folder / name).read_bytes()[:4] == b'\x89PNG'
    validate_hub_folder(folder)  # the extra files and sections keep the folder valid
    without = write_hub_folder(model, tmp_path / 'without', name='flexnet8.test', info=INFO, results=rows)
    card = (without / 'README.md').read_text()
    assert 'no curve here' in card and not (without / 'training_curves.png').exists()


# ------------------------------------------------------------------------------------------ export from a run
def test_card_recipe_names_the_hold_out_actually_used():
    """--val-size is capped at a fifth of a small training set: the card shows the count from run_info.json."""
    from flexconv_zoo.hub_export import _recipe
    args = dict(model='flextcn4', data='japanese_vowels', epochs=200, val_size=5000, ema=False)
    info = dict(dataset=dict(name='japanese_vowels', train=216, val=54, test=370))
    lines = _recipe(args, info)
    assert 'val_size = 54 (held out of 270 training examples for model selection)' in lines
    assert not any('5000' in line for line in lines) and 'ema = False' not in lines
    assert 'val_size = 5000' in _recipe(args)  # an old run folder without run_info.json: the option as given


def test_card_train_command_names_model_and_data_then_what_differs_from_the_defaults():
    import shlex
    from flexconv_zoo.hub_export import _train_command
    from flexconv_zoo.train_options import build_train_parser
    args = vars(build_train_parser().parse_args(['--epochs', '50', '--ema', '--output', '/tmp/x']))
    command = _train_command(args)  # flexnet16 and cifar10 are train.py's defaults, and still written
    assert command == 'python scripts/train.py --model flexnet16 --data cifar10 --epochs 50 --ema'
    assert vars(build_train_parser().parse_args(shlex.split(command)[2:]))['epochs'] == 50


def test_card_training_cost_stops_at_the_selected_epoch_and_commands_name_the_folder(tmp_path, monkeypatch):
    from flexconv_zoo.hub_export import _selection, _selection_notes, _shown_path, _training_cost
    rows = [dict(epoch=e, epoch_seconds=60.0 * e) for e in (1, 2, 3)]
    assert _training_cost(rows, 'two cores') == '6.0 min of training (3 epochs) on two cores'
    assert _training_cost(rows, 'two cores', 2) == '3.0 min of training (2 epochs, to these weights) on two cores'
    assert _training_cost(rows, 'two cores', 3) == '6.0 min of training (3 epochs) on two cores'
    best = tmp_path / 'run' / 'best'
    best.mkdir(parents=True)
    assert _selection(best) == {}  # no config.json: final weights, the whole run is counted
    (best / 'config.json').write_text(json.dumps({'flexconv_zoo': {'epoch': 2, 'val_top1': 88.084, 'weights': 'ema'}}))
    selection = _selection(best)
    assert selection['epoch'] == 2
    info = dict(dataset=dict(train=45000, val=5000))
    sentence, limits = _selection_notes(selection, dict(epochs=50), rows, info)
    assert sentence == (" These are the run's best weights on its 5,000 held-out training examples (the EMA of the "
                        "weights, 88.08 % top-1 there), after epoch 2 of 50.")
    assert limits == ['A snapshot of a run in progress: exported after 3 of its 50 epochs.']
    assert _selection_notes(selection, dict(epochs=3), rows, info)[1] == []  # finished run: no snapshot line
    monkeypatch.chdir(tmp_path)
    assert _shown_path(tmp_path / 'hub_configs' / 'x.y') == str(Path('hub_configs') / 'x.y')
    assert _shown_path(Path('/elsewhere/x.y')) == '/elsewhere/x.y'


def test_export_refuses_a_run_trained_as_another_model(tmp_path):
    """Same tensor shapes, another function (mask threshold): the card would describe a model not published."""
    from flexconv_zoo.cli import UserError
    from flexconv_zoo.hub_export import export_run
    tag = 'flextcn2.mnist1d'
    run = _consistent_copy(SHIPPED[tag], tmp_path / 'run',
                           edit_config=lambda c: c['model_args'].update(mask_threshold=0.2))
    (run / 'args.json').write_text('{}')
    with pytest.raises(UserError, match=r'mask_threshold: run 0\.2, flextcn2\.mnist1d 0\.1'):
        export_run(run, tag, 'mnist1d', 'MNIST-1D', tmp_path / 'hub')
    assert not (tmp_path / 'hub').exists()


@pytest.mark.slow  # trains a full-size flexnet16 for two steps, then validates it three times
def test_export_run_writes_a_validated_card_with_flip_tta_beside_it(tmp_path, monkeypatch):
    from flexconv_zoo.evaluation import validate_main
    from flexconv_zoo.hub_export import export_run
    from flexconv_zoo.training import train_main
    from conftest import write_cifar_tarball
    from flexconv_zoo.constants import CIFAR10_CLASSES
    data = write_cifar_tarball(tmp_path, CIFAR10_CLASSES, (('train', 2), ('test', 2)))
    monkeypatch.setenv('FLEXCONV_ZOO_DATA', str(data))  # validate.py's default data folder
    monkeypatch.setenv('FLEXCONV_ZOO_CACHE', str(tmp_path / 'cache'))
    train_main(['--model', 'flexnet16', '--data', 'cifar10', '--img-size', '32', '--epochs', '1', '--batch-size', '8',
                '--val-size', '4', '--batch-augment', '--no-progress', '--output', str(tmp_path), '--name', 'run'])
    folder = export_run(tmp_path / 'run', 'flexnet16.cifar10', 'cifar10', 'CIFAR-10 (test copy)', tmp_path / 'hub',
                        img_sizes=(32,), ci_samples=8, flip_tta=True)
    measured = validate_main(['--checkpoint', str(tmp_path / 'run'), '--data', 'cifar10', '--split', 'test',
                              '--img-size', '32', '--flip-tta', '--output', str(tmp_path / 'val')])[0]
    # the metadata (model-index) holds the single-view numbers only, like timm's headline numbers
    rows = read_card_results(folder)
    assert [(r.split, r.input_size, r.num_samples) for r in rows] == [
        ('test', 32, 20), ('test (seeded sample of 8)', 32, 8)]
    assert rows[0].top1 == round(measured['top1'], 2)
    card = (folder / 'README.md').read_text()
    assert f"{measured['flip_top1']:.2f} % at 32 px (test, 20 samples)" in card
    assert '--flip-tta' in card and 'The table and the metadata above are single view' in card
    assert 'val_size = 4 (held out of 20 training examples for model selection)' in card
    # the commands name the published folder (same weights), not the run that was measured
    assert f"--checkpoint {tmp_path / 'hub'} " in card and f"--checkpoint {tmp_path / 'run'} " not in card
    # without the option, no flip sentence
    plain = export_run(tmp_path / 'run', 'flexnet16.cifar10', 'cifar10', 'CIFAR-10 (test copy)', tmp_path / 'hub2',
                       img_sizes=(32,), ci_samples=8, command_note='(resumed once with `--ema-warmup`)')
    plain_card = (plain / 'README.md').read_text()
    assert 'test-time augmentation' not in plain_card
    assert re.search(r'- Command: `python scripts/train\.py [^`]+` \(resumed once with `--ema-warmup`\)\n', plain_card)
