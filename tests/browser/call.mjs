// One call through the web widget in Debian's Chromium, as tests/test_widget.py runs it:
//
//   node tests/browser/call.mjs <page-url> <speech.wav> <out-dir>
//
// <page-url> is a page with the widget: the gateway's own /widget/, or a helpline's page embedding it.
// The fake microphone plays <speech.wav> (16-bit PCM, looped). Everything is done with the keyboard:
// call, wait until the transcript shows the caller's question and the helper's answer is heard,
// press 0 (talk to a person), hang up. Saves <out-dir>/widget.png and prints one JSON line;
// exits 1 when a step failed (the JSON says which, in "error").
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [pageUrl, wav, outDir] = process.argv.slice(2);
if (!outDir) {
  console.error("usage: node call.mjs <page-url> <speech.wav> <out-dir>");
  process.exit(2);
}

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ANSWER_TIMEOUT_MS = 90_000; // greeting, the question, its endpoint and the first phrase of the answer
const STEP_TIMEOUT_MS = 15_000;
// Peak RMS of the helper's audio (full scale 1.0) that counts as hearing it; silence stays far below.
const RMS_THRESHOLD = 0.02;

const ARGS = [
  "--headless=new",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--use-fake-ui-for-media-stream",
  "--use-fake-device-for-media-stream",
  `--use-file-for-fake-audio-capture=${wav}`,
  "--allow-loopback-in-peer-connection",
  "--disable-features=WebRtcHideLocalIpsWithMdns",
  "--autoplay-policy=no-user-gesture-required",
];

const started = Date.now();
const result = { ok: false, error: null, step: "launch", consoleErrors: [] };

// Presses Enter on a button the way a keyboard user reaches it: focus, then the key.
async function press(page, selector) {
  await page.focus(selector);
  await page.keyboard.press("Enter");
}

const widgetState = (page) =>
  page.evaluate(() => ({ state: window.inzwaWidget.state, error: window.inzwaWidget.error }));

// Waits until the widget reaches a state; an error state fails the step at once, with its message.
// The state is read in the same evaluation that saw it: read again later, the call may already
// have moved on (listening becomes speaking as soon as the greeting plays).
async function waitForState(page, wanted) {
  const reached = (w) => {
    const { state, error } = window.inzwaWidget;
    return [w, "error"].includes(state) ? { state, error } : null;
  };
  const seen = await page.waitForFunction(reached, wanted, { timeout: STEP_TIMEOUT_MS });
  const { state, error } = await seen.jsonValue();
  if (state !== wanted) throw new Error(`widget error: ${error}`);
}

// The page in the middle of the call; or, when a step failed, as it was then.
async function screenshot(page) {
  await page.screenshot({ path: join(outDir, "widget.png"), fullPage: true, timeout: STEP_TIMEOUT_MS });
  result.screenshot = true;
}

const userDataDir = await mkdtemp(join(tmpdir(), "inzwa-chromium-"));
let context;
let page;
try {
  // headless stays false here: --headless=new in ARGS picks the mode explicitly.
  const options = { executablePath: CHROMIUM, headless: false, args: ARGS };
  context = await chromium.launchPersistentContext(userDataDir, options);
  page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (msg) => msg.type() === "error" && result.consoleErrors.push(msg.text()));
  page.on("pageerror", (err) => result.consoleErrors.push(String(err)));

  result.step = "open";
  await page.goto(pageUrl, { timeout: STEP_TIMEOUT_MS });
  await page.waitForSelector(".inzwa-call", { timeout: STEP_TIMEOUT_MS });
  // Every state the page shows, in order, as its data-state attribute changes.
  await page.evaluate(() => {
    const section = document.querySelector(".inzwa");
    window.seenStates = [section.dataset.state];
    new MutationObserver(() => window.seenStates.push(section.dataset.state)).observe(section, {
      attributeFilter: ["data-state"],
    });
  });

  result.step = "call";
  await press(page, ".inzwa-call");
  result.focusAfterCall = await page.evaluate(() => document.activeElement.className);
  await waitForState(page, "listening");

  result.step = "answer";
  // Done when the transcript shows a caller turn and the start of the helper's answer to it
  // (llm.partial of the same id), and the remote track has carried sound.
  await page.waitForFunction(
    (threshold) => {
      const w = window.inzwaWidget;
      if (w.state === "error" || w.state === "ended") return true;
      const answered = w.events.some(
        (e) => e.type === "asr.final" && w.events.some((p) => p.type === "llm.partial" && p.id === e.id),
      );
      return answered && document.querySelector(".inzwa-caller") && w.rmsMax > threshold;
    },
    RMS_THRESHOLD,
    { timeout: ANSWER_TIMEOUT_MS, polling: 200 },
  );
  const { state, error } = await widgetState(page);
  if (state !== "listening" && state !== "speaking") throw new Error(`the call stopped: ${state} (${error})`);
  await screenshot(page);

  result.step = "zero";
  await press(page, ".inzwa-zero");
  await page.waitForFunction(() => window.inzwaWidget.events.some((e) => e.type === "transfer"), null, {
    timeout: STEP_TIMEOUT_MS,
  });
  result.transferNote = await page.textContent(".inzwa-note");
  result.transferHref = await page.getAttribute(".inzwa-note a.inzwa-transfer", "href");

  result.step = "hang up";
  await press(page, ".inzwa-hangup");
  await waitForState(page, "ended");
  result.focusAfterHangUp = await page.evaluate(() => document.activeElement.className);
  result.ok = true;
} catch (err) {
  result.error = err.message.split("\n")[0];
} finally {
  if (page) {
    if (!result.screenshot) await screenshot(page).catch(() => {});
    Object.assign(
      result,
      await page
        .evaluate(() => {
          const w = window.inzwaWidget;
          const texts = (selector) => [...document.querySelectorAll(selector)].map((el) => el.textContent.trim());
          return {
            state: w?.state,
            widgetError: w?.error,
            callId: w?.callId,
            rmsMax: w?.rmsMax,
            states: window.seenStates,
            eventTypes: w?.events.map((e) => e.type),
            finals: w?.events.filter((e) => e.type === "asr.final").map((e) => e.text),
            callerLines: texts(".inzwa-caller"),
            helperLines: texts(".inzwa-helper"),
          };
        })
        .catch(() => ({})),
    );
  }
  await context?.close();
  await rm(userDataDir, { recursive: true, force: true });
}
result.elapsedMs = Date.now() - started;
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
