"""The library's shape: no import cycles, light modules stay light."""

from __future__ import annotations

import ast
import re
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


def top_level(module: str) -> str:
    """The package's top-level part a module belongs to: bibaddiff.diffusion.trainer -> bibaddiff.diffusion."""
    return ".".join(module.split(".")[:2])


def package_level_imports() -> dict[str, set[str]]:
    """The import graph of the top-level parts (modules and subpackages such as diffusion/, defenses/, report/):
    a subpackage is one floor, so two of its modules may not depend on another part in opposite directions."""
    graph: dict[str, set[str]] = {}
    for module, targets in package_imports().items():
        graph.setdefault(top_level(module), set()).update(top_level(t) for t in targets if top_level(t) != top_level(module))
    return graph


def test_the_cycle_finder_sees_a_cycle_between_packages():
    graph = {"bibaddiff.config": {"bibaddiff.diffusion.timesteps"}, "bibaddiff.diffusion.trainer": {"bibaddiff.config"},
             "bibaddiff.diffusion.timesteps": set()}
    collapsed: dict[str, set[str]] = {}
    for module, targets in graph.items():
        collapsed.setdefault(top_level(module), set()).update(top_level(t) for t in targets if top_level(t) != top_level(module))
    assert find_cycle(graph) is None and find_cycle(collapsed) == ["bibaddiff.config", "bibaddiff.diffusion",
                                                                   "bibaddiff.config"]


def test_the_packages_have_no_import_cycle():
    """config, diffusion/, defenses/, report/, ... form floors: no subpackage and module depend on each other."""
    graph = package_level_imports()
    assert {"bibaddiff.diffusion", "bibaddiff.config", "bibaddiff.report", "bibaddiff.schema"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_schema_is_the_bottom_floor_and_ships_with_the_package():
    """Any module may read a default from the schema without depending on config (which imports data, triggers,
    diffusion, ...); the schema file is package data, not a file of the source checkout."""
    from bibaddiff.schema import SCHEMA_FILE, load_schema

    assert package_imports()["bibaddiff.schema"] <= {"bibaddiff.errors"}
    assert SCHEMA_FILE.parent == PACKAGE and load_schema()["properties"]["diffusion"]
    assert "config.schema.yaml" in (REPO / "pyproject.toml").read_text()
    assert "bibaddiff.config" not in {top_level(t) for m, ts in package_imports().items()
                                      if m.startswith("bibaddiff.diffusion") for t in ts}


def imported_heavy_modules(statement: str) -> list[str]:
    code = (f"import sys\n{statement}\n"
            "print(','.join(m for m in ('torch', 'diffusers', 'transformers', 'sklearn', 'matplotlib') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [name for name in result.stdout.strip().split(",") if name]


def test_light_modules_import_neither_torch_nor_diffusers():
    assert imported_heavy_modules("import bibaddiff.config, bibaddiff.images, bibaddiff.checks, bibaddiff.utils, "
                                  "bibaddiff.provenance, bibaddiff.diffusion.base, bibaddiff.plan, bibaddiff.schema, "
                                  "bibaddiff.gpu_slots") == []


def test_pixel_conversions_do_not_import_diffusers():
    assert "diffusers" not in imported_heavy_modules(
        "import numpy as np; from bibaddiff.images import to_model_space, to_uint8; "
        "to_uint8(to_model_space(np.zeros((1, 4, 4, 3), np.uint8)))")


def test_validating_the_shipped_configs_imports_no_torch():
    """Every snakemake call validates its config (building each trigger to check it); torch's import would add
    seconds to each, and a WaNet trigger once did."""
    configs = sorted(str(path) for path in (REPO / "configs").glob("*.yaml")) + [str(REPO / "config.yaml")]
    statement = ("import yaml; from bibaddiff.config import load_schema, validate_config; "
                 f"schema = load_schema()\n"
                 f"for path in {configs!r}:\n"
                 "    config = yaml.safe_load(open(path))\n"
                 "    try:\n"
                 "        validate_config(config, schema)\n"
                 "    except ValueError:\n"
                 "        pass  # configs with CHANGE_ME paths stop here, after their triggers were built\n")
    assert imported_heavy_modules(statement) == []


def test_jobs_run_in_the_venv_not_in_a_conda_environment_nobody_tests():
    """The venv is the environment (README, "Install"): a `conda:` directive would promise a
    `--software-deployment-method conda` that no test runs."""
    rules = [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]
    declaring = [path.name for path in rules if re.search(r"^\s*conda:", path.read_text(), re.MULTILINE)]
    assert declaring == []
    assert not list((REPO / "envs").glob("*.y*ml"))
