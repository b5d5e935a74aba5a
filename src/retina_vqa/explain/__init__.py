"""Why the model answered as it did: Grad-CAM maps of where it looked, and whether they point at lesions.

``gradcam.py`` owns the map (the cross-attention to the image patches, weighted by the positive gradients of
the answer's log-likelihood: BLIP's question encoder, or the Q-Former's learned queries in BLIP-2 and
InstructBLIP), its overlay on the fundus and the attention figure;
``pointing.py`` owns the pointing game, which scores those maps against the lesion boxes of presence
questions. ``python -m retina_vqa.visualize attention|pointing`` is the command line of both; the
model-free pictures of a run are in `retina_vqa.plots`.
"""

from .gradcam import cross_attention_layers, gradcam_map, overlay, plot_attention, upsample
from .pointing import PRESENCE_LESION_TYPES, format_pointing, pointing_game

__all__ = [
    "PRESENCE_LESION_TYPES",
    "cross_attention_layers",
    "format_pointing",
    "gradcam_map",
    "overlay",
    "plot_attention",
    "pointing_game",
    "upsample",
]
