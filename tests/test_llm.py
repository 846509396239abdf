"""The embedded LLM: both packaged models selectable by setting, the instruct model prompted
through its chat template and grounded on given facts (with the question, or a whole knowledge
base before the conversation), the grounded prompts' layouts, and a clear error for a model file
that cannot be used. Real packaged models; no speed is asserted."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import get_args

import pytest

from inzwa_voice.config import Settings, SettingsError, load_settings
from inzwa_voice.engines import grounding, models
from inzwa_voice.engines.base import PROMPT_READ, ChatMessage
from inzwa_voice.engines.llm import llamacpp
from inzwa_voice.engines.llm.states import SavedStates
from inzwa_voice.engines.turn_taking import continued

CLINIC = "The Harare Central clinic opens at 7:30 in the morning and closes at 4 in the afternoon, Monday to Saturday."
FOOD = "Food parcels are given out at the district social welfare office on Wednesdays. Bring your national ID card."
HIV = "HIV testing is free at every government clinic. The result is ready in about 20 minutes."


@pytest.fixture(scope="module")
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2, thread_name_prefix="test-llm") as pool:
        yield pool


def llm_settings(settings: Settings, **update: object) -> Settings:
    # Greedy decoding, so the grounded answer below is the same on every run.
    return settings.model_copy(update={"llm_temperature": 0.0, "llm_context": 1024, **update})


@pytest.fixture(scope="module")
async def instruct(settings: Settings, executor: ThreadPoolExecutor):
    llm, _ = llamacpp.load(llm_settings(settings, llm_model="qwen2.5-0.5b-instruct"), executor)
    yield llm
    await llm.close()


async def answer(llm: llamacpp.LlamaCppLLM, messages: list[ChatMessage], max_tokens: int = 48) -> str:
    return "".join([piece async for piece in llm.stream(messages, max_tokens=max_tokens)]).strip()


async def test_the_instruct_model_answers_from_the_given_facts(instruct: llamacpp.LlamaCppLLM) -> None:
    assert instruct.prompt_format == "chat"
    opening = await answer(
        instruct, grounding.grounded_messages("What time does the clinic open?", [CLINIC, HIV], [], "")
    )
    assert "7:30" in opening
    history = [ChatMessage("user", "What time does the clinic open?"), ChatMessage("assistant", opening)]
    food = await answer(
        instruct, grounding.grounded_messages("Which day can I collect food?", [FOOD, CLINIC], history, "")
    )
    assert "wednesday" in food.lower()


async def test_the_instruct_model_answers_from_a_briefing_of_the_whole_knowledge_base(
    instruct: llamacpp.LlamaCppLLM,
) -> None:
    briefing = [CLINIC, HIV, FOOD]
    opening = await answer(instruct, grounding.briefed_messages("What time does the clinic open?", briefing, [], ""))
    assert "7:30" in opening
    history = [ChatMessage("user", "What time does the clinic open?"), ChatMessage("assistant", opening)]
    food = await answer(instruct, grounding.briefed_messages("Which day can I collect food?", briefing, history, ""))
    assert "wednesday" in food.lower()


async def test_a_long_prompt_is_read_in_steps_a_dropped_reader_can_leave_between(
    instruct: llamacpp.LlamaCppLLM,
) -> None:
    """The prompt is read a chunk per step the reader asks for (so the scheduler can hand the
    cores to more urgent work between them); a reader that leaves after the first chunk stops
    the model there, and what that left in the cache does not change the next answer."""
    messages = grounding.grounded_messages("When can I collect food?", [FOOD, CLINIC, HIV], [], "")
    prompt_tokens = len(instruct.prompt_tokens(messages, 16))
    instruct.reset_cache()
    fresh = await answer(instruct, messages, max_tokens=16)
    instruct.reset_cache()
    steps = instruct._generate(messages, 16, 0.0, [])
    assert next(steps) == PROMPT_READ
    steps.close()  # the speculative answer was dropped
    assert instruct._llm.n_tokens == llamacpp.PREFILL_CHUNK < prompt_tokens
    assert await answer(instruct, messages, max_tokens=16) == fresh


async def test_a_conversation_read_ahead_is_kept_while_other_calls_use_the_model(
    instruct: llamacpp.LlamaCppLLM,
) -> None:
    """A call's conversation is read ahead (``prime``) and saved; another call's question then
    fills the model's one context; the first call's next question gets the saved state back, and
    reads only its own turn: the same answer as from a cold cache, with fewer tokens read."""
    history = [
        ChatMessage("assistant", "Hello, you have reached the helpline. How can I help you?"),
        ChatMessage("user", "What time does the clinic open?"),
        ChatMessage("assistant", "The clinic opens at 7:30 in the morning."),
    ]
    next_turn = grounding.grounded_messages("Which day can I collect food?", [FOOD, CLINIC], history, "")
    other_call = grounding.grounded_messages("Is the HIV test free?", [HIV], [], "")
    instruct.reset_cache()
    read_before = instruct.prompt_use["read"]
    cold = await answer(instruct, next_turn, max_tokens=16)
    cold_read = instruct.prompt_use["read"] - read_before

    instruct.reset_cache()
    async for piece in instruct.prime(grounding.grounded_messages("", [], history, "")):
        assert piece == PROMPT_READ
    await answer(instruct, other_call, max_tokens=8)
    before = dict(instruct.prompt_use)
    assert await answer(instruct, next_turn, max_tokens=16) == cold
    restored = instruct.prompt_use["restored"] - before["restored"]
    read = instruct.prompt_use["read"] - before["read"]
    history_tokens = len(instruct.prompt_tokens(grounding.grounded_messages("", [], history, "")))
    assert restored > history_tokens - 40  # all but the read-ahead's empty question
    assert read + restored == len(instruct.prompt_tokens(next_turn, 16)) - 1  # the last is read by sampling
    assert read < cold_read / 3


async def test_a_generation_stopped_part_way_goes_on_from_where_it_stopped_after_other_calls(
    instruct: llamacpp.LlamaCppLLM,
) -> None:
    """A generation that gave way to another call's (``engines.turn_taking``) is stopped after a
    few tokens; the other call fills the model's one context; asked to go on, with what it wrote
    as the start of the answer, it gets its saved state back, reads almost nothing, and gives
    the same answer as one never stopped."""
    messages = grounding.grounded_messages("What time does the clinic open?", [CLINIC, HIV], [], "")
    instruct.reset_cache()
    whole = await answer(instruct, messages, max_tokens=24)
    instruct.reset_cache()
    stream = instruct.stream(messages, max_tokens=24)
    begun: list[str] = []
    async for piece in stream:
        begun += [piece] if piece != PROMPT_READ else []
        if len(begun) == 5:
            break
    await stream.aclose()
    await answer(instruct, grounding.grounded_messages("Is the HIV test free?", [HIV], [], ""), max_tokens=8)
    before = dict(instruct.prompt_use)
    going_on = instruct.stream(continued(messages, "".join(begun)), max_tokens=24 - len(begun))
    rest = "".join([piece async for piece in going_on])
    assert ("".join(begun) + rest).strip() == whole
    assert instruct.prompt_use["restored"] - before["restored"] >= len(instruct.prompt_tokens(messages, 24))
    assert instruct.prompt_use["read"] - before["read"] <= 2


def test_saved_states_are_found_by_their_tokens_bounded_and_replaced_by_a_newer_read() -> None:
    states = SavedStates(limit_bytes=10)
    first_call = list(range(100))
    assert states.add(first_call, b"a" * 4)
    assert states.add([*range(50), *range(1000, 1100)], b"b" * 4)  # another call: shares the system part
    shared, best = states.best([*range(80), 5000])
    assert shared == 80 and best is not None and best.data == b"a" * 4
    # The first call read again a turn later: all but the old read's last few tokens are in the
    # new one, which replaces it.
    assert states.add([*range(90), *range(2000, 2050)], b"c" * 4)
    assert len(states) == 2 and states.total_bytes == 8
    assert states.best(first_call)[1].data == b"c" * 4  # type: ignore[union-attr]
    # Over the limit, the least recently used goes first ("b": "c" was just looked up).
    assert states.add([7, 7, 7], b"d" * 4)
    assert len(states) == 2 and states.best([*range(50), 1000])[0] == 50
    assert states.best([*range(50), 1000])[1].data == b"c" * 4  # type: ignore[union-attr]
    assert not states.add([1], b"e" * 11)  # alone over the limit: not kept
    assert len(states) == 2


async def test_a_question_asked_again_is_answered_again_not_continued(instruct: llamacpp.LlamaCppLLM) -> None:
    """The whole prompt is in the cache, followed by its earlier answer: the answer is sampled
    after the prompt's own last token again, so it comes out the same, not as a continuation."""
    messages = grounding.grounded_messages("What time does the clinic open?", [CLINIC], [], "")
    first = await answer(instruct, messages, max_tokens=16)
    assert await answer(instruct, messages, max_tokens=16) == first


