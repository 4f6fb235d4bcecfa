"""Run folders and weight files: the training checkpoints of a run and the user's weights, read and written.

* Training checkpoints, ``<run>/checkpoints/step_XXXXXXXX_eXXXXbXXXXXX/``: Accelerate ``save_state`` (model,
  optimizer, RNG) plus ``custom_checkpoint_<i>.pkl`` for scheduler, loop state and EMA in that order, written to
  a temporary folder and renamed, read back without unpickling code (:func:`load_training_state`).
* Exported weights in timm's Hub layout (``model.safetensors`` + ``config.json``): :func:`export_weights`.
* Models from any of these, a bare weights file or a published model: :func:`load_model`, :func:`load_weights`.
"""
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from .cli import UserError
from .files import atomic_write_text
from .models import FlexConvModelMixin

__all__ = [
    'checkpoint_folders', 'latest_checkpoint', 'checkpoint_name', 'save_training_state', 'load_training_state',
    'restore_newest', 'weights_file', 'load_weights', 'load_model', 'min_input_size', 'check_model_name',
    'create_model', 'pretrained_model', 'export_weights',
]

_CUSTOM_STATE = re.compile(r'^custom_checkpoint_(\d+)\.pkl$')
WEIGHT_FILE_NAMES = ('model.safetensors', 'pytorch_model.bin', 'model.pth')


