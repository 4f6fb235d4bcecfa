#!/usr/bin/env python3
"""Turn a finished training run into a Hub folder ``hub_configs/<model>.<tag>/`` with a measured model card.

Every number in the card is measured here, by running ``scripts/validate.py`` on the run's weights:
the whole test split at each ``--img-size`` and a small seeded sample (``--ci-samples``) that the test suite
re-measures in CI. Example::

    python scripts/export_hub.py runs/flextcn6-mnist1d --tag flextcn6.mnist1d \
        --dataset mnist1d --dataset-name MNIST-1D --hardware "2 CPU cores (shared)"
"""
import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flexconv_zoo.evaluation import UserError, load_weights, run_cli  # noqa: E402
from flexconv_zoo.hub_folder import create_model_for_tag, validate_hub_folder, write_hub_folder  # noqa: E402
from flexconv_zoo.plots import update_training_plot  # noqa: E402
from flexconv_zoo.model_card import CardInfo, EvalRow  # noqa: E402


def _validate(run: Path, data: str, img_sizes: Sequence[int], subset: Optional[int]) -> tuple:
    """Run scripts/validate.py; returns (its results rows, the command as a user would type it)."""
    cmd = ['python', 'scripts/validate.py', '--checkpoint', str(run), '--data', data, '--split', 'test']
    if img_sizes:
        cmd += ['--img-size', *map(str, img_sizes)]
    if subset:
        cmd += ['--subset', str(subset)]
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, *cmd[1:], '--output', out], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        rows = json.loads((Path(out) / 'results.json').read_text())['results']
    return rows, shlex.join(cmd)


def _recipe(run: Path) -> List[str]:
    args = json.loads((run / 'args.json').read_text())
    keys = ('model', 'initial_checkpoint', 'source_img_size', 'data', 'img_size', 'epochs', 'batch_size', 'opt', 'lr', 'mask_lr_scale', 'weight_decay',
            'sched', 'warmup_epochs', 'min_lr', 'smoothing', 'alias_free', 'alias_free_init', 'ema', 'mixed_precision', 'val_size',
            'train_subset', 'seed')
    return [f"{k} = {args[k]}" for k in keys if k in args and args[k] not in (None, False)]


def _train_command(run: Path) -> str:
    """The train.py command of the run: every argument that differs from train.py's defaults."""
    from flexconv_zoo.training import build_train_parser
    args = json.loads((run / 'args.json').read_text())
    parser = build_train_parser()
    defaults = vars(parser.parse_args([]))
    flags = {a.dest: a for a in parser._actions if a.option_strings}
    parts = ['python', 'scripts/train.py']
    for dest, value in args.items():
        if dest in ('output', 'name', 'progress', 'resume') or dest not in flags or value == defaults.get(dest):
            continue
        option = flags[dest].option_strings[-1]
        if value is True:
            parts.append(option)
        elif isinstance(value, list):
            parts += [option, *map(str, value)]
        else:
            parts += [option, str(value)]
    return shlex.join(parts)


def _training_cost(run: Path, hardware: str) -> str:
    metrics = json.loads((run / 'metrics.json').read_text())
    rows = metrics if isinstance(metrics, list) else metrics.get('epochs', metrics.get('rows', []))
    seconds = sum(float(r.get('epoch_seconds', r.get('seconds', 0.0))) for r in rows)
    return f"{seconds / 60:.1f} min of training ({len(rows)} epochs) on {hardware}"


def export_main(argv: Optional[Sequence[str]] = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('run', type=Path, help='finished run folder of scripts/train.py')
    p.add_argument('--tag', required=True, help='<model>.<tag> registered in default_cfgs')
    p.add_argument('--dataset', required=True, help='data set name for train/validate (and the Hub metadata)')
    p.add_argument('--dataset-name', required=True, help='human-readable data set name')
    p.add_argument('--img-size', type=int, nargs='*', default=(), help='resolutions to report (default: training)')
    p.add_argument('--test-img-size', type=int, default=None, help="extra evaluation resolution of the tag's cfg")
    p.add_argument('--ci-samples', type=int, default=256, help='size of the test sample re-measured in CI')
    p.add_argument('--hardware', default='2 CPU cores (shared machine)')
    p.add_argument('--summary', default='', help='one paragraph on what the weight is')
    p.add_argument('--limitation', action='append', default=[], help='a limitation line (repeatable)')
    p.add_argument('--output', type=Path, default=None, help='default: hub_configs/<tag>')
    p.add_argument('--overwrite', action='store_true')
    p.add_argument('--weights', default='model.safetensors',
                   help="weights inside the run folder: model.safetensors (final), best/model.safetensors (best on "
                        "validation so far: exports a run that is still training), ema/model.safetensors")
    args = p.parse_args(argv)

    run = args.run
    weights = run / args.weights
    if not weights.is_file() or not (run / 'args.json').is_file():
        raise UserError(f"{run} has no {args.weights} / args.json: pass a run folder of scripts/train.py (a finished "
                        f"one, or --weights best/model.safetensors for the best epoch so far).")
    model = create_model_for_tag(args.tag)
    load_weights(model, weights)
    model.eval()

    # validate.py reads the exported folder that holds these weights (the run itself, or its best/ or ema/)
    rows, command = _validate(weights.parent, args.dataset, args.img_size, None)
    ci_rows, ci_command = _validate(weights.parent, args.dataset, args.img_size[:1], args.ci_samples)
    results = [EvalRow(args.dataset, 'test', r['img_size'], round(r['top1'], 2), r['count'], command) for r in rows]
    results += [EvalRow(args.dataset, f"test[:{args.ci_samples}]", r['img_size'], round(r['top1'], 2), r['count'],
                        ci_command) for r in ci_rows]
    info = CardInfo(
        dataset=args.dataset,
        dataset_name=args.dataset_name,
        summary=args.summary or f"{args.tag.split('.')[0]} trained on {args.dataset_name} with scripts/train.py.",
        recipe=_recipe(run),
        train_command=_train_command(run),
        training_cost=_training_cost(run, args.hardware),
        limitations=args.limitation,
    )
    test_size = None
    if args.test_img_size:
        test_size = (model.in_chans, args.test_img_size, args.test_img_size)
    update_training_plot(run)  # <run>/training_curves.png from its metrics.json, shown in the card
    folder = write_hub_folder(model, args.output or ROOT / 'hub_configs' / args.tag, name=args.tag, info=info,
                              results=results, test_input_size=test_size, overwrite=args.overwrite,
                              training_curves=run / 'training_curves.png')
    report = validate_hub_folder(folder)
    print(f"wrote and validated {folder}")
    print(f"  sha256 of model.safetensors (also in config.json): {report['files']['model.safetensors']}; add "
          f"hub_weights({args.tag!r}, '<sha256>') to the tag's default_cfgs entry")
    for r in results:
        print(f"  {r.split:>10} {r.input_size:>5} top1 {r.top1:6.2f} ({r.num_samples})")
    return folder


if __name__ == '__main__':
    sys.exit(run_cli(export_main))
