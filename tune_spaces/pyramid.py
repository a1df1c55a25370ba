"""Pyramid cross-fusion shape: how deep, which scales, how many heads, how much drop-path.

Why: POSTER V1 ships three depths (small 4, base 6, large 8 pyramid blocks) and always fuses
all three scales (widths embed_dim, /2, /4). The extra scales and blocks cost time; this space
asks how much of the pyramid the accuracy actually needs. The large level "l" is always kept
(the classifier reads it), so the level sets are l, l+m, l+s and l+m+s.

Search over: ``model.overrides.depth`` in {2, 4, 6, 8}, ``model.overrides.pyramid_levels``,
``model.overrides.num_heads`` and ``model.overrides.drop_path``.

num_heads must divide every used width: embed_dim, embed_dim/2 and embed_dim/4, i.e. 128, 64
and 32 for the tiny variant and 512, 256, 128 for the others, so {2, 4, 8} fits every variant.
"""

SPACE = {
    "model.overrides.depth": {"choice": [2, 4, 6, 8]},
    "model.overrides.pyramid_levels": {"choice": [["l"], ["l", "m"], ["l", "s"], ["l", "m", "s"]]},
    "model.overrides.num_heads": {"choice": [2, 4, 8]},
    "model.overrides.drop_path": {"uniform": [0.0, 0.3]},
}
