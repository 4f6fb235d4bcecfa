"""Pretrained FlexConv weights: where they come from, how they are checked, how they reach the model.

One path for every route (``timm.create_model('<model>.<tag>', pretrained=True)``, ``'hf-hub:<org>/<name>'``,
``'local-dir:<folder>'``, ``pretrained_cfg_overlay=dict(file=...)``): the model functions build through
:func:`build_flexconv_model`, which resolves the pretrained cfg in timm's order (``state_dict`` > ``file`` >
``hf_hub_id`` > ``url``), turns a Hub id into a local file with huggingface_hub's download and cache, checks the
bytes, and hands timm's ``build_model_with_cfg`` a cfg whose ``file`` is that checked file. timm's own
``load_pretrained`` then does the rest (checkpoint filter, ``in_chans`` adaptation, classifier reset, strict load).

Where a tag's weights come from: the copy shipped with the package (``file`` in the tag's cfg, i.e.
``flexconv_zoo/hub_configs/<tag>/model.safetensors``), so loading never waits on the network. A tag without a
shipped copy, an ``hf-hub:`` name, or ``pretrained_cfg_overlay=dict(file=None)`` use ``hf_hub_id``: one HEAD request
with connect/read timeouts decides whether the Hub answers; if not, the local Hugging Face cache is used, else
:class:`WeightsUnavailableError` says what to do. The repo's config.json and reference logits come with the
weights (from the Hub or the cache), so the Hub route gets the same checks as a folder.

Checks, all before a tensor reaches the model: the sha256 recorded in the cfg (timm's ``PretrainedCfg`` has no
hash field and refuses unknown keys, so it is the note ``'sha256:<hex>'`` in ``notes``, in the tag's cfg and in
config.json's ``pretrained_cfg``); a readable safetensors file; the ``config.json`` beside the weights agrees with
itself, with the model being built and with the tensor shapes; every tensor finite; the state dict fits the model.
After loading, a folder's ``reference_logits.safetensors`` must be reproduced. Any failure is a
:class:`PretrainedWeightsError` naming the file.
"""
import hashlib
import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

__all__ = [
    'PretrainedWeightsError', 'WeightsUnavailableError', 'HUB_ORG', 'CONFIG_NAME', 'WEIGHTS_NAME', 'REFERENCE_NAME',
    'REFERENCE_ATOL', 'REFERENCE_RTOL',
    'SHIPPED_ROOT', 'CONNECT_TIMEOUT', 'READ_TIMEOUT', 'hub_weights', 'weights_sha256', 'sha256_note', 'file_sha256',
    'read_config', 'read_weights', 'fetch_hub_file', 'resolve_weights_file', 'check_config', 'check_finite',
    'check_state_dict',
    'check_reference', 'build_flexconv_model',
]

_logger = logging.getLogger(__name__)

HUB_ORG = 'flexconv-zoo'
CONFIG_NAME = 'config.json'
WEIGHTS_NAME = 'model.safetensors'
REFERENCE_NAME = 'reference_logits.safetensors'
# Tolerance of reproduced reference logits (float32 on the CPU; the FFT and direct paths differ by rounding).
REFERENCE_ATOL = REFERENCE_RTOL = 1e-3
# Published folders shipped as package data (a link to the repository's hub_configs/ in a checkout).
SHIPPED_ROOT = Path(__file__).resolve().parent / 'hub_configs'
# Seconds to open a connection / between two reads: a Hub that does not answer costs at most about 8 s.
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 5.0
_SHA_NOTE = 'sha256:'
_HUB_ORIGIN = 'Hub repo '  # where a file resolved from hf_hub_id came from: the HF cache
# model_args that define the function the weights compute (num_classes / in_chans adapt the head / stem).
_DEFINING_ARGS = ('widths', 'img_size', 'seq_len', 'kernel_hidden', 'kernel_layers', 'mask_threshold',
                  'mask_init_sigma', 'kernel_net', 'causal')


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights cannot be used: missing, corrupt, truncated, tampered, or not matching their config."""


class WeightsUnavailableError(PretrainedWeightsError):
    """Pretrained weights cannot be reached: Hub unreachable or repo not published, and not in the local cache."""


# ---------------------------------------------------------------------------------------------- pretrained cfgs
def sha256_note(sha256: str) -> str:
    """The ``notes`` entry that records a weight file's sha256 in a pretrained cfg."""
    return _SHA_NOTE + sha256


