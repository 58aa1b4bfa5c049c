// End-to-end test of the browser app: two people (alice and bob) in two browser contexts of
// Debian's headless Chromium, driven with playwright-core.
//
//   CHAT_E2E_URL=http://127.0.0.1:8080/ node run.mjs     # against a running stack (CHAT_DEV_LOGIN=true)
//   node run.mjs --mock                                   # against the SDK's in-process fake edge
//
// Env: CHAT_E2E_URL (the app's URL), CHROMIUM_PATH (default /usr/bin/chromium), CHAT_E2E_TIMEOUT_MS
// (per step wait, default 10000), CHAT_E2E_ARTIFACTS (screenshots of failures, default ./artifacts),
// CHAT_E2E_TRACE=1 (print every WebSocket frame), CHAT_E2E_SHOTS=1 (screenshots at the end),
// E2E_SKIP (a comma list of check names, e.g. "presence,status": those checks are not run and are
// reported as skipped, never as passed; see CHECKS below).
// Exits non-zero on any failure (or on a check not run because an earlier critical one failed);
// the last line is "N passed, N failed[, N skipped]".

import { mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const mock = process.argv.includes("--mock");
const timeout = Number(process.env.CHAT_E2E_TIMEOUT_MS ?? 10_000);
const artifacts = resolve(process.env.CHAT_E2E_ARTIFACTS ?? join(here, "artifacts"));

const results = { passed: 0, failed: 0, skipped: 0, blocked: 0 };
let stopped = false;

/** The name of every check, for E2E_SKIP. */
const CHECKS = [
  "sign-in", "join", "presence", "typing", "message", "reply", "text-not-html", "reload-history",
  "unread", "status", "dm-notification", "private-room", "bulk", "scroll-back", "search",
  // The message lifecycle (protocol.md#ws-lifecycle: needs a backend that has it) ...
  "edit", "delete", "react", "quote-reply", "thread",
  // ... and the app's own behaviour (any backend).
  "incremental", "new-messages", "leave-invite", "phone", "retry", "no-errors",
];
const skip = new Set(
  (process.env.E2E_SKIP ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean),
);
for (const name of skip) {
  if (!CHECKS.includes(name)) {
    console.error(`E2E_SKIP: unknown check "${name}" (known: ${CHECKS.join(", ")})`);
    process.exit(2);
  }
}

function finish(code) {
  console.log(`${results.passed} passed, ${results.failed} failed${results.skipped ? `, ${results.skipped} skipped` : ""}`);
  process.exit(code);
}

let fake = null;
let base = process.env.CHAT_E2E_URL;
if (mock) {
  const { FakeServer } = await import("../sdk/test/fake-server.mjs");
  fake = await new FakeServer({ devLogin: true, staticDir: resolve(here, "../web") }).start();
  base = `${fake.httpUrl}/`;
}
if (!base) {
  console.error("CHAT_E2E_URL is not set (the URL of the web app on a stack with CHAT_DEV_LOGIN=true); or pass --mock");
  results.failed = 1;
  finish(2);
}

const browser = await chromium
  .launch({
    executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-quic",
      "--no-first-run",
      "--disable-sync",
    ],
  })
  .catch((err) => {
    console.error(`cannot launch Chromium: ${err.message}`);
    results.failed = 1;
    finish(2);
  });

const pageErrors = [];
async function person(name, contextOptions = { viewport: { width: 1200, height: 800 } }, { consoleErrors = true } = {}) {
  const context = await browser.newContext(contextOptions);
  const page = await context.newPage();
  page.setDefaultTimeout(timeout);
  page.on("pageerror", (err) => pageErrors.push(`${name}: ${err.message}`));
  page.on("console", (msg) => {
    if (consoleErrors && msg.type() === "error") pageErrors.push(`${name}: console: ${msg.text()}`);
  });
  if (process.env.CHAT_E2E_TRACE) {
    page.on("websocket", (ws) => {
      ws.on("framesent", (f) => console.log(`  ${name} > ${String(f.payload).slice(0, 300)}`));
      ws.on("framereceived", (f) => console.log(`  ${name} < ${String(f.payload).slice(0, 300)}`));
    });
  }
  return { name, context, page };
}

/**
 * Runs one check. A failed critical step (sign-in, joining, the message exchange) skips the rest,
 * which build on it; a failed independent step (presence, typing, …) is counted and the run goes on.
 */
