"""Pretrained FlexConv weights: Hub loading with a bundled fallback, Hub folders, model cards, validation.

Every published weight is one folder that is exactly its Hugging Face Hub repo::

    hub_configs/flexnet16.cifar10/
        config.json                     timm ``save_for_hf`` format (architecture, num_classes, pretrained_cfg,
                                        model_args with the FlexConv construction arguments, e.g. img_size)
        model.safetensors               the weights
        README.md                       model card: Hub metadata (license, library_name, tags, datasets, metrics,
                                        model-index), recipe, measured results with commands, limitations, citation
        reference_logits.safetensors    a fixed input and the logits the weights give on it (integrity check)

Loading (``timm.create_model("flexnet16", pretrained=True)``) follows timm's order (``state_dict`` > ``file`` >
``hf_hub_id``) through :func:`load_pretrained`, which timm's builder calls for FlexConv models. Before the
weights are published on the real Hub (or on a machine without network and without a warm cache), a download
that fails falls back, with a warning, to the copy of the repo folder shipped with the package
(``flexconv_zoo/hub_configs/<name>``, i.e. the repository's ``hub_configs/``; the environment variable
``FLEXCONV_ZOO_HUB_CONFIGS`` replaces that search path by its own ``os.pathsep``-separated folders). With no copy
anywhere, the error says what to do. Corrupt or truncated weight files and weights of another architecture
raise :class:`PretrainedWeightsError` naming the file; nothing is ever half-loaded.

Writing a folder from a trained model: :func:`write_hub_folder`. Checking one: :func:`validate_hub_folder`.
"""
import dataclasses
import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

__all__ = [
    'PretrainedWeightsError', 'WeightsUnavailableError', 'HubFolderError', 'BundledWeightsWarning',
    'EvalRow', 'CardInfo', 'HUB_CONFIGS_ENV', 'REQUIRED_FILES',
    'bundled_configs_roots', 'find_bundled_folder', 'read_safetensors', 'load_pretrained',
    'install_pretrained_loader', 'pretrained_tags', 'create_model_for_tag', 'training_input_size',
    'write_hub_folder', 'render_model_card', 'validate_hub_folder', 'read_card_results',
]

_logger = logging.getLogger(__name__)

HUB_CONFIGS_ENV = 'FLEXCONV_ZOO_HUB_CONFIGS'
CONFIG_NAME = 'config.json'
WEIGHTS_NAME = 'model.safetensors'
CARD_NAME = 'README.md'
REFERENCE_NAME = 'reference_logits.safetensors'
REQUIRED_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, REFERENCE_NAME)

