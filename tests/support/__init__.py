"""Helpers shared by the tests (no fixtures, no tests): the project's paths, running the
`medray` command as a user does, the small WDBC training config, registry contents for
serving, hostile files."""
