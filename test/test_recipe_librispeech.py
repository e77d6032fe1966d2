"""egs/librispeech: stage 1 (and 2) on a fake corpus in the real LibriSpeech layout, bad corpora, and the configs."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.fake_corpora import MAIN_ROOT, recipe_sandbox

from blspkd.data.kaldi_dir import read_kv, validate_data_dir

RECIPE = MAIN_ROOT / "egs" / "librispeech"
SETS = {"train-clean-100": "train_clean_100", "dev-clean": "dev_clean", "dev-other": "dev_other",
        "test-clean": "test_clean", "test-other": "test_other"}
STAGE_OPTS = ["--train_set", "train", "--valid_set", "dev_clean", "--test_sets", "dev_other test_clean test_other"]


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "LIBRISPEECH": ""}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def expected_text(upper: str) -> str:
    """Sentence case written independently of the recipe: first letter and the word 'i' (also in i'm) upper case."""
    words = []
    for w in upper.lower().split():
        head, sep, tail = w.partition("'")
        words.append(("I" if head == "i" else head) + sep + tail)
    s = " ".join(words)
    return s[0].upper() + s[1:]


@pytest.fixture(scope="module")
def stage1(fake_librispeech, tmp_path_factory) -> Path:
    recipe = recipe_sandbox(tmp_path_factory.mktemp("ls_recipe"), "librispeech")
    opts = f"--librispeech_dir {fake_librispeech.root} --train_sets train-clean-100"
    run(["./run.sh", "--stage", "1", "--stop_stage", "1", *STAGE_OPTS, "--local_data_opts", opts], recipe)
    return recipe


def test_stage1_data_dirs_match_the_corpus(stage1, fake_librispeech):
    data = stage1 / "data"
    for subset, name in SETS.items():
        d = data / name
        assert validate_data_dir(d) == []
        truth = fake_librispeech.transcripts[subset]
        text = read_kv(d / "text")
        assert list(text) == sorted(truth)  # LibriSpeech ids unchanged, byte order
        assert text == {utt: expected_text(t) for utt, t in truth.items()}
        utt2spk = read_kv(d / "utt2spk")
        assert utt2spk == {utt: utt.split("-")[0] for utt in truth}
        wav = read_kv(d / "wav.scp")
        for utt, path in wav.items():
            spk, chapter, _ = utt.split("-")
            assert Path(path) == fake_librispeech.root / subset / spk / chapter / f"{utt}.flac"
            assert Path(path).is_absolute()
    # data/train is the union of --train_sets (one subset here).
    assert read_kv(data / "train" / "text") == read_kv(data / "train_clean_100" / "text")
    # Only the requested training subset was prepared.
    assert not (data / "train_clean_360").exists()


def test_stage1_normalisation_examples(stage1):
    text = read_kv(stage1 / "data" / "train_clean_100" / "text")
    assert text["19-1000-0000"] == "He hoped there would be stew for dinner turnips and carrots"
    assert text["19-1000-0001"] == "I'm not sure that I can tell you what they said"


def test_stage1_speaker_sort_order(stage1):
    # 19-... sorts before 198-... in byte order ('-' < '8'); spk2utt follows utt2spk.
    spk2utt = read_kv(stage1 / "data" / "train_clean_100" / "spk2utt")
    assert list(spk2utt) == ["19", "198"]
    assert spk2utt["19"] == "19-1000-0000 19-1000-0001"


def test_stage1_rerun_is_skipped(stage1, fake_librispeech):
    opts = f"--librispeech_dir {fake_librispeech.root} --train_sets train-clean-100"
    proc = run(["./run.sh", "--stage", "1", "--stop_stage", "1", *STAGE_OPTS, "--local_data_opts", opts], stage1)
    assert "already prepared with the same options" in proc.stdout + proc.stderr


def test_data_sh_without_corpus_location(tmp_path):
    recipe = recipe_sandbox(tmp_path, "librispeech")
    proc = run(["local/data.sh"], recipe, check=False)
    assert proc.returncode == 1
    assert "pass --librispeech_dir /path/to/LibriSpeech" in proc.stderr


def test_missing_subset_names_the_path_and_the_fix(tmp_path, fake_librispeech):
    recipe = recipe_sandbox(tmp_path, "librispeech")
    proc = run(["local/data.sh", "--librispeech_dir", str(fake_librispeech.root), "--train_sets", "train-clean-360"],
               recipe, check=False)
    assert proc.returncode == 1
    missing = fake_librispeech.root / "train-clean-360"
    assert f"LibriSpeech subset 'train-clean-360' not found: neither {missing}" in proc.stderr
    assert "Download train-clean-360.tar.gz from https://www.openslr.org/12" in proc.stderr


def corrupt_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def prepare(librispeech_dir: Path, out: Path, subset: str = "dev-clean") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RECIPE / "local" / "prepare_librispeech.py"), "--librispeech_dir",
                           str(librispeech_dir), "--out_dir", str(out), "--subsets", subset],
                          capture_output=True, text=True)


