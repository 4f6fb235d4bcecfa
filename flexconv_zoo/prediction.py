"""``scripts/predict.py``: top-k predictions of a (pretrained) FlexNet for image files, at any resolution.

    python scripts/predict.py                                    # 8 CIFAR-10 test images, default tag's weights
    python scripts/predict.py cat.png dog.jpg --model flexnet16.cifar10_16px_alias_free --img-size 32
"""
import argparse
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .checkpoints import load_model, min_input_size
from .cli import UserError, parse_model_kwargs
from .models import FlexConvModelMixin

__all__ = ['build_predict_parser', 'predict', 'predict_main']


def build_predict_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Top-k predictions of a FlexNet for image files (or CIFAR-10 test images).")
    p.add_argument('images', nargs='*', help="image files (default: --count images of the CIFAR-10 test split)")
    p.add_argument('--model', help="timm name, with a pretrained tag unless --checkpoint is given "
                                   "(default: flexnet16.cifar10)")
    p.add_argument('--checkpoint', help="run folder, Hub-layout folder, weights file or hf-hub:<org>/<name> instead")
    p.add_argument('--model-kwargs', nargs='*', metavar='KEY=VALUE')
    p.add_argument('--img-size', type=int, help="resample the kernels to this resolution (default: the training one)")
    p.add_argument('--topk', type=int, default=3)
    p.add_argument('--count', type=int, default=8, help="test images to classify when no files are given")
    p.add_argument('--data-dir', help="folder with cifar10_jpg_q75.tar.gz (default: $FLEXCONV_ZOO_DATA, ../shared/data)")
    return p


def _label_names(model: torch.nn.Module) -> Sequence[str]:
    names = model.pretrained_cfg.get('label_names')
    if names and len(names) == model.num_classes:  # a new head (num_classes=...) has no names
        return list(names)
    return [str(i) for i in range(model.num_classes)]


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, topk: int = 3) -> List[List[Tuple[str, float]]]:
    """``(label, probability)`` pairs, best first, for a batch of transformed images."""
    probs = model.eval()(images).softmax(-1)
    values, indices = probs.topk(min(topk, probs.shape[-1]), dim=-1)
    names = _label_names(model)
    return [[(names[i], v) for i, v in zip(row_i.tolist(), row_v.tolist())] for row_i, row_v in zip(indices, values)]


def _load_files(paths: Sequence[str], transform, in_chans: int) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError
    tensors = []
    for path in paths:
        if not Path(path).is_file():
            raise UserError(f"Image {path} does not exist.")
        try:
            with Image.open(path) as img:
                tensors.append(transform(img.convert('L' if in_chans == 1 else 'RGB')))
        except (UnidentifiedImageError, OSError) as e:
            raise UserError(f"Cannot read image {path}: {e}") from None
    return torch.stack(tensors)


def _load_test_images(count: int, transform, data_dir: Optional[str]) -> Tuple[torch.Tensor, List[str], List[str]]:
    from .data import create_datasets
    splits = create_datasets('cifar10', data_dir)
    test = splits.test
    test.transform = transform
    picks = torch.linspace(0, len(test) - 1, count).long().tolist()  # spread over the split, reproducible
    samples = [test[i] for i in picks]
    return (torch.stack([x for x, _ in samples]), [f"cifar10 test #{i}" for i in picks],
            [splits.class_names[y] for _, y in samples])


def predict_main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    from .data import eval_transform_for
    args = build_predict_parser().parse_args(argv)
    if args.topk < 1 or args.count < 1:
        raise UserError("--topk and --count must be at least 1.")
    kwargs = parse_model_kwargs(args.model_kwargs)
    if args.checkpoint:
        architecture = args.model.split('.')[0] if args.model else None
        model = load_model(args.checkpoint, architecture, kwargs)
    else:
        model = load_model(None, args.model or 'flexnet16.cifar10', kwargs, pretrained=True)
    if isinstance(model, FlexConvModelMixin) and model.size_unit == 'steps':
        what = args.model or args.checkpoint or 'flexnet16.cifar10'
        raise UserError(f"{what} is a sequence model; predict.py classifies images (use validate.py for sequences).")
    if args.img_size is not None and args.img_size < min_input_size(model):
        raise UserError(f"--img-size {args.img_size} is smaller than the {min_input_size(model)} px the model accepts.")
    transform = eval_transform_for(model, args.img_size)
    if args.images:
        batch, sources, truths = _load_files(args.images, transform, model.in_chans), list(args.images), None
    else:
        batch, sources, truths = _load_test_images(args.count, transform, args.data_dir)
    rows = []
    for i, top in enumerate(predict(model, batch, args.topk)):
        rows.append(dict(source=sources[i], top=top, **({'label': truths[i]} if truths else {})))
    size = tuple(batch.shape[-2:])
    print(f"{model.pretrained_cfg.get('architecture', args.model)} at {size[0]}x{size[1]} px")
    for row in rows:
        guesses = ', '.join(f"{name} {p:.1%}" for name, p in row['top'])
        truth = f"  (true: {row['label']})" if 'label' in row else ''
        print(f"{row['source']}: {guesses}{truth}")
    if truths:
        correct = sum(r['top'][0][0] == r['label'] for r in rows)
        print(f"top-1 correct: {correct}/{len(rows)}")
    return rows
