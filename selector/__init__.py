"""convplan.selector: networks, the memory model and the ILP that picks algorithms per layer.

- `network/`: what a network is (description, checks, limits, Network) and the one loader
  (`network.zoo`: built-in names, JSON descriptions, ONNX files);
- `onnx/`: ONNX import and export, and the reference that runs a network in onnxruntime;
- `lowering`: a network and a choice of algorithms as an executable program (the one
  layout/copy rule, which the ILP prices too);
- `memory`: the memory model, the live bytes at every step of a program;
- `planning/`: the candidates, the ILP, the plan documents;
- `inputs`: a network's inputs (seeded, checked, read from .npy / .npz without trusting them);
- `runner`: run a network or a plan, measure it, check it against the reference;
- `baselines`: assignments that need no measurements (the tests' and the benchmarks').

Depends on `profiles` and `kernels`, never on `api`.
"""
