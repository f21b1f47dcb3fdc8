"""The model's lifecycle: a backend that loads, warms up and speaks, owned by one manager, and
the weights folder it loads (`model_files.py`, `manifest.py`)."""
