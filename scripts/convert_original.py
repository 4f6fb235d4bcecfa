#!/usr/bin/env python
"""Convert a checkpoint of the original FlexConv code (github.com/rjbruin/flexconv) into a Hub folder.

    python scripts/convert_original.py flexnet16_cifar10.pt hub_configs/flexnet16.cifar10_original \\
        --model flexnet16 --img-size 32 --num-classes 10

The original ``.pt`` holds ``{"model": state_dict}`` with ``cconv1.Kernel.*``, ``mask_params`` and
``train_length`` keys; :func:`flexconv_zoo.models.checkpoint_filter_fn` renames and reshapes them and refuses a
model built for another kernel grid. The folder gets config.json, model.safetensors, reference logits and a
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

    import torch
    import timm
    import flexconv_zoo  # noqa: F401
    from flexconv_zoo.hub import CardInfo, EvalRow, write_hub_folder
    from flexconv_zoo.models import checkpoint_filter_fn

    kwargs = dict(num_classes=args.num_classes)
    for key, value in (('img_size', args.img_size), ('seq_len', args.seq_len), ('in_chans', args.in_chans)):
        if value is not None:
            kwargs[key] = value
    model = timm.create_model(args.model, **kwargs)
    checkpoint = torch.load(args.checkpoint, map_location='cpu', weights_only=True)
    state_dict = checkpoint_filter_fn(checkpoint, model)
    model.load_state_dict(state_dict, strict=True)  # every key must map; a partial conversion is an error
    model.eval()

    results = []
    for spec in args.result:
        split, size, top1, num, command = spec.split(':', 4)
        results.append(EvalRow(args.dataset, split, int(size), float(top1), int(num), command))
    name = args.name or f'{args.model}.original'
    info = CardInfo(
        dataset=args.dataset, dataset_name=args.dataset,
        summary=f'Weights converted from an original FlexConv checkpoint ({args.checkpoint.name}).',
        recipe=['Trained by the authors of the original FlexConv code; converted with scripts/convert_original.py.'],
        train_command=f'python scripts/convert_original.py {" ".join(sys.argv[1:] if argv is None else argv)}',
        training_cost='see the original publication',
        limitations=['Converted weights: results are those passed to the converter, with their commands.'],
    )
    write_hub_folder(model, args.output, name=name, info=info, results=results, overwrite=args.overwrite)
    print(f'wrote {args.output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
