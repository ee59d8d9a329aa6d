"""The package's shape: no import cycles, one owner per concern, a fast and small public API."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import REPO

PACKAGE = REPO / "medseg"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST, module: str, modules: set[str], is_package: bool) -> set[str]:
    """medseg modules imported anywhere in ``tree``: module level, inside functions and under ``if TYPE_CHECKING:``
    (a type-only import is still a dependency, and a cycle through one is still a tangle)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "medseg")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.split(".")[0] == "medseg":
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    found.add(candidate if candidate in modules else base)
    found.discard(module)
    return found


def import_graph() -> dict[str, set[str]]:
    """medseg module -> the medseg modules it imports."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {
        name: _imports(ast.parse(path.read_text(encoding="utf-8")), name, modules, path.name == "__init__.py")
        for name, path in files.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a cycle's members."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
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
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert len(graph) > 30  # the whole package was parsed
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize(
    "source",
    ["def f():\n    from medseg.b import thing\n", "if TYPE_CHECKING:\n    from medseg.b import Thing\n"],
    ids=["in a function", "type only"],
)
def test_the_cycle_finder_finds_a_hidden_cycle(source: str) -> None:
    modules = {"medseg.a", "medseg.b"}
    graph = {"medseg.a": _imports(ast.parse(source), "medseg.a", modules, False), "medseg.b": {"medseg.a"}}
    assert cycles(graph) == [["medseg.a", "medseg.b"]]


def test_few_modules_at_the_top_every_other_in_a_folder_per_stage_or_concern() -> None:
    top = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "labels.py", "version.py"]
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert folders == [
        *("cli", "config", "core", "data", "evaluation", "imageio", "infer", "models", "outputs", "pipeline"),
        *("planning", "runtime", "tracking", "training", "transforms"),
    ]


def test_tests_mirror_the_package() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    test_folders = {p.name for p in (REPO / "tests").iterdir() if (p / "__init__.py").is_file()} - {"helpers"}
    assert test_folders <= folders, f"test folders without a package folder: {sorted(test_folders - folders)}"
    assert folders - test_folders <= {"core"}, f"package folders without tests: {sorted(folders - test_folders)}"


def test_no_module_imports_from_the_package_root() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "medseg" and node.level == 0:
                offenders += [f"{path.relative_to(REPO)}: {a.name}" for a in node.names if not _is_submodule(a.name)]
    assert not offenders, offenders


def _is_submodule(name: str) -> bool:
    return (PACKAGE / f"{name}.py").is_file() or (PACKAGE / name / "__init__.py").is_file()


@pytest.mark.parametrize(
    ("owner", "spelling"),
    [
        ("medseg/imageio/formats.py", '".nii.gz"'),
        ("medseg/core/layout.py", '"best.pt"'),
        ("medseg/core/layout.py", '"postprocessing.json"'),
        ("medseg/core/layout.py", '"tracking.json"'),
        ("medseg/tracking/store.py", '"sqlite:///"'),
    ],
)
def test_one_module_spells_each_file_name(owner: str, spelling: str) -> None:
    spelled_in = sorted(
        str(path.relative_to(REPO)) for path in PACKAGE.rglob("*.py") if spelling in path.read_text(encoding="utf-8")
    )
    assert spelled_in == [owner]


def test_heavy_libraries_are_not_imported_by_the_package_or_the_cli() -> None:
    code = "import sys, medseg, medseg.cli; print(sorted(m for m in ('torch', 'monai', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_public_api_is_small_and_lazy() -> None:
    import medseg

    assert sorted(medseg.__all__) == [
        "DicomwebSource",
        "Predictor",
        "Segmentation",
        "load_config",
        "predict_dicomweb",
        "run_pipeline",
    ]
    from medseg.config.loading import load_config
    from medseg.infer.predictor import Predictor

    assert medseg.load_config is load_config
    assert medseg.Predictor is Predictor
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        _ = medseg.nothing_here


def test_the_gpu_benchmark_needs_no_mlflow_simpleitk_or_onnx() -> None:
    """benchmarks/gpu.py must run where only PyTorch, MONAI, nibabel, pydantic and PyYAML are installed: the medseg
    modules it uses import none of the others (MONAI imports MLflow only where it is installed)."""
    modules = (
        "medseg.runtime.steps, medseg.runtime.devices, medseg.infer.inferers, medseg.models.registry, "
        "medseg.config.loading"
    )
    code = (
        f"import sys, {modules}\n"
        "print(sorted(m for m in ('mlflow', 'SimpleITK', 'onnx', 'onnxruntime', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    skipped = subprocess.run([sys.executable, "benchmarks/gpu.py"], capture_output=True, text=True, cwd=REPO)
    import torch

    if not torch.cuda.is_available():
        assert skipped.returncode == 0 and skipped.stdout.startswith("skipped: no CUDA GPU here")


def test_every_command_body_is_short() -> None:
    """A command parses its options, builds settings and makes one call into the library: at most 25 lines."""
    long = []
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_") and path.name != "app.py":
                has_docstring = isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
                first = node.body[1] if has_docstring and len(node.body) > 1 else node.body[0]
                if node.end_lineno - first.lineno + 1 > 25:
                    long.append(f"{path.name}:{node.name}")
    assert not long, long


def test_only_the_orchestration_names_the_whole_configuration() -> None:
    """Parts take small settings built in config/settings.py; only the configuration's own package, the pipeline that
    runs stages, the planner that writes pipelines and the commands name ``PipelineConfig``."""
    naming = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if re.search(r"\bPipelineConfig\b", path.read_text(encoding="utf-8"))
    )
    allowed = ("config/", "pipeline/", "planning/", "cli/")
    assert [name for name in naming if not name.startswith(allowed)] == []


def test_inference_reads_no_training_settings() -> None:
    reads = [
        f"{path.relative_to(PACKAGE)}:{number}"
        for path in sorted((PACKAGE / "infer").glob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"\.training\.|\btraining\.\w+", line) and not line.lstrip().startswith("#")
    ]
    assert reads == []
