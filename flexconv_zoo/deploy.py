"""Deployment: a trained FlexConv model as a plain CNN, and its ONNX export.

In eval mode a FlexConv's kernel is a fixed tensor. :meth:`FlexConvNd.reparameterize
<flexconv_zoo.layers.FlexConvNd.reparameterize>` turns each layer into a fixed convolution of its cropped kernel
at the model's current resolution (timm's convention, so ``timm.utils.reparameterize_model(model)`` converts a
whole model); this module adds loading a model from a tag, run folder or weights file, and the ONNX export
with an onnxruntime parity check (``pip install ".[onnx]"``).
"""
import copy
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.utils import reparameterize_model

from .layers import FlexConvNd
from .layers.fftconv import choose_conv_method

__all__ = [
    'add_source_arguments', 'load_source_from_args', 'load_source', 'input_shape', 'set_resolution', 'reparameterize',
    'export_onnx', 'onnx_session', 'onnx_max_diff', 'export_and_check', 'format_parity',
]


def add_source_arguments(parser) -> None:
    """The command-line arguments that name a model for :func:`load_source_from_args` (export, inspection)."""
    parser.add_argument('source', help="pretrained tag (flexnet16.cifar10), hf-hub:<org>/<name>, run folder, "
                                       "Hub-layout folder or weights file")
    parser.add_argument('--model', default=None, help="architecture of a bare weights file (e.g. flexnet16)")
    parser.add_argument('--source-img-size', type=int, default=None,
                        help="resolution a bare weights file was trained at (default 32)")
    parser.add_argument('--model-kwargs', nargs='*', default=None, metavar='KEY=VALUE',
                        help="architecture arguments of a bare weights file (e.g. widths=8,12 kernel_hidden=8)")


def load_source_from_args(args) -> nn.Module:
    """:func:`load_source` with the arguments of :func:`add_source_arguments`."""
    from .cli import parse_model_kwargs
    return load_source(args.source, model_name=args.model, source_img_size=args.source_img_size,
                       model_kwargs=parse_model_kwargs(args.model_kwargs))


def load_source(
        source: str,
        model_name: Optional[str] = None,
        source_img_size: Optional[int] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
) -> nn.Module:
    """A model in eval mode from a pretrained tag (``flexnet16.cifar10``, ``hf-hub:<org>/<name>``), a run
    folder, a Hub-layout folder or a weights file (then ``model_name`` names the architecture)."""
    from .checkpoints import load_model
    path = Path(source)
    if path.exists() or source.startswith('hf-hub:') or '/' in source or path.suffix in ('.safetensors', '.pth', '.pt'):
        model = load_model(source, model_name=model_name, model_kwargs=model_kwargs,
                           source_img_size=source_img_size)
    else:
        if model_name and model_name != source:
            raise ValueError(f"{source} is neither a file nor a folder; give it as the model name, not with --model.")
        model = load_model(None, model_name=source, model_kwargs=model_kwargs, pretrained=True)
    return model.eval()


def set_resolution(model: nn.Module, size: Optional[int]) -> None:
    """Resample every kernel for inputs of ``size`` (pixels per side, or sequence length); None keeps the grid."""
    if size is not None:
        model.set_input_size(size)


def input_shape(model: nn.Module, batch_size: int = 1, size: Optional[int] = None) -> Tuple[int, ...]:
    """An input shape for ``model``: ``(B, C, L)`` for FlexTCN, ``(B, C, H, W)`` for FlexNet; ``size`` defaults to
    the model's current resolution (``model.input_size``)."""
    chans, *spatial = model.input_size
    if model.size_unit == 'steps':
        return batch_size, chans, size or spatial[-1]
    return (batch_size, chans, *((size, size) if size else spatial))


def _existing_module(model: nn.Module, name: str) -> str:
    """``name`` or its nearest parent that is still a submodule of ``model`` ('' for none)."""
    while name:
        try:
            model.get_submodule(name)
            return name
        except AttributeError:
            name = name.rpartition('.')[0]
    return name


def reparameterize(model: nn.Module, size: Optional[int] = None, inplace: bool = False) -> nn.Module:
    """``timm.utils.reparameterize_model`` after resampling for ``size``: an eval-mode model whose FlexConvs are
    fixed convolutions (no kernel nets, masks or crop logic). The pretrained cfg's ``first_conv`` (a kernel net
    output before) then names the reparameterized convolution, e.g. ``'stem.conv'``."""
    if not inplace:
        model = copy.deepcopy(model)
    set_resolution(model, size)
    model = reparameterize_model(model.eval(), inplace=True)
    cfg = getattr(model, 'pretrained_cfg', None)
    if cfg and cfg.get('first_conv'):
        model.pretrained_cfg = model.default_cfg = {**cfg, 'first_conv': _existing_module(model, cfg['first_conv'])}
    return model


