"""The package layout the README draws: every module imports only modules of its own level or below, there is no
import cycle, no module takes another module's private names, and scripts/ is never imported by the package."""
import ast
from pathlib import Path
from typing import Dict, Iterator, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'flexconv_zoo'

# Lower levels never import higher ones (the README's "Project layout" section draws the same order).
LEVELS = {
    'constants': 0, 'files': 0, 'layers': 0,
    'loading': 1,
    'models': 2,
    'data': 3,
    'cli': 4, 'checkpoints': 4, 'progressive': 4, 'plots': 4, 'model_card': 4, 'inspection': 4, 'deploy': 4,
    'baselines': 4,
    'evaluation': 5, 'train_options': 5, 'hub_folder': 5,
    'training': 6,
    'prediction': 7, 'hub_export': 7, 'benchmarking': 7, 'training_timing': 7, 'campaign_report': 7, 'cross_validation': 7,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _imports(path: Path) -> Iterator[Tuple[str, Set[str], int]]:
    """(imported module, imported names, line) for every import of the package, module level or inside functions."""
    module = _module_name(path)
    package = module if path.name == '__init__.py' else module.rsplit('.', 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')
                base = base[:len(base) - node.level + 1]
                target = '.'.join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ''
            names = {alias.name for alias in node.names}
            if target.startswith(('flexconv_zoo', 'scripts')):
                if node.module is None:  # `from . import layers`: the names are modules
                    for name in names:
                        yield f'{target}.{name}', set(), node.lineno
                else:
                    yield target, names, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(('flexconv_zoo', 'scripts')):
                    yield alias.name, set(), node.lineno


def _graph() -> Dict[str, Set[Tuple[str, Set[str], int]]]:
    return {_module_name(p): set((t, frozenset(n), line) for t, n, line in _imports(p))
            for p in sorted(PACKAGE.rglob('*.py'))}


def _level(module: str) -> int:
    top = module.split('.')[1] if module.count('.') else ''
    assert top in LEVELS, f"{module} has no level in the layout: add it to LEVELS and to the README's layout"
    return LEVELS[top]


def test_every_module_has_a_level():
    for path in PACKAGE.iterdir():
        name = path.stem
        is_package = path.is_dir() and (path / '__init__.py').exists()
        if name.startswith(('__', '.')) or not (is_package or path.suffix == '.py'):
            continue  # caches, templates
        assert name in LEVELS, f"flexconv_zoo/{path.name} is not in the layout"


@pytest.mark.parametrize('module', sorted(_graph()))
def test_imports_point_down(module):
    if module == 'flexconv_zoo':
        return  # the package's __init__ re-exports the public API
    for target, names, line in _graph()[module]:
        assert not target.startswith('scripts'), f"{module}:{line} imports {target}: scripts are entry points only"
        assert _level(target) <= _level(module), (
            f"{module}:{line} imports {target}, a higher level of the layout ({_level(target)} > {_level(module)})")
        # a package's __init__ may gather its own modules' names; no other module takes another's private names
        private = sorted(n for n in names if n.startswith('_'))
        own_package = module.count('.') == 1 and target.startswith(module + '.')
        assert own_package or not private, f"{module}:{line} takes private names {private} from {target}"


def test_no_import_cycles():
    graph = {m: {t for t, _, _ in edges} for m, edges in _graph().items()}

    def resolve(target: str) -> str:  # `from .layers import FlexConvNd` lands in the package's __init__
        return target if target in graph else target.rsplit('.', 1)[0]

    state: Dict[str, int] = {}

    def visit(node: str, path: Tuple[str, ...]) -> None:
        state[node] = 1
        for nxt in sorted(resolve(t) for t in graph.get(node, ())):
            if nxt == node or nxt == 'flexconv_zoo':
                continue
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join(path + (nxt,))}"
            if nxt not in state:
                visit(nxt, path + (nxt,))
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, (module,))
