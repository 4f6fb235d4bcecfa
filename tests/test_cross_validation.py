"""k-fold hold-outs (``--val-fold``), ``--no-test`` and scripts/cross_validate.py."""
import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from flexconv_zoo.cli import parse_val_fold, run_cli
from flexconv_zoo.cross_validation import cross_validate_main, format_cv_table, summarise_folds
from flexconv_zoo.data import create_datasets
from flexconv_zoo.data.datasets import kfold_split
from flexconv_zoo.evaluation import validate_main
from flexconv_zoo.training import train_main

pytestmark = pytest.mark.usefixtures('one_thread')

TINY_TCN = ['--model', 'flextcn2', '--model-kwargs', 'widths=8,8', 'kernel_hidden=8', '--data', 'japanese_vowels',
            '--epochs', '1', '--batch-size', '32', '--no-progress']


def test_kfold_split_partitions_and_stratifies():
    targets = np.repeat(np.arange(3), [7, 11, 13])
    holds = [kfold_split(targets, k, 4, seed=2) for k in range(4)]
    for keep, hold in holds:
        assert np.array_equal(np.sort(np.concatenate([keep, hold])), np.arange(31))
    all_held = np.concatenate([hold for _, hold in holds])
    assert np.array_equal(np.sort(all_held), np.arange(31))  # every example validated exactly once
    assert {len(hold) for _, hold in holds} <= {7, 8}
    for cls in range(3):
        per_fold = [(targets[hold] == cls).sum() for _, hold in holds]
        assert max(per_fold) - min(per_fold) <= 1, per_fold
    assert np.array_equal(holds[1][1], kfold_split(targets, 1, 4, seed=2)[1])
    assert not np.array_equal(holds[1][1], kfold_split(targets, 1, 4, seed=3)[1])


@pytest.mark.parametrize('fold, folds, n', [(5, 5, 20), (-1, 5, 20), (0, 1, 20), (0, 5, 3)])
def test_kfold_split_rejects_folds_that_do_not_exist(fold, folds, n):
    with pytest.raises(ValueError, match='fold'):
        kfold_split(np.zeros(n, dtype=int), fold, folds)


def test_parse_val_fold():
    assert parse_val_fold('2/5') == (2, 5)
    for bad in ('5/5', '-1/5', '0/1', 'a/5', '3', '1/5/2'):
        with pytest.raises(argparse.ArgumentTypeError, match='K/N'):
            parse_val_fold(bad)


def test_val_fold_holds_out_one_fold_of_the_training_split():
    folds = [create_datasets('japanese_vowels', val_fold=(k, 5)) for k in range(5)]
    for splits in folds:
        assert len(splits.val) == 54 and len(splits.train) == 216 and len(splits.test) == 370
        assert not set(splits.val.indices) & set(splits.train.indices)
        assert np.bincount(splits.val.base.targets[splits.val.indices], minlength=9).tolist() == [6] * 9
    assert sorted(np.concatenate([s.val.indices for s in folds]).tolist()) == list(range(270))


