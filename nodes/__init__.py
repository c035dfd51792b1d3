"""ComfyUI adapters: read node inputs, call ``trajir``, wrap results in ComfyUI types.

This is the only place that imports ``comfy``/``folder_paths``, and it does so inside node functions so
that the pack imports without ComfyUI. Inside ComfyUI, loading the pack registers the ``models/iqa`` folder
(the learned reward metrics' weights).
"""
from .best_of_n import TrajIRBestOfN
from .capped_scale import TrajIRScaleWithCap
from .comfy_bridge import IQA_FOLDER, register_model_folder
from .compact_restore import MODEL_FOLDER, TrajIRCompactRestore
from .conditioning import TrajIRSaveConditioning
from .guider import TrajIRNegativeLQGuidance
from .initial_state import TrajIRLQInitialState
from .reward import TrajIRRewardScorer
from .sample_image import TrajIRSampleImage
from .sampler import TrajIRMSDESampler

NODE_CLASS_MAPPINGS = {
    "TrajIRMSDESampler": TrajIRMSDESampler,
    "TrajIRLQInitialState": TrajIRLQInitialState,
    "TrajIRNegativeLQGuidance": TrajIRNegativeLQGuidance,
    "TrajIRRewardScorer": TrajIRRewardScorer,
    "TrajIRBestOfN": TrajIRBestOfN,
    "TrajIRSaveConditioning": TrajIRSaveConditioning,
    "TrajIRCompactRestore": TrajIRCompactRestore,
    "TrajIRSampleImage": TrajIRSampleImage,
    "TrajIRScaleWithCap": TrajIRScaleWithCap,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "TrajIRMSDESampler": "TrajIR M-SDE Sampler",
    "TrajIRLQInitialState": "TrajIR LQ Initial State",
    "TrajIRNegativeLQGuidance": "TrajIR Negative LQ Guidance",
    "TrajIRRewardScorer": "TrajIR Reward Scorer",
    "TrajIRBestOfN": "TrajIR Best-of-N Trajectory Aligner",
    "TrajIRSaveConditioning": "TrajIR Save Conditioning",
    "TrajIRCompactRestore": "TrajIR Compact Restore",
    "TrajIRSampleImage": "TrajIR Sample Image",
    "TrajIRScaleWithCap": "TrajIR Scale (Pixel Cap)",
}

register_model_folder(IQA_FOLDER)
register_model_folder(MODEL_FOLDER)
