"""DVC entry points: one module per stage in dvc.yaml, each only a main() (python -m stages.<name>)."""
