"""A local Hugging Face Hub stand-in for tests (stdlib only), and scenario runners for subprocesses.

huggingface_hub reads ``HF_ENDPOINT`` / ``HF_HUB_OFFLINE`` / ``HF_HUB_CACHE`` when it is imported (timm imports
it), so every scenario runs in a fresh interpreter::

    python tests/hub_server.py <scenario> <spec.json>

``spec.json``: ``{"repos": {"<org>/<name>": "<folder>"}, "cache": "<HF_HUB_CACHE>", ...}``. The scenario prints
one JSON line with its observations; the pytest side asserts on it.
"""
import hashlib
import http.server
import json
import os
import shutil
import sys
import threading
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Optional

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
    """``HEAD/GET /<org>/<name>/resolve/<rev>/<file>`` and ``/api/models/<org>/<name>[/revision/<rev>]``."""

    def __init__(self, repos: Dict[str, str]):
        self.repos = {k: Path(v) for k, v in repos.items()}
        self.requests = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _resolve(self) -> Optional[tuple]:
                parts = self.path.split('?', 1)[0].strip('/').split('/')
                hub.requests.append((self.command, self.path))
                if len(parts) >= 5 and parts[2] == 'resolve':
                    return 'file', f'{parts[0]}/{parts[1]}', '/'.join(parts[4:])
                if len(parts) >= 4 and parts[0] == 'api' and parts[1] == 'models':
                    return 'api', f'{parts[2]}/{parts[3]}', None
                return None

            def _error(self, code: str) -> None:
                self.send_response(404)
                self.send_header('X-Error-Code', code)
                self.send_header('X-Error-Message', code)
                self.send_header('Content-Length', '0')
                self.end_headers()

            def _serve(self, body: bool) -> None:
                target = self._resolve()
                if target is None:
                    return self._error('EntryNotFound')
                kind, repo, filename = target
                folder = hub.repos.get(repo)
                if folder is None:
                    return self._error('RepoNotFound')
                commit = folder_commit(folder)
                if kind == 'api':
                    payload = json.dumps({'id': repo, 'sha': commit, 'siblings': [
                        {'rfilename': p.name} for p in sorted(folder.iterdir()) if p.is_file()]}).encode()
                    data, etag = payload, hashlib.sha256(payload).hexdigest()
                else:
                    path = folder / filename
                    if not path.is_file():
                        return self._error('EntryNotFound')
                    data = path.read_bytes()
                    etag = hashlib.sha256(data).hexdigest()
                self.send_response(200)
                self.send_header('X-Repo-Commit', commit)
                self.send_header('ETag', f'"{etag}"')
                self.send_header('Content-Length', str(len(data)))
                self.send_header('Content-Type', 'application/octet-stream')
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

        self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f'http://127.0.0.1:{self.server.server_address[1]}'

    def start(self) -> 'LocalHub':
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def populate_cache(cache: Path, repos: Dict[str, str]) -> None:
    """Lay out ``models--<org>--<name>/{refs/main, snapshots/<sha>/<files>}`` like a warm HF cache."""
    for repo, folder in repos.items():
        folder = Path(folder)
        commit = folder_commit(folder)
        base = cache / f"models--{repo.replace('/', '--')}"
        (base / 'refs').mkdir(parents=True, exist_ok=True)
        (base / 'refs' / 'main').write_text(commit)
        snapshot = base / 'snapshots' / commit
        snapshot.mkdir(parents=True, exist_ok=True)
        for path in folder.iterdir():
            if path.is_file():
                shutil.copy(path, snapshot / path.name)


