"""scripts/train.py: Accelerate training, 2-process CPU, exact resume, export, fine-tuning, bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file

import flexconv_zoo  # noqa: F401  (registers the models)
from conftest import write_cifar_tarball, write_image_folder
from flexconv_zoo.campaign_report import epoch_table
from flexconv_zoo.cli import UserError, run_cli
from flexconv_zoo.progressive import check_stage_epochs, parse_size_schedule
from flexconv_zoo.train_options import build_train_parser, resolve_train_args
from flexconv_zoo.training import param_groups, train_main

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / 'scripts' / 'train.py')
TINY = ['--model', 'flexnet8', '--model-kwargs', 'widths=8,8', 'kernel_hidden=8', '--img-size', '16',
        '--batch-size', '8', '--val-size', '12', '--no-progress']

pytestmark = pytest.mark.usefixtures('one_thread')



@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory) -> Path:
    """3 classes of 20x20 images (not the 16 px training size): 24 train + 8 test images per class."""
    return write_image_folder(tmp_path_factory.mktemp('tiny'), 20)


def _env():
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT), ACCELERATE_USE_CPU='1')


def _weights(path: Path):
    return load_file(str(path))


def _max_diff(a, b) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.slow
def test_two_process_cpu_run(tiny_data, tmp_path):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', '29517', TRAIN,
           *TINY, '--data', str(tiny_data), '--epochs', '1', '--output', str(tmp_path), '--name', 'dist']
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / 'dist'
    info = json.loads((run / 'run_info.json').read_text())
    assert info['num_processes'] == 2 and info['global_batch_size'] == 16
    digests = json.loads((run / 'summary.json').read_text())['rank_weight_digests']
    assert len(digests) == 2 and digests[0] == digests[1]  # same weights on both ranks
    ckpts = list((run / 'checkpoints').glob('step_*'))
    assert len(ckpts) == 1 and {'random_states_0.pkl', 'random_states_1.pkl', 'model.safetensors',
                                'optimizer.bin'} <= {p.name for p in ckpts[0].iterdir()}
    assert _max_diff(_weights(ckpts[0] / 'model.safetensors'), _weights(run / 'model.safetensors')) == 0


@pytest.mark.slow
def test_killed_run_resumes_to_same_weights(tiny_data, tmp_path):
    common = [*TINY, '--data', str(tiny_data), '--epochs', '3', '--output', str(tmp_path), '--alias-free',
              '--alias-free-init', '--ema', '--ema-decay', '0.9', '--checkpoint-every', '4']
    full = train_main([*common, '--name', 'full'])
    paused = train_main([*common, '--name', 'part', '--stop-after-steps', '11'])  # mid-epoch 2 of 3
    assert paused['stopped'] and not (tmp_path / 'part' / 'model.safetensors').exists()
    args_file = tmp_path / 'part' / 'args.json'  # a run started before newer options existed still resumes
    saved = json.loads(args_file.read_text())
    args_file.write_text(json.dumps({k: v for k, v in saved.items() if k not in ('grad_checkpointing', 'channels_last')}))
    resumed = train_main(['--resume', str(tmp_path / 'part'), '--no-progress'])
    assert resumed['global_step'] == full['global_step'] == 24
    for sub in ('', 'ema/', 'best/'):
        diff = _max_diff(_weights(tmp_path / 'full' / sub / 'model.safetensors'),
                         _weights(tmp_path / 'part' / sub / 'model.safetensors'))
        assert diff <= 1e-6, (sub, diff)
    rows_full = json.loads((tmp_path / 'full' / 'metrics.json').read_text())
    rows_part = json.loads((tmp_path / 'part' / 'metrics.json').read_text())
    assert [r['epoch'] for r in rows_part] == [1, 2, 3]
    assert [r['val_top1'] for r in rows_part] == pytest.approx([r['val_top1'] for r in rows_full])
    assert rows_part[-1]['train_loss'] == pytest.approx(rows_full[-1]['train_loss'], rel=1e-5)
    assert resumed['test']['top1'] == pytest.approx(full['test']['top1'])


def test_grad_checkpointing_trains_the_same_parameters(tiny_data, tmp_path):
    common = [*TINY, '--data', str(tiny_data), '--epochs', '1', '--output', str(tmp_path)]
    train_main([*common, '--name', 'plain'])
    train_main([*common, '--name', 'ckpt', '--grad-checkpointing'])
    plain, ckpt = (_weights(tmp_path / n / 'model.safetensors') for n in ('plain', 'ckpt'))
    params = [k for k in plain if not k.endswith(('running_mean', 'running_var', 'num_batches_tracked'))]
    assert _max_diff({k: plain[k] for k in params}, {k: ckpt[k] for k in params}) <= 1e-6
    # PyTorch's checkpointing runs each block's forward twice in training, so BN statistics see every batch twice
    tracked = [k for k in plain if k.endswith('num_batches_tracked')]
    assert tracked and all(ckpt[k] == 2 * plain[k] for k in tracked if 'blocks' in k)


def test_channels_last_trains_the_same_parameters(tiny_data, tmp_path):
    """--channels-last (model and batches in channels_last) trains the plain run's network.

    What holds to float tolerance: the training loss, every kernel-net, mask, BN-affine and head parameter, and
    the train-mode function (batch statistics) of the exported models. What does not: a FlexConv bias followed by
    batch norm has a true gradient of zero, so Adam turns the two layouts' different float rounding into full
    learning-rate steps; those biases differ by up to ~lr between the runs, the BN running means follow them with
    a lag, and so the eval-mode outputs differ slightly (here ~1e-2 in the logits, same test accuracy; the same
    happens between any two runs whose convolutions round differently). Block dropout is off here: its masks are
    drawn in memory order, so the two layouts would draw different (equally valid) masks."""
    common = [*TINY[:5], 'block_drop_rate=0', *TINY[5:], '--data', str(tiny_data), '--epochs', '1',
              '--output', str(tmp_path)]
    plain_out = train_main([*common, '--name', 'plain'])
    cl_out = train_main([*common, '--name', 'cl', '--channels-last'])
    assert json.loads((tmp_path / 'cl' / 'args.json').read_text())['channels_last'] is True
    plain, cl = (_weights(tmp_path / n / 'model.safetensors') for n in ('plain', 'cl'))
    free = [k for k in plain if k.endswith(('conv.bias', 'conv1.bias', 'conv2.bias', 'running_mean'))]
    kept = [k for k in plain if k not in free]
    assert len(free) == 10 and any('kernel_net' in k for k in kept) and any('mask' in k for k in kept)
    assert _max_diff({k: plain[k] for k in kept}, {k: cl[k] for k in kept}) <= 1e-4
    models = [timm.create_model(f'local-dir:{tmp_path / n}', pretrained=True, block_drop_rate=0.0)
              for n in ('plain', 'cl')]
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():  # train mode: BN's batch statistics cancel the pre-BN biases
        torch.testing.assert_close(models[1].train()(x.to(memory_format=torch.channels_last)), models[0].train()(x),
                                   atol=1e-4, rtol=1e-4)
    rows = [json.loads((tmp_path / n / 'metrics.json').read_text())[-1] for n in ('plain', 'cl')]
    assert rows[1]['train_loss'] == pytest.approx(rows[0]['train_loss'], rel=1e-5)
    assert cl_out['test']['top1'] == pytest.approx(plain_out['test']['top1'])


def test_channels_last_is_an_error_for_sequence_models(tmp_path, capsys):
    argv = ['--model', 'flextcn2', '--model-kwargs', 'widths=(4,)', 'kernel_hidden=8', '--data', 'mnist1d',
            '--data-dir', str(tmp_path / 'data'), '--epochs', '1', '--output', str(tmp_path / 'runs'), '--channels-last',
            '--no-progress']
    assert run_cli(train_main, argv) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: --channels-last is for image models') and '\n' not in err
    assert not (tmp_path / 'runs').exists()


def test_export_is_timm_hub_layout_and_fine_tunes_at_new_size(tiny_data, tmp_path):
    train_main([*TINY, '--data', str(tiny_data), '--epochs', '1', '--output', str(tmp_path), '--name', 'base'])
    base = tmp_path / 'base'
    cfg = json.loads((base / 'config.json').read_text())
    assert cfg['architecture'] == 'flexnet8' and cfg['num_classes'] == 3
    assert cfg['model_args']['img_size'] == [16, 16] and cfg['pretrained_cfg']['input_size'] == [3, 16, 16]
    assert cfg['label_names'] == ['class0', 'class1', 'class2']
    model = timm.create_model(f'local-dir:{base}', pretrained=True).eval()
    assert _max_diff(model.state_dict(), _weights(base / 'model.safetensors')) == 0
    # fine-tune the exported weights at 24 px: the export then describes a 24 px model
    train_main([*TINY[:-3], '--img-size', '24', '--batch-size', '8', '--val-size', '12', '--no-progress',
                '--initial-checkpoint', str(base), '--data', str(tiny_data), '--epochs', '1',
                '--output', str(tmp_path), '--name', 'ft24', '--lr', '1e-3'])
    cfg24 = json.loads((tmp_path / 'ft24' / 'config.json').read_text())
    assert cfg24['model_args']['img_size'] == [24, 24] and cfg24['pretrained_cfg']['input_size'] == [3, 24, 24]


def test_resume_of_a_fine_tune_needs_no_initial_checkpoint(tiny_data, tmp_path):
    """A resumed run loads its own weights over the initial ones: it resumes (to the same weights) where the
    --initial-checkpoint folder is gone, e.g. on another machine; run_info.json gives the architecture."""
    train_main([*TINY, '--data', str(tiny_data), '--epochs', '1', '--output', str(tmp_path), '--name', 'base'])
    fine_tune = [*TINY, '--initial-checkpoint', str(tmp_path / 'base'), '--data', str(tiny_data), '--epochs', '2',
                 '--output', str(tmp_path), '--checkpoint-every', '4', '--lr', '1e-3']
    train_main([*fine_tune, '--name', 'full'])
    assert train_main([*fine_tune, '--name', 'part', '--stop-after-steps', '5'])['stopped']
    (tmp_path / 'base').rename(tmp_path / 'moved')
    train_main(['--resume', str(tmp_path / 'part'), '--no-progress'])
    assert _max_diff(_weights(tmp_path / 'full' / 'model.safetensors'),
                     _weights(tmp_path / 'part' / 'model.safetensors')) <= 1e-6


def test_gradient_accumulation_and_smoothing(tiny_data, tmp_path):
    out = train_main([*TINY, '--data', str(tiny_data), '--epochs', '2', '--output', str(tmp_path), '--name', 'acc',
                      '--grad-accum', '3', '--smoothing', '0.1'])
    assert out['global_step'] == 2 * 3  # 8 batches per epoch -> 3 optimizer steps (the last one partial)
    rows = json.loads((tmp_path / 'acc' / 'metrics.json').read_text())
    assert [r['step'] for r in rows] == [3, 6] and all(np.isfinite(r['train_loss']) for r in rows)


def test_rebase_keeps_the_function():
    model = timm.create_model('flexnet8', img_size=16, widths=(8, 8), kernel_hidden=8).eval()
    model.set_mask_width(0.3)
    x = torch.randn(2, 3, 24, 24)
    model.set_input_size(img_size=24)
    ref = model(x)
    model.rebase_input_size(24)
    assert model.img_size == (24, 24) and all(l.source_grid == (25, 25) for l in model.flexconv_layers())
    assert torch.allclose(model(x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_param_groups_mask_lr_and_no_decay():
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    model = timm.create_model('flexnet8', img_size=16, widths=(8,), kernel_hidden=8)
    groups = param_groups(model, weight_decay=0.05, mask_lr_scale=0.1)
    masks = {id(p) for n, p in model.named_parameters() if n in model.mask_parameter_names()}
    mask_group = next(g for g in groups if g.get('lr_scale') == 0.1)
    assert {id(p) for p in mask_group['params']} == masks and mask_group['weight_decay'] == 0
    assert sum(len(g['params']) for g in groups) == len(list(model.parameters()))
    opt = create_optimizer_v2(groups, opt='adam', lr=0.01, weight_decay=0.05)
    sched, _ = create_scheduler_v2(opt, sched='cosine', num_epochs=10, warmup_epochs=1, min_lr=1e-6,
                                   step_on_epochs=False, updates_per_epoch=5)
    for step in (2, 5, 30):  # warm-up and cosine: the mask lr is always a tenth of the main lr
        sched.step_update(num_updates=step)
        lrs = {g.get('lr_scale', 1.0): g['lr'] for g in opt.param_groups}
        assert 1e-6 < lrs[1.0] < 0.01 and lrs[0.1] == pytest.approx(0.1 * lrs[1.0])


def _snapshot(folder: Path):
    return {p: p.stat().st_mtime_ns for p in folder.rglob('*')} if folder.exists() else {}


@pytest.mark.parametrize('case', ['unknown_model', 'missing_data', 'not_a_run', 'corrupt_checkpoint', 'too_small',
                                  'existing_run', 'corrupt_args_json'])
def test_bad_input_is_one_line_error(case, tiny_data, tmp_path, capsys):
    (tmp_path / 'runs' / 'old').mkdir(parents=True)
    (tmp_path / 'runs' / 'old' / 'args.json').write_text('{}')
    (tmp_path / 'bad.safetensors').write_bytes(b'\x00garbage' * 10)
    base = [*TINY, '--data', str(tiny_data), '--epochs', '1', '--output', str(tmp_path / 'runs'), '--name', 'new']
    argv = {
        'unknown_model': [*base, '--model', 'flexnet99'],
        'missing_data': [*base, '--data', str(tmp_path / 'no_such_folder')],
        'not_a_run': ['--resume', str(tmp_path / 'runs' / 'old')],
        'corrupt_checkpoint': [*base, '--initial-checkpoint', str(tmp_path / 'bad.safetensors')],
        'too_small': [*base, '--img-size', '1'],
        'existing_run': [*base, '--name', 'old'],
        'corrupt_args_json': ['--resume', str(tmp_path / 'runs' / 'damaged')],
    }[case]
    if case == 'corrupt_args_json':
        (tmp_path / 'runs' / 'damaged' / 'checkpoints' / 'step_00000001_e0000b000001').mkdir(parents=True)
        (tmp_path / 'runs' / 'damaged' / 'args.json').write_text('{"model": ')
    before = _snapshot(tmp_path)
    assert run_cli(train_main, argv) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and '\n' not in err and 'Traceback' not in err
    assert _snapshot(tmp_path) == before  # nothing written or overwritten


@pytest.mark.slow
def test_script_bad_input_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, TRAIN, '--model', 'resnet_nope', '--data', str(tmp_path / 'x'),
                           '--output', str(tmp_path)], env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
    assert len(lines) == 1 and 'Traceback' not in proc.stderr
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ issue 12
@pytest.mark.parametrize('option', [
    ['--epochs', '-1'], ['--epochs', '0'], ['--lr', 'nan'], ['--batch-size', '0'], ['--train-subset', '0'],
    ['--grad-accum', '0'], ['--val-size', '-5'], ['--data', 'cifar100'], ['--img-size', '0'],
    ['--checkpoint-every', '-1'], ['--ema-decay', '1.5'],
    ['--opt', 'adamm'], ['--sched', 'cosin'], ['--sched', 'plateau'],  # timm's names: checked before the data is read
    ['--img-size-schedule', '16:0', '24:0.2'],  # 24 px would start after the only epoch
])
def test_bad_option_is_one_line_error_naming_it(option, tiny_data, tmp_path, capsys):
    argv = [*TINY, '--data', str(tiny_data), '--epochs', '1', '--output', str(tmp_path / 'runs'), '--name', 'x',
            *option]
    assert run_cli(train_main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f'error: {option[0]} ') and '\n' not in err, err
    assert not (tmp_path / 'runs').exists()  # rejected before anything is written


def test_unwritable_output_is_an_error_before_training(tiny_data, tmp_path, capsys):
    (tmp_path / 'a_file').write_text('')
    argv = [*TINY, '--data', str(tiny_data), '--epochs', '1', '--output', str(tmp_path / 'a_file' / 'runs')]
    assert run_cli(train_main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: --output ') and 'not writable' in err and '\n' not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a_file']


def _make_read_only(folder: Path):
    """Read-only for this process: chmod for a user; root ignores modes, so the immutable flag (ext4/xfs)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return lambda: folder.chmod(0o755)
    if subprocess.run(['chattr', '+i', str(folder)], capture_output=True).returncode != 0:
        pytest.fail(f"cannot make {folder} read-only for root (chattr +i failed): run on ext4/xfs")
    return lambda: subprocess.run(['chattr', '-i', str(folder)], check=True)


