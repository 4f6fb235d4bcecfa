"""Package metadata and the test-suite split that CI relies on."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_metadata_has_license_home_page_and_author(tmp_path):
    """``pip show`` reads Author, License-Expression (Metadata 2.4) and Home-page (the ``Homepage`` URL)."""
    code = ("import os, sys, setuptools; os.chdir(sys.argv[1]); "
            "sys.argv = ['setup.py', '-q', 'egg_info', '--egg-base', sys.argv[2]]; setuptools.setup()")
    proc = subprocess.run([sys.executable, '-c', code, str(ROOT), str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pkg_info = (tmp_path / 'flexconv_zoo.egg-info' / 'PKG-INFO').read_text()
    fields = {}
    for line in pkg_info.split('\n\n')[0].splitlines():
        key, _, value = line.partition(': ')
        fields.setdefault(key, []).append(value)
    assert fields['License-Expression'] == ['MIT'] and fields['License-File'] == ['LICENSE']
    assert fields['Author'][0].strip()
    assert any(url.lower().startswith('homepage, https://') for url in fields['Project-URL'])
    assert 'MIT License' in (ROOT / 'LICENSE').read_text()


def _collected(*args: str) -> str:
    proc = subprocess.run([sys.executable, '-m', 'pytest', '--collect-only', '-q', '-p', 'no:cacheprovider', *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 5), proc.stdout[-2000:] + proc.stderr[-2000:]  # 5: all deselected
    return proc.stdout


@pytest.mark.slow  # two collections of the whole suite
def test_default_run_is_the_fast_set_and_ci_runs_the_slow_set_too():
    timm_suite = 'tests/test_timm_suite.py::test_timm_model_suite_passes_for_flexconv_models'
    assert timm_suite not in _collected('tests/test_timm_suite.py')  # the README command skips it
    assert timm_suite in _collected('tests/test_timm_suite.py', '-m', 'slow')
    ci = (ROOT / '.ci' / 'run').read_text()
    assert 'run python -m pytest -q\n' in ci and 'run python -m pytest -q -m slow\n' in ci
