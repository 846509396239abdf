// Inzwa Voice web widget: call the helpline from a browser over WebRTC. Plain JS, no build step.
//
//   <div id="inzwa-widget"></div>
//   <script src="https://GATEWAY/widget/widget.js" data-gateway="https://GATEWAY" data-token="..."></script>
//
// data-gateway      the gateway's origin (default: where this script was loaded from)
// data-token        a call token from POST /v1/webrtc/token, obtained by the helpline's own web server with
//                   its API key. Without one, the widget asks data-token-url (default: the gateway's
//                   /widget/token, short-lived tokens without a key, rate-limited per address) each
//                   time a call starts.
// data-token-url    where to POST for a fresh {"token": ...}, e.g. a route on the helpline's own server:
//                   tokens expire after a few minutes, a page may stay open longer
// data-ice-servers  JSON list of RTCIceServer (STUN/TURN); default [], host candidates only
// data-caller, data-dialled   passed to the gateway's dialplan
// data-target       id of the element to render into (default "inzwa-widget")
//
// The mounted widget is window.inzwaWidget: state, callId, rmsMax (peak level of the helpline's audio),
// events (those received) and error, for the host page and the browser tests to read.
(() => {
  "use strict";

  const script = document.currentScript;
  const ICE_GATHERING_TIMEOUT_MS = 5000;
  const HANGUP_GRACE_MS = 1000;
  const MAX_EVENTS = 500;
  const METER_INTERVAL_MS = 100;

  // Shona first, English second, everywhere the widget speaks to the caller.
  const TEXT = {
    helpline: ["Nhare yerubatsiro", "Helpline"],
    call: ["Fonera nhare yerubatsiro", "Call the helpline"],
    hangUp: ["Gumisa nhare", "Hang up"],
    zero: ["0 · Taura nemunhu", "0 · Talk to a person"],
    idle: ["Dzvanya bhatani kuti ufone", "Press the button to call"],
    connecting: ["Tiri kubatanidza…", "Connecting…"],
    listening: ["Tiri kukuteererai", "Listening"],
    speaking: ["Mubatsiri ari kutaura", "The helper is speaking"],
    ended: ["Nhare yapera", "Call ended"],
    error: ["Pane dambudziko", "Something went wrong"],
    transcript: ["Zvataurwa", "Transcript"],
    you: ["Imi", "You"],
    helper: ["Mubatsiri", "Helper"],
    transfer: ["Kuti mutaure nemunhu, fonai", "To talk to a person, call"],
    noPerson: ["Hapana munhu aripo parizvino", "No one is available right now"],
  };
  const IN_CALL = new Set(["connecting", "listening", "speaking"]);

  const TEMPLATE = `
    <section class="inzwa" data-state="idle">
      <p class="inzwa-state" role="status" aria-live="polite"></p>
      <div class="inzwa-level" aria-hidden="true"><div class="inzwa-level-bar"></div></div>
      <div class="inzwa-buttons">
        <button type="button" class="inzwa-call"></button>
        <button type="button" class="inzwa-hangup" hidden></button>
        <button type="button" class="inzwa-zero" hidden></button>
      </div>
      <div class="inzwa-talk">
        <div class="inzwa-transcript" role="log" aria-live="polite"></div>
        <p class="inzwa-partial" aria-hidden="true"></p>
      </div>
      <audio class="inzwa-audio" autoplay></audio>
    </section>`;

  // Thrown inside a call's setup when the caller hung up while it was waiting.
  const CANCELLED = new Error("cancelled");

  const element = (tag, properties) => Object.assign(document.createElement(tag), properties);

  function bilingual(el, [sn, en], separator = " / ") {
    const part = (lang, textContent) => element("span", { lang, textContent });
    el.replaceChildren(part("sn", sn), separator, part("en", en));
  }

  // A transfer target as a link's href and text; null for none or anything else (no other scheme
  // may reach an href).
  function transferLink(target) {
    const number = /^(tel:)?(\+?[\d\s-]{3,})$/.exec(target || "");
    if (number) return { href: `tel:${number[2].replace(/[\s-]/g, "")}`, textContent: number[2] };
    const sip = /^sips?:[^\s<>"'`]+$/i.exec(target || "");
    return sip ? { href: sip[0], textContent: sip[0] } : null;
  }

  function optionsFrom(data) {
    const gateway = (data.gateway || new URL(script.src).origin).replace(/\/+$/, "");
    let iceServers = [];
    if (data.iceServers) {
      iceServers = JSON.parse(data.iceServers);
      if (!Array.isArray(iceServers)) throw new Error("data-ice-servers must be a JSON list of RTCIceServer");
    }
    return {
      gateway,
      token: data.token || "",
      tokenUrl: data.tokenUrl || gateway + "/widget/token",
      iceServers,
      caller: data.caller || "",
      dialled: data.dialled || "",
      target: data.target || "inzwa-widget",
    };
  }

  async function postJson(url, body, signal, token) {
    let response;
    const headers = { "Content-Type": "application/json" };
    // The call token goes in a header: the gateway checks it before it reads the offer.
    if (token) headers.Authorization = `Bearer ${token}`;
    try {
      response = await fetch(url, {
        method: "POST",
        headers,
        body: JSON.stringify(body),
        signal,
      });
    } catch {
      // A refused cross-origin request (CORS) looks the same to a page as a network failure.
      throw signal.aborted ? CANCELLED : new Error(`cannot reach ${new URL(url).host} (network or CORS)`);
    }
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(data.error?.message || `${url} answered ${response.status}`);
    return data;
  }

  // No trickle ICE: the offer goes out once it holds every candidate, or when gathering is too slow
  // (an unreachable STUN server), with the candidates found so far.
  function iceGathered(pc) {
    return new Promise((resolve) => {
      const done = () => {
        if (pc.iceGatheringState !== "complete") return;
        pc.removeEventListener("icegatheringstatechange", done);
        resolve();
      };
      pc.addEventListener("icegatheringstatechange", done);
      setTimeout(resolve, ICE_GATHERING_TIMEOUT_MS);
      done();
    });
  }

  async function microphone() {
    if (!navigator.mediaDevices?.getUserMedia) throw new Error("calls need a secure page (https)");
    try {
      return await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true } });
    } catch (err) {
      if (err.name === "NotAllowedError") throw new Error("the microphone is blocked: allow it to call");
      if (err.name === "NotFoundError") throw new Error("no microphone found");
      throw err;
    }
  }

  // Media a call holds; safe to run twice, since setup may still be acquiring when the caller hangs up.
  function releaseMedia(call) {
    clearInterval(call.meter);
    call.mic?.getTracks().forEach((track) => track.stop());
    call.pc?.close();
  }

  class Widget {
    constructor(root, options) {
      this.options = options;
      this.state = "idle";
      this.callId = null;
      this.rmsMax = 0;
      this.events = [];
      this.error = null;
      this.call = null;

      root.innerHTML = TEMPLATE;
      const find = (selector) => root.querySelector(selector);
      this.section = find(".inzwa");
      this.stateText = find(".inzwa-state");
      this.levelBar = find(".inzwa-level-bar");
      this.callButton = find(".inzwa-call");
      this.hangUpButton = find(".inzwa-hangup");
      this.zeroButton = find(".inzwa-zero");
      this.transcript = find(".inzwa-transcript");
      this.partial = find(".inzwa-partial");
      this.talk = find(".inzwa-talk");
      this.audio = find(".inzwa-audio");

      this.section.setAttribute("aria-label", TEXT.helpline.join(" / "));
      this.transcript.setAttribute("aria-label", TEXT.transcript.join(" / "));
      bilingual(this.callButton, TEXT.call, " ");
      bilingual(this.hangUpButton, TEXT.hangUp, " ");
      bilingual(this.zeroButton, TEXT.zero, " ");
      this.callButton.addEventListener("click", () => this.start());
      this.hangUpButton.addEventListener("click", () => this.hangUp());
      this.zeroButton.addEventListener("click", () => this.sendDigit("0"));
      this.setState("idle");
    }

    setState(state, detail) {
      this.state = state;
      this.section.dataset.state = state;
      bilingual(this.stateText, TEXT[state]);
      if (detail) this.stateText.append(element("span", { className: "inzwa-detail", textContent: detail }));

      const focused = document.activeElement;
      const inCall = IN_CALL.has(state);
      this.callButton.hidden = inCall;
      this.hangUpButton.hidden = !inCall;
      this.zeroButton.hidden = state !== "listening" && state !== "speaking";
      // A keyboard user whose button just disappeared lands on the one that replaces it.
      if (focused?.hidden) (inCall ? this.hangUpButton : this.callButton).focus();
    }

    async start() {
      if (this.call) return;
      // The audio context is made inside the click, so autoplay policies let it run.
      const call = { closed: false, abort: new AbortController(), audioContext: new AudioContext() };
      call.ended = new Promise((resolve) => (call.resolveEnded = resolve));
      this.call = call;
      this.callId = null;
      this.rmsMax = 0;
      this.events = [];
      this.error = null;
      this.transcript.replaceChildren();
      this.partial.textContent = "";
      this.setState("connecting");
      try {
        await this.connect(call);
      } catch (err) {
        if (call.closed) releaseMedia(call);
        else this.finish(call, "error", err.message || String(err));
      }
    }

    async connect(call) {
      const stillOpen = () => {
        if (call.closed) throw CANCELLED;
      };
      call.mic = await microphone();
      stillOpen();
      const pc = new RTCPeerConnection({ iceServers: this.options.iceServers });
      call.pc = pc;
      // The gateway's events come on this channel; it must exist before the offer, so the offer
      // carries the data channel's m-line.
      const channel = pc.createDataChannel("events");
      call.channel = channel;
      channel.addEventListener("message", (e) => this.onEvent(call, e.data));
      channel.addEventListener("close", () => this.finish(call, "ended"));
      pc.addEventListener("track", (e) => this.playHelpline(call, e.track));
      pc.addEventListener("connectionstatechange", () => {
        if (pc.connectionState !== "failed") return;
        this.finish(call, "error", "the connection failed (a TURN server may be needed)");
      });
      pc.addTrack(call.mic.getAudioTracks()[0], call.mic);

      await pc.setLocalDescription(await pc.createOffer());
      await iceGathered(pc);
      stillOpen();
      const { token, tokenUrl, caller, dialled, gateway } = this.options;
      const callToken = token || (await postJson(tokenUrl, {}, call.abort.signal)).token;
      stillOpen();
      const offer = { sdp: pc.localDescription.sdp, type: "offer", caller, dialled };
      const answer = await postJson(gateway + "/v1/webrtc/offer", offer, call.abort.signal, callToken);
      stillOpen();
      this.callId = answer.call_id;
      await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    }

    playHelpline(call, track) {
      const stream = new MediaStream([track]);
      // Chromium feeds a remote WebRTC stream to Web Audio only while a media element plays it.
      this.audio.srcObject = stream;
      const analyser = call.audioContext.createAnalyser();
      analyser.fftSize = 2048;
      call.audioContext.createMediaStreamSource(stream).connect(analyser);
      const samples = new Float32Array(analyser.fftSize);
      call.meter = setInterval(() => {
        analyser.getFloatTimeDomainData(samples);
        const rms = Math.sqrt(samples.reduce((sum, s) => sum + s * s, 0) / samples.length);
        this.rmsMax = Math.max(this.rmsMax, rms);
        this.levelBar.style.transform = `scaleX(${Math.min(1, rms * 5)})`;
      }, METER_INTERVAL_MS);
    }

    onEvent(call, data) {
      if (call !== this.call) return;
      let event;
      try {
        event = JSON.parse(data);
      } catch {
        return;
      }
      this.events.push(event);
      if (this.events.length > MAX_EVENTS) this.events.shift();
      switch (event.type) {
        case "session.started":
          this.callId = event.call_id;
          this.setState("listening");
          break;
        case "asr.partial":
          this.partial.textContent = event.text;
          break;
        case "asr.final":
          this.partial.textContent = "";
          if (event.text) this.line("caller", TEXT.you).append(` ${event.text}`);
          break;
        case "llm.partial":
          this.helperLine(event.id).append(` ${event.text}`);
          break;
        case "tts.start":
          this.setState("speaking");
          break;
        case "barge_in":
          // Only a turn that had started speaking has a line to mark.
          this.transcript.querySelector(`[data-turn="${CSS.escape(event.id)}"]`)?.classList.add("inzwa-cut");
          this.setState("listening");
          break;
        case "tts.end":
          this.setState("listening");
          break;
        case "transfer":
          this.transferNote(event.target);
          break;
        case "error":
          this.error = event.message;
          if (!event.recoverable) this.finish(call, "error", event.message);
          break;
        case "call.end":
          this.finish(call, "ended");
          break;
      }
      this.talk.scrollTop = this.talk.scrollHeight;
    }

    line(kind, who) {
      const el = element("p", { className: `inzwa-line inzwa-${kind}` });
      const label = element("b");
      bilingual(label, who);
      el.append(label);
      this.transcript.append(el);
      return el;
    }

    // One line per helper turn: its phrases arrive one by one, as each starts playing.
    helperLine(id) {
      const existing = this.transcript.querySelector(`[data-turn="${CSS.escape(id)}"]`);
      if (existing) return existing;
      const el = this.line("helper", TEXT.helper);
      el.dataset.turn = id;
      return el;
    }

    // The gateway cannot bridge a browser to a person: the call stays with the helper, and the
    // note offers the profile's target as a link (tel: for a number, sip: for a SIP URI). No
    // target (after hours): the note says so, and the helper says when people are in.
    transferNote(target) {
      const note = element("p", { className: "inzwa-line inzwa-note" });
      const link = transferLink(target);
      if (link) {
        bilingual(note, TEXT.transfer);
        note.append(": ", element("a", { className: "inzwa-transfer", ...link }));
      } else {
        bilingual(note, TEXT.noPerson);
      }
      this.transcript.append(note);
    }

    sendDigit(digit) {
      if (this.call?.channel?.readyState === "open") this.call.channel.send(JSON.stringify({ type: "dtmf", digit }));
    }

    async hangUp() {
      const call = this.call;
      if (!call) return;
      if (call.channel?.readyState === "open") {
        call.channel.send(JSON.stringify({ type: "stop" }));
        // Closing the connection at once could drop the stop: wait for the gateway's call.end, briefly.
        await Promise.race([call.ended, new Promise((resolve) => setTimeout(resolve, HANGUP_GRACE_MS))]);
      }
      this.finish(call, "ended");
    }

    finish(call, state, detail) {
      if (call.closed) return;
      call.closed = true;
      call.abort.abort();
      releaseMedia(call);
      call.audioContext.close();
      this.call = null;
      if (state === "error") this.error = detail;
      this.audio.srcObject = null;
      this.partial.textContent = "";
      this.levelBar.style.transform = "scaleX(0)";
      this.setState(state, detail);
      call.resolveEnded();
    }
  }

  function mount() {
    const options = optionsFrom(script.dataset);
    const root = document.getElementById(options.target);
    if (!root) {
      console.error(`Inzwa widget: no element with id "${options.target}" to render into`);
      return;
    }
    const stylesheet = new URL("widget.css", script.src).href;
    if (![...document.styleSheets].some((sheet) => sheet.href === stylesheet)) {
      document.head.append(element("link", { rel: "stylesheet", href: stylesheet }));
    }
    window.inzwaWidget = new Widget(root, options);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", mount);
  else mount();
})();
