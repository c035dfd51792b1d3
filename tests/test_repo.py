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


COMFY_MARKED_TESTS = '''
import pytest
from conftest import requires_comfyui

@requires_comfyui
def test_needs_comfyui():
    assert True

@requires_comfyui
def test_skips_inside():
    pytest.skip("the server did not start")

@pytest.mark.browser
def test_browser_skips():
    pytest.skip("no Chromium here")
'''


def _run_marked_tests(tmp_path, comfyui_path, require_browser=False):
    (tmp_path / "test_marked.py").write_text(COMFY_MARKED_TESTS)
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("COMFYUI_PATH", "TRAJIR_REQUIRE_BROWSER")}
    if comfyui_path is not None:
        env["COMFYUI_PATH"] = str(comfyui_path)
    if require_browser:
        env["TRAJIR_REQUIRE_BROWSER"] = "1"
    env["PYTHONPATH"] = str(REPO / "tests")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-p", "conftest",
                           str(tmp_path / "test_marked.py")], capture_output=True, text=True, cwd=tmp_path, env=env)


def test_comfyui_tests_are_skipped_with_the_reason_when_comfyui_path_is_unset(tmp_path):
    proc = _run_marked_tests(tmp_path, None)
    assert proc.returncode == 0, proc.stdout
    assert "3 skipped" in proc.stdout and "set COMFYUI_PATH" in proc.stdout


def test_a_skipped_comfyui_test_fails_when_comfyui_path_is_set(tmp_path):
    fake = tmp_path / "ComfyUI"
    (fake / "comfy").mkdir(parents=True)
    proc = _run_marked_tests(tmp_path, fake)
    assert proc.returncode == 1, proc.stdout
    assert "1 failed, 1 passed, 1 skipped" in proc.stdout
    assert "skipped although COMFYUI_PATH" in proc.stdout and "the server did not start" in proc.stdout


def test_a_skipped_browser_test_fails_only_when_ci_installed_the_browser(tmp_path):
    proc = _run_marked_tests(tmp_path, None, require_browser=True)
    assert proc.returncode == 1, proc.stdout
    assert "1 failed, 2 skipped" in proc.stdout
    assert "skipped although TRAJIR_REQUIRE_BROWSER=1 is set: Skipped: no Chromium here" in proc.stdout


def test_a_comfyui_path_that_is_not_a_checkout_stops_the_run(tmp_path):
    proc = _run_marked_tests(tmp_path, tmp_path / "nowhere")
    assert proc.returncode != 0 and "is not a ComfyUI checkout" in proc.stdout + proc.stderr


# --- the docs the code cites, and the layers of docs/architecture.md §2 ---------------------------------------

DOC_CITATION = re.compile(r"docs/([\w-]+)\.md((?:,?\s*§\d+(?:-\d+)?)*)")
CITING = [p for p in REPO.rglob("*") if p.suffix in {".py", ".md", ".toml", ".json"} and p.is_file()
          and not any(part.startswith(".") for part in p.relative_to(REPO).parts)
          and p.relative_to(REPO).parts[:2] != ("tests", "data")]


def _sections(doc):
    return {int(n) for n in re.findall(r"^## (\d+)\. ", (REPO / "docs" / f"{doc}.md").read_text(), re.M)}


def test_every_docs_citation_names_a_file_and_a_section_that_exist():
    cited, broken = 0, []
    for path in CITING:
        for match in DOC_CITATION.finditer(path.read_text()):
            doc = match.group(1)
            where = f"{path.relative_to(REPO)}: {match.group(0)}"
            if not (REPO / "docs" / f"{doc}.md").is_file():
                broken.append(where)
                continue
            cited += 1
            for start, end in re.findall(r"§(\d+)(?:-(\d+))?", match.group(2)):
                wanted = set(range(int(start), int(end or start) + 1))
                if not wanted <= _sections(doc):
                    broken.append(where)
    assert broken == [] and cited > 50


def test_nothing_cites_documents_outside_the_repository():
    stale = [str(p.relative_to(REPO)) for p in CITING if p.name != "test_repo.py"
             and re.search(r"\b(MATH|DESIGN|COMFYUI)\.md\b|\.\./shared|/ \"shared\"", p.read_text())]
    assert stale == []


LAYERS = [  # docs/architecture.md §2, lowest first
    {"checks", "conversions", "schedules", "safefiles", "tiling"},
    {"sde", "interpolation", "guidance", "distillation"},
    {"grids", "samplers"},
    {"trajectory", "best_of_n"},
    {"models", "rewards", "data", "modulation", "conditioning"},
    {"compact", "colour", "baselines"},
    {"restore", "train", "bench", "__main__", "__init__"},
]


def _trajir_imports(path):
    """The top-level trajir modules that ``path`` (inside trajir/) imports."""
    import ast

    package = path.relative_to(REPO).with_suffix("").parts[:-1]  # e.g. ("trajir", "train")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(package[:len(package) - node.level + 1]) + (node.module.split(".") if node.module else [])
            names = [base] if node.module else [base + [a.name] for a in node.names]
            found |= {parts[1] for parts in names if len(parts) > 1}
    return found


def test_library_modules_import_only_their_layer_or_lower():
    layer = {name: i for i, names in enumerate(LAYERS) for name in names}
    top = {p.relative_to(REPO / "trajir").parts[0].removesuffix(".py") for p in (REPO / "trajir").glob("*")
           if p.suffix == ".py" or (p / "__init__.py").is_file()}
    assert top == set(layer), f"docs/architecture.md §2 and LAYERS must list every module: {sorted(top ^ set(layer))}"
    wrong = []
    for path in (REPO / "trajir").rglob("*.py"):
        own = path.relative_to(REPO / "trajir").parts[0].removesuffix(".py")
        wrong += [f"{path.relative_to(REPO)} imports {name}" for name in _trajir_imports(path)
                  if name != own and layer[name] > layer[own]]
    assert wrong == []
