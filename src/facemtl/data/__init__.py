"""Data: the synthetic face generator, dataset format readers, transforms and mixing."""
