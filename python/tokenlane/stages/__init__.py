"""The stages of the request path, one module each (see docs and design.md's "request path")."""
