"""Moved: the transcription command is ``dcn-transcribe`` (models/cli.py) and the Python API is
``models.inference``; ``python -m training.musicnet transcribe`` and this module stay as aliases."""
from __future__ import annotations

from models.cli import add_arguments, main, run  # noqa: F401
from models.inference import AudioError as TranscribeError  # noqa: F401
from models.inference import load_audio, transcribe_file  # noqa: F401

if __name__ == "__main__":
    main()
