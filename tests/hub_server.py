"""A local Hugging Face Hub stand-in for tests (stdlib only), and the scenarios that run against it.

huggingface_hub reads ``HF_ENDPOINT`` / ``HF_HUB_OFFLINE`` / ``HF_HUB_CACHE`` when it is imported (timm imports it),
so every scenario runs in a fresh interpreter::

    python tests/hub_server.py <scenario> <spec.json>

The scenario prints one line ``SCENARIO-RESULT <json>`` with what it observed (outcome, error, seconds, sleeps,
requests to the stand-in, cache contents); tests/test_hub.py asserts on it.
"""
import contextlib
import errno
import hashlib
import http.server
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

REPO_ROOT = Path(__file__).resolve().parent.parent


def folder_commit(folder: Path) -> str:
    """A 40-hex 'commit sha' that changes with the folder's content."""
    digest = hashlib.sha1()
    for path in sorted(Path(folder).iterdir()):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


class LocalHub:
    """``HEAD/GET /<org>/<name>/resolve/<rev>/<file>`` and ``/api/models/<org>/<name>[/revision/<rev>]``.

    ``behaviour[repo]`` (changeable while serving): ``'ok'``; ``'500'`` (every request answers HTTP 500);
    ``'hang'`` (the connection is accepted, no answer ever comes); ``'cut'`` (HEAD is fine, GET sends the full
    Content-Length and then half the body before closing the connection).
    """

    def __init__(self, repos: Dict[str, str], behaviour: Optional[Dict[str, str]] = None):
        self.repos = {k: Path(v) for k, v in repos.items()}
        self.behaviour = dict(behaviour or {})
        self.requests: List[tuple] = []
        self.stop_event = threading.Event()
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _target(self) -> Optional[tuple]:
                parts = self.path.split('?', 1)[0].strip('/').split('/')
                if len(parts) >= 5 and parts[2] == 'resolve':
                    return 'file', f'{parts[0]}/{parts[1]}', '/'.join(parts[4:])
                if len(parts) >= 4 and parts[0] == 'api' and parts[1] == 'models':
                    return 'api', f'{parts[2]}/{parts[3]}', None
                return None

            def _send(self, code: int, headers: Dict[str, str], body: bytes = b'') -> None:
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if body:
                    self.wfile.write(body)

            def _error(self, code: int, error_code: str) -> None:
                self._send(code, {'X-Error-Code': error_code, 'X-Error-Message': error_code, 'Content-Length': '0'})

            def _serve(self, body: bool) -> None:
                target = self._target()
                hub.requests.append((self.command, self.path))
                if target is None:
                    return self._error(404, 'EntryNotFound')
                kind, repo, filename = target
                mode = hub.behaviour.get(repo, 'ok')
                if mode == 'hang':
                    hub.stop_event.wait()  # never answers while the test runs
                    return
                if mode == '500':
                    return self._send(500, {'Content-Length': '0'})
                folder = hub.repos.get(repo)
                if folder is None:
                    return self._error(404, 'RepoNotFound')
                commit = folder_commit(folder)
                if kind == 'api':
                    data = json.dumps({'id': repo, 'sha': commit, 'siblings': [
                        {'rfilename': p.name} for p in sorted(folder.iterdir()) if p.is_file()]}).encode()
                else:
                    path = folder / filename
                    if not path.is_file():
                        return self._error(404, 'EntryNotFound')
                    data = path.read_bytes()
                headers = {'X-Repo-Commit': commit, 'ETag': f'"{hashlib.sha256(data).hexdigest()}"',
                           'Content-Length': str(len(data)), 'Content-Type': 'application/octet-stream'}
                if not body:
                    return self._send(200, headers)
                if mode == 'cut' and kind == 'file':
                    self._send(200, dict(headers, Connection='close'), data[:len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self._send(200, headers, data)

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

        self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f'http://127.0.0.1:{self.server.server_address[1]}'

    def start(self) -> 'LocalHub':
        self.thread.start()
        return self


def populate_cache(cache: Path, repos: Dict[str, str]) -> None:
    """Lay out ``models--<org>--<name>/{refs/main, blobs/<sha256>, snapshots/<commit>/<file>}`` like a warm cache."""
    for repo, folder in repos.items():
        folder = Path(folder)
        commit = folder_commit(folder)
        base = cache / f"models--{repo.replace('/', '--')}"
        (base / 'refs').mkdir(parents=True, exist_ok=True)
        (base / 'refs' / 'main').write_text(commit)
        (base / 'blobs').mkdir(exist_ok=True)
        snapshot = base / 'snapshots' / commit
        snapshot.mkdir(parents=True, exist_ok=True)
        for path in folder.iterdir():
            if path.is_file():
                blob = base / 'blobs' / hashlib.sha256(path.read_bytes()).hexdigest()
                shutil.copy(path, blob)
                (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))


def cache_files(cache: Path, repo: str) -> List[str]:
    """Every file (blob, snapshot entry, temporary download) the cache holds for ``repo``, relative names."""
    base = Path(cache) / f"models--{repo.replace('/', '--')}"
    return sorted(str(p.relative_to(base)) for p in base.rglob('*')
                  if (p.is_file() or p.is_symlink()) and 'refs' not in p.parts) if base.is_dir() else []


# ---------------------------------------------------------------------------------------------- observing a load
@contextlib.contextmanager
def captured_stderr() -> Iterator[List[str]]:
    """Collect what is written to file descriptor 2 (warnings, logging, tracebacks of threads) meanwhile."""
    lines: List[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode='w+b') as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(ln for ln in tmp.read().decode(errors='replace').splitlines() if ln.strip())


@contextlib.contextmanager
def counted_sleeps() -> Iterator[List[float]]:
    """Record every ``time.sleep`` meanwhile (huggingface_hub's retry back-off and download-resume pauses), which
    still sleeps: how long a load chose to wait, whatever the load on the machine."""
    slept: List[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        slept.append(float(seconds))
        real_sleep(seconds)

    time.sleep = sleep
    try:
        yield slept
    finally:
        time.sleep = real_sleep


def observe(fn: Callable[[], Any]) -> Dict[str, Any]:
    """Run ``fn``: its value or its exception (type, message), the seconds it took, the sleeps it asked for and
    its stderr lines."""
    warnings.simplefilter('default')
    start = time.monotonic()
    with captured_stderr() as lines, counted_sleeps() as slept:
        try:
            out = {'ok': True, 'value': fn()}
        except Exception as err:  # the pytest side asserts on the type and message
            out = {'ok': False, 'type': type(err).__name__, 'error': str(err)}
    out['seconds'] = time.monotonic() - start
    out['sleeps'] = slept
    out['stderr'] = lines
    return out


def load(name: str, reference: Optional[str] = None, **kwargs: Any) -> Dict[str, Any]:
    """``timm.create_model(name, pretrained=True, **kwargs)``; the max logit error on a stored reference."""
    import timm
    import torch
    model = timm.create_model(name, pretrained=True, **kwargs).eval()
    out: Dict[str, Any] = {'file': model.pretrained_cfg.get('file')}
    if reference:
        import safetensors.torch
        ref = safetensors.torch.load_file(reference)
        with torch.no_grad():
            out['max_abs_err'] = float((model(ref['input']) - ref['logits']).abs().max())
    return out


def block_network() -> List[tuple]:
    """Make every socket connection fail as on a machine without a network; returns the attempts made."""
    attempts: List[tuple] = []

    def unreachable(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        raise OSError(errno.ENETUNREACH, 'Network is unreachable')

    def no_dns(host: Any, *args: Any, **kwargs: Any) -> Any:
        attempts.append(host)
        raise socket.gaierror(socket.EAI_AGAIN, 'Temporary failure in name resolution')

    socket.socket.connect = unreachable
    socket.getaddrinfo = no_dns
    return attempts


# ---------------------------------------------------------------------------------------------- scenarios
def scenario_server(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Loads against the stand-in: every tag from the Hub, hf-hub:, then each failure mode."""
    hub = LocalHub(spec['repos'], spec.get('behaviour')).start()
    os.environ['HF_ENDPOINT'] = hub.endpoint
    import timm
    import flexconv_zoo  # noqa: F401
    cache = spec['cache']
    out: Dict[str, Any] = {}
    for label, item in spec['loads'].items():
        hub.behaviour.update(item.get('behaviour', {}))
        before = len(hub.requests)
        out[label] = observe(lambda: load(item['name'], item.get('reference'), **item.get('kwargs', {})))
        out[label]['cache'] = cache_files(Path(cache), item.get('repo', ''))
        out[label]['requests'] = [f'{method} {path}' for method, path in hub.requests[before:]]
    out['requests'] = len(hub.requests)
    hub.stop_event.set()
    del timm
    return out


def scenario_client(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Loads with whatever environment the parent set (refused port, offline), or with the network blocked."""
    attempts = block_network() if spec.get('block_network') else None
    start = time.monotonic()
    import timm  # noqa: F401
    import flexconv_zoo  # noqa: F401
    out: Dict[str, Any] = {'import_seconds': time.monotonic() - start}
    for label, item in spec['loads'].items():
        before = len(attempts) if attempts is not None else 0
        out[label] = observe(lambda: load(item['name'], item.get('reference'), **item.get('kwargs', {})))
        if attempts is not None:
            out[label]['connect_attempts'] = len(attempts) - before
        if item.get('repo'):
            out[label]['cache'] = cache_files(Path(item['kwargs'].get('cache_dir') or spec['cache']), item['repo'])
    out['connect_attempts'] = len(attempts) if attempts is not None else None
    return out


def main() -> None:
    scenario, spec_file = sys.argv[1], sys.argv[2]
    spec = json.loads(Path(spec_file).read_text())
    sys.path.insert(0, str(REPO_ROOT))
    for repo, folder in spec.get('warm', {}).items():
        populate_cache(Path(spec['cache']), {repo: folder})
    fn = {'server': scenario_server, 'client': scenario_client}[scenario]
    print('SCENARIO-RESULT ' + json.dumps(fn(spec)), flush=True)
    os._exit(0)  # the stand-in may still hold a 'hang' connection open


if __name__ == '__main__':
    main()
