"""Data in: the manifest contract, the readers of each data set layout, ingest checks, the torch Dataset."""
