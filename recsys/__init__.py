"""The `recsys` command line: one entry point over every step (`recsys --help`)."""
