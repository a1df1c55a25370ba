"""Face processing shared by ingest and predict: detect, map to 68 points, align, crop.

One aligned face is a 224x224 RGB image in which the five reference points (eye centres, nose
tip, mouth corners) sit on a fixed template with the eye line exactly horizontal. The landmark
crop is that whole aligned face resized to 112x112, which is the framing the official POSTER code
feeds its landmark network (it nearest-resizes the 224 input to 112). Landmarks are the 68 iBUG
points in the aligned image, normalised to [0, 1].

The detector (MediaPipe face mesh) is imported lazily, so this module and everything that
imports it work without mediapipe installed; only `FaceProcessor(detector=True)` needs it.
"""
from __future__ import annotations

import cv2
import numpy as np

from pipeline.faces import framing as FR
from pipeline.faces.geometry import (ALIGNED_SIZE, CROP_SIZE, DEFAULT_MARGIN, FaceResult,  # noqa: F401
                                     NoFaceError, finish_face, as_rgb, similarity_transform, template_5pts,
                                     transform_points, warp_face)

# MediaPipe face mesh (468 vertices, 0-based) -> 68 iBUG points, in iBUG order. A pair means
# "average the two vertices". No official mapping exists (google-ai-edge/mediapipe#3116, #4490);
# this is the table of github.com/PeizhiYan/Mediapipe_2_Dlib_Landmarks (mp2dlib.py, 2024), copied
# here because that repository has no licence file. Against dlib's 68-point model the inner 51
# points agree to ~4 % of the eye-corner distance, the jaw (points 1-17) only to ~15 %.
MESH_TO_IBUG68: tuple[tuple[int, int], ...] = (
    # jaw 1-17
    (127, 127), (234, 234), (93, 93), (132, 58), (58, 172), (136, 136), (150, 150), (176, 176),
    (152, 152), (400, 400), (379, 379), (365, 365), (397, 288), (361, 361), (323, 323),
    (454, 454), (356, 356),
    # brows 18-27
    (70, 70), (63, 63), (105, 105), (66, 66), (107, 107),
    (336, 336), (296, 296), (334, 334), (293, 293), (300, 300),
    # nose 28-36
    (168, 6), (197, 195), (5, 5), (4, 4), (75, 75), (97, 97), (2, 2), (326, 326), (305, 305),
    # eyes 37-48
    (33, 33), (160, 160), (158, 158), (133, 133), (153, 153), (144, 144),
    (362, 362), (385, 385), (387, 387), (263, 263), (373, 373), (380, 380),
    # outer mouth 49-60
    (61, 61), (39, 39), (37, 37), (0, 0), (267, 267), (269, 269), (291, 291), (321, 321),
    (314, 314), (17, 17), (84, 84), (91, 91),
    # inner mouth 61-68
    (78, 78), (82, 82), (13, 13), (312, 312), (308, 308), (317, 317), (14, 14), (87, 87),
)
_MESH_IDX = np.asarray(MESH_TO_IBUG68, dtype=np.int64)

# Eye contours from mediapipe/python/solutions/face_mesh_connections.py. MediaPipe names the
# subject's side, so FACEMESH_RIGHT_EYE is the eye on the image's left.
MESH_EYE_IMAGE_LEFT = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
MESH_EYE_IMAGE_RIGHT = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
MESH_NOSE_TIP = 4  # vertex 1 sits ~7 % of the eye distance below dlib's nose tip (iBUG 31)
MESH_MOUTH_LEFT, MESH_MOUTH_RIGHT = 61, 291

