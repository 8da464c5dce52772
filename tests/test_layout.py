"""The package's shape: one import name, parts without import circles, short modules.

Edges are the imports a module runs when it is imported (module level, not those inside a
function, which run later and only on that path). A circle among those means a module can see
another half-initialised, which is how late imports and calls of private helpers crept in before.
"""
import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import traind

ROOTS = {"traind": Path(traind.__path__[0]), "traind.jobs": Path(traind.__path__[0]).parent / "jobs"}


def modules(roots=ROOTS) -> dict[str, Path]:
    found = {}
    for prefix, root in roots.items():
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if prefix == "traind" and parts[:1] == ["jobs"]:
                continue
            found[".".join([prefix, *parts])] = path
    return found


def module_level_imports(name: str, path: Path, known: set[str], *, everywhere: bool = False) -> set[str]:
    """The modules `name` imports at module level (including under if/try at top level), or,
    with everywhere=True, anywhere in it (function-level imports included)."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in tree.body:
        for sub in ast.walk(node) if everywhere or isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(sub, ast.Import):
                out.update(a.name for a in sub.names)
            elif isinstance(sub, ast.ImportFrom):
                base = sub.module or ""
                if sub.level:
                    pkg = name if is_pkg else name.rpartition(".")[0]
                    for _ in range(sub.level - 1):
                        pkg = pkg.rpartition(".")[0]
                    base = f"{pkg}.{base}".strip(".")
                for a in sub.names:
                    out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return {m for m in out if m in known and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def import_graph(roots=ROOTS, *, everywhere: bool = False) -> dict[str, set[str]]:
    mods = modules(roots)
    return {n: module_level_imports(n, p, set(mods), everywhere=everywhere) for n, p in mods.items()}


ADAPTERS = "traind.jobs.adapters"


def core_imports_of_adapters(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(module, adapter it imports) for every module outside the adapters (and the examples,
    which are user code) that imports an adapter, at any level."""
    return sorted((name, dep) for name, deps in graph.items() for dep in deps
                  if dep.startswith(ADAPTERS) and not name.startswith((ADAPTERS, "traind.jobs.examples")))


def test_no_import_circles():
    graph = import_graph()
    assert len(graph) > 40
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_no_import_circles_through_function_level_imports_either():
    """A late import inside a function only hides a circle (cli/ckpt.py <-> cli/ckpt_remote.py did)."""
    cycle = find_cycle(import_graph(everywhere=True))
    assert cycle is None, "import circle (function-level imports included): " + " -> ".join(cycle)


def test_the_core_never_imports_an_adapter():
    """Adapters plug into the runtime and the engine; nothing else knows them (at any level)."""
    assert core_imports_of_adapters(import_graph(everywhere=True)) == []


def _planted_tree(tmp_path) -> dict:
    """A tiny package laid out as ours is, with one planted violation of each rule."""
    files = {
        "jobs/__init__.py": "",
        "jobs/runtime/__init__.py": "",
        "jobs/runtime/session.py": "def f():\n    from traind.jobs.adapters.fancy import hook\n",
        "jobs/adapters/__init__.py": "",
        "jobs/adapters/fancy.py": "from traind.jobs.runtime import session\n",
        "daemon/__init__.py": "",
        "daemon/cli/__init__.py": "",
        "daemon/cli/a.py": "from traind.cli import b\n",
        "daemon/cli/b.py": "def g():\n    from traind.cli import a\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return {"traind": tmp_path / "daemon", "traind.jobs": tmp_path / "jobs"}


def test_the_rules_fail_on_planted_violations(tmp_path):
    roots = _planted_tree(tmp_path)
    assert find_cycle(import_graph(roots)) is None                  # invisible at module level ...
    assert find_cycle(import_graph(roots, everywhere=True)) == ["traind.cli.a", "traind.cli.b", "traind.cli.a"]
    assert core_imports_of_adapters(import_graph(roots, everywhere=True)) == [
        ("traind.jobs.runtime.session", "traind.jobs.adapters.fancy")]


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_daemon_side_never_imports_the_service_for_client_helpers_or_the_job_side():
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith(("traind.supervisor", "traind.store", "traind.contract", "traind.fs")):
            assert not any(d.startswith(("traind.service", "traind.cli", "traind.jobs")) for d in deps), (name, deps)
        if name.startswith("traind.jobs"):
            assert not any(d.startswith(("traind.service", "traind.cli", "traind.supervisor", "traind.cluster"))
                           for d in deps), (name, deps)


def test_modules_stay_short():
    long = {n: len(p.read_text().splitlines()) for n, p in modules().items()
            if ".examples" not in n and len(p.read_text().splitlines()) > 400}
    assert not long, long


def test_contract_is_stdlib_only():
    for name, path in modules().items():
        if name.startswith("traind.contract"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    assert node.module.split(".")[0] in sys.stdlib_module_names or node.module == "__future__" \
                        or node.module.startswith("traind.contract"), (name, node.module)
                if isinstance(node, ast.Import):
                    assert all(a.name.split(".")[0] in sys.stdlib_module_names for a in node.names), name


def test_import_traind_is_torch_free_and_job_names_resolve_lazily(tmp_path):
    code = textwrap.dedent("""
        import importlib.util, sys
        import traind
        assert 'torch' not in sys.modules, 'import traind imported torch'
        assert importlib.util.find_spec('daemon') is None and importlib.util.find_spec('jobs') is None
        assert traind.Session.__module__ == 'traind.jobs.runtime.session' and 'torch' in sys.modules
        for name in traind.JOB_SIDE_NAMES:
            getattr(traind, name)
        print('ok')
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
