"""The server's memory: loaded images, their display pyramid and stretch statistics.

Nothing here measures a star; it only keeps what the page needs to show a
frame quickly: the :class:`~psfkit.io.image.Image` from :func:`psfkit.load_image`,
a pyramid of 2x2-binned display copies (in display orientation: row 0 at the
bottom for bottom-up frames, as Siril and DS9 show FITS), and the robust
statistics of the auto-stretch.  Tiles are 8-bit PNGs.
"""

from __future__ import annotations

import io
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from psfkit.errors import PsfkitError
from psfkit.io.image import Image, load_image
from psfkit.utils import robust_sigma

__all__ = ["TILE", "ImageStore", "LoadedImage", "stretch_to_uint8", "auto_stretch_params", "STRETCH_MODES"]

TILE = 256
STRETCH_MODES = ("mtf", "asinh", "linear")
MAX_PIXELS = 250_000_000  # refuse frames beyond this (about 1 GB as float32)


def _mtf(m: float | np.ndarray, x: np.ndarray | float) -> Any:
    """PixInsight's midtones transfer function: maps 0 -> 0, m -> 0.5, 1 -> 1."""
    return (m - 1.0) * x / ((2.0 * m - 1.0) * x - m)


def auto_stretch_params(stats: dict[str, float], *, target: float = 0.2) -> dict[str, float]:
    """Black, white and midtone of an automatic screen stretch (PixInsight's STF rule).

    Black point 2.8 robust sigma below the median, white point at the 99.995th
    percentile, midtone such that the median background shows at ``target``.
    """
    black = max(stats["min"], stats["median"] - 2.8 * stats["sigma"])
    white = max(stats["p_high"], black + 1e-12 * max(1.0, abs(black)))
    if white <= black:
        white = black + 1.0
    x = (stats["median"] - black) / (white - black)
    x = min(max(x, 1e-6), 0.999)
    mid = float(_mtf(target, x))
    mid = min(max(mid, 1e-4), 0.9999)
    # asinh softening giving the same background level: asinh(k x)/asinh(k) = target
    k = 1.0
    lo, hi = -3.0, 12.0  # bisection in log10 k
    for _ in range(60):
        k = 10 ** (0.5 * (lo + hi))
        if math.asinh(k * x) / math.asinh(k) < target:
            lo = math.log10(k)
        else:
            hi = math.log10(k)
    return {"black": float(black), "white": float(white), "mid": mid, "soft": float(k)}


