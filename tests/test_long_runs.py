"""Long training runs: progressive resolution (--img-size-schedule), whole-batch augmentation (--batch-augment),
a graceful stop on SIGTERM / Ctrl-C."""
import os
import shutil
import signal
import subprocess
import sys
import time
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import flexconv_zoo  # noqa: F401  (registers the models)
from flexconv_zoo.data.batch_augment import BatchAugment, InMemoryBatches, _seed
from flexconv_zoo.campaign_report import accuracy_trend, log_epoch_fit
from flexconv_zoo.cli import UserError, run_cli
from flexconv_zoo.progressive import Stage, parse_size_schedule, size_at_epoch, stage_start_epochs
from flexconv_zoo.training import train_main
from conftest import write_cifar_tarball

pytestmark = pytest.mark.usefixtures('one_thread')

TINY = ['--model', 'flexnet8', '--model-kwargs', 'widths=8,8', 'kernel_hidden=8', '--batch-size', '8',
        '--val-size', '8', '--no-progress']


# ---------------------------------------------------------------------------------------------- schedule
def test_schedule_parsing_and_stage_epochs():
    stages = parse_size_schedule(['20:0', '32:0.6'])
    assert stages == [Stage(20, 0.0), Stage(32, 0.6)]
    assert stage_start_epochs(stages, 10) == [0, 6]
    assert [size_at_epoch(stages, 10, e) for e in range(10)] == [20] * 6 + [32] * 4
    assert parse_size_schedule(None) == []


@pytest.mark.parametrize('items, match', [
    (['20'], 'not SIZE:FRACTION'), (['a:0'], 'not SIZE:FRACTION'), (['20:0.1', '32:0.5'], 'fraction 0'),
    (['20:0', '32:0.6', '24:0.5'], 'must increase'), (['1:0'], '>= 2 px'), (['20:0', '32:1.0'], r'\[0, 1\)'),
])
def test_schedule_rejects_bad_items(items, match):
    with pytest.raises(ValueError, match=match):
        parse_size_schedule(items)