def test_grounded_messages_put_the_facts_in_and_keep_the_system_part_first() -> None:
    system = "You are the voice of the Inzwa helpline."
    history = [
        ChatMessage("system", "an old system message"),
        ChatMessage("user", "Hello?"),
        ChatMessage("assistant", "Hello, how can I help?"),
    ]
    messages = grounding.grounded_messages("  What time does the\nclinic open? ", [CLINIC, " ", FOOD], history, system)
    assert messages[0] == ChatMessage("system", grounding.grounded_system(system))
    assert messages[0].content.startswith(system) and grounding.GROUNDING_RULES in messages[0].content
    assert [m.role for m in messages[1:]].count("system") == 0  # the history's own system message is dropped
    assert messages[-3:-1] == history[1:]  # the conversation so far, as it was said, before this turn
    last = messages[-1]
    assert last.role == "user"
    assert f"- {CLINIC}\n- {FOOD}\n" in last.content and last.content.endswith("What time does the clinic open?")
    assert not any(CLINIC in m.content for m in messages[:-1])  # facts only in this turn's message

    # The system part and the examples depend on the profile alone, and the next turn's history
    # extends this one's: everything before this turn's message is the next prompt's prefix.
    said = [ChatMessage("user", "What time does the clinic open?"), ChatMessage("assistant", "At 7:30.")]
    later = grounding.grounded_messages("Is it open on Saturday?", [HIV], [*history, *said], system)
    assert later[: len(messages) - 1] == messages[:-1]
    assert later[-3:-1] == said
    assert grounding.grounded_messages("Anything?", [], [], system)[-1].content.startswith("Facts:\n- (no facts")


