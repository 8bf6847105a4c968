"""Request keys: a content hash that must not move for requests that existed before an option
was added (each literal below was computed on the code before `Sampling.top_logprobs`), and
that does move when the option asks for something else."""

import json

from factory.teachers.base import Endpoint, Sampling, TeacherConfig, request_key

CONFIG = TeacherConfig(name="t", backend="openai", model="m", endpoints=[Endpoint(url="http://127.0.0.1:1/v1")])
MESSAGES = [{"role": "user", "content": "What is 2+3?"}]


def test_request_keys_without_top_logprobs_are_unchanged():
    assert request_key(CONFIG, MESSAGES, Sampling(max_tokens=64, seed=7), 1) == "c84c2977cdb70b96973fb8987a25133e"
    # samples.sampling, the JSON stored with every sample, too
    dumped = json.dumps(Sampling(max_tokens=64, seed=7).model_dump(), sort_keys=True)
    assert dumped == '{"max_tokens": 64, "seed": 7, "stop": [], "temperature": 0.6, "top_p": 0.95}'


def test_asking_for_top_logprobs_is_another_request():
    keys = {request_key(CONFIG, MESSAGES, Sampling(max_tokens=64, seed=7, top_logprobs=k), 1) for k in (None, 5, 20)}
    assert len(keys) == 3
    assert Sampling(top_logprobs=5).model_dump()["top_logprobs"] == 5
