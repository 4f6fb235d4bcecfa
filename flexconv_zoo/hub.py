"""The pretrained-weights API in one import (kept for ``from flexconv_zoo.hub import ...``).

Each concern has its own module: loading and verification in :mod:`flexconv_zoo.loading`, Hub folders in
:mod:`flexconv_zoo.hub_folder`, model cards in :mod:`flexconv_zoo.model_card`.
"""
from .hub_folder import (
    CARD_NAME, REQUIRED_FILES, HubFolderError, compute_reference, create_model_for_tag, pretrained_tags,
    reference_input, training_input_size, validate_hub_folder, write_hub_folder,
)
from .loading import (
    CONFIG_NAME, REFERENCE_NAME, WEIGHTS_NAME, PretrainedWeightsError, WeightsUnavailableError, read_config,
    read_weights,
)
from .model_card import CardInfo, EvalRow, read_card_results, render_model_card

__all__ = [
    'PretrainedWeightsError', 'WeightsUnavailableError', 'HubFolderError', 'CardInfo', 'EvalRow', 'CONFIG_NAME',
    'WEIGHTS_NAME', 'CARD_NAME', 'REFERENCE_NAME', 'REQUIRED_FILES', 'read_config', 'read_weights', 'pretrained_tags',
    'create_model_for_tag', 'training_input_size', 'reference_input', 'compute_reference', 'write_hub_folder',
    'render_model_card', 'validate_hub_folder', 'read_card_results',
]
