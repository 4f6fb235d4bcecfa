"""scripts/push_to_hub.py: every failure is one ``error:`` line (no token, no network, the wrong folder)."""
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / 'hub_configs' / 'flextcn2.mnist1d'


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def _push(folder: Path, repo_id: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith('HF_')}
    base.update(HF_HOME=str(tmp_path / 'hf_home'), OMP_NUM_THREADS='1', **env)  # no cached login token
    return subprocess.run([sys.executable, str(ROOT / 'scripts' / 'push_to_hub.py'), str(folder), '--repo-id', repo_id],
                          env=base, capture_output=True, text=True, timeout=180, cwd=ROOT)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    return errors[0]


@pytest.mark.parametrize('case', ['no_token', pytest.param('unreachable_hub', marks=pytest.mark.slow)])
def test_upload_failures_are_one_error_line(case, tmp_path):
    folder = shutil.copytree(SOURCE, tmp_path / SOURCE.name)
    env = {} if case == 'no_token' else dict(HF_TOKEN='hf_not_a_real_token',
                                              HF_ENDPOINT=f'http://127.0.0.1:{_closed_port()}')
    proc = _push(folder, f'me/{SOURCE.name}', tmp_path, **env)
    line = _one_error_line(proc)
    if case == 'no_token':
        assert proc.returncode == 2 and 'HF_TOKEN' in line
    else:
        assert proc.returncode == 1 and line.startswith(f'error: upload to me/{SOURCE.name} failed')


@pytest.mark.parametrize('where', ['folder', pytest.param('repo_id', marks=pytest.mark.slow)])
def test_a_folder_or_repo_naming_another_architecture_is_refused(where, tmp_path):
    name = 'flexnet16.mnist1d'  # the weights inside are flextcn2's
    folder = shutil.copytree(SOURCE, tmp_path / (name if where == 'folder' else SOURCE.name))
    proc = _push(folder, f'me/{name}', tmp_path, HF_TOKEN='hf_not_a_real_token',
                 HF_ENDPOINT=f'http://127.0.0.1:{_closed_port()}')
    line = _one_error_line(proc)
    assert proc.returncode == 1 and "names model 'flexnet16'" in line and "'flextcn2'" in line
