"""The layering of the project, read from its imports (every import, also inside functions):
``semidff/`` (the method as plain PyTorch) never imports ray, ``pipelines`` or ``jobs``;
``pipelines/`` (what runs on Ray) never imports ``jobs``; and no module imports itself back
through others (no import circle)."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("semidff", "pipelines", "jobs")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))}


def _imports(path: Path, module: str, known: set[str]) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file; ``from a import b`` counts as a.b
    when a.b is a module of the project, else as a."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append((candidate if candidate in known else base, node.lineno))
    return found


def _graph() -> tuple[dict[str, set[str]], dict[str, list[tuple[str, int]]]]:
    modules = _modules()
    known = set(modules)
    edges: dict[str, set[str]] = {}
    raw: dict[str, list[tuple[str, int]]] = {}
    for module, path in modules.items():
        raw[module] = _imports(path, module, known)
        edges[module] = {name for name, _ in raw[module] if name in known and name != module}
    return edges, raw


def test_the_library_never_imports_ray_pipelines_or_jobs_and_pipelines_never_jobs():
    _, raw = _graph()
    forbidden = {"semidff": ("ray", "pipelines", "jobs"), "pipelines": ("jobs",)}
    found = []
    for module, imports in raw.items():
        layer = module.split(".")[0]
        for name, line in imports:
            top = name.split(".")[0]
            if top in forbidden.get(layer, ()):
                found.append(f"{module}:{line} imports {name}")
    found = sorted(set(found))
    assert not found, "layering broken:\n" + "\n".join(found)


def test_no_import_circle():
    edges, _ = _graph()
    # Tarjan's strongly connected components: any with more than one module is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    assert not circles, "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


def test_the_rules_see_imports_inside_functions(tmp_path):
    source = "def f():\n    from jobs.cli import app\n    import ray.train\n"
    path = tmp_path / "x.py"
    path.write_text(source)
    assert _imports(path, "semidff.x", {"jobs.cli"}) == [("jobs.cli", 2), ("ray.train", 3)]