def stretch_to_uint8(values: np.ndarray, *, mode: str, black: float, white: float, mid: float,
                     soft: float) -> np.ndarray:
    """Display values 0..255 of data values (NaN shows black)."""
    span = white - black if white > black else 1.0
    x = (np.asarray(values, dtype=np.float32) - np.float32(black)) / np.float32(span)
    np.clip(x, 0.0, 1.0, out=x)
    if mode == "mtf":
        m = np.float32(mid)
        y = (m - 1.0) * x / ((2.0 * m - 1.0) * x - m)
    elif mode == "asinh":
        k = np.float32(soft)
        y = np.arcsinh(k * x) / np.float32(math.asinh(soft))
    else:
        y = x
    y = np.nan_to_num(y, nan=0.0)
    return (np.clip(y, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _bin2(a: np.ndarray) -> np.ndarray:
    """2x2 mean (odd edges replicated), float32."""
    ny, nx = a.shape
    if ny % 2:
        a = np.concatenate([a, a[-1:, :]], axis=0)
    if nx % 2:
        a = np.concatenate([a, a[:, -1:]], axis=1)
    a = a.astype(np.float32, copy=False)
    return 0.25 * (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2])


@dataclass
class LoadedImage:
    """One frame in memory with what the display needs."""

    rel: str
    path: Path
    mtime: float
    image: Image
    top_down: bool
    stats: dict[str, float]
    levels: list[np.ndarray] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: the frame minus every fitted star of the last crowded detection (layer "residual"), its pyramid
    residual_levels: list[np.ndarray] = field(default_factory=list, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape

    @property
    def n_levels(self) -> int:
        ny, nx = self.shape
        n = 1
        while max(ny, nx) > TILE and n < 16:
            ny, nx = (ny + 1) // 2, (nx + 1) // 2
            n += 1
        return n

    def set_residual(self, residual: np.ndarray | None) -> None:
        """Keep the residual frame of a detection (image orientation; None forgets it)."""
        with self.lock:
            self.residual_levels = []
            if residual is not None:
                d = residual if self.top_down else residual[::-1]
                d = np.where(np.isfinite(d), d, np.float32(self.stats["median"])).astype(np.float32)
                self.residual_levels.append(d)

    @property
    def has_residual(self) -> bool:
        return bool(self.residual_levels)

    def level(self, k: int, layer: str = "frame") -> np.ndarray:
        """Display array at binning 2**k (display orientation, NaN replaced by the median) of the
        frame or (``layer="residual"``) of its residual.
        """
        if layer == "residual":
            with self.lock:
                if not self.residual_levels:
                    raise PsfkitError("no residual for this image: detect with deblend first")
                while len(self.residual_levels) <= k:
                    self.residual_levels.append(_bin2(self.residual_levels[-1]))
                return self.residual_levels[k]
        with self.lock:
            if not self.levels:
                d = self.image.data
                d = d if self.top_down else d[::-1]
                d = np.where(np.isfinite(d), d, np.float32(self.stats["median"])).astype(np.float32, copy=False)
                self.levels.append(d)
            while len(self.levels) <= k:
                self.levels.append(_bin2(self.levels[-1]))
            return self.levels[k]

    def tile_png(self, k: int, tx: int, ty: int, *, layer: str = "frame", **stretch: Any) -> bytes:
        """PNG of tile (tx, ty) of level k (of the frame or its residual); tile rows counted from the
        top of the display.
        """
        from PIL import Image as PILImage

        arr = self.level(k, layer)
        ny, nx = arr.shape
        if tx * TILE >= nx or ty * TILE >= ny:
            raise PsfkitError(f"tile ({tx}, {ty}) is outside level {k} ({nx} x {ny} px)")
        block = arr[ty * TILE:(ty + 1) * TILE, tx * TILE:(tx + 1) * TILE]
        u8 = stretch_to_uint8(block, **stretch)
        buf = io.BytesIO()
        PILImage.fromarray(u8, mode="L").save(buf, format="PNG", compress_level=1)
        return buf.getvalue()

    def info(self) -> dict[str, Any]:
        img = self.image
        ny, nx = self.shape
        auto = auto_stretch_params(self.stats)
        return {
            "path": self.rel,
            "name": self.path.name,
            "width": nx,
            "height": ny,
            "top_down": self.top_down,
            "pixel_scale": img.pixel_scale,
            "scale_rule": img.scale_rule,
            "gain": img.gain,
            "saturation": img.saturation,
            "exptime": img.exptime,
            "date_obs": img.date_obs,
            "has_wcs": img.wcs is not None,
            "tile": TILE,
            "levels": self.n_levels,
            "stats": self.stats,
            "auto_stretch": auto,
            "coordinates": "0-based pixel centres, x = column, y = row; "
                           + ("row 0 shown at the top (ROWORDER=TOP-DOWN)" if self.top_down
                              else "row 0 shown at the bottom (FITS, y up)"),
        }


def _robust_stats(data: np.ndarray) -> dict[str, float]:
    flat = data.ravel()
    step = max(1, flat.size // 1_000_000)
    sample = flat[::step]
    sample = sample[np.isfinite(sample)]
    med = float(np.median(sample))
    lo, p_hi, hi = (float(v) for v in np.percentile(sample, [0.0, 99.995, 100.0]))
    return {"min": float(np.nanmin(data)), "max": float(np.nanmax(data)), "median": med,
            "sigma": robust_sigma(sample), "p_high": p_hi if p_hi > med else hi}


class ImageStore:
    """A small LRU cache of loaded frames, safe under concurrent requests.

    Parameters
    ----------
    max_images : int
        Frames kept in memory at once.
    """

    def __init__(self, *, max_images: int = 3) -> None:
        self.max_images = max_images
        self._items: OrderedDict[str, LoadedImage] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, rel: str, path: Path) -> LoadedImage:
        """The loaded frame at ``path`` (loaded once even when asked by many requests at once)."""
        key = str(path)
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            raise PsfkitError(f"{rel}: no such file") from None
        with self._lock:
            item = self._items.get(key)
            if item is not None and item.mtime == mtime:
                self._items.move_to_end(key)
                return item
            load_lock = self._loading.setdefault(key, threading.Lock())
        with load_lock:
            with self._lock:
                item = self._items.get(key)
                if item is not None and item.mtime == mtime:
                    return item
            image = load_image(path)
            if image.data.size > MAX_PIXELS:
                raise PsfkitError(f"{rel}: {image.data.size} pixels is more than this viewer holds ({MAX_PIXELS})")
            item = LoadedImage(rel=rel, path=path, mtime=mtime, image=image,
                               top_down=str(image.meta.get("roworder", "")).upper() == "TOP-DOWN",
                               stats=_robust_stats(image.data))
            with self._lock:
                self._items[key] = item
                self._items.move_to_end(key)
                while len(self._items) > self.max_images:
                    self._items.popitem(last=False)
            return item
