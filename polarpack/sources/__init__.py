"""Where distributions come from: the paper's presets, weights files, torchvision and timm models,
the Hugging Face Hub as a source, and extraction of a distribution from any of them."""
