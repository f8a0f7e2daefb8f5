"""The official zai SDK (synchronous, run in a thread) against the simulator."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from media import wav
from zai import ZaiClient
from zai.core import APIAuthenticationError, APIReachLimitError

from runner.sim import SimConfig, Simulator

pytestmark = pytest.mark.anyio

KEY = "1a2b3c4d5e6f.sdk-secret"


def sdk_client(sim: Simulator, **options: object) -> ZaiClient:
    return ZaiClient(api_key=KEY, base_url=sim.base_url, **options)  # type: ignore[arg-type]


async def test_sdk_chat_embeddings_and_video(sim: Simulator) -> None:
    def scenario() -> None:
        client = sdk_client(sim)
        completion = client.chat.completions.create(
            model="glm-4.6",
            messages=[{"role": "user", "content": "Hello from the SDK"}],
            request_id="sdk-1",
        )
        assert completion.request_id == "sdk-1"
        assert completion.choices[0].message.content
        assert completion.usage.total_tokens > completion.usage.prompt_tokens > 0

        embeddings = client.embeddings.create(
            model="embedding-3", input=["one", "two"], dimensions=512
        )
        assert [len(item.embedding) for item in embeddings.data] == [512, 512]
        assert embeddings.usage.completion_tokens == 0

        video = client.videos.generations(model="cogvideox-3", prompt="a calm sea")
        assert video.task_status == "PROCESSING"
        deadline = time.monotonic() + 5
        result = client.videos.retrieve_videos_result(id=video.id)
        while result.task_status == "PROCESSING" and time.monotonic() < deadline:
            time.sleep(0.05)
            result = client.videos.retrieve_videos_result(id=video.id)
        assert result.task_status == "SUCCESS"
        assert result.video_result[0].url.startswith(sim.root_url)
        assert result.video_result[0].cover_image_url.startswith(sim.root_url)

    await anyio.to_thread.run_sync(scenario)
    stats = sim.stats()
    assert stats["billed"]["requests"] == 3
    assert stats["submissions_by_request_id"]["sdk-1"] == 1
    assert stats["tasks"]["succeeded"] == 1


async def test_sdk_maps_simulated_errors_to_its_exceptions() -> None:
    async with Simulator(SimConfig(keys={"someone-else": None})) as sim:

        def refused() -> None:
            with pytest.raises(APIAuthenticationError):
                sdk_client(sim, max_retries=0).chat.completions.create(
                    model="glm-4.6", messages=[{"role": "user", "content": "hi"}]
                )

        await anyio.to_thread.run_sync(refused)
        sim.update(keys=None)

        def limited() -> None:
            with pytest.raises(APIReachLimitError):
                sdk_client(sim, max_retries=0).chat.completions.create(
                    model="glm-4.6", messages=[{"role": "user", "content": "[[sim:1302]]"}]
                )

        await anyio.to_thread.run_sync(limited)


async def test_sdk_transcription_reads_the_simulated_answer(sim: Simulator, tmp_path: Path) -> None:
    clip = tmp_path / "hello.wav"
    clip.write_bytes(wav(7, seconds=2))

    def scenario() -> Any:
        with clip.open("rb") as fh:
            return sdk_client(sim).audio.transcriptions.create(
                # One hotword: the SDK refuses two (it names each field hotwords[]).
                file=fh,
                model="glm-asr-2512",
                hotwords=["amber"],
                request_id="asr-1",
            )

    answer = await anyio.to_thread.run_sync(scenario)
    # The SDK's type for this call is a chat completion; the transcript arrives beside it.
    assert answer.request_id == "asr-1" and answer.model == "glm-asr-2512"
    assert isinstance(answer.text, str) and answer.text
    assert answer.usage.prompt_tokens == 25  # 2 s of audio at 12.5 tokens a second
    stats = sim.stats()
    assert stats["files"] == [hashlib.sha256(clip.read_bytes()).hexdigest()]
    assert stats["billed"]["by_model"]["glm-asr-2512"]["requests"] == 1
