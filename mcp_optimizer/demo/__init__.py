"""The one-command demo (``scripts/demo``): the operator for real on the local control plane."""
