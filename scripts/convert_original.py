#!/usr/bin/env python
"""Convert a checkpoint of the original FlexConv code (github.com/rjbruin/flexconv) into a Hub folder.

    python scripts/convert_original.py flexnet16_cifar10.pt hub_configs/flexnet16.cifar10_original \\
        --model flexnet16 --img-size 32 --num-classes 10

The original ``.pt`` holds ``{"model": state_dict}`` with ``cconv1.Kernel.*``, ``mask_params`` and
``train_length`` keys; :func:`flexconv_zoo.hub_export.convert_original` (through
:func:`flexconv_zoo.models.checkpoint_filter_fn`) renames and reshapes them and refuses a model built for another
kernel grid. The folder gets config.json, model.safetensors, reference logits and a
model card that says the weights are converted, with the results you pass (``--result``) and their command.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('checkpoint', type=Path, help='original FlexConv .pt checkpoint')
    parser.add_argument('output', type=Path, help='Hub folder to write, e.g. hub_configs/flexnet16.cifar10')
    parser.add_argument('--model', default='flexnet16', help='registered architecture (flexnet8/12/16, flextcn2/4/6)')
    parser.add_argument('--name', default=None, help='<model>.<tag> to publish as (default: <model>.original)')
    parser.add_argument('--img-size', type=int, default=None, help='FlexNet training resolution (kernel grid)')
    parser.add_argument('--seq-len', type=int, default=None, help='FlexTCN training sequence length')
    parser.add_argument('--in-chans', type=int, default=None)
    parser.add_argument('--num-classes', type=int, default=10)
    parser.add_argument('--dataset', default='cifar10')
    parser.add_argument('--result', action='append', default=[], metavar='SPLIT:SIZE:TOP1:N:COMMAND',
                        help='a measured result for the card, e.g. "test:32:92.31:10000:python scripts/validate.py ..."')
    parser.add_argument('--overwrite', action='store_true')
    args = parser.parse_args(argv)

    from flexconv_zoo.hub_export import convert_original
    model_kwargs = dict(num_classes=args.num_classes)
    for key, value in (('img_size', args.img_size), ('seq_len', args.seq_len), ('in_chans', args.in_chans)):
        if value is not None:
            model_kwargs[key] = value
    command = f'python scripts/convert_original.py {" ".join(sys.argv[1:] if argv is None else argv)}'
    convert_original(args.checkpoint, args.output, args.model, name=args.name, model_kwargs=model_kwargs,
                     dataset=args.dataset, results=args.result, command=command, overwrite=args.overwrite)
    print(f'wrote {args.output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
