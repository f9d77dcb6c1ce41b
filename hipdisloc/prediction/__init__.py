"""Score new radiographs with a trained sweep's fold ensemble, and export it.

Modules, from the bottom up:

- :mod:`~hipdisloc.prediction.inputs`: a file, a folder or a manifest CSV -> input items
  (file, image id, THA side or unknown, patient id) and the redaction of identifiers;
- :mod:`~hipdisloc.prediction.study`: what a sweep folder holds (fold models, the settings the
  images were prepared and cropped with, detector, calibration, operating point);
- :mod:`~hipdisloc.prediction.hips`: one radiograph -> prepared square -> hip boxes -> crops,
  exactly as the prepare and crop stages make them;
- :mod:`~hipdisloc.prediction.ensemble`: the fold ensemble (mean sigmoid score, spread) and its
  saliency maps;
- :mod:`~hipdisloc.prediction.batch`: the streaming batch loop, error rows, the output files;
- :mod:`~hipdisloc.prediction.export`: TorchScript and ONNX export, checked against eager;
- :mod:`~hipdisloc.prediction.model_card`: the model card (Markdown + JSON);
- :mod:`~hipdisloc.prediction.preview`: a picture of a run (overlays with their scores).

``python -m hipdisloc.predict`` is the command line (:mod:`hipdisloc.predict`).
"""
