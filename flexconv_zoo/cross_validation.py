"""``scripts/cross_validate.py``: k-fold cross-validation of a training recipe on the training split.

A small training set (UEA JapaneseVowels: 270 utterances) leaves a hold-out of a fifth too small to tell recipes
apart: 54 examples saturate at 96-100 %. Cross-validation validates every training example once. Each fold is an
ordinary ``scripts/train.py`` run with ``--val-fold K/N --no-test`` (the test split is neither evaluated nor shown,
so nothing is chosen on it) in ``<output>/<name>/fold<K>``; folds already finished are reused, interrupted ones
resumed. The table pools the folds: every training example is predicted once, by the run that did not train on it.

    python scripts/cross_validate.py --folds 5 --jobs 2 --name jv-drop03 -- \\
        --model flextcn4 --data japanese_vowels --epochs 200 --batch-size 32 --model-kwargs block_drop_rate=0.3
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .checkpoints import latest_checkpoint
from .cli import UserError
from .files import atomic_write_text

__all__ = ['cross_validate_main', 'fold_result', 'summarise_folds', 'format_cv_table']

# train options the folds set themselves
_OWN_OPTIONS = ('--val-fold', '--val-size', '--name', '--output', '--resume', '--track-test', '--no-test')
_TRAIN_CMD = ('import sys; from flexconv_zoo.cli import run_cli; from flexconv_zoo.training import train_main; '
              'sys.exit(run_cli(train_main))')


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="k-fold cross-validation of a scripts/train.py recipe; train options follow '--'.",
        usage="%(prog)s [--folds N] [--jobs J] --name NAME [--output DIR] -- TRAIN_OPTIONS...")
    p.add_argument('--folds', type=int, default=5, help="number of folds (default 5)")
    p.add_argument('--jobs', type=int, default=1,
                   help="folds trained at once, each with cores/jobs threads (small models: one fold per core)")
    p.add_argument('--name', required=True, help="the recipe's name: folds go to <output>/<name>/fold<K>")
    p.add_argument('--output', default='runs/cv', help="parent folder (default runs/cv)")
    return p


def _split_argv(argv: Sequence[str]):
    argv = list(argv)
    if '--' not in argv and {'-h', '--help'} & set(argv):
        return argv, []  # the help needs no training options
    if '--' not in argv:
        raise UserError("give the training options after '--', e.g. -- --model flextcn4 --data japanese_vowels")
    cut = argv.index('--')
    train = argv[cut + 1:]
    clash = [a for a in train if a.split('=')[0] in _OWN_OPTIONS]
    if clash:
        raise UserError(f"{', '.join(clash)}: cross_validate.py sets the hold-out, the run folders and the test "
                        f"options of every fold itself; leave them out.")
    return argv[:cut], train


def _fold_argv(train: List[str], parent: Path, fold: int, folds: int) -> List[str]:
    run = parent / f'fold{fold}'
    if latest_checkpoint(run) is not None and (run / 'args.json').is_file():
        return ['--resume', str(run), '--no-progress']
    if run.exists():  # killed before its first checkpoint: nothing in it to keep
        shutil.rmtree(run)
    return [*train, '--val-fold', f'{fold}/{folds}', '--no-test', '--output', str(parent), '--name', f'fold{fold}',
            '--no-progress']


def _run_fold(argv: List[str], log: Path, threads: int) -> int:
    """One fold as its own process (its own thread count, its output in ``log``)."""
    package_root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, OMP_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get('PYTHONPATH')])))
    with open(log, 'a') as out:
        return subprocess.run([sys.executable, '-c', _TRAIN_CMD, *argv], stdout=out, stderr=subprocess.STDOUT,
                              env=env).returncode


def fold_result(run_dir: Path) -> Dict[str, Any]:
    """The validation numbers of one finished fold, from its ``summary.json`` and ``run_info.json``."""
    summary = json.loads((run_dir / 'summary.json').read_text())
    info = json.loads((run_dir / 'run_info.json').read_text())
    final = summary.get('final') or {}
    return dict(fold=run_dir.name, val_examples=info['dataset']['val'], final_epoch=final.get('epoch'),
                val_top1=final.get('val_top1'), val_loss=final.get('val_loss'),
                ema_val_top1=final.get('ema_val_top1'), best_val_top1=summary.get('best_val_top1'),
                best_epoch=summary.get('best_epoch'))


def summarise_folds(rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Pooled over the folds, weighted by their sizes: each training example counted once."""
    total = sum(r['val_examples'] for r in rows)

    def pooled(key: str) -> Optional[float]:
        if any(r.get(key) is None for r in rows):
            return None
        return sum(r[key] * r['val_examples'] for r in rows) / total
    top1 = pooled('val_top1')
    return dict(folds=len(rows), val_examples=total, val_correct=None if top1 is None else round(top1 * total / 100),
                val_top1=top1, val_loss=pooled('val_loss'), ema_val_top1=pooled('ema_val_top1'))


def format_cv_table(rows: Sequence[Dict[str, Any]], pooled: Dict[str, Any]) -> str:
    def num(value, fmt):
        return '-' if value is None else fmt.format(value)
    lines = ['| fold | val examples | final val top-1 | final val loss | EMA val top-1 | best val top-1 (epoch) |',
             '|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['fold']} | {r['val_examples']} | {num(r['val_top1'], '{:.2f}')} | "
                     f"{num(r['val_loss'], '{:.4f}')} | {num(r['ema_val_top1'], '{:.2f}')} | "
                     f"{num(r['best_val_top1'], '{:.2f}')} ({r['best_epoch']}) |")
    lines.append(f"| pooled | {pooled['val_examples']} ({num(pooled['val_correct'], '{}')} right) | "
                 f"{num(pooled['val_top1'], '{:.2f}')} | {num(pooled['val_loss'], '{:.4f}')} | "
                 f"{num(pooled['ema_val_top1'], '{:.2f}')} | |")
    return '\n'.join(lines)


def cross_validate_main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    own, train = _split_argv(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(own)
    if args.folds < 2:
        raise UserError(f"--folds {args.folds} is invalid: cross-validation needs at least 2 folds.")
    if args.jobs < 1:
        raise UserError(f"--jobs {args.jobs} is invalid: it must be a positive integer.")
    from tqdm.auto import tqdm
    parent = Path(args.output) / args.name
    parent.mkdir(parents=True, exist_ok=True)
    todo = [k for k in range(args.folds) if not (parent / f'fold{k}' / 'summary.json').is_file()]
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    print(f"{args.name}: {args.folds} folds, {args.folds - len(todo)} done, {len(todo)} to train "
          f"({args.jobs} at once, {threads} threads each; logs in {parent}/fold<K>.log)", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool, tqdm(total=len(todo), desc='folds', unit='fold') as bar:
        futures = {k: pool.submit(_run_fold, _fold_argv(train, parent, k, args.folds), parent / f'fold{k}.log',
                                  threads) for k in todo}
        failed = []
        for k, future in futures.items():
            if future.result() != 0:
                failed.append(k)
            bar.update()
    if failed:
        raise UserError(f"fold(s) {', '.join(map(str, failed))} failed: see {parent}/fold<K>.log; rerun the same "
                        f"command to resume them.")
    rows = [fold_result(parent / f'fold{k}') for k in range(args.folds)]
    pooled = summarise_folds(rows)
    result = dict(name=args.name, train_options=train, folds=rows, pooled=pooled)
    atomic_write_text(parent / 'cv.json', json.dumps(result, indent=2))
    print(format_cv_table(rows, pooled))
    print(f"wrote {parent / 'cv.json'}")
    return result
