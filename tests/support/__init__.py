"""What the tests and benchmarks need from a source checkout, and nothing the package ships.

* :mod:`tests.support.shared`: where the development models and data live (``shared/`` beside the
  clone, or the environment's paths; CI sets ``MCP_OPTIMIZER_EMBEDDING_MODEL_PATH``).
* :mod:`tests.support.devsets`: the retrieval dev sets and their scoring (tests and ``bench``).
* :mod:`tests.support.toolhive`: ToolHive's real CRDs and objects on the test control plane.
* :mod:`tests.support.crds`: a CRD created, or replaced where it exists (ours and ToolHive's).
* :mod:`tests.support.faults`: real damage to an index file (garbage, truncation, a held lock).
* :mod:`tests.support.backends`: the index's two databases (SQLite, PostgreSQL) as the ``settings``
  fixture's parameter; a conftest imports its fixtures where its tests run on both.
* :mod:`tests.support.fake_embedder`: a deterministic stand-in for the model in unit tests that do not
  test retrieval.

The MCP servers the tests run (:mod:`mcp_optimizer.testing`) stay in the package: the demo runs them.
"""
