#!/usr/bin/env python
"""Export a trained FlexConv model to ONNX as a plain CNN (reparameterized), checked against PyTorch with onnxruntime.

    python scripts/export_onnx.py flexnet16.cifar10                               # a pretrained tag
    python scripts/export_onnx.py flexnet16.cifar10_16px_alias_free --img-size 32 --check-sizes 24 48
    python scripts/export_onnx.py runs/<run> --output model.onnx --fft             # a run folder; wide kernels as DFTs
    python scripts/export_onnx.py weights.safetensors --model flexnet16 --source-img-size 32

Needs the onnx extra: ``pip install ".[onnx]"``.
"""
import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from flexconv_zoo.deploy import add_source_arguments  # noqa: E402
from flexconv_zoo.cli import UserError, parse_model_kwargs, run_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_arguments(p)
    p.add_argument('--img-size', '--seq-len', dest='size', type=int, default=None,
                   help="deployment resolution (pixels per side / sequence length): the kernels are resampled "
                        "for it before they are frozen (default: the model's own)")
    p.add_argument('--output', '-o', default=None, help="ONNX file to write (default: <source name>.onnx)")
    p.add_argument('--check-sizes', type=int, nargs='*', default=(),
                   help="further input sizes at which onnxruntime is compared with PyTorch")
    p.add_argument('--static', action='store_true', help="fixed input size (default: symbolic batch and size)")
    p.add_argument('--fft', action='store_true',
                   help="export large kernels (>= 9 taps in 2-D, >= 256 in 1-D) as DFT matmuls instead of Conv ops: "
                        "the same function, far faster in onnxruntime for wide kernels, slower to export")
    p.add_argument('--opset', type=int, default=None, help="ONNX opset (default: the exporter's)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    from flexconv_zoo.deploy import export_and_check, format_parity
    try:
        path, rows = export_and_check(
            args.source, args.output, model_name=args.model, size=args.size, check_sizes=args.check_sizes,
            source_img_size=args.source_img_size, dynamic=not args.static, opset=args.opset,
            model_kwargs=parse_model_kwargs(args.model_kwargs), fft=args.fft)
    except (ValueError, ImportError) as e:
        raise UserError(str(e)) from None
    print(f"wrote {path}: onnxruntime vs PyTorch")
    print(format_parity(rows))


if __name__ == '__main__':
    sys.exit(run_cli(main))
