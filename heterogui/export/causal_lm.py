"""A merged decoder or GPT-2 as a Hugging Face causal-LM folder (``AutoModelForCausalLM``).

The merge is first held as one decoder network (``fusion.merged.as_network``: the two
language-model heads, each reading the merged stream through its unmerge matrix, are averaged
into one head, so the folder's logits are the mean of the merge's two heads' logits), then
written as a transformers model of the parents' architecture with per-layer widths padded to
uniform (``heterogui.models.hf.decoder_io``: exact zero groups and neurons). Embeddings are
untied (``tie_word_embeddings: false``): the merged embedding writes the stream and the merged
head reads it through different transforms. Next to the model: model A's tokenizer files, a
generation config (model A's, else one from the config's token ids), recipe.yaml, report.json
and the model card.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from heterogui.errors import ExportError, ModelLoadError
from heterogui.export.hf import PADDED_NOTE
from heterogui.export.job import (
    HF_CAUSAL_LM_FORMAT,
    OR_HETEROGUI,
    Exporter,
    ExportJob,
    copy_present,
)
from heterogui.fusion.merged import MergedModel, as_network
from heterogui.models.decoder import DecoderNetConfig
from heterogui.models.gpt2 import GPT2NetConfig
from heterogui.models.hf.common import CAUSAL_LM_FAMILIES, quiet_transformers
from heterogui.models.hf.decoder_io import causal_lm, uniform_heads
from heterogui.models.hf.gpt2_io import check_heads, gpt2_lm

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)
GENERATION_FILE = "generation_config.json"
# the families one causal-LM folder holds: Llama-type decoders (Llama, Qwen2, Mistral) and GPT-2


def check_causal_lm(model: MergedModel) -> DecoderNetConfig | GPT2NetConfig:
    """Return the trunk config of a fully merged decoder or GPT-2, or raise.

    The merge is of those families (``Exporter.check`` refused others).

    Raises:
        ExportError: a partial zip, or head counts transformers cannot hold.
    """
    config = model.spec.trunk_config
    full = config.num_layers + CausalLMExporter.closing
    if model.spec.stop != full:
        raise ExportError(
            f"the merge stops at block {model.spec.stop}, but one causal LM needs every layer "
            f"merged: merge with a full zip (stop: null){OR_HETEROGUI}"
        )
    if isinstance(config, GPT2NetConfig):
        check_heads(config)
    else:
        uniform_heads(config)
    return config


class CausalLMExporter(Exporter):
    """A Hugging Face causal-LM folder (``AutoModelForCausalLM.from_pretrained`` loads it)."""

    name = HF_CAUSAL_LM_FORMAT
    description = "Hugging Face causal language model folder (save_pretrained)"
    reader = "hf"
    families = CAUSAL_LM_FAMILIES
    closing = 2  # a full merge stops at num_layers + 2 (check_causal_lm)

    def check_model(self, model: MergedModel) -> None:
        """Refuse merges one causal LM cannot hold (partial zips, head counts ...)."""
        check_causal_lm(model)

    def write(self, job: ExportJob, folder: Path) -> None:
        """Write the merged decoder, its tokenizer, generation config and side files."""
        try:
            network = as_network(job.model)
        except ModelLoadError as exc:
            raise ExportError(str(exc)) from exc
        build = gpt2_lm if isinstance(network.config, GPT2NetConfig) else causal_lm
        model = build(network, job.hf_dtype)
        with quiet_transformers():
            model.save_pretrained(folder, safe_serialization=True)
        source = job.source_folder
        copy_present(TOKENIZER_FILES, source, folder)
        if source is not None and (source / GENERATION_FILE).is_file():
            shutil.copyfile(source / GENERATION_FILE, folder / GENERATION_FILE)
        else:
            from transformers import GenerationConfig

            GenerationConfig.from_model_config(model.config).save_pretrained(folder)
        job.write_side_files(
            folder,
            note=f"{PADDED_NOTE}; the merge's two language-model heads are averaged into one",
        )


CAUSAL_LM = CausalLMExporter()
