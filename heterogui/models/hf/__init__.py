"""Hugging Face transformers <-> heterogui families (docs/method.md sec. 2).

``bert_io`` and ``vit_io`` convert transformers BERT and ViT models into networks of the bert
and vit families (weights copied by name) and back; ``common`` loads folders and hub ids
(never with remote code, safetensors only).
"""
