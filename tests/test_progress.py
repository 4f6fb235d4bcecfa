"""Long steps say what they do: validate.py's passes over the evaluation split show a progress bar per size."""
import numpy as np
import timm
from PIL import Image

import flexconv_zoo  # noqa: F401  (registers the models)
from flexconv_zoo.data import create_datasets
from flexconv_zoo.evaluation import validate_resolutions


def test_validate_resolutions_shows_a_bar_per_size(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for c in ('a', 'b'):
        (tmp_path / 'train' / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(tmp_path / 'train' / c / f'{i}.png')
    splits = create_datasets(str(tmp_path), val_size=0)
    model = timm.create_model('flexnet8', img_size=12, widths=(4,), kernel_hidden=4, num_classes=2).eval()
    rows = validate_resolutions(model, splits.train, [12, 16], batch_size=2)
    assert [r['img_size'] for r in rows] == [12, 16]
    err = capsys.readouterr().err
    assert '12 px' in err and '16 px' in err
    validate_resolutions(model, splits.train, [12], batch_size=2, progress=False)
    assert '12 px' not in capsys.readouterr().err