def weights_sha256(cfg: Optional[Mapping[str, Any]]) -> Optional[str]:
    """The sha256 recorded in a pretrained cfg's ``notes`` (None when none is recorded)."""
    for note in (cfg or {}).get('notes') or ():
        if isinstance(note, str) and note.startswith(_SHA_NOTE):
            return note[len(_SHA_NOTE):]
    return None


def hub_weights(name: str, sha256: str) -> Dict[str, Any]:
    """Pretrained-cfg entries of the published tag ``<model>.<tag>``: Hub repo, shipped copy, sha256."""
    shipped = SHIPPED_ROOT / name / WEIGHTS_NAME
    return dict(hf_hub_id=f'{HUB_ORG}/{name}', file=str(shipped) if shipped.is_file() else None,
                notes=(sha256_note(sha256),))


def file_sha256(path: Union[str, Path]) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- reading files
def read_config(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a Hub folder's config.json; a malformed file raises :class:`PretrainedWeightsError` naming it."""
    path = Path(path)
    try:
        config = json.loads(path.read_text(encoding='utf-8'))
    except json.JSONDecodeError as err:
        raise PretrainedWeightsError(
            f"{path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); restore it from the "
            f"Hub repo or re-export the folder.") from None
    except (OSError, UnicodeDecodeError) as err:
        raise PretrainedWeightsError(f"Cannot read {path}: {err}") from None
    if not isinstance(config, dict):
        raise PretrainedWeightsError(f"{path} holds a JSON {type(config).__name__}, not an object.")
    return config


def _where(path: Path, origin: str) -> str:
    return f"{path} ({origin})" if origin else str(path)


def _tensor_shapes(path: Path, origin: str) -> Optional[Dict[str, Tuple[int, ...]]]:
    """Names and shapes from a safetensors header (None for other formats); corrupt files raise, naming it."""
    if path.suffix != '.safetensors':
        return None
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework='pt') as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:  # SafetensorError, OSError: not a complete safetensors file
        raise PretrainedWeightsError(
            f"Weight file {_where(path, origin)} is corrupt or truncated ({path.stat().st_size} bytes; safetensors "
            f"says: {err}). Delete it and fetch it again.") from None


def read_weights(path: Union[str, Path], origin: str = '') -> Dict[str, torch.Tensor]:
    """Read a weight file (safetensors, or a torch checkpoint through timm); errors name the file."""
    from timm.models import load_state_dict
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsError(f"Weight file {_where(path, origin)} does not exist.")
    _tensor_shapes(path, origin)
    try:
        return load_state_dict(str(path), weights_only=True)
    except Exception as err:  # torch.load raises many types for a damaged pickle
        raise PretrainedWeightsError(f"Cannot read weight file {_where(path, origin)}: {err}") from None


# ---------------------------------------------------------------------------------------------- the Hub
def _timeout() -> Any:
    try:  # huggingface_hub's HTTP client: httpx2 in huggingface_hub 2.x, httpx in 1.x
        import httpx2 as httpx
    except ImportError:
        import httpx
    return httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def _unavailable(repo_id: str, filename: str, err: BaseException, name: str) -> WeightsUnavailableError:
    folder = repo_id.split('@')[0].rsplit('/', 1)[-1]
    return WeightsUnavailableError(
        f"Cannot load {filename} for {name!r}: the Hugging Face Hub repo {repo_id!r} cannot be used from here "
        f"({_first_line(err)}) and the file is not in the local Hugging Face cache. Either go online once "
        f"(the file is then cached; HF_HUB_OFFLINE=1 uses the cache without asking the Hub), pass a local file with "
        f"pretrained_cfg_overlay=dict(file='path/to/{WEIGHTS_NAME}'), or load a folder with "
        f"timm.create_model('local-dir:hub_configs/{folder}').")


def fetch_hub_file(repo_id: str, filename: str = WEIGHTS_NAME, cache_dir: Optional[Union[str, Path]] = None,
                   name: str = '') -> Path:
    """``filename`` of Hub repo ``repo_id`` (``<org>/<name>[@revision]``) as a local file in the HF cache.

    One HEAD request with :data:`CONNECT_TIMEOUT` / :data:`READ_TIMEOUT` and no retries decides whether the Hub
    answers (huggingface_hub alone retries for up to minutes before it looks at its cache); if it does,
    ``hf_hub_download`` fetches or reuses the cached file, otherwise the cache is used as it is.
    """
    return _fetch(repo_id, filename, cache_dir, name)[0]


