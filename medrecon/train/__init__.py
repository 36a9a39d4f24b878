"""Training: the loop (``loop``), its settings, optimiser and schedule, run directory, resume state,
validation, DDP helpers, and the ``medrecon train`` entry point (``run``). See docs/training.md."""
