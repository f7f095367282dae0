"""Pulse's benchmark: Pulse against Quix Streams, textbook Faust and a bare consumer (issue 4)."""
