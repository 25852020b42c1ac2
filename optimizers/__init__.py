"""Offline model optimisation (``tenfold optimize``): graph cleanup, int8 quantisation,
ONNX Runtime offline optimisation, fp16 for GPUs and tuning, each pass gated by parity
on held-out data, written as a new model version with a manifest and a benchmark
against PyTorch eager. Nothing on the serving path imports this package."""