# ------------------------------------------------------------------------------------------------ training state
def checkpoint_folders(run_dir: Path) -> List[Path]:
    """Complete checkpoint folders of a run, newest first (incomplete ones are temporary names, never matched)."""
    return sorted((Path(run_dir) / 'checkpoints').glob('step_*[0-9]'), reverse=True)


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The newest complete checkpoint folder of a run."""
    folders = checkpoint_folders(run_dir)
    return folders[0] if folders else None


def checkpoint_name(global_step: int, epoch: int, batch_in_epoch: int) -> str:
    """``step_XXXXXXXX_eXXXXbXXXXXX``: sorts by step, and says where in the data the run stands."""
    return f'step_{global_step:08d}_e{epoch:04d}b{batch_in_epoch:06d}'


def _read_checkpoint_files(folder: Path) -> Dict[str, Any]:
    """Read every file of a checkpoint without executing code: safetensors, and ``torch.load(weights_only=True)``
    (Accelerate's numpy/RNG allow-list) for the pickles. Raises on a damaged or unsafe file, naming it; nothing is
    restored until the whole folder has been read."""
    from accelerate.utils import load
    from safetensors.torch import load_file
    contents = {}
    for path in sorted(folder.iterdir()):
        try:
            if path.suffix == '.safetensors':
                contents[path.name] = load_file(str(path))
            elif path.is_file():
                contents[path.name] = load(str(path), map_location='cpu')  # weights_only=True
        except Exception as e:  # truncated zip, bad header, a pickle that names a forbidden global, ...
            msg = ' '.join(str(e).split())
            raise ValueError(f"{path.name}: {type(e).__name__}: {msg[:300]}") from None
    if 'model.safetensors' not in contents or 'optimizer.bin' not in contents:
        raise ValueError("model.safetensors or optimizer.bin is missing")
    return contents


def load_training_state(accelerator, folder: Path, custom_objects: Sequence[Any]) -> None:
    """Restore a checkpoint written by :func:`save_training_state` (or by Accelerate's ``register_for_checkpointing``).

    Accelerate's ``load_state`` unpickles registered objects with ``weights_only=False`` (arbitrary code from the
    run folder), so it only restores model, optimizer and RNG here, from a view of the folder without the
    ``custom_checkpoint_*.pkl`` files; those plain state dicts are read with ``weights_only=True``.
    """
    contents = _read_checkpoint_files(folder)
    custom = {int(m.group(1)): name for name in contents if (m := _CUSTOM_STATE.match(name))}
    if sorted(custom) != list(range(len(custom_objects))):
        raise ValueError(f"holds {len(custom)} training-state files, this run needs {len(custom_objects)} "
                         f"(was it written with other options, e.g. --ema?)")
    with tempfile.TemporaryDirectory(prefix='flexconv_resume_') as view:
        for path in folder.iterdir():
            if path.name not in custom.values():
                os.symlink(path.resolve(), Path(view) / path.name)
        accelerator.load_state(view)
    for index, obj in enumerate(custom_objects):
        obj.load_state_dict(contents[custom[index]])


def save_training_state(accelerator, run_dir: Path, name: str, keep: int, custom_objects: Sequence[Any] = ()) -> Path:
    """``save_state`` into a temporary folder, then rename it to ``checkpoints/<name>``: a checkpoint folder is
    complete or absent. Only the newest ``keep`` folders stay.

    ``custom_objects`` (scheduler, loop state, EMA) go to ``custom_checkpoint_<i>.pkl`` exactly as Accelerate's
    ``register_for_checkpointing`` writes them; they are not registered so that loading stays safe.
    """
    from accelerate.checkpointing import save_custom_state
    root = Path(run_dir) / 'checkpoints'
    final = root / name
    tmp = root / f'.tmp_{final.name}'
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    for index, obj in enumerate(custom_objects):
        save_custom_state(obj, str(tmp), index)  # written by the main process only
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in sorted(root.glob('step_*[0-9]'))[:-max(keep, 1)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _set_aside(folder: Path) -> Path:
    """Rename a checkpoint folder to ``damaged-<name>`` (``-2``, ``-3``, ... if taken): out of the ``step_*`` names
    that restore and pruning see, but kept for a look."""
    target = folder.with_name(f'damaged-{folder.name}')
    n = 1
    while target.exists():
        n += 1
        target = folder.with_name(f'damaged-{folder.name}-{n}')
    os.replace(folder, target)
    return target


def restore_newest(accelerator, run_dir: Path, custom_objects: Sequence[Any]) -> Path:
    """Load the newest intact checkpoint; a damaged newer one (a crash mid-copy, a full disk) is reported, skipped
    and, once an older one is restored, renamed to ``damaged-<name>``: left as ``step_*`` it would stay the newest
    name, and pruning (which keeps the highest names) could delete every fresh checkpoint right after writing it.
    Nothing is restored from a checkpoint until all of its files have been read."""
    damaged, skipped = [], []
    for folder in checkpoint_folders(run_dir):
        try:
            load_training_state(accelerator, folder, custom_objects)
        except Exception as e:
            damaged.append(f"{folder.name} ({e})")
            skipped.append(folder)
            accelerator.print(f"warning: checkpoint {folder} cannot be restored ({e}); trying an older one")
            continue
        accelerator.wait_for_everyone()  # every process has read what it needs before a folder moves
        if accelerator.is_main_process:
            for bad in skipped:
                accelerator.print(f"warning: renamed the damaged checkpoint {bad} to {_set_aside(bad).name}")
        accelerator.wait_for_everyone()
        return folder
    raise UserError(f"No intact checkpoint in {Path(run_dir) / 'checkpoints'}: {'; '.join(damaged)}. Start a new "
                    f"run (with --initial-checkpoint to keep weights) or restore the folder from a backup.")


# ------------------------------------------------------------------------------------------------ weights
def weights_file(folder: Path) -> Optional[Path]:
    """The weights file of a checkpoint or Hub-layout folder, None if it has none."""
    for name in WEIGHT_FILE_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def export_weights(model: nn.Module, folder: Path, class_names: Sequence[str], extra: Dict[str, Any]) -> None:
    """Weights + config in timm's Hub layout, written to a temporary folder and moved into place. ``config.json``'s
    ``model_args`` record the size the kernels are defined on; ``extra`` is merged into it."""
    from timm.models import save_for_hf
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f'.export_{os.getpid()}'
    shutil.rmtree(tmp, ignore_errors=True)
    model_config = dict(label_names=list(class_names)) if class_names else {}
    model_args = model.source_size_kwargs() if isinstance(model, FlexConvModelMixin) else None
    save_for_hf(model, str(tmp), model_config=model_config, model_args=model_args, safe_serialization=True)
    cfg = json.loads((tmp / 'config.json').read_text())
    cfg.update(extra)
    atomic_write_text(tmp / 'config.json', json.dumps(cfg, indent=2))
    for name in ('model.safetensors', 'config.json'):
        os.replace(tmp / name, folder / name)
    shutil.rmtree(tmp, ignore_errors=True)


def _read_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    """The package's one weight reader (:func:`flexconv_zoo.loading.read_weights`), errors as user errors."""
    from .loading import PretrainedWeightsError, read_weights
    if not path.is_file():
        raise UserError(f"Checkpoint {path} does not exist.")
    try:
        return read_weights(path)
    except PretrainedWeightsError as e:
        raise UserError(str(e)) from None


def load_weights(model: nn.Module, path: Path, strict_head: bool = True) -> List[str]:
    """Load a checkpoint file (this package's, timm's or the original FlexConv code's) into ``model``.

    A classifier of another size is dropped (fine-tuning on new classes) unless ``strict_head``.
    Returns the names of the parameters that were not in the checkpoint.
    """
    from .loading import PretrainedWeightsError, check_finite
    from .models import checkpoint_filter_fn
    state_dict = checkpoint_filter_fn(_read_state_dict(Path(path)), model)
    try:
        check_finite(state_dict, str(path))
    except PretrainedWeightsError as e:
        raise UserError(str(e)) from None
    own = model.state_dict()
    mismatched = [k for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
    classifier = getattr(model, 'pretrained_cfg', {}).get('classifier', 'head.fc')
    if mismatched and (strict_head or any(not k.startswith(classifier) for k in mismatched)):
        raise UserError(f"Checkpoint {path} does not fit the model: {mismatched[0]} has shape "
                        f"{tuple(state_dict[mismatched[0]].shape)}, the model {tuple(own[mismatched[0]].shape)}.")
    for k in mismatched:
        state_dict.pop(k)
    result = model.load_state_dict(state_dict, strict=False)
    if result.unexpected_keys:
        raise UserError(f"Checkpoint {path} does not fit the model: unexpected key {result.unexpected_keys[0]}.")
    missing = [k for k in result.missing_keys if not k.startswith(classifier)]
    if missing:
        raise UserError(f"Checkpoint {path} does not fit the model: missing key {missing[0]}.")
    return list(result.missing_keys)


# ------------------------------------------------------------------------------------------------ models
def min_input_size(model: nn.Module) -> int:
    """Smallest spatial size the model accepts (its data config's ``min_input_size``, else 2)."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    return int(max(cfg.get('min_input_size', (0, 2, 2))[1:]))


def check_model_name(name: str) -> None:
    """A user error naming the FlexConv models unless timm knows ``name``."""
    import timm
    if not timm.is_model(name):
        known = ', '.join(timm.list_models(['flexnet*', 'flextcn*']))
        raise UserError(f"Unknown model {name!r} (FlexConv models: {known}).")


def _num_classes_in(state_dict: Dict[str, torch.Tensor]) -> Optional[int]:
    weight = state_dict.get('head.fc.weight')
    return int(weight.shape[0]) if weight is not None else None


def _sample_for_config(model: nn.Module) -> None:
    """After loading an export, sample the kernels for the size its data config advertises."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    if isinstance(model, FlexConvModelMixin) and 'input_size' in cfg:
        model.set_input_size(tuple(cfg['input_size']))


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with user errors; with ``pretrained=True`` the weights come through
    :mod:`flexconv_zoo.loading`."""
    import timm
    from .loading import PretrainedWeightsError
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as e:
        raise UserError(f"Cannot build {name} with {sorted(kwargs)}: {e}") from None
    except PretrainedWeightsError as e:
        raise UserError(str(e)) from None


def pretrained_model(name: str, model_kwargs: Dict[str, Any]) -> nn.Module:
    """A published model (``<model>[.<tag>]`` or ``hf-hub:<org>/<name>``) through the package's one loader."""
    import timm
    from .loading import PretrainedWeightsError
    try:
        model = timm.create_model(name, pretrained=True, **model_kwargs)
    except TypeError as e:
        raise UserError(f"Cannot build {name}: {e}") from None
    except PretrainedWeightsError as e:  # says which file and what to do
        raise UserError(str(e)) from None
    except Exception as e:  # hf-hub: names fetch their config.json through timm (unknown repo, offline, ...)
        raise UserError(
            f"Cannot load pretrained weights for {name} ({type(e).__name__}: {(str(e).splitlines() or [''])[0]}). "
            f"Offline, set HF_HUB_OFFLINE=1 with a filled HF cache, or pass a local folder / file with --checkpoint."
        ) from None
    _sample_for_config(model)
    return model


def _from_run_folder(folder: Path) -> nn.Module:
    """A run folder without an export (e.g. a killed run): build from run_info.json + the newest checkpoint."""
    ckpt = latest_checkpoint(folder)
    if ckpt is None or weights_file(ckpt) is None:
        raise UserError(f"Run folder {folder} has neither exported weights (config.json) nor a checkpoint.")
    args = json.loads((folder / 'args.json').read_text())
    info = json.loads((folder / 'run_info.json').read_text())
    model = create_model(args['model'], **info['model_kwargs'])
    load_weights(model, weights_file(ckpt))
    model.set_input_size(**info['input_size_kwargs'])
    return model


def _from_hub_folder(path: Path, model_name: Optional[str], model_kwargs: Dict[str, Any]) -> nn.Module:
    """A Hub-layout folder (``config.json`` + ``model.safetensors``), through timm's ``local-dir:`` loader."""
    from .loading import PretrainedWeightsError, read_config
    try:  # read here first: timm's local-dir: reader reports a malformed file without its name
        cfg = read_config(path / 'config.json')
    except PretrainedWeightsError as e:
        raise UserError(str(e)) from None
    if model_name and cfg.get('architecture') not in (None, model_name):
        raise UserError(f"{path} holds a {cfg.get('architecture')}, not a {model_name}.")
    if weights_file(path) is None:
        raise UserError(f"{path} has a config.json but no model.safetensors.")
    model = create_model(f'local-dir:{path}', pretrained=True, **model_kwargs)
    _sample_for_config(model)
    return model


def load_model(
        checkpoint: Optional[str],
        model_name: Optional[str] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        source_img_size: Optional[int] = None,
        pretrained: bool = False,
) -> nn.Module:
    """Build a model with weights from ``checkpoint``, set to the input size its weights were exported at.

    ``checkpoint`` may be a run folder (``scripts/train.py`` output), a Hub-layout folder (``config.json`` +
    ``model.safetensors``), ``hf-hub:<org>/<name>``, or a ``.safetensors`` / ``.pth`` file (then ``model_name``
    is needed, and ``source_img_size`` gives the resolution it was trained at, default 32).
    """
    model_kwargs = dict(model_kwargs or {})
    if model_name:
        check_model_name(model_name)
    if checkpoint is None:
        if not model_name:
            raise UserError("Give --checkpoint (a file, folder or hf-hub: id) or --model with --pretrained.")
        if not pretrained:
            raise UserError(f"No weights for {model_name}: give --checkpoint or --pretrained.")
        return pretrained_model(model_name, model_kwargs)
    if checkpoint.startswith('hf-hub:'):
        return pretrained_model(checkpoint, model_kwargs)
    path = Path(checkpoint)
    if path.is_dir():
        if (path / 'config.json').is_file():
            return _from_hub_folder(path, model_name, model_kwargs)
        if (path / 'args.json').is_file():
            return _from_run_folder(path)
        raise UserError(f"{path} is neither a run folder nor a Hub-layout folder (config.json + model.safetensors).")
    if not path.exists():
        raise UserError(f"Checkpoint {path} does not exist.")
    if not model_name:
        raise UserError(f"{path} is a bare weights file: say which architecture with --model.")
    state_dict = _read_state_dict(path)
    num_classes = model_kwargs.pop('num_classes', None) or _num_classes_in(state_dict) or 10
    if source_img_size:
        model_kwargs['img_size'] = source_img_size
    model = create_model(model_name, num_classes=num_classes, **model_kwargs)
    load_weights(model, path)
    if source_img_size:
        model.set_input_size(img_size=source_img_size)
    return model
