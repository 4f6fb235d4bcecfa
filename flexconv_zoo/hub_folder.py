"""Hub folders: one folder per published weight that is exactly its Hugging Face Hub repo (write and validate).

::

    hub_configs/flexnet16.cifar10/
        config.json                     timm ``save_for_hf`` format (architecture, num_classes, pretrained_cfg with
                                        the weights' sha256 in ``notes``, model_args with the FlexConv arguments)
        model.safetensors               the weights
        README.md                       model card (:mod:`flexconv_zoo.model_card`)
        reference_logits.safetensors    a fixed input and the logits the weights give on it (checked on every load)

:func:`write_hub_folder` turns a trained model into such a folder, :func:`validate_hub_folder` checks one before
it is published. Loading lives in :mod:`flexconv_zoo.loading`; exporting a training run or an original checkpoint
and the upload in :mod:`flexconv_zoo.hub_export`.
"""
import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from .loading import (
    CONFIG_NAME, HUB_ORG, REFERENCE_ATOL, REFERENCE_NAME, REFERENCE_RTOL, WEIGHTS_NAME, PretrainedWeightsError,
    file_sha256, read_config, sha256_note, weights_sha256,
)
from .model_card import CARD_NAME, CardInfo, EvalRow, read_card_results, render_model_card
from .models import FlexConvModelMixin

__all__ = [
    'HubFolderError', 'REQUIRED_FILES', 'pretrained_tags', 'create_model_for_tag', 'reference_input',
    'compute_reference', 'write_hub_folder', 'validate_hub_folder',
]

REQUIRED_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, REFERENCE_NAME)


class HubFolderError(ValueError):
    """A Hub folder is incomplete, does not load, or does not reproduce its reference logits."""


def pretrained_tags() -> List[str]:
    """Every ``<model>.<tag>`` of this package whose pretrained cfg points at a Hub repo."""
    import timm
    from timm.models import get_pretrained_cfg
    names = timm.list_pretrained('flexnet*') + timm.list_pretrained('flextcn*')
    return sorted(n for n in names if get_pretrained_cfg(n) is not None and get_pretrained_cfg(n).hf_hub_id)


