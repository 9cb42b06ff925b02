"""The package's shape: no import cycle (function-level imports count), no side effects at import.

The import graph is built from the source with `ast`, so an import hidden inside a function is an
edge like any other; a cycle fails the test with its modules named.
"""

import ast
import os
import subprocess
import sys

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "deeplab_jax")


def _modules():
    """Dotted module name -> file, for every .py file under deeplab_jax/."""
    base = os.path.dirname(PACKAGE)
    modules = {}
    for directory, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                dotted = os.path.relpath(path, base)[:-3].replace(os.sep, ".")
                modules[dotted.removesuffix(".__init__")] = path
    return modules


def _imported_names(module, path):
    """Every dotted name an import statement anywhere in the file refers to."""
    is_package = path.endswith("__init__.py")
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), filename=path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                prefix = ".".join(anchor + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            yield prefix
            yield from (f"{prefix}.{alias.name}" for alias in node.names)


def import_graph():
    """module -> set of project modules it imports (a package importing its own submodules, to
    re-export them, is not an edge: the submodule does not need the package's namespace)."""
    modules = _modules()

    def resolve(name):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {module: set() for module in modules}
    for module, path in modules.items():
        for name in _imported_names(module, path):
            target = resolve(name) if name.split(".")[0] == "deeplab_jax" else None
            if target and target != module and not module.startswith(target + ".") and not (
                    modules[module].endswith("__init__.py") and target.startswith(module + ".")):
                graph[module].add(target)
    return graph


def find_cycles(graph):
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for node in graph:
        if node not in index:
            visit(node)
    return cycles


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert len(graph) > 50 and "deeplab_jax.train.loop" in graph
    cycles = find_cycles(graph)
    assert not cycles, "import cycles (imports inside functions count): " + "; ".join(
        " <-> ".join(cycle) for cycle in cycles)


def test_importing_the_package_starts_no_backend_and_sets_no_flags():
    """XLA flags are applied by the command lines, not as a side effect of an import."""
    code = ("import os, sys; os.environ.pop('XLA_FLAGS', None)\n"
            "import deeplab_jax.main, deeplab_jax.evaluate, deeplab_jax.predict\n"
            "from jax._src import xla_bridge\n"
            "print(xla_bridge.backends_are_initialized(), os.environ.get('XLA_FLAGS', ''))\n")
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True, cwd=os.path.dirname(PACKAGE))
    assert out.stdout.strip() == "False"  # no backend, and XLA_FLAGS untouched
