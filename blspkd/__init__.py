"""blspkd: BLSP-KD speech-LLM toolkit.

``from blspkd import SpeechLLM`` is the Python API (blspkd/api.py). Importing blspkd registers ``BlspKdConfig`` (model
type "blspkd") with transformers' ``AutoConfig`` (blspkd/auto.py), so ``AutoConfig.from_pretrained(export_dir)`` works
without ``trust_remote_code``; the registration waits until transformers' auto classes are imported, so that
``import blspkd`` (every ``python -m blspkd.bin.*`` command) does not pay transformers' import time.
"""

from blspkd.auto import register_when_imported

__version__ = "0.1.0"
__all__ = ["SpeechLLM"]

register_when_imported()


def __getattr__(name: str):
    if name == "SpeechLLM":
        from blspkd.api import SpeechLLM

        return SpeechLLM
    raise AttributeError(f"module 'blspkd' has no attribute {name!r}")
