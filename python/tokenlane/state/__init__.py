"""Shared state of the request-path stages, behind one interface per stage, with a backend per URL."""
