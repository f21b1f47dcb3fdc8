"""The model's lifecycle: a backend that loads, warms up and speaks, owned by one manager."""
