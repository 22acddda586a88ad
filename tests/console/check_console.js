// Drives the admin console in headless Chromium (tests/console_browser.rs runs this).
//
// Environment: CONSOLE_URL (the admin port's /), EXPECT (ip:port of instances the page must
// show, comma-separated), MEMBERS (how many members are up), SCREENSHOT (a PNG path),
// PLAYWRIGHT (the playwright-core module's folder), TOKEN (the nodes have a token file: the page
// must ask for a token, then show the data once it is typed into the token field, also after a
// reload of the tab).
// Protocol on stdio: prints "WAITING_FOR_NEW" once the page shows EXPECT; reads one line
// "NEW ip:port" (registered meanwhile by the test) and waits until the page shows it without a
// reload; prints "OK" and exits 0. Any failure: a message on stderr, exit 1.
"use strict";

const { chromium } = require(process.env.PLAYWRIGHT);
const readline = require("readline");

const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
// Each wait: generous, the machine is shared and the page refreshes every 2 s.
const WAIT_MS = 30000;

function fail(msg) {
  console.error(`console check failed: ${msg}`);
  process.exit(1);
}

function nextLine() {
  const rl = readline.createInterface({ input: process.stdin });
  return new Promise((resolve) => rl.once("line", (l) => { rl.close(); resolve(l); }));
}

async function shownAddrs(page) {
  return page.$$eval('[data-testid="instance-row"]', (rows) => rows.map((r) => r.getAttribute("data-addr")));
}

async function waitForAddrs(page, addrs, what) {
  try {
    await page.waitForFunction(
      (want) => {
        const shown = new Set([...document.querySelectorAll('[data-testid="instance-row"]')].map((r) => r.getAttribute("data-addr")));
        return want.every((a) => shown.has(a));
      },
      addrs,
      { timeout: WAIT_MS, polling: 100 }
    );
  } catch (e) {
    fail(`${what}: expected ${addrs.join(", ")}, the page shows [${(await shownAddrs(page)).join(", ")}]`);
  }
}

(async () => {
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: FLAGS, headless: true });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
    await page.goto(process.env.CONSOLE_URL, { waitUntil: "load" });

    const expect = process.env.EXPECT.split(",");
    if (process.env.TOKEN) {
      try {
        await page.waitForFunction(
          () => { const e = document.getElementById("error"); return !e.hidden && e.textContent.includes("requires a token"); },
          null,
          { timeout: WAIT_MS }
        );
      } catch (e) {
        fail(`without a token the page does not ask for one: ${await page.textContent("#error")}`);
      }
      if ((await shownAddrs(page)).length) fail("instances shown without a token");
      await page.fill("#token", process.env.TOKEN);
      await page.dispatchEvent("#token", "change");
      await waitForAddrs(page, expect, "the instances, once the token is given");
      // The tab keeps the token (sessionStorage) across a reload.
      await page.reload({ waitUntil: "load" });
      // The browser logged the refused requests before the token (401s) as errors.
      errors.length = 0;
    }
    await waitForAddrs(page, expect, "the instances registered before the page loaded");

    // The members table: every member, up.
    const members = Number(process.env.MEMBERS);
    try {
      await page.waitForFunction(
        (n) => [...document.querySelectorAll('[data-testid="member-row"]')].filter((r) => r.textContent.includes("up")).length === n,
        members,
        { timeout: WAIT_MS }
      );
    } catch (e) {
      fail(`expected ${members} members up, the table shows: ${await page.textContent("#members")}`);
    }
    const ready = await page.textContent("#node-ready");
    if (ready.trim() !== "ready") fail(`the node badge says ${JSON.stringify(ready)}`);

    // Live refresh: a marker set on this document survives only if the page is not reloaded.
    await page.evaluate(() => { window.__sameDocument = true; });
    console.log("WAITING_FOR_NEW");
    const line = await nextLine();
    const added = line.replace(/^NEW /, "").trim();
    await waitForAddrs(page, [added], "the instance registered after the page loaded");
    if (!(await page.evaluate(() => window.__sameDocument === true))) fail("the page was reloaded");

    // Metadata is shown as text.
    const meta = await page.textContent(`[data-addr="${added}"] .meta`);
    if (!meta.includes("zone") || !meta.includes("b")) fail(`metadata of ${added} not shown: ${JSON.stringify(meta)}`);

    // The search box filters the instances.
    await page.fill("#search", added);
    const filtered = await shownAddrs(page);
    if (filtered.length !== 1 || filtered[0] !== added) fail(`searching ${added} shows [${filtered.join(", ")}]`);
    await page.fill("#search", "");

    await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
    if (errors.length) fail(`the page logged errors: ${errors.join(" | ")}`);
    console.log("OK");
  } finally {
    await browser.close();
  }
  process.exit(0);
})().catch((e) => fail(e && e.stack ? e.stack : String(e)));
