"""Benchmarks for mmipc: ``python -m benchmarks`` lists them, ``python -m benchmarks NAME`` runs one.

Every benchmark is a module of this package (no leading underscore) with:

* ``DESCRIPTION``: one line shown by ``python -m benchmarks``;
* ``add_arguments(parser)`` (optional): its own command-line options, added after the common
  ones (``--quick``, ``--json``, ``--repeat``, ``--start-method``, ``--only``; see
  ``_harness.add_common_arguments``);
* ``run(args) -> int``: runs it and returns the process exit status.

``_harness`` holds what they share: running each cell in fresh processes, repeats and the
best-of-N, machine information, the table, the JSON file and the PASS/FAIL list of targets.
"""
