"""``medrecon reconstruct``: inputs, measurements, batching engine, outputs and the run ledger."""
