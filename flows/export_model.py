"""`factory export-model`: a trained student as one GGUF file, for llama.cpp, Ollama and `factory eval`.

    factory export-model runs/x/hf --format gguf --quant q8_0 --output student.gguf
    factory export-model runs/x --quant f16 --output student-f16.gguf    # a run's output_dir: its hf/
    factory eval student.gguf --problems heldout.jsonl --temperature 0

A plain function: flows/cli.py registers it on `app`. The work is trainer.gguf_export, imported
inside the command body (torch), so `factory --help` stays fast. Options are checked before
any weight is read: a bad one is exit code 2.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from flows.options import err, run_job


def export_model(
    run_or_dir: Annotated[str, typer.Argument(metavar="RUN_OR_DIR", help="A Hugging Face folder written by `factory train` (runs/x/hf), "
                                                                        "or the run's output_dir holding it in hf/.")],
    format: Annotated[str, typer.Option("--format", metavar="FORMAT", help="gguf: one file with the weights, tokenizer and chat "
                                                                          "template (Llama and Qwen2 students).")] = "gguf",
    quant: Annotated[str, typer.Option("--quant", metavar="QUANT", help="f16, or q8_0 (8-bit blocks, about half the size; matrices whose "
                                                                       "rows are not a multiple of 32 stay f16). Norms and biases stay f32.")] = "f16",
    output: Annotated[Path, typer.Option("--output", metavar="FILE.gguf", help="The file to write, in an existing folder; replaced whole "
                                                                                "when done, nothing left behind on failure.")] = ...,
) -> None:
    """Write a trained student as one GGUF file (weights, tokenizer, chat template) for llama.cpp and factory eval."""

    def job() -> None:
        from trainer import gguf_export

        gguf_export.check_options(output, quant, format)  # before torch loads
        folder = gguf_export.hf_folder(run_or_dir)
        notes, handler = logging.getLogger(gguf_export.__name__), _ErrHandler()
        notes.addHandler(handler)  # the q8_0 fallback and tokenizer notes, on stderr
        try:
            with err.status(f"writing {folder} to {output} ({quant})"):
                result = gguf_export.export_gguf(folder, output, quant)
        finally:
            notes.removeHandler(handler)
        err.print(f"wrote {result.path}: {result.architecture} {result.quant}, {result.tensors} tensors, {result.bytes / 1e6:.1f} MB "
                  f"in {result.seconds:.1f}s; evaluate it with `factory eval {result.path} ...`", markup=False)

    run_job(job)


class _ErrHandler(logging.Handler):
    """The exporter's warnings as lines on the CLI's stderr console."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        err.print(f"note: {record.getMessage()}", markup=False)
