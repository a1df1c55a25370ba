"""Faces: `geometry` (the aligned-face contract, template, warp), `framing` (named framings, cut from
landmarks) and `align` (the MediaPipe detector that finds the landmarks). Imports run one way:
align -> framing -> geometry."""
