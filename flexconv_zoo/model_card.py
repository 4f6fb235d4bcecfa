"""Model cards of published weights: huggingface_hub's ``ModelCard`` filled from ``templates/model_card.md``.

The metadata header (license, library_name, tags, datasets, metrics and the measured results as ``model-index``)
is a ``ModelCardData``; the text is the Jinja template. :func:`read_card_results` reads the results back.
"""
import dataclasses
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

__all__ = ['EvalRow', 'CardInfo', 'CARD_NAME', 'CARD_TEMPLATE', 'PAPER_BIBTEX', 'render_model_card',
           'read_card_results']

CARD_NAME = 'README.md'  # the model card of a Hub folder

CARD_TEMPLATE = Path(__file__).resolve().parent / 'templates' / 'model_card.md'
PAPER_BIBTEX = """@inproceedings{romero2022flexconv,
  title={FlexConv: Continuous Kernel Convolutions With Differentiable Kernel Sizes},
  author={Romero, David W. and Bruintjes, Robert-Jan and Tomczak, Jakub M. and Bekkers, Erik J. and
          Hoogendoorn, Mark and van Gemert, Jan C.},
  booktitle={International Conference on Learning Representations (ICLR)},
  year={2022},
  url={https://arxiv.org/abs/2110.08059}
}"""


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
        flip_top1: Top-1 with horizontal-flip test-time augmentation, measured by the same command; shown beside
            the table, never in the card's metadata (timm's headline numbers are single view).
    """
    dataset: str
    split: str
    input_size: int
    top1: float
    num_samples: int
    command: str
    flip_top1: Optional[float] = None


@dataclasses.dataclass
class CardInfo:
    """What a model card says besides the measured results.

    Args:
        dataset: Hub dataset id (``'cifar10'``, ``'mnist1d'``) for the card metadata.
        dataset_name: Human-readable dataset name.
        summary: One paragraph: what the weight is.
        recipe: Training recipe lines (optimizer, schedule, epochs, augmentation, regularisers, hardware).
        train_command: The exact training command.
        train_command_note: What the command alone does not say (e.g. options switched on when resuming).
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
    train_command_note: str = ''


def render_model_card(
        name: str,
        repo_id: str,
        info: CardInfo,
        results: Sequence[EvalRow],
        input_size: Sequence[int],
        test_input_size: Optional[Sequence[int]],
        num_params: int,
        kernel_sizes: Sequence[Tuple[int, ...]] = (),
        figures: Optional[Dict[str, str]] = None,
) -> str:
    """The README.md of a Hub folder: metadata header (with model-index results), usage, recipe, results, limits."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData
    arch = name.split('.', 1)[0]
    sequence = arch.startswith('flextcn')
    task = 'sequence-classification' if sequence else 'image-classification'
    data = ModelCardData(
        license=info.license,
        library_name='timm',
        tags=[task, 'timm', 'flexconv', 'continuous-kernel-convolution', *info.tags],
        datasets=[info.dataset],
        metrics=['accuracy'],
        model_name=name,
        eval_results=[EvalResult(
            task_type=task, dataset_type=info.dataset, dataset_name=info.dataset_name, dataset_split=row.split,
            # The Hub groups results by dataset config: one per evaluated size keeps each size's args its own.
            dataset_config=f"{row.input_size} {'steps' if sequence else 'px'}",
            dataset_args={'input_size': int(row.input_size), 'num_samples': int(row.num_samples)},
            metric_type='accuracy', metric_name=f'top-1 accuracy @ {row.input_size}', metric_value=float(row.top1),
        ) for row in results] or None,
    )
    test_size_txt = ''
    if test_input_size and tuple(test_input_size) != tuple(input_size):
        test_size_txt = 'x'.join(map(str, test_input_size[1:]))
    card = ModelCard.from_template(
        data, template_path=str(CARD_TEMPLATE),
        name=name, repo_id=repo_id, arch=arch, summary=info.summary, num_params=f'{num_params:,}',
        size_txt=f"sequence length {input_size[-1]}" if sequence else f"{'x'.join(map(str, input_size[1:]))} px",
        test_size_txt=test_size_txt,
        usage_input=(f"torch.randn(1, {input_size[0]}, {input_size[-1]})" if sequence
                     else f"torch.randn(1, {input_size[0]}, {input_size[1]}, {input_size[2]})"),
        recipe=list(info.recipe), training_cost=info.training_cost, train_command=info.train_command,
        train_command_note=info.train_command_note,
        kernels=', '.join('x'.join(map(str, k)) for k in kernel_sizes),
        resolutions=', '.join(str(s) for s in sorted({int(r.input_size) for r in results})) or 'none',
        results=list(results), dataset_name=info.dataset_name, limitations=list(info.limitations),
        bibtex=PAPER_BIBTEX, figures=dict(figures or {}),
    )
    return str(card)


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