_PAPER_BIBTEX = """@inproceedings{romero2022flexconv,
  title={FlexConv: Continuous Kernel Convolutions With Differentiable Kernel Sizes},
  author={Romero, David W. and Bruintjes, Robert-Jan and Tomczak, Jakub M. and Bekkers, Erik J. and
          Hoogendoorn, Mark and van Gemert, Jan C.},
  booktitle={International Conference on Learning Representations (ICLR)},
  year={2022},
  url={https://arxiv.org/abs/2110.08059}
}"""


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights exist but cannot be used (corrupt, truncated, wrong architecture)."""


class WeightsUnavailableError(PretrainedWeightsError):
    """Pretrained weights cannot be reached: no network / not published, no cache, no bundled copy."""


class HubFolderError(ValueError):
    """A Hub folder is incomplete, does not load, or does not reproduce its reference logits."""


class BundledWeightsWarning(UserWarning):
    """Weights were loaded from the copy shipped with the package instead of the Hugging Face Hub."""


# ---------------------------------------------------------------------------------------------- bundled copies
def bundled_configs_roots() -> List[Path]:
    """Folders searched for bundled Hub folders, in order.

    ``$FLEXCONV_ZOO_HUB_CONFIGS`` (``os.pathsep``-separated) when set, else the package's ``hub_configs``
    (installed as package data) and, for source checkouts, the repository's ``hub_configs``.
    """
    env = os.environ.get(HUB_CONFIGS_ENV)
    if env is not None:
        return [Path(p) for p in env.split(os.pathsep) if p]
    here = Path(__file__).resolve().parent
    roots = [here / 'hub_configs', here.parent / 'hub_configs']
    unique = []
    for root in roots:
        if root.is_dir() and all(root.resolve() != r.resolve() for r in unique):
            unique.append(root)
    return unique


def _repo_name(repo_id: str) -> str:
    return repo_id.split('@', 1)[0].rstrip('/').rsplit('/', 1)[-1]


def find_bundled_folder(repo_id: str) -> Optional[Path]:
    """The bundled copy of Hub repo ``repo_id`` (``<org>/<model>.<tag>``), or None."""
    name = _repo_name(repo_id)
    for root in bundled_configs_roots():
        folder = root / name
        if (folder / WEIGHTS_NAME).is_file():
            return folder
    return None


# ---------------------------------------------------------------------------------------------- reading weights
def read_safetensors(path: Union[str, Path], origin: str = '') -> Dict[str, torch.Tensor]:
    """Read a safetensors file; a corrupt or truncated file raises :class:`PretrainedWeightsError` naming it."""
    import safetensors.torch
    path = Path(path)
    where = f"{path}{f' ({origin})' if origin else ''}"
    if not path.is_file():
        raise PretrainedWeightsError(f"Weight file {where} does not exist.")
    try:
        return safetensors.torch.load_file(str(path), device='cpu')
    except Exception as err:  # SafetensorError, OSError: the file is not a complete safetensors file
        size = path.stat().st_size
        raise PretrainedWeightsError(
            f"Weight file {where} is corrupt or truncated ({size} bytes; safetensors says: {err}). "
            f"Delete it and download it again (for a Hub cache entry: huggingface_hub's "
            f"`hf_hub_download(..., force_download=True)` or remove the snapshot folder).") from err


def _read_weights(path: Path, origin: str = '') -> Dict[str, torch.Tensor]:
    if path.suffix == '.safetensors':
        return read_safetensors(path, origin)
    from timm.models import load_state_dict
    try:
        return load_state_dict(str(path), use_ema=True, weights_only=True)
    except Exception as err:
        raise PretrainedWeightsError(f"Cannot read weight file {path}{f' ({origin})' if origin else ''}: {err}") \
            from err


def _weights_in_folder(folder: Path) -> Path:
    if (folder / WEIGHTS_NAME).is_file():
        return folder / WEIGHTS_NAME
    for pattern in ('*.safetensors', '*.pth', '*.pth.tar', '*.bin', '*.pt'):
        found = sorted(p for p in folder.glob(pattern) if p.name != REFERENCE_NAME)
        if found:
            return found[0]
    raise PretrainedWeightsError(f"No weight file ({WEIGHTS_NAME}) found in folder {folder}.")


def _unavailable_message(cfg: Dict[str, Any], repo_id: str, err: BaseException) -> str:
    arch = cfg.get('architecture') or 'flexnet16'
    name = f"{arch}.{cfg['tag']}" if cfg.get('tag') else arch
    folder = _repo_name(repo_id)
    return (
        f"Pretrained weights for {name!r} could not be loaded: downloading {WEIGHTS_NAME} from the Hugging Face "
        f"Hub repo {repo_id!r} failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}), "
        f"it is not in the local Hugging Face cache, and no bundled copy of {folder!r} was found in "
        f"{[str(p) for p in bundled_configs_roots()] or 'any folder'}.\nTo load the weights, either:\n"
        f"  * go online once (unset HF_HUB_OFFLINE) so the weights land in the cache, e.g. "
        f"`huggingface-cli download {repo_id}`; afterwards set HF_HUB_OFFLINE=1 to work offline from the warm cache;\n"
        f"  * pass a local weight file: timm.create_model({name!r}, pretrained=True, "
        f"pretrained_cfg_overlay=dict(file='path/to/{WEIGHTS_NAME}'));\n"
        f"  * load a local Hub folder: timm.create_model('local-dir:hub_configs/{folder}'), or point "
        f"{HUB_CONFIGS_ENV} at a folder holding {folder}/.")


def _fetch_from_hub(repo_id: str, filename: str, cache_dir: Optional[Union[str, Path]]) -> Path:
    import timm
    from huggingface_hub import hf_hub_download
    from timm.models._hub import hf_split
    model_id, revision = hf_split(repo_id)
    return Path(hf_hub_download(
        model_id, filename, revision=revision, cache_dir=cache_dir,
        library_name='timm', library_version=timm.__version__))


def _unreachable_errors() -> Tuple[type, ...]:
    """huggingface_hub errors meaning 'not reachable from here' (not 'reachable but broken')."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError
    return LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError


