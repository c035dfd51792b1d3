"""ComfyUI adapters: read node inputs, call ``trajir``, wrap results in ComfyUI types.

This is the only place that imports ``comfy``/``folder_paths``, and it does so inside node functions so
that the pack imports without ComfyUI. Inside ComfyUI, loading the pack registers the ``models/iqa`` folder
(the learned reward metrics' weights).
"""
from .best_of_n import TrajIRBestOfN
from .comfy_bridge import IQA_FOLDER, register_model_folder
from .compact_restore import MODEL_FOLDER, TrajIRCompactRestore
from .conditioning import TrajIRSaveConditioning
from .guider import TrajIRNegativeLQGuidance
from .initial_state import TrajIRLQInitialState
from .reward import TrajIRRewardScorer
from .sampler import TrajIRMSDESampler

NODE_CLASS_MAPPINGS = {
    "TrajIRMSDESampler": TrajIRMSDESampler,
    "TrajIRLQInitialState": TrajIRLQInitialState,
    "TrajIRNegativeLQGuidance": TrajIRNegativeLQGuidance,
    "TrajIRRewardScorer": TrajIRRewardScorer,
    "TrajIRBestOfN": TrajIRBestOfN,
    "TrajIRSaveConditioning": TrajIRSaveConditioning,
    "TrajIRCompactRestore": TrajIRCompactRestore,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "TrajIRMSDESampler": "TrajIR M-SDE Sampler",
    "TrajIRLQInitialState": "TrajIR LQ Initial State",
    "TrajIRNegativeLQGuidance": "TrajIR Negative LQ Guidance",
    "TrajIRRewardScorer": "TrajIR Reward Scorer",
    "TrajIRBestOfN": "TrajIR Best-of-N Trajectory Aligner",
    "TrajIRSaveConditioning": "TrajIR Save Conditioning",
    "TrajIRCompactRestore": "TrajIR Compact Restore",
}

register_model_folder(IQA_FOLDER)
register_model_folder(MODEL_FOLDER)
