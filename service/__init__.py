"""The HTTP API (Falcon) and the `wjp` command line."""