def _fetch(repo_id: str, filename: str, cache_dir: Optional[Union[str, Path]], name: str = '',
           hub_answers: Optional[bool] = None) -> Tuple[Path, bool]:
    """:func:`fetch_hub_file`, and whether the Hub answered. ``hub_answers`` (what an earlier file of the same
    repo found) skips the probe: the companions of a weight file cost no second wait on a Hub that hangs."""
    import timm
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    model_id, _, revision = repo_id.partition('@')
    revision = revision or None
    if hub_answers is None:
        try:
            get_hf_file_metadata(hf_hub_url(model_id, filename, revision=revision), timeout=_timeout(),
                                 retry_on_errors=False)
            hub_answers = True
        except Exception as err:  # offline mode, no route, refused, timeout, 5xx, repo not published: the cache
            return _cached(model_id, filename, revision, cache_dir, err, repo_id, name), False
    if not hub_answers:
        return _cached(model_id, filename, revision, cache_dir, None, repo_id, name), False
    started = time.monotonic()
    try:
        return Path(hf_hub_download(model_id, filename, revision=revision, cache_dir=cache_dir,
                                    etag_timeout=READ_TIMEOUT, library_name='timm',
                                    library_version=timm.__version__)), True
    except Exception as err:  # short body (consistency check), dropped connection, disk full, file not in the repo
        # huggingface_hub downloads into a temporary file and moves it only when complete: nothing is cached.
        raise PretrainedWeightsError(
            f"Downloading {filename} from the Hugging Face Hub repo {repo_id!r} failed after "
            f"{time.monotonic() - started:.1f} s ({_first_line(err)}); nothing was stored in the cache. Try again, "
            f"or pass a local file with pretrained_cfg_overlay=dict(file='path/to/{filename}').") from None


def _cached(model_id: str, filename: str, revision: Optional[str], cache_dir: Optional[Union[str, Path]],
            err: Optional[BaseException], repo_id: str, name: str) -> Path:
    """The file from the HF cache alone, or why neither the Hub (``err``) nor the cache has it."""
    from huggingface_hub import hf_hub_download
    try:
        return Path(hf_hub_download(model_id, filename, revision=revision, cache_dir=cache_dir,
                                    local_files_only=True))
    except Exception as missing:
        raise _unavailable(repo_id, filename, err or missing, name or repo_id) from None


def _drop_cached(path: Path) -> None:
    """Remove a bad file from the HF cache: the snapshot link and the blob it points at."""
    blob = path.resolve()
    if blob != path:
        blob.unlink(missing_ok=True)
    path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- resolving
def _cfg_name(cfg: Mapping[str, Any], variant: str) -> str:
    return f"{variant}.{cfg['tag']}" if cfg.get('tag') else variant


def resolve_weights_file(cfg: Mapping[str, Any], variant: str, cache_dir: Optional[Union[str, Path]] = None
                         ) -> Optional[Tuple[Path, str]]:
    """``(local weight file, where it came from)`` for a resolved pretrained cfg, in timm's order.

    None when the cfg holds an in-memory ``state_dict`` or only a ``url`` (timm loads those itself).
    """
    source = cfg.get('source')
    if cfg.get('state_dict') is not None and source not in ('hf-hub', 'local-dir'):
        return None
    if source == 'local-dir' or (cfg.get('file') and source != 'hf-hub'):
        path = Path(cfg['file'])
        if path.is_dir():
            path = path / WEIGHTS_NAME
        origin = 'shipped with flexconv_zoo' if SHIPPED_ROOT in path.absolute().parents else ''
        return path, origin
    if cfg.get('hf_hub_id'):
        filename = cfg.get('hf_hub_filename') or WEIGHTS_NAME
        path, hub_answers = _fetch(cfg['hf_hub_id'], filename, cache_dir, _cfg_name(cfg, variant))
        _fetch_companions(cfg['hf_hub_id'], path, cache_dir, hub_answers)
        return path, _HUB_ORIGIN + cfg['hf_hub_id']
    return None


def _fetch_companions(repo_id: str, weights: Path, cache_dir: Optional[Union[str, Path]], hub_answers: bool) -> None:
    """Put the repo's config.json and reference logits beside its weights in the cache (the checks read them
    there), when the Hub or the cache has them; a repo without them loads with the checks it can have."""
    for name in (CONFIG_NAME, REFERENCE_NAME):
        if not (weights.parent / name).is_file():
            try:
                _fetch(repo_id, name, cache_dir, hub_answers=hub_answers)
            except PretrainedWeightsError:  # not published in this repo, or neither Hub nor cache has it
                pass