def create_model_for_tag(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name)`` for a known ``<model>.<tag>``, with a clear error for an unknown tag.

    The model is built on the kernel grid of the tag's training resolution (its cfg's ``input_size``).
    """
    import timm
    from timm.models import get_pretrained_cfg
    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError:  # timm: 'Invalid pretrained tag'
        cfg = None
    if cfg is None:
        raise ValueError(f"Unknown pretrained tag {name!r}; known: {pretrained_tags()}.")
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def reference_input(input_size: Sequence[int], seed: int = 0) -> torch.Tensor:
    """A fixed standard-normal batch of two (the input reference logits are computed on)."""
    gen = torch.Generator().manual_seed(seed)
    size = tuple(input_size)
    if len(size) == 3 and size[1] == 1:  # sequences (C, 1, L) -> (B, C, L)
        size = (size[0], size[2])
    return torch.randn(2, *size, generator=gen)


@torch.no_grad()
def compute_reference(model: nn.Module, input_size: Sequence[int], test_input_size: Optional[Sequence[int]] = None
                      ) -> Dict[str, torch.Tensor]:
    """Logits of ``model`` (eval mode) on the fixed input at ``input_size`` and, if given, ``test_input_size``."""
    model.eval()
    saved_cfg = dict(getattr(model, 'pretrained_cfg', None) or {})
    out = {'input': reference_input(input_size)}
    out['logits'] = model(out['input']).float()
    if test_input_size is not None and tuple(test_input_size) != tuple(input_size):
        current = model.input_size
        model.set_input_size(test_input_size)
        try:
            out['input_test'] = reference_input(test_input_size, seed=1)
            out['logits_test'] = model(out['input_test']).float()
        finally:
            model.set_input_size(current)
            if saved_cfg:
                model.pretrained_cfg = model.default_cfg = saved_cfg
    return {k: v.contiguous() for k, v in out.items()}


def _label_config(model: nn.Module, label_names: Optional[Sequence[str]]) -> Dict[str, Any]:
    names = label_names if label_names is not None else model.pretrained_cfg.get('label_names')
    if not names:
        return {}
    if len(names) != model.num_classes:
        raise ValueError(f"{len(names)} label names for a model with {model.num_classes} classes.")
    return dict(label_names=list(names))


def write_hub_folder(
        model: nn.Module,
        folder: Union[str, Path],
        *,
        name: str,
        info: CardInfo,
        results: Sequence[EvalRow],
        test_input_size: Optional[Sequence[int]] = None,
        repo_id: Optional[str] = None,
        overwrite: bool = False,
        label_names: Optional[Sequence[str]] = None,
        training_curves: Optional[Union[str, Path]] = None,
) -> Path:
    """Write ``folder`` = the Hub repo of a trained ``model``: config.json, model.safetensors, README.md, reference.

    Args:
        model: The trained model (as created by ``timm.create_model`` / :func:`create_model_for_tag`, with the
            kernel grid of its training resolution; eval-mode buffers such as BN statistics included).
        folder: Output folder, e.g. ``hub_configs/flexnet16.cifar10``.
        name: ``<model>.<tag>`` the weight is published as.
        info: Card text (dataset, recipe, command, cost, limitations).
        results: Measured results (each with its command); include the CI sample rows (``split='test[:256]'``).
        test_input_size: Extra resolution the weight is meant to be evaluated at (``(3, 32, 32)`` for the
            16 px alias-free model); stored as ``test_input_size`` and used for a second reference.
        repo_id: Hub repo, default ``flexconv-zoo/<name>``.
        overwrite: Replace an existing folder's files.
        label_names: Class names stored in config.json (timm reads them into ``pretrained_cfg['label_names']``);
            default: the model's own, when they match its number of classes.
        training_curves: The run's ``training_curves.png`` (:mod:`flexconv_zoo.plots`), copied next to the card and
            shown in it. The card also shows ``kernel_sizes.png``, drawn here (with matplotlib installed).

    The weights' sha256 goes into config.json (``pretrained_cfg.notes``); add the same value to the tag's
    ``default_cfgs`` entry (``hub_weights(name, sha256)``).
    """
    from timm.models import save_for_hf
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder} is not empty; pass overwrite=True to replace it.")
    if not isinstance(model, FlexConvModelMixin):
        raise TypeError(f"write_hub_folder expects a FlexConv model, got {type(model).__name__}.")
    arch, _, tag = name.partition('.')
    if not tag:
        raise ValueError(f"name must be '<model>.<tag>', got {name!r}.")
    labels = _label_config(model, label_names)
    repo_id = repo_id or f"{HUB_ORG}/{name}"
    model = model.eval()
    input_size = model.source_input_size
    data_config = dict(input_size=input_size)
    if test_input_size is not None:
        data_config['test_input_size'] = tuple(test_input_size)
    folder.mkdir(parents=True, exist_ok=True)
    save_for_hf(model, folder, safe_serialization=True, model_args=model.construction_args(), data_config=data_config,
                model_config=dict(pretrained_cfg=dict(architecture=arch, tag=tag), **labels))
    config = read_config(folder / CONFIG_NAME)
    config['architecture'] = arch
    saved_cfg = config.setdefault('pretrained_cfg', {})
    # A model created from a published tag carries that tag's hash: record the hash of the bytes written here.
    notes = [n for n in saved_cfg.get('notes') or () if weights_sha256({'notes': [n]}) is None]
    saved_cfg['notes'] = notes + [sha256_note(file_sha256(folder / WEIGHTS_NAME))]
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + '\n')
    import safetensors.torch
    safetensors.torch.save_file(compute_reference(model, input_size, test_input_size), str(folder / REFERENCE_NAME))
    num_params = sum(p.numel() for p in model.parameters())
    figures = _card_figures(model, folder, name, training_curves)
    card = render_model_card(name, repo_id, info, results, input_size, test_input_size, num_params,
                             model.kernel_sizes(), figures)
    (folder / CARD_NAME).write_text(card, encoding='utf-8')
    return folder


def _card_figures(model: nn.Module, folder: Path, name: str, curves: Optional[Union[str, Path]]) -> Dict[str, str]:
    """Draw ``kernel_sizes.png`` and copy the run's training curves into ``folder``; returns what exists."""
    import shutil
    figures = {}
    try:
        from .inspection import plot_kernel_sizes
        figures['kernel_sizes'] = plot_kernel_sizes(model, folder / 'kernel_sizes.png', title=name).name
    except ImportError:  # matplotlib is optional: the card then lists the sizes only
        pass
    if curves is not None and Path(curves).is_file():
        shutil.copyfile(curves, folder / 'training_curves.png')
        figures['training_curves'] = 'training_curves.png'
    return figures


