"""The train stage: a fold job (job) runs the stages it needs first (upstream) and one fold
(fold), tracked in W&B (tracking); the study's end (study) writes the tables and the report."""
