"""Making and publishing Hub folders (:mod:`flexconv_zoo.hub_folder`): from a finished training run
(``scripts/export_hub.py``), from a checkpoint of the original FlexConv code (``scripts/convert_original.py``), and
the upload of a validated folder with huggingface_hub (``scripts/push_to_hub.py``).
"""
import contextlib
import io
import json
import shlex
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .cli import UserError
from .hub_folder import HubFolderError, create_model_for_tag, validate_hub_folder, write_hub_folder
from .loading import PretrainedWeightsError, differing_model_args
from .model_card import CardInfo, EvalRow

__all__ = ['UploadError', 'export_run', 'convert_original', 'push_hub_folder']

# args.json keys that make up the card's training recipe, in this order
_RECIPE_KEYS = ('model', 'initial_checkpoint', 'source_img_size', 'data', 'img_size', 'epochs', 'batch_size', 'opt',
                'lr', 'mask_lr_scale', 'weight_decay', 'sched', 'warmup_epochs', 'min_lr', 'smoothing', 'alias_free',
                'alias_free_init', 'ema', 'mixed_precision', 'val_size', 'train_subset', 'seed')
# train.py arguments that describe where a run is written, not what it trains
_NOT_IN_COMMAND = ('output', 'name', 'progress', 'resume', 'data_dir')  # data_dir: one machine's folder
# what a reader looks for first, written even where it is train.py's default
_ALWAYS_IN_COMMAND = ('model', 'data')


class UploadError(RuntimeError):
    """The Hub refused or did not answer an upload."""


# ---------------------------------------------------------------------------------------------- from a run
def _validate(folder: Path, data: str, img_sizes: Sequence[int], subset: Optional[int],
              flip_tta: bool = False, shown_folder: Optional[str] = None) -> Tuple[List[Dict], str]:
    """``scripts/validate.py`` in this process; returns its result rows and the command as a user would type it,
    naming ``shown_folder`` (a folder with the same weights: the Hub folder being written) instead of ``folder``."""
    from .evaluation import validate_main
    argv = ['--checkpoint', str(folder), '--data', data, '--split', 'test']
    if img_sizes:
        argv += ['--img-size', *map(str, img_sizes)]
    if subset:
        argv += ['--subset', str(subset)]
    if flip_tta:
        argv += ['--flip-tta']
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
        rows = validate_main(argv + ['--output', out])
    if shown_folder is not None:
        argv[1] = shown_folder
    return rows, shlex.join(['python', 'scripts/validate.py', *argv])


