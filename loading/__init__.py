"""The data layer: a rank's sample stream and the DALI loader that turns it into torch batches."""
