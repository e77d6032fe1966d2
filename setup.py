"""blspkd: BLSP-KD speech-LLM toolkit (Whisper encoder + CIF adapter + KD from a text LLM + Partial LoRA).

Install through ``tools/install.sh`` (it installs torch and espnet first, the way they must be installed);
``install_requires`` deliberately lists neither torch nor espnet so pip never resolves them on its own.
"""
from setuptools import find_packages, setup

setup(
    name="blspkd",
    version="0.1.0",
    description="BLSP-KD: bootstrapping language-speech pre-training via knowledge distillation",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["blspkd", "blspkd.*"]),
    # the Whisper English spelling map used by the WER normaliser (MIT, see blspkd/scoring/english_spelling.LICENSE)
    package_data={"blspkd.scoring": ["english_spelling.json", "english_spelling.LICENSE"],
                  "blspkd": ["web/index.html", "web/app.js", "web/style.css"]},  # the page of blspkd.bin.serve
    install_requires=[
        "transformers>=5,<6",
        "peft>=0.17",
        "safetensors",
        "kaldiio",
        "sentencepiece",
        "sacrebleu>=2.4",
        "jiwer>=3",
        "soundfile",
        "pyyaml",
        "tqdm",
    ],
    extras_require={"gguf": ["gguf"], "serve": ["fastapi", "uvicorn"],
                    "test": ["pytest", "pytest-timeout", "openai", "httpx", "selenium"]},
    entry_points={},
)