# Mean 68-point shape in the aligned frame (normalised), used when an already-aligned image has
# no detectable face: the average of the detector's aligned landmarks over 299 real faces
# (../shared/data/muxspace_dev) with the default template (`bench/ingest.py --mean-shape`
# recomputes it). It is a NaN-free stand-in, not a measurement of the image it is attached to.
MEAN_SHAPE_68 = np.array([
    0.221, 0.489, 0.224, 0.545, 0.227, 0.603, 0.243, 0.698, 0.265, 0.758, 0.306, 0.824, 0.344, 0.859,
    0.409, 0.905, 0.501, 0.926, 0.592, 0.904, 0.657, 0.858, 0.694, 0.824, 0.735, 0.757, 0.766, 0.665,
    0.773, 0.602, 0.776, 0.545, 0.779, 0.488, 0.272, 0.419, 0.298, 0.397, 0.336, 0.385, 0.385, 0.387,
    0.442, 0.393, 0.559, 0.393, 0.616, 0.386, 0.665, 0.384, 0.703, 0.396, 0.728, 0.418, 0.501, 0.478,
    0.501, 0.537, 0.501, 0.580, 0.501, 0.615, 0.445, 0.649, 0.468, 0.665, 0.500, 0.665, 0.533, 0.665,
    0.556, 0.649, 0.318, 0.476, 0.345, 0.461, 0.388, 0.459, 0.430, 0.483, 0.395, 0.491, 0.353, 0.490,
    0.570, 0.483, 0.612, 0.459, 0.655, 0.461, 0.682, 0.476, 0.647, 0.490, 0.605, 0.491, 0.389, 0.749,
    0.434, 0.726, 0.467, 0.719, 0.500, 0.724, 0.533, 0.719, 0.566, 0.725, 0.611, 0.749, 0.585, 0.777,
    0.534, 0.804, 0.500, 0.807, 0.467, 0.804, 0.415, 0.777, 0.404, 0.748, 0.475, 0.746, 0.500, 0.747,
    0.525, 0.746, 0.595, 0.748, 0.527, 0.768, 0.500, 0.769, 0.473, 0.768,
], dtype=np.float32).reshape(68, 2)


def five_from_68(lm68: np.ndarray) -> np.ndarray:
    """Five reference points from 68 iBUG points: eye centres, nose tip (31), mouth corners (49, 55)."""
    lm68 = np.asarray(lm68, dtype=np.float64).reshape(68, 2)
    return np.stack([lm68[36:42].mean(0), lm68[42:48].mean(0), lm68[30], lm68[48], lm68[54]])


def align_with_landmarks(rgb: np.ndarray, lm68_px: np.ndarray, margin: float = DEFAULT_MARGIN,
                         source: str = "known", framing=None) -> FaceResult:
    """Align a face whose 68 iBUG points (pixels of `rgb`) are already known.

    `framing` (``pipeline.faces.framing``) defaults to the project framing at `margin`.
    """
    rgb = as_rgb(rgb)
    lm68_px = np.asarray(lm68_px, dtype=np.float64).reshape(68, 2)
    if not np.all(np.isfinite(lm68_px)):
        raise NoFaceError("non-finite landmarks")
    framing = framing or FR.project(margin)
    return FR.apply(rgb, lm68_px, five_from_68(lm68_px), framing, source)


