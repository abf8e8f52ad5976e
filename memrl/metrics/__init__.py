"""Quality (FID/KID) and memorization metrics."""