def is_flexconv_model(model: nn.Module) -> bool:
    """True for the models of this package (they all offer ``flexconv_layers``)."""
    return callable(getattr(model, 'flexconv_layers', None)) and type(model).__module__.startswith('flexconv_zoo.')


def resolve_weights(pretrained_cfg: Dict[str, Any], cache_dir: Optional[Union[str, Path]] = None
                    ) -> Tuple[Optional[Dict[str, torch.Tensor]], str]:
    """Locate and read the weights a pretrained cfg points at, timm's order, with the bundled fallback.

    Returns ``(state_dict, description of the file)``, or ``(None, '')`` when the cfg holds no source this
    function handles (an in-memory ``state_dict``, a ``url``, nothing), which timm then handles itself.
    """
    from timm.models._builder import _resolve_pretrained_source
    load_from, loc = _resolve_pretrained_source(pretrained_cfg)
    if load_from == 'hf-hub':
        repo_id, filename = loc if isinstance(loc, (tuple, list)) else (loc, WEIGHTS_NAME)
        try:
            path = _fetch_from_hub(repo_id, filename, cache_dir)
            origin = f'Hub repo {repo_id}'
        except _unreachable_errors() as err:
            bundled = find_bundled_folder(repo_id)
            if bundled is None:
                raise WeightsUnavailableError(_unavailable_message(pretrained_cfg, repo_id, err)) from err
            path = bundled / filename
            origin = f'bundled copy of Hub repo {repo_id}'
            warnings.warn(
                f"Could not download {filename} from the Hugging Face Hub repo {repo_id!r} "
                f"({type(err).__name__}) and it is not cached; loading the copy shipped with flexconv_zoo: {path}.",
                BundledWeightsWarning, stacklevel=2)
        return _read_weights(path, origin), f"{path} ({origin})"
    if load_from in ('file', 'local-dir'):
        path = Path(loc)
        if path.is_dir():
            path = _weights_in_folder(path)
        elif load_from == 'local-dir':
            raise PretrainedWeightsError(f"local-dir source {loc} is not a directory.")
        return _read_weights(path), str(path)
    return None, ''


def _check_fits(state_dict: Dict[str, torch.Tensor], model: nn.Module, source: str, skip: Sequence[str]) -> None:
    """Raise :class:`PretrainedWeightsError` naming ``source`` unless ``state_dict`` fits ``model`` exactly."""
    expected = {k: v.shape for k, v in model.state_dict().items() if not any(k.startswith(s + '.') for s in skip)}
    given = {k: v.shape for k, v in state_dict.items() if not any(k.startswith(s + '.') for s in skip)}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = sorted(f"{k}: file {tuple(given[k])} vs model {tuple(expected[k])}"
                   for k in set(given) & set(expected) if tuple(given[k]) != tuple(expected[k]))
    if missing or unexpected or wrong:
        arch = getattr(model, 'pretrained_cfg', {}).get('architecture', type(model).__name__)

        def show(items: List[str]) -> str:
            return ', '.join(items[:5]) + (f' (+{len(items) - 5} more)' if len(items) > 5 else '')
        details = '; '.join(f"{label}: {show(items)}" for label, items in (
            ('missing keys', missing), ('unexpected keys', unexpected), ('shape mismatches', wrong)) if items)
        raise PretrainedWeightsError(
            f"Weights in {source} do not fit {arch} ({type(model).__name__}): {details}. They were probably "
            f"saved from another architecture or configuration; nothing was loaded.")


