"""The library's shape: no import cycles, light modules stay light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "bibaddiff"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_imports() -> dict[str, set[str]]:
    """Every module's imports of other bibaddiff modules, function-level ones included: a lazy import only hides a
    cycle from the interpreter, not from the reader."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bibaddiff"):
                # "from bibaddiff.x import y" depends on bibaddiff.x.y when y is a module, else on bibaddiff.x.
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    targets.add(submodule if submodule in modules else node.module)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names if alias.name.startswith("bibaddiff"))
        # A package's __init__ is not a dependency of its own submodules' reader; importing the package itself is.
        graph[name] = {target for target in targets if target in modules and target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_library_never_imports_snakemake():
    """Rules and adapters call the library; the library stays usable without a workflow."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [alias.name for alias in node.names] if isinstance(node, ast.Import) else [])
            offenders += [f"{path.name}: {name}" for name in names if name.split(".")[0] == "snakemake"]
    assert offenders == []


def test_the_package_has_no_import_cycle():
    graph = package_imports()
    assert "bibaddiff.diffusion.model" in graph and "bibaddiff.config" in graph
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def imported_heavy_modules(statement: str) -> list[str]:
    code = (f"import sys\n{statement}\n"
            "print(','.join(m for m in ('torch', 'diffusers', 'transformers', 'sklearn', 'matplotlib') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [name for name in result.stdout.strip().split(",") if name]


def test_light_modules_import_neither_torch_nor_diffusers():
    assert imported_heavy_modules("import bibaddiff.config, bibaddiff.images, bibaddiff.checks, bibaddiff.utils, "
                                  "bibaddiff.provenance, bibaddiff.diffusion.base, bibaddiff.gpu_slots") == []


def test_pixel_conversions_do_not_import_diffusers():
    assert "diffusers" not in imported_heavy_modules(
        "import numpy as np; from bibaddiff.images import to_model_space, to_uint8; "
        "to_uint8(to_model_space(np.zeros((1, 4, 4, 3), np.uint8)))")


def test_validating_the_shipped_configs_imports_no_torch():
    """Every snakemake call validates its config (building each trigger to check it); torch's import would add
    seconds to each, and a WaNet trigger once did."""
    configs = sorted(str(path) for path in (REPO / "configs").glob("*.yaml")) + [str(REPO / "config.yaml")]
    statement = ("import yaml; from bibaddiff.config import load_schema, validate_config; "
                 f"schema = load_schema({str(REPO / 'schemas' / 'config.schema.yaml')!r})\n"
                 f"for path in {configs!r}:\n"
                 "    config = yaml.safe_load(open(path))\n"
                 "    try:\n"
                 "        validate_config(config, schema)\n"
                 "    except ValueError:\n"
                 "        pass  # configs with CHANGE_ME paths stop here, after their triggers were built\n")
    assert imported_heavy_modules(statement) == []