def test_missing_flac_is_an_error_naming_the_line(tmp_path, fake_librispeech):
    root = corrupt_copy(fake_librispeech.root, tmp_path / "LibriSpeech")
    (root / "dev-clean" / "84" / "1037" / "84-1037-0001.flac").unlink()
    proc = prepare(root, tmp_path / "data")
    assert proc.returncode == 1
    trans = root / "dev-clean" / "84" / "1037" / "84-1037.trans.txt"
    assert f"{trans}:2: audio {trans.parent / '84-1037-0001.flac'} is missing" in proc.stderr
    assert not (tmp_path / "data" / "dev_clean").exists()


def test_bad_transcript_lines(tmp_path, fake_librispeech):
    root = corrupt_copy(fake_librispeech.root, tmp_path / "LibriSpeech")
    trans = root / "dev-clean" / "84" / "1037" / "84-1037.trans.txt"
    lines = trans.read_text().splitlines()
    trans.write_text(lines[0] + "\n" + "84-1037-0001\n")
    proc = prepare(root, tmp_path / "data")
    assert f"{trans}:2: empty transcript for 84-1037-0001" in proc.stderr
    trans.write_text(lines[0] + "\n" + lines[0] + "\n")
    proc = prepare(root, tmp_path / "data")
    assert f"{trans}:2: duplicate utterance id 84-1037-0000 (first seen at {trans}:1)" in proc.stderr
    trans.write_text(lines[0] + "\n" + lines[1].replace("84-1037", "85-1037") + "\n")
    proc = prepare(root, tmp_path / "data")
    assert f"{trans}:2: utterance id '85-1037-0001' should look like 84-1037-NNNN" in proc.stderr


def test_flac_without_transcript_is_skipped_with_a_count(tmp_path, fake_librispeech):
    root = corrupt_copy(fake_librispeech.root, tmp_path / "LibriSpeech")
    chapter = root / "dev-clean" / "84" / "1037"
    shutil.copy(chapter / "84-1037-0000.flac", chapter / "84-1037-0002.flac")
    proc = prepare(root, tmp_path / "data")
    assert proc.returncode == 0, proc.stderr
    assert "skipped 1 flac files that have no transcript line" in proc.stderr
    assert len(read_kv(tmp_path / "data" / "dev_clean" / "text")) == 4


@pytest.fixture(scope="module")
def stage2(stage1, tiny_whisper_dir) -> Path:
    """Stage 2 as run.sh sets it (--feats_type raw): validated 16 kHz mono FLAC per utterance."""
    run(["./run.sh", "--stage", "2", "--stop_stage", "2", *STAGE_OPTS, "--speech_encoder", str(tiny_whisper_dir),
         "--nj", "1"], stage1)
    return stage1


@pytest.mark.slow
def test_stage2_raw_audio_of_every_set(stage2, monkeypatch):
    import soundfile as sf

    from blspkd.data.audio import AudioReader

    monkeypatch.chdir(stage2)  # wav.scp names its files relative to the recipe directory, as feats.scp its arks
    for name in ["train", "dev_clean", "dev_other", "test_clean", "test_other"]:
        dump = stage2 / "dump" / name
        assert (dump / ".completed").is_file() and not (dump / "feats.scp").exists()
        assert validate_data_dir(dump) == []
        wav = read_kv(dump / "wav.scp")
        assert sorted(wav) == sorted(read_kv(stage2 / "data" / name / "text"))
        samples, frames = read_kv(dump / "utt2num_samples"), read_kv(dump / "utt2num_frames")
        reader = AudioReader(stage2 / "data" / name)
        for key, path in wav.items():
            assert path == f"dump/{name}/shards/audio.1/{key}.flac"
            audio, rate = sf.read(path, dtype="float32")
            assert rate == 16000 and audio.ndim == 1 and len(audio) == int(samples[key])
            assert (audio == reader.read(key)).all()  # the corpus's 16-bit FLAC, unchanged
            assert int(frames[key]) == len(audio) // 160 and 50 < int(frames[key]) < 1500
        assert read_kv(dump / "text") == read_kv(stage2 / "data" / name / "text")