def load_pretrained(
        model: nn.Module,
        pretrained_cfg: Optional[Dict[str, Any]] = None,
        num_classes: int = 1000,
        in_chans: int = 3,
        filter_fn: Optional[Callable] = None,
        strict: bool = True,
        cache_dir: Optional[Union[str, Path]] = None,
) -> None:
    """Drop-in for ``timm.models._builder.load_pretrained`` used for FlexConv models.

    Reads the weights itself (Hub with bundled fallback, clear errors naming the file), then hands them to
    timm's own ``load_pretrained`` as an in-memory state dict, so the checkpoint filter, ``in_chans``
    adaptation, classifier reset for another ``num_classes`` and the strict load all stay timm's. Before that,
    the filtered weights are checked against the model so that a wrong architecture fails with the file name.
    """
    timm_load = _TIMM_LOAD_PRETRAINED
    cfg = dict(pretrained_cfg or getattr(model, 'pretrained_cfg', None) or {})
    state_dict, source = resolve_weights(cfg, cache_dir) if cfg else (None, '')
    if state_dict is None:
        return timm_load(model, pretrained_cfg=pretrained_cfg, num_classes=num_classes, in_chans=in_chans,
                         filter_fn=filter_fn, strict=strict, cache_dir=cache_dir)
    skip = []
    classifier = cfg.get('classifier')
    if classifier and num_classes != cfg.get('num_classes'):
        skip = [classifier] if isinstance(classifier, str) else list(classifier)

    def checked_filter(sd: Dict[str, torch.Tensor], mdl: nn.Module) -> Dict[str, torch.Tensor]:
        try:
            sd = filter_fn(sd, mdl) if filter_fn is not None else sd
        except (ValueError, KeyError, RuntimeError) as err:
            raise PretrainedWeightsError(f"Cannot convert the weights in {source}: {err}") from err
        if strict:
            _check_fits(sd, mdl, source, skip)
        return sd

    local_cfg = {k: v for k, v in cfg.items() if k not in ('file', 'url', 'hf_hub_id', 'hf_hub_filename', 'source')}
    local_cfg['state_dict'] = state_dict
    timm_load(model, pretrained_cfg=local_cfg, num_classes=num_classes, in_chans=in_chans,
              filter_fn=checked_filter, strict=strict, cache_dir=cache_dir)
    _logger.info(f"Loaded pretrained weights from {source}")


_TIMM_LOAD_PRETRAINED: Callable = None  # timm's original, set by install_pretrained_loader()


def install_pretrained_loader() -> None:
    """Route timm's pretrained loading of FlexConv models through :func:`load_pretrained` (idempotent).

    timm has no plugin hook for weight sources, so this wraps ``timm.models._builder.load_pretrained``, the
    function ``build_model_with_cfg`` calls; every model that is not a FlexConv model goes to timm's original
    unchanged.
    """
    global _TIMM_LOAD_PRETRAINED
    from timm.models import _builder
    current = _builder.load_pretrained
    if getattr(current, '_flexconv_zoo', False):
        return
    _TIMM_LOAD_PRETRAINED = current

    def dispatch(model: nn.Module, *args: Any, **kwargs: Any) -> None:
        if is_flexconv_model(model):
            return load_pretrained(model, *args, **kwargs)
        return current(model, *args, **kwargs)

    dispatch._flexconv_zoo = True
    dispatch.__wrapped__ = current
    dispatch.__doc__ = current.__doc__
    _builder.load_pretrained = dispatch


# ---------------------------------------------------------------------------------------------- tags and models
def pretrained_tags() -> List[str]:
    """Every ``<model>.<tag>`` of this package whose pretrained cfg points at a Hub repo."""
    import timm
    from timm.models import get_pretrained_cfg
    names = timm.list_pretrained('flexnet*') + timm.list_pretrained('flextcn*')
    return sorted(n for n in names if (get_pretrained_cfg(n) or None) and get_pretrained_cfg(n).hf_hub_id)


def training_input_size(model: nn.Module) -> Tuple[int, ...]:
    """``(C, H, W)`` of FlexNet / ``(C, 1, L)`` of FlexTCN data at the resolution the kernels are trained on."""
    if hasattr(model, 'seq_len'):
        return (model.in_chans, 1, int(model.seq_len))
    return (model.in_chans, *map(int, model.img_size))


def create_model_for_tag(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name)`` for a known ``<model>.<tag>``, with a clear error for an unknown tag.

    The model is built on the kernel grid of the tag's training resolution (its cfg's ``input_size``):
    ``flexnet16.cifar10_16px_alias_free`` gets a 17-point grid, a FlexTCN tag its ``seq_len``.
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