def export_onnx(
        model: nn.Module,
        path: Union[str, Path],
        size: Optional[int] = None,
        batch_size: int = 2,  # not 1: torch.export may specialise a size-1 dimension
        dynamic: bool = True,
        opset: Optional[int] = None,
        fft: bool = False,
) -> Path:
    """Reparameterize ``model`` (resampled for ``size`` first) and write it to ``path`` with ``torch.onnx.export``.

    ``dynamic`` makes the batch and spatial/temporal sizes symbolic: like any CNN the exported model accepts
    other input sizes with the kernels of ``size``. The FFT path has no ONNX form (complex matmul): by default the
    reparameterized layers export as ONNX ``Conv`` ops (quick to export, slow in onnxruntime for large kernels);
    ``fft=True`` exports the layers the FFT dispatch table sends to the FFT as real DFT matmuls
    (:func:`flexconv_zoo.layers.dftconv.conv_dft_matmul`): the same function, much faster to run, but each such
    layer adds seconds to the export, and it needs ``dynamic`` (fixed sizes would fold every kernel spectrum into
    the file).
    """
    if fft and not dynamic:
        raise ValueError("fft=True needs dynamic=True: a fixed-size export would store every kernel spectrum.")
    try:
        import onnxscript  # noqa: F401  (torch.onnx.export's exporter needs it)
    except ImportError:
        raise ImportError("ONNX export needs the onnx extra: pip install 'flexconv_zoo[onnx]'.") from None
    deployed = reparameterize(model, size)
    for layer in deployed.modules():
        if isinstance(layer, FlexConvNd):
            ks = layer.weight.shape[2:]
            layer.conv_method = 'fft' if fft and choose_conv_method(ks, 'cpu') == 'fft' else 'direct'
    x = torch.randn(input_shape(deployed, batch_size, size))
    dims = {0: torch.export.Dim('batch', min=1)}
    if dynamic:
        for axis in range(2, x.dim()):
            if x.shape[axis] > 1:  # FlexTCN's image layout is (B, C, 1, L); a sequence is (B, C, L)
                dims[axis] = torch.export.Dim(f'size{axis}', min=2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {} if opset is None else {'opset_version': opset}
    torch.onnx.export(deployed, (x,), str(path), dynamo=True, dynamic_shapes=(dims,), input_names=['input'],
                      output_names=['logits'], verbose=False, **kwargs)
    return path


def onnx_session(path: Union[str, Path], threads: int = 0):
    """An onnxruntime CPU session for ``path``; ``threads`` > 0 fixes its intra-op threads (as torch's)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])


def onnx_max_diff(
        path: Union[str, Path], model: nn.Module, shapes: Sequence[Sequence[int]]) -> List[Dict[str, Any]]:
    """Largest |onnxruntime - PyTorch| of ``model`` on seeded random inputs of each shape (timing:
    scripts/benchmark.py)."""
    session = onnx_session(path)
    name = session.get_inputs()[0].name
    generator = torch.Generator().manual_seed(0)
    rows = []
    for shape in shapes:
        x = torch.randn(tuple(shape), generator=generator)
        with torch.no_grad():
            expected = model(x)
        got = torch.from_numpy(session.run(None, {name: x.numpy()})[0])
        if got.shape != expected.shape:
            raise ValueError(f"onnxruntime returned shape {tuple(got.shape)}, PyTorch {tuple(expected.shape)}.")
        rows.append(dict(shape=tuple(shape), max_abs_diff=(got - expected).abs().max().item(),
                         max_abs_output=expected.abs().max().item()))
    return rows


def export_and_check(
        source: str,
        output: Optional[Union[str, Path]] = None,
        model_name: Optional[str] = None,
        size: Optional[int] = None,
        check_sizes: Sequence[int] = (),
        source_img_size: Optional[int] = None,
        dynamic: bool = True,
        opset: Optional[int] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        fft: bool = False,
) -> Tuple[Path, List[Dict[str, Any]]]:
    """Load ``source`` (see :func:`load_source`), export it for inputs of ``size`` (default: its current
    resolution) to ``output`` (default ``<name>.onnx``) and compare onnxruntime with the PyTorch model (before
    reparameterization) on random inputs of ``size`` and each of ``check_sizes``."""
    model = load_source(source, model_name=model_name, source_img_size=source_img_size, model_kwargs=model_kwargs)
    set_resolution(model, size)
    name = Path(source).name if Path(source).exists() else source.replace('hf-hub:', '').replace('/', '_')
    path = export_onnx(model, output or f'{Path(name).stem if name.endswith(".safetensors") else name}.onnx',
                       dynamic=dynamic, opset=opset, fft=fft)
    shapes = [input_shape(model, 2)]
    shapes += [input_shape(model, 2, s) for s in check_sizes if dynamic]
    return path, onnx_max_diff(path, model, shapes)


def format_parity(rows: Sequence[Dict[str, Any]]) -> str:
    """A markdown table of :func:`onnx_max_diff` rows."""
    lines = ['| input shape | max abs diff | max abs output |', '|---|---|---|']
    for r in rows:
        lines.append(f"| {tuple(r['shape'])} | {r['max_abs_diff']:.2e} | {r['max_abs_output']:.3g} |")
    return '\n'.join(lines)
