"""HTTP routes: thin — parse, call the serving layer, shape the answer."""
