"""The papers' tables and ablations as runnable recipes."""
