"""trajir: learned trajectories for differential-equation image restoration (FLUX-IR, Zhu et al.).

The library is pure torch and never imports ComfyUI; the node pack in ``nodes/`` adapts it.
"""

__version__ = "0.1.0"
