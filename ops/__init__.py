"""Operations: benchmarks and helpers run from the repository (python -m ops.bench)."""