def _norm(key: str, value: Any) -> Any:
    if key == 'img_size' and isinstance(value, int):
        return (value, value)
    return tuple(value) if isinstance(value, (list, tuple)) else value


def differing_model_args(saved: Mapping[str, Any], built: Mapping[str, Any],
                         keys: Iterable[str]) -> List[Tuple[str, Any, Any]]:
    """``(key, saved value, built value)`` for each of ``keys`` that both mappings have and disagree on, up to
    form: a list equals a tuple (JSON has no tuples) and ``img_size=32`` equals ``(32, 32)``."""
    return [(key, saved[key], built[key]) for key in keys
            if key in saved and key in built and _norm(key, saved[key]) != _norm(key, built[key])]


def check_config(config: Mapping[str, Any], config_path: Path, cfg: Mapping[str, Any], variant: str,
                 model_kwargs: Mapping[str, Any], shapes: Optional[Mapping[str, Tuple[int, ...]]]) -> None:
    """Refuse weights whose config.json disagrees with itself, the model being built, or the tensors.

    The error names every disagreeing field, e.g. ``num_classes: config.json 10, model_args 100``.
    """
    model_args = config.get('model_args') or {}
    saved_cfg = config.get('pretrained_cfg') or {}
    problems: List[str] = []

    def agree(field: str, values: Dict[str, Any]) -> None:
        given = {k: v for k, v in values.items() if v is not None}
        if len({repr(v) for v in given.values()}) > 1:
            problems.append(f"{field}: " + ', '.join(f"{k} {v}" for k, v in given.items()))

    if config.get('architecture') not in (None, variant):
        problems.append(f"architecture: config.json {config.get('architecture')}, model being built {variant}")
    classifier = cfg.get('classifier') or 'head.fc'
    head = (shapes or {}).get(f'{classifier}.weight')
    agree('num_classes', {'config.json': config.get('num_classes'), 'model_args': model_args.get('num_classes'),
                          'config.json pretrained_cfg': saved_cfg.get('num_classes'),
                          f'weights {classifier}.weight rows': head[0] if head else None})
    input_size = saved_cfg.get('input_size')
    if input_size:
        agree('in_chans', {'model_args': model_args.get('in_chans'), 'pretrained_cfg input_size[0]': input_size[0]})
        if 'img_size' in model_args:
            agree('img_size', {'model_args': _norm('img_size', model_args['img_size']),
                               'pretrained_cfg input_size[1:]': tuple(input_size[1:])})
        if 'seq_len' in model_args:
            agree('seq_len', {'model_args': model_args['seq_len'], 'pretrained_cfg input_size[-1]': input_size[-1]})
    given = {k: v for k, v in model_kwargs.items() if v is not None}  # None: the model's default
    for key, saved, built in differing_model_args(model_args, given, _DEFINING_ARGS):
        problems.append(f"{key}: model_args {_norm(key, saved)}, model {_norm(key, built)}")
    agree('sha256', {'config.json pretrained_cfg notes': weights_sha256(saved_cfg),
                     'pretrained cfg notes': weights_sha256(cfg)})
    if problems:
        raise PretrainedWeightsError(f"{config_path} does not match its weights / model: " + '; '.join(problems)
                                     + '. Nothing was loaded.')


def _verify(path: Path, origin: str, cfg: Mapping[str, Any], variant: str, model_kwargs: Mapping[str, Any]) -> None:
    """sha256, then the safetensors header, then the config.json beside the file (when there is one)."""
    if not path.is_file():
        raise PretrainedWeightsError(f"Weight file {_where(path, origin)} does not exist.")
    config_path = path.parent / CONFIG_NAME
    config = read_config(config_path) if config_path.is_file() else None
    expected = weights_sha256(cfg) or weights_sha256((config or {}).get('pretrained_cfg'))
    if expected:
        actual = file_sha256(path)
        if actual != expected:
            cached = origin.startswith(_HUB_ORIGIN)
            if cached:  # never leave a bad file in the HF cache (and never touch a folder of the user's)
                _drop_cached(path)
            raise PretrainedWeightsError(
                f"Weight file {_where(path, origin)} has sha256 {actual}, but {expected} is recorded for it: the file "
                f"is damaged or not the published one. "
                + ("It was removed from the cache; load again to download it again." if cached else
                   "Restore it (reinstall flexconv_zoo, or fetch it from the Hub repo)."))
    shapes = _tensor_shapes(path, origin)
    if config is not None:
        check_config(config, config_path, cfg, variant, model_kwargs, shapes)


