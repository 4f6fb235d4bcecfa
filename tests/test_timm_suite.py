"""Run timm's own ``tests/test_models.py`` (from the installed timm version's sdist) on every FlexConv model.

Passing it is what makes FlexNet / FlexTCN "real" timm models: default cfgs, meta-device creation,
bf16, features, FX tracing, head resets, pruning. The sdist is fetched with ``pip download`` into
``$FLEXCONV_TIMM_SDIST_DIR`` (default ``.cache/timm-sdist``) unless it is already there; ``.ci/run``
fetches it before the slow set (``pytest -m slow``, minutes), which this test belongs to. TorchScript tests
are deselected: TorchScript is deprecated in this torch
(``torch.compile`` / ``torch.export`` are tested in test_models.py / test_speed_paths.py instead).
"""
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import timm

import flexconv_zoo  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
SDIST_DIR = Path(os.environ.get('FLEXCONV_TIMM_SDIST_DIR', ROOT / '.cache' / 'timm-sdist'))


def timm_test_file() -> Path:
    """Path of ``tests/test_models.py`` of the installed timm version, downloading the sdist if needed."""
    version = timm.__version__
    test_file = SDIST_DIR / f'timm-{version}' / 'tests' / 'test_models.py'
    if test_file.exists():
        return test_file
    SDIST_DIR.mkdir(parents=True, exist_ok=True)
    archive = SDIST_DIR / f'timm-{version}.tar.gz'
    if not archive.exists():
        subprocess.run(
            [sys.executable, '-m', 'pip', 'download', f'timm=={version}', '--no-binary', ':all:', '--no-deps',
             '-d', str(SDIST_DIR), '-q'],
            check=True,
        )
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(f'timm-{version}/tests/')]
        tar.extractall(SDIST_DIR, members=members, filter='data')
    return test_file


@pytest.mark.slow  # minutes on 2 CPU cores: CI runs it with -m slow
@pytest.mark.timm_suite
def test_timm_model_suite_passes_for_flexconv_models():
    test_file = timm_test_file()
    env = dict(os.environ, GITHUB_ACTIONS='1')  # timm's CI settings: smaller sizes, no hub downloads
    cmd = [
        sys.executable, '-m', 'pytest', str(test_file), '-p', 'flexconv_zoo', '-k', 'flexnet or flextcn',
        '-m', 'not torchscript', '-v', '-p', 'no:cacheprovider', '-W', 'ignore', '--rootdir', str(test_file.parent),
    ]
    result = subprocess.run(cmd, cwd=test_file.parent, env=env, capture_output=True, text=True)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-2000:]
    assert result.returncode == 0, f"timm's test_models.py failed: {summary}\n{result.stdout[-6000:]}"
    assert ' passed' in summary and 'failed' not in summary, summary
    # every registered FlexConv architecture took part in the core tests
    passed_lines = [line for line in result.stdout.splitlines() if line.endswith('PASSED') or ' PASSED ' in line]
    for name in timm.list_models(['flexnet*', 'flextcn*']):
        for test in ('test_model_forward[', 'test_model_backward[', 'test_model_default_cfgs[',
                     'test_model_forward_features[', 'test_model_forward_fx['):
            assert any(test in line and name in line for line in passed_lines), f'{test} did not pass for {name}'