async function step(name, title, fn, pages = [], { critical = true } = {}) {
  if (!CHECKS.includes(name)) throw new Error(`unlisted check name ${name}`);
  if (skip.has(name)) {
    results.skipped++;
    console.log(`skip ${title} [${name}] (E2E_SKIP)`);
    return;
  }
  if (stopped) {
    results.skipped++;
    results.blocked++;
    console.log(`skip ${title} [${name}] (an earlier critical check failed)`);
    return;
  }
  const started = Date.now();
  try {
    await fn();
    results.passed++;
    console.log(`ok   ${title} [${name}] (${Date.now() - started} ms)`);
  } catch (err) {
    results.failed++;
    if (critical) stopped = true;
    console.log(`FAIL ${title} [${name}]: ${err.message.split("\n")[0]}`);
    mkdirSync(artifacts, { recursive: true });
    for (const p of pages) {
      const file = join(artifacts, `${title.replace(/[^a-z0-9]+/gi, "-")}-${p.name}.png`);
      await p.page.screenshot({ path: file, fullPage: true }).catch(() => {});
      console.log(`     screenshot: ${file}`);
    }
  }
}

const suffix = Math.random().toString(36).slice(2, 10);
const room = `e2e-${suffix}`;
const other = `e2e-${suffix}-b`;
const secret = `e2e-${suffix}-p`;
const BULK = 60; // more than one history page (50)
const aliceId = `alice-${suffix}`;
const bobId = `bob-${suffix}`;

const alice = await person("alice");
const bob = await person("bob");
const both = [alice, bob];

const message = (p, text) => p.page.locator("#message-list .message:not(.pending) .body", { hasText: text });

async function signIn(p, user) {
  await p.page.goto(base);
  await p.page.locator("#dev-user").fill(user);
  await p.page.locator("#dev-signin").click();
  await p.page.locator('#conn[data-state="open"]').waitFor();
}

async function joinRoom(p, id) {
  await p.page.locator("#join-room").fill(id);
  await p.page.locator("#join-btn").click();
  await p.page.locator(`#rooms button[data-room="${id}"][aria-current="true"]`).waitFor();
  await p.page.locator("#room-title", { hasText: id }).waitFor();
}

/** A message's list item (not a pending one) by its body text, or by its seq. */
const item = (p, text) => p.page.locator("#message-list li.message:not(.pending)", { has: p.page.locator(".body", { hasText: text }) });
const bySeq = (p, seq, list = "#message-list") => p.page.locator(`${list} li[data-seq="${seq}"]`);

/** Says `text` and waits until both see it; returns its seq. */
async function posted(p, text, others) {
  await say(p, text);
  await item(p, text).waitFor();
  for (const o of others) await item(o, text).waitFor();
  return item(p, text).getAttribute("data-seq");
}

async function act(p, li, action) {
  await li.hover();
  await li.locator(`button[data-action="${action}"]`).first().click();
}

async function say(p, text) {
  await p.page.locator("#composer-input").fill(text);
  await p.page.locator("#composer-input").press("Enter");
}

