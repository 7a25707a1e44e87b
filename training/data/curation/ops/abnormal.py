"""Abnormal elements of the report's fifth stage that need no model: QR codes and barcodes (the report drops them
with watermarks; see watermark.py for those). OpenCV finds both on the analysis image scaled to 384 px: the
ArUco-based QR detector (1.1 ms there, 5 ms at 512 px; the classic QRCodeDetector takes 170 ms at 1024x768) and
the barcode detector (1.6 ms there, 3 ms at 512 px): at 512 px they were the dearest of the cheap ops."""
from __future__ import annotations

import cv2
import numpy as np

from ..op import Item, Op, OpError, register, shrink


@register("qr_code")
class QRCode(Op):
    """has_qr: a QR code is found; has_barcode: a 1-D barcode (EAN, UPC, Code 128...) is found. Both booleans,
    detected with the image's long side at `side` pixels (default 384, at most the 512 px analysis image), so a code
    must span roughly 1/6 of the image's short side to be seen (raise `side` to 512 for smaller ones, at 4x the
    cost). Dropped by default."""

    stats = ("has_qr", "has_barcode")
    default_drop_if = {"has_qr": True, "has_barcode": True}

    def __init__(self, side: int = 384, **kw):
        super().__init__(**kw)
        if not isinstance(side, int) or isinstance(side, bool) or side < 64:
            raise OpError(f"op 'qr_code': side must be a whole number of pixels >= 64, got {side!r}")
        self.side = side

    def compute(self, item: Item) -> dict:
        gray, _ = _gray(item, self.side)
        return {"has_qr": _found(_qr().detect(gray)), "has_barcode": _found(_barcode().detect(gray))}


def _gray(item: Item, side: int) -> tuple[np.ndarray, float]:
    """The analysis image in grey with its long side at most `side`, and its scale to the stored image's pixels."""
    gray = shrink(item.gray_u8, side)   # the analysis copy's filter: 0.3 ms where INTER_AREA's 4:3 takes 0.8
    return gray, max(item.pil.size) / max(gray.shape)


def qr_regions(item: Item, side: int = 384, margin: float = 0.15) -> list[np.ndarray]:
    """The QR codes found, each as its 4 corners in the stored image's pixels, grown by `margin` of its size about
    its centre (the detector's corners sit inside the finder patterns): OCR reads a QR code's modules as Han
    characters ('口', '品牌品'), so ocr_text leaves out what it finds inside these."""
    gray, to_stored = _gray(item, side)
    ok, points = _qr().detectMulti(gray)[:2]
    if not ok or points is None:
        return []
    out = []
    for quad in np.asarray(points, dtype=np.float32).reshape(-1, 4, 2) * to_stored:
        centre = quad.mean(axis=0)
        out.append(centre + (quad - centre) * (1 + 2 * margin))
    return out


def _found(result) -> bool:
    ok, points = result[0], result[1]
    return bool(ok) and points is not None and len(points) > 0


_DETECTORS: dict[str, object] = {}


def _qr():
    if "qr" not in _DETECTORS:   # one per process: building them loads their parameters
        _DETECTORS["qr"] = cv2.QRCodeDetectorAruco()
    return _DETECTORS["qr"]


def _barcode():
    if "barcode" not in _DETECTORS:
        _DETECTORS["barcode"] = cv2.barcode.BarcodeDetector()
    return _DETECTORS["barcode"]
