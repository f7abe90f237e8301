"""Object context per target person: top-N object boxes and 2048-d RoI appearance features.

Used by the DVC stage `objects` (stages/objects.py -> core.features.objects.run) and, for new
photos, by `ctxemo predict` through the one public per-image entry point
`core.features.extractor.ObjectFeatureExtractor`.

Boxes come from the data set (`objects.boxes: dataset`, a CSV `image_path,x1,y1,x2,y2,label,score`
under `data.root`, e.g. the generated demo's object_boxes.csv) or from a torchvision Faster R-CNN
ResNet-50 FPN (`objects.boxes: detector`). Features follow the bottom-up-attention "C4" recipe:
the image is resized so its shorter side is `objects.image_size`, ResNet-50 conv1..layer3 give the
C4 map (stride 16), each box is RoIAligned to 14x14 on it, layer4 (res5) brings that to 7x7 and an
average pool gives the 2048-d vector. With detector boxes the detector's own ResNet-50 body is the
feature extractor (one set of weights).

Work is per image (the C4 map and RoI features are computed once however many people share the
image); output is per person: boxes overlapping the target's own person_box with IoU >=
`objects.exclude_iou` are removed (other people stay as context), boxes scoring below
`objects.score_threshold` are dropped, then the `objects.top_n` highest scores are kept.

Weights, in this order: `objects.weights` (a local state_dict file: ResNet-50 or Faster R-CNN for
dataset boxes, Faster R-CNN for the detector); the torchvision enum (ResNet50 IMAGENET1K_V1 or
Faster R-CNN COCO_V1) when its file is already in the torch hub cache; a seeded random init when
`objects.allow_random_weights` is true (demo data only); otherwise the enum is downloaded, and a
failure says how to supply the file.

Resuming: images are grouped into shards of `objects.shard_size`; each finished shard is written
to data/objects.shards/<split>/part-XXXXX.npz plus a .done.json marker holding a fingerprint of
its inputs and of every setting that changes the numbers. A rerun reuses matching shards and
computes the rest; after a split is assembled its shards are deleted. The shard folder sits
outside data/objects on purpose: `dvc repro` deletes a stage's outputs before running it, which
would throw away the work an interrupted run had finished.

Modules, each importing only those above it:
  weights     which weights (WeightsChoice, resolve_weights, weights_for_record), checked loading
  roi_model   the RoI feature model (C4 map, RoIAlign, res5), image preparation
  selection   which boxes a person gets (IoU exclusion, top_n by score)
  inputs      boxes file, split manifests, shard plans, settings fingerprint
  extractor   one image's objects (people_objects) and the public ObjectFeatureExtractor
  shards      shard files and markers
  worker      per-image worker; ShardWorker computes and writes whole shards (Ray Data or local)
  execution   running the worker: Ray Data actor pool or in-process loop
  assembly    shards -> the split's arrays, index.parquet, meta.json
  objects     the stage's run()
"""