def validate_hub_folder(folder: Union[str, Path]) -> Dict[str, Any]:
    """Check that ``folder`` is a complete, loadable Hub repo whose weights reproduce its reference logits.

    Checks: every file of :data:`REQUIRED_FILES`; config.json names a registered architecture, carries
    ``model_args`` and the weights' sha256; the card has the Hub metadata (license, library_name timm, tags,
    datasets, metrics, model-index results) and its sections; ``timm.create_model('local-dir:...')`` loads through
    the package's checks; the logits on the stored inputs match (also at ``test_input_size``).
    Returns a summary dict; raises :class:`HubFolderError` listing every problem.
    """
    import timm
    from huggingface_hub import ModelCard
    folder = Path(folder)
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        raise HubFolderError(f"{folder} is incomplete: missing {missing}.")
    problems: List[str] = []
    try:
        config = read_config(folder / CONFIG_NAME)
    except PretrainedWeightsError as err:
        raise HubFolderError(str(err)) from None
    arch = config.get('architecture')
    if not arch or not timm.is_model(arch):
        problems.append(f"config.json architecture {arch!r} is not a registered model")
    if not config.get('model_args'):
        problems.append("config.json has no model_args (FlexConv construction arguments)")
    if not weights_sha256(config.get('pretrained_cfg')):
        problems.append("config.json pretrained_cfg.notes records no 'sha256:<hex>' of model.safetensors")
    card = ModelCard.load(folder / CARD_NAME)
    meta = card.data.to_dict()
    for key in ('license', 'tags', 'datasets', 'metrics'):
        if not meta.get(key):
            problems.append(f"README.md metadata lacks {key!r}")
    if meta.get('library_name') != 'timm':
        problems.append("README.md metadata library_name is not 'timm'")
    if not card.data.eval_results:
        problems.append("README.md metadata has no model-index results")
    for section in ('## Results', '## Limitations', '## Citation', '## Training recipe'):
        if section not in card.text:
            problems.append(f"README.md has no '{section}' section")
    if problems:
        raise HubFolderError(f"{folder}: " + '; '.join(problems))

    import safetensors.torch
    try:
        model = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    except PretrainedWeightsError as err:  # sha256, config, finite values, fit, reference logits
        raise HubFolderError(f"{folder}: {err}") from None
    reference = safetensors.torch.load_file(str(folder / REFERENCE_NAME))
    checks = [('logits', 'input', None)]
    if 'logits_test' in reference:
        checks.append(('logits_test', 'input_test', model.pretrained_cfg.get('test_input_size')))
    max_err = {}
    with torch.no_grad():
        for key, inp, size in checks:
            if size is not None:
                model.set_input_size(size)
            out = model(reference[inp]).float()
            if out.shape != reference[key].shape or not torch.allclose(out, reference[key], atol=REFERENCE_ATOL, rtol=REFERENCE_RTOL):
                err = (out - reference[key]).abs().max().item() if out.shape == reference[key].shape else float('inf')
                problems.append(f"{key}: logits differ from {REFERENCE_NAME} (max abs error {err:.3g})")
            else:
                max_err[key] = (out - reference[key]).abs().max().item()
    if problems:
        raise HubFolderError(f"{folder}: " + '; '.join(problems))
    return dict(folder=str(folder), architecture=arch, files={f: file_sha256(folder / f) for f in REQUIRED_FILES},
                max_abs_error=max_err, results=[dataclasses.asdict(r) for r in read_card_results(folder)])