# ---------------------------------------------------------------------------------------------- scenarios
def _try(fn: Callable[[], Any]) -> Dict[str, Any]:
    """Run ``fn``; record its result or its exception, and the warnings it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        try:
            value = fn()
            out = {'ok': True, 'value': value}
        except Exception as err:  # the pytest side asserts on the type and message
            out = {'ok': False, 'type': type(err).__name__, 'error': str(err),
                   'trace': traceback.format_exc(limit=3)}
    out['warnings'] = [f'{w.category.__name__}: {w.message}' for w in caught
                       if 'flexconv' in w.category.__module__ or w.category.__name__ == 'BundledWeightsWarning']
    return out


def _logits_match(model: Any, reference_file: str) -> Dict[str, Any]:
    import safetensors.torch
    import torch
    ref = safetensors.torch.load_file(reference_file)
    model.eval()
    with torch.no_grad():
        out = model(ref['input'])
    return {'max_abs_err': float((out - ref['logits']).abs().max()), 'shape': list(out.shape)}


def _load_and_compare(name: str, reference_file: str, **kwargs: Any) -> Dict[str, Any]:
    import timm
    model = timm.create_model(name, pretrained=True, **kwargs)
    result = _logits_match(model, reference_file)
    result['source'] = model.pretrained_cfg.get('hf_hub_id') or model.pretrained_cfg.get('file')
    return result


def scenario_tags(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Every tag through ``timm.create_model(tag, pretrained=True)`` (+ checks listed in the spec)."""
    import timm  # noqa: F401  (after the environment is set)
    import torch
    import flexconv_zoo  # noqa: F401
    from flexconv_zoo.hub import pretrained_tags
    out: Dict[str, Any] = {'tags_registered': pretrained_tags(), 'tags': {}}
    for tag, reference in spec['tags'].items():
        out['tags'][tag] = _try(lambda: _load_and_compare(tag, reference))
    if 'hf_hub' in spec:
        repo, reference = spec['hf_hub']
        out['hf_hub'] = _try(lambda: _load_and_compare(f'hf-hub:{repo}', reference))
    if 'adapt' in spec:
        tag, weights = spec['adapt']

        def adapt() -> Dict[str, Any]:
            import safetensors.torch
            m = timm.create_model(tag, pretrained=True, num_classes=100, in_chans=1).eval()
            src = safetensors.torch.load_file(weights)
            key = 'stem.conv.kernel_net.output.weight'
            out_chs = m.stem.conv.out_channels
            expected = src[key].reshape(out_chs, 3, -1).sum(1)  # timm's rule for 1 channel: sum over RGB
            logits = m(torch.randn(2, 1, *m.pretrained_cfg['input_size'][1:]))
            return {'head': list(m.get_classifier().weight.shape), 'logits': list(logits.shape),
                    'stem_ok': bool(torch.allclose(m.state_dict()[key], expected, atol=1e-6)),
                    'body_ok': all(torch.equal(m.state_dict()[k], v) for k, v in src.items()
                                   if k.startswith('blocks.') and not k.endswith('num_batches_tracked'))}
        out['adapt'] = _try(adapt)
    for label, (tag, repo) in spec.get('broken', {}).items():
        out[label] = _try(lambda: _load_and_compare(
            tag, spec['tags'].get(tag, ''), pretrained_cfg_overlay=dict(hf_hub_id=repo)))
    if 'stop_then' in spec:
        hub.stop()
        for label, (tag, reference, repo) in spec['stop_then'].items():
            overlay = dict(hf_hub_id=repo) if repo else None
            out[label] = _try(lambda: _load_and_compare(tag, reference, pretrained_cfg_overlay=overlay))
    if 'bundled_env' in spec:
        for label, (env, tag, reference) in spec['bundled_env'].items():
            os.environ['FLEXCONV_ZOO_HUB_CONFIGS'] = env
            out[label] = _try(lambda: _load_and_compare(tag, reference))
    out['requests'] = len(hub.requests) if hub is not None else 0
    return out


hub: Optional[LocalHub] = None


def main() -> None:
    global hub
    scenario, spec_file = sys.argv[1], sys.argv[2]
    spec = json.loads(Path(spec_file).read_text())
    os.environ['HF_HUB_CACHE'] = spec['cache']
    os.environ['FLEXCONV_ZOO_HUB_CONFIGS'] = spec.get('bundled', '')
    os.environ.pop('HF_HUB_OFFLINE', None)
    if scenario == 'server':
        hub = LocalHub(spec['repos']).start()
        os.environ['HF_ENDPOINT'] = hub.endpoint
    elif scenario == 'offline':
        os.environ['HF_HUB_OFFLINE'] = '1'
        populate_cache(Path(spec['cache']), spec.get('repos', {}))
    else:
        raise SystemExit(f'unknown scenario {scenario}')
    sys.path.insert(0, str(REPO_ROOT))
    print('SCENARIO-RESULT ' + json.dumps(scenario_tags(spec)))


if __name__ == '__main__':
    main()