@pytest.mark.parametrize('argv, needle', [
    (['--data', 'character_trajectories', '--val-fold', '0/5'], '--val-fold'),
    (['--track-test', '--no-test'], '--no-test'),
])
def test_contradicting_hold_out_options_are_one_line_errors(argv, needle, tmp_path, capsys):
    assert run_cli(train_main, [*TINY_TCN, *argv, '--output', str(tmp_path / 'runs')]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and needle in err and '\n' not in err
    assert not (tmp_path / 'runs').exists()


def test_a_fold_that_does_not_exist_is_rejected_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        train_main([*TINY_TCN, '--val-fold', '5/5', '--output', str(tmp_path)])
    assert exc.value.code == 2 and '--val-fold' in capsys.readouterr().err


def test_fold_run_trains_on_the_other_folds_and_skips_the_test_split(tmp_path, capsys):
    summary = train_main([*TINY_TCN, '--val-fold', '1/5', '--no-test', '--output', str(tmp_path), '--name', 'f1'])
    run = tmp_path / 'f1'
    out = capsys.readouterr().out
    assert 'test split not evaluated (--no-test)' in out and 'test top1' not in out
    assert summary['test'] is None and 'ema_test' not in summary
    assert json.loads((run / 'summary.json').read_text())['test'] is None
    info = json.loads((run / 'run_info.json').read_text())['dataset']
    assert (info['train'], info['val'], info['test']) == (216, 54, 370)
    assert json.loads((run / 'args.json').read_text())['val_fold'] == [1, 5]
    assert 'test_top1' not in json.loads((run / 'config.json').read_text())['flexconv_zoo']
    rows = validate_main(['--checkpoint', str(run), '--data', 'japanese_vowels', '--split', 'val', '--val-fold', '1/5',
                          '--output', str(tmp_path / 'val')])
    assert rows[0]['count'] == 54  # validate.py finds the same hold-out, so it reproduces the run's val accuracy
    assert rows[0]['top1'] == pytest.approx(summary['final']['val_top1'])


@pytest.mark.parametrize('argv, needle', [
    (['--name', 'x', '--model', 'flextcn2'], "after '--'"),
    (['--name', 'x', '--', '--model', 'flextcn2', '--val-size', '10'], '--val-size'),
    (['--name', 'x', '--', '--model', 'flextcn2', '--track-test'], '--track-test'),
    (['--name', 'x', '--folds', '1', '--', '--model', 'flextcn2'], '--folds'),
    (['--name', 'x', '--jobs', '0', '--', '--model', 'flextcn2'], '--jobs'),
])
def test_cross_validate_bad_input_is_one_line_error(argv, needle, tmp_path, capsys):
    assert run_cli(cross_validate_main, ['--output', str(tmp_path / 'cv'), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and needle in err and '\n' not in err
    assert not (tmp_path / 'cv').exists()


def test_pooled_numbers_weight_the_folds_by_size():
    rows = [dict(fold='fold0', val_examples=3, val_top1=100.0, val_loss=0.1, ema_val_top1=None, best_val_top1=100.0,
                 best_epoch=2),
            dict(fold='fold1', val_examples=1, val_top1=0.0, val_loss=0.5, ema_val_top1=None, best_val_top1=0.0,
                 best_epoch=1)]
    pooled = summarise_folds(rows)
    assert pooled['val_top1'] == pytest.approx(75.0) and pooled['val_correct'] == 3
    assert pooled['val_loss'] == pytest.approx(0.2) and pooled['ema_val_top1'] is None
    table = format_cv_table(rows, pooled).splitlines()
    assert len(table) == 5 and table[-1].startswith('| pooled | 4 (3 right) | 75.00 | 0.2000 | - |')


@pytest.mark.slow
def test_cross_validate_trains_every_fold_once_and_reuses_finished_ones(tmp_path, capsys):
    argv = ['--folds', '3', '--jobs', '2', '--name', 'tiny', '--output', str(tmp_path), '--', *TINY_TCN]
    result = cross_validate_main(argv)
    parent = tmp_path / 'tiny'
    assert [r['val_examples'] for r in result['folds']] == [90, 90, 90]
    assert result['pooled']['val_examples'] == 270
    assert json.loads((parent / 'cv.json').read_text())['pooled'] == result['pooled']
    for k in range(3):
        assert json.loads((parent / f'fold{k}' / 'args.json').read_text())['val_fold'] == [k, 3]
        assert 'test split not evaluated' in (parent / f'fold{k}.log').read_text()
    stamps = {k: (parent / f'fold{k}' / 'summary.json').stat().st_mtime_ns for k in range(3)}
    capsys.readouterr()
    again = cross_validate_main(argv)  # finished folds are read, not retrained
    assert '3 done, 0 to train' in capsys.readouterr().out
    assert again['pooled'] == result['pooled']
    assert stamps == {k: (parent / f'fold{k}' / 'summary.json').stat().st_mtime_ns for k in range(3)}


def test_cross_validate_help_needs_no_training_options(capsys):
    from flexconv_zoo.cross_validation import cross_validate_main
    with pytest.raises(SystemExit) as exit_info:
        cross_validate_main(['--help'])
    assert exit_info.value.code == 0 and '--folds' in capsys.readouterr().out
