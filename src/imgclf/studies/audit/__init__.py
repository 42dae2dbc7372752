"""check --deep: what a folder of images hides (frozen features, label issues, near-duplicates, outliers)."""