@pytest.mark.slow
def test_training_and_decoding_from_raw_audio(stage2, tiny_llm_dir, tiny_whisper_dir):
    """KD training (tiny config, plain task: no teacher data needed, stage 3 reads only the text) and decoding +
    scoring of every test set from the raw dump dirs: the log-mel is computed by the trainer and the decoder."""
    tiny = MAIN_ROOT / "egs" / "mini_espeak" / "conf" / "tiny" / "pretrain.yaml"
    out = run(["./run.sh", "--stage", "4", "--stop_stage", "7", "--skip_stages", "5", *STAGE_OPTS,
               "--speech_encoder", str(tiny_whisper_dir), "--llm", str(tiny_llm_dir), "--ngpu", "0", "--nj", "1",
               "--inference_nj", "1", "--pretrain_config", str(tiny), "--pretrain_args", "--max_steps 2",
               "--inference_model", "exp/pretrain", "--decode_args", "--max_new_tokens 4", "--test_sets",
               "test_clean"], stage2)
    exp = stage2 / "exp" / "pretrain"
    assert (exp / ".completed").read_text().startswith("step 2\n"), out.stdout[-3000:]
    assert "step 2/2" in (exp / "log" / "train.log").read_text()
    hyp = read_kv(exp / "decode_test_clean" / "hyp.txt")
    assert sorted(hyp) == sorted(read_kv(stage2 / "dump" / "test_clean" / "text"))
    assert "test_clean" in (stage2 / "RESULTS.md").read_text()  # stage 7 scored it


CONFIGS = ["pretrain", "pretrain_1gpu24gb", "finetune", "finetune_1gpu24gb"]


@pytest.mark.parametrize("name", CONFIGS)
def test_training_configs_load_and_build_a_model_config(name):
    from blspkd.models import BlspKdConfig
    from blspkd.models.plora import make_plora_config
    from blspkd.train.config import TrainConfig
    from blspkd.utils.config import from_yaml_file

    cfg = from_yaml_file(TrainConfig, RECIPE / "conf" / f"{name}.yaml")
    model = cfg.model  # checked strictly by the parser: unknown model keys raise
    assert isinstance(model, BlspKdConfig)
    gpus = 1 if "1gpu" in name else 8
    per_gpu = cfg.data.max_batch_size
    assert cfg.data.batch_bins >= per_gpu * 3000  # the frame budget never cuts a batch below max_batch_size
    effective = per_gpu * cfg.optim.grad_accum * gpus
    assert cfg.precision == "bf16"
    if name.startswith("pretrain"):
        assert effective == 768
        assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.num_epochs) == (1e-4, 0.05, 1)
        assert set(model.losses.enabled()) == {"input_kl", "response_kl", "cif"}
        assert model.plora is None
    else:
        assert effective == 128
        assert (cfg.optim.lr, cfg.num_epochs) == (2e-5, 3)
        lora = make_plora_config(model.plora)
        assert set(lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                            "down_proj"}
        assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (16, 16, 0.05)


