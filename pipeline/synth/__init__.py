"""Synthetic faces with known landmarks: `generator` (deterministic per seed), `draw` (its canvas) and `cli`
(`python -m pipeline.synth`, an image-folder tree)."""
from pipeline.synth.generator import SynthFace, generate, plan, write_tree  # noqa: F401
