"""Training methods (losses, outlier sampling, the loop). Filled in by the training work."""
