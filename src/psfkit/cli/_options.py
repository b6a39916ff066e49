"""The image-loading options every command shares (--hdu, --channel, --focal-length, --pixel-size,
--binning, --scale), and the one call that loads an image from them.  No science here: the rules
live in :mod:`psfkit.io.image` (see docs/formats.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

__all__ = ["hdu_option", "channel_option", "focal_length_option", "pixel_size_option", "binning_option",
           "image_options",
           "ImageOptions",
           "scale_option", "max_pixels_option", "load_from_options", "is_per_channel", "user_optics",
           "check_output_paths"]

CHANNEL_HELP = ("Plane to measure: luminance (RGB default), R, G, B, a plane number (stacks); Bayer mosaics: green "
                "(default), luminance (2x2 binned), R, G, B or mosaic.")
PER_CHANNEL_HELP = " 'all' or a list like R,G,B measures each plane (a 'channel' column)."


def hdu_option() -> Any:
    return typer.Option(None, "--hdu", help="FITS HDU to read: index or EXTNAME (default: the first holding an image).")


def channel_option(*, per_channel: bool = True) -> Any:
    text = CHANNEL_HELP + PER_CHANNEL_HELP if per_channel else CHANNEL_HELP
    return typer.Option(None, "--channel", help=text)


def focal_length_option() -> Any:
    return typer.Option(None, "--focal-length", help="Focal length in mm (wins over FOCALLEN).")


def pixel_size_option() -> Any:
    return typer.Option(None, "--pixel-size", help="Pixel size in um (wins over XPIXSZ).")


def binning_option() -> Any:
    return typer.Option(None, "--binning", help="The pixel size is the unbinned one: multiply it by this.")


def scale_option() -> Any:
    return typer.Option(None, "--scale", help="Image scale in arcsec/px (wins over everything else).")


def max_pixels_option() -> Any:
    return typer.Option(None, "--max-pixels", help="Largest image (pixel values, e.g. 4e8) to decode; default from the "
                        "machine's memory or PSFKIT_MAX_PIXELS (docs/security.md).")


def check_output_paths(outputs: list, inputs: list) -> None:
    """Refuse, before any work, an output that is an input or two outputs on one file (one-line PsfkitError)."""
    from psfkit.io.outputs import check_outputs

    check_outputs(outputs, inputs)


def user_optics(focal_length: float | None, pixel_size: float | None, binning: float | None,
                scale: float | None) -> dict:
    """The load_image keywords of the user's optics options."""
    return dict(focal_length=focal_length, pixel_size=pixel_size, binning=binning, pixel_scale=scale)


def is_per_channel(channel: str | None) -> bool:
    """Whether --channel asks for every plane ('all') or a list (R,G,B)."""
    return channel is not None and (channel.strip().lower() == "all" or "," in channel)


def load_from_options(image: Path, *, hdu: str | None = None, channel: str | None = None,
                      focal_length: float | None = None, pixel_size: float | None = None,
                      binning: float | None = None, scale: float | None = None,
                      max_pixels: str | None = None) -> Any:
    """:func:`psfkit.load_image` with the command line's options."""
    from psfkit.errors import PsfkitError
    from psfkit.io.image import load_image

    if is_per_channel(channel):
        raise PsfkitError(f"--channel {channel}: this command measures one plane; choose one (R, G, B, luminance ...)")
    return load_image(image, hdu=hdu, channel=channel, max_pixels=max_pixels,
                      **user_optics(focal_length, pixel_size, binning, scale))


class ImageOptions:
    """The image-loading options of one command call (what :func:`image_options` hands the command)."""

    __slots__ = ("hdu", "channel", "focal_length", "pixel_size", "binning", "scale", "max_pixels")

    def __init__(self, *, hdu: str | None = None, channel: str | None = None,
                 focal_length: float | None = None, pixel_size: float | None = None,
                 binning: float | None = None, scale: float | None = None,
                 max_pixels: str | None = None) -> None:
        self.hdu, self.channel, self.max_pixels = hdu, channel, max_pixels
        self.focal_length, self.pixel_size, self.binning, self.scale = focal_length, pixel_size, binning, scale

    def optics(self) -> dict:
        """The load_image keywords of the optics options."""
        return user_optics(self.focal_length, self.pixel_size, self.binning, self.scale)

    def load(self, image: Path, *, channel: Any = "given") -> Any:
        """:func:`psfkit.load_image` of ``image`` with these options (``channel`` overrides --channel)."""
        return load_from_options(image, hdu=self.hdu, channel=self.channel if channel == "given" else channel,
                                 focal_length=self.focal_length, pixel_size=self.pixel_size, binning=self.binning,
                                 scale=self.scale, max_pixels=self.max_pixels)


def image_options(*, per_channel: bool = False) -> Any:
    """Decorator: give a command the image-loading options (and --max-pixels), received as one ``opts: ImageOptions``.

    The command declares a parameter ``opts`` (no default) where the options go in its help; the
    decorator puts --hdu, --channel, --focal-length, --pixel-size, --binning and --scale there in
    the signature typer reads, and calls the command with them gathered in an :class:`ImageOptions`.
    """
    import functools
    import inspect

    def decorate(func: Any) -> Any:
        sig = inspect.signature(func, eval_str=True)
        shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)
                  for name, kind, default in (
                      ("hdu", str | None, hdu_option()),
                      ("channel", str | None, channel_option(per_channel=per_channel)),
                      ("focal_length", float | None, focal_length_option()),
                      ("pixel_size", float | None, pixel_size_option()),
                      ("binning", float | None, binning_option()),
                      ("scale", float | None, scale_option()),
                      ("max_pixels", str | None, max_pixels_option()))]
        params = []
        for p in sig.parameters.values():
            params += shared if p.name == "opts" else [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)]

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            opts = ImageOptions(**{p.name: kwargs.pop(p.name) for p in shared})
            return func(opts=opts, **kwargs)

        del command.__wrapped__  # typer must read the signature below, not the function's
        command.__signature__ = sig.replace(parameters=params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate
