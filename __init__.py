"""ComfyUI entry point of the TrajIR node pack (V1 nodes).

ComfyUI imports this folder as a package from ``custom_nodes/``. Importing it without ComfyUI installed
works too (tests do): node modules import ``comfy`` only when a node runs. ``web/`` holds the pack's frontend
extension (the Reward Scorer's table on the node, the template browser's descriptions).
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
