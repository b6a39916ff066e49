"""Stars on every plane of a colour image: one table with a ``channel`` column (Siril's ``layer``)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from psfkit.io.colour import table_to_frame
from psfkit.io.image import load_planes

__all__ = ["find_stars_by_channel"]


def find_stars_by_channel(
    path: Any,
    *,
    channels: Sequence[str | int] | str | None = None,
    **options: Any,
) -> Any:
    """Find stars on every plane of a colour image (or stack) and stack the tables, with a ``channel`` column.

    Like Siril's ``layer`` column: one row per star per plane.  Bayer planes
    are mapped back to the full frame (:func:`table_to_frame`).

    Parameters
    ----------
    path : str or path-like
        The image file.
    channels : sequence or str, optional
        Planes to measure (see :func:`psfkit.io.image.load_planes`); default all:
        R, G, B for colour images and Bayer mosaics.
    **options
        ``hdu``, ``focal_length``, ``pixel_size``, ``binning``, ``pixel_scale``, ``max_pixels``: as for
        :func:`psfkit.load_image`; every other keyword is passed to :func:`psfkit.find_stars`.

    Returns
    -------
    astropy.table.Table
        The tables one after the other, a str ``channel`` column first;
        ``meta["channels"]`` holds each plane's summary.

    Examples
    --------
    A colour FITS file (3, ny, nx) gives one row per star and plane:

    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from astropy.io import fits
    >>> from psfkit.datasets.simulate import simulate_field
    >>> data, truth = simulate_field((96, 96), 6, fwhm=3.0, seed=0, edge=12, min_separation=15)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = Path(folder) / "rgb.fits"
    ...     fits.writeto(path, np.stack([data, data, data]).astype(np.float32))
    ...     stars = find_stars_by_channel(path)
    >>> len(stars), sorted(set(stars["channel"].tolist()))
    (18, ['B', 'G', 'R'])
    """
    from astropy.table import Column, vstack

    from psfkit.detect.find import find_stars

    load_options = ("hdu", "focal_length", "pixel_size", "binning", "pixel_scale", "max_pixels")
    planes = load_planes(path, channels=channels, **{k: options[k] for k in load_options if k in options})
    find_options = {k: v for k, v in options.items() if k not in load_options}
    tables = []
    per_channel = {}
    for img in planes:
        name = str(img.meta.get("channel") if img.meta.get("channel") is not None else "grey")
        table = table_to_frame(find_stars(img, **find_options), img)
        table.add_column(Column([name] * len(table), name="channel", dtype="U9"), index=0)
        per_channel[name] = {"summary": table.meta.get("summary"), "pixel_scale": img.pixel_scale,
                             "channel_rule": img.meta.get("channel_rule", ""),
                             # model="auto": each plane's own PSF (or its fallback), and why
                             **{k: table.meta[k] for k in ("psf_model", "psf_choice") if k in table.meta}}
        tables.append(table)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # metadata merge conflicts: the first table's meta is kept
        out = vstack(tables, metadata_conflicts="silent")
    out.meta = dict(tables[0].meta)
    if len(tables) > 1:  # one plane's PSF is not the others': each plane's choice is in meta["channels"]
        for key in ("frame_psf", "psf_model", "psf_choice", "photometry_psf"):
            out.meta.pop(key, None)
    out.meta["channels"] = per_channel
    return out
