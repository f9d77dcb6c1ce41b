"""hipdisloc: hip dislocation risk after total hip arthroplasty from AP pelvis radiographs."""

__version__ = "0.1.0"
