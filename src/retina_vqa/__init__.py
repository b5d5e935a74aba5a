"""retina-vqa: fine-tune BLIP, BLIP-2 and InstructBLIP for visual question answering on retinal fundus images."""

__version__ = "0.1.0"