def test_a_briefing_gives_the_facts_once_before_the_conversation_and_the_question_alone() -> None:
    system = "You are the voice of the Inzwa helpline."
    history = [ChatMessage("user", "Hello?"), ChatMessage("assistant", "Hello, how can I help?")]
    messages = grounding.briefed_messages(" What time does the\nclinic open? ", [CLINIC, " ", FOOD], history, system)
    assert messages[0] == ChatMessage("system", grounding.grounded_system(system))
    told = [m for m in messages if CLINIC in m.content]
    assert [m.content for m in told] == [f"New call. Facts:\n- {CLINIC}\n- {FOOD}"]  # once, both, nothing blank
    assert messages.index(told[0]) < len(messages) - 3  # before the conversation
    assert messages[-3:-1] == history
    assert messages[-1] == ChatMessage("user", "Caller's question: What time does the clinic open?")
    # Everything before the question is the next turn's prefix, whatever that turn asks.
    said = [ChatMessage("user", "What time does the clinic open?"), ChatMessage("assistant", "At 7:30.")]
    later = grounding.briefed_messages("Is it open on Saturday?", [CLINIC, FOOD], [*history, *said], system)
    assert later[: len(messages) - 1] == messages[:-1]


def test_consecutive_turns_share_the_system_prefix_in_tokens(instruct: llamacpp.LlamaCppLLM) -> None:
    first = grounding.grounded_messages("What time does the clinic open?", [CLINIC], [], "Be kind.")
    history = [ChatMessage("user", "What time does the clinic open?"), ChatMessage("assistant", "At 7:30.")]
    second = grounding.grounded_messages("Which day can I collect food?", [FOOD], history, "Be kind.")
    a, b = instruct.prompt_tokens(first), instruct.prompt_tokens(second)
    shared = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    # The system message and the examples (rendered up to the last example's answer, as a
    # prefill) are one token prefix of both turns: llama.cpp evaluates only what follows.
    stable = instruct.prompt_tokens(first[:-1])
    assert a[: len(stable)] == stable
    assert len(stable) <= shared < len(b)


