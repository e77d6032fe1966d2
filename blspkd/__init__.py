"""blspkd: BLSP-KD speech-LLM toolkit."""

__version__ = "0.1.0"
