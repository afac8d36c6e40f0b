"""One reader module per dataset format (layouts and labels: ``docs/datasets.md``)."""
