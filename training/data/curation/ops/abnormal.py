"""Abnormal elements of the report's fifth stage that need no model: QR codes and barcodes (the report drops them
with watermarks; see watermark.py for those). OpenCV finds both on the shared analysis image: the ArUco-based QR
detector (~2 ms at 512 px, where the classic QRCodeDetector takes ~8 ms and 170 ms at 1024x768) and the
barcode detector (~4 ms)."""
from __future__ import annotations

import cv2
import numpy as np

from ..op import Item, Op, register


@register("qr_code")
class QRCode(Op):
    """has_qr: a QR code is found; has_barcode: a 1-D barcode (EAN, UPC, Code 128...) is found. Both booleans,
    detected on the analysis image (long side <= 512), so a code must span roughly 1/8 of the image's short side to
    be seen. Dropped by default."""

    stats = ("has_qr", "has_barcode")
    default_drop_if = {"has_qr": True, "has_barcode": True}

    def compute(self, item: Item) -> dict:
        gray = np.asarray(item.small.convert("L"))
        return {"has_qr": _found(_qr().detect(gray)), "has_barcode": _found(_barcode().detect(gray))}


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
