"""retina-vqa: fine-tune BLIP for visual question answering on retinal fundus images."""

__version__ = "0.1.0"
