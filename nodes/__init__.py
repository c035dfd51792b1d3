"""ComfyUI adapters: read node inputs, call ``trajir``, wrap results in ComfyUI types.

This is the only place that imports ``comfy``/``folder_paths``, and it does so inside node functions so
that the pack imports without ComfyUI.
"""

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