try {
  await step("sign-in", "alice and bob sign in with the development sign-in", async () => {
    await Promise.all([signIn(alice, aliceId), signIn(bob, bobId)]);
  }, both);

  await step("join", `alice joins ${room}, then bob`, async () => {
    await joinRoom(alice, room);
    await joinRoom(bob, room);
  }, both);

  await step("presence", "bob sees alice online (presence dot)", async () => {
    await bob.page.locator(`#member-list .member[data-user="${aliceId}"] .dot[data-status="online"]`).waitFor();
  }, both, { critical: false });

  await step("typing", "bob sees alice typing", async () => {
    await alice.page.locator("#composer-input").pressSequentially("hello bo", { delay: 40 });
    await bob.page.locator("#typing", { hasText: `${aliceId} is typing` }).waitFor();
  }, both, { critical: false });

  await step("message", "alice's message reaches bob", async () => {
    await alice.page.locator("#composer-input").fill("");
    await say(alice, "hello bob, from alice");
    await message(bob, "hello bob, from alice").waitFor();
    await message(alice, "hello bob, from alice").waitFor();
  }, both);

  await step("reply", "bob's reply reaches alice", async () => {
    await say(bob, "hi alice, bob here");
    await message(alice, "hi alice, bob here").waitFor();
  }, both);

  await step("text-not-html", "message text is rendered as text, never as HTML", async () => {
    const hostile = `<img src=x onerror="window.__pwned=1"><b>bold?</b> ${suffix}`;
    await say(alice, hostile);
    await message(bob, suffix).waitFor();
    const body = await message(bob, suffix).textContent();
    if (body !== hostile) throw new Error(`body shown as ${JSON.stringify(body)}`);
    const injected = await bob.page.evaluate(() => ({
      pwned: window.__pwned ?? null,
      elements: document.querySelectorAll("#message-list img, #message-list b").length,
    }));
    if (injected.pwned !== null || injected.elements !== 0) throw new Error(`markup was interpreted: ${JSON.stringify(injected)}`);
  }, both, { critical: false });

  await step("reload-history", "bob reloads and sees the history again", async () => {
    await bob.page.reload();
    await bob.page.locator('#conn[data-state="open"]').waitFor();
    const selected = bob.page.locator(`#rooms button[data-room="${room}"]`);
    await selected.waitFor();
    if ((await selected.getAttribute("aria-current")) !== "true") await selected.click();
    await message(bob, "hello bob, from alice").waitFor();
    await message(bob, "hi alice, bob here").waitFor();
    const order = await bob.page.locator("#message-list .message .body").allTextContents();
    if (order.indexOf("hello bob, from alice") > order.indexOf("hi alice, bob here")) throw new Error(`out of order: ${JSON.stringify(order)}`);
  }, both);

  await step("unread", "an unread badge appears for a room bob is not looking at", async () => {
    await joinRoom(bob, other);
    await joinRoom(alice, other);
    await bob.page.locator(`#rooms button[data-room="${room}"]`).click();
    await bob.page.locator("#room-title", { hasText: room }).waitFor();
    await say(alice, "news in the other room");
    await bob.page.locator(`#rooms button[data-room="${other}"] .badge`, { hasText: "1" }).waitFor();
    // What bob has read carries no badge.
    await bob.page.locator(`#rooms button[data-room="${room}"] .badge`).waitFor({ state: "detached" });
  }, both, { critical: false });

  await step("status", "bob's status change shows on alice's side", async () => {
    await bob.page.locator("#status").selectOption("busy");
    await alice.page.locator(`#member-list .member[data-user="${bobId}"][data-status="busy"]`).waitFor();
  }, both, { critical: false });

  await step("dm-notification", "a direct message notifies bob, who opens it", async () => {
    const details = alice.page.locator("#dm-details");
    if ((await details.getAttribute("open")) === null) await details.locator("summary").click();
    await alice.page.locator("#dm-user").fill(bobId);
    await alice.page.locator("#dm-btn").click();
    await alice.page.locator("#room-title", { hasText: `@${bobId}` }).waitFor();
    await say(alice, "a private word");
    const note = bob.page.locator("#notifications li[data-kind='dm'] button", { hasText: "a private word" });
    await note.waitFor();
    await note.click();
    await bob.page.locator("#room-title", { hasText: `@${aliceId}` }).waitFor();
    await message(bob, "a private word").waitFor();
  }, both, { critical: false });

  await step("private-room", "alice creates a private room with bob as a member", async () => {
    const details = alice.page.locator("#create-details");
    if ((await details.getAttribute("open")) === null) await details.locator("summary").click();
    await alice.page.locator("#create-room").fill(secret);
    await alice.page.locator("#create-members").fill(bobId);
    await alice.page.locator("#create-private").check();
    await alice.page.locator("#create-btn").click();
    await alice.page.locator(`#rooms button[data-room="${secret}"][data-kind="private"][aria-current="true"]`).waitFor();
    await say(alice, "the secret plan");
    await message(alice, "the secret plan").waitFor();
  }, both, { critical: false });

  await step("bulk", `alice sends ${BULK} more messages to ${room}`, async () => {
    await alice.page.locator(`#rooms button[data-room="${room}"]`).click();
    await alice.page.locator("#room-title", { hasText: room }).waitFor();
    for (let i = 0; i < BULK; i++) await say(alice, `bulk ${i}`);
    await message(alice, `bulk ${BULK - 1}`).waitFor({ timeout: timeout * 3 });
    await alice.page.locator("#message-list .message.pending").first().waitFor({ state: "detached", timeout: timeout * 3 });
  }, both);

  await step("scroll-back", "after a reload bob finds the private room, and scrolls back through history", async () => {
    await bob.page.reload();
    await bob.page.locator('#conn[data-state="open"]').waitFor();
    await bob.page.locator(`#rooms button[data-room="${secret}"][data-kind="private"]`).click();
    await message(bob, "the secret plan").waitFor();
    await bob.page.locator(`#rooms button[data-room="${room}"]`).click();
    await message(bob, `bulk ${BULK - 1}`).waitFor();
    if ((await message(bob, "hello bob, from alice").count()) !== 0) throw new Error("expected only the newest page at first");
    await bob.page.locator("#older").click();
    await message(bob, "hello bob, from alice").waitFor();
    const bodies = await bob.page.locator("#message-list .message .body").allTextContents();
    const bulk = bodies.filter((b) => b.startsWith("bulk "));
    if (bulk.length !== BULK) throw new Error(`expected ${BULK} bulk messages once each, saw ${bulk.length}`);
    if (bulk.some((b, i) => b !== `bulk ${i}`)) throw new Error("bulk messages out of order");
  }, both);

  await step("search", "bob searches, and a result opens the room at the message with history around it", async () => {
    await bob.page.locator(`#rooms button[data-room="${other}"]`).click();
    await bob.page.locator("#room-title", { hasText: other }).waitFor();
    await bob.page.locator("#search-input").fill('"hello bob" -nothing');
    await bob.page.locator("#search-btn").click();
    const result = bob.page.locator("#search-results .result", { hasText: "hello bob, from alice" });
    await result.waitFor();
    if ((await bob.page.locator("#search-results .result").count()) !== 1) throw new Error("expected exactly one result");
    await result.click();
    await bob.page.locator("#room-title", { hasText: room }).waitFor();
    await bob.page.locator("#message-list .message.found .body", { hasText: "hello bob, from alice" }).waitFor();
    // History around it.
    await message(bob, "hi alice, bob here").waitFor();
    await message(bob, "bulk 10").waitFor();
    // Scrolled to it: the found message is inside the visible part of the list.
    const visible = await bob.page.locator("#message-list .message.found").first().evaluate((el) => {
      const list = document.getElementById("message-list").getBoundingClientRect();
      const r = el.getBoundingClientRect();
      return r.bottom > list.top && r.top < list.bottom;
    });
    if (!visible) throw new Error("the found message is not scrolled into view");
    // bob had this room loaded whole (scroll-back above), so the app shows it at the message
    // rather than a window around it; the window path (a room not loaded) is not exercised here.
  }, both, { critical: false });

  let edited = null; // seq of alice's edited message, reused by the later checks
  await step("edit", "alice edits her message; bob sees the new text, marked edited", async () => {
    const seq = await posted(alice, `typo hree ${suffix}`, [bob]);
    const mine = bySeq(alice, seq);
    await act(alice, mine, "edit");
    await mine.locator(".edit-input").fill(`typo fixed ${suffix}`);
    await mine.locator(".edit-input").press("Enter");
    const theirs = bySeq(bob, seq);
    await theirs.locator(".body", { hasText: `typo fixed ${suffix}` }).waitFor();
    await theirs.locator(".edited").waitFor();
    await mine.locator(".edited").waitFor();
    if ((await theirs.locator(".body").textContent()) !== `typo fixed ${suffix}`) throw new Error("old text still shown");
    // Only the author is offered edit and delete.
    if ((await theirs.locator('button[data-action="edit"], button[data-action="delete"]').count()) !== 0) throw new Error("bob is offered to edit alice's message");
    edited = seq;
  }, both, { critical: false });

  await step("delete", "alice deletes a message; both see a tombstone and the text is gone", async () => {
    const text = `regrettable ${suffix}`;
    const seq = await posted(alice, text, [bob]);
    await act(alice, bySeq(alice, seq), "delete");
    await bySeq(alice, seq).locator('button[data-action="confirm-delete"]').click();
    for (const p of both) {
      await bySeq(p, seq).locator(".tombstone").waitFor();
      const shown = await p.page.locator("#message-list").textContent();
      if (shown.includes(text)) throw new Error(`${p.name} still shows the deleted text`);
    }
  }, both, { critical: false });

  await step("react", "bob reacts with the picker; counts and who reacted show on both sides, and toggle", async () => {
    if (edited === null) edited = await posted(alice, `react to me ${suffix}`, [bob]);
    const theirs = bySeq(bob, edited);
    await act(bob, theirs, "picker");
    await theirs.locator('.picker button[data-emoji="👍"]').click();
    const chip = (p) => bySeq(p, edited).locator('.reaction[data-emoji="👍"]');
    await chip(alice).locator(".count", { hasText: "1" }).waitFor();
    if ((await chip(alice).getAttribute("title")) !== bobId) throw new Error(`who reacted: ${await chip(alice).getAttribute("title")}`);
    if ((await chip(alice).getAttribute("aria-pressed")) !== "false") throw new Error("alice's chip pressed before she reacted");
    await chip(alice).click();
    await chip(bob).locator(".count", { hasText: "2" }).waitFor();
    if ((await chip(bob).getAttribute("title")) !== `${bobId}, ${aliceId}`) throw new Error(`order of who reacted: ${await chip(bob).getAttribute("title")}`);
    await chip(bob).click(); // bob takes his back
    await chip(alice).locator(".count", { hasText: "1" }).waitFor();
    await bySeq(alice, edited).locator('.reaction[data-emoji="👍"][aria-pressed="true"]').waitFor();
    if ((await chip(alice).getAttribute("title")) !== aliceId) throw new Error("bob's reaction still listed");
  }, both, { critical: false });

  await step("quote-reply", "bob replies to alice's message with a quote of it", async () => {
    const quoted = await posted(alice, `quote me ${suffix}`, [bob]);
    await act(bob, bySeq(bob, quoted), "reply");
    await bob.page.locator("#reply-bar:not([hidden])", { hasText: `quote me ${suffix}` }).waitFor();
    await say(bob, `that is a reply ${suffix}`);
    const reply = item(alice, `that is a reply ${suffix}`);
    await reply.waitFor();
    await reply.locator(".quote", { hasText: `quote me ${suffix}` }).waitFor();
    await reply.locator(".quote .quote-from", { hasText: aliceId }).waitFor();
    if (!(await bob.page.locator("#reply-bar").isHidden())) throw new Error("the reply bar stayed after sending");
  }, both, { critical: false });

  await step("thread", "alice starts a thread in the side panel; bob sees the reply count and opens it", async () => {
    const root = await posted(alice, `thread root ${suffix}`, [bob]);
    await act(alice, bySeq(alice, root), "open-thread");
    await alice.page.locator("#thread-panel:not([hidden])").waitFor();
    await bySeq(alice, root, "#thread-list").waitFor();
    await alice.page.locator("#thread-input").fill(`inside the thread ${suffix}`);
    await alice.page.locator("#thread-input").press("Enter");
    await alice.page.locator("#thread-list li.message:not(.pending) .body", { hasText: `inside the thread ${suffix}` }).waitFor();
    const link = bySeq(bob, root).locator(".thread-link", { hasText: "1 reply" });
    await link.waitFor();
    await link.click();
    await bob.page.locator("#thread-list .body", { hasText: `inside the thread ${suffix}` }).waitFor();
    if ((await item(bob, `inside the thread ${suffix}`).count()) !== 0) throw new Error("a thread message is shown in the main list");
    await bob.page.locator("#thread-close").click();
    await alice.page.locator("#thread-close").click();
    await bob.page.locator("#thread-panel").waitFor({ state: "hidden" });
  }, both, { critical: false });

  await step("incremental", "a new message leaves the other messages' DOM nodes and a text selection alone", async () => {
    const text = `select me ${suffix}`;
    await posted(alice, text, [bob]);
    await bob.page.evaluate((t) => {
      const li = [...document.querySelectorAll("#message-list li.message")].find((l) => l.querySelector(".body")?.textContent === t);
      li.__e2eMark = "kept";
      const range = document.createRange();
      range.selectNodeContents(li.querySelector(".body"));
      getSelection().removeAllRanges();
      getSelection().addRange(range);
    }, text);
    await posted(alice, `after the selection ${suffix}`, [bob]);
    await posted(alice, `and one more ${suffix}`, [bob]);
    const seen = await bob.page.evaluate((t) => {
      const li = [...document.querySelectorAll("#message-list li.message")].find((l) => l.querySelector(".body")?.textContent === t);
      return { mark: li?.__e2eMark ?? null, selected: getSelection().toString() };
    }, text);
    if (seen.mark !== "kept") throw new Error("the message's node was replaced");
    if (seen.selected !== text) throw new Error(`the selection became ${JSON.stringify(seen.selected)}`);
  }, both, { critical: false });

  await step("new-messages", "scrolled up, bob gets a \"new messages\" button that takes him down", async () => {
    await bob.page.locator("#messages").evaluate((box) => (box.scrollTop = 60));
    const indicator = bob.page.locator("#new-indicator");
    if (!(await indicator.isHidden())) throw new Error("indicator shown before any new message");
    await say(alice, `while bob reads old ones ${suffix}`);
    await item(bob, `while bob reads old ones ${suffix}`).waitFor({ state: "attached" });
    await indicator.waitFor({ state: "visible" });
    await indicator.click();
    await indicator.waitFor({ state: "hidden" });
    const inView = await item(bob, `while bob reads old ones ${suffix}`).evaluate((li) => {
      const box = document.getElementById("messages").getBoundingClientRect();
      const r = li.getBoundingClientRect();
      return r.top >= box.top - 1 && r.bottom <= box.bottom + 1;
    });
    if (!inView) throw new Error("the new message is not scrolled into view");
  }, both, { critical: false });

  await step("leave-invite", "alice invites bob to a private room; bob joins, then leaves it", async () => {
    const inv = `e2e-${suffix}-i`;
    const details = alice.page.locator("#create-details");
    if ((await details.getAttribute("open")) === null) await details.locator("summary").click();
    await alice.page.locator("#create-room").fill(inv);
    await alice.page.locator("#create-members").fill("");
    await alice.page.locator("#create-private").check();
    await alice.page.locator("#create-btn").click();
    await alice.page.locator(`#rooms button[data-room="${inv}"][aria-current="true"]`).waitFor();
    const refused = async () => {
      await bob.page.evaluate(() => (document.getElementById("notice").hidden = true));
      await bob.page.locator("#join-room").fill(inv);
      await bob.page.locator("#join-btn").click();
      await bob.page.locator("#notice.error:not([hidden])", { hasText: "not allowed" }).waitFor();
    };
    await refused(); // not invited yet
    await alice.page.locator("#invite-btn").click();
    await alice.page.locator("#invite-user").fill(bobId);
    await alice.page.locator("#invite-send").click();
    await alice.page.locator("#notice:not([hidden])", { hasText: `Invited ${bobId}` }).waitFor();
    await joinRoom(bob, inv);
    await bob.page.locator("#leave-btn").click();
    await bob.page.locator(`#rooms button[data-room="${inv}"]`).waitFor({ state: "detached" });
    await refused(); // the membership is gone on the server too
    await alice.page.locator(`#rooms button[data-room="${inv}"]`).waitFor();
  }, both, { critical: false });

  await step("phone", "on a phone-width screen carol finds the room in the drawer and talks", async () => {
    const carol = await person("carol", { viewport: { width: 375, height: 720 }, isMobile: true, hasTouch: true });
    try {
      await signIn(carol, `carol-${suffix}`);
      await carol.page.locator("#composer-input").waitFor();
      if (await carol.page.locator("#join-room").isVisible()) throw new Error("the room list should be a closed drawer");
      await carol.page.locator("#menu-btn").click();
      await carol.page.locator("#join-room").fill(room);
      await carol.page.locator("#join-btn").click();
      await carol.page.locator("#room-title", { hasText: room }).waitFor();
      await carol.page.locator("#join-room").waitFor({ state: "hidden" }); // the drawer closes on choosing a room
      await alice.page.locator(`#rooms button[data-room="${room}"]`).click();
      await alice.page.locator("#room-title", { hasText: room }).waitFor();
      await say(carol, `from a phone ${suffix}`);
      await item(carol, `from a phone ${suffix}`).waitFor();
      await item(alice, `from a phone ${suffix}`).waitFor();
      const layout = await carol.page.evaluate(() => {
        const input = document.getElementById("composer-input").getBoundingClientRect();
        const list = document.getElementById("messages").getBoundingClientRect();
        return { overflow: document.documentElement.scrollWidth - window.innerWidth, inputRight: input.right, listWidth: list.width, width: window.innerWidth };
      });
      if (layout.overflow > 0) throw new Error(`the page scrolls sideways by ${layout.overflow}px`);
      if (layout.inputRight > layout.width) throw new Error("the composer runs off the screen");
      if (layout.listWidth < layout.width * 0.9) throw new Error(`the conversation gets only ${layout.listWidth}px of ${layout.width}`);
    } catch (err) {
      mkdirSync(artifacts, { recursive: true });
      await carol.page.screenshot({ path: join(artifacts, "phone-carol.png"), fullPage: true }).catch(() => {});
      throw new Error(`${err.message.split("\n")[0]} (screenshot: ${join(artifacts, "phone-carol.png")})`);
    } finally {
      await carol.context.close();
    }
  }, both, { critical: false });

  await step("retry", "a refused send offers Retry (same client_id, posted once); while reconnecting, Retry now connects at once", async () => {
    // dave's WebSocket goes through a route that can refuse a send or be down; the browser's own
    // console errors for sockets closed on purpose are not the app's (script errors still count).
    const dave = await person("dave", undefined, { consoleErrors: false });
    let mode = "pass";
    const routes = new Set();
    const sendIds = [];
    await dave.context.routeWebSocket(/\/ws$/, (ws) => {
      if (mode === "down") return ws.close({ code: 1012, reason: "e2e: down" });
      routes.add(ws);
      const server = ws.connectToServer();
      ws.onMessage((data) => {
        const f = JSON.parse(String(data));
        if (f.type === "send") sendIds.push(f.client_id);
        if (mode === "refuse" && f.type === "send") {
          ws.send(JSON.stringify({ type: "error", ref: f.ref, code: "forbidden", message: "e2e: refused once" }));
          return;
        }
        server.send(data);
      });
      ws.onClose(() => routes.delete(ws));
    });
    try {
      await signIn(dave, `dave-${suffix}`);
      await joinRoom(dave, room);
      await alice.page.locator(`#rooms button[data-room="${room}"]`).click();
      mode = "refuse";
      await say(dave, `flaky network ${suffix}`);
      const failed = dave.page.locator("#message-list li.pending.failed", { hasText: `flaky network ${suffix}` });
      await failed.locator('button[data-action="retry"]').waitFor();
      mode = "pass";
      await failed.locator('button[data-action="retry"]').click();
      await item(dave, `flaky network ${suffix}`).waitFor();
      await item(alice, `flaky network ${suffix}`).waitFor();
      if (new Set(sendIds).size !== 1 || sendIds.length < 2) throw new Error(`the retry used client_ids ${JSON.stringify(sendIds)}`);
      if ((await item(alice, `flaky network ${suffix}`).count()) !== 1) throw new Error("posted more than once");

      mode = "down";
      for (const ws of routes) ws.close({ code: 1012, reason: "e2e: down" });
      // Let the backoff grow until the next try is at least 4 s away.
      await dave.page.locator("#conn", { hasText: /Reconnecting in ([4-9]|\d\d) s/ }).waitFor({ timeout: timeout * 3 });
      mode = "pass";
      await dave.page.locator("#retry-now").click();
      await dave.page.locator('#conn[data-state="open"]').waitFor({ timeout: 3000 });
      await dave.page.locator("#retry-now").waitFor({ state: "hidden" });
      await say(dave, `back again ${suffix}`);
      await item(alice, `back again ${suffix}`).waitFor();
    } catch (err) {
      mkdirSync(artifacts, { recursive: true });
      await dave.page.screenshot({ path: join(artifacts, "retry-dave.png"), fullPage: true }).catch(() => {});
      throw new Error(`${err.message.split("\n")[0]} (screenshot: ${join(artifacts, "retry-dave.png")})`);
    } finally {
      await dave.context.close();
    }
  }, both, { critical: false });

  await step("no-errors", "no script errors in either page", async () => {
    if (pageErrors.length) throw new Error(pageErrors.join("; "));
  }, both);
  if (process.env.CHAT_E2E_SHOTS) {
    mkdirSync(artifacts, { recursive: true });
    for (const p of both) await p.page.screenshot({ path: join(artifacts, `final-${p.name}.png`) }).catch(() => {});
  }
} finally {
  await browser.close().catch(() => {});
  if (fake) await fake.stop();
}

finish(results.failed === 0 && results.blocked === 0 ? 0 : 1);