def test_train_cli_print_config():
    proc = subprocess.run([sys.executable, "-m", "blspkd.bin.train", "--config", "conf/pretrain.yaml",
                           "--print_config"], cwd=RECIPE, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "llm: downloads/Qwen2.5-7B-Instruct" in proc.stdout
    assert "grad_accum: 4" in proc.stdout


@pytest.mark.parametrize("nodes", [1, 2])
def test_slurm_conf_dry_run_for_8_gpus(tmp_path, nodes):
    """conf/slurm.conf parses, and a training job for 8 GPUs (x 2 nodes) becomes the expected sbatch + srun lines."""
    recipe = recipe_sandbox(tmp_path, "librispeech")
    cmd = ["utils/run_slurm.py", "--config", "conf/slurm.conf", "--dry_run", "--gpu", "8", "--time", "3-00:00:00",
           "--num_nodes", str(nodes), "exp/pretrain/train.log", "utils/launch_train.sh", "--ngpu", "8", "--", "-m",
           "blspkd.bin.train", "--config", "conf/pretrain.yaml"]
    out = run(cmd, recipe).stdout
    sbatch = next(line for line in out.splitlines() if line.startswith("sbatch "))
    assert "-p gpu --gres=gpu:8 --cpus-per-gpu 8 --constraint=gpu80gb" in sbatch
    assert "--time 3-00:00:00" in sbatch
    assert "utils/launch_train.sh --ngpu 8 -- -m blspkd.bin.train --config conf/pretrain.yaml" in out
    if nodes == 2:
        assert "--nodes 2" in sbatch
        assert "srun --export=ALL --ntasks=2 --kill-on-bad-exit=1" in out
    else:
        assert "--nodes 1 " in sbatch and "srun" not in out


@pytest.mark.parametrize("nodes", [1, 2])
def test_stage4_5_dry_run_prints_the_jobs(tmp_path, nodes):
    """./run.sh --stage 4 --stop_stage 5 --cmd_backend slurm --dry_run true --ngpu 8 [--num_nodes 2]: each stage prints
    its sbatch command and job script (srun on 2 nodes) and the torchrun command every node runs; nothing is started,
    written or required (no data, no models, no stage-4 model for stage 5)."""
    recipe = recipe_sandbox(tmp_path, "librispeech")
    out = run(["./run.sh", "--stage", "4", "--stop_stage", "5", "--cmd_backend", "slurm", "--dry_run", "true",
               "--ngpu", "8", "--num_nodes", str(nodes)], recipe).stdout
    lines = out.splitlines()
    sbatch = [line for line in lines if line.startswith("sbatch ")]
    assert [line.split("--job-name=")[1].split()[0] for line in sbatch] == ["train", "train"]
    for line in sbatch:
        assert f" --nodes {nodes} -p gpu --gres=gpu:8 --cpus-per-gpu 8 --constraint=gpu80gb " in line
    srun = [line for line in lines if "srun " in line]
    if nodes == 2:
        assert srun == ["srun --export=ALL --ntasks=2 --kill-on-bad-exit=1 bash -c 'export NODE_RANK=$SLURM_PROCID"] * 2
        launcher = ("python -m torch.distributed.run --nnodes 2 --node_rank $NODE_RANK --nproc_per_node 8 "
                    "--rdzv_backend c10d --rdzv_endpoint $MASTER_ADDR:$MASTER_PORT --rdzv_id $SLURM_JOB_ID")
    else:
        assert srun == []
        launcher = "python -m torch.distributed.run --standalone --nnodes 1 --nproc_per_node 8"
    models = "--model.speech_encoder downloads/whisper-large-v2 --model.llm downloads/Qwen2.5-7B-Instruct"
    data = "--data.train '[{path: dump/train}]' --data.valid '[dump/dev_clean]'"
    assert [line for line in lines if line.startswith("python ")] == [
        f"{launcher} -m blspkd.bin.train --config conf/pretrain.yaml --exp_dir exp/pretrain {models} {data}",
        f"{launcher} -m blspkd.bin.train --config conf/finetune.yaml --exp_dir exp/finetune {models} {data} "
        "--init_from exp/pretrain/model",
    ]
    assert f"stage 4 (dry run): exp/pretrain on {nodes} node(s) x 8 GPU(s); the job command:" in out
    assert sorted(p.name for p in (recipe / "exp").iterdir()) == ["cmd.log"]  # no exp dir, script or log written


def test_adding_a_corpus_with_setup_sh(tmp_path, fake_librispeech):
    """egs/TEMPLATE/setup.sh + a local/data.sh (here: parts of LibriSpeech as a 'new corpus') = a working stage 1."""
    sandbox = recipe_sandbox(tmp_path, "librispeech").parent  # a stand-in egs/ whose TEMPLATE is the checkout's
    new = sandbox / "my_corpus"
    run([str(sandbox / "TEMPLATE" / "setup.sh"), str(new)], sandbox)
    (new / "local" / "data.sh").write_text(
        "#!/usr/bin/env bash\nset -euo pipefail\n"
        f"python3 {RECIPE / 'local' / 'prepare_librispeech.py'} --librispeech_dir {fake_librispeech.root} "
        "--out_dir data --subsets dev-clean dev-other --combine train=dev-clean --combine dev=dev-other "
        "--combine test=dev-other\n")
    proc = run(["./run.sh", "--stage", "1", "--stop_stage", "1"], new)
    assert "stage 1: data/train: 4 utterances, valid" in proc.stdout
    assert validate_data_dir(new / "data" / "test") == []
