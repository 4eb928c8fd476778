"""The book's figures, drawn with seaborn in a colour-blind-safe palette."""

from __future__ import annotations

__all__ = ["use_book_style", "PALETTE"]

#: seaborn's "colorblind" palette (after Okabe and Ito), used by every figure.
PALETTE = "colorblind"


def use_book_style() -> None:
    """Set the seaborn theme every figure of the book uses (white grid, colour-blind palette)."""
    import matplotlib as mpl
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE)
    mpl.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150, "axes.titleweight": "bold", "figure.autolayout": False})
