"""`medray demo`: the whole platform end to end, on this machine, in one command.

run.py holds the stages (local S3 server, datasets, training, search, promotion, Serve),
report.py the results table and report.html; the local S3 server itself is
cluster/local_s3.py, the same launcher the tests use.
"""

from medray.demo.run import run_demo

__all__ = ["run_demo"]
