"""The pipeline's stages, one module or package each: prepare, detect, crop, train, report,
predict. The entry points ``python -m hipdisloc.<stage>`` (``hipdisloc/<stage>.py``) only parse
the command line and call them."""