class FaceProcessor:
    """Detect one face (MediaPipe face mesh), map it to 68 points, align and crop it.

    Build one per process (or Ray actor) and reuse it: the face mesh graph is not picklable and
    costs ~30 ms to build. Thread-unsafe, like the graph it wraps.

    Args:
        margin: template shrink factor (1.0 = ArcFace framing, smaller = more context).
        min_side: images smaller than this are upscaled before detection (face mesh misses tiny faces).
        min_detection_confidence: BlazeFace threshold.
        pad_retry: on a miss, retry once with 25 % replicate padding (helps tight crops).
        framing: what `process` cuts (``pipeline.faces.framing``); default the project framing at `margin`.
    """

    def __init__(self, margin: float = DEFAULT_MARGIN, min_side: int = 192,
                 min_detection_confidence: float = 0.5, pad_retry: bool = True, framing=None):
        import mediapipe as mp  # lazy: the package imports without mediapipe

        self.margin = margin
        self.framing = FR.get(framing) if framing is not None else FR.project(margin)
        self.min_side = min_side
        self.pad_retry = pad_retry
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=1, refine_landmarks=False,
            min_detection_confidence=min_detection_confidence)
        self.name = "mediapipe.face_mesh"
        self.version = getattr(mp, "__version__", "unknown")

    def close(self) -> None:
        self._mesh.close()

    def _mesh_points(self, rgb: np.ndarray) -> np.ndarray | None:
        h, w = rgb.shape[:2]
        res = self._mesh.process(rgb)
        if not res.multi_face_landmarks:
            return None
        lms = res.multi_face_landmarks[0].landmark
        return np.array([(p.x * w, p.y * h) for p in lms], dtype=np.float64)

    def detect_mesh(self, rgb: np.ndarray) -> np.ndarray:
        """All face-mesh vertices [468, 2] in pixels of `rgb`; raises NoFaceError."""
        rgb = as_rgb(rgb)
        h, w = rgb.shape[:2]
        up = max(1.0, self.min_side / max(1, min(h, w)))
        img = cv2.resize(rgb, None, fx=up, fy=up, interpolation=cv2.INTER_CUBIC) if up > 1 else rgb
        pts = self._mesh_points(img)
        if pts is None and self.pad_retry:
            p = int(round(0.25 * max(img.shape[:2])))
            padded = cv2.copyMakeBorder(img, p, p, p, p, cv2.BORDER_REPLICATE)
            pts = self._mesh_points(padded)
            if pts is not None:
                pts -= p
        if pts is None:
            raise NoFaceError("no face found by the detector")
        return pts / up

    def detect68(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(68 iBUG points, 5 reference points), both in pixels of `rgb`."""
        mesh = self.detect_mesh(rgb)
        lm68 = mesh[_MESH_IDX].mean(axis=1)
        five = np.stack([
            mesh[list(MESH_EYE_IMAGE_LEFT)].mean(0), mesh[list(MESH_EYE_IMAGE_RIGHT)].mean(0),
            mesh[MESH_NOSE_TIP], mesh[MESH_MOUTH_LEFT], mesh[MESH_MOUTH_RIGHT]])
        return lm68, five

    def process(self, rgb: np.ndarray, box: tuple[float, float, float, float] | None = None) -> FaceResult:
        """Detect, align and crop the face in an RGB uint8 image; raises NoFaceError.

        `box` (x, y, w, h), when known, restricts detection to that face (plus 25 % context).
        The face is cut in this processor's framing (``pipeline.faces.framing.prepare_face``).
        """
        return FR.prepare_face(rgb, self.framing, self, box)

    def landmarks_in(self, rgb: np.ndarray) -> np.ndarray | None:
        """68 points normalised to `rgb`'s own frame, or None when no face is found."""
        try:
            lm68, _ = self.detect68(rgb)
        except NoFaceError:
            return None
        h, w = rgb.shape[:2]
        return lm68 / np.array([w, h], dtype=np.float64)


def aligned_only(rgb: np.ndarray, processor: FaceProcessor | None = None) -> FaceResult:
    """For inputs that are already aligned faces (RAF-DB aligned, FER2013): no re-alignment.

    The image is resized to 224 and the crop to 112. Landmarks come from the detector run on the
    image as it is when `processor` is given and finds a face; otherwise `MEAN_SHAPE_68` is used,
    so the column is never NaN (models that need real landmarks must not rely on the fallback;
    `landmarks_from` says which one was used).
    """
    rgb = as_rgb(rgb)
    interp = cv2.INTER_AREA if min(rgb.shape[:2]) > ALIGNED_SIZE else cv2.INTER_CUBIC
    aligned = cv2.resize(rgb, (ALIGNED_SIZE, ALIGNED_SIZE), interpolation=interp)
    lm = processor.landmarks_in(rgb) if processor is not None else None
    if lm is None:
        return finish_face(aligned, MEAN_SHAPE_68 * ALIGNED_SIZE, ALIGNED_SIZE, "mean_shape")
    return finish_face(aligned, lm * ALIGNED_SIZE, ALIGNED_SIZE, "detector")


# Index of each iBUG point's mirror image (for horizontal flips of images with landmarks).
IBUG68_FLIP = np.array(
    list(range(16, -1, -1))                      # jaw
    + list(range(26, 21, -1)) + list(range(21, 16, -1))  # brows
    + [27, 28, 29, 30] + [35, 34, 33, 32, 31]   # nose
    + [45, 44, 43, 42, 47, 46] + [39, 38, 37, 36, 41, 40]  # eyes
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]  # outer mouth
    + [64, 63, 62, 61, 60, 67, 66, 65],          # inner mouth
    dtype=np.int64)
