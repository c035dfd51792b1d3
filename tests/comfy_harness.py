"""Helpers for the tests against a real ComfyUI ($COMFYUI_PATH).

- ``inprocess_results(comfy_path, out_dir)`` runs this file in a child process that imports ComfyUI as a library
  (docs/comfyui.md §8), builds a tiny FLUX and runs every check of ``tests/comfy_inprocess_checks.py`` against the
  real ``comfy.samplers`` / ``comfy.sample`` code; it returns their results as a dict. A child process keeps
  ComfyUI's global state (and its top-level ``nodes`` module, which shares its name with our ``nodes`` package)
  out of the pytest process.
- ``ComfyServer`` starts ``main.py --cpu`` on a free port with a temporary base directory whose ``custom_nodes``
  links this repository and the test probe nodes; ``ui_to_api`` converts a UI workflow with the live
  ``/object_info``.
"""
import contextlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

TESTS = pathlib.Path(__file__).resolve().parent
REPO = TESTS.parent
MARKER = "TRAJIR_RESULTS "
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote"}
SEED_NAMES = ("seed", "noise_seed")  # INT widgets the frontend gives a control_after_generate widget by name


def inprocess_results(comfy_path, out_dir, timeout=600):
    """Run the in-process checks in a child process; ``{check name: result dict}``."""
    env = {**os.environ, "COMFYUI_PATH": str(comfy_path), "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, str(TESTS / "comfy_inprocess_checks.py"), str(out_dir)], env=env,
                          cwd=out_dir, capture_output=True, text=True, timeout=timeout, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARKER)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"in-process ComfyUI checks failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n"
                           f"{proc.stderr[-8000:]}")
    return json.loads(lines[-1][len(MARKER):])


def free_port():
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A ComfyUI server on 127.0.0.1 with ``base`` as its base directory (models, custom_nodes, input, output)."""

    def __init__(self, comfy_path, base):
        self.comfy_path, self.base = pathlib.Path(comfy_path), pathlib.Path(base)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base / "server.log"
        nodes_dir = self.base / "custom_nodes"
        nodes_dir.mkdir(parents=True, exist_ok=True)
        (nodes_dir / "trajir").symlink_to(REPO, target_is_directory=True)
        (nodes_dir / "trajir_test_probe.py").symlink_to(TESTS / "comfy_probe_pack.py")
        for sub in ("input", "output"):
            (self.base / sub).mkdir(exist_ok=True)
        self.proc = None

    def __enter__(self):
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--base-directory", str(self.base), "--disable-auto-launch"],
            cwd=self.comfy_path, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": ""})
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            try:
                self.get("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not answer within 180 s:\n{self.log_text()[-4000:]}")

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def log_text(self):
        return self.log_path.read_text(errors="replace")

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def get_raw(self, path):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return r.status, r.read()

    def run_prompt(self, prompt, timeout=300):
        """POST an API prompt and wait for it; the ``/history`` entry (``status.status_str``, ``outputs``)."""
        body = json.dumps({"prompt": prompt, "client_id": "trajir-tests"}).encode()
        request = urllib.request.Request(self.url + "/prompt", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                prompt_id = json.loads(r.read())["prompt_id"]
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"/prompt refused the prompt ({e.code}): {e.read().decode()}") from None
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            time.sleep(0.25)
        raise RuntimeError(f"prompt {prompt_id} did not finish within {timeout} s:\n{self.log_text()[-4000:]}")


def ui_to_api(workflow, object_info):
    """A UI-format workflow (docs/comfyui.md §6) as an API prompt, walking each node's ``input_order``.

    Widget values are taken in order; the extra value after ``control_after_generate`` INTs (those whose options
    ask for it, and, as the frontend does, INTs named seed or noise_seed) and after ``image_upload`` combos is
    skipped; frontend-only notes are dropped. No Reroute / Primitive / subgraph support.
    """
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) in (2, 4):
            continue
        info = object_info[node["type"]]
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        names = info["input_order"].get("required", []) + info["input_order"].get("optional", [])
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        inputs = {}
        for name in names:
            kind, options = specs[name][0], (specs[name][1] if len(specs[name]) > 1 else {})
            if (isinstance(kind, list) or kind in WIDGET_TYPES) and values:
                inputs[name] = values.pop(0)
                if options.get("control_after_generate") or options.get("image_upload") or (
                        kind == "INT" and name in SEED_NAMES):
                    values.pop(0)
            if name in linked:
                link = links[linked[name]]
                inputs[name] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
