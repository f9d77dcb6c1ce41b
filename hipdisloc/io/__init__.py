"""Reading radiographs and cohort manifests."""
