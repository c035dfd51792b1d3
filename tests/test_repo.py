"""Repository contracts: the README's commands, CI, the pack entry point, the command-line index."""
import re
import subprocess
import sys
import tomllib

from conftest import REPO, load_pack


def _readme_commands():
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_ci_runs_exactly_the_readme_test_command():
    test_command = _readme_commands()[1]
    ci = (REPO / ".ci" / "run").read_text()
    assert test_command in ci.splitlines(), f"README test command not run verbatim by .ci/run: {test_command}"
    assert "pytest" in test_command


def test_pyproject_metadata():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    project = meta["project"]
    assert project["name"] and "comfyui" not in project["name"].lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    for dep in ("torch", "safetensors", "einops", "kornia", "numpy"):
        assert any(d.startswith(dep) for d in project["dependencies"]), dep
    assert {"iqa", "test"} <= set(project["optional-dependencies"])
    assert {"PublisherId", "DisplayName", "Icon"} <= set(meta["tool"]["comfy"])


def test_pack_imports_without_comfyui():
    pack = load_pack()
    assert isinstance(pack.NODE_CLASS_MAPPINGS, dict)
    assert "comfy" not in sys.modules


def test_library_never_imports_comfyui():
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "trajir").rglob("*.py")
                 if re.search(r"^\s*(import|from)\s+(comfy|folder_paths|nodes\b|server\b)", p.read_text(), re.M)]
    assert offenders == []


def test_cli_index_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "trajir", "--help"], capture_output=True, text=True, check=True,
                         cwd=REPO).stdout
    from trajir.__main__ import SUBCOMMANDS
    for name in SUBCOMMANDS:
        assert name in out