def check_finite(state_dict: Mapping[str, Any], source: str) -> None:
    """Refuse weights with NaN or inf (a diverged run computes NaN logits and every accuracy looks like chance)."""
    bad = [k for k, v in state_dict.items() if torch.is_tensor(v) and v.is_floating_point() and
           not bool(torch.isfinite(v).all())]
    if bad:
        raise PretrainedWeightsError(
            f"Weight file {source} holds non-finite values (NaN or inf) in {len(bad)} tensor(s): "
            f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}. Nothing was loaded.")


def check_state_dict(state_dict: Mapping[str, torch.Tensor], model: nn.Module, source: str) -> None:
    """Refuse non-finite tensors and a state dict that does not fit ``model`` (after the checkpoint filter)."""
    check_finite(state_dict, source)
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    skip = ()
    if cfg.get('classifier') and getattr(model, 'num_classes', None) != cfg.get('num_classes'):
        skip = (cfg['classifier'],) if isinstance(cfg['classifier'], str) else tuple(cfg['classifier'])
    prefixes = tuple(s + '.' for s in skip)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not (prefixes and k.startswith(prefixes))}
    given = {k: tuple(v.shape) for k, v in state_dict.items() if not (prefixes and k.startswith(prefixes))}
    missing, unexpected = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
    wrong = sorted(f"{k}: file {given[k]} vs model {expected[k]}" for k in set(given) & set(expected)
                   if given[k] != expected[k])
    if missing or unexpected or wrong:
        def show(items: List[str]) -> str:
            return ', '.join(items[:3]) + (f' (+{len(items) - 3} more)' if len(items) > 3 else '')
        details = '; '.join(f"{label}: {show(items)}" for label, items in (
            ('missing keys', missing), ('unexpected keys', unexpected), ('shape mismatches', wrong)) if items)
        raise PretrainedWeightsError(
            f"Weights in {source} do not fit {cfg.get('architecture', type(model).__name__)}: {details}. They were "
            f"saved from another architecture or configuration; nothing was loaded.")


@contextmanager
def _fixed_conv_methods(model: nn.Module) -> Iterator[None]:
    """Every FlexConv with ``conv_method='auto'`` takes the fixed table's FFT/direct choice while the block runs:
    autotuning (timing both paths) would cost seconds for one forward. Only this model changes, so other threads
    keep the global autotune setting."""
    from .layers import FlexConvNd
    from .layers.fftconv import choose_conv_method
    auto = [m for m in model.modules() if isinstance(m, FlexConvNd) and m.conv_method == 'auto']
    device = next(model.parameters()).device.type
    for layer in auto:
        layer.conv_method = choose_conv_method(layer.cropped_kernel_size, device)
    try:
        yield
    finally:
        for layer in auto:
            layer.conv_method = 'auto'


@torch.no_grad()
def check_reference(model: nn.Module, reference_path: Path, source: str) -> float:
    """Run ``model`` on the input stored in ``reference_logits.safetensors``; raise unless the logits match."""
    import safetensors.torch
    try:
        reference = safetensors.torch.load_file(str(reference_path))
        inputs, expected = reference['input'], reference['logits']
    except Exception as err:
        raise PretrainedWeightsError(f"Cannot read {reference_path}: {_first_line(err)}") from None
    inputs, expected = inputs[:1], expected[:1]  # one sample is enough to catch changed bytes; keeps it < 1 s
    was_training = model.training
    model.eval()
    try:
        with _fixed_conv_methods(model):
            out = model(inputs).float()
    finally:
        model.train(was_training)
    err = (out - expected).abs().max().item() if out.shape == expected.shape else float('inf')
    if not (err <= REFERENCE_ATOL + REFERENCE_RTOL * expected.abs().max().item()):
        raise PretrainedWeightsError(
            f"Weights in {source} do not reproduce {reference_path} (max abs logit error {err:.3g}): the weights, "
            f"their config.json or this package's code changed since the folder was written.")
    return err


