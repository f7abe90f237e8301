"""The ctxemo library: everything the stages, flows, sweeps and predict share.

    data/        the manifest contract, readers of EMOTIC and CAER-S, ingest checks, the torch Dataset
    synth/       the generated demo data set (EMOTIC- or CAER-S-format scenes with cue-driven labels)
    detection/   faces of target persons (the detect stage) and people in new photos (predict)
    features/    object boxes and RoI features per person (the objects stage, predict)
    graph/       the label co-occurrence prior and the label word vectors (ELD's graph)
    training/    the epoch loop, the Ray Train driver, the frozen-backbone cache
    evaluation/  metrics equal to sklearn's, thresholds, reports, the evaluation path
    inference.py a trained model package and its scoring loop
    params.py, workspace.py, env.py   settings: params.yaml, every path, every environment variable
    storage.py, tracking.py, ray_utils.py, faults.py   S3, MLflow, Ray start-up, test fault points

Imports only point down: core imports models/, never stages/ or pipelines/.
"""