# ---------------------------------------------------------------------------------------------- writing folders
@dataclasses.dataclass
class EvalRow:
    """One measured result of a model card.

    Args:
        dataset: Hub dataset id or short name (``'cifar10'``, ``'mnist1d'``).
        split: Split evaluated, e.g. ``'test'`` (the whole held-out test split) or ``'test[:256]'`` (the CI sample).
        input_size: Resolution of the evaluated data (pixels, or sequence length).
        top1: Top-1 accuracy in percent.
        num_samples: Number of evaluated samples.
        command: The exact command that produced the number.
    """
    dataset: str
    split: str
    input_size: int
    top1: float
    num_samples: int
    command: str


@dataclasses.dataclass
class CardInfo:
    """What a model card says besides the measured results.

    Args:
        dataset: Hub dataset id (``'cifar10'``, ``'mnist1d'``) for the card metadata.
        dataset_name: Human-readable dataset name.
        summary: One paragraph: what the weight is.
        recipe: Training recipe lines (optimizer, schedule, epochs, augmentation, regularisers, hardware).
        train_command: The exact training command.
        training_cost: Wall-clock / device, e.g. ``'38 min on one H100'`` or ``'2 h on 2 CPU cores'``.
        limitations: Known limitations (data differences, short schedules, CPU training, ...).
        tags: Extra Hub tags.
        license: Weight license (the original code is MIT).
    """
    dataset: str
    dataset_name: str
    summary: str
    recipe: Sequence[str]
    train_command: str
    training_cost: str
    limitations: Sequence[str] = ()
    tags: Sequence[str] = ()
    license: str = 'mit'


def _construction_args(model: nn.Module) -> Dict[str, Any]:
    """JSON-serialisable constructor arguments that define the function the weights compute."""
    conv = next(model.flexconv_layers())
    net = conv.kernel_net
    args: Dict[str, Any] = dict(
        widths=[blk.conv1.out_channels for blk in model.blocks] if hasattr(model, 'blocks') else None,
        kernel_hidden=getattr(net, 'hidden', None),
        kernel_layers=len(getattr(net, 'linears', [])) or None,
        mask_threshold=conv.mask.threshold,
        mask_init_sigma=conv.mask.init_sigma,
    )
    if hasattr(model, 'seq_len'):
        args['seq_len'] = int(model.seq_len)
    else:
        args['img_size'] = [int(s) for s in model.img_size]
    return {k: v for k, v in args.items() if v is not None}


