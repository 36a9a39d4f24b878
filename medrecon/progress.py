"""A progress bar over units of work (slices) with items done in its postfix, shared by the commands.

``progress=true`` (reconstruct, evaluate) shows a tqdm bar: slices done, slices per second and the ETA, with
``items k/n`` after it; ``progress=false`` (or a rank other than 0) makes every call a no-op. tqdm is imported
only when a bar is shown (``tqdm.auto``: a widget in Jupyter, text in a terminal).
"""

from __future__ import annotations


class Progress:
    """A tqdm bar over ``total_units`` units (``None``: unknown, no ETA) and ``total_items`` items.

    Args:
        total_units: units (slices) the run will compute, or ``None`` when some item's size is unknown.
        total_items: items (volumes) of the run, shown as ``items k/n``.
        enabled: show the bar; ``False`` makes every method a no-op.
        desc: the bar's label (the command: ``reconstruct``, ``evaluate``).
        unit: what one unit is called (``slice``).
    """

    def __init__(
        self,
        total_units: int | None,
        total_items: int,
        enabled: bool,
        desc: str = "reconstruct",
        unit: str = "slice",
    ) -> None:
        self.items, self.total_items = 0, total_items
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_units, unit=unit, desc=desc, dynamic_ncols=True)
            self.bar.set_postfix_str(f"items 0/{total_items}")

    def units_done(self, n: int) -> None:
        """``n`` more units are finished (the engine's ``on_batch``)."""
        if self.bar is not None and n:
            self.bar.update(n)

    def item_done(self) -> None:
        """One more item is finished (written, scored, skipped or failed)."""
        self.items += 1
        if self.bar is not None:
            self.bar.set_postfix_str(f"items {self.items}/{self.total_items}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