def _shown_path(folder: Path) -> str:
    """``folder`` as the card's commands name it: relative to the working directory (the repository root, where
    ``python scripts/validate.py`` runs) when inside it, as in ``hub_configs/<tag>``; else as given."""
    try:
        return str(Path(folder).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(folder)


def _recipe(args: Dict[str, Any], run_info: Optional[Dict[str, Any]] = None) -> List[str]:
    """The recipe lines of the card; ``val_size`` as the number of examples actually held out (the loader caps
    ``--val-size`` at a fifth of a small training set), from the run's ``run_info.json`` where it has one."""
    counts = (run_info or {}).get('dataset', {})
    lines = []
    for k in _RECIPE_KEYS:
        if k not in args or args[k] in (None, False):
            continue
        if k == 'val_size' and 'val' in counts and 'train' in counts:
            lines.append(f"val_size = {counts['val']:,} (held out of {counts['train'] + counts['val']:,} training "
                         f"examples for model selection)")
        else:
            lines.append(f"{k} = {args[k]}")
    return lines


def _read_json_if_present(path: Path) -> Optional[Dict[str, Any]]:
    return json.loads(path.read_text()) if path.is_file() else None


def _train_command(args: Dict[str, Any]) -> str:
    """The train.py command of a run (its args.json): the model and data, then every argument that differs from
    train.py's defaults."""
    from .train_options import build_train_parser
    parser = build_train_parser()
    defaults = vars(parser.parse_args([]))
    argv = []
    first = {k: args[k] for k in _ALWAYS_IN_COMMAND if k in args}
    for dest, value in {**first, **args}.items():
        if dest in _NOT_IN_COMMAND or dest not in defaults or (value == defaults[dest] and dest not in first):
            continue
        option = '--' + dest.replace('_', '-')
        if value is True:
            argv.append(option)
        elif isinstance(value, list):
            argv += [option, *map(str, value)]
        else:
            argv += [option, str(value)]
    parsed = vars(parser.parse_args(argv))  # the command must give the run's arguments back
    wrong = [d for d in parsed if d not in _NOT_IN_COMMAND and d in args and parsed[d] != args[d]]
    if wrong:
        raise ValueError(f"Cannot write the train.py command of this run: {wrong} do not round-trip.")
    return shlex.join(['python', 'scripts/train.py', *argv])


def _epoch_rows(metrics: Any) -> List[Dict[str, Any]]:
    """The per-epoch rows of a run's metrics.json (a list, or a dict holding one)."""
    return metrics if isinstance(metrics, list) else metrics.get('epochs', metrics.get('rows', []))


def _training_cost(metrics: Any, hardware: str, through_epoch: Optional[int] = None) -> str:
    """Training minutes of the run's epochs, or of those up to ``through_epoch`` (the selected epoch of a
    ``best/`` export from a run that went on training)."""
    rows = _epoch_rows(metrics)
    to_these = ''
    if through_epoch is not None and any(int(r.get('epoch', 0)) > through_epoch for r in rows):
        rows, to_these = [r for r in rows if int(r.get('epoch', 0)) <= through_epoch], ', to these weights'
    seconds = sum(float(r.get('epoch_seconds', r.get('seconds', 0.0))) for r in rows)
    return f"{seconds / 60:.1f} min of training ({len(rows)} epochs{to_these}) on {hardware}"


def _selection(weights_folder: Path) -> Dict[str, Any]:
    """What ``train.py`` recorded in a ``best/`` folder's config.json (``epoch``, ``val_top1``, ``weights``: raw or
    ema); empty for the final weights of a run."""
    config = _read_json_if_present(weights_folder / 'config.json') or {}
    meta = config.get('flexconv_zoo', {})
    return meta if 'epoch' in meta else {}


def _selection_notes(selection: Dict[str, Any], run_args: Dict[str, Any], metrics: Any,
                     run_info: Optional[Dict[str, Any]]) -> Tuple[str, List[str]]:
    """For weights selected during a run: a summary sentence (which epoch and weights, chosen on what), and a
    limitation when the run was still training at export."""
    if not selection:
        return '', []
    epoch, total = int(selection['epoch']), int(run_args.get('epochs', 0))
    held_out = (run_info or {}).get('dataset', {}).get('val')
    on = f"its {held_out:,} held-out training examples" if held_out else "its held-out training examples"
    which = 'the EMA of the weights' if selection.get('weights') == 'ema' else 'the raw weights'
    sentence = (f" These are the run's best weights on {on} ({which}, {selection['val_top1']:.2f} % top-1 there), "
                f"after epoch {epoch} of {total}.")
    rows = _epoch_rows(metrics)
    done = max((int(r.get('epoch', 0)) for r in rows), default=epoch)
    limits = [f"A snapshot of a run in progress: exported after {done} of its {total} epochs."] if done < total else []
    return sentence, limits


def _check_same_model(model: torch.nn.Module, config_path: Path, tag: str) -> None:
    """The card's numbers are measured on the run's own model (its config.json); the folder publishes ``tag``'s
    model with those weights. Arguments that change the function without changing a tensor shape (the mask
    threshold, the training grid, ...) must agree, or the published model would not be the one measured."""
    if not config_path.is_file():
        return
    run_args = json.loads(config_path.read_text()).get('model_args') or {}
    tag_args = model.construction_args()
    keys = sorted(set(run_args) - {'num_classes', 'in_chans'})  # differing_model_args skips keys the tag lacks
    differ = [f"{k}: run {saved}, {tag} {built}" for k, saved, built in differing_model_args(run_args, tag_args, keys)]
    if differ:
        raise UserError(f"{config_path.parent} was trained as another model than {tag} builds ({'; '.join(differ)}): "
                        f"export it under a tag whose model matches, or add one to default_cfgs.")


def export_run(
        run: Path,
        tag: str,
        dataset: str,
        dataset_name: str,
        output: Path,
        *,
        img_sizes: Sequence[int] = (),
        test_img_size: Optional[int] = None,
        ci_samples: int = 256,
        hardware: str = '2 CPU cores (shared machine)',
        summary: str = '',
        limitations: Sequence[str] = (),
        overwrite: bool = False,
        weights: str = 'model.safetensors',
        flip_tta: bool = False,
        command_note: str = '',
) -> Path:
    """Write and validate the Hub folder ``output`` of the run folder ``run`` (``weights`` inside it) as ``tag``.

    Every number in the card is measured here with ``scripts/validate.py`` (in process): the whole test split at
    each of ``img_sizes`` and a seeded sample of ``ci_samples`` test images, which the test suite re-measures.
    With ``flip_tta`` (images) the whole-split rows also measure flip test-time augmentation, shown beside them.
    The card's validate commands name ``output`` (it holds the same weights); ``command_note`` follows the train
    command (what the command alone does not say, e.g. flags switched on when the run was resumed).
    """
    from .checkpoints import load_weights
    from .plots import update_training_plot
    run = Path(run)
    weights_path = run / weights
    if not weights_path.is_file() or not (run / 'args.json').is_file():
        raise UserError(f"{run} has no {weights} / args.json: pass a run folder of scripts/train.py (a finished "
                        f"one, or --weights best/model.safetensors for the best epoch so far).")
    model = create_model_for_tag(tag)
    load_weights(model, weights_path)
    model.eval()
    _check_same_model(model, weights_path.parent / 'config.json', tag)

    # validate.py reads the exported folder that holds these weights (the run itself, or its best/ or ema/)
    shown = _shown_path(output)
    rows, command = _validate(weights_path.parent, dataset, img_sizes, None, flip_tta, shown)
    ci_rows, ci_command = _validate(weights_path.parent, dataset, img_sizes[:1], ci_samples, shown_folder=shown)
    results = [EvalRow(dataset, 'test', r['img_size'], round(r['top1'], 2), r['count'], command,
                       flip_top1=round(r['flip_top1'], 2) if flip_tta else None) for r in rows]
    # not "test[:N]": in the Hub's split notation that is the first N images, and --subset draws a seeded sample
    ci_split = f"test (seeded sample of {ci_samples})"
    results += [EvalRow(dataset, ci_split, r['img_size'], round(r['top1'], 2), r['count'], ci_command)
                for r in ci_rows]
    run_args = json.loads((run / 'args.json').read_text())
    run_info = _read_json_if_present(run / 'run_info.json')
    metrics = json.loads((run / 'metrics.json').read_text())
    selection = _selection(weights_path.parent)
    selected, in_progress = _selection_notes(selection, run_args, metrics, run_info)
    info = CardInfo(
        dataset=dataset,
        dataset_name=dataset_name,
        summary=(summary or f"{tag.split('.')[0]} trained on {dataset_name} with scripts/train.py.") + selected,
        recipe=_recipe(run_args, run_info),
        train_command=_train_command(run_args),
        training_cost=_training_cost(metrics, hardware, selection.get('epoch')),
        limitations=in_progress + list(limitations),
        train_command_note=command_note,
    )
    test_size = (model.in_chans, test_img_size, test_img_size) if test_img_size else None
    update_training_plot(run)  # <run>/training_curves.png from its metrics.json, shown in the card
    folder = write_hub_folder(model, output, name=tag, info=info, results=results, test_input_size=test_size,
                              overwrite=overwrite, training_curves=run / 'training_curves.png')
    report = validate_hub_folder(folder)
    print(f"wrote and validated {folder}")
    sha256 = report['files']['model.safetensors']
    print(f"  sha256 of model.safetensors (also in config.json): {sha256}; the tag's default_cfgs entry needs "
          f"hub_weights({tag!r}, {sha256!r}) (scripts/campaign.sh export writes it)")
    for r in results:
        flip = f", flip TTA {r.flip_top1:6.2f}" if r.flip_top1 is not None else ''
        print(f"  {r.split:>10} {r.input_size:>5} top1 {r.top1:6.2f}{flip} ({r.num_samples})")
    return folder


# ---------------------------------------------------------------------------------------------- original checkpoints
def convert_original(
        checkpoint: Path,
        output: Path,
        model_name: str,
        *,
        name: Optional[str] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        dataset: str = 'cifar10',
        results: Sequence[str] = (),
        command: str = '',
        overwrite: bool = False,
) -> Path:
    """Write the Hub folder ``output`` for a checkpoint of the original FlexConv code (``{"model": state_dict}``).

    :func:`flexconv_zoo.models.checkpoint_filter_fn` renames and reshapes its keys (and refuses another kernel
    grid); every key must map. ``results``: ``SPLIT:SIZE:TOP1:N:COMMAND`` strings measured elsewhere.
    """
    import timm
    from .models import checkpoint_filter_fn
    model = timm.create_model(model_name, **(model_kwargs or {}))
    state_dict = checkpoint_filter_fn(torch.load(checkpoint, map_location='cpu', weights_only=True), model)
    model.load_state_dict(state_dict, strict=True)  # a partial conversion is an error
    model.eval()
    rows = []
    for spec in results:
        split, size, top1, num, cmd = spec.split(':', 4)
        rows.append(EvalRow(dataset, split, int(size), float(top1), int(num), cmd))
    info = CardInfo(
        dataset=dataset, dataset_name=dataset,
        summary=f'Weights converted from an original FlexConv checkpoint ({Path(checkpoint).name}).',
        recipe=['Trained by the authors of the original FlexConv code; converted with scripts/convert_original.py.'],
        train_command=command,
        training_cost='see the original publication',
        limitations=['Converted weights: results are those passed to the converter, with their commands.'],
    )
    return write_hub_folder(model, output, name=name or f'{model_name}.original', info=info, results=rows,
                            overwrite=overwrite)


# ---------------------------------------------------------------------------------------------- upload
def _check_ready(folder: Path, repo_name: str) -> None:
    try:
        report = validate_hub_folder(folder)
    except (HubFolderError, PretrainedWeightsError, FileNotFoundError) as err:
        raise HubFolderError(f'{folder} is not ready to upload: {err}') from None
    print(f'validated {folder}: architecture {report["architecture"]}, '
          f'logits reproduce (max abs error {max(report["max_abs_error"].values()):.2e})')
    # a consistent folder can still be the wrong one: <model>.<tag> names the architecture users will load
    for label, tag in (('folder', folder.resolve().name), ('--repo-id', repo_name)):
        if tag.split('.')[0] != report['architecture']:
            raise HubFolderError(
                f'{label} {tag} names model {tag.split(".")[0]!r} but {folder / "config.json"} holds '
                f'{report["architecture"]!r}: rename it <architecture>.<tag> or fix config.json')


def push_hub_folder(
        folder: Path,
        repo_id: str,
        *,
        revision: Optional[str] = None,
        private: bool = False,
        create_pr: bool = False,
        commit_message: Optional[str] = None,
        dry_run: bool = False,
        validate: bool = True,
) -> Optional[Any]:
    """Validate ``folder`` (:func:`validate_hub_folder`, and its name against its architecture), then upload it with
    ``HfApi.upload_folder`` (token: ``HF_TOKEN`` or the login cache). Returns the commit info (None for a dry run).

    Raises :class:`UserError` for a wrong folder, repo id or missing token, :class:`HubFolderError` for a folder that
    is not ready, :class:`UploadError` when the Hub refuses or does not answer.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f'{folder} is not a folder: pass a hub_configs/<model>.<tag> folder')
    owner, _, name = repo_id.partition('/')
    if not owner or not name or '/' in name:
        raise UserError(f'--repo-id {repo_id} is not <org>/<model>.<tag>')
    if validate:
        _check_ready(folder, name)
    files = sorted(p for p in folder.rglob('*') if p.is_file() and not p.name.startswith('.'))
    print(f'{"would upload" if dry_run else "uploading"} to https://huggingface.co/{repo_id}:')
    for path in files:
        print(f'  {path.relative_to(folder)}  ({path.stat().st_size:,} bytes)')
    if dry_run:
        return None

    from huggingface_hub import HfApi, get_token
    token = get_token()  # HF_TOKEN or the login cache of `hf auth login`
    if not token:
        raise UserError('no Hugging Face token: set HF_TOKEN (a write token from https://huggingface.co/settings/'
                        'tokens) or run `hf auth login`, then run this again')
    api = HfApi(token=token)
    try:
        repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type='model')
        commit = api.upload_folder(
            repo_id=repo.repo_id, folder_path=str(folder), revision=revision, create_pr=create_pr,
            commit_message=commit_message or f'Upload {folder.name}', ignore_patterns=['.*'])
    except Exception as err:  # HTTP status, connection and timeout errors: one line, not a network traceback
        detail = ' '.join(str(err).split())[:300]
        raise UploadError(f'upload to {repo_id} failed ({type(err).__name__}: {detail}): check the network, that '
                          f'the token may write to {owner}, and run this again') from None
    print(f'uploaded: {commit}')
    return commit
