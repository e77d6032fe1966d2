"""Stage 3: teacher data from the frozen LLM reading the transcripts (token counts, continuations, answers).

Usage:
    # transcript token counts only (fast, no generation)
    python -m blspkd.bin.make_teacher_data --dump_dir dump/train --llm downloads/smollm2 --task tokens
    # teacher continuations, shard J of N (resumable), then merge into dump/train/continuation
    python -m blspkd.bin.make_teacher_data --dump_dir dump/train --llm downloads/smollm2 --num_shards 4 --shard 1
    python -m blspkd.bin.make_teacher_data --dump_dir dump/train --llm downloads/smollm2 --num_shards 4 --merge true
    # framed exactly as the trained model decodes: the system prompt and separator of the recipe's training configs
    python -m blspkd.bin.make_teacher_data --dump_dir dump/test --llm downloads/smollm2 \
        --model_configs "[conf/pretrain.yaml, conf/finetune.yaml]"
    # answers to spoken instructions/questions (the transcript is the question) -> dump/<set>/response
    python -m blspkd.bin.make_teacher_data --dump_dir dump/qa --llm DIR --task spoken_instruction --max_new_tokens 128

Options (also settable in a YAML file with --config): dump_dir, llm, task (tokens, or a teacher task of
blspkd/tasks.py: python -m blspkd.bin.tasks list), instruction, model_configs, system_prompt, separator,
max_new_tokens, batch_size, num_shards, shard, merge, device (auto|cpu|cuda), refusal_patterns;
--print_config shows all.
"""
from __future__ import annotations

import sys

from blspkd.bin._args import cli
from blspkd.teacher import TeacherConfig, framing_settings, merge, run_shard, teacher_task, write_utt2num_tokens
from blspkd.utils.config import ConfigError, parse_config
from blspkd.utils.logging import setup_logging


@cli
def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(TeacherConfig, argv, prog="python -m blspkd.bin.make_teacher_data", description=__doc__)
    if not cfg.dump_dir or not cfg.llm:
        raise ConfigError("--dump_dir and --llm are required")
    if cfg.task != "tokens":
        framing_settings(cfg)  # a bad model_configs file is a usage error, before any model is loaded
        teacher_task(cfg)
    setup_logging(cfg.log_level)
    if cfg.task == "tokens":
        from transformers import AutoTokenizer

        write_utt2num_tokens(cfg.dump_dir, AutoTokenizer.from_pretrained(cfg.llm))
    elif cfg.merge:
        merge(cfg)
    else:
        run_shard(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
