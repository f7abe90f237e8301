"""On top of the library: the ctxemo CLI, Prefect flows, Ray Tune sweeps, the registry gate, predict."""