def reference_input(input_size: Sequence[int], batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A fixed standard-normal batch (the input reference logits are computed on)."""
    gen = torch.Generator().manual_seed(seed)
    size = tuple(input_size)
    if len(size) == 3 and size[1] == 1:  # sequences (C, 1, L) -> (B, C, L)
        size = (size[0], size[2])
    return torch.randn(batch, *size, generator=gen)


@torch.no_grad()
def compute_reference(model: nn.Module, input_size: Sequence[int], test_input_size: Optional[Sequence[int]] = None
                      ) -> Dict[str, torch.Tensor]:
    """Logits of ``model`` (eval mode) on the fixed input at ``input_size`` and, if given, ``test_input_size``."""
    model.eval()
    saved_cfg = dict(getattr(model, 'pretrained_cfg', None) or {})
    out = {'input': reference_input(input_size)}
    out['logits'] = model(out['input']).float()
    if test_input_size is not None and tuple(test_input_size) != tuple(input_size):
        source = training_input_size(model)
        model.set_input_size(img_size=tuple(test_input_size[1:]) if len(test_input_size) == 3 else test_input_size)
        try:
            out['input_test'] = reference_input(test_input_size, seed=1)
            out['logits_test'] = model(out['input_test']).float()
        finally:
            model.set_input_size(img_size=tuple(source[1:]))
            if saved_cfg:
                model.pretrained_cfg = model.default_cfg = saved_cfg
    return {k: v.contiguous() for k, v in out.items()}


def render_model_card(
        name: str,
        repo_id: str,
        info: CardInfo,
        results: Sequence[EvalRow],
        input_size: Sequence[int],
        test_input_size: Optional[Sequence[int]],
        num_params: int,
        kernel_sizes: Sequence[Tuple[int, ...]] = (),
) -> str:
    """The README.md of a Hub folder: metadata header (with model-index results), recipe, results, limits."""
    from huggingface_hub import EvalResult, ModelCardData
    data = ModelCardData(
        license=info.license,
        library_name='timm',
        tags=['image-classification' if not name.startswith('flextcn') else 'sequence-classification',
              'timm', 'flexconv', 'continuous-kernel-convolution', *info.tags],
        datasets=[info.dataset],
        metrics=['accuracy'],
        model_name=name,
        eval_results=[EvalResult(
            task_type='image-classification' if not name.startswith('flextcn') else 'sequence-classification',
            dataset_type=info.dataset, dataset_name=info.dataset_name, dataset_split=row.split,
            dataset_args={'input_size': int(row.input_size), 'num_samples': int(row.num_samples)},
            metric_type='accuracy', metric_name=f'top-1 accuracy @ {row.input_size}', metric_value=float(row.top1),
        ) for row in results] or None,
    )
    arch = name.split('.', 1)[0]
    size_txt = (f"{'x'.join(map(str, input_size[1:]))} px" if not arch.startswith('flextcn')
                else f"sequence length {input_size[-1]}")
    test_txt = ''
    if test_input_size and tuple(test_input_size) != tuple(input_size):
        test_txt = (f" It is also evaluated at {'x'.join(map(str, test_input_size[1:]))} by resampling its continuous "
                    f"kernels (`model.set_input_size(...)`, the paper's protocol; `test_input_size` in the config).")
    rows = '\n'.join(
        f"| {info.dataset_name} | {r.split} | {r.input_size} "
        f"| {r.num_samples} | {r.top1:.2f} | `{r.command}` |" for r in results)
    resolutions = sorted({int(r.input_size) for r in results})
    kernels = ', '.join('x'.join(map(str, k)) for k in kernel_sizes)
    usage_input = (f"torch.randn(1, {input_size[0]}, {input_size[-1]})" if arch.startswith('flextcn')
                   else f"torch.randn(1, {input_size[0]}, {input_size[1]}, {input_size[2]})")
    body = f"""
# {name}

{info.summary}

A FlexConv model ({arch}, {num_params:,} parameters) from "FlexConv: Continuous Kernel Convolutions with
Differentiable Kernel Sizes" (Romero, Bruintjes et al., ICLR 2022; original code:
[rjbruin/flexconv](https://github.com/rjbruin/flexconv)), implemented as a timm model by the `flexconv_zoo`
package. Trained at {size_txt}.{test_txt}

## Usage

```python
import timm, torch
import flexconv_zoo  # registers the FlexConv models with timm

model = timm.create_model("{name}", pretrained=True).eval()
# or: timm.create_model("hf-hub:{repo_id}")  /  timm.create_model("local-dir:hub_configs/{name}")
logits = model({usage_input})
```

## Training recipe

{chr(10).join(f'- {line}' for line in info.recipe)}
- Training cost: {info.training_cost}
- Command: `{info.train_command}`
{f'- Learned kernel sizes (per FlexConv layer, on the training grid): {kernels}' if kernels else ''}

## Results

Measured on the held-out test split (never used for model selection). Resolutions evaluated: {', '.join(map(str, resolutions)) or 'none'}.

| Dataset | Split | Input size | Samples | Top-1 (%) | Command |
|---|---|---|---|---|---|
{rows}

## Limitations

{chr(10).join(f'- {line}' for line in info.limitations) or '- None recorded.'}

## Citation

```bibtex
{_PAPER_BIBTEX}
```
"""
    return f"---\n{data.to_yaml()}\n---\n{body.lstrip()}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
    """
    from timm.models import save_for_hf
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder} is not empty; pass overwrite=True to replace it.")
    if not is_flexconv_model(model):
        raise TypeError(f"write_hub_folder expects a FlexConv model, got {type(model).__name__}.")
    arch, _, tag = name.partition('.')
    if not tag:
        raise ValueError(f"name must be '<model>.<tag>', got {name!r}.")
    repo_id = repo_id or f"flexconv-zoo/{name}"
    model = model.eval()
    input_size = training_input_size(model)
    data_config = dict(input_size=input_size)
    if test_input_size is not None:
        data_config['test_input_size'] = tuple(test_input_size)
    folder.mkdir(parents=True, exist_ok=True)
    save_for_hf(
        model, folder, safe_serialization=True, model_args=_construction_args(model), data_config=data_config,
        model_config=dict(pretrained_cfg=dict(architecture=arch, tag=tag), **_label_config(model, label_names)),
    )
    config = json.loads((folder / CONFIG_NAME).read_text())
    config['architecture'] = arch
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + '\n')
    import safetensors.torch
    reference = compute_reference(model, input_size, test_input_size)
    safetensors.torch.save_file(reference, str(folder / REFERENCE_NAME))
    num_params = sum(p.numel() for p in model.parameters())
    kernel_sizes = model.kernel_sizes() if hasattr(model, 'kernel_sizes') else ()
    card = render_model_card(name, repo_id, info, results, input_size, test_input_size, num_params, kernel_sizes)
    (folder / CARD_NAME).write_text(card, encoding='utf-8')
    return folder