def test_read_only_run_folder_is_an_error_before_resuming(tiny_data, tmp_path, capsys):
    train_main([*TINY, '--data', str(tiny_data), '--epochs', '1', '--output', str(tmp_path), '--name', 'ro',
                '--stop-after-steps', '2'])
    ckpts = tmp_path / 'ro' / 'checkpoints'
    restore = _make_read_only(ckpts)
    try:
        assert run_cli(train_main, ['--resume', str(tmp_path / 'ro'), '--no-progress']) == 2
    finally:
        restore()
    assert capsys.readouterr().err.strip().startswith('error: --resume ')


@pytest.mark.parametrize('lr', ['1e12', '1e5'])  # 1e5: the masks turn NaN while the last loss is still finite
def test_diverging_run_stops_with_a_clear_message(lr, tiny_data, tmp_path, capsys):
    argv = [*TINY, '--data', str(tiny_data), '--epochs', '2', '--output', str(tmp_path), '--name', 'nan',
            '--opt', 'sgd', '--lr', lr, '--warmup-epochs', '0']
    assert run_cli(train_main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: training diverged at epoch 1') and '--lr' in err and '\n' not in err
    assert not (tmp_path / 'nan' / 'model.safetensors').exists()


class _WritesOnUnpickle:
    """A pickle that creates a file when loaded with full pickle (what a crafted run folder could do)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, 'w')


@pytest.fixture(scope='module')
def full_run(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('full')
    train_main([*TINY, '--data', str(tiny_data), '--epochs', '2', '--output', str(out), '--name', 'full',
                '--checkpoint-every', '3', '--ema', '--alias-free'])
    return out / 'full'


@pytest.mark.parametrize('damage', ['unsafe_pickle', pytest.param('truncated_weights', marks=pytest.mark.slow),
                                    pytest.param('truncated_optimizer', marks=pytest.mark.slow)])
def test_resume_loads_no_code_and_falls_back_to_an_intact_checkpoint(damage, full_run, tiny_data, tmp_path, capsys):
    train_main([*TINY, '--data', str(tiny_data), '--epochs', '2', '--output', str(tmp_path), '--name', 'part',
                '--checkpoint-every', '3', '--ema', '--alias-free', '--stop-after-steps', '7'])
    folders = sorted((tmp_path / 'part' / 'checkpoints').iterdir())
    assert [f.name[:13] for f in folders] == ['step_00000006', 'step_00000007']
    # the layout of every checkpoint so far (Accelerate's registered-object files): old runs must still resume
    assert {'model.safetensors', 'optimizer.bin', 'random_states_0.pkl', 'custom_checkpoint_0.pkl',
            'custom_checkpoint_1.pkl', 'custom_checkpoint_2.pkl'} == {p.name for p in folders[-1].iterdir()}
    marker = tmp_path / 'code_ran'
    if damage == 'unsafe_pickle':
        torch.save(_WritesOnUnpickle(marker), folders[-1] / 'custom_checkpoint_1.pkl')
    else:
        target = folders[-1] / ('model.safetensors' if damage == 'truncated_weights' else 'optimizer.bin')
        target.write_bytes(target.read_bytes()[:len(target.read_bytes()) // 2])
    resumed = train_main(['--resume', str(tmp_path / 'part'), '--no-progress'])
    assert not marker.exists()
    out = capsys.readouterr().out
    assert f'warning: checkpoint {folders[-1]} cannot be restored' in out and 'after step 6: epoch 1' in out, out
    assert resumed['global_step'] == 16
    for sub in ('', 'ema/'):  # resumed from step 6: the same weights as the uninterrupted run
        assert _max_diff(_weights(full_run / sub / 'model.safetensors'),
                         _weights(tmp_path / 'part' / sub / 'model.safetensors')) <= 1e-6


def test_validation_and_test_passes_show_progress(tiny_data, tmp_path, capsys):
    argv = [a for a in TINY if a != '--no-progress']
    train_main([*argv, '--data', str(tiny_data), '--epochs', '1', '--output', str(tmp_path), '--name', 'bars'])
    err = capsys.readouterr().err
    assert 'validating' in err and 'testing' in err


def test_epoch_line_says_the_alias_free_penalty_is_in_the_train_loss(tiny_data, tmp_path, capsys):
    train_main([*TINY, '--data', str(tiny_data), '--epochs', '1', '--output', str(tmp_path), '--name', 'af',
                '--alias-free'])
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith('epoch 1:'))
    assert 'train loss' in line and '(cross-entropy + alias-free penalty, now ' in line
    # metrics.json records the value printed, and the campaign report gives it a column
    rows = json.loads((tmp_path / 'af' / 'metrics.json').read_text())
    penalty = rows[0]['alias_free_penalty']
    assert f'now {penalty:.4f})' in line
    table = epoch_table(rows + [dict(rows[0], epoch=0, alias_free_penalty=None)])
    assert table.splitlines()[0].endswith('| alias-free penalty |')
    assert table.splitlines()[2].endswith(f'| {penalty:.4f} |') and table.splitlines()[3].endswith('| - |')
    assert 'alias-free penalty' not in epoch_table([{k: v for k, v in rows[0].items() if k != 'alias_free_penalty'}])


def test_demo_trains_with_the_band_limited_start():
    demo = (ROOT / 'scripts' / 'demo.sh').read_text()
    train_cmd = demo[demo.index('python scripts/train.py'):demo.index('python scripts/validate.py')]
    assert '--alias-free ' in train_cmd and '--alias-free-init' in train_cmd


@pytest.mark.parametrize('form', [['--data-dir', '/data/x'], ['--data-dir=/data/x']])
def test_demo_gives_its_data_folder_to_both_steps(tmp_path, form):
    """`bash scripts/demo.sh --data-dir DIR`: train.py gets every extra option, validate.py the data folder too
    (a stand-in `python` on PATH records the two command lines)."""
    stub = tmp_path / 'python'
    stub.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "calls"}\n')
    stub.chmod(0o755)
    proc = subprocess.run(['bash', str(ROOT / 'scripts' / 'demo.sh'), *form, '--seed', '3'], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}"))
    assert proc.returncode == 0, proc.stderr
    train, validate = (tmp_path / 'calls').read_text().splitlines()
    assert train.startswith('scripts/train.py') and ' '.join(form) in train and '--seed 3' in train
    assert validate.startswith('scripts/validate.py') and ' '.join(form) in validate and '--seed' not in validate


@pytest.mark.slow  # two training subprocesses
def test_bf16_mixed_precision_trains_on_cpu(tiny_data, tmp_path):
    """``--mixed-precision bf16`` (docs/PERFORMANCE.md: 1.25-1.36x on a CPU with avx512_bf16) runs the forward under
    bf16 autocast: same seed, different arithmetic, finite results."""
    common = [*TINY, '--data', str(tiny_data), '--epochs', '1', '--output', str(tmp_path)]
    weights = {}
    for name, extra in (('fp32', []), ('bf16', ['--mixed-precision', 'bf16'])):
        # a process of its own: Accelerate fixes the precision once per process
        proc = subprocess.run([sys.executable, TRAIN, *common, '--name', name, *extra], env=_env(),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        weights[name] = load_file(str(tmp_path / name / 'model.safetensors'))
        row = json.loads((tmp_path / name / 'metrics.json').read_text())[0]
        assert np.isfinite(row['train_loss']) and 0 <= row['val_top1'] <= 100
    assert all(torch.isfinite(w).all() for w in weights['bf16'].values())
    assert any(not torch.equal(weights['fp32'][k], weights['bf16'][k]) for k in weights['fp32'])


# ------------------------------------------------------------------------------------------------ review fixes
def test_misspelled_opt_and_sched_name_close_matches(tiny_data, tmp_path, capsys):
    base = [*TINY, '--data', str(tiny_data), '--epochs', '1', '--output', str(tmp_path / 'runs')]
    assert run_cli(train_main, [*base, '--opt', 'adamm']) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: --opt adamm is not a timm optimizer: did you mean adam') and '\n' not in err
    assert run_cli(train_main, [*base, '--sched', 'cosin']) == 2
    err = capsys.readouterr().err.strip()
    assert 'did you mean cosine?' in err and 'pick one of cosine, ' in err and 'Traceback' not in err


@pytest.mark.parametrize('items, epochs, starts', [
    (['20:0', '24:0.5', '32:0.55'], 4, '20 px at epoch 1, 24 px at epoch 3, 32 px at epoch 3: 24 px would never'),
    (['20:0', '32:0.96'], 10, '20 px at epoch 1, 32 px at epoch 11: 32 px would never'),
])
def test_size_schedule_stages_that_round_away_are_rejected(items, epochs, starts, tmp_path, capsys):
    """Start fractions are rounded to epochs: a stage that would get no epoch is an error naming every start."""
    with pytest.raises(ValueError, match=starts):
        check_stage_epochs(parse_size_schedule(items), epochs)
    check_stage_epochs(parse_size_schedule(['20:0', '32:0.6']), 50)  # the campaign's schedule: epochs 1 and 31
    argv = ['--data', 'cifar10', '--data-dir', str(tmp_path / 'nothing'), '--img-size-schedule', *items,
            '--epochs', str(epochs), '--output', str(tmp_path / 'runs'), '--no-progress']
    assert run_cli(train_main, argv) == 2  # before any data is looked for
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: --img-size-schedule ') and starts in err and '\n' not in err


def _fake_run(folder: Path, argv) -> Path:
    """A run folder as train.py leaves it, without training: args.json of ``argv`` and a checkpoint folder."""
    args = vars(build_train_parser().parse_args(argv))
    (folder / 'checkpoints' / 'step_00000010_e0000b000010').mkdir(parents=True)
    (folder / 'args.json').write_text(json.dumps(args, indent=2))
    return folder


def test_resume_applies_every_given_override_and_refuses_fixed_options(tmp_path):
    # the campaign run's recipe (scripts/campaign.sh start)
    run = _fake_run(tmp_path / 'run', [
        '--model', 'flexnet16', '--data', 'cifar10', '--data-dir', '/elsewhere', '--img-size', '16', '--epochs', '60',
        '--alias-free', '0.1', '--alias-free-mask', '--alias-free-init', '--batch-augment', '--channels-last',
        '--ema', '--ema-decay', '0.9995', '--ema-warmup', '--smoothing', '0.1', '--track-test',
        '--checkpoint-every', '400', '--keep-checkpoints', '2', '--output', '.', '--name', 'run', '--no-progress',
        '--workers', '8', '--stop-after-steps', '99'])
    saved = json.loads((run / 'args.json').read_text())
    defaults = vars(build_train_parser().parse_args([]))
    # the campaign's resume and its GPU chunk: as before, the run's options plus the data folder (and workers)
    for extra, workers in (([], 8), (['--workers', '8'], 8)):
        resumed = vars(resolve_train_args(['--resume', str(run), '--data-dir', str(tmp_path), '--ema-warmup',
                                           '--no-progress', *extra]))
        assert resumed == {**defaults, **saved, 'data_dir': str(tmp_path), 'ema_warmup': True, 'progress': False,
                           'workers': workers, 'resume': str(run), 'stop_after_steps': None}
    # a value equal to train.py's default is still an override, and on/off options switch off again
    resumed = resolve_train_args(['--resume', str(run), '--workers', '0', '--checkpoint-every', '500',
                                  '--no-track-test', '--no-channels-last', '--no-ema-warmup', '--progress',
                                  '--stop-after-steps', '12'])
    assert (resumed.workers, resumed.checkpoint_every, resumed.track_test, resumed.channels_last,
            resumed.ema_warmup, resumed.progress, resumed.stop_after_steps) == (0, 500, False, False, False, True, 12)
    # the run's own value is no change; another one would have been ignored: an error that names it
    assert resolve_train_args(['--resume', str(run), '--epochs', '60', '--lr', '0.01']).epochs == 60
    with pytest.raises(UserError) as e:
        resolve_train_args(['--resume', str(run), '--epochs', '80', '--lr', '0.001', '--workers', '2'])
    msg = str(e.value)
    assert msg.startswith('--epochs, --lr cannot change when resuming') and '--data-dir, ' in msg
    assert '--workers' in msg
    assert '--[no-]track-test' in msg and 'start a new run' in msg


def test_resume_of_a_run_without_checkpoint_says_what_to_do(tiny_data, tmp_path, capsys):
    """A run killed before its first checkpoint: neither the same command nor --resume can continue it, and both
    say so (the first used to send to --resume, which then said 'not a run folder')."""
    command = [*TINY, '--data', str(tiny_data), '--epochs', '1', '--output', str(tmp_path), '--name', 'early']
    (tmp_path / 'early').mkdir()
    (tmp_path / 'early' / 'args.json').write_text(json.dumps(vars(build_train_parser().parse_args(command))))
    assert run_cli(train_main, command) == 2
    err = capsys.readouterr().err.strip()
    assert 'has no checkpoint yet' in err and 'delete or rename it' in err and '--resume' not in err
    assert run_cli(train_main, ['--resume', str(tmp_path / 'early')]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path / 'early'} has no checkpoint yet") and 'delete or rename' in err
    assert 'not a run folder' not in err and '\n' not in err


def test_resume_with_another_number_of_processes_is_refused(tiny_data, tmp_path, capsys):
    train_main([*TINY, '--data', str(tiny_data), '--epochs', '1', '--output', str(tmp_path), '--name', 'two',
                '--stop-after-steps', '1'])
    info_file = tmp_path / 'two' / 'run_info.json'
    info_file.write_text(json.dumps(dict(json.loads(info_file.read_text()), num_processes=2)))  # as if torchrun x2
    before = _snapshot(tmp_path)
    assert run_cli(train_main, ['--resume', str(tmp_path / 'two'), '--no-progress']) == 2
    err = capsys.readouterr().err.strip()
    assert 'trained with 2 process(es)' in err and 'this launch has 1' in err and '--num_processes 2' in err
    assert _snapshot(tmp_path) == before


def test_damaged_newest_checkpoint_is_set_aside(tiny_data, tmp_path, capsys):
    """A damaged checkpoint newer than the one restored is renamed to damaged-<name>: left as the newest step_*
    name, pruning with --keep-checkpoints 1 would delete every fresh checkpoint right after writing it."""
    train_main([*TINY, '--data', str(tiny_data), '--epochs', '1', '--output', str(tmp_path), '--name', 'run',
                '--stop-after-steps', '2'])
    ckpts = tmp_path / 'run' / 'checkpoints'
    (intact,) = ckpts.iterdir()
    bad = ckpts / 'step_00000099_e0009b000000'  # e.g. a copy from another machine that broke off
    bad.mkdir()
    (bad / 'model.safetensors').write_bytes(b'\x00' * 10)
    capsys.readouterr()
    out = train_main(['--resume', str(tmp_path / 'run'), '--keep-checkpoints', '1', '--stop-after-steps', '4',
                      '--checkpoint-every', '0'])
    assert out['global_step'] == 4
    assert intact.name.startswith('step_00000002')
    assert sorted(p.name for p in ckpts.iterdir()) == [f'damaged-{bad.name}', 'step_00000004_e0000b000004']
    log = capsys.readouterr().out
    assert 'after step 2' in log and f'renamed the damaged checkpoint {bad} to damaged-{bad.name}' in log


def test_stop_and_checkpoint_on_the_same_step_save_once(tiny_data, tmp_path, monkeypatch):
    import flexconv_zoo.training as training
    saved = []
    real = training.save_training_state
    monkeypatch.setattr(training, 'save_training_state',
                        lambda acc, run_dir, name, *a, **k: saved.append(name) or real(acc, run_dir, name, *a, **k))
    train_main([*TINY, '--data', str(tiny_data), '--epochs', '1', '--output', str(tmp_path), '--name', 'run',
                '--checkpoint-every', '2', '--stop-after-steps', '4'])
    assert saved == ['step_00000002_e0000b000002', 'step_00000004_e0000b000004']  # step 4 once, not twice


@pytest.fixture(scope='module')
def tiny_cifar(tmp_path_factory) -> Path:
    """3 classes x 12 train / 4 test images in the CIFAR-10 tarball layout (the --batch-augment input path)."""
    return write_cifar_tarball(tmp_path_factory.mktemp('cifar'))


def test_batch_augment_with_grad_accum_steps_at_every_epoch_end_and_resumes_exactly(tiny_cifar, tmp_path,
                                                                                     monkeypatch):
    """--batch-augment tells Accelerate where an epoch ends: 28 images / batch 8 = 4 batches, accumulated in 3s, is
    2 optimizer steps an epoch (the last one partial), as with a DataLoader, and no gradient is pending at an
    epoch's checkpoint, so a resume gives the uninterrupted run's weights."""
    monkeypatch.setenv('FLEXCONV_ZOO_CACHE', str(tmp_path / 'cache'))
    common = ['--model', 'flexnet8', '--model-kwargs', 'widths=8,8', 'kernel_hidden=8', '--img-size', '8',
              '--batch-size', '8', '--val-size', '8', '--no-progress', '--data', 'cifar10', '--data-dir',
              str(tiny_cifar), '--batch-augment', '--grad-accum', '3', '--epochs', '2', '--output', str(tmp_path)]
    full = train_main([*common, '--name', 'full'])
    assert full['global_step'] == 4
    assert [r['step'] for r in json.loads((tmp_path / 'full' / 'metrics.json').read_text())] == [2, 4]
    assert train_main([*common, '--name', 'part', '--stop-after-steps', '3'])['stopped']  # inside epoch 2
    assert train_main(['--resume', str(tmp_path / 'part')])['global_step'] == 4
    assert _max_diff(_weights(tmp_path / 'full' / 'model.safetensors'),
                     _weights(tmp_path / 'part' / 'model.safetensors')) <= 1e-6
