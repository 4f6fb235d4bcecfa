"""Data sets and resolution-aware transforms for FlexConv models."""
from .datasets import (
    DATASETS, DataNotFoundError, DataSplits, create_datasets, default_cache_dir, default_data_dirs,
)
from .transforms import (
    check_model_input_size, create_eval_transform, create_train_transform, eval_transform_for, model_input_size,
)

__all__ = [
    'DATASETS', 'DataNotFoundError', 'DataSplits', 'create_datasets', 'default_cache_dir', 'default_data_dirs',
    'check_model_input_size', 'create_eval_transform', 'create_train_transform', 'eval_transform_for',
    'model_input_size',
]
