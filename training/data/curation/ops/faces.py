"""Face mosaic / blur (report stage 6, portraits): find faces, then measure pixelation and blur inside each box.

Faces are found by OpenCV's YuNet (cv2.FaceDetectorYN; OpenCV 5 no longer ships Haar cascades). Its ONNX file
(~230 KB) is not in any wheel: `detector` is a path to it, a folder holding `detector_file`, or a hub repository
(default opencv/face_detection_yunet, file face_detection_yunet_2023mar.onnx) fetched once into the Hugging Face
cache. Detection runs on the analysis copy (long side <= 512); the measures run on the box cut from the full image,
where a mosaic's blocks keep their real size.

- face_mosaic (0..1): how much of the box's edge energy lies on a regular grid of 8-16 px flat blocks, in both
  directions (a pixelated face). For the best block size b and offset along each axis: the grid lines' share of
  the |gradient| energy, rescaled so that chance (1/b) is 0 and all of it is 1, times the fraction of grid lines
  that carry energy (so one strong edge is not a grid); the image's score is the smaller axis, its worst face.
  JPEG's 8x8 blocks can reach ~0.2-0.3 on a heavily compressed face; a mosaic scores ~0.9-1.
- face_blur (0..1): Crete et al.'s no-reference blur effect (2007): how little of the box's neighbour-difference
  energy an 11-tap box blur removes (0 sharp, 1 flat); worst face. On a 160 px drawn face: 0.17 sharp, 0.41 /
  0.68 / 0.88 after a Gaussian blur of sigma 1 / 2 / 4 px; the default drops above 0.7 (not yet tuned on photos).
- faces: the number of faces found. No face: face_mosaic = face_blur = 0, so the op keeps it."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..op import Item, Op, OpError, register
from ._model import local_or_hub_file

DEFAULT_DETECTOR = "opencv/face_detection_yunet"
DEFAULT_DETECTOR_FILE = "face_detection_yunet_2023mar.onnx"


@register("face_mosaic")
class FaceMosaic(Op):
    stats = ("faces", "face_mosaic", "face_blur")
    default_keep = {"face_mosaic": (0.0, 0.5), "face_blur": (0.0, 0.7)}

    def __init__(self, keep: Mapping | None = None, drop_if: Mapping | None = None, *,
                 detector: str = DEFAULT_DETECTOR, detector_file: str = DEFAULT_DETECTOR_FILE,
                 score_threshold: float = 0.8, min_face: int = 32, mosaic_blocks: Sequence[int] = (8, 16),
                 offline: bool = False, **options):
        super().__init__(keep, drop_if, **options)
        if (not isinstance(mosaic_blocks, (list, tuple)) or len(mosaic_blocks) != 2
                or not 2 <= int(mosaic_blocks[0]) <= int(mosaic_blocks[1])):
            raise OpError(f"op {self.name!r}: mosaic_blocks must be [smallest, largest] block size in pixels (>= 2), "
                          f"got {mosaic_blocks!r}")
        self.detector, self.detector_file = detector, detector_file
        self.score_threshold, self.min_face = float(score_threshold), int(min_face)
        self.blocks = range(int(mosaic_blocks[0]), int(mosaic_blocks[1]) + 1)
        self.offline = bool(offline)
        self._yunet = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_yunet"] = None   # an OpenCV object does not pickle; each worker makes its own
        return state

    def compute(self, item: Item) -> dict:
        boxes = self.detect(item)
        gray = np.asarray(item.pil.convert("L"), dtype=np.float32)
        judged = [gray[y:y + h, x:x + w] for x, y, w, h in boxes if min(w, h) >= self.min_face]
        return {"faces": len(boxes),
                "face_mosaic": max((mosaic_score(c, self.blocks) for c in judged), default=0.0),
                "face_blur": max((blur_effect(c) for c in judged), default=0.0)}

    def detect(self, item: Item) -> list[tuple[int, int, int, int]]:
        """Face boxes (x, y, w, h) in the full image's pixels, clipped to it."""
        small = item.small
        bgr = np.ascontiguousarray(np.asarray(small)[:, :, ::-1])
        yunet = self._detector()
        yunet.setInputSize((small.width, small.height))
        _, found = yunet.detect(bgr)
        sx, sy = item.pil.width / small.width, item.pil.height / small.height
        boxes = []
        for x, y, w, h in ([] if found is None else found[:, :4]):
            x0, y0 = max(0, int(x * sx)), max(0, int(y * sy))
            x1, y1 = min(item.pil.width, int((x + w) * sx)), min(item.pil.height, int((y + h) * sy))
            if x1 > x0 and y1 > y0:
                boxes.append((x0, y0, x1 - x0, y1 - y0))
        return boxes

    def _detector(self):
        if self._yunet is None:
            import cv2

            path = self._detector_path()
            try:
                self._yunet = cv2.FaceDetectorYN.create(path, "", (320, 320), self.score_threshold, 0.3, 5000)
            except cv2.error as e:
                raise OpError(f"op {self.name!r}: {path} is not a YuNet face detector OpenCV can read: "
                              f"{' '.join(str(e).split())[:200]}") from None
        return self._yunet

    def _detector_path(self) -> str:
        return local_or_hub_file(self.name, "face detector", self.detector, self.detector_file, self.offline)


def mosaic_score(gray: np.ndarray, blocks: Sequence[int] = range(8, 17)) -> float:
    """0..1: pixelation of a grey crop, the smaller of its column and row scores (a mosaic is blocky both ways)."""
    if min(gray.shape) < 2 * min(blocks):
        return 0.0
    cols = np.abs(np.diff(gray, axis=1)).mean(axis=0)   # energy between column x and x+1
    rows = np.abs(np.diff(gray, axis=0)).mean(axis=1)
    return min(_grid_score(cols, blocks), _grid_score(rows, blocks))


def _grid_score(profile: np.ndarray, blocks: Sequence[int]) -> float:
    total = float(profile.sum())
    if total <= 1e-3 * len(profile):          # a flat crop: no edges, no evidence of blocks
        return 0.0
    best = 0.0
    for b in blocks:
        if len(profile) < 2 * b:
            continue
        for off in range(b):
            lines = profile[off::b]
            chance = len(lines) / len(profile)
            share = (float(lines.sum()) / total - chance) / (1.0 - chance)
            active = float((lines > 0.25 * lines.mean()).mean())
            best = max(best, share * active)
    return float(np.clip(best, 0.0, 1.0))


def blur_effect(gray: np.ndarray, h: int = 11) -> float:
    """Crete et al. (2007) blur effect of a grey crop, 0 (sharp) .. 1 (blurred): per axis, the share of the
    neighbour-difference energy that survives re-blurring with an h-tap box filter; the blurrier axis."""
    import cv2

    if min(gray.shape) < 3:
        return 0.0
    out = 0.0
    for axis, ksize in ((0, (1, h)), (1, (h, 1))):
        blurred = cv2.blur(gray, ksize, borderType=cv2.BORDER_REFLECT)
        d_img = np.abs(np.diff(gray, axis=axis))
        d_blur = np.abs(np.diff(blurred, axis=axis))
        s_img = float(d_img.sum())
        if s_img <= 1e-6:
            out = max(out, 1.0)               # flat: nothing left to blur
            continue
        lost = float(np.maximum(0.0, d_img - d_blur).sum())
        out = max(out, (s_img - lost) / s_img)
    return out
