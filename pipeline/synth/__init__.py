"""Synthetic faces with known landmarks: `faces` (the generator, deterministic per seed) and `cli`
(`python -m pipeline.synth`, an image-folder tree)."""
from pipeline.synth.faces import SynthFace, generate, plan, write_tree  # noqa: F401
