"""Teacher backends behind one interface (see base.py), and `make_teacher` to build one from
its config. Backends import their heavy dependencies (aiohttp, vllm, torch) lazily."""

from .base import Completion, Endpoint, Price, RequestGroup, Sampling, Teacher, TeacherConfig, TeacherError, request_key, split_reasoning

__all__ = [
    "Completion",
    "Endpoint",
    "Price",
    "RequestGroup",
    "Sampling",
    "Teacher",
    "TeacherConfig",
    "TeacherError",
    "make_teacher",
    "request_key",
    "split_reasoning",
]


def make_teacher(config: TeacherConfig) -> Teacher:
    """The backend object for a teacher config."""
    if config.backend == "openai":
        from .openai_http import OpenAITeacher

        return OpenAITeacher(config)
    if config.backend == "vllm":
        from .vllm_offline import VLLMTeacher

        return VLLMTeacher(config)
    from .local import LocalTeacher

    return LocalTeacher(config)