# ---------------------------------------------------------------------------------------------- batch augment
def test_batch_augment_is_crop_flip_resize_normalise():
    images = torch.randint(0, 256, (6, 3, 12, 12), dtype=torch.uint8)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    aug = BatchAugment(8, padding=2, hflip=True, mean=mean, std=std)
    out = aug(images, torch.Generator().manual_seed(3))
    # replay the draws in their order: crop rows, crop columns, flips
    g = torch.Generator().manual_seed(3)
    dy, dx = torch.randint(0, 5, (6, 1), generator=g), torch.randint(0, 5, (6, 1), generator=g)
    flips = torch.rand(6, generator=g) < 0.5
    padded = F.pad(images, (2, 2, 2, 2))
    for i in range(6):
        crop = padded[i, :, dy[i, 0]:dy[i, 0] + 12, dx[i, 0]:dx[i, 0] + 12]
        crop = crop.flip(-1) if flips[i] else crop
        ref = F.interpolate(crop[None].float() / 255, size=(8, 8), mode='bilinear', antialias=True)[0]
        ref = (ref - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
        torch.testing.assert_close(out[i], ref)
    assert 0 < flips.sum() < 6  # both branches exercised by this seed
    # no padding, no flip, same size: only the normalisation
    plain = BatchAugment(12, padding=0, hflip=False)(images, torch.Generator())
    torch.testing.assert_close(plain, (images.float() / 255 - 0.5) / 0.5)
    with pytest.raises(ValueError, match='uint8'):
        aug(images.float(), torch.Generator())


def test_in_memory_batches_resume_and_shard():
    images = np.random.default_rng(0).integers(0, 256, (21, 8, 8, 3), dtype=np.uint8)
    targets = np.arange(21)
    make = lambda rank=0, n=1: InMemoryBatches(images, targets, 4, BatchAugment(8), seed=5, rank=rank,  # noqa: E731
                                               num_processes=n)
    full = list(make().batches(epoch=2))
    assert len(make()) == 6 and [len(y) for _, y in full] == [4] * 5 + [1]
    assert sorted(torch.cat([y for _, y in full]).tolist()) == list(range(21))  # every example once
    tail = list(make().batches(epoch=2, start=4))  # a resume inside the epoch sees the same batches
    for (xa, ya), (xb, yb) in zip(full[4:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(torch.cat([y for _, y in make().batches(epoch=3)]), torch.cat([y for _, y in full]))
    shards = [list(make(r, 2).batches(epoch=2)) for r in range(2)]
    assert [len(s) for s in shards] == [3, 3] == [len(make(r, 2)) for r in range(2)]
    for i, (x, y) in enumerate(full):  # process r takes global batches r, r + 2, ...
        xs, ys = shards[i % 2][i // 2]
        assert torch.equal(x, xs) and torch.equal(y, ys)
    assert _seed(1, 2) != _seed(2, 1)


# ---------------------------------------------------------------------------------------------- training
@pytest.fixture(scope='module')
def tiny_cifar(tmp_path_factory) -> Path:
    """A CIFAR-10-format JPEG tarball with 3 classes x 12 train / 4 test images (in-memory uint8 path)."""
    return write_cifar_tarball(tmp_path_factory.mktemp('cifar'))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv('FLEXCONV_ZOO_CACHE', str(tmp_path / 'cache'))


def _max_diff(a, b) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.slow  # several training runs / subprocesses: in the slow set CI also runs
def test_progressive_run_switches_size_and_resumes_exactly(tiny_cifar, tmp_path, cache):
    common = [*TINY, '--data', 'cifar10', '--data-dir', str(tiny_cifar), '--img-size-schedule', '8:0', '16:0.5',
              '--epochs', '4', '--batch-augment', '--ema', '--ema-decay', '0.9', '--track-test',
              '--output', str(tmp_path)]
    full = train_main([*common, '--name', 'full'])
    rows = json.loads((tmp_path / 'full' / 'metrics.json').read_text())
    assert [r['img_size'] for r in rows] == [8, 8, 16, 16]
    assert all('test_top1' in r and 'ema_test_top1' in r and r['mean_kernel_size'] >= 1 for r in rows)
    lrs = [r['lr'] for r in rows]
    assert lrs[1] > lrs[2] > lrs[3]  # one cosine schedule across the switch, not one per stage
    config = json.loads((tmp_path / 'full' / 'config.json').read_text())
    assert config['pretrained_cfg']['input_size'][-1] == 16 and config['model_args']['img_size'] == [16, 16]
    best_config = json.loads((tmp_path / 'full' / 'best' / 'config.json').read_text())
    best = best_config['flexconv_zoo']
    assert best['selected_on'] == 'val' and best['weights'] in ('model', 'ema')
    # chosen among the 16 px epochs only: validation at 8 px is not comparable, and the result is at 16 px
    assert best['epoch'] in (3, 4) and best_config['model_args']['img_size'] == [16, 16]
    assert full['best_epoch'] == best['epoch']
    # 24 train images (36 - 8 held out) / batch 8 = 3 steps an epoch: pause at the switch, and inside stage 2
    for stop in (6, 8):
        name = f'part{stop}'
        assert train_main([*common, '--name', name, '--stop-after-steps', str(stop)])['stopped']
        resumed = train_main(['--resume', str(tmp_path / name)])
        assert resumed['global_step'] == full['global_step']
        assert _max_diff(load_file(str(tmp_path / 'full' / 'model.safetensors')),
                         load_file(str(tmp_path / name / 'model.safetensors'))) == 0
        assert _max_diff(load_file(str(tmp_path / 'full' / 'ema' / 'model.safetensors')),
                         load_file(str(tmp_path / name / 'ema' / 'model.safetensors'))) == 0


def test_progressive_and_batch_augment_bad_options(tiny_cifar, tmp_path, cache, capsys):
    base = [*TINY, '--epochs', '1', '--output', str(tmp_path / 'runs')]
    rc = run_cli(train_main, [*base, '--data', 'cifar10', '--data-dir', str(tiny_cifar), '--img-size', '12',
                              '--img-size-schedule', '8:0', '16:0.5'])
    assert rc == 2 and 'disagrees with --img-size-schedule' in capsys.readouterr().err
    rc = run_cli(train_main, [*base, '--data', 'cifar10', '--data-dir', str(tiny_cifar),
                              '--img-size-schedule', '16:0.5'])
    assert rc == 2 and 'fraction 0' in capsys.readouterr().err
    seq = ['--model', 'flextcn2', '--epochs', '2', '--no-progress', '--output', str(tmp_path / 'runs'),
           '--data', 'mnist1d']
    rc = run_cli(train_main, [*seq, '--batch-augment'])
    assert rc == 2 and '--batch-augment needs images held in memory' in capsys.readouterr().err
    rc = run_cli(train_main, [*seq, '--img-size-schedule', '8:0', '16:0.5'])
    assert rc == 2 and '--img-size-schedule is for image models' in capsys.readouterr().err
    assert not (tmp_path / 'runs').exists()  # nothing written
    with pytest.raises(UserError):
        train_main([*base, '--data', 'cifar10', '--data-dir', str(tiny_cifar), '--img-size-schedule', 'x'])


@pytest.mark.slow  # several training runs / subprocesses: in the slow set CI also runs
def test_sigterm_checkpoints_and_stops_then_resume_finishes(tiny_cifar, tmp_path):
    root = Path(__file__).resolve().parents[1]
    env = dict(__import__('os').environ, OMP_NUM_THREADS='1', PYTHONPATH=str(root),
               FLEXCONV_ZOO_CACHE=str(tmp_path / 'cache'))
    args = [*TINY, '--data', 'cifar10', '--data-dir', str(tiny_cifar), '--img-size', '8', '--batch-augment',
            '--epochs', '200', '--checkpoint-every', '0', '--output', str(tmp_path), '--name', 'run']
    proc = subprocess.Popen([sys.executable, str(root / 'scripts' / 'train.py'), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / 'run' / 'metrics.json'
    deadline = time.monotonic() + 300
    while not metrics.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # one epoch done: the run is in its loop
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert 'received SIGTERM' in err and 'continue with --resume' in out
    assert not (tmp_path / 'run' / 'model.safetensors').exists()  # stopped, not finished
    newest = sorted((tmp_path / 'run' / 'checkpoints').glob('step_*'))[-1]
    step = int(newest.name.split('_')[1])
    assert step >= 3  # at least one epoch of 3 steps (24 training images / batch 8)
    # a resume may switch the memory layout (a speed choice: same function)
    resumed = train_main(['--resume', str(tmp_path / 'run'), '--stop-after-steps', str(step + 2), '--channels-last'])
    assert resumed['stopped'] and resumed['global_step'] == step + 2  # continued from the SIGTERM checkpoint
    assert json.loads((tmp_path / 'run' / 'args.json').read_text())['channels_last'] is False  # the run's own record


@pytest.mark.slow  # several training runs / subprocesses: in the slow set CI also runs
def test_campaign_report_table_and_calendar(tmp_path):
    root = Path(__file__).resolve().parents[1]
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'args.json').write_text(json.dumps(dict(model='flexnet8', data='cifar10', epochs=4,
                                                   img_size_schedule=['8:0', '16:0.5'])))
    rows = [dict(epoch=e, img_size=8, lr=0.01, train_loss=1.0, val_top1=50.0 + e, epoch_seconds=60.0 * e,
                 train_images_per_s=100.0, mean_kernel_size=3.0) for e in (1, 2)]
    (run / 'metrics.json').write_text(json.dumps(rows))
    script = [sys.executable, str(root / 'scripts' / 'campaign_report.py'), str(run)]
    out = subprocess.run(script, capture_output=True, text=True, timeout=300, check=True).stdout
    assert '| 2 | 8 | 1.00e-02 | 1.000 | 52.00 | - |' in out and '2 of 4 epochs done in 0.1 h' in out
    assert 'No epoch measured yet at 16 px' in out
    out = subprocess.run([*script, '--epoch-minutes', '16=9', '--plot', str(tmp_path / 'c.png')],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    assert 'Left: 2 at 16 px (9.0 min each) = 0.3 h' in out
    assert (tmp_path / 'c.png').read_bytes()[:4] == b'\x89PNG'
    missing = subprocess.run([*script[:2], str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and 'args.json is missing' in missing.stderr


def test_log_epoch_fit_recovers_an_exact_log_curve_and_rejects_one_point():
    epochs = [3, 5, 8, 13, 21]
    a, b = log_epoch_fit(epochs, [40.0 + 7.0 * np.log(e) for e in epochs])
    assert a == pytest.approx(40.0) and b == pytest.approx(7.0)
    with pytest.raises(ValueError, match='two distinct epochs'):
        log_epoch_fit([4, 4], [1.0, 2.0])


def test_accuracy_trend_fits_only_the_newest_stage_and_reads_at_the_schedule_end():
    # stage 1 (8 px) is a different curve that must not enter the fit; stage 2 (16 px) is exactly 30 + 10 ln(epoch)
    history = [dict(epoch=e, img_size=8, ema_val_top1=90.0, val_top1=90.0) for e in range(1, 6)]
    history += [dict(epoch=e, img_size=16, ema_val_top1=30.0 + 10.0 * np.log(e), val_top1=None) for e in range(6, 12)]
    (line,) = accuracy_trend({'epochs': 40}, history, fit_from=2)
    assert 'over epochs 6-11 at 16 px, read at epoch 40' in line
    assert f"EMA val {30 + 10 * np.log(40):.1f} %" in line and f"+{10 * np.log(2):.1f} a doubling" in line
    assert 'test' not in line and '; val' not in line  # keys the run does not record are left out
    assert 'it needs 5' in accuracy_trend({'epochs': 40}, history[:8], fit_from=2)[0]  # 3 epochs of stage 2
    assert accuracy_trend({'epochs': 11}, history) == []  # a finished run has nothing left to extrapolate


def test_val_size_zero_trains_on_all_training_data(tiny_cifar, tmp_path, cache):
    out = train_main([*TINY[:-3], '--val-size', '0', '--no-progress', '--data', 'cifar10', '--data-dir',
                      str(tiny_cifar), '--img-size', '8', '--epochs', '2', '--ema', '--output', str(tmp_path),
                      '--name', 'all'])
    info = json.loads((tmp_path / 'all' / 'run_info.json').read_text())
    assert info['dataset']['train'] == 36 and info['dataset']['val'] == 0  # every training image is trained on
    rows = json.loads((tmp_path / 'all' / 'metrics.json').read_text())
    assert len(rows) == 2 and all('val_top1' not in r and 'ema_val_top1' not in r for r in rows)
    assert out['test']['count'] == 12 and (tmp_path / 'all' / 'model.safetensors').is_file()
    assert not (tmp_path / 'all' / 'best').exists()  # nothing to select on


def test_ema_warmup_makes_the_average_follow_early_training(tiny_cifar, tmp_path, cache):
    common = [*TINY, '--data', 'cifar10', '--data-dir', str(tiny_cifar), '--img-size', '8', '--epochs', '2',
              '--ema', '--ema-decay', '0.9999', '--output', str(tmp_path)]
    distance = {}
    for name, extra in (('plain', []), ('warm', ['--ema-warmup'])):
        train_main([*common, '--name', name, *extra])
        raw = load_file(str(tmp_path / name / 'model.safetensors'))
        ema = load_file(str(tmp_path / name / 'ema' / 'model.safetensors'))
        distance[name] = sum((raw[k].float() - ema[k].float()).norm().item() for k in raw if 'kernel_net' in k)
    # 6 steps at decay 0.9999 leave the average at its start; with warm-up it is close to the trained weights
    assert distance['warm'] < 0.5 * distance['plain']
    assert json.loads((tmp_path / 'warm' / 'args.json').read_text())['ema_warmup'] is True


@pytest.mark.slow  # several training runs / subprocesses: in the slow set CI also runs
def test_campaign_chunk_elsewhere_round_trip(tiny_cifar, tmp_path, cache):
    """campaign.sh chunk continues a saved run (on whatever device the host has) and packs it; a second chunk on
    the same host continues in place; campaign.sh unpack merges into the local run folder, which then resumes."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS='1', FLEXCONV_ZOO_CACHE=str(tmp_path / 'cache'),
               PYTHON=sys.executable, CAMPAIGN_RUN='tiny', CAMPAIGN_RUNS=str(tmp_path / 'saved'),
               CAMPAIGN_CHUNK_DIR=str(tmp_path / 'gpu'), CAMPAIGN_DIR=str(tmp_path / 'local'), CAMPAIGN_WORKERS='0')
    args = [*TINY, '--data', 'cifar10', '--data-dir', str(tiny_cifar), '--img-size', '8', '--batch-augment',
            '--epochs', '3', '--ema', '--checkpoint-every', '0', '--output', str(tmp_path / 'saved'), '--name', 'tiny']
    assert train_main([*args, '--stop-after-steps', '3'])['stopped']  # inside epoch 1 (4 steps: 28 images / 8)
    local = tmp_path / 'local'
    local.mkdir()
    shutil.copytree(tmp_path / 'saved' / 'tiny', local / 'tiny')
    (local / 'tiny.log').write_text('local part\n')

    def sh(*cmd):
        return subprocess.run(['bash', str(root / 'scripts' / 'campaign.sh'), *cmd], env=env, capture_output=True,
                              text=True, timeout=600)

    first = sh('chunk', str(tiny_cifar), str(tmp_path / 'out'), '300', '--stop-after-steps', '6')
    assert first.returncode == 0, first.stderr[-2000:]
    assert 'packed step_00000006_e0001b000002' in first.stdout and 'in place' not in first.stdout
    chunk = sh('chunk', str(tiny_cifar), str(tmp_path / 'out'), '300')  # the warm host: from step 6, not 3
    assert chunk.returncode == 0, chunk.stderr[-2000:]
    assert 'continuing in place from step_00000006_e0001b000002' in chunk.stdout
    assert {p.name for p in (tmp_path / 'out').iterdir()} == {'ckpt.tar', 'run.tar.gz'}
    assert 'packed step_00000012_e0003b000000' in chunk.stdout  # 3 epochs x 4 steps: the chunk finished the run

    (local / 'tiny.pid').write_text(str(os.getpid()))  # a live process: the local run "runs"
    refused = sh('unpack', str(tmp_path / 'out'))
    assert refused.returncode == 1 and 'stop the local run first' in refused.stderr
    (local / 'tiny.pid').unlink()
    merged = sh('unpack', str(tmp_path / 'out'))
    assert merged.returncode == 0, merged.stderr[-2000:]
    steps = sorted(p.name for p in (local / 'tiny' / 'checkpoints').glob('step_*'))
    assert steps[-1] == 'step_00000012_e0003b000000'
    assert [r['epoch'] for r in json.loads((local / 'tiny' / 'metrics.json').read_text())] == [1, 2, 3]
    log = (local / 'tiny.log').read_text()
    # the second pack carries its own chunk's lines; the first chunk's were never unpacked
    assert log.startswith('local part\n') and 'resumed tiny after step 6' in log and 'after step 3' not in log
    assert (local / 'tiny' / 'best' / 'config.json').is_file()


def test_campaign_script_refuses_what_it_cannot_do(tmp_path):
    """campaign.sh: a chunk without a saved run, or without its arguments, an export without a tag or weights, and
    an unknown command fail with a message that says what to do; nothing is created in the chunk folder."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, CAMPAIGN_RUN='tiny', CAMPAIGN_RUNS=str(tmp_path / 'saved'),
               CAMPAIGN_CHUNK_DIR=str(tmp_path / 'chunk'), CAMPAIGN_DIR=str(tmp_path / 'local'))

    def sh(*cmd):
        return subprocess.run(['bash', str(root / 'scripts' / 'campaign.sh'), *cmd], env=env, capture_output=True,
                              text=True, timeout=60)

    no_run = sh('chunk', str(tmp_path), str(tmp_path / 'out'))
    assert no_run.returncode == 1 and f"no saved run in {tmp_path / 'saved' / 'tiny'}" in no_run.stderr
    assert 'save` and commit first' in no_run.stderr and not (tmp_path / 'chunk').exists()
    missing = sh('chunk', str(tmp_path))
    assert missing.returncode != 0 and 'usage:' in missing.stderr and 'chunk DATA_DIR OUT_DIR' in missing.stderr
    no_recipe = sh('start')  # 'tiny' is neither in the run folder nor in runs/, and has no recipe
    assert no_recipe.returncode == 1 and 'no run tiny' in no_recipe.stderr and 'no recipe' in no_recipe.stderr
    assert not (tmp_path / 'local').exists()  # refused before anything was written
    unknown = sh('resume')
    assert unknown.returncode == 2 and 'usage:' in unknown.stderr
    assert sh('save').returncode == 1  # no run folder, no checkpoint to save
    no_tag = sh('export')  # 'tiny' has no published tag
    assert no_tag.returncode == 1 and 'no tag to export to' in no_tag.stderr
    env['CAMPAIGN_RUN'] = 'flexnet16-cifar10'  # a real tag, but no weights in this (empty) run folder
    no_best = sh('export')
    assert no_best.returncode == 1 and f"no best/ weights in {tmp_path / 'local' / 'flexnet16-cifar10'}" in no_best.stderr
    env['CAMPAIGN_RUN'] = 'flexnet16-cifar10-16px-alias-free-2'  # continues a run that was never saved here
    no_init = sh('start')
    init = tmp_path / 'saved' / 'flexnet16-cifar10-16px-alias-free' / 'best'
    assert no_init.returncode == 1 and f"starts from {init}, which does not exist" in no_init.stderr
    assert not (tmp_path / 'local' / 'flexnet16-cifar10-16px-alias-free-2').exists()


def test_campaign_commit_commits_the_run_folder_alone(tmp_path):
    """`campaign.sh commit` saves the newest checkpoint into runs/<run>/ and commits that folder and nothing else:
    the previous checkpoint leaves the tree, other edits stay uncommitted, and a second call with nothing new
    commits nothing."""
    script = Path(__file__).resolve().parents[1] / 'scripts' / 'campaign.sh'
    repo, local = tmp_path / 'repo', tmp_path / 'local' / 'tiny'
    repo.mkdir()

    def git(*cmd):
        return subprocess.run(['git', '-C', str(repo), *cmd], capture_output=True, text=True, check=True).stdout

    git('init', '-q')
    git('config', 'user.email', 'ci@example.com')
    git('config', 'user.name', 'ci')
    (repo / 'README.md').write_text('v1\n')
    git('add', 'README.md')
    git('commit', '-q', '-m', 'init')
    (repo / 'README.md').write_text('v2, not for this commit\n')
    for name in ('args.json', 'run_info.json', 'metrics.json'):
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_text('{}')
    env = dict(os.environ, CAMPAIGN_RUN='tiny', CAMPAIGN_DIR=str(tmp_path / 'local'),
               CAMPAIGN_RUNS=str(repo / 'runs'))

    def commit(step=None):
        if step is not None:
            (local / 'checkpoints' / f'step_{step:08d}_e0001b000000').mkdir(parents=True)
            (local / 'checkpoints' / f'step_{step:08d}_e0001b000000' / 'state.pt').write_text(str(step))
        done = subprocess.run(['bash', str(script), 'commit'], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert 'committed' in commit(3)
    assert 'committed' in commit(6)
    tree = git('ls-tree', '-r', '--name-only', 'HEAD').split()
    assert tree == ['README.md', 'runs/tiny/args.json', 'runs/tiny/checkpoints/step_00000006_e0001b000000/state.pt',
                    'runs/tiny/metrics.json', 'runs/tiny/run_info.json']
    assert git('log', '-1', '--format=%s').strip() == 'campaign: tiny resume state step_00000006_e0001b000000'
    assert git('show', 'HEAD:README.md') == 'v1\n' and git('status', '--porcelain').strip() == 'M README.md'
    assert 'nothing new to commit' in commit()
    assert len(git('log', '--format=%h').split()) == 3


def test_campaign_then_starts_the_next_run_only_after_a_finished_one(tmp_path):
    """`campaign.sh then NEXT` waits for the trainer to exit; when the run finished (summary.json) it saves the run
    (NEXT may start from its weights), then starts NEXT; not when the run was stopped. Here NEXT has no recipe, so
    its `start` refuses in the log: proof it ran."""
    script = Path(__file__).resolve().parents[1] / 'scripts' / 'campaign.sh'
    local = tmp_path / 'local'
    (local / 'tiny' / 'checkpoints' / 'step_00000004_e0001b000000').mkdir(parents=True)
    for name in ('args.json', 'run_info.json'):
        (local / 'tiny' / name).write_text('{}')
    env = dict(os.environ, CAMPAIGN_RUN='tiny', CAMPAIGN_DIR=str(local), CAMPAIGN_POLL='0.2',
               CAMPAIGN_RUNS=str(tmp_path / 'saved'))

    def then():
        return subprocess.run(['bash', str(script), 'then', 'other'], env=env, capture_output=True, text=True,
                              timeout=60)

    idle = then()
    assert idle.returncode == 1 and 'tiny is not training' in idle.stderr
    log = local / 'tiny.log'
    for finished, expected in ((False, 'tiny stopped before its end: other not started'),
                               (True, 'no run other in')):
        summary = local / 'tiny' / 'summary.json'
        if finished:
            summary.write_text('{}')
        trainer = subprocess.Popen(['sleep', '1'])
        (local / 'tiny.pid').write_text(str(trainer.pid))
        armed = then()
        assert armed.returncode == 0 and 'other starts when tiny finishes' in armed.stdout, armed.stderr
        assert expected not in (log.read_text() if log.exists() else '')  # nothing before the trainer exits
        trainer.wait()
        deadline = time.monotonic() + 30
        while expected not in (log.read_text() if log.exists() else '') and time.monotonic() < deadline:
            time.sleep(0.2)
        assert expected in log.read_text(), log.read_text()
        # saved only once it finished
        assert (tmp_path / 'saved' / 'tiny' / 'args.json').is_file() == finished
    assert 'tiny finished: saving it, then starting other' in log.read_text()
    assert (tmp_path / 'saved' / 'tiny' / 'checkpoints' / 'step_00000004_e0001b000000').is_dir()
    assert not (local / 'other').exists()  # the refused start wrote nothing