@pytest.mark.parametrize(("model", "prompt_format"), [("qwen2.5-0.5b-instruct", "chat"), ("gemma3-270m", "transcript")])
async def test_both_packaged_models_are_selectable_by_setting(
    settings: Settings, executor: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch, model: str, prompt_format: str
) -> None:
    assert set(get_args(Settings.model_fields["llm_model"].annotation)) == set(llamacpp.PACKAGED)
    monkeypatch.setenv("INZWA_LLM_MODEL", model)
    chosen = load_settings(_env_file=None)
    assert chosen.llm_model == model
    llm, info = llamacpp.load(llm_settings(settings, llm_model=chosen.llm_model), executor)
    try:
        assert (llm.name, llm.prompt_format, info.id) == (model, prompt_format, model)
        assert info.sha256 == models.verified_digest(Path(info.path))
        assert info.sha256 and info.size_bytes > 100_000_000
        assert await answer(llm, [ChatMessage("user", "Hello, is anyone there?")], max_tokens=12)
    finally:
        await llm.close()


def test_an_unknown_model_name_is_refused_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INZWA_LLM_MODEL", "gpt-9")
    with pytest.raises(SettingsError, match="INZWA_LLM_MODEL"):
        load_settings(_env_file=None)


def test_the_packaged_instruct_model_is_assembled_and_verified(settings: Settings) -> None:
    path, digest = models.qwen_instruct_gguf(settings.data_dir)
    assert digest == models.QWEN_INSTRUCT_SHA256
    assert path.stat().st_size == 491_400_064
    assert models.verified_digest(path) == models.QWEN_INSTRUCT_SHA256


async def test_an_operators_gguf_is_prompted_the_way_its_file_says(
    settings: Settings, executor: ThreadPoolExecutor
) -> None:
    # A GGUF given by path: through its chat template when it carries one, else as a transcript.
    for locate, expected in ((models.qwen_instruct_gguf, "chat"), (models.gemma_gguf, "transcript")):
        path, _ = locate(settings.data_dir)
        llm, info = llamacpp.load(llm_settings(settings, llm_model_path=path), executor)
        try:
            assert llm.prompt_format == expected
            assert info.id == path.stem and info.sha256 is None
        finally:
            await llm.close()


@pytest.mark.parametrize("kind", ["missing", "folder", "not-gguf"])
def test_a_broken_model_path_names_the_setting_and_the_path(
    settings: Settings, executor: ThreadPoolExecutor, tmp_path: Path, kind: str
) -> None:
    path = {"missing": tmp_path / "absent.gguf", "folder": tmp_path, "not-gguf": tmp_path / "notes.gguf"}[kind]
    if kind == "not-gguf":
        path.write_bytes(b"this is not a model\n" * 100)
    with pytest.raises(models.ModelError) as error:
        llamacpp.load(llm_settings(settings, llm_model_path=path), executor)
    assert f"INZWA_LLM_MODEL_PATH={path}" in str(error.value)


def test_a_base_model_cannot_be_forced_through_a_chat_template(
    settings: Settings, executor: ThreadPoolExecutor
) -> None:
    with pytest.raises(models.ModelError, match=r"INZWA_LLM_PROMPT_FORMAT=chat: .* carries no chat template"):
        llamacpp.load(llm_settings(settings, llm_model="gemma3-270m", llm_prompt_format="chat"), executor)
