"""The star table's schema: every column's name, dtype and unit, in one place.

:func:`psfkit.fit_stars` and :func:`psfkit.find_stars` build their tables from it, so a frame
without a single star returns a table with the same columns (and dtypes and units) as a
frame with many.  The meaning of each column is in ``docs/columns.md``.

Examples
--------
>>> from psfkit.psf.columns import empty_star_table
>>> t = empty_star_table()
>>> len(t), t["x_fit"].unit, t["flags"].dtype
(0, Unit("pix"), dtype('int64'))
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["STAR_COLUMNS", "COLUMN_ORDER", "FIND_COLUMNS", "REJECTION_COLUMNS", "HFR_COLUMNS", "empty_star_table",
           "set_units"]

_I, _F = np.int64, np.float64
_PX, _AS = "pix", "arcsec"

#: every column :func:`psfkit.fit_stars` can return, in order: name -> (dtype, unit or None).
#: The ``*_arcsec`` columns come only with a known image scale, ``ra``/``dec`` only with a celestial WCS.
STAR_COLUMNS: dict[str, tuple[Any, str | None]] = {
    "id": (_I, None),
    **{k: (_F, _PX) for k in ("x_fit", "y_fit", "x_err", "y_err", "fwhm_x", "fwhm_y", "fwhm", "fwhm_x_err",
                              "fwhm_y_err", "fwhm_err")},
    **{k: (_F, _AS) for k in ("fwhm_x_arcsec", "fwhm_y_arcsec", "fwhm_arcsec", "fwhm_x_arcsec_err",
                              "fwhm_y_arcsec_err", "fwhm_arcsec_err")},
    "roundness": (_F, None), "roundness_err": (_F, None),
    "angle": (_F, "deg"), "angle_err": (_F, "deg"),
    **{k: (_F, None) for k in ("background", "background_err", "amplitude", "amplitude_err", "beta", "beta_err",
                              "flux_fit", "flux_err")},
    "mag": (_F, "mag"), "mag_err": (_F, "mag"),
    "snr": (_F, None), "rmse": (_F, None), "reduced_chi2": (_F, None),
    "n_pixels_fit": (_I, None), "iterations": (_I, None), "flags": (_I, None),
    "x_init": (_F, _PX), "y_init": (_F, _PX),
    "ra": (_F, "deg"), "dec": (_F, "deg"),
}
#: the order of a star table's main columns
COLUMN_ORDER = list(STAR_COLUMNS)
#: what :func:`psfkit.find_stars` adds
FIND_COLUMNS: dict[str, tuple[Any, str | None]] = {"peak_significance": (_F, None), "detection_pass": (_I, None)}
#: what ``find_stars(..., keep_rejected=True)`` adds
REJECTION_COLUMNS: dict[str, tuple[Any, str | None]] = {"accepted": (bool, None), "reject_reason": ("U16", None)}
#: the half-flux radius find_stars measures last (``hfr_arcsec`` where the image scale is known)
HFR_COLUMNS: dict[str, tuple[Any, str | None]] = {"hfr": (_F, _PX), "hfr_arcsec": (_F, "arcsec")}
_ARCSEC = tuple(k for k in STAR_COLUMNS if "arcsec" in k)


def empty_star_table(*, arcsec: bool = False, radec: bool = False, find: bool = False,
                     rejection: bool = False) -> Any:
    """A star table with no row and the columns a table with rows would have.

    Parameters
    ----------
    arcsec : bool
        Include the ``*_arcsec`` columns (the image scale is known).
    radec : bool
        Include ``ra`` and ``dec`` (the image has a celestial WCS).
    find : bool
        Include :func:`psfkit.find_stars`' columns (``peak_significance``, ``detection_pass``).
    rejection : bool
        Include ``accepted`` and ``reject_reason`` (``keep_rejected=True``).

    Returns
    -------
    astropy.table.Table

    Examples
    --------
    >>> "fwhm_arcsec" in empty_star_table(arcsec=True).colnames, "ra" in empty_star_table().colnames
    (True, False)
    """
    from astropy.table import Table

    schema = {k: v for k, v in STAR_COLUMNS.items()
              if (arcsec or k not in _ARCSEC) and (radec or k not in ("ra", "dec"))}
    if find:
        schema.update(FIND_COLUMNS)
    if rejection:
        schema.update(REJECTION_COLUMNS)
    if find:
        schema.update({k: v for k, v in HFR_COLUMNS.items() if arcsec or k != "hfr_arcsec"})
    table = Table({k: np.zeros(0, dtype=dtype) for k, (dtype, _) in schema.items()})
    set_units(table)
    for k, (_, unit) in schema.items():
        if unit is not None and table[k].unit is None:
            table[k].unit = unit
    return table


def set_units(table: Any) -> None:
    """Give the schema's columns of ``table`` their units (in place; other columns are left alone).

    Examples
    --------
    >>> from astropy.table import Table
    >>> t = Table({"fwhm": [2.5], "snr": [40.0]})
    >>> set_units(t)
    >>> str(t["fwhm"].unit), t["snr"].unit
    ('pix', None)
    """
    import astropy.units as u

    for name in table.colnames:
        unit = STAR_COLUMNS.get(name, (None, None))[1]
        if unit is not None:
            table[name].unit = u.Unit(unit)
