"""``medrecon evaluate``: degrade, reconstruct with every method, score, report and draw."""
