"""Progressive resolution: train a FlexConv model at a low resolution first, then continue at higher ones.

A continuous kernel can be resampled on a finer grid at any time (``model.rebase_input_size``), so one run can spend
its first epochs at, say, 20 px (about 2.5x cheaper per image than 32 px) and finish at 32 px, under a single
learning-rate schedule planned over the whole run. A schedule is a list of ``SIZE:FRACTION`` stages: stage
``SIZE`` starts after ``FRACTION`` of the epochs, e.g. ``20:0 32:0.6``. Switches happen at epoch boundaries.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence

__all__ = ['Stage', 'parse_size_schedule', 'stage_start_epochs', 'check_stage_epochs', 'size_at_epoch']


@dataclass(frozen=True)
class Stage:
    img_size: int
    start_fraction: float


def parse_size_schedule(items: Optional[Sequence[str]]) -> List[Stage]:
    """``['20:0', '32:0.6']`` -> stages; ``ValueError`` naming the bad item for anything else."""
    if not items:
        return []
    stages = []
    for item in items:
        try:
            size, fraction = str(item).split(':')
            stage = Stage(int(size), float(fraction))
        except ValueError:
            raise ValueError(f"--img-size-schedule item {item!r} is not SIZE:FRACTION (e.g. 20:0 32:0.6).") from None
        if stage.img_size < 2 or not 0.0 <= stage.start_fraction < 1.0:
            raise ValueError(f"--img-size-schedule item {item!r}: the size must be >= 2 px and the fraction in [0, 1).")
        stages.append(stage)
    if stages[0].start_fraction != 0.0:
        raise ValueError(f"--img-size-schedule must start with a stage at fraction 0 (got {items[0]!r}).")
    fractions = [s.start_fraction for s in stages]
    if any(b <= a for a, b in zip(fractions, fractions[1:])):
        raise ValueError(f"--img-size-schedule fractions must increase: {' '.join(map(str, items))}.")
    return stages


def stage_start_epochs(stages: Sequence[Stage], epochs: int) -> List[int]:
    """First epoch (0-based) of every stage in a run of ``epochs`` epochs."""
    return [round(s.start_fraction * epochs) for s in stages]


def check_stage_epochs(stages: Sequence[Stage], epochs: int) -> None:
    """``ValueError`` unless every stage trains at least one epoch once its start fraction is rounded to an epoch
    (``20:0 24:0.5 32:0.55`` with 4 epochs would start 24 px and 32 px together; ``20:0 32:0.96`` with 10 epochs
    would start 32 px after the last epoch). The message gives the epoch each stage would start at."""
    starts = stage_start_epochs(stages, epochs)
    lost = [s for i, s in enumerate(stages) if starts[i] >= (starts[i + 1] if i + 1 < len(stages) else epochs)]
    if lost:
        plan = ', '.join(f"{s.img_size} px at epoch {start + 1}" for s, start in zip(stages, starts))
        never = ', '.join(f"{s.img_size} px" for s in lost)
        raise ValueError(f"--img-size-schedule {' '.join(f'{s.img_size}:{s.start_fraction:g}' for s in stages)} "
                         f"with --epochs {epochs} starts {plan}: {never} would never be trained. Space the fractions "
                         f"at least 1/{epochs} = {1 / epochs:.3g} apart and below {(epochs - 0.5) / epochs:.3g}, or "
                         f"train more --epochs.")


def size_at_epoch(stages: Sequence[Stage], epochs: int, epoch: int) -> int:
    """Training resolution of 0-based ``epoch``."""
    size = stages[0].img_size
    for stage, start in zip(stages, stage_start_epochs(stages, epochs)):
        if epoch >= start:
            size = stage.img_size
    return size
