"""The `polarpack` command line: a thin click layer over the public `polarpack` API."""
