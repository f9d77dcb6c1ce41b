"""Score new radiographs with a trained sweep's fold ensemble, and export it.

Modules, from the bottom up:

- :mod:`~hipdisloc.stages.predict.inputs`: a file, a folder or a manifest CSV -> input items
  (file, image id, THA side or unknown, patient id) and the redaction of identifiers;
- :mod:`~hipdisloc.stages.predict.study`: what a sweep folder holds (fold models, the settings the
  images were prepared and cropped with, detector, calibration, operating point);
- :mod:`~hipdisloc.stages.predict.hips`: one radiograph -> prepared square -> hip boxes -> crops,
  exactly as the prepare and crop stages make them;
- :mod:`~hipdisloc.stages.predict.ensemble`: the fold ensemble (mean sigmoid score, spread) and its
  saliency maps;
- :mod:`~hipdisloc.stages.predict.batch`: the streaming batch loop, error rows, the output files;
- :mod:`~hipdisloc.stages.predict.export`: TorchScript and ONNX export, checked against eager;
- :mod:`~hipdisloc.stages.predict.model_card`: the model card (Markdown + JSON);
- :mod:`~hipdisloc.stages.predict.preview`: a picture of a run (overlays with their scores).

- :mod:`~hipdisloc.stages.predict.run`: what the command does once its config is parsed.

``python -m hipdisloc.predict`` is the command line (:mod:`hipdisloc.predict`).
"""
