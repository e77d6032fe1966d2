"""Shared pytest set-up: offline hub, CPU, and the fixture modules under test/fixtures/ (one per area)."""
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

pytest_plugins = [
    f"fixtures.{p.stem}" for p in sorted((Path(__file__).parent / "fixtures").glob("*.py")) if p.stem != "__init__"
]
