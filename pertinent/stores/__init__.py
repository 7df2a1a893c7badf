"""Storage backends behind one `Store` protocol (`base.py`), one file per backend."""
