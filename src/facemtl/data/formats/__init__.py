"""One reader module per dataset format (DATASETS.md)."""
