"""Data: Kaldi data dirs (kaldi_dir, data_dir_ops), audio reading (audio), Whisper log-mel (mel), ark/scp I/O
(feats_io), sharded feature extraction (feature_dump)."""
