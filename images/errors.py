"""The image side of msixlab's exception tree."""

from __future__ import annotations

from pathlib import Path

from msixlab_common.errors import MsixlabError

__all__ = ["MsixlabError", "ImageError"]


class ImageError(MsixlabError):
    """Building or finding an image failed; ``step`` names where, ``log`` keeps the output."""

    outcome = "build_failed"

    def outcome_evidence(self) -> dict:
        return {"step": self.step, "log": str(self.log) if self.log else None,
                **super().outcome_evidence()}

    def __init__(self, message: str, *, step: str, log: Path | None = None):
        super().__init__(message)
        self.step = step
        self.log = log

    def __str__(self) -> str:
        text = f"image step '{self.step}' failed: {super().__str__()}"
        if self.log is not None:
            text += f" (log kept at {self.log})"
        return text
