"""Synthetic faces with known landmarks: `generator` (deterministic per seed), `draw` (its canvas) and `cli`
(`python -m pipeline.synth`, an image-folder tree)."""
from pipeline.synth.generator import SynthFace, generate, plan, write_tree  # noqa: F401

# Training overrides for generated faces. Their expressions are positions of mouth and brows in a
# fixed frame, which the random crop and rotation of configs/smoke.yaml (there for real faces)
# scramble: a 12-epoch fit fell from 0.714 to 0.393 test with them (README, bench/learning.py).
TRAIN_OVERRIDES = ("data.crop_area_min=1.0", "data.rotation=0")