def _checked_filter(filter_fn: Optional[Callable], source: str) -> Callable:
    def filter_and_check(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
        try:
            state_dict = filter_fn(state_dict, model) if filter_fn is not None else state_dict
        except (ValueError, KeyError) as err:  # e.g. an original checkpoint on another kernel grid
            raise PretrainedWeightsError(f"Cannot use the weights in {source}: {err}") from None
        check_state_dict(state_dict, model, source)
        return state_dict
    return filter_and_check


def _can_check_reference(model: nn.Module, cfg: Mapping[str, Any], kwargs: Mapping[str, Any]) -> bool:
    """Reference logits apply to the model as published: same head and stem, float32 on the CPU."""
    param = next(model.parameters(), None)
    return (hasattr(model, 'flexconv_layers') and param is not None and param.device.type == 'cpu'
            and param.dtype == torch.float32 and getattr(model, 'num_classes', None) == cfg.get('num_classes')
            and kwargs.get('in_chans', (cfg.get('input_size') or (3,))[0]) == (cfg.get('input_size') or (3,))[0])


def _forget_sha256(model: nn.Module) -> nn.Module:
    """Drop the file's sha256 from the model's cfg: it describes a file, not weights that training will change
    (timm's ``save_for_hf`` copies ``notes`` into an export's config.json, where a stale hash would refuse it)."""
    cfg = getattr(model, 'pretrained_cfg', None)
    if cfg and weights_sha256(cfg):
        notes = [n for n in cfg.get('notes') or () if weights_sha256({'notes': [n]}) is None]
        cfg = {k: v for k, v in cfg.items() if k != 'notes'}
        if notes:
            cfg['notes'] = tuple(notes)
        model.pretrained_cfg = model.default_cfg = cfg
    return model


def build_flexconv_model(model_cls: Callable[..., nn.Module], variant: str, pretrained: bool,
                         pretrained_filter_fn: Optional[Callable] = None, **kwargs: Any) -> nn.Module:
    """timm's ``build_model_with_cfg`` with checked pretrained weights (the one loading path of this package).

    Without ``pretrained`` this is ``build_model_with_cfg``. With it, the weight file is resolved and verified
    first and passed to timm as the cfg's ``file``; the filter also refuses non-finite or non-fitting tensors, and
    the folder's reference logits are reproduced after loading.
    """
    from timm.models import build_model_with_cfg, resolve_pretrained_cfg
    if not pretrained:
        return _forget_sha256(build_model_with_cfg(
            model_cls, variant, pretrained, pretrained_filter_fn=pretrained_filter_fn, **kwargs))
    base = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.pop('pretrained_cfg', None))
    overlay = kwargs.pop('pretrained_cfg_overlay', None) or {}
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=base, pretrained_cfg_overlay=overlay).to_dict()
    other_source = any(overlay.get(k) is not None for k in ('file', 'url', 'state_dict')) or \
        overlay.get('hf_hub_id', base.hf_hub_id) != base.hf_hub_id
    if other_source and 'notes' not in overlay:  # the tag's sha256 describes the tag's bytes, not these
        cfg['notes'] = [n for n in cfg.get('notes') or () if weights_sha256({'notes': [n]}) is None]
    if not cfg.get('file') and 'file' not in overlay and cfg.get('hf_hub_id') and cfg.get('source') != 'hf-hub':
        # A tag declared with hf_hub_id alone whose folder is shipped: the shipped copy is its source too
        # (its config.json's sha256 applies). An explicit file=None in the overlay asks for the Hub.
        shipped = SHIPPED_ROOT / cfg['hf_hub_id'].split('@')[0].rsplit('/', 1)[-1] / WEIGHTS_NAME
        if shipped.is_file():
            cfg['file'] = str(shipped)
    resolved = resolve_weights_file(cfg, variant, kwargs.get('cache_dir'))
    if resolved is None:  # in-memory state_dict or url: timm's own loading
        return _forget_sha256(build_model_with_cfg(
            model_cls, variant, pretrained, pretrained_cfg=cfg,
            pretrained_filter_fn=_checked_filter(pretrained_filter_fn, 'the given state_dict'), **kwargs))
    path, origin = resolved
    _verify(path, origin, cfg, variant, kwargs)
    source = _where(path, origin)
    cfg.update(file=str(path), source=None)  # timm's order puts `file` first: it loads exactly the checked file
    model = build_model_with_cfg(model_cls, variant, pretrained, pretrained_cfg=cfg,
                                 pretrained_filter_fn=_checked_filter(pretrained_filter_fn, source), **kwargs)
    reference = path.parent / REFERENCE_NAME
    if reference.is_file() and _can_check_reference(model, cfg, kwargs):
        check_reference(model, reference, source)
    _logger.info(f"Loaded pretrained weights from {source}")
    return _forget_sha256(model)
