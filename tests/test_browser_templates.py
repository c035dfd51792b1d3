"""ComfyUI's own frontend (comfyui-frontend-package, in a headless Chromium through playwright-core) as a new user
sees the pack: Templates -> Custom Nodes -> trajir lists every shipped workflow with its title, its one-line
description (put there by ``web/trajir.js``) and its thumbnail; each zero-download template opens without a
Missing Models dialog, and pressing Run shows the restored image and the Reward Scorer's scores on the node.

Needs $COMFYUI_PATH, ``node``, Chromium (``chromium`` on the PATH or $CHROMIUM) and the npm package playwright-core
(found through $NODE_PATH, e.g. ``npm install playwright-core`` in a folder and NODE_PATH=<folder>/node_modules);
skipped, with the reason, where one is missing (a failure when $TRAJIR_REQUIRE_BROWSER=1, as in CI once it has
installed them). Screenshots go to $TRAJIR_SHOTS (default: a temporary folder).
"""
import json
import os
import pathlib
import shutil
import subprocess

import pytest
from conftest import REPO, comfyui_path

TESTS = pathlib.Path(__file__).resolve().parent
pytestmark = pytest.mark.browser
MARKER = "TRAJIR_BROWSER "
ZERO_DOWNLOAD = sorted(p.stem for p in (REPO / "workflows").glob("*.json")
                       if "(no download)" in p.stem or p.stem.startswith("Evaluate"))


def _missing():
    """Why the browser check cannot run here, or None."""
    if comfyui_path() is None:
        return "needs a ComfyUI checkout: set COMFYUI_PATH"
    node = shutil.which("node")
    if node is None:
        return "needs node (Node.js) on the PATH"
    if not (os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")):
        return "needs Chromium: apt-get install chromium, or set CHROMIUM to its executable"
    found = subprocess.run([node, "-e", "require.resolve('playwright-core')"], capture_output=True, cwd=TESTS)
    if found.returncode != 0:
        return ("needs the npm package playwright-core: npm install playwright-core, then set NODE_PATH to its "
                "node_modules")
    return None


@pytest.fixture(scope="module")
def browser(request, tmp_path_factory):
    reason = _missing()
    if reason:
        pytest.skip(reason)
    comfy_server = request.getfixturevalue("comfy_server")
    shots = pathlib.Path(os.environ.get("TRAJIR_SHOTS") or tmp_path_factory.mktemp("shots"))
    shots.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("CHROMIUM", shutil.which("chromium") or shutil.which("chromium-browser") or "")
    proc = subprocess.run(["node", str(TESTS / "browser_templates.js"), comfy_server.url, str(shots), *ZERO_DOWNLOAD],
                          capture_output=True, text=True, timeout=900, env=env, cwd=TESTS)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARKER)]
    assert proc.returncode == 0 and lines, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    result = json.loads(lines[-1][len(MARKER):])
    print(f"browser screenshots in {shots}")
    return result


def test_the_template_browser_shows_every_workflow_with_title_description_and_thumbnail(browser):
    descriptions = json.loads((REPO / "web" / "template_descriptions.json").read_text())
    cards = {card["name"]: card for card in browser["cards"]}
    assert set(cards) == set(descriptions)
    for name, card in cards.items():
        assert card["title"] == name  # ComfyUI titles a custom-node template by its file name
        assert card["description"] == descriptions[name]  # web/trajir.js replaced the repeated file name
        assert card["thumbnail"] and card["thumbnail"]["width"] == 384, (name, card["thumbnail"])


@pytest.mark.parametrize("name", ZERO_DOWNLOAD)
def test_a_zero_download_template_opens_and_runs_with_the_score_on_screen(browser, name):
    (run,) = [r for r in browser["runs"] if r["name"] == name]
    assert run["missingModels"] == 0 and run["errors"] == 0
    assert run["done"], run
    assert {"TrajIRSampleImage", "TrajIRCompactRestore", "TrajIRRewardScorer"} <= set(run["loaded"])
    rows = run["scoresOnScreen"].splitlines()
    assert rows[0].split()[:3] == ["image", "psnr", "(dB)"] and len(rows) == 3
    assert run["scores"] == run["scoresOnScreen"]
    assert run["images"] and all(image["count"] >= 1 and image["width"] > 0 for image in run["images"])
    assert pathlib.Path(run["shot"]).is_file()
