"""Software-defined assets, one module per lineage stage; each is a thin wrapper over engine code."""