def _label_config(model: nn.Module, label_names: Optional[Sequence[str]]) -> Dict[str, Any]:
    names = label_names if label_names is not None else model.pretrained_cfg.get('label_names')
    if not names:
        return {}
    if len(names) != model.num_classes:
        raise ValueError(f"{len(names)} label names for a model with {model.num_classes} classes.")
    return dict(label_names=list(names))


# ---------------------------------------------------------------------------------------------- validation
def read_card_results(folder: Union[str, Path]) -> List[EvalRow]:
    """The results of a folder's model card, from its ``model-index`` metadata."""
    from huggingface_hub import ModelCard
    card = ModelCard.load(Path(folder) / CARD_NAME, ignore_metadata_errors=False)
    rows = []
    for res in card.data.eval_results or []:
        args = res.dataset_args or {}
        rows.append(EvalRow(dataset=res.dataset_type, split=res.dataset_split or '', top1=float(res.metric_value),
                            input_size=int(args.get('input_size', 0)), num_samples=int(args.get('num_samples', 0)),
                            command=''))
    return rows


def validate_hub_folder(folder: Union[str, Path], atol: float = 1e-3, rtol: float = 1e-3) -> Dict[str, Any]:
    """Check that ``folder`` is a complete, loadable Hub repo whose weights reproduce its reference logits.

    Checks: every file of :data:`REQUIRED_FILES`; config.json names a registered architecture and carries
    ``model_args``; the card has the Hub metadata (license, library_name timm, tags, datasets, metrics,
    model-index results) and the Results / Limitations / Citation sections; ``timm.create_model('local-dir:...')``
    loads strictly; the logits on the stored input match the stored logits (also at ``test_input_size``).
    Returns a summary dict; raises :class:`HubFolderError` listing every problem.
    """
    import timm
    from huggingface_hub import ModelCard
    folder = Path(folder)
    problems: List[str] = []
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        raise HubFolderError(f"{folder} is incomplete: missing {missing}.")
    config = json.loads((folder / CONFIG_NAME).read_text())
    arch = config.get('architecture')
    if not arch or not timm.is_model(arch):
        problems.append(f"config.json architecture {arch!r} is not a registered model")
    if not config.get('model_args'):
        problems.append("config.json has no model_args (FlexConv construction arguments)")
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

    model = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    reference = read_safetensors(folder / REFERENCE_NAME)
    checks = [('logits', 'input', None)]
    test_size = model.pretrained_cfg.get('test_input_size')
    if 'logits_test' in reference:
        checks.append(('logits_test', 'input_test', test_size))
    max_err = {}
    with torch.no_grad():
        for key, inp, size in checks:
            if size is not None:
                model.set_input_size(img_size=tuple(size[1:]))
            out = model(reference[inp]).float()
            if out.shape != reference[key].shape or not torch.allclose(out, reference[key], atol=atol, rtol=rtol):
                err = (out - reference[key]).abs().max().item() if out.shape == reference[key].shape else float('inf')
                problems.append(f"{key}: logits differ from {REFERENCE_NAME} (max abs error {err:.3g})")
            else:
                max_err[key] = (out - reference[key]).abs().max().item()
    if problems:
        raise HubFolderError(f"{folder}: " + '; '.join(problems))
    return dict(folder=str(folder), architecture=arch, files={f: _sha256(folder / f) for f in REQUIRED_FILES},
                max_abs_error=max_err, results=[dataclasses.asdict(r) for r in read_card_results(folder)])
