"""Report: Table 2 / Table 3 across folds, and the statistics behind them (pure functions)."""
