"""Settings: the one place where every default of the gateway is written down.

Every field reads from the environment with the ``INZWA_`` prefix (``INZWA_PORT=9000``) or from
an optional ``.env`` file in the working directory. Invalid values stop the gateway at start-up
with a message naming the environment variable, so a typo never becomes a silent default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "INZWA_"

SECRET_SETTINGS: Final = frozenset(
    {
        "api_keys",
        "admin_keys",
        "metrics_key",
        "llm_api_key",
        "twilio_auth_token",
        "webrtc_turn_credential",
        "webrtc_token_secret",
        "sip_password",
        "db_url",
    }
)
"""Settings that are never shown: ``check-config`` prints whether each is set, an invalid one's
error leaves its value out. A new secret setting is added here (a test finds names that look
secret and are not)."""


class SettingsError(Exception):
    """Raised when the environment holds an invalid setting; the message names it."""


def _split_csv(value: object) -> object:
    """Accept ``a,b,c`` for list settings: operators write keys in env files, not JSON."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


IceUrl = Annotated[str, Field(pattern=r"^(stun|stuns|turn|turns):")]
"""A STUN or TURN server URL (RFC 7064, RFC 7065)."""


class Settings(BaseSettings):
    """All gateway settings. Field docs are the operator's reference (see README)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # --- server ---
    host: str = Field("127.0.0.1", description="Address the HTTP server binds.")
    port: int = Field(8080, ge=1, le=65535, description="HTTP port.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    data_dir: Path = Field(
        Path.home() / ".cache" / "inzwa-voice",
        description="Where packaged models are assembled once (whisper, gguf).",
    )
    warmup: bool = Field(True, description="Run one tiny inference per engine at start-up.")
    inference_workers: int = Field(
        32, ge=1, le=256, description="Threads that host model calls (how many run at once is inference_slots)."
    )
    inference_slots: int | None = Field(
        None, ge=1, le=64, description="Model runs at once (the inference scheduler's slots); default: cores / 2."
    )

    # --- VAD ---
    vad_engine: Literal["silero"] = "silero"
    vad_model_path: Path | None = Field(None, description="Silero ONNX; default: packaged model.")
    vad_threshold: float = Field(0.5, gt=0.0, lt=1.0, description="Speech probability threshold.")

    # --- ASR ---
    asr_engine: Literal["whisper"] = "whisper"
    asr_model_path: Path | None = Field(
        None, description="CTranslate2 Whisper directory; default: packaged multilingual base."
    )
    asr_compute_type: Literal["int8", "int8_float32", "float32", "float16", "int8_float16"] = "int8"
    asr_device: Literal["cpu", "cuda", "auto"] = "cpu"
    asr_threads: int | None = Field(
        None, ge=1, le=64, description="CTranslate2 intra-op threads per decode; default: cores / inference slots."
    )
    language: str = Field("sn", description="The helpline's language: ASR default, safety templates (Whisper code).")
    languages: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["sn", "en"], description="Languages a request may ask for."
    )
    asr_beam_size: int = Field(1, ge=1, le=10)
    asr_max_new_tokens: int = Field(
        96, ge=8, le=440, description="Cap per 30 s window: Shona decoding can loop without it."
    )
    asr_initial_prompt: str | None = Field(None, description="Prompt that biases Whisper toward helpline vocabulary.")
    asr_hotwords: str | None = Field(None, description="Shona terms to favour, space separated.")

    # --- LLM ---
    llm_engine: Literal["llama-cpp", "openai"] = "llama-cpp"
    llm_model: Literal["qwen2.5-0.5b-instruct", "gemma3-270m"] = Field(
        "qwen2.5-0.5b-instruct",
        description="Packaged GGUF for engine 'llama-cpp': Qwen2.5-Coder 0.5B Instruct (chat template, grounds on "
        "facts) or Gemma 3 270M (a base model, prompted as a transcript).",
    )
    llm_model_path: Path | None = Field(
        None, description="An operator's own GGUF file; overrides llm_model (prompt format: llm_prompt_format)."
    )
    llm_prompt_format: Literal["auto", "chat", "transcript"] = Field(
        "auto",
        description="How llama-cpp prompts: 'chat' through the GGUF's chat template, 'transcript' as a base-model "
        "completion; 'auto': the packaged model's own way, or chat when the GGUF carries a template.",
    )
    llm_context: int = Field(2048, ge=256, le=131072)
    llm_saved_states_mb: int = Field(
        128,
        ge=0,
        le=65536,
        description="llama-cpp: memory for the KV states of conversations read ahead (about 12 KB a token for "
        "the packaged model), so each call's next turn reads only its question; 0 turns it off.",
    )
    llm_threads: int | None = Field(None, ge=1, le=64, description="llama.cpp threads; default: cores / slots.")
    llm_max_tokens: int = Field(160, ge=1, le=4096, description="Default cap on generated tokens.")
    llm_temperature: float = Field(0.3, ge=0.0, le=2.0)
    llm_token_timeout_s: float = Field(10.0, gt=0, description="Longest wait for the next token.")
    llm_timeout_s: float = Field(60.0, gt=0, description="Longest whole generation.")
    llm_base_url: str = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible server (engine 'openai').")
    llm_api_key: str | None = Field(None, description="Key for the OpenAI-compatible server.")
    llm_remote_model: str = Field("default", description="Model name sent to the remote server.")
    llm_connect_retries: int = Field(2, ge=0, le=10)
    llm_system_prompt: str = Field(
        "You are a kind, brief helpline assistant. Answer in one or two short sentences.",
        description="System prompt used when a request or profile gives none.",
    )

    # --- TTS ---
    tts_engine: Literal["piper"] = "piper"
    tts_voice: str = Field("joe", description="Default voice id.")
    tts_threads: int | None = Field(None, ge=1, le=64, description="onnxruntime threads; default: cores / slots.")

    # --- sentence embeddings (knowledge matching by meaning, English) ---
    embedding_engine: Literal["minilm", "none"] = Field(
        "minilm",
        description="'minilm': English questions also match the knowledge base by meaning (packaged "
        "all-MiniLM-L6-v2 int8); 'none': lexical matching only.",
    )
    embedding_threads: int = Field(1, ge=1, le=64, description="onnxruntime threads per embedding (a few ms each).")

    # --- turn-taking (media time; see inzwa_voice/conversation/turns.py) ---
    turn_start_ms: int = Field(120, ge=20, le=2000, description="Voiced audio before speech counts (and barges in).")
    turn_prefetch_ms: int = Field(300, ge=100, le=5000, description="Silence before the answer is prepared.")
    turn_endpoint_ms: int = Field(700, ge=200, le=10000, description="Silence that ends the caller's turn.")
    turn_question_endpoint_ms: int = Field(
        500, ge=200, le=10000, description="Silence that ends it once the words so far end in a question mark."
    )
    turn_max_utterance_s: float = Field(30.0, gt=1, le=120, description="Longest caller turn before it is cut.")

    # --- limits ---
    max_text_chars: int = Field(4096, ge=1, le=100_000)
    max_audio_seconds: float = Field(120.0, gt=0, le=3600)
    max_upload_bytes: int = Field(25 * 1024 * 1024, ge=1024)
    max_sessions: int = Field(50, ge=1, le=10_000)
    # Capacity measured in turns (inzwa_voice/conversation/capacity.py): beyond it, the busy message.
    capacity_turn_interval_s: float = Field(
        15.0, gt=0, le=600, description="How often a caller asks (speaking, then listening): sizes the calls admitted."
    )
    capacity_answer_within_s: float = Field(
        6.0, gt=0, le=120, description="Questions the cores answer within this are served; beyond: hold, and busy."
    )
    capacity_turn_cost_s: float = Field(
        2.0, gt=0, le=60, description="Inference slot-seconds a question costs until measured."
    )
    max_chat_messages: int = Field(64, ge=1, le=1000)
    max_concurrent_requests: int = Field(
        16, ge=1, le=10_000, description="Model-bound REST requests in flight; more get 503."
    )

    # --- safety ---
    helpline_number: str = Field(
        "999", description="The human number every crisis answer gives; set it to your helpline's."
    )

    # --- calls ---
    dialplan_path: Path | None = Field(
        None,
        description="Dialplan YAML (number -> profile); default: the package's inzwa_voice/dialplans/default.yaml.",
    )
    db_path: Path = Field(
        Path.home() / ".local" / "share" / "inzwa-voice" / "calls.db",
        description="SQLite file of call records (calls, turns, events); its folder is created.",
    )
    db_url: SecretStr | None = Field(
        None,
        description="PostgreSQL call records shared by every gateway (postgresql://user:pass@host/db); "
        "when set, db_path is not used.",
    )
    instance_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$",
        description="This gateway process's name in its call records and heartbeats; unique among the "
        "running gateways; default: the host name and a random suffix, new at each start.",
    )
    heartbeat_s: float = Field(
        10.0,
        ge=1.0,
        le=3600.0,
        description="On a shared database, how often a gateway says it is alive; another ends the open calls "
        "of one silent for 3 beats (disposition error).",
    )
    records_retention_days: float | None = Field(
        None,
        gt=0,
        description="Delete call records and recordings older than this many days (checked hourly); unset: keep all.",
    )
    recordings_dir: Path = Field(
        Path.home() / ".local" / "share" / "inzwa-voice" / "recordings",
        description="Where calls of profiles with `recording: true` are written (2-channel WAV, one file a call).",
    )

    # --- Twilio ---
    twilio_auth_token: str | None = Field(
        None, description="Twilio auth token: when set, Twilio's routes require a valid X-Twilio-Signature."
    )
    twilio_public_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="Base URL Twilio reaches the gateway at (https://voice.example.org); default: the request's.",
    )

    # --- Asterisk AudioSocket ---
    audiosocket_enabled: bool = Field(True, description="Serve Asterisk's AudioSocket protocol over TCP.")
    audiosocket_host: str = Field("127.0.0.1", description="Address it binds; only Asterisk may reach it.")
    audiosocket_port: int = Field(9092, ge=0, le=65535, description="AudioSocket TCP port; 0 picks a free one (tests).")

    # --- WebRTC ---
    webrtc_max_peers: int = Field(
        20, ge=1, le=1000, description="Concurrent WebRTC peer connections; more offers get 503 too_many_peers."
    )
    webrtc_ice_servers: Annotated[list[IceUrl], NoDecode] = Field(
        default_factory=list,
        description="STUN/TURN URLs (stun:host:3478,turn:host:3478?transport=udp); empty: host candidates only.",
    )
    webrtc_turn_username: str | None = Field(None, description="Username for the turn:/turns: URLs.")
    webrtc_turn_credential: str | None = Field(None, description="Credential for the turn:/turns: URLs.")
    webrtc_token_secret: str | None = Field(
        None,
        min_length=16,
        description="HMAC key of WebRTC call tokens; gateways sharing it accept each other's (default: random).",
    )
    webrtc_token_ttl_s: int = Field(300, ge=10, le=3600, description="Lifetime of a WebRTC call token.")
    webrtc_host_addresses: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Offer ICE host candidates only on these addresses (default: every non-loopback interface).",
    )

    # --- SIP (pjsua2) ---
    sip_enabled: bool = Field(True, description="Answer SIP calls with the pjsua2 endpoint (one per process).")
    sip_host: str = Field("127.0.0.1", description="Address SIP (UDP and TCP) and RTP bind, and the one SDP gives.")
    sip_port: int = Field(5060, ge=0, le=65535, description="SIP port for UDP and TCP; 0 picks a free one (tests).")
    sip_rtp_port: int = Field(4000, ge=1024, le=65534, description="First RTP port; a call takes the next free pair.")
    sip_drain_timeout_s: float = Field(
        30.0, ge=0, le=3600, description="At shutdown, how long live SIP calls may go on before the gateway hangs up."
    )
    sip_allowed_sources: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="IPs or CIDRs an INVITE may come from (others get 403); empty means anyone."
    )
    sip_registrar: str | None = Field(
        None, description="Register with this trunk registrar, e.g. sip:trunk.example.net:5060 (default: none)."
    )
    sip_username: str | None = Field(None, description="Digest username for sip_registrar; also the AOR's user.")
    sip_password: SecretStr | None = Field(None, description="Digest password for sip_registrar; never logged.")
    sip_realm: str = Field("*", description="Digest realm the credentials answer; * answers any realm.")
    sip_register_expires_s: int = Field(
        300, ge=30, le=86400, description="Registration lifetime asked for; pjsua2 refreshes it before it runs out."
    )

    # --- security ---
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Bearer keys; empty means no authentication."
    )
    rate_limit_per_minute: int = Field(
        0, ge=0, description="Requests per minute per API key (or client IP); 0 disables."
    )
    admin_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Bearer keys for the admin routes (/v1/admin/*: calls, records, recordings, hang-up, reload); "
        "they open every other route too. With keys on, an API key alone does not open the admin routes.",
    )
    metrics_key: str | None = Field(
        None, description="Bearer key /metrics asks for (an admin key opens it too); unset: /metrics is public."
    )
    call_rate_limit_per_minute: int = Field(
        60, ge=0, description="Calls a client address may start per minute (WS, Twilio, WebRTC, widget); 0 disables."
    )
    widget_tokens_per_minute: int = Field(
        6, ge=0, description="Call tokens the built-in widget may mint per client address a minute; 0 closes the route."
    )
    widget_token_ttl_s: int = Field(60, ge=10, le=3600, description="Lifetime of a token the widget route mints.")
    handshake_timeout_s: float = Field(
        5.0,
        gt=0,
        le=60,
        description="Longest a call may take to open: WS and Twilio start, AudioSocket UUID, SIP ACK after 200 OK.",
    )
    http_header_timeout_s: float = Field(
        10.0, gt=0, le=300, description="A connection must finish a request's headers within this (and idle no longer)."
    )
    max_connections_per_address: int = Field(
        64, ge=0, description="Requests in flight (calls included) per client address; more get 429. 0 disables."
    )

    _split_lists = field_validator(
        "languages",
        "api_keys",
        "admin_keys",
        "webrtc_ice_servers",
        "webrtc_host_addresses",
        "sip_allowed_sources",
        mode="before",
    )(_split_csv)

    def masked(self) -> dict[str, object]:
        """The settings as JSON values, each of ``SECRET_SETTINGS`` replaced by whether it is set."""
        shown: dict[str, object] = self.model_dump(mode="json")
        for name in SECRET_SETTINGS:
            value = shown[name]
            if isinstance(value, list):
                shown[name] = [f"***{len(value)} set***"] if value else []
            else:
                shown[name] = "***" if value else None
        return shown

    @property
    def slots(self) -> int:
        """Model runs at once: ``inference_slots``, else one per two cores (on two cores, one run
        with both: each model wants both, and two at once only slow each other)."""
        return self.inference_slots or max(1, _cores() // 2)

    @property
    def run_threads(self) -> int:
        """Threads per model run, where ``*_threads`` does not say: the cores shared by the slots."""
        return max(1, _cores() // self.slots)

    @field_validator("language")
    @classmethod
    def _language_code(cls, value: str) -> str:
        if not value.isalpha() or not 2 <= len(value) <= 3:
            raise ValueError("must be a Whisper language code such as 'sn' or 'en'")
        return value.lower()


def _cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's)."""
    return len(os.sched_getaffinity(0))


def load_settings(**overrides: object) -> Settings:
    """Read settings; turn pydantic's report into one message per offending env variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = ENV_PREFIX + "_".join(str(part) for part in err["loc"]).upper()
            shown = "***" if err["loc"] and err["loc"][0] in SECRET_SETTINGS else repr(err.get("input"))
            lines.append(f"invalid setting {name}: {err['msg']} (got {shown})")
        raise SettingsError("\n".join(lines)) from None
