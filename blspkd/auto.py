"""Registration of ``BlspKdConfig`` with transformers' ``AutoConfig`` (model type "blspkd").

``AutoConfig.from_pretrained(model_dir)`` then reads a BLSP-KD config.json without ``trust_remote_code`` (no code is
ever loaded from a model directory). The model itself loads with ``SpeechLLM.from_pretrained`` or
``BlspKdModel.from_pretrained``: it is a composite ``torch.nn.Module`` (two base models from their own directories plus
the trained weights), not a transformers ``PreTrainedModel``, so ``AutoModel`` cannot build it.

Importing transformers costs a second or two, which every ``python -m blspkd.bin.*`` command would pay if
``import blspkd`` registered right away; instead an import hook registers as soon as transformers' configuration_auto
module (where ``AutoConfig`` lives) has been executed, or at once when it already is.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys

AUTO_CONFIG_MODULE = "transformers.models.auto.configuration_auto"


def register(configuration_auto=None) -> None:
    """Register now (idempotent)."""
    from blspkd.models.configuration_blspkd import BlspKdConfig

    if configuration_auto is None:
        from transformers.models.auto import configuration_auto
    configuration_auto.AutoConfig.register(BlspKdConfig.model_type, BlspKdConfig, exist_ok=True)


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds configuration_auto through the other finders and registers once its module body has run."""

    def find_spec(self, fullname, path, target=None):
        if fullname != AUTO_CONFIG_MODULE:
            return None
        sys.meta_path.remove(self)  # one use: the next lookup (below) and later imports go to the normal finders
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            register(module)

        spec.loader.exec_module = exec_then_register
        return spec


def register_when_imported() -> None:
    if AUTO_CONFIG_MODULE in sys.modules:
        register(sys.modules[AUTO_CONFIG_MODULE])
    elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
