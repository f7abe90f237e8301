"""Generated demo data set: EMOTIC-format (or CAER-S-format) images whose labels follow
known rules from the cues the relational model uses.

Public entry: ``generate(out_dir, images, seed, fmt) -> summary dict``; the command is
``ctxemo synth [--out DIR --images N --seed S --format emotic|caers]`` (defaults: the
`synth` section of params.yaml). The same (images, seed, fmt) gives byte-identical files.

Modules, top down:

* output       -- `generate`: argument checks, staging folder, atomic publish
* emotic       -- EMOTIC writer: JPEGs, Annotations.mat, CSV layout, object_boxes.csv,
                  synth_meta.json and synth_truth.jsonl
* caers        -- CAER-S writer: train/test class folders, face_boxes.txt
* scenes       -- scene sampling and object placement, splits, per-image random streams
* rules        -- the label rules (body cues, proximity and size of objects, clusters,
                  annotators); their docstring describes the generative model
* canvas, draw_people, draw_objects -- the drawing
"""
from core.synth.output import FORMATS, generate

__all__ = ["FORMATS", "generate"]
